"""Another principal's live session answers 404 doing the same work as an unknown id.

Issue #15 "Timing": a stranger's request for a live session was refused from
memory, an unknown id only after a store lookup, so the 404 came in about
half the time and told the stranger the id was live. Timing tests flake on a
busy machine, so this one asserts the cause structurally, with a real
redis-server's own counters (``INFO commandstats``): both paths send Redis
exactly the same commands, for POST, GET and DELETE alike.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from redis.asyncio import Redis

from bridge import errors
from tests.conftest import GatewayFactory, example_stdio
from tests.rawclient import keyed
from tests.redis_server import RedisServer

BOUND = 30.0  # seconds
#: Commands the test itself sends to read and reset the counters.
OWN_COMMANDS = frozenset({"info", "config|resetstat"})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def commands_during(redis: Redis, action: Callable[[], Awaitable[int]]) -> dict[str, int]:
    """Redis commands (name -> calls) the gateway sent while ``action`` ran; asserts a 404."""
    await redis.config_resetstat()
    assert await action() == 404
    stats = await redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return {name: n for name, n in calls.items() if name not in OWN_COMMANDS}


async def test_a_foreign_live_session_costs_the_same_store_work_as_an_unknown_id(
    redis: RedisServer, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        [example_stdio()], store_url=redis.url, api_keys="alice:alice-key,mallory:mallory-key"
    )
    url = f"{gw.url}/http"
    alice = keyed(http, url, "alice-key")
    admin = Redis.from_url(redis.url)
    try:
        async with asyncio.timeout(BOUND):
            await alice.initialize()
            assert alice.session_id
            assert (await alice.post(alice.request("tools/list"))).status == 200  # live here

            def as_mallory(session_id: str, method: str) -> Callable[[], Awaitable[int]]:
                mallory = keyed(http, url, "mallory-key")
                mallory.session_id = session_id

                async def act() -> int:
                    if method == "DELETE":
                        return await mallory.delete()
                    if method == "GET":
                        headers = mallory.headers(Accept="text/event-stream")
                        async with http.get(url, headers=headers) as response:
                            return response.status
                    reply = await mallory.post(mallory.request("tools/list"))
                    assert reply.error_code == errors.SESSION_NOT_FOUND
                    return reply.status

                return act

            for method in ("POST", "GET", "DELETE"):
                unknown = secrets.token_urlsafe(32)
                foreign = await commands_during(admin, as_mallory(alice.session_id, method))
                stranger = await commands_during(admin, as_mallory(unknown, method))
                assert foreign == stranger == {"get": 1}, method

            # The session is untouched by all that: alice goes on.
            assert (await alice.post(alice.request("tools/list"))).status == 200
    finally:
        await admin.aclose()
