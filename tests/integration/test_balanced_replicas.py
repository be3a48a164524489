"""Gateway replicas sharing one Redis behind a round-robin balancer (issue #12).

The SDK client's requests are spread over the replicas with no affinity, so
each replica serves requests of a session another one created; only requests
that are not server-to-client round trips are exercised here.
"""

from __future__ import annotations

import sys
from typing import Final

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ProcFactory
from tests.redis_server import RedisServer
from tests.replicas import replica_set

EXAMPLE: Final = f"{sys.executable} -m bridge.examples.server"


async def test_sdk_client_through_the_balancer_reaches_both_replicas(
    procs: ProcFactory, redis: RedisServer
) -> None:
    async with replica_set(procs, "--stdio", EXAMPLE, store_url=redis.url, count=2) as replicas:
        async with (
            streamable_http_client(f"{replicas.url}/mcp") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            first = {tool.name for tool in (await session.list_tools()).tools}
            again = {tool.name for tool in (await session.list_tools()).tools}
            assert first
            assert again == first
        counts = replicas.balancer.counts
        assert counts.requests[replicas[0].url] > 0, counts
        assert counts.requests[replicas[1].url] > 0, counts
        assert counts.own_5xx == 0


async def test_a_session_outlives_a_rolling_restart_of_the_replicas(
    procs: ProcFactory, redis: RedisServer
) -> None:
    """Kill -9 one replica, SIGTERM the other: each comes back on its own port, and the
    session, kept in Redis, is served throughout by whichever replica is up."""
    async with replica_set(procs, "--stdio", EXAMPLE, store_url=redis.url, count=2) as replicas:
        async with (
            streamable_http_client(f"{replicas.url}/mcp") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}

            await replicas.kill(0)
            for _ in range(2):  # one of them is sent to replica 0 first, refused, then to 1
                assert {t.name for t in (await session.list_tools()).tools} == tools
            assert replicas.balancer.counts.refused[replicas[0].url] > 0

            await replicas.start(0)
            assert await replicas.stop(1) == 0
            for _ in range(2):
                assert {t.name for t in (await session.list_tools()).tools} == tools
            assert replicas.balancer.counts.refused[replicas[1].url] > 0

            await replicas.start(1)
            served_by_1 = replicas.balancer.counts.requests[replicas[1].url]
            for _ in range(2):
                assert {t.name for t in (await session.list_tools()).tools} == tools
            assert replicas.balancer.counts.requests[replicas[1].url] > served_by_1
        assert [len(r.runs) for r in replicas.replicas] == [2, 2]
        assert replicas.balancer.counts.own_5xx == 0
