"""An :class:`EventStore` on Redis Streams; key layout in :mod:`bridge.sessions.redis`.

Each SSE stream of a session is one Redis Stream,
``{prefix}:{<session_id>}:ev:<stream>``, holding one entry per event with the
message JSON in field ``m`` (the empty string for a priming event). The
entry id Redis assigns (``<ms>-<seq>``) is the position, so positions are
made of digits and one ``-``.

An append is one server-side script (:data:`APPEND_SCRIPT`, one round trip,
one reply), so either all of it happens or none (a stream never exists
without its TTL)::

    XADD    stream MAXLEN ~ max_events * m <json>
    XTRIM   stream MINID ~ <now - max_age, in ms>
    PEXPIRE stream ttl
    ZADD    streams <now ms> <stream>
    ZREMRANGEBYSCORE streams -inf <now - ttl, in ms>   names of expired streams
    PEXPIRE streams ttl
    PEXPIRE session ttl                                 no-op if the record is gone

Trimming is approximate (``~``), as Redis recommends: a stream holds at least
``max_events`` events (while they are younger than ``max_age``) and at most
one radix-tree node more (``stream-node-max-entries``, 100 by default).
``now`` is this process's clock; the age trim is off by the clock skew
between it and the Redis server.

A replay reads the entry at ``position`` and the page after it
(``XRANGE stream (position + COUNT n``) in one round trip: a position the
stream no longer holds (trimmed, expired, from another stream) yields
nothing, as the seam requires. Needs Redis >= 6.2 (exclusive ranges, MINID).

An append retried after a lost reply may be stored twice (at-least-once).

Appends made in the same turn of the event loop (many sessions' answers
arriving together) go to Redis as one pipeline (issue #13): one connection
taken from the pool, one write and one read for all of them, instead of a
round trip each. Each is still its own script, atomic on its own; a caller
returns once its own reply is in. A Redis Cluster client sends each append
alone: its pipelines split by node, which the saving does not pay for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError

from bridge import jsonrpc, tasks
from bridge.events.store import StoredEvent
from bridge.jsonrpc import Message
from bridge.sessions.redis import (
    Client,
    check_prefix,
    ms,
    require_session_id,
    session_key,
    stream_key,
    streams_key,
    text,
    unavailable,
    valid_session_id,
)
from bridge.sessions.store import StoreUnavailable

#: Entries read per XRANGE step of a replay.
REPLAY_BATCH: Final = 100
#: Keys removed per UNLINK by delete_session.
DELETE_BATCH: Final = 500
_POSITION: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64: Final = 2**64


def _is_entry_id(position: str) -> bool:
    """Whether Redis would take ``position`` as a stream id (else XRANGE errs)."""
    match = _POSITION.fullmatch(position)
    return match is not None and all(int(part) < _U64 for part in match.groups())


#: One append as one server-side script: a single command and a single reply
#: (the gateway's CPU per event was dominated by packing and parsing the seven
#: commands of a MULTI/EXEC). Atomic like MULTI/EXEC; all keys share the
#: session's hash tag, so it also runs on Redis Cluster.
#: KEYS: stream, names, session record. ARGV: body, max_events, min id (ms), ttl (ms),
#: stream name, now (ms), oldest live stream score (ms).
APPEND_SCRIPT: Final = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1])
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return id
"""


@dataclasses.dataclass(slots=True)
class _Append:
    keys: list[str]
    args: list[str | int]
    reply: asyncio.Future[Any]


class RedisEventStore:
    """Events per ``(session_id, stream)`` as Redis Streams; see the module docstring.

    Args:
        client: one Redis or a cluster, shared with
            :class:`bridge.sessions.redis.RedisSessionStore`; closed by its
            owner, not by this store.
        prefix: first part of every key.
        max_events: events kept per stream (approximately, see above).
        max_age: seconds an event is kept (approximately, see above).
        clock: Unix time in seconds, for the age trim and the names' scores.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str,
        max_events: int,
        max_age: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._append_script = client.register_script(APPEND_SCRIPT)  # EVALSHA, loads on demand
        self._prefix = check_prefix(prefix)
        self._max_events = max_events
        self._max_age_ms = ms(max_age)
        self._clock = clock
        self._queued: list[_Append] | None = None  # appends of this loop turn, not yet sent
        self._grouped = not isinstance(client, RedisCluster)  # see the module docstring

    async def append(
        self, session_id: str, stream: str, message: Message | None, ttl: float
    ) -> str:
        require_session_id(session_id)
        body = "" if message is None else jsonrpc.encode(message)
        key, names = stream_key(self._prefix, session_id, stream), self._names(session_id)
        now_ms, ttl_ms = int(self._clock() * 1000), ms(ttl)
        keys = [key, names, session_key(self._prefix, session_id)]
        args: list[str | int] = [
            body,
            self._max_events,
            max(0, now_ms - self._max_age_ms),
            ttl_ms,
            stream,
            now_ms,
            now_ms - ttl_ms,
        ]
        with unavailable("append"):
            if self._grouped:
                position = await self._queue_append(keys, args)
            else:
                position = await self._append_script(keys=keys, args=args)
        return position.decode() if isinstance(position, bytes) else str(position)

    def _queue_append(self, keys: list[str], args: list[str | int]) -> asyncio.Future[Any]:
        """The reply to this append, sent with the others of this loop turn (module docstring)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if self._queued is None:
            self._queued = []
            loop.call_soon(self._send_queued)
        self._queued.append(_Append(keys, args, reply))
        return reply

    def _send_queued(self) -> None:
        group, self._queued = self._queued or [], None
        _ = tasks.spawn(self._send_group(group), name="redis-append")

    async def _send_group(self, group: list[_Append]) -> None:
        try:
            if len(group) == 1:
                replies: list[Any] = [
                    await self._append_script(keys=group[0].keys, args=group[0].args)
                ]
            else:
                pipe = self._client.pipeline(transaction=False)
                _queued(*(
                    pipe.evalsha(self._append_script.sha, len(a.keys), *a.keys, *a.args)
                    for a in group
                ))  # fmt: skip
                replies = await pipe.execute(raise_on_error=False)
                for i, reply in enumerate(replies):
                    if isinstance(reply, NoScriptError):  # a restarted Redis: load it, once
                        replies[i] = await self._append_script(
                            keys=group[i].keys, args=group[i].args
                        )
        except BaseException as exc:  # the connection, or this task cancelled: all of them fail
            for append in group:
                if not append.reply.done():
                    append.reply.set_exception(
                        exc
                        if isinstance(exc, Exception)
                        else StoreUnavailable("redis append cancelled")
                    )
            if not isinstance(exc, Exception):
                raise
            return
        for append, reply in zip(group, replies, strict=True):
            if append.reply.done():  # its caller gave up
                continue
            if isinstance(reply, Exception):
                append.reply.set_exception(reply)
            else:
                append.reply.set_result(reply)

    async def replay_after(
        self, session_id: str, stream: str, position: str
    ) -> AsyncIterator[StoredEvent]:
        if not valid_session_id(session_id) or not (position == "" or _is_entry_id(position)):
            return
        key = stream_key(self._prefix, session_id, stream)
        page: Any  # [(entry id, {field: value})], as redis-py decodes XRANGE
        if position == "":
            with unavailable("replay"):
                page = await self._client.xrange(key, "-", "+", count=REPLAY_BATCH)
        else:
            pipe = self._client.pipeline(transaction=False)
            _queued(
                pipe.xrange(key, position, position, count=1),
                pipe.xrange(key, f"({position}", "+", count=REPLAY_BATCH),
            )
            with unavailable("replay"):
                held, page = await pipe.execute()
            if not held:
                return
        while True:
            for entry_id, fields in page:
                body = fields.get("m", "")
                yield StoredEvent(entry_id, jsonrpc.loads_frame(body) if body else None)
            if len(page) < REPLAY_BATCH:
                return
            with unavailable("replay"):
                page = await self._client.xrange(key, f"({page[-1][0]}", "+", count=REPLAY_BATCH)

    async def delete_session(self, session_id: str) -> None:
        if not valid_session_id(session_id):
            return
        names = self._names(session_id)
        with unavailable("delete"):
            streams = await self._client.zrange(names, 0, -1)
        keys = [stream_key(self._prefix, session_id, text(name)) for name in streams] + [names]
        for start in range(0, len(keys), DELETE_BATCH):
            with unavailable("delete"):
                await self._client.unlink(*keys[start : start + DELETE_BATCH])

    def _names(self, session_id: str) -> str:
        return streams_key(self._prefix, session_id)


def _queued(*commands: object) -> None:
    """Nothing to do: the commands are queued on their pipeline already.

    redis-py's pipeline methods queue and return the pipeline, but are typed
    as the client's awaitables; this call keeps them from looking unused.
    """
