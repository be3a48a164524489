"""Sessionless (2026-07-28) requests vs session-era requests through one gateway, one run.

One gateway (``mcp-bridge --stdio "python -m bridge.examples.server"``, default
``--share principal``, ``--store-url memory://``) serves both eras on ``/mcp``
in front of the same stdio upstream, so the comparison is the front door's own
cost. For each N in ``--clients`` and each round, N concurrent clients make M
(``--requests``) sequential requests on two paths:

- ``modern``: revision 2026-07-28, no handshake, no session. Every request is
  one self-contained POST (``MCP-Protocol-Version``, ``Mcp-Method``,
  ``Mcp-Name`` headers; version, client info and capabilities in ``_meta``)
  answered with plain JSON, ``resultType`` ``complete``.
- ``session``: revision 2025-11-25. Each client does ``initialize`` and
  ``notifications/initialized`` once (untimed), then its M requests with
  ``Mcp-Session-Id`` (timed), then DELETE (untimed).

The requests (``--method``): ``tools/call echo`` with a text unique to the
request (default), ``tools/list``, or the two alternately (``mix``). Every
answer is checked: the echo must carry its own text, ``tools/list`` must name
the example's tools, a modern answer must be plain JSON, ``complete``, without
``Mcp-Session-Id``. A wrong answer is an error, counted and printed.

Before its timed window each modern client makes one ``GET /healthz``, so both
paths start with the same warm TCP connections (the session era's come from
its handshake). The timing, barriers and CPU accounting are ``load.run_load``'s:
all clients wait at a barrier, do their M requests, wait at a second barrier;
the gateway's, the upstream's and this script's CPU time in between is read
from /proc, and the requests the upstream logs (relayed by the gateway at info
level) are counted, to show that each request costs the upstream one request.
Rounds go round-robin over N; within a round the two paths run back to back,
which goes first alternating from round to round. The summary quotes medians
over rounds and the median of the per-round modern/session ratios, and ends
with the CPU per request at the largest N, split between the gateway, the
upstream and the client. Processes, deadlines and exit codes as in bench/load.py; see
bench/README.md, "Sessionless (2026-07-28) vs session era".

    python bench/modern.py --clients 1,50,200 --requests 20 --rounds 3 --max-seconds 240
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
from load import HOST, Child, GatewaySession, RequestFailed, RunResult, med, num, ratio

MODERN_VERSION = "2026-07-28"
SESSION_VERSION = "2025-11-25"
PATHS = ("modern", "session")
METHODS = ("call", "list", "mix")
UPSTREAM_CMD = f"{sys.executable} -m bridge.examples.server"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
SESSION_INIT = {
    "protocolVersion": SESSION_VERSION,
    "capabilities": {},
    "clientInfo": load.CLIENT_INFO,
}
#: Error kinds that are answers, but wrong ones (the rest are failures: timeouts, HTTP errors...).
WRONG = frozenset(
    {
        "wrong echo text",
        "wrong tools/list result",
        "reply for another request",
        "JSON reply for another request",
        "modern: not plain JSON",
        "modern: resultType not complete",
        "modern: answer has Mcp-Session-Id",
        "unparsable answer",
    }
)
#: FastMCP logs each request it gets; the gateway relays the line (child_stderr, info).
UPSTREAM_REQUEST = re.compile(r"Processing request of type (\w+)")
TIMED_TYPES = ("CallToolRequest", "ListToolsRequest")  # what the timed requests become upstream
DRAIN_WAIT = 2.0  # seconds to wait for the gateway's relayed upstream log lines after a run


@dataclass
class Measured:
    """One run, and the requests the upstream logged in its timed window, by type."""

    run: RunResult
    upstream: Counter[str] = field(default_factory=Counter)
    counted: bool = False  # False: the upstream's log lines were not all seen

    def per_request(self) -> float:
        """Upstream requests per request sent in the window (nan if not counted)."""
        sent = self.run.expected
        return sum(self.upstream.values()) / sent if self.counted and sent else float("nan")


Pairs = dict[int, list[dict[str, Measured]]]  # N -> rounds -> path -> run


# -- clients --------------------------------------------------------------------------


class Client(GatewaySession):
    """A client of either era; ``call`` makes one request and returns its ``result``."""

    def __init__(self, http: aiohttp.ClientSession, base: str, timeout: float, method: str) -> None:
        super().__init__(http, f"{base}/mcp", timeout)
        self.base = base
        self.method = method
        self.tag = secrets.token_hex(4)

    async def _post(
        self, body: bytes, rid: int | None, headers: dict[str, str] | None = None
    ) -> tuple[Any, Any]:
        """POST one message; the answer's headers and the reply to ``rid`` (plain JSON or SSE).

        Unlike ``load.GatewaySession._post``, a JSON refusal is reported with its
        status and JSON-RPC code.
        """
        async with (
            asyncio.timeout(self._timeout),
            self._http.post(self._url, data=body, headers=headers or self._headers) as resp,
        ):
            payload = await resp.read()
            if rid is None:
                if resp.status != 202:
                    raise RequestFailed(f"http {resp.status}")
                return resp.headers, None
            if resp.content_type == "application/json":
                message = parse_json(payload)
                if resp.status != 200:  # a refusal: its status and JSON-RPC code
                    error = message.get("error")
                    code = error.get("code") if isinstance(error, dict) else None
                    raise RequestFailed(f"http {resp.status} jsonrpc {code}")
                if message.get("id") != rid:
                    raise RequestFailed("JSON reply for another request")
                return resp.headers, message
            if resp.status != 200:
                raise RequestFailed(f"http {resp.status}")
            if not resp.content_type.startswith("text/event-stream"):
                raise RequestFailed(f"content-type {resp.content_type}")
            messages = sse_json(payload)
            for message in messages:
                if message.get("id") == rid and ("result" in message or "error" in message):
                    return resp.headers, message
            if any("result" in m or "error" in m for m in messages):
                raise RequestFailed("reply for another request")
            raise RequestFailed("stream ended without the response")

    async def call(
        self, method: str, params: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def step(self, i: int) -> None:
        """The i-th timed request, checked."""
        if self.method == "list" or (self.method == "mix" and i % 2):
            tools = (await self.call("tools/list", {})).get("tools")
            if not isinstance(tools, list) or {t.get("name") for t in tools} != load.EXPECTED_TOOLS:
                raise RequestFailed("wrong tools/list result")
            return
        text = f"{self.tag}.{i}.{secrets.token_hex(6)}"
        params = {"name": "echo", "arguments": {"text": text}}
        result = await self.call("tools/call", params, "echo")
        content = result.get("content")
        first = content[0] if isinstance(content, list) and content else {}
        if result.get("isError") or not isinstance(first, dict) or first.get("text") != text:
            raise RequestFailed("wrong echo text")


def parse_json(text: bytes | str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except ValueError:
        raise RequestFailed("unparsable answer") from None
    if not isinstance(message, dict):
        raise RequestFailed("unparsable answer")
    return message


def sse_json(body: bytes) -> list[dict[str, Any]]:
    """The JSON ``data`` of every SSE event in a whole body; events without data skipped."""
    out: list[dict[str, Any]] = []
    data: list[str] = []
    for raw in [*body.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"), ""]:
        if raw.startswith("data:"):
            data.append(raw[5:].removeprefix(" "))
        elif not raw:
            if "".join(data).strip():
                out.append(parse_json("\n".join(data)))
            data = []
    return out


def jsonrpc_result(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        error = message["error"]
        raise RequestFailed(
            f"jsonrpc error {error.get('code') if isinstance(error, dict) else '?'}"
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise RequestFailed("reply without a result object")
    return result


class ModernClient(Client):
    """Revision 2026-07-28: every request a POST of its own, no session."""

    def __init__(self, http: aiohttp.ClientSession, base: str, timeout: float, method: str) -> None:
        super().__init__(http, base, timeout, method)
        self._headers["MCP-Protocol-Version"] = MODERN_VERSION

    async def open(self) -> None:
        """No handshake: only a warm TCP connection, as the session era gets from its own."""
        async with (
            asyncio.timeout(self._timeout),
            self._http.get(f"{self.base}/healthz") as resp,
        ):
            await resp.read()
            if resp.status != 200:
                raise RequestFailed(f"GET /healthz http {resp.status}")

    async def close(self, graceful: bool = True) -> None:
        return  # nothing to end

    async def call(
        self, method: str, params: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        rid = next(self._ids)
        headers = {**self._headers, "Mcp-Method": method}
        if name is not None:
            headers["Mcp-Name"] = name
        body = load.rpc(method, rid, {**params, "_meta": MODERN_META})
        answer, message = await self._post(body, rid, headers)
        if not answer.get("Content-Type", "").startswith("application/json"):
            raise RequestFailed("modern: not plain JSON")
        if "Mcp-Session-Id" in answer:
            raise RequestFailed("modern: answer has Mcp-Session-Id")
        result = jsonrpc_result(message)
        if result.get("resultType") != "complete":
            raise RequestFailed("modern: resultType not complete")
        return result


class SessionClient(Client):
    """Revision 2025-11-25: ``initialize`` once, then requests in the session, DELETE."""

    async def open(self) -> None:
        rid = next(self._ids)
        headers, message = await self._post(load.rpc("initialize", rid, SESSION_INIT), rid)
        result = jsonrpc_result(message)
        if result.get("protocolVersion") != SESSION_VERSION:
            raise RequestFailed(f"initialize: version {result.get('protocolVersion')}")
        session_id = headers.get("Mcp-Session-Id")
        if not session_id:
            raise RequestFailed("initialize: no Mcp-Session-Id")
        self._headers["Mcp-Session-Id"] = session_id
        self._headers["MCP-Protocol-Version"] = SESSION_VERSION
        await self._post(load.rpc("notifications/initialized"), None)

    async def call(
        self, method: str, params: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        rid = next(self._ids)
        _, message = await self._post(load.rpc(method, rid, params or None), rid)
        return jsonrpc_result(message)


async def client_step(session: GatewaySession | load.DirectSession, i: int) -> None:
    assert isinstance(session, Client)
    await session.step(i)


# -- the gateway and its upstream --------------------------------------------------------


class GatewayChild(Child):
    """The gateway's process; counts the upstream requests its stderr relays, by type."""

    def __init__(self, name: str, argv: Sequence[str], **kwargs: Any) -> None:
        super().__init__(name, argv, **kwargs)
        self.upstream_requests: Counter[str] = Counter()
        self.counted = asyncio.Event()  # set at each one counted

    def _notable(self, line: str) -> bool:
        if '"child_stderr"' in line and (match := UPSTREAM_REQUEST.search(line)):
            self.upstream_requests[match.group(1)] += 1
            self.counted.set()
        return super()._notable(line)

    async def wait_counted(self, since: Counter[str], total: int, seconds: float) -> bool:
        """Whether ``total`` timed requests past ``since`` are counted, within ``seconds``."""

        def seen() -> bool:
            return sum(self.upstream_requests[t] - since[t] for t in TIMED_TYPES) >= total

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not seen():
                    self.counted.clear()
                    await self.counted.wait()
        return seen()


class Gateway:
    """The one gateway process, and the stdio upstream(s) it starts."""

    def __init__(self, child: GatewayChild, base: str) -> None:
        self.child = child
        self.base = base
        self.seen: set[int] = set()  # every upstream pid ever seen, killed at the end

    def upstreams(self) -> list[int]:
        try:
            pids = [p.pid for p in psutil.Process(self.child.pid).children(recursive=True)]
        except psutil.Error:
            pids = []
        self.seen.update(pids)
        return pids

    def pids(self) -> dict[str, int | None]:
        """The processes a run reads the CPU time of (``upstream`` if exactly one)."""
        ups = self.upstreams()
        pids: dict[str, int | None] = {"gateway": self.child.pid, "bench": os.getpid()}
        if len(ups) == 1:
            pids["upstream"] = ups[0]
        return pids


async def start_gateway(log_level: str, children: list[Child]) -> Gateway:
    argv = load.gateway_argv(UPSTREAM_CMD, log_level, "memory://", "--stdio")
    child = GatewayChild("gateway", argv, stage=0)
    children.append(child)
    port = await load.start_gateway_child(child)
    return Gateway(child, f"http://{HOST}:{port}")


async def one_run(path: str, gw: Gateway, n: int, args: argparse.Namespace) -> Measured:
    cls = ModernClient if path == "modern" else SessionClient

    def make(http: aiohttp.ClientSession) -> Client:
        return cls(http, gw.base, args.timeout, args.method)

    since: Counter[str] = Counter()

    def on_start() -> None:  # at the barrier: upstream requests from here on are the run's
        since.update(gw.child.upstream_requests)

    before = gw.pids()
    run = await load.run_load(path, make, n, args.requests, before, client_step, on_start)
    measured = Measured(run)
    if args.gateway_log_level in ("debug", "info"):
        # Every answered request reached the upstream; refused ones may not have.
        measured.counted = await gw.child.wait_counted(since, run.ok, DRAIN_WAIT)
        measured.upstream = gw.child.upstream_requests - since
    if "upstream" not in before:
        run.notes.append(f"{len(gw.upstreams())} upstream processes: upstream CPU not read")
    elif before.get("upstream") not in gw.upstreams():
        run.notes.append("upstream process changed during the run")
    sessions = await load.healthz_sessions(gw.base, args.timeout)
    if sessions:
        run.notes.append(f"{sessions} sessions live after the run")
    return measured


def fmt_measured(m: Measured) -> str:
    if not m.counted:
        return load.fmt_run(m.run)
    kinds = " ".join(f"{k} {v}" for k, v in sorted(m.upstream.items()))
    return f"{load.fmt_run(m.run)}  upstream got: {kinds} ({m.per_request():.2f}/req)"


# -- output ---------------------------------------------------------------------------------


def wrong(run: RunResult) -> int:
    return sum(v for k, v in run.errors.items() if k in WRONG)


def path_ratios(rounds: list[dict[str, Measured]], value: str) -> list[float]:
    """Per round with both paths: modern's ``value`` divided by the session era's."""
    out = []
    for runs in rounds:
        if all(p in runs for p in PATHS):
            m, s = runs["modern"].run, runs["session"].run
            if value == "rps":
                out.append(ratio(m.rps, s.rps))
            elif value == "p50":
                out.append(ratio(m.pct(50), s.pct(50)))
            else:
                out.append(ratio(m.cpu_ms_per_req("gateway"), s.cpu_ms_per_req("gateway")))
    return out


def summary(results: Pairs, args: argparse.Namespace) -> str:
    what = {"call": "tools/call echo", "list": "tools/list", "mix": "echo and tools/list"}
    head = (
        f"{'N':>4} | {'path':<7} | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'gw CPU':>6} {'up CPU':>6} {'bench':>6} {'up req':>6} | {'err':>3} {'wrong':>5} | "
        f"{'m/s thr':>7} {'m/s p50':>7} {'m/s gwCPU':>9} | {'other':>5} | rounds"
    )
    lines = [head, "-" * len(head)]
    for n, rounds in sorted(results.items()):
        for path in PATHS:
            measured = [r[path] for r in rounds if path in r]
            runs = [m.run for m in measured]
            if not runs:
                continue
            cpu = " ".join(
                num(med([r.cpu_ms_per_req(c) for r in runs]), 6)
                for c in ("gateway", "upstream", "bench")
            )
            cpu += " " + num(med([m.per_request() for m in measured]), 6)
            tail = (
                f"{num(med(path_ratios(rounds, 'rps')), 6, 'x')} "
                f"{num(med(path_ratios(rounds, 'p50')), 6, 'x')} "
                f"{num(med(path_ratios(rounds, 'cpu')), 8, 'x')}"
                if path == "modern"
                else f"{'':>7} {'':>7} {'':>9}"
            )
            lines.append(
                f"{n:>4} | {path:<7} | {med([r.rps for r in runs]):>7.1f} "
                f"{num(med([r.pct(50) for r in runs]), 7)} "
                f"{num(med([r.pct(99) for r in runs]), 7)} | "
                f"{cpu} | {sum(r.error_count for r in runs):>3} {sum(wrong(r) for r in runs):>5} | "
                f"{tail} | {num(med([r.other_cores for r in runs]), 5)} | {len(runs)}"
            )
    lines += [
        f"N concurrent clients x {args.requests} sequential {what[args.method]} each, one gateway,",
        "one stdio upstream. Medians over rounds; err (all failed requests, wrong included) and",
        "wrong (answers that arrived but were not right) are totals over rounds. gw CPU, up CPU,",
        "bench = CPU ms per request of the gateway, the upstream and this script (the client);",
        "up req = requests the upstream logged in the window per request sent (1.00: no extra).",
        "m/s = median over rounds of the per-round modern/session ratio: thr of req/s, p50 of",
        "p50 latency, gwCPU of the gateway's CPU per request. other = cores busy meanwhile with",
        "anything else (other programs: noise; 2 = the whole of a 2-core machine).",
    ]
    split = cost_split(results)
    if split:
        lines.append(split)
    return "\n".join(lines)


def cost_split(results: Pairs) -> str:
    """Where a request's cost goes, by process, at the largest N (medians over rounds)."""
    if not results:
        return ""
    n = max(results)
    parts = []
    for path in PATHS:
        runs = [r[path].run for r in results[n] if path in r]
        cpu = {
            c: med([r.cpu_ms_per_req(c) for r in runs]) for c in ("gateway", "upstream", "bench")
        }
        total = sum(cpu.values())
        if total != total:  # nan: not measured
            return ""
        parts.append(
            f"{path} {total:.2f} ms = gateway {cpu['gateway']:.2f} ({cpu['gateway'] / total:.0%})"
            f" + upstream {cpu['upstream']:.2f} + client {cpu['bench']:.2f}"
        )
    return f"CPU per request at N={n}, all processes: " + "; ".join(parts)


# -- orchestration ---------------------------------------------------------------------------


async def compare(
    args: argparse.Namespace, children: list[Child], budget: load.Budget, results: Pairs
) -> Gateway:
    loop = asyncio.get_running_loop()
    gw = await start_gateway(args.gateway_log_level, children)
    print(f"gateway {gw.base}/mcp  --stdio {UPSTREAM_CMD!r}  --store-url memory://", flush=True)
    for path in PATHS:  # warm-up, untimed: the upstream's start, connections, code paths
        warm = await one_run(path, gw, 2, argparse.Namespace(**{**vars(args), "requests": 5}))
        if warm.run.errors:
            print(f"warm-up {fmt_measured(warm)}", flush=True)
    print(f"upstream pids {gw.upstreams()}", flush=True)
    for rnd in range(args.rounds):
        order = list(PATHS) if rnd % 2 == 0 else list(reversed(PATHS))
        for n in args.clients:
            if not budget.fits(n, rnd):
                continue
            began = loop.time()
            runs: dict[str, Measured] = {}
            results.setdefault(n, []).append(runs)
            for path in order:
                runs[path] = await one_run(path, gw, n, args)
            budget.spent[n] = loop.time() - began
            m, s = runs["modern"].run, runs["session"].run
            print(
                f"N={n:<4} round {rnd + 1}/{args.rounds}  {budget.spent[n]:5.1f}s  "
                f"order {','.join(order)}  thr m/s {ratio(m.rps, s.rps):.2f}x  "
                f"p50 m/s {ratio(m.pct(50), s.pct(50)):.2f}x  gw CPU m/s "
                f"{ratio(m.cpu_ms_per_req('gateway'), s.cpu_ms_per_req('gateway')):.2f}x"
            )
            for path in PATHS:
                print(f"    {fmt_measured(runs[path])}", flush=True)
    return gw


async def amain(args: argparse.Namespace) -> int:
    children: list[Child] = []
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    hard_stop = t_start + args.max_seconds
    budget = load.Budget(t_start + max(1.0, args.max_seconds - load.RESERVE))
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    results: Pairs = {}
    status = 0
    gw: Gateway | None = None
    try:
        async with asyncio.timeout_at(budget.deadline):
            gw = await compare(args, children, budget, results)
    except TimeoutError:
        print(f"\nGLOBAL DEADLINE: --max-seconds {args.max_seconds:g} reached; results are partial")
        status = 3
    finally:
        seen = set(gw.seen) if gw is not None else set()
        if gw is None and children:  # failed before compare returned: look now
            with contextlib.suppress(psutil.Error):
                seen = {p.pid for p in psutil.Process(children[0].pid).children(recursive=True)}
        try:
            grace = max(1.0, min(load.STOP_GRACE, (hard_stop - loop.time()) / 2))
            await asyncio.gather(*(c.stop(grace) for c in children))
        finally:
            for child in children:
                child.kill_now()
            for pid in seen:  # the stdio upstream, if the gateway left it behind
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
        for child in children:
            load.report_stderr(child)
    if budget.skipped:
        print(f"\nskipped to stay within --max-seconds: {', '.join(budget.skipped)}")
    print()
    if results:
        print(summary(results, args))
    print(f"run took {loop.time() - t_start:.1f}s (--max-seconds {args.max_seconds:g})")
    runs = [m.run for rounds in results.values() for rnd in rounds for m in rnd.values()]
    if any(r.error_count for r in runs):
        status = status or 1
    return status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument(
        "--clients", default=[1, 50, 200],
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="comma-separated concurrent client counts N (default 1,50,200)",
    )  # fmt: skip
    p.add_argument("--requests", type=int, default=20, help="requests per client (M)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per N (medians over rounds)")
    p.add_argument(
        "--method", choices=METHODS, default="call",
        help="call: tools/call echo (default); list: tools/list; mix: the two alternately",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=240.0, help="global deadline")
    p.add_argument(
        "--gateway-log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="the gateway's --log-level (default info, as deployed: one log line per request)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if not args.clients or min(args.clients) < 1 or args.requests < 1 or args.rounds < 1:
        p.error("--clients, --requests and --rounds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return load.run_main(amain, parse_args(argv), "modern.py")


if __name__ == "__main__":
    raise SystemExit(main())
