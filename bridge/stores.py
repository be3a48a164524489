"""Open the session and event stores a URL names; one connection serves both.

========================  ==========================================================
``memory://``             in this process only; gone on exit
``sqlite:///ABS/PATH``    an SQLite file (created, with its parent directory)
``sqlite:///./rel/path``  the same, relative to the working directory
``redis://HOST:PORT/DB``  Redis (``rediss://`` for TLS; ``user:pass@`` allowed)
``redis+cluster://H:P``   Redis Cluster, any one node (``rediss+cluster://`` for
                          TLS; ``user:pass@`` allowed; DB, if given, ``/0``)
========================  ==========================================================

Anything else is a :class:`ConfigError` naming the URL (password redacted).
Redis is not contacted here: a gateway may start while Redis is down and
report it through ``sessions.ping()``. An SQLite file is opened here, and a
file that cannot be is a :class:`ConfigError`; so is one another gateway
process uses (:mod:`bridge.sessions.sqlite_lock`: one gateway per file),
unless the opener only looks (``lock=False``: ``mcp-bridge sessions``).
"""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.exceptions import RedisClusterException

from bridge.errors import ConfigError
from bridge.events.memory import MemoryEventStore
from bridge.events.redis import RedisEventStore
from bridge.events.sqlite import SqliteEventStore
from bridge.events.store import EventStore
from bridge.sessions import redis as redis_sessions
from bridge.sessions import sqlite_lock
from bridge.sessions.memory import MemorySessionStore
from bridge.sessions.sqlite import SqliteSessionStore
from bridge.sessions.sqlite_db import SqliteDatabase
from bridge.sessions.store import SessionStore, StoreUnavailable

#: Schemes of a Redis Cluster URL, and the plain scheme redis-py is given for each.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_EXPECTED = (
    "expected memory://, sqlite:///ABS/PATH, sqlite:///./relative/path, "
    "redis://HOST:PORT/DB, rediss://HOST:PORT/DB, redis+cluster://HOST:PORT "
    "or rediss+cluster://HOST:PORT"
)


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Stores:
    """Both stores of one URL and the connection they share.

    ``redis`` is that connection for a Redis or Redis Cluster URL (``None``
    otherwise), for other parts that keep state in the same Redis to reuse:
    it is closed by :meth:`aclose`, so its users must be done by then.
    """

    sessions: SessionStore
    events: EventStore
    _close: Callable[[], Awaitable[None]] = field(default=_nothing, repr=False)
    redis: redis_sessions.Client | None = None

    async def aclose(self) -> None:
        """Close the shared connection; neither store may be used afterwards."""
        await self._close()


async def open_stores(
    url: str,
    *,
    prefix: str,
    max_events: int,
    max_age: float,
    timeout: float,  # noqa: ASYNC109 - bounds each later store call, not this one
    clock: Callable[[], float] = time.time,
    lock: bool = True,
) -> Stores:
    """The stores ``url`` names.

    Args:
        url: see the module docstring.
        prefix: first part of every Redis key (``[A-Za-z0-9_.:-]+``); unused otherwise.
        max_events: most events kept per stream.
        max_age: seconds an event is kept at most.
        timeout: seconds one store call may wait on Redis or SQLite.
        clock: Unix time in seconds (a seam for tests).
        lock: hold an SQLite file's lock until :meth:`Stores.aclose` (a gateway
            serving it); False for a tool that only looks while a gateway runs.

    Raises:
        ConfigError: the URL or prefix is unusable, the SQLite file cannot be
            opened, or (``lock``) another process holds its lock.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "memory" and url.lower() == "memory://":
        sessions = MemorySessionStore(clock=clock)
        events = MemoryEventStore(
            max_events=max_events, max_age=max_age, sessions=sessions, clock=clock
        )
        return Stores(sessions, events)
    if scheme == "sqlite":
        return await _open_sqlite(
            url, max_events=max_events, max_age=max_age, timeout=timeout, clock=clock, lock=lock
        )
    if scheme in ("redis", "rediss", *CLUSTER_SCHEMES):
        return _open_redis(
            url, prefix=prefix, max_events=max_events, max_age=max_age, timeout=timeout, clock=clock
        )
    raise ConfigError(f"store URL {redact(url)!r}: {_EXPECTED}")


def sqlite_path(url: str) -> Path:
    """The file ``sqlite:///ABS/PATH`` or ``sqlite:///./relative`` names."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or "?" in rest or "#" in rest:
        raise ConfigError(
            f"store URL {url!r}: expected sqlite:///ABS/PATH or sqlite:///./relative/path "
            "(three slashes, no host, no query)"
        )
    path = Path(rest[1:]) if rest.startswith("/./") else Path(rest)
    if rest.endswith("/") or path.name in ("", ".", ".."):
        raise ConfigError(f"store URL {url!r}: names a directory, not a database file")
    return path


async def _open_sqlite(
    url: str,
    *,
    max_events: int,
    max_age: float,
    timeout: float,  # noqa: ASYNC109 - bounds each later store call, not this one
    clock: Callable[[], float],
    lock: bool,
) -> Stores:
    path = sqlite_path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"store URL {url!r}: cannot open {path}: {exc}") from exc
    try:
        held = sqlite_lock.acquire(path) if lock else None
    except sqlite_lock.LockHeld as exc:
        raise ConfigError(
            f"store URL {url!r}: another gateway uses {path} ({exc}); an SQLite store "
            "serves one gateway process: stop that one first, or share sessions "
            "between gateways through Redis (redis://)"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"store URL {url!r}: cannot lock {path}: {exc}") from exc
    try:
        stores = await _open_sqlite_stores(
            url, path, max_events=max_events, max_age=max_age, timeout=timeout, clock=clock
        )
    except BaseException:
        if held is not None:
            held.release()
        raise
    if held is None:
        return stores

    async def close() -> None:
        try:
            await stores.aclose()
        finally:
            held.release()

    return Stores(stores.sessions, stores.events, close)


async def _open_sqlite_stores(
    url: str,
    path: Path,
    *,
    max_events: int,
    max_age: float,
    timeout: float,  # noqa: ASYNC109 - bounds each later store call, not this one
    clock: Callable[[], float],
) -> Stores:
    try:
        db = await SqliteDatabase.open(path, timeout=timeout)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"store URL {url!r}: cannot open {path}: {exc}") from exc
    try:
        sessions = await SqliteSessionStore.open(db, clock=clock)
        events = await SqliteEventStore.open(
            db, max_events=max_events, max_age=max_age, sessions=sessions, clock=clock
        )
    except BaseException as exc:
        await db.aclose()
        if isinstance(exc, sqlite3.DatabaseError | StoreUnavailable):  # "file is not a database"
            raise ConfigError(f"store URL {url!r}: cannot use {path}: {exc}") from exc
        raise
    return Stores(sessions, events, db.aclose)


def redis_client(url: str, *, timeout: float) -> redis_sessions.Client:
    """A client for a Redis store URL: ``redis://`` or ``rediss://`` gives a Redis client,
    ``redis+cluster://`` or ``rediss+cluster://`` a Redis Cluster client.

    Calls are bounded by ``timeout`` seconds (see :func:`redis_sessions.connect` and
    :func:`redis_sessions.connect_cluster`); nothing connects before the first call.

    Raises:
        ValueError: redis-py rejects the URL.
        RedisClusterException: likewise, for cluster-only rules.
    """
    scheme, _, rest = url.partition("://")
    cluster = CLUSTER_SCHEMES.get(scheme.lower())
    if cluster is None:
        return redis_sessions.connect(url, timeout=timeout)
    return redis_sessions.connect_cluster(f"{cluster}://{rest}", timeout=timeout)


def _open_redis(
    url: str,
    *,
    prefix: str,
    max_events: int,
    max_age: float,
    timeout: float,
    clock: Callable[[], float],
) -> Stores:
    _check_redis_url(url, cluster=url.partition("://")[0].lower() in CLUSTER_SCHEMES)
    try:
        redis_sessions.check_prefix(prefix)
        client = redis_client(url, timeout=timeout)
    except (ValueError, RedisClusterException) as exc:
        raise ConfigError(f"store URL {redact(url)!r}: {exc}") from exc
    sessions = redis_sessions.RedisSessionStore(client, prefix=prefix, clock=clock)
    events = RedisEventStore(
        client, prefix=prefix, max_events=max_events, max_age=max_age, clock=clock
    )
    return Stores(sessions, events, client.aclose, redis=client)


def _check_redis_url(url: str, *, cluster: bool) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad port, unbalanced [ in an IPv6 host
        raise ConfigError(f"store URL {redact(url)!r}: {exc}") from exc
    db = parts.path.removeprefix("/")
    if cluster and (not parts.hostname or port == 0 or db not in ("", "0")):
        raise ConfigError(
            f"store URL {redact(url)!r}: expected redis+cluster://HOST:PORT "
            "(any one node; a cluster has only DB 0; rediss+cluster:// for TLS)"
        )
    if not parts.hostname or port == 0 or (db and not re.fullmatch(r"[0-9]+", db)):
        raise ConfigError(
            f"store URL {redact(url)!r}: expected redis://HOST:PORT/DB "
            "(DB a number; rediss:// for TLS; redis+cluster://HOST:PORT for a cluster)"
        )


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
