"""Sessions belong to the store, not to a process (issue #3).

- Two gateways share one Redis: a session made at one is served by the
  other, and a DELETE at one reaches the other's live copy within a touch
  period.
- An upstream legacy SSE server restarts mid-session: the client goes on.
- ``mcp-bridge sessions list|show|delete`` sees and evicts stored sessions.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge import errors
from tests.conftest import (
    FIXTURE_SERVER,
    GatewayFactory,
    ProcFactory,
    free_port,
    sse_spec,
    start_gateway,
)
from tests.rawclient import RawClient
from tests.redis_server import RedisServer

BOUND = 30.0  # seconds
EXAMPLE = f"{sys.executable} -m bridge.examples.server"


def add(client: RawClient, a: int, b: int) -> dict[str, object]:
    return client.request("tools/call", {"name": "add", "arguments": {"a": a, "b": b}})


async def test_two_gateways_share_sessions(redis: RedisServer, procs: ProcFactory) -> None:
    # A short TTL makes the record touch (and so eviction news) come every 0.5 s.
    common = ("--stdio", EXAMPLE, "--store-url", redis.url, "--session-ttl", "5")
    _, base_a = await start_gateway(procs, *common)
    _, base_b = await start_gateway(procs, *common)
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{base_a}/http")
        await at_a.initialize()
        at_b = RawClient(http, f"{base_b}/http")
        at_b.session_id = at_a.session_id  # a load balancer sent it elsewhere
        reply = await at_b.post(add(at_b, 2, 3))
        assert reply.status == 200
        assert reply.messages[-1]["result"]["content"][0]["text"] == "5.0"
        assert (await at_a.post(add(at_a, 1, 1))).status == 200  # still fine at A

        assert await at_b.delete() == 200
        assert (await at_b.post(at_b.request("ping"))).status == 404
        async with asyncio.timeout(BOUND):
            while (reply := await at_a.post(at_a.request("ping"))).status == 200:
                pass  # A serves its live copy until its next record touch
        assert (reply.status, reply.error_code) == (404, errors.SESSION_NOT_FOUND)


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_legacy_upstream_restart_mid_session(
    procs: ProcFactory, gateway: GatewayFactory, share: str
) -> None:
    port = free_port()
    argv = (sys.executable, FIXTURE_SERVER, "--transport", "sse", "--port", str(port))
    upstream = await procs(*argv)
    await upstream.wait_for("Uvicorn running on")
    gw = await gateway([sse_spec(f"http://127.0.0.1:{port}/sse")], share=share)
    pool = gw.hub.pools["legacy"]
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        assert client.session_id
        session = await gw.hub.get(client.session_id, "legacy")
        call = client.request("tools/call", {"name": "test_simple_text", "arguments": {}})
        assert (await client.post(call)).status == 200

        await upstream.stop(signal.SIGKILL)
        async with asyncio.timeout(BOUND):
            if share == "none":
                await session.wait_closed()  # the gateway saw its upstream go
            while share != "none" and not pool.counts.losses:  # the pool saw it instead,
                await pool.changed()  # and the client session lives on
        restarted = await procs(*argv)
        await restarted.wait_for("Uvicorn running on")

        reply = await client.post(
            client.request("tools/call", {"name": "test_simple_text", "arguments": {}})
        )
        assert reply.status == 200
        assert reply.messages[-1]["result"]["content"][0]["text"].startswith(
            "This is a simple text"
        )


async def test_sessions_admin_command(procs: ProcFactory, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    gateway, base = await start_gateway(procs, "--stdio", EXAMPLE, "--store-url", store)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/http")
        await client.initialize()
        assert client.session_id
        await gateway.stop()  # SIGTERM: the record stays

        async def admin(*args: str) -> tuple[int, list[str]]:
            proc = await procs(
                sys.executable, "-m", "bridge", "sessions", *args, "--store-url", store
            )
            return await proc.exited(BOUND), proc.lines

        code, lines = await admin("list")
        assert code == 0
        [listed] = [json.loads(line) for line in lines]
        assert listed["session_id"] == client.session_id
        assert listed["server"] == "default"
        assert listed["client"] == "raw-test-client 0"
        code, lines = await admin("show", client.session_id)
        assert code == 0
        assert json.loads(lines[0])["client_params"]["clientInfo"]["name"] == "raw-test-client"
        code, lines = await admin("delete", client.session_id)
        assert code == 0
        assert json.loads(lines[0]) == {"session_id": client.session_id, "deleted": True}
        code, lines = await admin("show", client.session_id)
        assert code == 1

        _, base = await start_gateway(procs, "--stdio", EXAMPLE, "--store-url", store)
        client.url = f"{base}/http"
        reply = await client.post(client.request("ping"))
        assert (reply.status, reply.error_code) == (404, errors.SESSION_NOT_FOUND)
