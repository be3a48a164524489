"""Store errors of every kind, not just outages (issue #15 "Hardening II").

A corrupt SQLite page or a Redis ``NOPERM`` is no less a store failure than a
Redis that is down: the client gets 503 with -32034 (never a 500), the
upstream started for the request is closed (no child left belonging to no
session), and ``/readyz`` reports the store degraded, since its probe writes
and reads back a record instead of asking ``SELECT 1`` or ``PING``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from redis.asyncio import Redis

from bridge import errors
from bridge.stores import open_stores
from tests.conftest import GatewayFactory, example_stdio
from tests.rawclient import RawClient
from tests.redis_server import RedisServer

BOUND = 30.0  # seconds any one step may take
INITIALIZE = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "store-errors-test", "version": "0"},
}
PASSWORD = "bridge-pw"


def example_children() -> list[psutil.Process]:
    """This test process's children running the example server."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "bridge.examples.server" in " ".join(p.cmdline())
    ]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def corrupt_sqlite(path: Path) -> None:
    """A database file whose schema page is intact and every other page is garbage."""
    stores = await open_stores(
        f"sqlite:///{path}", prefix="t", max_events=10, max_age=60.0, timeout=2.0
    )
    await stores.aclose()  # the last connection checkpoints the WAL into the file
    await asyncio.to_thread(overwrite_pages, path)


def overwrite_pages(path: Path) -> None:
    """Every page but the first (the schema) of ``path`` overwritten with garbage."""
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    assert len(data) > page_size, "the schema made no table pages"
    data[page_size:] = bytes([0xA5]) * (len(data) - page_size)
    path.write_bytes(bytes(data))


async def readyz(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/readyz") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_a_corrupt_sqlite_page_is_503_and_leaks_no_child(
    tmp_path: Path, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "corrupt.db"
    await corrupt_sqlite(path)
    gw = await gateway([example_stdio()], store_url=f"sqlite:///{path}", share="none")
    client = RawClient(http, f"{gw.url}/http")
    async with asyncio.timeout(BOUND):
        reply = await client.post(client.request("initialize", INITIALIZE))
        assert (reply.status, reply.error_code) == (503, errors.STORE_UNAVAILABLE), reply
        assert "malformed" in reply.messages[0]["error"]["message"]
        assert example_children() == []  # the child started for it is gone
        assert gw.hub.pools["example"].health()["size"] == 0
        ready = await readyz(http, gw.url)
    assert ready["status"] == "degraded"
    assert ready["store"]["status"] == "unavailable"
    assert "malformed" in ready["store"]["error"]


async def test_a_redis_user_without_write_rights_is_503_and_leaks_no_child(
    redis: RedisServer, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    admin = Redis.from_url(redis.url)
    try:
        # Reads and PING allowed, every write command refused (NOPERM).
        await admin.acl_setuser(
            "reader",
            enabled=True,
            passwords=[f"+{PASSWORD}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-@write"],
        )
    finally:
        await admin.aclose()
    url = f"redis://reader:{PASSWORD}@127.0.0.1:{redis.port}/0"
    gw = await gateway([example_stdio()], store_url=url, share="none", store_timeout=2.0)
    client = RawClient(http, f"{gw.url}/http")
    async with asyncio.timeout(BOUND):
        reply = await client.post(client.request("initialize", INITIALIZE))
        assert (reply.status, reply.error_code) == (503, errors.STORE_UNAVAILABLE), reply
        assert "no permissions" in reply.messages[0]["error"]["message"]
        assert example_children() == []
        assert gw.hub.pools["example"].health()["size"] == 0
        ready = await readyz(http, gw.url)
    assert ready["status"] == "degraded"
    assert ready["store"]["status"] == "unavailable"


class WriteBlocker:
    """Makes a real store refuse writes while reads go on, and heals it."""

    def __init__(self, kind: str, tmp_path: Path, redis: RedisServer | None) -> None:
        self.kind = kind
        self._path = tmp_path / "sessions.db"
        self._redis = redis
        self._lock: sqlite3.Connection | None = None

    async def store_url(self) -> str:
        if self._redis is None:
            return f"sqlite:///{self._path}"
        await self._acl(["+@all"])
        return f"redis://bridge:{PASSWORD}@127.0.0.1:{self._redis.port}/0"

    async def block(self) -> None:
        if self._redis is not None:
            await self._acl(["+@all", "-@write"])  # applies to open connections at once
            return
        self._lock = sqlite3.connect(self._path, isolation_level=None)
        self._lock.execute("BEGIN IMMEDIATE")  # another writer holds on; WAL readers go on

    async def heal(self) -> None:
        if self._redis is not None:
            await self._acl(["+@all"])
        elif self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None

    async def _acl(self, commands: list[str]) -> None:
        assert self._redis is not None
        admin = Redis.from_url(self._redis.url)
        try:
            await admin.acl_setuser(
                "bridge",
                enabled=True,
                passwords=[f"+{PASSWORD}"],
                keys=["*"],
                channels=["*"],
                commands=commands,
                reset_permissions=True,
            )
        finally:
            await admin.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def blocker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WriteBlocker]:
    redis = request.getfixturevalue("redis") if request.param == "redis" else None
    blocker = WriteBlocker(request.param, tmp_path, redis)
    yield blocker
    await blocker.heal()


async def test_a_delete_the_store_cannot_record_is_503_and_the_session_stays_ended(
    blocker: WriteBlocker, gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Issue #15: DELETE answered 200 while the record stayed, and the next request resumed it."""
    url = await blocker.store_url()
    gw = await gateway([example_stdio()], store_url=url, store_timeout=0.5)
    client = RawClient(http, f"{gw.url}/http")
    async with asyncio.timeout(BOUND):
        await client.initialize()
        assert client.session_id
        assert (await client.post(client.request("tools/list"))).status == 200
        await blocker.block()

        async with http.delete(client.url, headers=client.headers()) as response:
            body = await response.json()
            assert (response.status, body["error"]["code"]) == (503, errors.STORE_UNAVAILABLE)
        assert await gw.hub.stores.sessions.get(client.session_id) is not None  # kept, truly
        again = await client.post(client.request("tools/list"))
        assert (again.status, again.error_code) == (404, errors.SESSION_NOT_FOUND)

        await blocker.heal()
        assert await client.delete() == 200  # the repeated DELETE is recorded now
        assert await gw.hub.stores.sessions.get(client.session_id) is None
        assert (await client.post(client.request("tools/list"))).status == 404
        assert await client.delete() == 404
