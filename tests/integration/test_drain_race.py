"""A draining replica and a request it cannot forward (issue #12, found under #13's CI).

In a rolling restart, a request reached a replica directly just as it began
draining, for a session the drain had handed over the moment it was quiet. No
live replica held the session, so there was nowhere to forward it, and the
client got 503 -32038 "session moved". A drain lets a request in flight finish;
this one is now served where it landed. Reached here without a race: the hub's
``drain`` hands a quiet session over at once, and the request comes after it.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import GatewayFactory, example_stdio
from tests.rawclient import RawClient
from tests.redis_server import RedisServer


async def test_a_request_reaching_a_draining_replica_for_a_session_none_holds_is_served(
    gateway: GatewayFactory, redis: RedisServer
) -> None:
    gw = await gateway([example_stdio()], store_url=redis.url)  # Redis: a replica
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/mcp")
        await client.initialize()
        assert client.session_id is not None
        await gw.hub.drain(5.0)  # the session is quiet: handed over, held by no replica
        assert client.session_id not in {s.id for s in gw.hub.live()}
        assert await gw.hub.owners.holder(client.session_id) is None
        reply = await client.post(client.request("tools/list"))
    assert reply.status == 200, reply
    assert [m["result"]["tools"] for m in reply.messages if "result" in m], reply


async def test_once_the_hub_has_closed_such_a_request_is_refused_not_left_waiting(
    gateway: GatewayFactory, redis: RedisServer
) -> None:
    """After ``aclose`` its pools are closed: serving there is not possible, so the answer
    is the 503 -32038 of before, at once, not a request that waits for a pool."""
    gw = await gateway([example_stdio()], store_url=redis.url)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/mcp")
        await client.initialize()
        await gw.hub.drain(5.0)
        await gw.hub.aclose()
        async with asyncio.timeout(10.0):
            reply = await client.post(client.request("tools/list"))
    assert reply.status == 503, reply
    assert reply.error_code == -32038, reply
