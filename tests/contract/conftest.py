"""Backends for the store contract suites, each opened through ``open_stores``.

``stores`` runs a test against memory, SQLite, a real ``redis-server`` and a
real three-node Redis Cluster (``redis+cluster://``). ``clocked`` runs it
against the backends whose clock a test can move (memory, SQLite), so expiry
is tested without sleeping; ``redis_stores`` is Redis and Redis Cluster,
where tests check the TTL of every key instead (Redis keeps time itself).
One ``redis-server`` and one cluster serve the session; each backend gets a
key prefix of its own, and tests look only at keys under it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import pytest
from redis.asyncio import Redis, RedisCluster

from bridge.events.memory import MemoryEventStore
from bridge.events.store import EventStore
from bridge.sessions.memory import MemorySessionStore
from bridge.sessions.store import SessionStore
from bridge.stores import Stores, open_stores
from tests.redis_server import RedisServer

TIMEOUT: Final = 2.0  # seconds per store call in the suites
MAX_EVENTS: Final = 1000
MAX_AGE: Final = 3600.0
EPOCH: Final = 1_800_000_000.0  # where fake clocks start (Unix seconds)
TABLES: Final = ("bridge_sessions", "bridge_streams", "bridge_events")


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """One opened pair of stores and what a test needs to look behind them."""

    kind: str
    stores: Stores
    prefix: str
    clock: FakeClock | None = None  # memory and SQLite: the stores' clock
    redis: Redis | RedisCluster | None = None  # redis, redis-cluster: a raw client of its own
    sqlite_path: Path | None = None

    @property
    def sessions(self) -> SessionStore:
        return self.stores.sessions

    @property
    def events(self) -> EventStore:
        return self.stores.events

    def advance(self, seconds: float) -> None:
        """Move the stores' clock forward (memory and SQLite only)."""
        assert self.clock is not None, f"{self.kind} keeps its own time"
        self.clock.advance(seconds)

    def rows(self) -> int:
        """Records, streams and events held, expired or not (memory and SQLite)."""
        if self.sqlite_path is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_path)) as conn:
                counts = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone() for t in TABLES]
            return sum(count[0] for count in counts)
        sessions, events = self.stores.sessions, self.stores.events
        assert isinstance(sessions, MemorySessionStore)
        assert isinstance(events, MemoryEventStore)
        return len(sessions) + len(events)

    async def keys(self) -> list[str]:
        """Every Redis key under this backend's prefix."""
        assert self.redis is not None
        return sorted([key async for key in self.redis.scan_iter(match=f"{self.prefix}:*")])

    async def aclose(self) -> None:
        await self.stores.aclose()
        if self.redis is not None:
            await self.redis.aclose()


class OpenBackend(Protocol):
    def __call__(
        self, *, max_events: int = MAX_EVENTS, max_age: float = MAX_AGE
    ) -> Awaitable[Backend]: ...


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@contextlib.asynccontextmanager
async def _opener(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[OpenBackend]:
    """Yield a function opening ``kind`` backends; close all it opened on exit."""
    tmp_path: Path = request.getfixturevalue("tmp_path")
    redis_url = ""
    if kind == "redis":
        redis_url = request.getfixturevalue("redis_server").url
    elif kind == "redis-cluster":
        redis_url = request.getfixturevalue("redis_cluster").url
    opened: list[Backend] = []

    async def open_backend(*, max_events: int = MAX_EVENTS, max_age: float = MAX_AGE) -> Backend:
        prefix = f"t{uuid.uuid4().hex[:12]}"
        clock = FakeClock() if not redis_url else None
        sqlite_path = tmp_path / prefix / "bridge.db" if kind == "sqlite" else None
        url = {"memory": "memory://", "sqlite": f"sqlite:///{sqlite_path}"}.get(kind, redis_url)
        stores = await open_stores(
            url,
            prefix=prefix,
            max_events=max_events,
            max_age=max_age,
            timeout=TIMEOUT,
            clock=clock or time.time,
        )
        redis: Redis | RedisCluster | None = None
        if kind == "redis":
            redis = Redis.from_url(redis_url, decode_responses=True)
        elif kind == "redis-cluster":
            node = redis_url.replace("redis+cluster://", "redis://")
            redis = RedisCluster.from_url(node, decode_responses=True)
        backend = Backend(kind, stores, prefix, clock, redis, sqlite_path)
        opened.append(backend)
        return backend

    try:
        yield open_backend
    finally:
        for backend in opened:
            await backend.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
async def open_backend(request: pytest.FixtureRequest) -> AsyncIterator[OpenBackend]:
    """Opens backends of each kind with chosen limits; closes them after the test."""
    async with _opener(request.param, request) as opener:
        yield opener


@pytest.fixture
async def stores(open_backend: OpenBackend) -> Backend:
    """Each backend, with the default limits."""
    return await open_backend()


@pytest.fixture(params=["memory", "sqlite"])
async def open_clocked(request: pytest.FixtureRequest) -> AsyncIterator[OpenBackend]:
    async with _opener(request.param, request) as opener:
        yield opener


@pytest.fixture
async def clocked(open_clocked: OpenBackend) -> Backend:
    """The backends whose clock a test can move (``clocked.advance``)."""
    return await open_clocked()


@pytest.fixture(params=["redis", "redis-cluster"])
async def open_redis(request: pytest.FixtureRequest) -> AsyncIterator[OpenBackend]:
    async with _opener(request.param, request) as opener:
        yield opener


@pytest.fixture
async def redis_stores(open_redis: OpenBackend) -> Backend:
    """Redis and Redis Cluster, with a raw client (``.redis``) for looking at keys and TTLs."""
    return await open_redis()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill, pause and restart."""
    with RedisServer(tmp_path / "own-redis") as server:
        yield server
