"""Load benchmark: the gateway's Streamable HTTP front door vs. the same upstream direct.

For each N in ``--sessions`` and for ``--rounds`` rounds, runs N concurrent MCP
sessions x M sequential ``tools/list`` requests

- ``gateway``: Streamable HTTP through ``mcp-bridge --sse`` (POST/DELETE on
  ``/mcp``, ``Mcp-Session-Id``, each request answered with an SSE stream);
- ``direct``: legacy HTTP+SSE straight to the upstream (GET ``/sse``, the
  ``endpoint`` event, POSTs there, responses on the GET stream);

against one example upstream (``python -m bridge.examples.server --transport
sse``). Both clients are lean raw aiohttp. Every session first does the MCP
handshake (``initialize``, ``notifications/initialized``); all sessions of a run
then wait at a barrier, do their ``tools/list`` requests, wait at a second
barrier, and only then end (DELETE on the gateway, closing the GET stream
direct). Only the ``tools/list`` requests are timed, and the CPU time the
gateway and upstream processes spend between the barriers is read from /proc.

Rounds go round-robin over N; in each round gateway and direct run back to back,
alternating which goes first. The summary quotes medians over rounds and the
median of the per-round gateway/direct ratios, which is what to compare on a
noisy machine. See bench/README.md.

The script starts and stops the upstream and gateway itself on free loopback
ports, bounds every request (``--timeout``) and the whole run
(``--max-seconds``, shutdown included), and kills what it started on every exit
path (children also get SIGKILL from the kernel if this process dies).

    python bench/load.py --sessions 1,50,200 --requests 20 --max-seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import math
import os
import re
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

HOST = "127.0.0.1"  # loopback only, always
PROTOCOL_VERSION = "2025-06-18"
CLIENT_INFO = {"name": "mcp-bridge-bench", "version": "0"}
EXPECTED_TOOLS = {"echo", "add", "slow"}
READY_TIMEOUT = 30.0
STOP_GRACE = 5.0  # per child: SIGTERM, then SIGKILL
RESERVE = 3.0  # seconds of --max-seconds kept for stopping the children
UVICORN_READY = re.compile(r"Uvicorn running on http://[^\s:]+:(\d+)")


# -- results ------------------------------------------------------------------


@dataclass
class RunResult:
    path: str  # "gateway" | "direct"
    sessions: int
    expected: int  # sessions x requests
    latencies: list[float] = field(default_factory=list)  # seconds, successful tools/list
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0  # seconds from the start barrier to the last tools/list outcome
    sessions_ok: int = 0  # sessions whose handshake succeeded
    notes: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU s in the timed window

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0

    def cpu_ms_per_req(self, name: str) -> float:
        seconds = self.cpu.get(name, float("nan"))
        return seconds * 1000 / self.ok if self.ok else float("nan")

    def pct(self, q: float) -> float:
        """Nearest-rank percentile in ms (nan if nothing succeeded)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
        return ordered[rank - 1] * 1000


class RequestFailed(Exception):
    """One failed operation; ``kind`` is the error bucket it is counted in."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def classify(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"http {exc.status}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"conn {exc.__class__.__name__}"
    return f"bug {exc.__class__.__name__}: {exc}"


def check_tools(message: dict[str, Any]) -> None:
    if "error" in message:
        code = message["error"].get("code") if isinstance(message["error"], dict) else "?"
        raise RequestFailed(f"jsonrpc error {code}")
    tools = (message.get("result") or {}).get("tools")
    if not isinstance(tools, list) or {t.get("name") for t in tools} != EXPECTED_TOOLS:
        raise RequestFailed("unexpected tools/list result")


def rpc(method: str, rid: int | None = None, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if rid is not None:
        message["id"] = rid
    if params is not None:
        message["params"] = params
    return json.dumps(message, separators=(",", ":")).encode()


INIT_PARAMS = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}


# -- gateway: Streamable HTTP ---------------------------------------------------


def sse_messages(body: bytes) -> list[dict[str, Any]]:
    """The JSON ``data`` of every event in a whole SSE body (comments skipped)."""
    out: list[dict[str, Any]] = []
    data: list[str] = []
    for raw in body.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not raw:
            if data:
                out.append(json.loads("\n".join(data)))
                data = []
        elif raw.startswith("data:"):
            data.append(raw[5:].removeprefix(" "))
    if data:
        out.append(json.loads("\n".join(data)))
    return out


class GatewaySession:
    """One Streamable HTTP session: POST initialize, POST notification, POST xM, DELETE."""

    ACCEPT = "application/json, text/event-stream"

    def __init__(self, http: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self._http = http
        self._url = url
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._headers = {"Accept": self.ACCEPT, "Content-Type": "application/json"}

    async def _post(self, body: bytes, rid: int | None) -> tuple[Any, Any]:
        async with (
            asyncio.timeout(self._timeout),
            self._http.post(self._url, data=body, headers=self._headers) as resp,
        ):
            payload = await resp.read()
            if rid is None:
                if resp.status != 202:
                    raise RequestFailed(f"http {resp.status}")
                return resp.headers, None
            if resp.status != 200:
                raise RequestFailed(f"http {resp.status}")
            if not resp.content_type.startswith("text/event-stream"):
                raise RequestFailed(f"content-type {resp.content_type}")
            for message in sse_messages(payload):
                if message.get("id") == rid and ("result" in message or "error" in message):
                    return resp.headers, message
            raise RequestFailed("stream ended without the response")

    async def open(self) -> None:
        rid = next(self._ids)
        headers, message = await self._post(rpc("initialize", rid, INIT_PARAMS), rid)
        if "error" in message:
            raise RequestFailed(f"initialize jsonrpc error {message['error'].get('code')}")
        session_id = headers.get("Mcp-Session-Id")
        if not session_id:
            raise RequestFailed("initialize: no Mcp-Session-Id")
        self._headers["Mcp-Session-Id"] = session_id
        self._headers["MCP-Protocol-Version"] = message["result"]["protocolVersion"]
        await self._post(rpc("notifications/initialized"), None)

    async def list_tools(self) -> None:
        rid = next(self._ids)
        _, message = await self._post(rpc("tools/list", rid), rid)
        check_tools(message)

    async def close(self, graceful: bool = True) -> None:
        if not graceful or "Mcp-Session-Id" not in self._headers:
            return
        async with (
            asyncio.timeout(self._timeout),
            self._http.delete(self._url, headers=self._headers) as resp,
        ):
            await resp.read()
            if resp.status != 200:
                raise RequestFailed(f"DELETE http {resp.status}")


# -- direct: legacy HTTP+SSE ------------------------------------------------------


class DirectSession:
    """One legacy HTTP+SSE session: GET /sse, POST to its endpoint, answers on the stream."""

    def __init__(self, http: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self._http = http
        self._url = url
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._endpoint: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._stream: aiohttp.ClientResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._post_headers = {"Content-Type": "application/json"}

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        event, data = "", []
        try:
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line:
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    continue
                if data:
                    self._dispatch(event or "message", "\n".join(data))
                event, data = "", []
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"conn {exc.__class__.__name__}"
        except Exception as exc:  # a malformed event: fail this session's requests now
            reason = f"bad stream: {exc.__class__.__name__}"
        else:
            reason = "stream closed"
        futures: list[asyncio.Future[Any]] = [self._endpoint, *self._pending.values()]
        for future in futures:
            if not future.done():
                future.set_exception(RequestFailed(reason))

    def _dispatch(self, event: str, data: str) -> None:
        if event == "endpoint":
            if not self._endpoint.done():
                assert self._stream is not None
                self._endpoint.set_result(str(self._stream.url.join(URL(data.strip()))))
            return
        if event != "message":
            return
        message = json.loads(data)
        future = self._pending.pop(message.get("id"), None) if "method" not in message else None
        if future is not None and not future.done():
            future.set_result(message)

    async def _request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            async with asyncio.timeout(self._timeout):
                await self._post(rpc(method, rid, params))
                return await future
        finally:
            self._pending.pop(rid, None)

    async def _post(self, body: bytes) -> None:
        endpoint = self._endpoint.result()
        async with self._http.post(endpoint, data=body, headers=self._post_headers) as resp:
            await resp.read()
            if not 200 <= resp.status < 300:
                raise RequestFailed(f"http {resp.status}")

    async def open(self) -> None:
        async with asyncio.timeout(self._timeout):
            self._stream = await self._http.get(self._url, headers={"Accept": "text/event-stream"})
            if self._stream.status != 200:
                raise RequestFailed(f"GET /sse http {self._stream.status}")
            self._reader = asyncio.get_running_loop().create_task(self._read(self._stream))
            await asyncio.shield(self._endpoint)
        message = await self._request("initialize", INIT_PARAMS)
        if "error" in message:
            raise RequestFailed(f"initialize jsonrpc error {message['error'].get('code')}")
        async with asyncio.timeout(self._timeout):
            await self._post(rpc("notifications/initialized"))

    async def list_tools(self) -> None:
        check_tools(await self._request("tools/list"))

    async def close(self, graceful: bool = True) -> None:
        # Closing the GET stream is how a legacy SSE client ends its session.
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._stream is not None:
            self._stream.close()


# -- one run: N sessions x M requests on one path -----------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of ``pid`` so far (Linux /proc; nan elsewhere)."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


async def run_load(
    path: str,
    make: Callable[[aiohttp.ClientSession], GatewaySession | DirectSession],
    sessions: int,
    requests: int,
    pids: dict[str, int | None],
) -> RunResult:
    """N sessions: handshake, barrier, M timed tools/list, barrier, close.

    The two barriers make the timed window hold nothing but tools/list traffic,
    so its wall time and the CPU the processes in ``pids`` spend in it belong
    to those requests alone.
    """
    result = RunResult(path, sessions, sessions * requests)
    phase = {"ready": 0, "done": 0}
    go, finished = asyncio.Event(), asyncio.Event()
    started = ended = 0.0
    cpu0: dict[str, float] = {}

    def arrive(counter: str, event: asyncio.Event) -> None:
        nonlocal started, ended
        phase[counter] += 1
        if phase[counter] < sessions:
            return
        now = time.perf_counter()
        if counter == "ready":
            started = now
            cpu0.update({name: cpu_seconds(pid) for name, pid in pids.items()})
        else:
            ended = now
            for name, pid in pids.items():
                result.cpu[name] = cpu_seconds(pid) - cpu0[name]
        event.set()

    async def one(http: aiohttp.ClientSession) -> None:
        session = make(http)
        try:
            try:
                await session.open()
            except Exception as exc:
                result.errors[f"handshake: {classify(exc)}"] += 1
                result.errors["not run (handshake failed)"] += requests
                arrive("ready", go)
                arrive("done", finished)
                return
            result.sessions_ok += 1
            arrive("ready", go)
            await go.wait()
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    await session.list_tools()
                except Exception as exc:
                    result.errors[classify(exc)] += 1
                else:
                    result.latencies.append(time.perf_counter() - t0)
            arrive("done", finished)
            await finished.wait()
        finally:
            # Cancelled (deadline, signal): drop the session without a DELETE round trip.
            graceful = not asyncio.current_task().cancelling()  # type: ignore[union-attr]
            try:
                await session.close(graceful)
            except Exception as exc:
                result.notes.append(f"close: {classify(exc)}")

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        await asyncio.gather(*(one(http) for _ in range(sessions)))
    result.wall = ended - started
    return result


# -- subprocesses ------------------------------------------------------------------


def _die_with_parent() -> None:
    """Child side: SIGKILL this process if the benchmark dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class Child:
    """A subprocess whose stderr is drained (and scanned) for as long as it runs."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.proc: asyncio.subprocess.Process | None = None
        self.port: asyncio.Future[int] | None = None
        self.notable: list[str] = []  # warnings and errors seen on stderr
        self.tail: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, ready: Callable[[str], int | None]) -> int:
        loop = asyncio.get_running_loop()
        self.port = loop.create_future()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._drain = loop.create_task(self._read(ready))
        exited = loop.create_task(self.proc.wait())
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                done, _ = await asyncio.wait({self.port, exited}, return_when="FIRST_COMPLETED")
        except TimeoutError:
            raise RuntimeError(
                f"{self.name} not ready in {READY_TIMEOUT}s: {self.tail[-5:]}"
            ) from None
        finally:
            exited.cancel()
        if self.port not in done:
            await asyncio.sleep(0)  # let the drain task take the last lines
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail[-5:]}")
        return self.port.result()

    async def _read(self, ready: Callable[[str], int | None]) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        assert self.port is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.tail = [*self.tail[-19:], line]
            if not self.port.done():
                port = ready(line)
                if port is not None:
                    self.port.set_result(port)
            if self._notable(line):
                self.notable.append(line)

    @staticmethod
    def _notable(line: str) -> bool:
        if line.startswith("{"):  # the gateway's JSON lines
            if '"level": "info"' in line or '"level": "debug"' in line:
                return False  # the cheap path: never parse the access log
            with contextlib.suppress(ValueError):
                return json.loads(line).get("level") in ("warning", "error", "critical")
        return bool(re.match(r"\s*(WARNING|ERROR|CRITICAL|Traceback)", line))

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                self.notable.append(f"(bench) {self.name} ignored SIGTERM for {grace:g}s: killed")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await self._drain
            self._drain.cancel()

    def kill_now(self) -> None:
        """Last resort, synchronous (the loop may be gone)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)


def uvicorn_ready(line: str) -> int | None:
    match = UVICORN_READY.search(line)
    return int(match.group(1)) if match else None


def gateway_ready(line: str) -> int | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return int(event["port"]) if event.get("event") == "listening" else None


def gateway_argv(upstream_url: str, log_level: str) -> list[str]:
    # The console script next to this interpreter (not a pyenv shim), else -m.
    script = Path(sys.executable).with_name("mcp-bridge")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "bridge"]
    return [
        *base,
        "--sse", upstream_url,
        "--host", HOST,
        "--port", "0",
        "--log-format", "json",
        "--log-level", log_level,
    ]  # fmt: skip


# -- orchestration ------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]  # drop nan
    return statistics.median(values) if values else float("nan")


def fmt_run(r: RunResult) -> str:
    errs = f"  errors: {dict(r.errors)}" if r.errors else ""
    notes = f"  notes: {sorted(set(r.notes))}" if r.notes else ""
    cpu = "  CPU ms/req: " + " ".join(
        f"{name} {r.cpu_ms_per_req(name):.2f}" for name in ("gateway", "upstream") if name in r.cpu
    )
    return (
        f"{r.path:7s} {r.ok:5d}/{r.expected:<5d} ok  {r.rps:7.1f} req/s  "
        f"p50 {r.pct(50):7.2f} ms  p99 {r.pct(99):7.2f} ms{cpu}{errs}{notes}"
    )


Pairs = dict[int, list[tuple[RunResult, RunResult]]]


def summary(results: Pairs, requests: int) -> str:
    head = (
        f"{'N':>4} | {'gateway req/s':>13} {'p50 ms':>7} {'p99 ms':>7} {'err':>3} | "
        f"{'direct req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'err':>3} | "
        f"{'thr g/d':>7} {'p50 g/d':>7} | {'gw CPU':>6} {'up CPU':>6} | rounds"
    )
    lines = [head, "-" * len(head)]
    for n, pairs in sorted(results.items()):
        g = [p[0] for p in pairs]
        d = [p[1] for p in pairs]
        thr = med([a.rps / b.rps if b.rps else float("nan") for a, b in pairs])
        lat = med([a.pct(50) / b.pct(50) for a, b in pairs])
        lines.append(
            f"{n:>4} | {med([r.rps for r in g]):>13.1f} {med([r.pct(50) for r in g]):>7.2f} "
            f"{med([r.pct(99) for r in g]):>7.2f} {sum(r.error_count for r in g):>3} | "
            f"{med([r.rps for r in d]):>12.1f} {med([r.pct(50) for r in d]):>7.2f} "
            f"{med([r.pct(99) for r in d]):>7.2f} {sum(r.error_count for r in d):>3} | "
            f"{thr:>6.2f}x {lat:>6.2f}x | "
            f"{med([r.cpu_ms_per_req('gateway') for r in g]):>6.2f} "
            f"{med([r.cpu_ms_per_req('upstream') for r in g]):>6.2f} | {len(pairs)}"
        )
    lines += [
        f"N concurrent sessions x {requests} sequential tools/list each. Medians over rounds;",
        "err = total over rounds; thr g/d, p50 g/d = median of per-round gateway/direct ratios;",
        "gw CPU, up CPU = CPU ms per tools/list of the gateway and the upstream process,",
        "in gateway runs (the upstream's own cost per request is the same in direct runs).",
    ]
    return "\n".join(lines)


async def healthz_sessions(gateway_base: str, seconds: float) -> int | None:
    async with aiohttp.ClientSession() as http:
        try:
            async with (
                asyncio.timeout(seconds),
                http.get(f"{gateway_base}/healthz") as resp,
            ):
                return int((await resp.json())["sessions"])
        except Exception:
            return None


async def bench(args: argparse.Namespace, children: list[Child]) -> int:
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    results: Pairs = {}
    status = 0
    skipped: list[str] = []
    try:
        # The load phase ends RESERVE seconds early: stopping the children is budgeted too.
        async with asyncio.timeout_at(t_start + max(1.0, args.max_seconds - RESERVE)):
            upstream = Child(
                "upstream",
                [sys.executable, "-m", "bridge.examples.server", "--transport", "sse",
                 "--host", HOST, "--port", "0"],
            )  # fmt: skip
            children.append(upstream)
            up_port = await upstream.start(uvicorn_ready)
            sse_url = f"http://{HOST}:{up_port}/sse"
            gateway = Child("gateway", gateway_argv(sse_url, args.gateway_log_level))
            children.append(gateway)
            gw_port = await gateway.start(gateway_ready)
            gw_base = f"http://{HOST}:{gw_port}"
            mcp_url = f"{gw_base}/mcp"
            print(f"upstream {sse_url}  gateway {mcp_url}", flush=True)

            paths: dict[str, Callable[[aiohttp.ClientSession], GatewaySession | DirectSession]] = {
                "gateway": lambda http: GatewaySession(http, mcp_url, args.timeout),
                "direct": lambda http: DirectSession(http, sse_url, args.timeout),
            }
            pids = {"gateway": gateway.pid, "upstream": upstream.pid}
            # Warm-up, untimed: first connections, lazy imports, code paths.
            for name, make in paths.items():
                warm = await run_load(name, make, 2, 5, pids)
                if warm.errors:
                    print(f"warm-up {fmt_run(warm)}", flush=True)

            # Rounds go round-robin over N, so a deadline still leaves every N some
            # rounds; a round is skipped when its last duration would not fit.
            spent: dict[int, float] = {}
            for rnd in range(args.rounds):
                for n in args.sessions:
                    left = t_start + max(1.0, args.max_seconds - RESERVE) - loop.time()
                    if n in spent and spent[n] * 1.25 > left:
                        skipped.append(f"N={n} round {rnd + 1}")
                        continue
                    began = loop.time()
                    order = ["gateway", "direct"] if rnd % 2 == 0 else ["direct", "gateway"]
                    pair: dict[str, RunResult] = {}
                    for name in order:
                        pair[name] = await run_load(name, paths[name], n, args.requests, pids)
                        if name == "gateway":
                            stale = await healthz_sessions(gw_base, args.timeout)
                            if stale:
                                pair[name].notes.append(f"{stale} sessions left after DELETE")
                    spent[n] = loop.time() - began
                    results.setdefault(n, []).append((pair["gateway"], pair["direct"]))
                    g, d = pair["gateway"], pair["direct"]
                    print(
                        f"N={n:<4} round {rnd + 1}/{args.rounds}  {spent[n]:5.1f}s  "
                        f"thr g/d {g.rps / d.rps if d.rps else float('nan'):.2f}x  "
                        f"p50 g/d {g.pct(50) / d.pct(50):.2f}x"
                    )
                    for name in ("gateway", "direct"):
                        print(f"    {fmt_run(pair[name])}", flush=True)
    except TimeoutError:
        print(f"\nGLOBAL DEADLINE: --max-seconds {args.max_seconds:g} reached; results are partial")
        status = 3
    if skipped:
        print(f"\nskipped to stay within --max-seconds: {', '.join(skipped)}")
    print()
    if results:
        print(summary(results, args.requests))
    print(f"load phase took {loop.time() - t_start:.1f}s (--max-seconds {args.max_seconds:g})")
    if any(r.error_count for pairs in results.values() for p in pairs for r in p):
        status = status or 1
    return status


async def amain(args: argparse.Namespace) -> int:
    children: list[Child] = []
    loop = asyncio.get_running_loop()
    hard_stop = loop.time() + args.max_seconds
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await bench(args, children)
    finally:
        # Gateway first (it ends its upstream sessions), then the upstream. Each
        # gets SIGTERM, a grace within what is left of --max-seconds, SIGKILL.
        try:
            for child in reversed(children):
                await child.stop(max(1.0, min(STOP_GRACE, (hard_stop - loop.time()) / 2)))
        finally:
            for child in children:
                child.kill_now()
        for child in children:
            report_stderr(child)


def report_stderr(child: Child) -> None:
    """Warnings and errors a child logged, grouped by event, one example each."""
    if not child.notable:
        return
    groups: Counter[str] = Counter()
    example: dict[str, str] = {}
    for line in child.notable:
        key = line[:60]
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                key = f"{event.get('level')} {event.get('event')} {event.get('task', '')}".strip()
        groups[key] += 1
        example.setdefault(key, line)
    print(f"\n{child.name} stderr: {len(child.notable)} warning/error lines")
    for key, count in groups.most_common():
        text = example[key].replace("\\n", " | ")
        print(
            f"  {count:5d} x {key}\n          e.g. {text[:400]}{'...' if len(text) > 400 else ''}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sessions", default="1,50,200",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="comma-separated concurrent session counts N (default 1,50,200)",
    )  # fmt: skip
    p.add_argument("--requests", type=int, default=20, help="tools/list per session (M)")
    p.add_argument("--rounds", type=int, default=3, help="gateway+direct rounds per N (medians)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=120.0, help="global deadline")
    p.add_argument(
        "--gateway-log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="the gateway's --log-level (default info, as deployed: one log line per request)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if not args.sessions or min(args.sessions) < 1 or args.requests < 1 or args.rounds < 1:
        p.error("--sessions, --requests and --rounds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a child failed to start
        print(f"load.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
