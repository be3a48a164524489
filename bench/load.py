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

The gateway keeps sessions and SSE events in the store ``--store-url`` names,
and writes every event there before sending it. In this mode its store is
``memory://`` unless ``--gateway-store`` says otherwise; the direct path has no
store.

``--stores memory,sqlite,redis`` compares stores instead: the same gateway load,
one gateway process per store (``memory://``; a fresh SQLite file in a temp
dir; a ``redis-server`` started here on a free loopback port, without
persistence), no direct runs. In each round every store runs once, the order
rotating from round to round, and each store's throughput and p50 are divided
by memory's of the same round; the summary quotes medians over rounds.

The script starts and stops the upstream, the gateways and redis-server itself
on free loopback ports, bounds every request (``--timeout``) and the whole run
(``--max-seconds``, shutdown included), and kills what it started on every exit
path (children also get SIGKILL from the kernel if this process dies).

    python bench/load.py --sessions 1,50,200 --requests 20 --max-seconds 120
    python bench/load.py --stores memory,sqlite,redis --sessions 50 --requests 20
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
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
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
STORES = ("memory", "sqlite", "redis")
BASELINE = "memory"  # --stores ratios are to this store's runs of the same round
REDIS_READY = "Ready to accept connections"
REDIS_START_ATTEMPTS = 3  # a free port may be taken before redis-server binds it
# redis-server log lines: "<pid>:<role> <date> <time> <level> <text>"; "#" is warning level.
REDIS_PREFIX = re.compile(r"^\d+:[A-Z] \d{1,2} \w{3} \d{4} [\d:.]+ ")
REDIS_NOTABLE = re.compile(REDIS_PREFIX.pattern + r"# .*(warn|error|fail|could not|can't)", re.I)
TARGET = ("redis", 50, 0.80)  # the project's target: Redis >= 80% of memory's req/s at N=50


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
    machine: float = float("nan")  # CPU s all cores were busy in the timed window, anyone's

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0

    @property
    def other_cores(self) -> float:
        """Cores busy on average in the timed window with work not of the processes in ``cpu``.

        That is other programs on the machine, plus kernel time not charged to
        any process (some of it this benchmark's loopback traffic): a noise gauge.
        """
        if not self.cpu or self.wall <= 0:
            return float("nan")
        return max(0.0, self.machine - sum(self.cpu.values())) / self.wall

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
    """The JSON ``data`` of every event in a whole SSE body.

    Comments are skipped, and so are events without data (a 2025-11-25 priming event).
    """
    out: list[dict[str, Any]] = []
    data: list[str] = []
    for raw in body.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not raw:
            if any(data):
                out.append(json.loads("\n".join(data)))
            data = []
        elif raw.startswith("data:"):
            data.append(raw[5:].removeprefix(" "))
    if any(data):
        out.append(json.loads("\n".join(data)))
    return out


class GatewaySession:
    """One Streamable HTTP session: POST initialize, POST notification, POST xM, DELETE."""

    ACCEPT = "application/json, text/event-stream"

    def __init__(
        self, http: aiohttp.ClientSession, url: str, timeout: float, resumable: bool = False
    ) -> None:
        self._http = http
        self._url = url
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._headers = {"Accept": self.ACCEPT, "Content-Type": "application/json"}
        # A progress token makes the gateway answer on a stored, resumable SSE
        # stream instead of plain JSON: this measures the event store's cost.
        self._list_params = {"_meta": {"progressToken": "bench"}} if resumable else None

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
            if resp.content_type == "application/json":  # a plain JSON reply
                message = json.loads(payload)
                if message.get("id") != rid:
                    raise RequestFailed("JSON reply for another request")
                return resp.headers, message
            if not resp.content_type.startswith("text/event-stream"):
                raise RequestFailed(f"content-type {resp.content_type}")
            messages = sse_messages(payload)
            for message in messages:
                if message.get("id") == rid and ("result" in message or "error" in message):
                    return resp.headers, message
            if any("result" in m or "error" in m for m in messages):
                raise RequestFailed("reply for another request")
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
        _, message = await self._post(rpc("tools/list", rid, self._list_params), rid)
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


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy so far, anyone's (Linux /proc/stat; nan elsewhere)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        # cpu user nice system idle iowait irq softirq steal (guest is inside user)
        ticks = [int(x) for x in fields[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


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
    step: Callable[[GatewaySession | DirectSession, int], Awaitable[None]] | None = None,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> RunResult:
    """N sessions: handshake, barrier, M timed tools/list, barrier, close.

    The two barriers make the timed window hold nothing but tools/list traffic,
    so its wall time and the CPU the processes in ``pids`` spend in it belong
    to those requests alone. ``step(session, i)``, if given, is the i-th timed
    request instead of ``session.list_tools()``; ``on_start`` and ``on_end`` are
    called (and must return at once) when the timed window begins (every session
    is open) and ends.
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
            cpu0[""] = machine_busy_seconds()
            if on_start is not None:
                on_start()
        else:
            ended = now
            for name, pid in pids.items():
                result.cpu[name] = cpu_seconds(pid) - cpu0[name]
            result.machine = machine_busy_seconds() - cpu0[""]
            if on_end is not None:
                on_end()
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
            for i in range(requests):
                t0 = time.perf_counter()
                try:
                    await (step(session, i) if step is not None else session.list_tools())
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
    """A subprocess whose stderr is drained (and scanned) for as long as it runs.

    ``merge_stdout``: read stdout too (stderr joined to it), for redis-server,
    which logs there. ``stage``: children of stage 0 (the gateways) are
    stopped first, then those of stage 1 (the upstream, redis-server).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stage: int = 1,
        merge_stdout: bool = False,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.preexec = preexec  # run in the child before exec, after the death signal
        self.argv = list(argv)
        self.stage = stage
        self.merge_stdout = merge_stdout
        self.proc: asyncio.subprocess.Process | None = None
        self.port: asyncio.Future[int] | None = None
        self.notable: list[str] = []  # warnings and errors seen on stderr
        self.tail: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, ready: Callable[[str], int | None], probe_port: int | None = None) -> int:
        """Start and wait until ``ready`` finds the port in a log line, or, with
        ``probe_port``, until that port on HOST accepts a connection."""
        loop = asyncio.get_running_loop()
        self.port = loop.create_future()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if self.merge_stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT if self.merge_stdout else asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=self._preexec if sys.platform.startswith("linux") else self.preexec,
        )
        self._drain = loop.create_task(self._read(ready))
        exited = loop.create_task(self.proc.wait())
        probe = loop.create_task(self._probe(probe_port)) if probe_port is not None else None
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                done, _ = await asyncio.wait({self.port, exited}, return_when="FIRST_COMPLETED")
        except TimeoutError:
            raise RuntimeError(
                f"{self.name} not ready in {READY_TIMEOUT}s: {self.tail[-5:]}"
            ) from None
        finally:
            exited.cancel()
            if probe is not None:
                probe.cancel()
        if self.port not in done:
            await asyncio.sleep(0)  # let the drain task take the last lines
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail[-5:]}")
        return self.port.result()

    def _preexec(self) -> None:
        _die_with_parent()
        if self.preexec is not None:
            self.preexec()

    async def _probe(self, port: int) -> None:
        while self.port is not None and not self.port.done():
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            if not self.port.done():
                self.port.set_result(port)

    async def _read(self, ready: Callable[[str], int | None]) -> None:
        assert self.proc is not None
        output = self.proc.stdout if self.merge_stdout else self.proc.stderr
        assert output is not None
        assert self.port is not None
        async for raw in output:
            line = raw.decode(errors="replace").rstrip()
            self.tail = [*self.tail[-19:], line]
            if not self.port.done():
                port = ready(line)
                if port is not None:
                    self.port.set_result(port)
            if self._notable(line):
                self.notable.append(line)

    def _notable(self, line: str) -> bool:
        """Whether ``line`` is a warning or an error (kept in ``notable``); subclasses may
        look at every line here."""
        if line.startswith("{"):  # the gateway's JSON lines
            if '"level": "info"' in line or '"level": "debug"' in line:
                return False  # the cheap path: never parse the access log
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "listening":  # read for the port
                    return False
                return event.get("level") in ("warning", "error", "critical")
        if REDIS_PREFIX.match(line):
            return bool(REDIS_NOTABLE.match(line))
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


async def start_gateway_child(child: Child) -> int:
    """Start a gateway made with :func:`gateway_argv`; its port once it accepts connections.

    Probed, not only read from the ``listening`` line, which is at info level:
    a gateway at ``--log-level warning`` does not print it.
    """
    argv = list(child.argv)
    return await child.start(gateway_ready, probe_port=int(argv[argv.index("--port") + 1]))


def gateway_argv(upstream: str, log_level: str, store_url: str, flag: str = "--sse") -> list[str]:
    # The console script next to this interpreter (not a pyenv shim), else -m.
    script = Path(sys.executable).with_name("mcp-bridge")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "bridge"]
    return [
        *base,
        flag, upstream,
        "--host", HOST,
        "--port", str(free_port()),  # not 0: at warning level nothing says which it got
        "--log-format", "json",
        "--log-level", log_level,
        "--store-url", store_url,
    ]  # fmt: skip


def free_port() -> int:
    """A port free on HOST right now (redis-server cannot be told to pick one itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_ready(port: int) -> Callable[[str], int | None]:
    return lambda line: port if REDIS_READY in line else None


async def start_redis(tmp: Path, children: list[Child]) -> tuple[Child, int]:
    """A fresh redis-server on a free loopback port, without RDB or AOF, and its port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not on PATH (the redis store needs it)")
    workdir = tmp / "redis"
    workdir.mkdir(exist_ok=True)
    attempt = 0
    while True:
        attempt += 1
        port = free_port()
        redis = Child(
            "redis-server",
            [exe, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--logfile", "", "--daemonize", "no"],
            merge_stdout=True,
        )  # fmt: skip
        children.append(redis)
        try:
            return redis, await redis.start(redis_ready(port))
        except RuntimeError:
            # Someone took the port between free_port() and redis-server's bind: retry.
            if attempt >= REDIS_START_ATTEMPTS or not any("in use" in t for t in redis.tail):
                raise


@dataclass
class Gateway:
    """One gateway process and the store behind it."""

    store: str  # memory | sqlite | redis
    store_url: str
    child: Child
    base: str  # http://HOST:PORT
    store_child: Child | None  # redis-server, if the store is one

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    def pids(self, upstream: Child) -> dict[str, int | None]:
        """The processes whose CPU time a run through this gateway reads."""
        pids = {"gateway": self.child.pid, "upstream": upstream.pid}
        if self.store_child is not None:
            pids["redis"] = self.store_child.pid
        return pids


async def start_gateway(
    store: str, upstream_url: str, log_level: str, tmp: Path, children: list[Child]
) -> Gateway:
    """A gateway on a free loopback port, in front of ``upstream_url``, on a fresh ``store``."""
    store_child = None
    if store == "memory":
        store_url = "memory://"
    elif store == "sqlite":
        store_url = f"sqlite://{tmp / 'sqlite' / 'sessions.db'}"  # a new file (tmp is absolute)
    else:
        store_child, redis_port = await start_redis(tmp, children)
        store_url = f"redis://{HOST}:{redis_port}/0"
    child = Child(f"gateway[{store}]", gateway_argv(upstream_url, log_level, store_url), stage=0)
    children.append(child)
    port = await start_gateway_child(child)
    return Gateway(store, store_url, child, f"http://{HOST}:{port}", store_child)


# -- orchestration ------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]  # drop nan
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def num(value: float, width: int, suffix: str = "") -> str:
    """``value`` to 2 decimals, or ``-`` if nan, right-aligned in ``width`` + suffix."""
    if value != value:
        return f"{'-':>{width + len(suffix)}}"
    return f"{value:>{width}.2f}{suffix}"


CPU_NAMES = ("gateway", "upstream", "redis", "bench")


def fmt_run(r: RunResult) -> str:
    errs = f"  errors: {dict(r.errors)}" if r.errors else ""
    notes = f"  notes: {sorted(set(r.notes))}" if r.notes else ""
    cpu = "  CPU ms/req: " + " ".join(
        f"{name} {r.cpu_ms_per_req(name):.2f}" for name in CPU_NAMES if name in r.cpu
    )
    cpu += f"  other {r.other_cores:.2f} cores"
    return (
        f"{r.path:7s} {r.ok:5d}/{r.expected:<5d} ok  {r.rps:7.1f} req/s  "
        f"p50 {r.pct(50):7.2f} ms  p99 {r.pct(99):7.2f} ms{cpu}{errs}{notes}"
    )


Pairs = dict[int, list[tuple[RunResult, RunResult]]]
StoreRounds = dict[int, list[dict[str, RunResult]]]  # N -> rounds -> store -> run


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


def store_ratios(rounds: list[dict[str, RunResult]], store: str, p50: bool = False) -> list[float]:
    """Per round: ``store``'s req/s (or p50) divided by the baseline's of that round."""
    out = []
    for runs in rounds:
        if store in runs and BASELINE in runs:
            a, b = runs[store], runs[BASELINE]
            out.append(ratio(a.pct(50), b.pct(50)) if p50 else ratio(a.rps, b.rps))
    return out


def store_summary(results: StoreRounds, stores: Sequence[str], requests: int) -> str:
    head = (
        f"{'N':>4} | {'store':<6} | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>3} | "
        f"{'thr/mem':>7} {'p50/mem':>7} | "
        f"{'gw CPU':>6} {'up CPU':>6} {'redis':>6} {'bench':>6} | {'other':>5} | rounds"
    )
    lines = [head, "-" * len(head)]
    for n, rounds in sorted(results.items()):
        for store in stores:
            runs = [r[store] for r in rounds if store in r]
            if not runs:
                continue
            cpu = " ".join(num(med([r.cpu_ms_per_req(c) for r in runs]), 6) for c in CPU_NAMES)
            other = num(med([r.other_cores for r in runs]), 5)
            lines.append(
                f"{n:>4} | {store:<6} | {med([r.rps for r in runs]):>7.1f} "
                f"{med([r.pct(50) for r in runs]):>7.2f} {med([r.pct(99) for r in runs]):>7.2f} "
                f"{sum(r.error_count for r in runs):>3} | "
                f"{num(med(store_ratios(rounds, store)), 6, 'x')} "
                f"{num(med(store_ratios(rounds, store, p50=True)), 6, 'x')} | {cpu} | {other} | "
                f"{len(runs)}"
            )
    lines += [
        f"N concurrent sessions x {requests} sequential tools/list each, one gateway per store.",
        "Medians over rounds; err = total over rounds; thr/mem, p50/mem = median of per-round",
        "ratios of the store's req/s and p50 to memory's in the same round;",
        "gw CPU, up CPU, redis, bench = CPU ms per tools/list of the gateway, the upstream,",
        "redis-server and this script (the client, and draining the children's logs);",
        "other = cores busy with anything else meanwhile (other programs: noise).",
    ]
    store, n, floor = TARGET
    per_round = store_ratios(results.get(n, []), store) if store in stores else []
    if per_round:
        median = med(per_round)
        lines.append(
            f"target: {store} >= {floor:.2f}x {BASELINE} req/s at N={n}: "
            f"{'met' if median >= floor else 'MISSED'} (median {median:.2f}x; per round "
            f"{', '.join(f'{x:.2f}x' for x in per_round)})"
        )
    else:
        lines.append(f"target: {store} >= {floor:.2f}x {BASELINE} req/s at N={n}: not measured")
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


Maker = Callable[[aiohttp.ClientSession], GatewaySession | DirectSession]


class Budget:
    """The load phase's deadline, and whether another round of an N still fits in it."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.spent: dict[int, float] = {}  # N -> seconds its last round took
        self.skipped: list[str] = []

    def fits(self, n: int, rnd: int) -> bool:
        left = self.deadline - asyncio.get_running_loop().time()
        if n in self.spent and self.spent[n] * 1.25 > left:
            self.skipped.append(f"N={n} round {rnd + 1}")
            return False
        return True


async def gateway_vs_direct(
    args: argparse.Namespace,
    upstream: Child,
    sse_url: str,
    tmp: Path,
    children: list[Child],
    budget: Budget,
    results: Pairs,
) -> None:
    loop = asyncio.get_running_loop()
    gateway = await start_gateway(
        args.gateway_store, sse_url, args.gateway_log_level, tmp, children
    )
    print(
        f"upstream {sse_url}  gateway {gateway.mcp_url}  gateway store {gateway.store_url}"
        " (--gateway-store; the direct path has no store)",
        flush=True,
    )
    paths: dict[str, Maker] = {
        "gateway": lambda http: GatewaySession(http, gateway.mcp_url, args.timeout, args.resumable),
        "direct": lambda http: DirectSession(http, sse_url, args.timeout),
    }
    pids = {**gateway.pids(upstream), "bench": os.getpid()}
    # Warm-up, untimed: first connections, lazy imports, code paths.
    for name, make in paths.items():
        warm = await run_load(name, make, 2, 5, pids)
        if warm.errors:
            print(f"warm-up {fmt_run(warm)}", flush=True)

    # Rounds go round-robin over N, so a deadline still leaves every N some
    # rounds; a round is skipped when its last duration would not fit.
    for rnd in range(args.rounds):
        for n in args.sessions:
            if not budget.fits(n, rnd):
                continue
            began = loop.time()
            order = ["gateway", "direct"] if rnd % 2 == 0 else ["direct", "gateway"]
            pair: dict[str, RunResult] = {}
            for name in order:
                pair[name] = await run_load(name, paths[name], n, args.requests, pids)
                if name == "gateway":
                    stale = await healthz_sessions(gateway.base, args.timeout)
                    if stale:
                        pair[name].notes.append(f"{stale} sessions left after DELETE")
            budget.spent[n] = loop.time() - began
            results.setdefault(n, []).append((pair["gateway"], pair["direct"]))
            g, d = pair["gateway"], pair["direct"]
            print(
                f"N={n:<4} round {rnd + 1}/{args.rounds}  {budget.spent[n]:5.1f}s  "
                f"thr g/d {ratio(g.rps, d.rps):.2f}x  p50 g/d {ratio(g.pct(50), d.pct(50)):.2f}x"
            )
            for name in ("gateway", "direct"):
                print(f"    {fmt_run(pair[name])}", flush=True)


async def compare_stores(
    args: argparse.Namespace,
    upstream: Child,
    sse_url: str,
    tmp: Path,
    children: list[Child],
    budget: Budget,
    results: StoreRounds,
) -> None:
    loop = asyncio.get_running_loop()
    stores: list[str] = args.stores
    gateways: dict[str, Gateway] = {}
    for store in stores:
        gateways[store] = await start_gateway(store, sse_url, args.gateway_log_level, tmp, children)
    print(f"upstream {sse_url}", flush=True)
    for gw in gateways.values():
        print(f"gateway[{gw.store}] {gw.mcp_url}  --store-url {gw.store_url}", flush=True)

    def maker(gw: Gateway) -> Maker:
        return lambda http: GatewaySession(http, gw.mcp_url, args.timeout, args.resumable)

    makers = {store: maker(gw) for store, gw in gateways.items()}
    pids = {store: {**gw.pids(upstream), "bench": os.getpid()} for store, gw in gateways.items()}
    for store in stores:  # warm-up, untimed, as in the other mode
        warm = await run_load(store, makers[store], 2, 5, pids[store])
        if warm.errors:
            print(f"warm-up {fmt_run(warm)}", flush=True)

    # Round-robin over N as in the other mode. Within a round every store runs
    # once, the order rotating by one from round to round (with two stores it
    # alternates), so no store always runs first or right after another.
    for rnd in range(args.rounds):
        shift = rnd % len(stores)
        order = [*stores[shift:], *stores[:shift]]
        for n in args.sessions:
            if not budget.fits(n, rnd):
                continue
            began = loop.time()
            runs: dict[str, RunResult] = {}
            results.setdefault(n, []).append(runs)  # partial rounds count too
            for store in order:
                run = await run_load(store, makers[store], n, args.requests, pids[store])
                stale = await healthz_sessions(gateways[store].base, args.timeout)
                if stale:
                    run.notes.append(f"{stale} sessions left after DELETE")
                runs[store] = run
            budget.spent[n] = loop.time() - began
            base = runs[BASELINE]
            thr = "  ".join(
                f"{s} {ratio(runs[s].rps, base.rps):.2f}x" for s in stores if s != BASELINE
            )
            print(
                f"N={n:<4} round {rnd + 1}/{args.rounds}  {budget.spent[n]:5.1f}s  "
                f"order {','.join(order)}  thr/{BASELINE}: {thr}"
            )
            for store in stores:
                print(f"    {fmt_run(runs[store])}", flush=True)


async def bench(args: argparse.Namespace, children: list[Child], tmp: Path) -> int:
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    # The load phase ends RESERVE seconds early: stopping the children is budgeted too.
    budget = Budget(t_start + max(1.0, args.max_seconds - RESERVE))
    pairs: Pairs = {}
    rounds: StoreRounds = {}
    status = 0
    try:
        async with asyncio.timeout_at(budget.deadline):
            upstream = Child(
                "upstream",
                [sys.executable, "-m", "bridge.examples.server", "--transport", "sse",
                 "--host", HOST, "--port", "0"],
            )  # fmt: skip
            children.append(upstream)
            up_port = await upstream.start(uvicorn_ready)
            sse_url = f"http://{HOST}:{up_port}/sse"
            if args.stores:
                await compare_stores(args, upstream, sse_url, tmp, children, budget, rounds)
            else:
                await gateway_vs_direct(args, upstream, sse_url, tmp, children, budget, pairs)
    except TimeoutError:
        print(f"\nGLOBAL DEADLINE: --max-seconds {args.max_seconds:g} reached; results are partial")
        status = 3
    if budget.skipped:
        print(f"\nskipped to stay within --max-seconds: {', '.join(budget.skipped)}")
    print()
    if pairs:
        print(summary(pairs, args.requests))
    if rounds:
        print(store_summary(rounds, args.stores, args.requests))
    print(f"load phase took {loop.time() - t_start:.1f}s (--max-seconds {args.max_seconds:g})")
    runs = [r for ps in pairs.values() for p in ps for r in p]
    runs += [r for rs in rounds.values() for rnd in rs for r in rnd.values()]
    if any(r.error_count for r in runs):
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
    tmp = Path(tempfile.mkdtemp(prefix="mcp-bridge-bench-"))  # SQLite file, redis-server's dir
    try:
        return await bench(args, children, tmp)
    finally:
        # Gateways first (they end their upstream sessions and close their
        # stores), together; then the upstream and redis-server. Each gets
        # SIGTERM, a grace within what is left of --max-seconds, SIGKILL.
        try:
            for stage in sorted({child.stage for child in children}):
                grace = max(1.0, min(STOP_GRACE, (hard_stop - loop.time()) / 2))
                await asyncio.gather(*(c.stop(grace) for c in children if c.stage == stage))
        finally:
            for child in children:
                child.kill_now()
            shutil.rmtree(tmp, ignore_errors=True)
        for child in children:
            report_stderr(child)


def report_stderr(child: Child) -> None:
    """Warnings and errors a child logged, grouped by event, one example each."""
    if not child.notable:
        return
    groups: Counter[str] = Counter()
    example: dict[str, str] = {}
    for line in child.notable:
        key = REDIS_PREFIX.sub("", line)[:60]
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


def store_list(text: str) -> list[str]:
    stores = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(stores) - set(STORES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown store {', '.join(unknown)}: use {STORES}")
    if BASELINE not in stores or len(set(stores)) != len(stores):
        raise argparse.ArgumentTypeError(
            f"list each store once, {BASELINE} included (the ratios are to it)"
        )
    return stores


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument(
        "--sessions", default="1,50,200",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="comma-separated concurrent session counts N (default 1,50,200)",
    )  # fmt: skip
    p.add_argument("--requests", type=int, default=20, help="tools/list per session (M)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per N (medians over rounds)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=120.0, help="global deadline")
    p.add_argument(
        "--gateway-log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="the gateway's --log-level (default info, as deployed: one log line per request)",
    )  # fmt: skip
    p.add_argument(
        "--stores", type=store_list, default=None, metavar="memory,sqlite,redis",
        help="compare these gateway stores (memory included) instead of gateway vs direct",
    )  # fmt: skip
    p.add_argument(
        "--resumable", action="store_true",
        help="give each tools/list a progress token, so the gateway answers on a stored, "
        "resumable SSE stream instead of plain JSON (measures the event store)",
    )  # fmt: skip
    p.add_argument(
        "--gateway-store", choices=STORES, default=None,
        help="the gateway's store in the gateway-vs-direct mode (default memory)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if not args.sessions or min(args.sessions) < 1 or args.requests < 1 or args.rounds < 1:
        p.error("--sessions, --requests and --rounds must be positive")
    if args.stores and args.gateway_store:
        p.error("--gateway-store is for the gateway-vs-direct mode; --stores names the stores")
    args.gateway_store = args.gateway_store or BASELINE
    return args


def run_main(
    amain: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    args: argparse.Namespace,
    prog: str,
) -> int:
    """Run a bench's ``amain``: 130 on Ctrl-C, 2 when a child failed to start."""
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a child failed to start
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(amain, parse_args(argv), "load.py")


if __name__ == "__main__":
    raise SystemExit(main())
