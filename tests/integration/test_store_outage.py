"""Redis goes away under load and comes back (issue #3 "Store outages").

What is guaranteed while the store is down (README "Stores"):
- sessions this gateway holds live keep being served, every request answered;
- new sessions and resumes get 503 with -32034 (never a 500, never a 404);
- /readyz says degraded;
and once Redis is back, with no restart of the gateway, all of it works again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bridge import errors
from tests.conftest import GatewayFactory, example_stdio
from tests.rawclient import RawClient
from tests.redis_server import RedisServer

BOUND = 30.0  # seconds


class Load:
    """Clients calling tools/list in a loop; counts statuses, wakes waiters on each answer."""

    def __init__(self, clients: list[RawClient]) -> None:
        self.statuses: Counter[int] = Counter()
        self._answered = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._run(c)) for c in clients]

    async def _run(self, client: RawClient) -> None:
        while not self._stop.is_set():
            reply = await client.post(client.request("tools/list"))
            self.statuses[reply.status] += 1
            if reply.status == 200:
                assert reply.messages[-1]["result"]["tools"]
            self._answered.set()

    async def wait_served(self, count: int) -> None:
        """Until ``count`` more requests got 200 (the caller bounds the wait)."""
        target = self.statuses[200] + count
        while self.statuses[200] < target:
            self._answered.clear()
            await self._answered.wait()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_redis_outage_under_load(
    redis: RedisServer, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway([example_stdio()], store_url=redis.url, store_timeout=0.5)
    url = f"{gw.url}/http"
    live = [RawClient(http, url) for _ in range(3)]
    for client in live:
        await client.initialize()
    load = Load(live)
    try:
        async with asyncio.timeout(BOUND):
            await asyncio.to_thread(redis.kill)
            ready = await (await http.get(f"{gw.url}/readyz")).json()
            assert ready["status"] == "degraded"
            assert ready["store"]["status"] == "unavailable"
            newcomer = RawClient(http, url)
            refused = await newcomer.post(
                newcomer.request(
                    "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}
                )
            )
            assert (refused.status, refused.error_code) == (503, errors.STORE_UNAVAILABLE)
            await load.wait_served(20)  # live sessions keep being served
            await asyncio.to_thread(redis.start)
            while (await (await http.get(f"{gw.url}/readyz")).json())["status"] != "ok":
                pass  # each /readyz is one bounded ping
            await newcomer.initialize()
            assert (await newcomer.post(newcomer.request("ping"))).status == 200
            await load.wait_served(20)
    finally:
        await load.stop()
    assert set(load.statuses) == {200}, load.statuses  # no request of a live session failed
