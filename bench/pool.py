"""Upstream pool benchmark: the gateway's --share modes side by side with two peers.

N concurrent sessions x M requests, alternately ``tools/call echo`` (a unique
text, which the reply must carry) and ``tools/list``, against one stdio server
(tests/fixtures/stdio_server.py) behind the gateway in each mode (none,
principal, all), ``mcp-proxy`` (PyPI) and ``supergateway`` (npm, stateful
Streamable HTTP), the peers installed under ``--peers-dir`` if missing.
``--legacy-seed``: 1000 clients on the FastMCP legacy SSE example (ulimit -n
1024), direct and through the gateway. ``--idle N``: N open, idle sessions on
one gateway. Only 127.0.0.1; every child is killed on every exit path. See
bench/README.md, "Pool benchmark".

    python bench/pool.py --sessions 1,50,200,1000 --requests 10
    python bench/pool.py --legacy-seed
    python bench/pool.py --idle 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import sys
import time
from asyncio.subprocess import PIPE, STDOUT
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
from load import HOST, Child, GatewaySession, RequestFailed, RunResult

ROOT = Path(__file__).resolve().parent.parent
STDIO_SERVER = ROOT / "tests" / "fixtures" / "stdio_server.py"
STDIO_CMD = f"{sys.executable} {STDIO_SERVER}"
MODES = ("none", "principal", "all")
PEERS = ("mcp-proxy", "supergateway")
WRONG = {"wrong echo text", "wrong tools/list result", "reply for another request",
         "JSON reply for another request"}  # fmt: skip
INSTALL_TIMEOUT = 300.0
MiB = 1024 * 1024
LEGEND = """up proc = peak stdio server processes under the target; RSS = peak RSS of the
target's process tree without them; wrong = a reply without its own request's text
or id; other = cores busy meanwhile with anything but this script and its children
(noise; 2 = the whole machine)."""
# supergateway listens on every interface; this preload makes it loopback only.
LOOPBACK_CJS = """const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && (args.length === 1 || typeof args[1] === 'function'))
    args.splice(1, 0, '127.0.0.1');
  return listen.apply(this, args);
};
"""


def nofile(limit: int | None) -> None:
    """Set RLIMIT_NOFILE to ``limit`` (soft and hard), or the soft limit to the hard one."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit) if limit else (hard, hard))


class EchoSession(GatewaySession):
    """A Streamable HTTP session whose requests alternate echo (checked) and tools/list."""

    def __init__(self, http: aiohttp.ClientSession, url: str, timeout: float, tag: str) -> None:
        super().__init__(http, url, timeout)
        self.tag = tag

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = next(self._ids)
        _, message = await self._post(load.rpc(method, rid, params), rid)
        if "error" in message:
            raise RequestFailed(f"jsonrpc error {message['error'].get('code')}")
        result: dict[str, Any] = message.get("result") or {}
        return result

    async def step(self, i: int) -> None:
        if i % 2:
            tools = (await self.call("tools/list")).get("tools") or []
            if "echo" not in {t.get("name") for t in tools}:
                raise RequestFailed("wrong tools/list result")
            return
        text = f"{self.tag}.{i}.{secrets.token_hex(6)}"
        result = await self.call("tools/call", {"name": "echo", "arguments": {"text": text}})
        content = result.get("content") or [{}]
        if content[0].get("text") != text:
            raise RequestFailed("wrong echo text")

    async def open_stream(self) -> aiohttp.ClientResponse:
        """The session's standalone GET stream, left open and unread."""
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Accept"] = "text/event-stream"
        async with asyncio.timeout(self._timeout):
            resp = await self._http.get(self._url, headers=headers)
        if resp.status != 200:
            resp.close()
            raise RequestFailed(f"GET http {resp.status}")
        return resp


async def echo_step(session: GatewaySession | load.DirectSession, i: int) -> None:
    assert isinstance(session, EchoSession)
    await session.step(i)


# -- process trees ------------------------------------------------------------------


@dataclass
class Peak:
    """Highest values seen in a target's process tree during one run, and the noise."""

    upstreams: int = 0  # processes running the upstream server
    rss: float = 0.0  # MiB, the tree without its upstream processes
    conns: int = 0  # ESTABLISHED TCP connections to the upstream port
    other: float = float("nan")  # cores busy outside this script's tree in the timed window


def tree(pid: int | None) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def measure(pid: int | None, mark: str, up_port: int | None, peak: Peak) -> None:
    """One sample. A descendant with ``mark`` in its argv is upstream (or its shell wrapper);
    the root is not, though the upstream's command is in its argv too."""
    upstreams, rss = 0, 0
    for i, proc in enumerate(tree(pid)):
        with contextlib.suppress(psutil.Error):
            argv = proc.cmdline()
            if i and any(mark in a for a in argv):
                upstreams += Path(argv[0]).name.startswith(("python", "node"))
                continue
            rss += proc.memory_info().rss
    peak.upstreams = max(peak.upstreams, upstreams)
    peak.rss = max(peak.rss, rss / MiB)
    if up_port is not None:
        conns = sum(
            1
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == up_port
        )
        peak.conns = max(peak.conns, conns)


def cpu_mark() -> tuple[float, float, float]:
    """(now, CPU s all cores were busy, CPU s of this script's tree, reaped children included)."""
    ours = 0.0
    for proc in tree(os.getpid()):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            ours += t.user + t.system + t.children_user + t.children_system
    return time.perf_counter(), load.machine_busy_seconds(), ours


class Probe:
    """Samples a tree (in threads) every ``every`` s while ``running()``, and at start();
    start() and end() also mark the CPU the rest of the machine spends in between."""

    def __init__(self, pid: int | None, mark: str, up_port: int | None = None) -> None:
        self.args = (pid, mark, up_port)
        self.peak = Peak()
        self.loop = asyncio.get_running_loop()
        self.jobs: list[asyncio.Future[Any]] = []

    def start(self) -> None:
        self.jobs += [self.loop.run_in_executor(None, cpu_mark),
                      self.loop.run_in_executor(None, measure, *self.args, self.peak)]  # fmt: skip

    def end(self) -> None:
        self.jobs.append(self.loop.run_in_executor(None, cpu_mark))

    async def _periodic(self, every: float) -> None:
        while True:
            await asyncio.to_thread(measure, *self.args, self.peak)
            await asyncio.sleep(every)

    @contextlib.asynccontextmanager
    async def running(self, every: float = 0.5) -> AsyncIterator[Peak]:
        task = self.loop.create_task(self._periodic(every))
        try:
            yield self.peak
        finally:
            task.cancel()
            done = await asyncio.gather(task, *self.jobs, return_exceptions=True)
            marks = [m for m in done if isinstance(m, tuple)]
            if len(marks) == 2 and marks[1][0] - marks[0][0] >= 0.2:  # else under a few ticks
                (t0, m0, o0), (t1, m1, o1) = marks
                self.peak.other = max(0.0, (m1 - m0) - (o1 - o0)) / max(t1 - t0, 1e-3)


async def readyz_pool(base: str, seconds: float = 10.0) -> dict[str, Any]:
    """The default server's pool from /readyz, and the live sessions ({} if unreadable)."""
    with contextlib.suppress(Exception):
        async with (
            aiohttp.ClientSession() as http,
            asyncio.timeout(seconds),
            http.get(f"{base}/readyz") as resp,
        ):
            body = await resp.json()
            pool: dict[str, Any] = body["upstreams"]["default"]["pool"]
            return {"sessions": body.get("sessions"), **pool}
    return {}


# -- targets ------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    base: str = ""  # http://HOST:PORT
    child: Child | None = None
    error: str = ""
    gateway: bool = False
    version: str = ""

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"


async def run_cmd(argv: Sequence[str], seconds: float = INSTALL_TIMEOUT) -> str:
    """Run ``argv`` to its end within ``seconds``: its output, or RuntimeError."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=PIPE, stderr=STDOUT)
    try:
        async with asyncio.timeout(seconds):
            out = (await proc.communicate())[0].decode(errors="replace")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode}: {out[-300:]}")
    return out


def peer_files(name: str, peers: Path) -> tuple[list[str], list[list[str]], bool]:
    """The argv prefix that runs peer ``name``, the steps that install it, and whether it is."""
    peers.mkdir(parents=True, exist_ok=True)
    if name == "mcp-proxy":
        venv = peers / "venv" / "bin"
        steps = [[sys.executable, "-m", "venv", str(venv.parent)],
                 [str(venv / "pip"), "install", "-q", "mcp-proxy"]]  # fmt: skip
        return [str(venv / "mcp-proxy")], steps, (venv / "mcp-proxy").is_file()
    main = peers / "node_modules" / "supergateway" / "dist" / "index.js"
    (peers / "loopback.cjs").write_text(LOOPBACK_CJS)
    prefix = [shutil.which("node") or "node", "-r", str(peers / "loopback.cjs"), str(main)]
    npm = ["npm", "install", "--prefix", str(peers), "--no-audit", "--no-fund", "supergateway"]
    return prefix, [npm], main.is_file()


async def install_peer(name: str, peers: Path) -> tuple[list[str], str]:
    """The argv prefix to run ``name`` and its version, installing it under ``peers``."""
    prefix, steps, installed = await asyncio.to_thread(peer_files, name, peers)
    for argv in [] if installed else steps:
        await run_cmd(argv)
    if name == "mcp-proxy":
        return prefix, (await run_cmd([*prefix, "--version"], 30)).split()[-1]
    package = Path(prefix[-1]).parent.parent / "package.json"
    return prefix, json.loads(await asyncio.to_thread(package.read_text))["version"]


async def start_target(
    name: str, args: argparse.Namespace, children: list[Child], extra: Sequence[str] = ()
) -> Target:
    target = Target(name, gateway=name in MODES)
    try:
        if target.gateway:
            argv = load.gateway_argv(STDIO_CMD, "warning", "memory://", "--stdio")
            argv += ["--share", name, *args.gateway_arg, *extra]
            child = Child(f"gateway[{name}]", argv, stage=0, preexec=lambda: nofile(None))
            children.append(child)
            target.child, target.version = child, "this tree"
            target.base = f"http://{HOST}:{await load.start_gateway_child(child)}"
            return target
        prefix, target.version = await install_peer(name, args.peers_dir)
        port = load.free_port()
        if name == "mcp-proxy":
            argv = [*prefix, "--host", HOST, "--port", str(port), "--log-level", "WARNING",
                    "--", sys.executable, str(STDIO_SERVER)]  # fmt: skip
        else:
            argv = [*prefix, "--stdio", STDIO_CMD, "--outputTransport", "streamableHttp",
                    "--stateful", "--port", str(port), "--logLevel", "none"]  # fmt: skip
        child = Child(name, argv, stage=0, merge_stdout=True, preexec=lambda: nofile(None))
        children.append(child)
        target.child = child
        target.base = f"http://{HOST}:{await child.start(lambda _: None, probe_port=port)}"
    except (RuntimeError, OSError, TimeoutError) as exc:
        target.error = f"{exc.__class__.__name__}: {exc}"[:400]
    return target


# -- part 1: modes and peers ----------------------------------------------------------


@dataclass
class Row:
    target: str
    n: int
    run: RunResult
    peak: Peak
    rnd: int = 0
    pool: dict[str, Any] = field(default_factory=dict)

    @property
    def wrong(self) -> int:
        return sum(v for k, v in self.run.errors.items() if k in WRONG)

    @property
    def failed(self) -> int:
        return self.run.expected - self.run.ok - self.wrong

    def line(self) -> str:
        r = self.run
        return (
            f"{self.target:<14}{self.n:>5} {r.sessions_ok:>5}/{r.sessions:<5} "
            f"{r.ok:>6}/{r.expected:<6} {self.wrong:>5} {self.failed:>6} {r.rps:>8.1f} "
            f"{load.num(r.pct(50), 8)} {load.num(r.pct(99), 8)} {self.peak.upstreams:>6} "
            f"{self.peak.rss:>8.1f} {load.num(self.peak.other, 5)}"
        )


HEAD = (
    f"{'target':<14}{'N':>5} {'sess ok':>11} {'requests ok':>13} {'wrong':>5} {'failed':>6} "
    f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'up proc':>6} {'RSS MiB':>8} {'other':>5}"
)


async def one_run(target: Target, n: int, args: argparse.Namespace) -> Row:
    assert target.child is not None

    def make(http: aiohttp.ClientSession) -> EchoSession:
        tag = f"{target.name}.{n}.{secrets.token_hex(3)}"
        return EchoSession(http, target.url, args.timeout, tag)

    probe = Probe(target.child.pid, STDIO_SERVER.name)
    async with probe.running() as peak:
        run = await load.run_load(
            target.name, make, n, args.requests, {}, echo_step, probe.start, probe.end
        )
    pool = await readyz_pool(target.base, args.timeout) if target.gateway else {}
    return Row(target.name, n, run, peak, pool=pool)


async def compare(args: argparse.Namespace, children: list[Child], budget: load.Budget) -> int:
    targets: list[Target] = []
    for name in args.targets:
        target = await start_target(name, args, children)
        state = f"FAILED: {target.error}" if target.error else f"{target.url}"
        print(f"{name:<13} {target.version:<10} {state}", flush=True)
        targets.append(target)
    live = [t for t in targets if not t.error]
    for target in live:  # warm-up, untimed
        warm = await one_run(target, 2, args)
        if warm.wrong or warm.failed:
            print(f"warm-up {target.name}: {dict(warm.run.errors)}", flush=True)
    rows: list[Row] = []
    loop = asyncio.get_running_loop()
    print(f"\n{HEAD}\n{'-' * len(HEAD)}", flush=True)
    for rnd in range(args.rounds):
        for n in args.sessions:
            if not budget.fits(n, rnd):
                continue
            began = loop.time()
            shift = rnd % max(1, len(live))
            for target in [*live[shift:], *live[:shift]]:
                row = await one_run(target, n, args)
                row.rnd = rnd
                rows.append(row)
                extra = [f"errors {dict(row.run.errors)}"] if row.run.errors else []
                if row.pool:
                    keys = ("size", "starts", "failures", "losses", "refused", "sessions")
                    extra.append("pool " + " ".join(f"{k} {row.pool.get(k)}" for k in keys))
                notes = "".join(f"\n{'':<19}{x}" for x in extra)
                print(f"{row.line()}{notes}", flush=True)
            budget.spent[n] = loop.time() - began
    print_summary(rows, args, [t for t in targets if t.error])
    return 1 if any(r.wrong or r.failed for r in rows if r.target in MODES) else 0


def print_summary(rows: list[Row], args: argparse.Namespace, failed: list[Target]) -> None:
    print(f"\nN sessions x {args.requests} requests each, echo and tools/list alternately.")
    print(LEGEND)
    by: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        by.setdefault((row.target, row.n), []).append(row)
    if args.rounds > 1:
        print(f"\nSummary, the median run (by req/s) of each:\n{HEAD}\n{'-' * len(HEAD)}")
        for rs in by.values():
            print(sorted(rs, key=lambda r: r.run.rps)[len(rs) // 2].line())
    for target in failed:
        print(f"{target.name:<14} not run: {target.error}")
    print()
    for peer in [p for p in PEERS if {p, "principal"} <= set(args.targets)]:
        for n in args.sessions:
            peer_rps = {r.rnd: r.run.rps for r in by.get((peer, n), [])}
            ratios = [  # per round, then the median
                load.ratio(g.run.rps, peer_rps[g.rnd])
                for g in by.get(("principal", n), [])
                if g.run.ok and peer_rps.get(g.rnd)
            ]
            med = load.med(ratios)
            text = f"{med:.2f}x" if med == med else "n/a (a side has no successful run)"
            print(f"gateway-principal req/s / {peer} req/s at N={n:<5} {text}")


# -- part 2: the seed's headline reversed ------------------------------------------------


class LoggedChild(Child):
    """A child whose exception lines (``OSError: ...``) on stderr are counted."""

    def __init__(self, name: str, argv: Sequence[str], **kwargs: Any) -> None:
        super().__init__(name, argv, **kwargs)
        self.exceptions: Counter[str] = Counter()

    def _notable(self, line: str) -> bool:
        if re.match(r"[\w.]+(Error|Exception): ", line):
            self.exceptions[line[:100]] += 1
        return super()._notable(line)


async def legacy_seed(args: argparse.Namespace, children: list[Child]) -> int:
    upstream = LoggedChild(
        "upstream[ulimit -n 1024]",
        [sys.executable, "-m", "bridge.examples.server", "--transport", "sse",
         "--host", HOST, "--port", "0"],
        preexec=lambda: nofile(1024),
    )  # fmt: skip
    children.append(upstream)
    up_port = await upstream.start(load.uvicorn_ready)
    sse_url = f"http://{HOST}:{up_port}/sse"
    argv = [*load.gateway_argv(sse_url, "warning", "memory://"), "--share", "principal"]
    argv += args.gateway_arg
    gw = Child("gateway[sse principal]", argv, stage=0, preexec=lambda: nofile(None))
    children.append(gw)
    base = f"http://{HOST}:{await load.start_gateway_child(gw)}"
    n, m = args.legacy_sessions, 5
    print(f"upstream {sse_url} (RLIMIT_NOFILE 1024)  gateway {base}/mcp --share principal")
    print(f"{n} concurrent sessions x {m} tools/list on each path\n")
    paths: dict[str, tuple[load.Maker, int | None]] = {
        "gateway": (lambda http: GatewaySession(http, f"{base}/mcp", args.timeout), gw.pid),
        "direct": (lambda http: load.DirectSession(http, sse_url, args.timeout), None),
    }
    status = 0
    for name, (make, pid) in paths.items():
        probe = Probe(pid, "bridge.examples.server", up_port)
        async with probe.running(1.0) as peak:
            run = await load.run_load(name, make, n, m, {}, None, probe.start, probe.end)
        pool = await readyz_pool(base, args.timeout) if name == "gateway" else {}
        print(
            f"{name:<8} sessions ok {run.sessions_ok}/{n}  tools/list ok {run.ok}/{run.expected}"
            f"  {run.rps:.1f} req/s  p50 {run.pct(50):.1f} ms  p99 {run.pct(99):.1f} ms"
        )
        gateway = f"  gateway RSS {peak.rss:.1f} MiB  readyz pool {pool}" if pool else ""
        print(f"{'':9}peak upstream connections (ESTABLISHED to :{up_port}) {peak.conns}"
              f"{gateway}")  # fmt: skip
        if run.errors:
            print(f"         errors {dict(run.errors)}")
        status |= name == "gateway" and run.error_count > 0
        if upstream.exceptions:
            print(f"{'':9}upstream's exceptions so far: {dict(upstream.exceptions)}")
    return status


# -- part 3: idle sessions -------------------------------------------------------------------


async def idle(args: argparse.Namespace, children: list[Child]) -> int:
    nofile(None)  # this process: up to the hard limit
    target = await start_target("principal", args, children, ["--max-sessions", "20000"])
    if target.error or target.child is None:
        raise RuntimeError(f"gateway did not start: {target.error}")
    pid = target.child.pid
    before = Peak()
    measure(pid, STDIO_SERVER.name, None, before)
    print(f"gateway {target.url} --share principal --max-sessions 20000, RLIMIT_NOFILE "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)}; before: RSS {before.rss:.1f} MiB, "
          f"{len(os.listdir(f'/proc/{pid}/fd'))} fds")  # fmt: skip
    streams: list[aiohttp.ClientResponse] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(http: aiohttp.ClientSession) -> None:
        session = EchoSession(http, target.url, args.timeout, "idle")
        try:
            await session.open()
            streams.append(await session.open_stream())
        except Exception as exc:
            kind = load.classify(exc)
            errors[kind] = errors.get(kind, 0) + 1

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        try:
            for start in range(0, args.idle, args.batch):
                batch = min(args.batch, args.idle - start)
                await asyncio.gather(*(one(http) for _ in range(batch)))
            took = loop.time() - t0
            after = Peak()
            await asyncio.to_thread(measure, pid, STDIO_SERVER.name, None, after)
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            pool = await readyz_pool(target.base, args.timeout)
            print(
                f"{len(streams)}/{args.idle} sessions open with a GET stream in {took:.1f}s "
                f"(batches of {args.batch}); failed {errors or 0}"
            )
            print(
                f"gateway RSS {after.rss:.1f} MiB (+{after.rss - before.rss:.1f}; "
                f"{(after.rss - before.rss) * 1024 / max(1, len(streams)):.1f} KiB/session), "
                f"open fds {fds}, stdio servers {after.upstreams}"
            )
            print(f"readyz: {pool}")  # fmt: skip
        finally:
            for resp in streams:
                resp.close()
    return 1 if errors else 0


# -- main ----------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    children: list[Child] = []
    loop = asyncio.get_running_loop()
    hard_stop = loop.time() + args.max_seconds
    budget = load.Budget(loop.time() + max(1.0, args.max_seconds - load.RESERVE - 5))
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    status = 0
    try:
        async with asyncio.timeout_at(budget.deadline):
            if args.legacy_seed:
                status = await legacy_seed(args, children)
            elif args.idle:
                status = await idle(args, children)
            else:
                status = await compare(args, children, budget)
    except TimeoutError:
        print(f"\nGLOBAL DEADLINE: --max-seconds {args.max_seconds:g} reached; results are partial")
        status = 3
    finally:
        # Every descendant, known now: peers' children may sit in process groups of their own.
        descendants = [p for c in children for p in tree(c.pid)[1:]]
        try:
            cap = 15.0 if args.idle else load.STOP_GRACE  # 10k sessions: --shutdown-timeout 10
            grace = max(1.0, min(cap, (hard_stop - loop.time()) / 2))

            async def stop(child: Child) -> None:
                began = loop.time()
                await child.stop(grace)
                if loop.time() - began > 1.0:
                    print(f"{child.name} took {loop.time() - began:.1f}s to stop (SIGTERM first)")

            await asyncio.gather(*(stop(c) for c in children))
        finally:
            for child in children:
                child.kill_now()
            for proc in descendants:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        for child in children:
            load.report_stderr(child)
    if budget.skipped:
        print(f"\nskipped to stay within --max-seconds: {', '.join(budget.skipped)}")
    return status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--sessions", type=ints, default=[1, 50, 200, 1000], help="N list")
    p.add_argument("--requests", type=int, default=10, help="requests per session (M)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=570.0, help="global deadline")
    p.add_argument(
        "--targets", type=lambda s: [x for x in s.split(",") if x],
        default=[*MODES, *PEERS], help="subset of none,principal,all,mcp-proxy,supergateway",
    )  # fmt: skip
    p.add_argument("--peers-dir", type=Path, default=Path("/tmp/mcp-bridge-bench-peers"))
    p.add_argument(
        "--gateway-arg", action="append", default=[],
        help="extra gateway argument (repeat), e.g. --gateway-arg=--pool-max=32",
    )  # fmt: skip
    p.add_argument("--legacy-seed", action="store_true", help="part 2 (see the docstring)")
    p.add_argument("--legacy-sessions", type=int, default=1000, help="--legacy-seed clients")
    p.add_argument("--idle", type=int, nargs="?", const=10000, default=0, help="part 3: N idle")
    p.add_argument("--batch", type=int, default=500, help="--idle: initializes at a time")
    args = p.parse_args(argv)
    unknown = set(args.targets) - {*MODES, *PEERS}
    if unknown or not args.sessions or min(args.sessions) < 1 or args.requests < 1:
        p.error(f"bad --targets {sorted(unknown)} or non-positive --sessions/--requests")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return load.run_main(amain, parse_args(argv), "pool.py")


if __name__ == "__main__":
    raise SystemExit(main())
