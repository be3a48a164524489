"""Hot-path benchmark: the gateway's own CPU per proxied message, against bare endpoints and a peer.

Starts everything itself on free 127.0.0.1 ports and prints the figures and the
issue #13 ratios, medians over ``--rounds`` (each round runs every path once,
back to back, the order alternating):

- ``http``: a bare aiohttp endpoint (``--serve-bare``, this file: plain aiohttp,
  stdlib json, no MCP library) answering Streamable HTTP with JSON, direct and
  as the gateway's Streamable HTTP upstream. Target: gateway CPU per
  ``tools/list`` <= 2.5x the bare endpoint's own CPU per request, at every N.
  Also, for reference, ``floor`` (``--serve-floor``): the least reverse proxy
  aiohttp makes (its server and its client on uvloop, bytes and the session
  header passed through; no session, pool, log or metric), in front of the
  same endpoint: what the stack alone costs.
- ``sse``: the FastMCP legacy SSE example server, direct and through the
  gateway (bench/load.py's two paths). Targets: req/s >= 0.9x at N >= 50,
  added p50 <= 1 ms at N = 1.
- ``stdio``: tests/fixtures/stdio_server.py behind the gateway (``--share
  principal``, the default) and behind ``mcp-proxy`` (PyPI, installed into
  ``--peers-dir``), echo and tools/list alternately (bench/pool.py's load).
  Target: gateway req/s >= 1.2x mcp-proxy's at N >= 50.
- ``stores``: ``tools/call`` (a stored, resumable request) through gateways on
  memory, SQLite and Redis in front of the bare endpoint. Target: CPU per
  request (the gateway's, plus redis-server's) <= 1.5x memory's.
- ``growth``: the gateway in front of the bare endpoint at N = 1 ... 1000
  sessions: CPU per request and the gateway's RSS should stay flat.

    python bench/hotpath.py                       # every part, short rounds
    python bench/hotpath.py --parts http --sessions 1,50,200 --rounds 5
    python bench/hotpath.py --serve-bare --port 0  # the bare endpoint alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
import pool
from load import HOST, Child, GatewaySession, RequestFailed, RunResult, med, ratio

PARTS = ("http", "sse", "stdio", "stores", "growth")
BARE_READY = "bare endpoint listening on port "
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in sorted(load.EXPECTED_TOOLS)]
MiB = 1024 * 1024


# -- the bare endpoint ---------------------------------------------------------------


async def bare_post(request: web.Request) -> web.Response:
    """Streamable HTTP, JSON answers only: what the least a server can do costs."""
    message = json.loads(await request.read())
    method, rid = message.get("method"), message.get("id")
    if rid is None:
        return web.Response(status=202)
    headers = {}
    if method == "initialize":
        version = message["params"]["protocolVersion"]
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "bare", "version": "0"},
        }
        headers["Mcp-Session-Id"] = secrets.token_hex(16)
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        text = message["params"]["arguments"]["text"]
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        result = {}
    body = {"jsonrpc": "2.0", "id": rid, "result": result}
    return web.json_response(body, headers=headers)


FLOOR_READY = "floor proxy listening on port "
#: Request headers the floor proxy passes on (the rest are hop-by-hop or aiohttp's own).
FLOOR_HEADERS = ("Accept", "Content-Type", "Mcp-Session-Id", "MCP-Protocol-Version")


def serve_floor(port: int, upstream: str) -> None:
    """The least aiohttp reverse proxy: each request's body and MCP headers to ``upstream``,
    its answer back; uvloop where it installs, as the gateway; nothing else."""
    state: dict[str, aiohttp.ClientSession] = {}

    async def proxy(request: web.Request) -> web.Response:
        headers = {h: v for h in FLOOR_HEADERS if (v := request.headers.get(h)) is not None}
        async with state["http"].request(
            request.method, upstream, data=await request.read(), headers=headers
        ) as answer:
            body = await answer.read()
            back = {h: v for h in ("Content-Type", "Mcp-Session-Id")
                    if (v := answer.headers.get(h)) is not None}  # fmt: skip
            return web.Response(status=answer.status, body=body, headers=back)

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        state["http"] = aiohttp.ClientSession()
        print(f"{FLOOR_READY}{port}", file=sys.stderr, flush=True)
        yield
        await state["http"].close()

    app = web.Application()
    app.router.add_route("*", "/mcp", proxy)
    app.cleanup_ctx.append(lifetime)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


async def start_floor(upstream: str, children: list[Child]) -> tuple[Child, str]:
    port = load.free_port()
    argv = [sys.executable, __file__, "--serve-floor", upstream, "--port", str(port)]
    child = Child("floor", argv)
    children.append(child)
    await child.start(lambda _: None, probe_port=port)
    return child, f"http://{HOST}:{port}/mcp"


def serve_bare(port: int) -> None:
    app = web.Application()
    app.router.add_post("/mcp", bare_post)
    app.router.add_delete("/mcp", lambda _: _ok())
    app.router.add_get("/mcp", lambda _: _ok(405))

    async def ready(_: web.Application) -> None:
        # On the next turn, once run_app's site is listening.
        print(f"{BARE_READY}{port}", file=sys.stderr, flush=True)

    app.on_startup.append(ready)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


async def _ok(status: int = 200) -> web.Response:
    return web.Response(status=status)


def bare_ready(line: str) -> int | None:
    return int(line[len(BARE_READY) :]) if line.startswith(BARE_READY) else None


async def start_bare(children: list[Child]) -> tuple[Child, str]:
    port = load.free_port()
    child = Child("bare", [sys.executable, __file__, "--serve-bare", "--port", str(port)])
    children.append(child)
    await child.start(lambda _: None, probe_port=port)
    return child, f"http://{HOST}:{port}/mcp"


async def start_gateway(
    upstream_url: str,
    store: str,
    args: argparse.Namespace,
    tmp: Path,
    children: list[Child],
    pythonpath: Path | None = None,
) -> load.Gateway:
    """A gateway whose one server ``default`` is the Streamable HTTP ``upstream_url``
    (imported from ``pythonpath`` if given)."""
    config = tmp / "servers.json"
    doc = {"mcpServers": {"default": {"url": upstream_url, "type": "streamable-http"}}}
    await asyncio.to_thread(write_file, config, json.dumps(doc))
    store_child, store_url = None, "memory://"
    if store == "sqlite":
        store_url = f"sqlite://{tmp / 'sqlite' / 'sessions.db'}"
    elif store == "redis":
        store_child, redis_port = await load.start_redis(tmp, children)
        store_url = f"redis://{HOST}:{redis_port}/0"
    argv = load.gateway_argv(str(config), args.gateway_log_level, store_url, "--config")
    child = Child(f"gateway[{store}]", [*argv, *args.gateway_arg], stage=0,
                  preexec=lambda: pool.nofile(None))  # fmt: skip
    children.append(child)
    saved = os.environ.get("PYTHONPATH")
    if pythonpath is not None:  # the child inherits the environment as it is at its start
        os.environ["PYTHONPATH"] = str(pythonpath)
    try:
        port = await load.start_gateway_child(child)  # probed: warning level prints no port
    finally:
        if pythonpath is not None:
            os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)
    return load.Gateway(store, store_url, child, f"http://{HOST}:{port}", store_child)


def write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def rss_mib(pid: int | None) -> float:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss / MiB
    return float("nan")


class CallSession(GatewaySession):
    """Every timed request a ``tools/call`` echo with a unique text, checked."""

    async def call_echo(self, i: int) -> None:
        rid = next(self._ids)
        text = f"{i}.{secrets.token_hex(6)}"
        params = {"name": "echo", "arguments": {"text": text}}
        _, message = await self._post(load.rpc("tools/call", rid, params), rid)
        if "error" in message:
            raise RequestFailed(f"jsonrpc error {message['error'].get('code')}")
        if (message.get("result") or {}).get("content", [{}])[0].get("text") != text:
            raise RequestFailed("wrong echo text")


async def echo_call(session: GatewaySession | load.DirectSession, i: int) -> None:
    assert isinstance(session, CallSession)
    await session.call_echo(i)


# -- results -------------------------------------------------------------------------


@dataclass
class Table:
    """Runs by (part, path, N), in round order."""

    runs: dict[tuple[str, str, int], list[RunResult]] = field(default_factory=dict)
    rss: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    verdicts: list[str] = field(default_factory=list)

    def add(self, part: str, run: RunResult, rss: float = float("nan")) -> None:
        key = (part, run.path, run.sessions)
        self.runs.setdefault(key, []).append(run)
        self.rss.setdefault(key, []).append(rss)
        print(f"  {part:<6} N={run.sessions:<5} {load.fmt_run(run)}"
              f"{f'  RSS {rss:.0f} MiB' if rss == rss else ''}", flush=True)  # fmt: skip

    def get(self, part: str, path: str, n: int) -> list[RunResult]:
        return self.runs.get((part, path, n), [])

    def verdict(self, name: str, values: list[float], op: str, limit: float) -> None:
        value = med(values)
        ok = value <= limit if op == "<=" else value >= limit
        state = "met" if ok else "MISSED"
        spread = ", ".join(f"{v:.2f}" for v in values)
        line = f"{name:<52} {value:6.2f} {op} {limit:<4g} {state:<6} (rounds: {spread})"
        self.verdicts.append(line)


def capacity(run: RunResult, *names: str) -> float:
    """Requests per second the CPU allows the processes ``names`` serving ``run``.

    Each of them works on one thread, so at most one core's worth (1 / its CPU
    seconds per request), and all together at most the machine's cores.
    """
    costs = [run.cpu_ms_per_req(n) / 1000 for n in names if n in run.cpu]
    costs = [c for c in costs if c > 0]
    if not costs:
        return float("nan")
    return min(min(1 / c for c in costs), (os.cpu_count() or 1) / sum(costs))


def cpu_bound(pairs: list[tuple[RunResult, RunResult]]) -> str:
    """What gateway / direct req/s could be, per round, were CPU the only limit.

    The direct path is the upstream and the load generator; the gateway path
    adds the gateway, which on a machine of few cores takes CPU from both. A
    ratio measured near this one says the run was bound by the machine's
    cores (or the upstream's one), not that the gateway held requests back.
    """
    bounds = [
        ratio(capacity(g, "gateway", "upstream", "bench"), capacity(d, "upstream", "bench"))
        for g, d in pairs
    ]
    return (
        f"were CPU the only limit ({os.cpu_count()} cores, one per process), the ratio "
        "could be " + ", ".join(f"{b:.2f}" for b in bounds)
    )


def per_req(run: RunResult, *names: str) -> float:
    """CPU ms per request of those of ``names`` the run measured, summed."""
    return sum(run.cpu_ms_per_req(n) for n in names if n in run.cpu)


# -- parts -----------------------------------------------------------------------------


async def part_http(args: argparse.Namespace, tmp: Path, children: list[Child], t: Table) -> None:
    bare, url = await start_bare(children)
    gws = {"gateway": await start_gateway(url, "memory", args, tmp, children)}
    if args.baseline_src is not None:  # the same load, alternating, on another commit's gateway
        gws["baseline"] = await start_gateway(
            url, "memory", args, tmp / "baseline", children, pythonpath=args.baseline_src
        )
    floor, floor_url = await start_floor(url, children)
    pids = {name: {"gateway": gw.child.pid, "upstream": bare.pid, "bench": os.getpid()}
            for name, gw in gws.items()}  # fmt: skip
    pids["bare"] = {"upstream": bare.pid, "bench": os.getpid()}
    pids["floor"] = {"gateway": floor.pid, "upstream": bare.pid, "bench": os.getpid()}

    def maker(target: str) -> Callable[[aiohttp.ClientSession], GatewaySession]:
        return lambda http: GatewaySession(http, target, args.timeout)

    makers = {"bare": maker(url), "floor": maker(floor_url),
              **{name: maker(gw.mcp_url) for name, gw in gws.items()}}  # fmt: skip
    for name, make in makers.items():
        await load.run_load(name, make, 2, 5, pids[name])  # warm-up
    for rnd in range(args.rounds):
        for n in args.sessions:
            shift = rnd % len(makers)
            order = [*list(makers)[shift:], *list(makers)[:shift]]
            # One session's CPU over M requests is a few clock ticks (10 ms): give N=1 more.
            m = args.requests * 10 if n == 1 else args.requests
            for name in order:
                run = await load.run_load(name, makers[name], n, m, pids[name])
                gw = gws.get(name)
                t.add("http", run, rss_mib(gw.child.pid) if gw else float("nan"))
    for n in args.sessions:
        b = t.get("http", "bare", n)
        f = t.get("http", "floor", n)
        t.verdicts.append(
            f"http N={n}: floor (aiohttp alone) CPU / bare endpoint's own, per round: "
            + ", ".join(f"{ratio(x.cpu_ms_per_req('gateway'), y.cpu_ms_per_req('upstream')):.2f}"
                        for x, y in zip(f, b, strict=False))
            + "; gateway / floor: "
            + ", ".join(f"{ratio(x.cpu_ms_per_req('gateway'), y.cpu_ms_per_req('gateway')):.2f}"
                        for x, y in zip(t.get("http", "gateway", n), f, strict=False))
        )  # fmt: skip
        for name in gws:
            g = t.get("http", name, n)
            own = [ratio(x.cpu_ms_per_req("gateway"), y.cpu_ms_per_req("upstream"))
                   for x, y in zip(g, b, strict=False)]  # fmt: skip
            t.verdict(f"http N={n}: {name} CPU / bare endpoint's own CPU", own, "<=", 2.5)
            t.verdict(
                f"http N={n}: same, the bare CPU of the {name} run",
                [ratio(x.cpu_ms_per_req("gateway"), x.cpu_ms_per_req("upstream")) for x in g],
                "<=", 2.5,
            )  # fmt: skip
        if "baseline" in gws:
            t.verdicts.append(
                f"http N={n}: gateway CPU / baseline's, per round: " + ", ".join(
                    f"{ratio(x.cpu_ms_per_req('gateway'), y.cpu_ms_per_req('gateway')):.2f}"
                    for x, y in zip(t.get("http", "gateway", n), t.get("http", "baseline", n),
                                    strict=False)
                )
            )  # fmt: skip
    await stop(children, *[gw.child for gw in gws.values()], floor, bare)


async def part_sse(args: argparse.Namespace, tmp: Path, children: list[Child], t: Table) -> None:
    upstream = Child(
        "fastmcp-sse",
        [sys.executable, "-m", "bridge.examples.server", "--transport", "sse",
         "--host", HOST, "--port", "0"],
    )  # fmt: skip
    children.append(upstream)
    sse_url = f"http://{HOST}:{await upstream.start(load.uvicorn_ready)}/sse"
    ns = argparse.Namespace(**vars(args), resumable=False, gateway_store="memory")
    budget = load.Budget(asyncio.get_running_loop().time() + args.max_seconds)
    pairs: load.Pairs = {}
    await load.gateway_vs_direct(ns, upstream, sse_url, tmp, children, budget, pairs)
    for n, ps in sorted(pairs.items()):
        for g, d in ps:
            t.runs.setdefault(("sse", "gateway", n), []).append(g)
            t.runs.setdefault(("sse", "direct", n), []).append(d)
        if n == 1:
            t.verdict("sse N=1: added p50 ms", [g.pct(50) - d.pct(50) for g, d in ps], "<=", 1.0)
        else:
            t.verdict(f"sse N={n}: gateway / direct req/s", [ratio(g.rps, d.rps) for g, d in ps],
                      ">=", 0.9)  # fmt: skip
            t.verdicts.append(f"sse N={n}: {cpu_bound(ps)}")
    await stop(children, *[c for c in children if c.name.startswith("gateway")], upstream)


async def part_stdio(args: argparse.Namespace, tmp: Path, children: list[Child], t: Table) -> None:
    ns = argparse.Namespace(**vars(args))
    targets = [await pool.start_target(name, ns, children) for name in ("principal", "mcp-proxy")]
    for target in targets:
        if target.error:
            print(f"  stdio: {target.name} not started: {target.error}", flush=True)
            return
        await pool.one_run(target, 2, ns)  # warm-up
    names = {"principal": "gateway", "mcp-proxy": "mcp-proxy"}
    for rnd in range(args.rounds):
        for n in args.sessions:
            for target in targets if rnd % 2 == 0 else targets[::-1]:
                row = await pool.one_run(target, n, ns)
                row.run.path = names[target.name]
                t.add("stdio", row.run, row.peak.rss)
    for n in [n for n in args.sessions if n >= 50]:
        g, p = t.get("stdio", "gateway", n), t.get("stdio", "mcp-proxy", n)
        t.verdict(f"stdio N={n}: gateway / mcp-proxy req/s",
                  [ratio(x.rps, y.rps) for x, y in zip(g, p, strict=False)], ">=", 1.2)  # fmt: skip
    await stop(children, *[target.child for target in targets if target.child])


async def part_stores(args: argparse.Namespace, tmp: Path, children: list[Child], t: Table) -> None:
    bare, url = await start_bare(children)
    gws = {s: await start_gateway(url, s, args, tmp, children) for s in load.STORES}
    pids = {
        s: {"gateway": g.child.pid, "upstream": bare.pid, "bench": os.getpid(),
            **({"redis": g.store_child.pid} if g.store_child else {})}
        for s, g in gws.items()
    }  # fmt: skip

    def maker(gw: load.Gateway) -> Callable[[aiohttp.ClientSession], CallSession]:
        return lambda http: CallSession(http, gw.mcp_url, args.timeout)

    for s, gw in gws.items():
        await load.run_load(s, maker(gw), 2, 5, pids[s], echo_call)  # warm-up
    n = max(args.sessions_stores)
    for rnd in range(args.rounds):
        shift = rnd % len(gws)
        for s in [*load.STORES[shift:], *load.STORES[:shift]]:
            run = await load.run_load(s, maker(gws[s]), n, args.requests, pids[s], echo_call)
            t.add("stores", run, rss_mib(gws[s].child.pid))
    mem = t.get("stores", "memory", n)
    for s in ("sqlite", "redis"):
        runs = t.get("stores", s, n)
        t.verdict(
            f"stores N={n}: {s} / memory, CPU per tools/call",
            [ratio(per_req(x, "gateway", "redis"), per_req(m, "gateway"))
             for x, m in zip(runs, mem, strict=False)],
            "<=", 1.5,
        )  # fmt: skip
    await stop(children, *[g.child for g in gws.values()], bare,
               *[g.store_child for g in gws.values() if g.store_child])  # fmt: skip


async def part_growth(args: argparse.Namespace, tmp: Path, children: list[Child], t: Table) -> None:
    bare, url = await start_bare(children)
    gw = await start_gateway(url, "memory", args, tmp, children)
    pids = {"gateway": gw.child.pid, "upstream": bare.pid, "bench": os.getpid()}

    def make(http: aiohttp.ClientSession) -> GatewaySession:
        # 1000 initializes at once on 2 busy cores take longer than one request may.
        return GatewaySession(http, gw.mcp_url, max(args.timeout, 30.0))

    await load.run_load("gateway", make, 2, 5, pids)  # warm-up
    for _ in range(args.rounds):
        for n in args.sessions_growth:
            m = args.requests_growth * 20 if n == 1 else args.requests_growth  # clock ticks
            run = await load.run_load("gateway", make, n, m, pids)
            t.add("growth", run, rss_mib(gw.child.pid))
    lo, hi = min(args.sessions_growth), max(args.sessions_growth)
    cpu = {n: med([r.cpu_ms_per_req("gateway") for r in t.get("growth", "gateway", n)])
           for n in args.sessions_growth}  # fmt: skip
    rss = {n: med(t.rss[("growth", "gateway", n)]) for n in args.sessions_growth}
    t.verdicts.append(
        "growth: gateway CPU ms/req by N: "
        + ", ".join(f"N={n} {v:.3f}" for n, v in cpu.items())
        + f"; N={hi}/N={lo} {ratio(cpu[hi], cpu[lo]):.2f}x"
    )
    t.verdicts.append(
        "growth: gateway RSS MiB after each run by N: "
        + ", ".join(f"N={n} {v:.0f}" for n, v in rss.items())
    )
    await stop(children, gw.child, bare)


async def stop(children: list[Child], *stopping: Child | None) -> None:
    for child in stopping:
        if child is not None:
            await child.stop()
            load.report_stderr(child)
            children.remove(child)


def summary(t: Table) -> str:
    head = (
        f"{'part':<7}{'path':<10}{'N':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'err':>4} {'gw CPU':>7} {'up CPU':>7} {'redis':>6} {'other':>6} {'RSS':>6}"
    )
    lines = [head, "-" * len(head)]
    for (part, path, n), runs in t.runs.items():
        rss = med(t.rss.get((part, path, n), []))
        lines.append(
            f"{part:<7}{path:<10}{n:>5} {med([r.rps for r in runs]):>8.1f} "
            f"{med([r.pct(50) for r in runs]):>7.2f} {med([r.pct(99) for r in runs]):>7.2f} "
            f"{sum(r.error_count for r in runs):>4} "
            + " ".join(load.num(med([r.cpu_ms_per_req(c) for r in runs]), w)
                       for c, w in (("gateway", 7), ("upstream", 7), ("redis", 6)))
            + f" {load.num(med([r.other_cores for r in runs]), 6)} {load.num(rss, 6)}"
        )  # fmt: skip
    lines += [
        "Medians over rounds. gw CPU, up CPU, redis: CPU ms per request of the gateway (or",
        "the peer), the upstream (the bare endpoint, FastMCP) and redis-server; other: cores",
        "busy with anything else meanwhile (noise: 2 is the whole machine); RSS MiB of the",
        "gateway (stdio: of the target's tree without its servers) after the run.",
        "",
        "Targets (median of per-round ratios):",
        *t.verdicts,
    ]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    pool.nofile(None)  # N=1000 client sockets
    if args.gateway_src is not None:  # children inherit it: the gateways import that tree
        os.environ["PYTHONPATH"] = str(args.gateway_src)
    children: list[Child] = []
    table = Table()
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    parts = {"http": part_http, "sse": part_sse, "stdio": part_stdio,
             "stores": part_stores, "growth": part_growth}  # fmt: skip
    status = 0
    with tempfile.TemporaryDirectory(prefix="mcp-bridge-hotpath-") as tmp:
        try:
            async with asyncio.timeout(args.max_seconds):
                for name in args.parts:
                    print(f"== {name}", flush=True)
                    await parts[name](args, Path(tmp) / name, children, table)
        except TimeoutError:
            print(f"--max-seconds {args.max_seconds:g} reached: partial results")
            status = 3
        finally:
            for stage in sorted({c.stage for c in children}):
                await asyncio.gather(*(c.stop(2.0) for c in children if c.stage == stage))
            for child in children:
                child.kill_now()
    print()
    print(summary(table))
    runs = [r for rs in table.runs.values() for r in rs]
    return status or (1 if any(r.error_count for r in runs) else 0)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--serve-bare", action="store_true", help="run the bare endpoint only")
    p.add_argument("--serve-floor", metavar="URL", default=None,
                   help="run the floor proxy only, in front of URL")  # fmt: skip
    p.add_argument("--port", type=int, default=0, help="--serve-bare, --serve-floor: port")
    p.add_argument("--parts", default=",".join(PARTS), type=lambda s: s.split(","),
                   help=f"which parts, in order (default {','.join(PARTS)})")  # fmt: skip
    p.add_argument("--sessions", type=ints, default=[1, 50, 200], help="N for http, sse, stdio")
    p.add_argument("--sessions-stores", type=ints, default=[50], help="N for stores")
    p.add_argument("--sessions-growth", type=ints, default=[1, 100, 1000], help="N for growth")
    p.add_argument("--requests", type=int, default=20, help="requests per session (M)")
    p.add_argument("--requests-growth", type=int, default=5, help="M for growth")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=600.0, help="global deadline")
    p.add_argument("--gateway-log-level", default="info", choices=["debug", "info", "warning"])
    p.add_argument("--gateway-arg", action="append", default=[],
                   help="an extra argument for every gateway (repeatable)")  # fmt: skip
    p.add_argument("--gateway-src", type=lambda p: Path(p).resolve(), default=None,
                   help="run the gateway from this source tree (e.g. a checkout of the commit "
                   "to compare with) instead of the installed one: its PYTHONPATH")  # fmt: skip
    p.add_argument("--baseline-src", type=lambda p: Path(p).resolve(), default=None,
                   help="http part: also a gateway from this source tree, alternating with "
                   "this one in every round (before/after on a noisy machine)")  # fmt: skip
    p.add_argument("--peers-dir", type=Path, default=Path("/tmp/mcp-bridge-bench-peers"),
                   help="where mcp-proxy is installed (its own venv)")  # fmt: skip
    args = p.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        serve_bare(args.port)
        return 0
    if args.serve_floor is not None:
        serve_floor(args.port, args.serve_floor)
        return 0
    return load.run_main(amain, args, "hotpath.py")


if __name__ == "__main__":
    raise SystemExit(main())
