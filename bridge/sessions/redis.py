"""A :class:`SessionStore` in Redis, and the Redis plumbing both Redis stores share.

Key layout (every key carries a TTL; nothing is ever written without one)::

    {prefix}:{<session_id>}:session      string  SessionRecord.to_json()
    {prefix}:{<session_id>}:ev:<stream>  stream  one entry per SSE event, field m =
                                                 the message JSON ("" for priming)
    {prefix}:{<session_id>}:streams      zset    the session's stream names,
                                                 scored by last append (Unix ms)
    {prefix}:owner:<principal digest>    zset    the ids of a principal's records
                                                 (create's cap), scored by the TTL (ms)
                                                 each was last written with

The ``{<session_id>}`` hash tag keeps all keys of a session in one Redis
Cluster slot, so the multi-key writes below stay legal there. Session ids
must therefore be non-empty and contain neither ``{`` nor ``}``: writes
refuse such an id with ``ValueError``; reads treat it as unknown.

Expiry is Redis's own: the record's TTL is set by ``create``/``save``/
``touch`` and by every event append of the session; each stream key and the
names key get theirs on every append to them. See :mod:`bridge.events.redis`.

Every call is bounded: connecting and each socket read or write by
``timeout``, retries by :data:`RETRIES` with exponential backoff (at most
:data:`RETRY_CAP` seconds between attempts), so a call gives up after about
``(RETRIES + 1) * timeout + RETRIES * RETRY_CAP`` in the worst case. A Redis
that is down, loading, read-only or out of memory, and any error reply (an
ACL's ``NOPERM`` included), surfaces as :class:`StoreUnavailable`; the next
call reconnects by itself.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import math
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterator
from typing import Final

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from bridge.sessions.store import SessionRecord, StoreUnavailable

#: Retries after a connection error or timeout, before giving up.
RETRIES: Final = 2
#: Seconds before the first retry; doubled for each further one.
RETRY_BASE: Final = 0.05
#: Most seconds between two attempts.
RETRY_CAP: Final = 0.5
#: Seconds the readiness probe's key lives (:meth:`RedisSessionStore.ping`).
PROBE_TTL: Final = 60.0
#: Keys asked for per SCAN step of :meth:`RedisSessionStore.list`.
SCAN_COUNT: Final = 500

#: Errors that mean "Redis cannot serve us": down, loading, a replica, out of
#: memory, and also every error reply (``NOPERM`` from an ACL, ``WRONGTYPE``
#: from a foreign key under our prefix): whatever the kind, the call failed
#: and the client gets 503, never a 500 (issue #15).
UNAVAILABLE: Final = (redis_errors.RedisError, OSError)

_PREFIX: Final = re.compile(r"[A-Za-z0-9_.:-]+")


def connect(url: str, *, timeout: float) -> Redis:
    """A client for ``url`` with bounded calls and retries; connects on first use."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), RETRIES),
    )


@contextlib.contextmanager
def unavailable(operation: str) -> Iterator[None]:
    """Map Redis's "cannot serve" errors to :class:`StoreUnavailable`."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"redis {operation} failed: {exc}") from exc


def check_prefix(prefix: str) -> str:
    """``prefix`` if usable in keys and SCAN patterns, else ValueError."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"redis key prefix must match {_PREFIX.pattern}, got {prefix!r}")
    return prefix


def valid_session_id(session_id: str) -> bool:
    return bool(session_id) and "{" not in session_id and "}" not in session_id


def require_session_id(session_id: str) -> None:
    if not valid_session_id(session_id):
        raise ValueError(f"session id unusable as a Redis hash tag: {session_id!r}")


def text(value: object) -> str:
    """A reply item as ``str``: the client decodes replies, but redis-py types them loosely."""
    return value.decode() if isinstance(value, bytes) else str(value)


def ms(seconds: float) -> int:
    """Whole milliseconds for PX/PEXPIRE, at least 1 (0 is an error to Redis)."""
    return max(1, math.ceil(seconds * 1000))


def session_key(prefix: str, session_id: str) -> str:
    return f"{prefix}:{{{session_id}}}:session"


def streams_key(prefix: str, session_id: str) -> str:
    return f"{prefix}:{{{session_id}}}:streams"


def owner_key(prefix: str, principal: str | None) -> str:
    """The index of one principal's records (a zset of session ids, for create's cap)."""
    name = "-" if principal is None else hashlib.sha256(principal.encode()).hexdigest()[:32]
    return f"{prefix}:owner:{name}"


def stream_key(prefix: str, session_id: str, stream: str) -> str:
    return f"{prefix}:{{{session_id}}}:ev:{stream}"


class RedisSessionStore:
    """Records as ``{prefix}:{<session_id>}:session`` strings; see the module docstring.

    The client is shared with :class:`bridge.events.redis.RedisEventStore`
    and belongs to whoever made it (:func:`bridge.stores.open_stores`).
    """

    def __init__(
        self, client: Redis, *, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._clock = clock
        self._prefix = check_prefix(prefix)
        # SCAN MATCH is a glob: a stream named "x:session" matches it too.
        self._record_key = re.compile(re.escape(prefix) + r":\{[^{}]+\}:session")
        self._probe_key = f"{prefix}:probe:{secrets.token_hex(8)}"  # this process's own

    async def create(
        self,
        record: SessionRecord,
        ttl: float,
        *,
        max_per_principal: int | None = None,
        keep: Collection[str] = (),
    ) -> list[str]:
        await self.save(record, ttl)
        if max_per_principal is None:
            return []
        owner = owner_key(self._prefix, record.principal)
        with unavailable("create"):
            async with self._client.pipeline(transaction=False) as pipe:
                _ = pipe.zadd(owner, {record.session_id: ms(ttl)})
                _ = pipe.pttl(owner)
                _ = pipe.zcard(owner)
                _, owner_ttl, count = await pipe.execute()
            await self._outlive(owner, int(owner_ttl), ttl)
            if int(count) <= max_per_principal:
                return []
            return await self._cap(owner, record.session_id, max_per_principal, keep)

    async def _cap(
        self, owner: str, new: str, cap: int, keep: Collection[str]
    ) -> builtins.list[str]:
        """Trim the principal index to its live records, then delete the longest unused.

        The index says which records a principal made, each scored with the
        TTL (ms) its record was last written with; the record's remaining
        ``PTTL`` then tells how long ago it was last written or touched
        (score - PTTL). The expiries are read, one ``PTTL`` per member, only
        when the index is over ``cap``.
        """
        scored = await self._client.zrange(owner, 0, -1, withscores=True)
        members = [(text(pair[0]), int(pair[1])) for pair in scored]
        async with self._client.pipeline(transaction=False) as pipe:
            for member, _ in members:
                _ = pipe.pttl(session_key(self._prefix, member))
            ttls = await pipe.execute()
        live = [
            (score - int(t), m) for t, (m, score) in zip(ttls, members, strict=True) if int(t) >= 0
        ]
        gone = {m for m, _ in members} - {m for _, m in live}
        others = [(-unused, m) for unused, m in live if m != new]
        excess = max(0, len(others) + 1 - cap)
        others.sort()  # unused the longest first; within a millisecond, by id
        evicted = [m for _, m in others if m not in keep][:excess]
        if evicted:
            await self._client.delete(*(session_key(self._prefix, m) for m in evicted))
        if gone or evicted:
            await self._client.zrem(owner, *gone, *evicted)
        return evicted

    async def save(self, record: SessionRecord, ttl: float) -> None:
        require_session_id(record.session_id)
        key = session_key(self._prefix, record.session_id)
        owner = owner_key(self._prefix, record.principal)
        with unavailable("save"):
            async with self._client.pipeline(transaction=False) as pipe:
                _ = pipe.set(key, record.to_json(), px=ms(ttl))
                _ = pipe.zadd(owner, {record.session_id: ms(ttl)}, xx=True)  # if indexed
                _ = pipe.pttl(owner)
                _, _, owner_ttl = await pipe.execute()
            await self._outlive(owner, int(owner_ttl), ttl)

    async def _outlive(self, owner: str, owner_ttl: int, ttl: float) -> None:
        """Let the principal index live as long as the record just written (if it exists)."""
        if owner_ttl != -2 and owner_ttl < ms(ttl):
            await self._client.pexpire(owner, ms(ttl))

    async def get(self, session_id: str) -> SessionRecord | None:
        if not valid_session_id(session_id):
            return None
        with unavailable("get"):
            text = await self._client.get(session_key(self._prefix, session_id))
        return None if text is None else SessionRecord.readable(text)

    async def touch(self, session_id: str, ttl: float) -> bool:
        if not valid_session_id(session_id):
            return False
        with unavailable("touch"):
            return bool(await self._client.pexpire(session_key(self._prefix, session_id), ms(ttl)))

    async def delete(self, session_id: str) -> None:
        if valid_session_id(session_id):
            with unavailable("delete"):
                await self._client.delete(session_key(self._prefix, session_id))

    async def list(self, limit: int) -> list[SessionRecord]:
        keys = await self._scan(limit)
        if not keys:
            return []
        with unavailable("list"):
            texts = await self._client.mget(keys)
        found = (SessionRecord.readable(text) for text in texts if text is not None)
        return [record for record in found if record is not None]

    async def put_value(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> str:
        name = f"{self._prefix}:value:{key}"
        with unavailable("put_value"):
            if not only_new:
                await self._client.set(name, value, px=ms(ttl))
                return value
            stored = await self._client.set(name, value, px=ms(ttl), nx=True, get=True)
        return value if stored is None else text(stored)

    async def get_value(self, key: str) -> str | None:
        with unavailable("get_value"):
            stored = await self._client.get(f"{self._prefix}:value:{key}")
        return None if stored is None else text(stored)

    async def ping(self) -> None:
        nonce = secrets.token_hex(8)
        with unavailable("probe"):
            await self._client.set(self._probe_key, nonce, px=ms(PROBE_TTL))
            stored = await self._client.get(self._probe_key)
        if stored is None or text(stored) != nonce:
            raise StoreUnavailable("redis probe: the value written did not read back")

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by its owner."""

    async def _scan(self, limit: int) -> builtins.list[str]:
        keys: dict[str, None] = {}  # SCAN may return a key twice
        cursor = 0
        pattern = f"{self._prefix}:*:session"
        while len(keys) < limit:
            with unavailable("list"):
                cursor, batch = await self._client.scan(cursor, match=pattern, count=SCAN_COUNT)
            found = (text(key) for key in batch)
            keys.update(dict.fromkeys(key for key in found if self._record_key.fullmatch(key)))
            if cursor == 0:
                break
        return list(keys)[:limit]
