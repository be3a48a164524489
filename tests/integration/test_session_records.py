"""Session records are bounded (issue #15 "Session records are not capped").

Through a real gateway, on each store (memory, an SQLite file, a real
redis-server):

- a record whose client did nothing but ``initialize`` lives
  ``BRIDGE_SESSION_UNUSED_TTL``; its first real request, or a GET stream,
  gives it the full ``BRIDGE_SESSION_TTL``;
- one principal keeps at most ``BRIDGE_MAX_RECORDS_PER_PRINCIPAL`` records:
  past it, its longest-unused ones go (their clients get 404), and another
  principal's are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from bridge import errors
from bridge.sessions.memory import MemorySessionStore
from bridge.sessions.redis import session_key
from tests.conftest import GatewayFactory, RunningGateway, example_stdio
from tests.rawclient import RawClient, keyed
from tests.redis_server import RedisServer

BOUND = 60.0  # seconds for a whole test's requests
UNUSED_TTL = 120.0
TTL = 86400.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@dataclass
class Store:
    kind: str
    url: str
    path: Path | None = None
    redis_url: str = ""

    async def expires_in(self, gw: RunningGateway, session_id: str) -> float:
        """Seconds until the stored record of ``session_id`` expires, read from the store."""
        if self.kind == "redis":
            client = Redis.from_url(self.redis_url)
            try:
                return int(await client.pttl(session_key("mcpb", session_id))) / 1000
            finally:
                await client.aclose()
        if self.kind == "sqlite":
            assert self.path is not None
            return await asyncio.to_thread(self._sqlite_expiry, self.path, session_id)
        sessions = gw.hub.stores.sessions
        assert isinstance(sessions, MemorySessionStore)
        return sessions._records[session_id][1] - time.time()

    @staticmethod
    def _sqlite_expiry(path: Path, session_id: str) -> float:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            row = conn.execute(
                "SELECT expires_at FROM bridge_sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return float(row[0]) - time.time()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield Store("memory", "memory://")
    elif request.param == "sqlite":
        path = tmp_path / "sessions.db"
        yield Store("sqlite", f"sqlite:///{path}", path=path)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        admin = Redis.from_url(server.url)
        await admin.flushdb()
        await admin.aclose()
        yield Store("redis", server.url, redis_url=server.url)


async def test_a_record_that_only_initialized_gets_the_short_ttl_until_first_use(
    store: Store, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        [example_stdio()], store_url=store.url, session_ttl=TTL, session_unused_ttl=UNUSED_TTL
    )
    url = f"{gw.url}/http"
    async with asyncio.timeout(BOUND):
        caller, listener, idle = RawClient(http, url), RawClient(http, url), RawClient(http, url)
        for client in (caller, listener, idle):
            await client.initialize()  # initialize and notifications/initialized
            assert client.session_id
            assert 0 < await store.expires_in(gw, client.session_id) <= UNUSED_TTL

        assert (await caller.post(caller.request("tools/list"))).status == 200
        assert caller.session_id
        assert await store.expires_in(gw, caller.session_id) > UNUSED_TTL * 10

        headers = listener.headers(Accept="text/event-stream")
        async with http.get(url, headers=headers) as stream:
            assert stream.status == 200
        assert listener.session_id
        assert await store.expires_in(gw, listener.session_id) > UNUSED_TTL * 10

        assert idle.session_id
        assert 0 < await store.expires_in(gw, idle.session_id) <= UNUSED_TTL


async def test_a_principal_keeps_at_most_its_cap_of_records_the_longest_unused_go(
    store: Store, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(
        [example_stdio()],
        store_url=store.url,
        api_keys=SecretStr("alice:alice-key,bob:bob-key"),
        max_records_per_principal=3,
    )
    url = f"{gw.url}/http"
    async with asyncio.timeout(BOUND):
        bob = keyed(http, url, "bob-key")
        await bob.initialize()
        alices: list[RawClient] = []
        for _ in range(5):
            alice = keyed(http, url, "alice-key")
            await alice.initialize()
            alices.append(alice)
        held: dict[str | None, list[str]] = {}
        for stored in await gw.hub.stores.sessions.list(100):
            held.setdefault(stored.principal, []).append(stored.session_id)
        assert sorted(held["key:alice"]) == sorted(str(a.session_id) for a in alices[2:])
        assert held["key:bob"] == [bob.session_id]
        for gone in alices[:2]:
            reply = await gone.post(gone.request("tools/list"))
            assert (reply.status, reply.error_code) == (404, errors.SESSION_NOT_FOUND)
        for kept in (*alices[2:], bob):
            assert (await kept.post(kept.request("tools/list"))).status == 200


async def test_the_cap_spares_a_session_serving_a_stream_and_goes_by_last_use(
    store: Store, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue #15 soak: by expiry, the cap deleted new sessions (short unused TTL)
    and sessions with a GET stream open: 404s by the thousand."""
    gw = await gateway(
        [example_stdio()],
        store_url=store.url,
        api_keys=SecretStr("alice:alice-key"),
        max_records_per_principal=3,
    )
    url = f"{gw.url}/http"
    async with asyncio.timeout(BOUND):
        listener = keyed(http, url, "alice-key")
        await listener.initialize()
        headers = listener.headers(Accept="text/event-stream")
        async with http.get(url, headers=headers) as stream:
            assert stream.status == 200
            await stream.content.readline()  # the priming event: the stream is attached
            used, fresh = keyed(http, url, "alice-key"), keyed(http, url, "alice-key")
            await used.initialize()
            assert (await used.post(used.request("tools/list"))).status == 200
            await fresh.initialize()  # newer than used's last request, and short-lived

            await keyed(http, url, "alice-key").initialize()  # over the cap

            # The listener is unused the longest but serving: passed over. Used goes,
            # though its record would have outlived fresh's by far.
            reply = await used.post(used.request("tools/list"))
            assert (reply.status, reply.error_code) == (404, errors.SESSION_NOT_FOUND)
            for kept in (listener, fresh):
                assert (await kept.post(kept.request("tools/list"))).status == 200
            assert not stream.content.at_eof()
