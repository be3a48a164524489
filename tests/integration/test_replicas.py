"""Replicas on one Redis, no affinity: a session's conversation is whole at any replica (issue #12).

Two gateway processes A and B share a real Redis. A client reaches them
directly, as a load balancer without affinity would send it: a session is
started at A, and its next messages land at B. B forwards them over the
bus to A, which holds the session's upstream work (bridge/replicas/).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import errors
from tests.conftest import FIXTURE_SERVER, Proc, ProcFactory, start_gateway
from tests.rawclient import RawClient, next_event, read_reply
from tests.redis_server import RedisServer

BOUND = 30.0  # seconds for anything here
FIXTURE = f"{sys.executable} {FIXTURE_SERVER}"


@pytest.fixture(params=["redis", "redis-cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ...]]:
    """The store options of a test run on one Redis and on a three-node Redis Cluster."""
    if request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        yield ("--store-url", cluster.url, "--store-prefix", f"t{secrets.token_hex(4)}")
        return
    with RedisServer(tmp_path / "redis") as server:
        yield ("--store-url", server.url)


async def two(procs: ProcFactory, redis: RedisServer, *extra: str) -> list[tuple[Proc, str]]:
    return await two_on(procs, ("--store-url", redis.url), *extra)


async def two_on(procs: ProcFactory, store: tuple[str, ...], *extra: str) -> list[tuple[Proc, str]]:
    common = ("--stdio", FIXTURE, *store, "--replica-lease", "1", *extra)
    return [await start_gateway(procs, *common) for _ in range(2)]


def call(client: RawClient, name: str, **arguments: Any) -> dict[str, Any]:
    return client.request("tools/call", {"name": name, "arguments": arguments})


async def metric(http: aiohttp.ClientSession, base: str, name: str) -> float:
    """The sum of a metric's samples at ``base``'s /metrics (0 if absent)."""
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    return sum(
        float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


async def readyz(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/readyz") as response:
        return await response.json()  # type: ignore[no-any-return]


async def test_a_resume_at_another_replica_gets_the_owner_s_one_answer(
    store: tuple[str, ...], procs: ProcFactory
) -> None:
    """The issue's two-answers case: the resume lands at B while A finishes the call."""
    (_, a), (_, b) = await two_on(procs, store)
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        await at_a.initialize()
        request = call(at_a, "pool_sleep", seconds=2)
        async with http.post(at_a.url, json=request, headers=at_a.headers()) as response:
            priming = await next_event(response)  # the event id to resume from; then hang up
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = at_a.session_id
        headers = at_b.headers(**{"Last-Event-ID": priming["id"]})
        async with asyncio.timeout(BOUND), http.get(at_b.url, headers=headers) as resumed:
            reply = await read_reply(resumed)
        answers = [m for m in reply.messages if m.get("id") == request["id"]]
        assert answers == [
            {"jsonrpc": "2.0", "id": request["id"], "result": answers[0].get("result")}
        ]
        assert answers[0]["result"]["content"][0]["text"] == "slept 2.0"
        # Replayed later, from either replica: still that one answer.
        for base in (a, b):
            async with http.get(f"{base}/mcp", headers=headers) as again:
                replayed = [m for m in (await read_reply(again)).messages if "id" in m]
            assert replayed == answers
        # B never drove the session: no upstream started there.
        assert (await readyz(http, b))["upstreams"]["default"]["pool"]["starts"] == 0
        assert await metric(http, b, "mcp_bridge_bus_forwarded_total") >= 2


async def test_a_sampling_answer_posted_at_another_replica_reaches_the_call(
    store: tuple[str, ...], procs: ProcFactory
) -> None:
    """conformance's tools-call-sampling: the client's response lands at B, the call waits at A."""
    (_, a), (_, b) = await two_on(procs, store)
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": {"sampling": {}},
            "clientInfo": {"name": "replica-test", "version": "0"},
        }
        reply = await at_a.post(at_a.request("initialize", params))
        at_a.session_id = reply.headers["Mcp-Session-Id"]
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = at_a.session_id
        request = call(at_a, "test_sampling", prompt="where am I")
        async with asyncio.timeout(BOUND):
            async with http.post(at_a.url, json=request, headers=at_a.headers()) as stream:
                async for line in stream.content:
                    if not line.startswith(b"data: {"):
                        continue
                    message = json.loads(line[6:])
                    if message.get("method") == "sampling/createMessage":
                        result = {
                            "role": "assistant",
                            "content": {"type": "text", "text": "at B"},
                            "model": "test",
                            "stopReason": "endTurn",
                        }
                        answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
                        assert (await at_b.post(answer)).status == 202
                    elif message.get("id") == request["id"]:
                        break
        assert message["result"]["content"][0]["text"] == "LLM response: at B"


async def test_a_cancel_posted_at_another_replica_cancels_the_call(
    redis: RedisServer, procs: ProcFactory
) -> None:
    (_, a), (_, b) = await two(procs, redis)
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        await at_a.initialize()
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = at_a.session_id
        request = call(at_a, "pool_sleep", seconds=60)
        async with asyncio.timeout(BOUND):
            async with http.post(at_a.url, json=request, headers=at_a.headers()) as stream:
                await next_event(stream)  # priming: the call is upstream
                cancel = {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": request["id"], "reason": "changed my mind"},
                }
                assert (await at_b.post(cancel)).status == 202
                rest = await read_reply(stream)  # the stream ends, with no answer
        assert [m for m in rest.messages if m.get("id") == request["id"]] == []


async def test_a_get_stream_at_another_replica_carries_the_owner_s_notifications(
    redis: RedisServer, procs: ProcFactory
) -> None:
    """A list_changed the shared upstream at A sends reaches a GET stream opened at B."""
    (_, a), (_, b) = await two(procs, redis)
    async with aiohttp.ClientSession() as http:
        listener, other = RawClient(http, f"{a}/mcp"), RawClient(http, f"{a}/mcp")
        await listener.initialize()
        await other.initialize()  # the same principal: the same upstream session at A
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = listener.session_id
        async with asyncio.timeout(BOUND), http.get(at_b.url, headers=at_b.headers()) as stream:
            assert stream.status == 200
            assert (await other.post(call(other, "test_trigger_tool_change"))).status == 200
            while not (fields := await next_event(stream)).get("data"):
                pass  # the priming event
        assert json.loads(fields["data"])["method"] == "notifications/tools/list_changed"


async def test_delete_at_another_replica_ends_the_live_session_at_once(
    redis: RedisServer, procs: ProcFactory
) -> None:
    (_, a), (_, b) = await two(procs, redis)
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        await at_a.initialize()
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = at_a.session_id
        assert await at_b.delete() == 200
        reply = await at_a.post(at_a.request("ping"))  # no touch period: A ended it itself
        assert (reply.status, reply.error_code) == (404, errors.SESSION_NOT_FOUND)
        assert (await readyz(http, a))["sessions"] == 0


async def test_a_browser_s_request_at_another_replica_gets_its_cors_headers_once(
    redis: RedisServer, procs: ProcFactory
) -> None:
    """conformance's dns-rebinding-protection sends an Origin: B's aiohttp-cors sets the CORS
    headers of the answer it relays from A (it once found A's there, and failed with 500)."""
    (_, a), (_, b) = await two(procs, redis)
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        await at_a.initialize()
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = at_a.session_id
        async with asyncio.timeout(BOUND):
            reply = await at_b.post(at_b.request("ping"), Origin=b)
            forwarded = (await readyz(http, b))["replica"]["forwarded"]
        assert (reply.status, reply.messages[-1].get("result")) == (200, {})
        assert reply.headers.getall("Access-Control-Allow-Origin") == [b]
        assert len(reply.headers.getall("Access-Control-Expose-Headers")) == 1
        assert forwarded == 1


async def test_a_killed_replica_s_sessions_are_taken_over(
    store: tuple[str, ...], procs: ProcFactory
) -> None:
    (proc_a, a), (_, b) = await two_on(procs, store, "--forward-timeout", "0.5")
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        await at_a.initialize()
        assert (await at_a.post(call(at_a, "pool_sleep", seconds=0))).status == 200
        proc_a.process.send_signal(signal.SIGKILL)
        await proc_a.exited(BOUND)
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = at_a.session_id
        async with asyncio.timeout(BOUND):
            reply = await at_b.post(call(at_b, "pool_sleep", seconds=0))
        assert reply.status == 200
        assert reply.messages[-1]["result"]["content"][0]["text"] == "slept 0.0"
        assert await metric(http, b, "mcp_bridge_takeovers_total") == 1


async def test_a_draining_replica_hands_its_sessions_over(
    redis: RedisServer, procs: ProcFactory
) -> None:
    """SIGTERM: the call in flight at A finishes there; then B serves the session, no wait."""
    (proc_a, a), (_, b) = await two(procs, redis, "--replica-lease", "30")
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        await at_a.initialize()
        request = call(at_a, "pool_sleep", seconds=1)
        async with http.post(at_a.url, json=request, headers=at_a.headers()) as stream:
            await next_event(stream)
            proc_a.process.send_signal(signal.SIGTERM)
            reply = await read_reply(stream)
        assert reply.messages[-1]["result"]["content"][0]["text"] == "slept 1.0"
        await proc_a.exited(BOUND)
        at_b = RawClient(http, f"{b}/mcp")
        at_b.session_id = at_a.session_id
        async with asyncio.timeout(5):  # far less than A's 30 s lease: handed over, not waited out
            reply = await at_b.post(call(at_b, "pool_sleep", seconds=0))
        assert reply.status == 200, reply
        assert await metric(http, b, "mcp_bridge_takeovers_total") == 0


async def test_a_paused_replica_loses_its_sessions_and_lets_go(
    redis: RedisServer, procs: ProcFactory
) -> None:
    """SIGSTOP past the lease: B takes over; A, resumed, lets go and forwards to B."""
    (proc_a, a), (_, b) = await two(procs, redis, "--forward-timeout", "0.5")
    async with aiohttp.ClientSession() as http:
        at_a = RawClient(http, f"{a}/mcp")
        await at_a.initialize()
        pid_at_a = (await at_a.post(call(at_a, "pool_pid"))).messages[-1]
        proc_a.process.send_signal(signal.SIGSTOP)
        try:
            at_b = RawClient(http, f"{b}/mcp")
            at_b.session_id = at_a.session_id
            async with asyncio.timeout(BOUND):
                pid_at_b = (await at_b.post(call(at_b, "pool_pid"))).messages[-1]
        finally:
            proc_a.process.send_signal(signal.SIGCONT)
        assert "result" in pid_at_b, pid_at_b
        assert pid_at_b != pid_at_a  # B drives it now, on an upstream of its own
        await proc_a.wait_for(r'"event": "replica_lease_lapsed"', BOUND)
        async with asyncio.timeout(BOUND):
            again = (await at_a.post(call(at_a, "pool_pid"))).messages[-1]
        assert again.get("result") == pid_at_b.get("result"), (again, pid_at_b)  # by B, for A


async def test_a_legacy_post_at_another_replica_reaches_the_stream_s_replica(
    redis: RedisServer, procs: ProcFactory
) -> None:
    """Legacy HTTP+SSE: the GET /sse stream is at A, its POST /messages/ lands at B."""
    (_, a), (_, b) = await two(procs, redis)
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(BOUND),
        http.get(f"{a}/sse", headers={"Accept": "text/event-stream"}) as stream,
    ):
        endpoint = (await next_event(stream))["data"]
        assert endpoint.startswith("/messages/?session_id=")
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2024-11-05",
                "capabilities": {},
                "clientInfo": {"name": "legacy-replica-test", "version": "0"},
            },
        }
        async with http.post(f"{b}{endpoint}", json=initialize) as accepted:
            assert accepted.status == 202
        while not (fields := await next_event(stream)).get("data"):
            pass
        assert json.loads(fields["data"])["result"]["serverInfo"]
