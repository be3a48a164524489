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

Redis Cluster (:func:`connect_cluster`): every command, script and
pipeline here touches the keys of one slot at a time, or runs as a
non-transactional pipeline whose commands redis-py sends to each key's own
node (so nothing is atomic across slots, and nothing here needs to be). The
owner index ``{prefix}:owner:<digest>`` is in another slot than the records
it lists; :meth:`RedisSessionStore.create` and ``save`` write the two
separately (see there for what can interleave). ``list`` scans every
primary. A cluster that cannot be reached, or is down, or answers
``MOVED``/``ASK``/``TRYAGAIN`` more often than redis-py follows, surfaces as
:class:`StoreUnavailable` like any other outage.
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
from typing import Any, Final, TypeAlias

import redis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.typing import EncodableT

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
#: and the client gets 503, never a 500 (issue #15). Cluster errors replied by
#: a node (``CLUSTERDOWN``, ``MOVED``, ``ASK``, ``TRYAGAIN``, ``CROSSSLOT``)
#: are RedisErrors; ``RedisClusterException`` is not (it derives from
#: Exception): redis-py raises it when no node can be reached to discover the
#: cluster, or a slot is not covered, so it is an outage too.
UNAVAILABLE: Final = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)

#: Either client: a single Redis (``redis://``) or a cluster (``redis+cluster://``).
Client: TypeAlias = Redis | RedisCluster

#: redis-py's major version: where a cluster client's ``retry`` applies changed in 6.
_REDIS_MAJOR: Final = int(redis.__version__.split(".")[0])

_PREFIX: Final = re.compile(r"[A-Za-z0-9_.:-]+")

#: Most connections one client opens to Redis (to each node of a cluster).
POOL_SIZE: Final = 1000


def connect(url: str, *, timeout: float) -> Redis:
    """A client for ``url`` with bounded calls and retries; connects on first use.

    At most :data:`POOL_SIZE` connections; a call that finds them all busy
    waits up to ``timeout`` seconds for one, then fails (redis-py's default
    pool, 100 connections in 8.x, fails at once: 503s for a burst of clients).
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), RETRIES),
    )
    return Redis.from_pool(pool)


class Cluster(RedisCluster):
    """redis-py's asyncio RedisCluster that learns the cluster before any command.

    Seen with redis-py 8.1 on a real three-node cluster: 30 concurrent GETs on
    a new client (as after an outage, when redis-py forgets the cluster) went
    to the startup node before the slot map was known and were answered
    ``MOVED``; redis-py resets the client on every few ``MOVED``
    (``reinitialize_steps``), closing connections other calls were using,
    and those failed with ``AttributeError: 'NoneType' object has no attribute
    'writelines'`` (not a RedisError: it would have been a 500). Discovering
    the cluster first, once, under redis-py's own lock, avoids that; once it
    is known, ``initialize`` only reads a flag.
    """

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        _ = await self.initialize()
        return await super().execute_command(*args, **kwargs)


def connect_cluster(url: str, *, timeout: float) -> RedisCluster:
    """A Redis Cluster client for ``url`` (``redis://`` or ``rediss://``, any one node).

    redis-py asks that node for the others and the slot map on first use.
    Socket connects, reads and writes are bounded by ``timeout`` as in
    :func:`connect`; a failed call is tried :data:`RETRIES` more times. Where
    redis-py applies the retry differs by version: from 6 on, ``retry`` is the
    cluster client's own (it rediscovers the cluster between attempts, with
    the same backoff as :func:`connect`; node connections never retry), while
    in 5.x ``retry`` is each node connection's and the cluster retries on top
    (``cluster_error_retry_attempts``), so there the connection retry is off and
    the cluster's own count is :data:`RETRIES` (5.x pipelines take that as
    their number of attempts, with a fixed 0.25 s pause between). Each attempt
    may include a rediscovery, which asks the known nodes in turn (each bounded
    by ``timeout``), so a call on a cluster with dead nodes may take a few
    timeouts longer than on one Redis.

    Raises:
        ValueError: ``url`` is unusable (redis-py's own check, e.g. a DB other than 0).
        RedisClusterException: likewise, raised by redis-py for cluster-only rules.
    """
    retry: dict[str, Any]
    if _REDIS_MAJOR >= 6:
        retry = {"retry": Retry(ExponentialBackoff(cap=RETRY_CAP, base=RETRY_BASE), RETRIES)}
    else:  # the CI floor, redis-py 5.0.1
        retry = {"retry": Retry(NoBackoff(), 0), "cluster_error_retry_attempts": RETRIES}
    return Cluster.from_url(
        url,
        max_connections=POOL_SIZE,  # per node; past it a call fails (redis-py has no wait)
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **retry,
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

    The client (one Redis or a cluster) is shared with
    :class:`bridge.events.redis.RedisEventStore` and belongs to whoever made
    it (:func:`bridge.stores.open_stores`).
    """

    def __init__(
        self, client: Client, *, prefix: str, clock: Callable[[], float] = time.time
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
        # The record and its principal's index are in different slots (on a
        # cluster, often on different nodes), so they are written by separate
        # commands, never one transaction or script. What can interleave is
        # harmless: another replica's create for the same principal may count
        # this record before or after its own (each then trims to the cap, and
        # only records unused the longest go); a record deleted or expired in
        # between is dropped from the index by _cap, whose PTTL finds it gone.
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
        if evicted:  # one DEL per record: on a cluster each is in a slot of its own
            async with self._client.pipeline(transaction=False) as pipe:
                for member in evicted:
                    _ = pipe.delete(session_key(self._prefix, member))
                await pipe.execute()
        if gone or evicted:
            await self._client.zrem(owner, *gone, *evicted)
        return evicted

    async def save(self, record: SessionRecord, ttl: float) -> None:
        require_session_id(record.session_id)
        key = session_key(self._prefix, record.session_id)
        owner = owner_key(self._prefix, record.principal)
        with unavailable("save"):
            # Not a transaction: the index is in another slot (on a cluster,
            # often on another node), so the two writes may land in either
            # order, or only one of them. Each outcome is harmless: an index
            # score only ranks records for create's cap (a stale one makes a
            # record look used more or less recently until its next write),
            # and _cap drops members whose record is gone.
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
        with unavailable("list"):  # GETs, not MGET: on a cluster the keys span slots
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    _ = pipe.get(key)
                texts = await pipe.execute()
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
            if isinstance(self._client, RedisCluster):  # the probe key reached one node
                await self._client.ping(target_nodes=RedisCluster.PRIMARIES)
        if stored is None or text(stored) != nonce:
            raise StoreUnavailable("redis probe: the value written did not read back")

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by its owner."""

    async def _scan(self, limit: int) -> builtins.list[str]:
        """Up to ``limit`` record keys: SCAN on one Redis, on every primary of a cluster."""
        keys: dict[str, None] = {}  # SCAN may return a key twice
        client = self._client
        if isinstance(client, RedisCluster):
            with unavailable("list"):
                _ = await client.initialize()  # no-op once the slot map is known
            for node in client.get_primaries():
                await self._scan_node(keys, limit, node)
        else:
            await self._scan_node(keys, limit, None)
        return list(keys)[:limit]

    async def _scan_node(self, keys: dict[str, None], limit: int, node: ClusterNode | None) -> None:
        """Add record keys to ``keys`` from one node (``None``: the only one) up to ``limit``."""
        cursor = 0
        pattern = f"{self._prefix}:*:session"
        while len(keys) < limit:
            with unavailable("list"):
                if node is None:
                    cursor, batch = await self._client.scan(cursor, match=pattern, count=SCAN_COUNT)
                else:  # redis-py answers a cluster SCAN as ({node name: cursor}, keys)
                    reply: Any = await self._client.scan(
                        cursor, match=pattern, count=SCAN_COUNT, target_nodes=node
                    )
                    cursor, batch = int(reply[0][node.name]), reply[1]
            found = (text(key) for key in batch)
            keys.update(dict.fromkeys(key for key in found if self._record_key.fullmatch(key)))
            if cursor == 0:
                return
