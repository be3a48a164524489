"""A control client's latency while a slowloris runs (issue #15 "Hardening II", item 1).

Starts ``mcp-bridge`` under ``ulimit -n NOFILE`` (default 1024) in front of the
stdio fixture server, runs a slowloris of ``--factor`` x NOFILE connections
(default 2x: each trickles a header byte every ``--pace`` seconds and
reconnects when closed; ``tests/slowloris.py``), and meanwhile times a control
client: one fresh ``initialize`` (on a new connection) and one ``/healthz``
(on another new connection) per step, ``--steps`` times. Prints p50, p99 and
max of each, the failures (a request that took more than ``--bound`` seconds
counts as one), the same without the attack as a baseline, and the gateway's
refusal counters from ``/metrics``.

    python bench/slowloris.py                       # ulimit -n 1024, 2048 attackers
    python bench/slowloris.py --nofile 256 --steps 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge import tasks  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.rawclient import RawClient  # noqa: E402
from tests.slowloris import Slowloris, allow_fds  # noqa: E402

STDIO_SERVER = REPO / "tests" / "fixtures" / "stdio_server.py"


async def start_gateway(
    nofile: int, header_timeout: float
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    argv = [
        "sh", "-c", f'ulimit -n {nofile} && exec "$0" "$@"', sys.executable, "-m", "bridge",
        "--stdio", f"{sys.executable} {STDIO_SERVER}", "--store-url", "memory://",
        "--port", str(port), "--log-format", "json", "--log-level", "warning",
    ]  # fmt: skip
    # By environment, so that a gateway without the setting runs too (for a before/after).
    env = {
        "PYTHONUNBUFFERED": "1",
        "PATH": "/usr/bin:/bin",
        "BRIDGE_HEADER_TIMEOUT": str(header_timeout),
    }
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env, cwd=REPO,
    )  # fmt: skip
    assert process.stdout is not None
    _ = tasks.spawn(drain(process.stdout), name="gateway-output")
    # Its `listening` line is at info level: at warning, wait for the port instead.
    async with asyncio.timeout(30):
        while process.returncode is None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            print(f"gateway: ulimit -n {nofile}")
            return process, port
    raise SystemExit("the gateway did not start")


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def timed(coro_factory: Callable[[], Awaitable[object]], bound: float) -> float | None:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(bound):
            await coro_factory()
    except (TimeoutError, aiohttp.ClientError, AssertionError, OSError):
        return None
    return (time.perf_counter() - started) * 1000


async def control(
    base: str, steps: int, bound: float
) -> tuple[list[float | None], list[float | None]]:
    inits: list[float | None] = []
    health: list[float | None] = []
    for _ in range(steps):
        # A new connection each time: the attack competes for connections, not requests.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            client = RawClient(http, f"{base}/mcp")
            inits.append(await timed(client.initialize, bound))

            async def healthz() -> None:
                async with http.get(f"{base}/healthz") as reply:
                    assert reply.status == 200

            health.append(await timed(healthz, bound))
    return inits, health


def summary(name: str, samples: list[float | None]) -> str:
    ok = sorted(s for s in samples if s is not None)
    failed = len(samples) - len(ok)
    if not ok:
        return f"  {name:<11} all {failed} failed"
    p99 = ok[min(len(ok) - 1, round(0.99 * (len(ok) - 1)))]
    return (
        f"  {name:<11} p50 {statistics.median(ok):7.1f} ms  p99 {p99:7.1f} ms  "
        f"max {ok[-1]:7.1f} ms  failed {failed}/{len(samples)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--pace", type=float, default=5.0, help="seconds between header bytes")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--bound", type=float, default=10.0)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    args = parser.parse_args()
    allow_fds(int(args.nofile * args.factor) + 512)
    process, port = await start_gateway(args.nofile, args.header_timeout)
    base = f"http://127.0.0.1:{port}"
    try:
        inits, health = await control(base, args.steps, args.bound)
        print("baseline (no attack):")
        print(summary("initialize", inits))
        print(summary("/healthz", health))
        slots = int(args.nofile * args.factor)
        attack = Slowloris("127.0.0.1", port, slots, args.pace)
        attack.start()
        # All slots connect at once unless the gateway stops accepting (fds exhausted).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await attack.saturated.wait()
        print(
            f"slowloris: {slots} slots, a byte every {args.pace} s, reconnecting; "
            f"{attack.connects} connected within 30 s"
        )
        inits, health = await control(base, args.steps, args.bound)
        print(summary("initialize", inits))
        print(summary("/healthz", health))
        print(
            f"  attacker connects {attack.connects}, closed by the gateway {attack.closed_by_peer}"
        )
        metrics = ""  # a gateway that cannot be reached under attack shows none
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            timeout = aiohttp.ClientTimeout(total=args.bound)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(f"{base}/metrics") as reply,
            ):
                metrics = await reply.text()
        await attack.stop()
        for limit in ("connections_evicted", "connections", "header_timeout", "accept"):
            match = re.search(rf'mcp_bridge_limited_total\{{limit="{limit}"\}} (\S+)', metrics)
            print(f"  limited_total{{limit={limit!r}}} {float(match.group(1)) if match else 0:.0f}")
    finally:
        process.terminate()
        await process.wait()


if __name__ == "__main__":
    asyncio.run(main())
