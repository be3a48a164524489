"""Replicas benchmark: one gateway replica vs two behind a round-robin balancer (issue #12).

Everything runs on this machine, started here: a ``redis-server`` on a free
loopback port (no persistence), two gateways (``mcp-bridge --stdio "python -m
bridge.examples.server" --store-url redis://...``, each with its own stdio
child), and two test balancers (``python -m tests.balancer``, no affinity):
one in front of replica A alone, one in front of A and B.

Part 1, throughput. For each N in ``--sessions`` and each round, N concurrent
sessions do the handshake through a balancer, wait at a barrier, do M
(``--requests``) sequential ``tools/call echo`` (timed), wait at a second
barrier, and DELETE. Once through the one-replica balancer, once through the
two-replica one (the order alternating by round). With two replicas and no
affinity, about half of the requests land at the replica that does not hold
their session and are forwarded over the Redis bus to the one that does.
Both paths cross the same balancer process, so the comparison is of the
replicas, not of the extra hop.

Part 2, the cost of one forwarded message (run first, so the budget never
skips it). One session is started at A
(A holds it); then ``--probe-requests`` sequential ``tools/call echo``
alternate between A itself (served there) and B (forwarded to A over the bus
and relayed back), no balancer. The difference of the medians is what a
forward costs; B's ``mcp_bridge_bus_forward_seconds`` histogram (from
/metrics: forward to the owner's acknowledgement) says how much of it is the
bus itself.

Summaries quote medians over ``--rounds`` rounds. Every request is bounded by
``--timeout``; the whole run, shutdown included, by ``--max-seconds`` (a round
is skipped when the previous one's duration no longer fits). Children are
stopped on every exit path (and die with this process: PR_SET_PDEATHSIG).

    python bench/replicas.py --sessions 1,50,200 --requests 20 --max-seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
from load import HOST, Child, GatewaySession, RequestFailed, RunResult, classify, rpc

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = f"{sys.executable} -m bridge.examples.server"
BALANCER_READY = re.compile(r"balancer listening on http://[^\s:]+:(\d+)")
#: Seconds a gateway has to exit after SIGTERM: its drain and stdio child's shutdown.
STOP_GRACE = 20.0
RESERVE = STOP_GRACE + 5.0  # seconds of --max-seconds kept for stopping the children
PROBE_ROUND = 20.0  # seconds a round of part 2 is assumed to take, at most
CONFIGS = ("1 replica", "2 replicas")


# -- clients ----------------------------------------------------------------------


class EchoSession(GatewaySession):
    """A gateway session that calls the example server's ``echo`` tool."""

    async def echo(self, text: str) -> None:
        rid = next(self._ids)
        params = {"name": "echo", "arguments": {"text": text}}
        _, message = await self._post(rpc("tools/call", rid, params), rid)
        if "error" in message:
            raise RequestFailed(f"jsonrpc error {message['error'].get('code')}")
        content = (message.get("result") or {}).get("content") or [{}]
        if text not in str(content[0].get("text", "")):
            raise RequestFailed("echo: another text came back")

    def at(self, url: str) -> EchoSession:
        """The same session, its requests sent to ``url`` (another replica)."""
        other = EchoSession(self._http, url, self._timeout)
        other._headers = self._headers
        other._ids = self._ids
        return other


async def one_session(
    http: aiohttp.ClientSession,
    url: str,
    requests: int,
    bound: float,
    start: asyncio.Barrier,
    end: asyncio.Barrier,
    result: RunResult,
) -> None:
    session = EchoSession(http, url, bound)
    try:
        await session.open()
        result.sessions_ok += 1
    except Exception as exc:  # counted, and this session still meets the barriers
        result.errors[f"handshake {classify(exc)}"] += 1
        session = None  # type: ignore[assignment]
    await start.wait()
    if session is not None:
        for i in range(requests):
            began = time.perf_counter()
            try:
                await session.echo(f"m{i}")
                result.latencies.append(time.perf_counter() - began)
            except Exception as exc:
                result.errors[classify(exc)] += 1
    await end.wait()
    if session is not None:
        with contextlib.suppress(Exception):
            await session.close()


async def run_load(url: str, config: str, sessions: int, requests: int, bound: float) -> RunResult:
    """N sessions x M sequential echo calls through ``url``; only the calls are timed."""
    result = RunResult(config, sessions, sessions * requests)
    start, end = asyncio.Barrier(sessions + 1), asyncio.Barrier(sessions + 1)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        runs = [
            asyncio.ensure_future(one_session(http, url, requests, bound, start, end, result))
            for _ in range(sessions)
        ]
        await start.wait()
        began = time.perf_counter()
        await end.wait()
        result.wall = time.perf_counter() - began
        await asyncio.gather(*runs)
    return result


@dataclass
class Probe:
    """Part 2: one session held by A, requests served at A or forwarded from B."""

    at_owner: list[float]
    forwarded: list[float]
    errors: Counter[str]


async def run_probe(a: str, b: str, requests: int, bound: float) -> Probe:
    probe = Probe([], [], Counter())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        at_a = EchoSession(http, f"{a}/mcp", bound)
        await at_a.open()  # created at A: A holds it
        at_b = at_a.at(f"{b}/mcp")
        for i in range(requests):
            session, into = (at_a, probe.at_owner) if i % 2 == 0 else (at_b, probe.forwarded)
            began = time.perf_counter()
            try:
                await session.echo(f"p{i}")
                into.append(time.perf_counter() - began)
            except Exception as exc:
                probe.errors[classify(exc)] += 1
        await at_a.close()
    return probe


async def forward_histogram(base: str, bound: float) -> tuple[float, float, dict[float, float]]:
    """``mcp_bridge_bus_forward_seconds`` at ``base``: count, sum, cumulative buckets."""
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(bound),
        http.get(f"{base}/metrics") as resp,
    ):
        text = await resp.text()
    count = total = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("mcp_bridge_bus_forward_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("mcp_bridge_bus_forward_seconds_sum"):
            total = float(line.split()[-1])
        elif m := re.match(r'mcp_bridge_bus_forward_seconds_bucket\{le="([^"]+)"\} (\S+)', line):
            buckets[float(m.group(1))] = float(m.group(2))
    return count, total, buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the bucket holding quantile ``q`` of what was added in between."""
    added = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in sorted(after)}
    total = added.get(math.inf, max(added.values(), default=0.0))
    if total <= 0:
        return math.nan
    for le, n in added.items():
        if n >= q * total:
            return le * 1000
    return math.nan


# -- processes --------------------------------------------------------------------


async def start_balancer(backends: Sequence[str], children: list[Child]) -> tuple[Child, str]:
    argv = [sys.executable, "-m", "tests.balancer", "--host", HOST, "--port", "0"]
    for backend in backends:
        argv += ["--backend", backend]
    child = Child(f"balancer x{len(backends)}", argv, stage=0, merge_stdout=True)
    children.append(child)

    def ready(line: str) -> int | None:
        m = BALANCER_READY.search(line)
        return int(m.group(1)) if m else None

    with contextlib.chdir(REPO):  # python -m tests.balancer: the repo's tests package
        port = await child.start(ready)
    return child, f"http://{HOST}:{port}"


def replica_child(name: str, store_url: str, args: argparse.Namespace) -> Child:
    argv = load.gateway_argv(UPSTREAM, args.gateway_log_level, store_url, flag="--stdio")
    return Child(name, argv, stage=0)


# -- output -----------------------------------------------------------------------


def ms(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1] * 1000


def med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def ok_share(runs: list[RunResult]) -> str:
    """Calls that succeeded, of all the rounds' calls (a failed handshake fails its M)."""
    expected = sum(r.expected for r in runs)
    return f"{100 * sum(r.ok for r in runs) / expected:.0f}%" if expected else "-"


def print_run(r: RunResult, cpu: dict[str, float]) -> None:
    errors = ", ".join(f"{k} x{n}" for k, n in r.errors.most_common()) or "-"
    cpu_text = " ".join(f"{k}={v:.2f}s" for k, v in cpu.items())
    print(
        f"  N={r.sessions:<4} {r.path:<10} {r.rps:8.1f} req/s  p50 {r.pct(50):7.2f} ms"
        f"  p99 {r.pct(99):7.2f} ms  ok {r.ok}/{r.expected}  errors: {errors}  cpu {cpu_text}",
        flush=True,
    )


def print_summary(results: dict[tuple[int, str], list[RunResult]], sessions: list[int]) -> None:
    print("\nsummary (medians over rounds; ratio = 2 replicas / 1 replica, per round):")
    print(f"  {'N':>4}  {'req/s 1r':>9} {'req/s 2r':>9} {'ratio':>6}   "
          f"{'p50 1r':>7} {'p50 2r':>7}   {'p99 1r':>7} {'p99 2r':>7} (ms)"
          f"  {'ok 1r':>6} {'ok 2r':>6}")  # fmt: skip
    for n in sessions:
        one, two = results.get((n, CONFIGS[0]), []), results.get((n, CONFIGS[1]), [])
        ratios = [b.rps / a.rps for a, b in zip(one, two, strict=False) if a.rps > 0]
        print(
            f"  {n:>4}  {med([r.rps for r in one]):9.1f} {med([r.rps for r in two]):9.1f}"
            f" {med(ratios):6.2f}   {med([r.pct(50) for r in one]):7.2f}"
            f" {med([r.pct(50) for r in two]):7.2f}   {med([r.pct(99) for r in one]):7.2f}"
            f" {med([r.pct(99) for r in two]):7.2f}     {ok_share(one):>6} {ok_share(two):>6}"
        )


# -- main -------------------------------------------------------------------------


async def bench(args: argparse.Namespace, deadline: float) -> int:
    children: list[Child] = []
    failed = False
    try:
        with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
            redis, redis_port = await load.start_redis(Path(tmp), children)
            store_url = f"redis://{HOST}:{redis_port}/0"
            replicas = [replica_child(n, store_url, args) for n in ("A", "B")]
            children += replicas
            ports = await asyncio.gather(*(load.start_gateway_child(c) for c in replicas))
            a, b = (f"http://{HOST}:{p}" for p in ports)
            lb1_child, lb1 = await start_balancer([a], children)
            lb2_child, lb2 = await start_balancer([a, b], children)
            print(
                f"bench/replicas.py: redis-server on {HOST}:{redis_port}; replicas A {a}, B {b}"
                f" (--stdio '{UPSTREAM}', a child each); balancers {lb1} -> A, {lb2} -> A,B;"
                f" M={args.requests} echo calls/session, rounds={args.rounds}",
                flush=True,
            )
            pids = {"A": replicas[0].pid, "B": replicas[1].pid, "redis": redis.pid,
                    "lb": lb1_child.pid, "lb2": lb2_child.pid}  # fmt: skip
            urls = {CONFIGS[0]: f"{lb1}/mcp", CONFIGS[1]: f"{lb2}/mcp"}
            for n in args.sessions:  # untimed warm-up: children started, pools warm
                for config in CONFIGS:
                    await run_load(urls[config], config, min(n, 10), 2, args.timeout)
            failed |= not await part2(a, b, args, deadline)
            results: dict[tuple[int, str], list[RunResult]] = {}
            last = 0.0
            print("\npart 1: N sessions x M sequential tools/call echo, through a balancer")
            for round_no in range(args.rounds):
                for n in args.sessions:
                    order = CONFIGS if round_no % 2 == 0 else CONFIGS[::-1]
                    for config in order:
                        if time.monotonic() + last + RESERVE > deadline:
                            print(f"  (round {round_no + 1} N={n} {config} skipped: budget)")
                            continue
                        began = time.monotonic()
                        cpu0 = {k: load.cpu_seconds(p) for k, p in pids.items()}
                        r = await run_load(urls[config], config, n, args.requests, args.timeout)
                        cpu = {k: load.cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
                        last = time.monotonic() - began
                        results.setdefault((n, config), []).append(r)
                        failed |= r.error_count > 0
                        print_run(r, cpu)
            print_summary(results, args.sessions)
    finally:
        for stage, grace in ((0, STOP_GRACE), (1, load.STOP_GRACE)):
            await asyncio.gather(*(c.stop(grace) for c in children if c.stage == stage))
        for child in children:
            for line in child.notable[-5:]:
                print(f"  ({child.name}) {line[:300]}")
    return 1 if failed else 0


async def part2(a: str, b: str, args: argparse.Namespace, deadline: float) -> bool:
    print(
        f"\npart 2 (run first): one session held by A; {args.probe_requests} sequential"
        " echo calls, alternately to A (served there) and to B (forwarded to A over the bus)"
    )
    owner: list[float] = []
    forwarded: list[float] = []
    errors: Counter[str] = Counter()
    before = await forward_histogram(b, args.timeout)
    for round_no in range(args.rounds):
        if time.monotonic() + RESERVE + PROBE_ROUND > deadline:
            print(f"  (round {round_no + 1} skipped: budget)")
            continue
        probe = await run_probe(a, b, args.probe_requests, args.timeout)
        owner_p50, fwd_p50 = ms(probe.at_owner, 50), ms(probe.forwarded, 50)
        owner_p99, fwd_p99 = ms(probe.at_owner, 99), ms(probe.forwarded, 99)
        print(f"  round {round_no + 1}: at owner p50 {owner_p50:.2f} p99 {owner_p99:.2f}"
              f" | forwarded p50 {fwd_p50:.2f} p99 {fwd_p99:.2f} ms"
              f" | +{fwd_p50 - owner_p50:.2f} ms  errors {dict(probe.errors) or '-'}")  # fmt: skip
        owner += probe.at_owner
        forwarded += probe.forwarded
        errors += probe.errors
    after = await forward_histogram(b, args.timeout)
    count, total = after[0] - before[0], after[1] - before[1]
    print(
        f"  all rounds: at owner p50 {ms(owner, 50):.2f} p99 {ms(owner, 99):.2f} ms;"
        f" forwarded p50 {ms(forwarded, 50):.2f} p99 {ms(forwarded, 99):.2f} ms;"
        f" a forward costs +{ms(forwarded, 50) - ms(owner, 50):.2f} ms at p50,"
        f" +{ms(forwarded, 99) - ms(owner, 99):.2f} ms at p99"
    )
    if count:
        p50 = bucket_quantile(before[2], after[2], 0.5)
        p99 = bucket_quantile(before[2], after[2], 0.99)
        print(
            f"  B's mcp_bridge_bus_forward_seconds (forward -> owner's ack): {count:.0f} forwards,"
            f" mean {total / count * 1000:.2f} ms, p50 <= {p50:g} ms, p99 <= {p99:g} ms"
            " (bucket bounds)"
        )
    return not errors


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/replicas.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", default="1,50,200", help="comma-separated N")
    parser.add_argument("--requests", type=int, default=20, help="M echo calls per session")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probe-requests", type=int, default=400, help="part 2 calls per round")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="the whole run")
    parser.add_argument("--gateway-log-level", default="warning")
    args = parser.parse_args(argv)
    args.sessions = [int(s) for s in args.sessions.split(",") if s]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    deadline = time.monotonic() + args.max_seconds

    async def bounded() -> int:
        try:
            async with asyncio.timeout(args.max_seconds):
                return await bench(args, deadline)
        except TimeoutError:
            print(f"bench/replicas.py: --max-seconds {args.max_seconds:g} reached: cut short")
            return 3

    try:
        return asyncio.run(bounded())
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:  # a child would not start
        print(f"bench/replicas.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
