"""Limits and backpressure (issue #5 "Limits and backpressure").

- Requests in flight per session: the next one gets 429 with ``Retry-After``
  and a JSON-RPC error, and is served again once one is answered.
- Subscriptions per session: past the cap a ``resources/subscribe`` gets
  -32602, reaches no upstream and is not stored.
- Live sessions per principal and in total: at the limit, the longest-idle
  session's upstream is released to make room (its client resumes it
  unharmed); when every session is busy, 429 (per principal) or 503 (total)
  with ``Retry-After``.
- A client that reads nothing from its stream while its upstream floods it
  neither grows the gateway's memory without bound (the upstream is held
  back: the flooding child stays blocked) nor slows another session.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from pydantic import SecretStr

from bridge.errors import INVALID_PARAMS, LIMIT_EXCEEDED
from bridge.settings import StdioServer
from tests.conftest import GatewayFactory, ProcFactory, example_stdio, start_gateway
from tests.rawclient import ACCEPT_BOTH, RawClient, keyed, next_message

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def recorder(tmp_path: Path) -> StdioServer:
    record = tmp_path / "record.jsonl"
    return StdioServer(
        name="rec", command=sys.executable, args=(str(FIXTURES / "recorder_server.py"), str(record))
    )


async def test_requests_in_flight_per_session(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = await gateway([recorder(tmp_path)], max_requests_per_session=2)
    client = RawClient(http, f"{gw.url}/mcp")
    await client.initialize()
    hold = [client.request("tools/call", {"name": "hold", "arguments": {}}) for _ in range(2)]
    # An SSE answer starts once its request is on its way upstream: both are in flight.
    held = [await http.post(client.url, json=m, headers=client.headers()) for m in hold]
    try:
        assert [r.status for r in held] == [200, 200]
        reply = await client.post(client.request("tools/list"))
        assert (reply.status, reply.error_code) == (429, LIMIT_EXCEEDED)
        assert reply.headers["Retry-After"] == "1"
        cancel = {"requestId": hold[0]["id"], "reason": "test"}
        await client.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel})
        reply = await client.post(client.request("tools/call", {"name": "release"}))
        assert reply.status == 200
        assert reply.messages[-1]["result"]["content"][0]["text"] == "release done"
        assert (await next_message(held[1]))["id"] == hold[1]["id"]
    finally:
        for response in held:
            response.close()


KEYS = SecretStr("alice:tok-alice,bob:tok-bob")


async def open_get(http: aiohttp.ClientSession, client: RawClient) -> aiohttp.ClientResponse:
    """A standalone GET stream: a session holding one is busy, never released for room."""
    response = await http.get(client.url, headers=client.headers(Accept="text/event-stream"))
    assert response.status == 200
    return response


async def hold(http: aiohttp.ClientSession, client: RawClient) -> aiohttp.ClientResponse:
    """A tools/call the recorder holds: a session with it in flight is busy."""
    message = client.request("tools/call", {"name": "hold", "arguments": {}})
    response = await http.post(client.url, json=message, headers=client.headers())
    assert response.status == 200
    return response


async def test_sessions_per_principal(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = await gateway(
        [recorder(tmp_path)], api_keys=KEYS, max_sessions_per_principal=2, share="none"
    )
    url = f"{gw.url}/mcp"
    alice = [keyed(http, url, "tok-alice") for _ in range(3)]
    await alice[0].initialize()
    await alice[1].initialize()
    held = [await hold(http, c) for c in alice[:2]]
    try:
        third = alice[2]
        reply = await third.post(third.request("initialize", INIT))
        assert (reply.status, reply.error_code) == (429, LIMIT_EXCEEDED)
        assert reply.headers["Retry-After"] == "5"
        await keyed(http, url, "tok-bob").initialize()  # others are not affected
        # alice[0]'s call is answered: it goes idle, and its upstream may make room.
        reply = await alice[0].post(alice[0].request("tools/call", {"name": "release"}))
        assert reply.status == 200
        await held[0].read()
        await third.initialize()
        assert alice[0].session_id not in {s.id for s in gw.hub.live()}
        # ... and alice[0] is not stranded: its next request resumes it, making
        # room in turn by releasing the now longest-idle alice session.
        reply = await alice[0].post(alice[0].request("tools/call", {"name": "release"}))
        assert reply.messages[-1]["result"]["content"][0]["text"] == "release done"
        assert alice[0].session_id in {s.id for s in gw.hub.live()}
    finally:
        for response in held:
            response.close()


async def test_sessions_in_total(gateway: GatewayFactory, http: aiohttp.ClientSession) -> None:
    gw = await gateway([example_stdio()], max_sessions=2)
    clients = [RawClient(http, f"{gw.url}/mcp") for _ in range(3)]
    for client in clients[:2]:
        await client.initialize()
    streams = [await open_get(http, c) for c in clients[:2]]
    try:
        reply = await clients[2].post(clients[2].request("initialize", INIT))
        assert (reply.status, reply.error_code) == (503, LIMIT_EXCEEDED)
        assert reply.headers["Retry-After"] == "5"
        async with http.get(f"{gw.url}/metrics") as response:
            assert 'mcp_bridge_limited_total{limit="sessions"} 1.0' in await response.text()
    finally:
        for response in streams:
            response.close()
    assert len(gw.hub) == 2


INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}


# -- a client that reads nothing ---------------------------------------------------


async def stalled_flood(
    url: str, session_id: str, arguments: dict[str, int]
) -> asyncio.StreamWriter:
    """POST a flooding tools/call over a raw socket, then never read a byte."""
    base = url.removeprefix("http://")
    host, _, rest = base.partition(":")
    port, _, path = rest.partition("/")
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "flood", "arguments": arguments, "_meta": {"progressToken": "p"}},
        }
    ).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /{path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {ACCEPT_BOTH}\r\n"
        f"Content-Type: application/json\r\nMcp-Session-Id: {session_id}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    del reader  # never read
    return writer


async def echo_latencies(client: RawClient, rounds: int) -> list[float]:
    seconds = []
    for n in range(rounds):
        started = time.perf_counter()
        reply = await client.post(
            client.request("tools/call", {"name": "echo", "arguments": {"text": str(n)}})
        )
        seconds.append(time.perf_counter() - started)
        assert reply.messages[-1]["result"]["content"][0]["text"] == str(n)
    return seconds


MiB = 2**20


@pytest.mark.parametrize(
    ("flood", "options", "max_offered"),
    [
        # Many small messages: the count limit (64 queued) holds the child back.
        pytest.param(
            {"count": 6000, "size": 16 * 1024, "every": 100},
            ["--stream-queue-size", "64", "--event-max-events", "200"],
            1000,
            id="6000x16KiB",
        ),
        # Few large ones: 256 would fit the count limit (256 MiB); the byte budget
        # (4 MiB) holds the child back instead.
        pytest.param(
            {"count": 300, "size": MiB, "every": 2},
            ["--stream-queue-bytes", str(4 * MiB)],
            50,
            id="300x1MiB",
        ),
    ],
)
async def test_a_client_that_reads_nothing_hurts_nobody(
    procs: ProcFactory,
    tmp_path: Path,
    flood: dict[str, int],
    options: list[str],
    max_offered: int,
) -> None:
    config = tmp_path / "servers.json"
    server = {"command": sys.executable, "args": [str(FIXTURES / "flood_server.py")]}
    config.write_text(json.dumps({"mcpServers": {"flood": server}}))
    # Each client's own child (share none), which the stall holds back.
    proc, base = await start_gateway(
        procs, "--config", str(config), "--sse-send-timeout", "60", "--share", "none", *options
    )
    gateway = psutil.Process(proc.pid)
    url = f"{base}/mcp"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        slow, fast = RawClient(http, url), RawClient(http, url)
        await slow.initialize()
        await fast.initialize()
        assert slow.session_id is not None
        before = await echo_latencies(fast, 50)
        rss_before = gateway.memory_info().rss
        writer = await stalled_flood(url, slow.session_id, flood)
        try:
            await proc.wait_for(rf"flooded {2 * flood['every']}\b", within=20)  # under way
            during = await echo_latencies(fast, 200)
            offered = max(int(e["line"].split()[1]) for e in proc.json_events("child_stderr")
                          if e.get("line", "").startswith("flooded"))  # fmt: skip
            rss_growth = gateway.memory_info().rss - rss_before
        finally:
            writer.close()
        after = await echo_latencies(fast, 20)
    ratio = statistics.median(during) / statistics.median(before)
    offered_mib = offered * flood["size"] / MiB
    print(
        f"\nfast client echo p50: before {statistics.median(before) * 1000:.2f} ms, "
        f"during the stall {statistics.median(during) * 1000:.2f} ms (x{ratio:.2f}), "
        f"max {max(during) * 1000:.1f} ms; flood got {offered} of {flood['count']} messages "
        f"({offered_mib:.0f} MiB) out of its child; gateway RSS grew {rss_growth / MiB:.1f} MiB"
    )
    # Held back: the child stays blocked on a full pipe, far from done.
    assert offered <= max_offered
    assert rss_growth < 64 * MiB
    # Served at full speed: bounded latency (generous: 2 shared cores), no stall.
    assert max(during) < 2.0
    assert ratio < 10
    assert len(after) == 20


async def test_a_client_that_reads_nothing_lets_go_of_a_shared_upstream(
    procs: ProcFactory, tmp_path: Path
) -> None:
    """Shared (share principal): the stalled client's queue is bounded, then its session
    lets go of the pool; the child is never held back, so other clients go on."""
    config = tmp_path / "servers.json"
    server = {"command": sys.executable, "args": [str(FIXTURES / "flood_server.py")]}
    config.write_text(json.dumps({"mcpServers": {"flood": server}}))
    proc, base = await start_gateway(
        procs, "--config", str(config), "--stream-queue-size", "64",
        "--stream-queue-bytes", str(2 * MiB),
    )  # fmt: skip
    gateway = psutil.Process(proc.pid)
    url = f"{base}/mcp"
    flood = {"count": 2000, "size": 16 * 1024, "every": 500}  # 32 MiB, 8 x what may queue
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        slow, fast = RawClient(http, url), RawClient(http, url)
        await slow.initialize()
        await fast.initialize()
        assert slow.session_id is not None
        rss_before = gateway.memory_info().rss
        writer = await stalled_flood(url, slow.session_id, flood)
        try:
            await proc.wait_for(rf"flooded {flood['count']}\b", within=30)  # never held back
            rss_growth = gateway.memory_info().rss - rss_before
            after = await echo_latencies(fast, 20)  # the child answers again: served
            # The stalled session's queue stopped at its bound: it lets go of the pool.
            await proc.wait_for(r'"event": "pool_client_too_slow"', within=30)
        finally:
            writer.close()
        # Once its stream is gone it is released (its request got -32030) ...
        await proc.wait_for(r'(?=.*"event": "session_released")(?=.*too slow to read)', within=30)
        # ... and it resumes on its next request, on the same shared child.
        reply = await slow.post(
            slow.request("tools/call", {"name": "echo", "arguments": {"text": "back"}})
        )
    assert reply.messages[-1]["result"]["content"][0]["text"] == "back"
    assert len(after) == 20
    assert rss_growth < 64 * MiB
    print(f"\nshared flood: gateway RSS grew {rss_growth / MiB:.1f} MiB while 32 MiB passed")


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_subscriptions_per_session_are_capped(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, share: str
) -> None:
    """Past BRIDGE_MAX_SUBSCRIPTIONS_PER_SESSION a subscribe gets -32602, reaches no
    upstream and is not stored (issue #15: 4,000 made a 212 KB record, all replayed)."""
    spec = recorder(tmp_path)
    gw = await gateway([spec], max_subscriptions_per_session=3, share=share)
    record = Path(spec.args[1])

    def upstream_subscribed() -> list[str]:
        lines = [json.loads(line) for line in record.read_text().splitlines()]
        return [m["params"]["uri"] for m in lines if m.get("method") == "resources/subscribe"]

    async def subscribe(uri: str, method: str = "resources/subscribe") -> dict[str, object]:
        reply = await client.post(client.request(method, {"uri": uri}))
        assert reply.status == 200
        message: dict[str, object] = reply.messages[-1]
        return message

    async def stored() -> list[str]:
        found = await gw.hub.stores.sessions.get(str(client.session_id))
        assert found is not None
        return found.subscriptions

    async def sync() -> None:  # answered once all sent before it is recorded upstream
        await client.post(client.request("tools/call", {"name": "sync", "arguments": {}}))

    client = RawClient(http, f"{gw.url}/mcp")
    await client.initialize()
    for uri in ("file:///a", "file:///b", "file:///c"):
        assert (await subscribe(uri))["result"] == {}
    refused = await subscribe("file:///d")
    assert refused["error"] == {
        "code": INVALID_PARAMS,
        "message": "more than 3 resource subscriptions in this session",
    }
    assert (await subscribe("file:///a"))["result"] == {}  # already held: no new one
    await sync()
    assert set(upstream_subscribed()) == {"file:///a", "file:///b", "file:///c"}
    assert await stored() == ["file:///a", "file:///b", "file:///c"]
    # Room again once one is given up.
    assert (await subscribe("file:///a", "resources/unsubscribe"))["result"] == {}
    assert (await subscribe("file:///d"))["result"] == {}
    assert await stored() == ["file:///b", "file:///c", "file:///d"]
