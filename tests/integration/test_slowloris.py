"""Slowloris and file-descriptor exhaustion (issue #15 "Hardening II", item 1).

- A gateway under ``ulimit -n 256`` is hit by a slowloris of 512 connections
  (twice its limit), each trickling a header byte at a time and reconnecting
  when closed. A control client's ``initialize`` and ``/healthz`` still succeed
  within :data:`CONTROL_BOUND`, ``accept()`` never fails (the connection cap
  stays under the limit), and the gateway closes slow heads
  (``mcp_bridge_limited_total{limit="connections_evicted"|"header_timeout"}``).
- A gateway under ``ulimit -n 64`` whose cap is set above that
  (``BRIDGE_MAX_CONNECTIONS=1000``): the slowloris holds every descriptor,
  ``accept()`` fails again and again, and the log says so in
  ``accept_failed`` lines with a count, at most one per
  ``BRIDGE_ACCEPT_ERROR_LOG_INTERVAL``, never a traceback per failure.
- A POST whose body trickles gets 408 after ``BRIDGE_BODY_TIMEOUT``.
- One principal holds at most ``BRIDGE_MAX_STREAMS_PER_PRINCIPAL`` GET streams
  (legacy ``/sse`` and Streamable HTTP together): the next gets 429 with
  -32037 and ``Retry-After``, and another principal is not affected.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

import aiohttp
from pydantic import SecretStr

from bridge import errors
from tests.conftest import REPO, GatewayFactory, Proc, ProcFactory, fixture_stdio
from tests.rawclient import RawClient, keyed
from tests.slowloris import Slowloris, SlowlorisThread

STDIO_SERVER = REPO / "tests" / "fixtures" / "stdio_server.py"
CONTROL_BOUND = 5.0  # seconds the control client's initialize or /healthz may take
BOUND = 30.0  # seconds any other step may take


async def start_limited_gateway(
    procs: ProcFactory, nofile: int, *args: str, env: dict[str, str] | None = None
) -> tuple[Proc, str, int]:
    """``mcp-bridge`` under ``ulimit -n NOFILE`` in front of the stdio fixture."""
    gateway = await procs(
        "sh", "-c", f'ulimit -n {nofile} && exec "$0" "$@"',
        sys.executable, "-m", "bridge", "--stdio", f"{sys.executable} {STDIO_SERVER}",
        "--store-url", "memory://", "--port", "0", "--log-format", "json", *args,
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
    )  # fmt: skip
    match = await gateway.wait_for(r'"event": "listening"')
    port = json.loads(match.string)["port"]
    return gateway, f"http://127.0.0.1:{port}", port


def limited(metrics: str, limit: str) -> float:
    match = re.search(rf'mcp_bridge_limited_total\{{limit="{limit}"\}} (\S+)', metrics)
    return float(match.group(1)) if match else 0.0


async def test_slowloris_of_twice_the_fd_limit_starves_nobody(procs: ProcFactory) -> None:
    gateway, base, port = await start_limited_gateway(
        procs, 256, "--header-timeout", "2", "--share", "none"
    )
    # On a loop of its own: on the test's, the attack would delay the control
    # client between its connect and its request (seen on a loaded machine).
    attack = SlowlorisThread("127.0.0.1", port, slots=512, pace=0.5)
    attack.start()
    try:
        await attack.saturated(BOUND)
        # A connection per request: at the cap the gate may close an idle
        # keep-alive connection (as HTTP allows at any time), and a client that
        # reuses one just then sees it closed under its request (seen on a
        # loaded CI machine). What must not starve is a client that connects.
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=BOUND)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            for _ in range(3):
                client = RawClient(http, f"{base}/mcp")
                async with asyncio.timeout(CONTROL_BOUND):
                    await client.initialize()
                async with asyncio.timeout(CONTROL_BOUND), http.get(f"{base}/healthz") as reply:
                    assert reply.status == 200
            async with http.get(f"{base}/metrics") as reply:
                metrics = await reply.text()
    finally:
        await attack.stop()
    assert limited(metrics, "connections_evicted") + limited(metrics, "header_timeout") > 0
    assert not gateway.json_events("accept_failed")  # the cap kept descriptors free
    assert gateway.process.returncode is None


async def test_accept_errors_are_counted_not_traced(procs: ProcFactory) -> None:
    # Settings by environment: a gateway without them runs too, and shows what it logs.
    settings = {
        "BRIDGE_MAX_CONNECTIONS": "1000",
        "BRIDGE_HEADER_TIMEOUT": "60",
        "BRIDGE_ACCEPT_ERROR_LOG_INTERVAL": "1",
    }
    gateway, _, port = await start_limited_gateway(procs, 64, env=settings)
    attack = Slowloris("127.0.0.1", port, slots=128, pace=1.0)
    started = time.monotonic()
    attack.start()
    try:
        await gateway.wait_for_lines(r'"event": "accept_failed"', 3, BOUND)
    finally:
        await attack.stop()
    elapsed = time.monotonic() - started
    lines = gateway.json_events("accept_failed")
    assert len(lines) <= elapsed / 1.0 + 2, lines  # once per interval at most
    assert all(line["count"] >= 1 and "Too many open files" in line["error"] for line in lines)
    output = "\n".join(gateway.lines)
    assert "Traceback" not in output
    assert "out of system resource" not in output
    assert len(output) < 64 * 1024  # bounded, however many accepts failed


async def test_a_trickling_body_gets_408(gateway: GatewayFactory) -> None:
    gw = await gateway([fixture_stdio()], body_timeout=0.5)
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{"
    )
    writer.write(head.encode())
    async with asyncio.timeout(BOUND):  # the body never comes: the gateway answers anyway
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = int(re.search(r"Content-Length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        body = json.loads(await reader.readexactly(length))
    writer.close()
    assert head.startswith("HTTP/1.1 408"), head
    assert "Connection: close" in head  # no further request on a connection this slow
    assert body["error"]["code"] == errors.INVALID_REQUEST


async def test_streams_per_principal(gateway: GatewayFactory) -> None:
    gw = await gateway(
        [fixture_stdio()], api_keys=SecretStr("alice:tok-a,bob:tok-b"), max_streams_per_principal=2
    )
    async with aiohttp.ClientSession() as http:
        alice = keyed(http, f"{gw.url}/mcp", "tok-a")
        await alice.initialize()
        sse = {"Authorization": "Bearer tok-a", "Accept": "text/event-stream"}
        legacy = await http.get(f"{gw.url}/sse", headers=sse)
        modern = await http.get(alice.url, headers=alice.headers(Accept="text/event-stream"))
        assert (legacy.status, modern.status) == (200, 200)
        async with http.get(f"{gw.url}/sse", headers=sse) as third:
            assert third.status == 429
            assert third.headers["Retry-After"] == "1"
            assert (await third.json())["error"]["code"] == errors.LIMIT_EXCEEDED
        async with http.get(alice.url, headers=alice.headers(Accept="text/event-stream")) as fourth:
            assert fourth.status == 429
        bob = {"Authorization": "Bearer tok-b", "Accept": "text/event-stream"}
        async with http.get(f"{gw.url}/sse", headers=bob) as other:
            assert other.status == 200  # another principal's streams are its own
        legacy.close()
        modern.close()
