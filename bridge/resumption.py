"""Stream resumption of a client session: GET streams, and ``Last-Event-ID``.

spec 2025-11-25 transports §Listening and §Resumability (spec-notes §1.6,
§1.8, §6): every event of every stream is in the event store under an id
naming session, stream and position. A GET with ``Last-Event-ID`` gets that
stream's later events, once each and in order, then the live ones. A stream
whose requests were interrupted (a gateway restart) gets exactly one answer
for each there: a transparent retry for methods safe to repeat, else -32035.

:class:`StreamResumption` is the part of :class:`bridge.session.Session` that
does this; it shares the session's state (declared below) and is mixed in
rather than composed because every method reads that state.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from bridge import errors, handshake, jsonrpc
from bridge.errors import SessionNotFound, StreamConflict
from bridge.events import ids
from bridge.jsonrpc import Message
from bridge.log import short
from bridge.metrics import Metrics
from bridge.routing import GET, Router, StreamKey
from bridge.sessions.store import SessionRecord, StoreUnavailable
from bridge.streams import Outgoing, Stream

log = structlog.get_logger("bridge.session")

#: Key of the stored first event of a POST stream: the requests it carries.
META: Final = "io.github.mcp-bridge/stream"
#: spec-notes §1.9: priming events only for clients of this revision or later.
PRIMING_SINCE: Final = jsonrpc.PROTOCOL_VERSION_2025_11_25


class StreamResumption:
    """GET streams and ``Last-Event-ID`` resumption, for :class:`bridge.session.Session`."""

    # The session's state this part reads and writes (set by Session.__init__).
    id: str
    record: SessionRecord
    last_active: float
    _tag: str
    _router: Router
    _names: dict[StreamKey, str]
    _streams: dict[StreamKey, Stream]
    _standalone: deque[tuple[Outgoing, int]]
    _standalone_bytes: int
    _resume_lock: asyncio.Lock
    _metrics: Metrics
    _stores: Any
    _limits: Any
    # ... and the session's operations it uses.
    _check_open: Callable[[], None]
    _store_event: Callable[[str, Message | None], Awaitable[str | None]]
    _send_requests: Callable[[list[Message], int], Awaitable[None]]

    async def open_standalone(self, last_event_id: str | None = None) -> Stream:
        """The GET stream (spec transports §Listening, §Resumability).

        Without ``last_event_id``: a fresh standalone stream, with what was
        queued for it. With one: the rest of the stream it names.

        Raises:
            StreamConflict: a standalone stream is already open (409).
            SessionNotFound: ``last_event_id`` is not one of this session's (404).
        """
        self._check_open()
        self.last_active = time.monotonic()
        if last_event_id is None:
            return await self._fresh_standalone()
        event = ids.parse(last_event_id)
        if event is None or event.tag != self._tag:
            raise SessionNotFound("Last-Event-ID does not belong to this session")
        async with self._resume_lock:
            if event.stream == ids.GET_STREAM:
                stream = await self._resume_standalone(event.position)
            else:
                stream = await self._resume_post_stream(event.stream, event.position)
        self._metrics.replays.labels(self.record.server).inc()
        self._metrics.events_replayed.labels(self.record.server).inc(stream.queued())
        stream.resumable_by_client = self.record.protocol_version >= PRIMING_SINCE
        return stream

    def _new_stream(self, key: StreamKey) -> Stream:
        limits = self._limits
        return Stream(key, limits.stream_queue_size, limits.stream_queue_bytes, self._account)

    def _account(self, delta: int) -> None:
        """A stream of this session holds ``delta`` more bytes (the session keeps count)."""

    def _buffer_standalone(self, item: Outgoing) -> None:
        """Keep an event for a GET stream not yet open; drop the oldest past the limits."""
        assert item[1] is not None
        size = jsonrpc.size(item[1])
        self._standalone.append((item, size))
        self._standalone_bytes += size
        limits = self._limits
        while len(self._standalone) > 1 and (
            len(self._standalone) > limits.standalone_buffer_size
            or self._standalone_bytes > limits.stream_queue_bytes
        ):
            _, dropped = self._standalone.popleft()
            self._standalone_bytes -= dropped

    async def _fresh_standalone(self) -> Stream:
        if not self._router.attach_get():
            raise StreamConflict("a standalone GET stream is already open for this session")
        stream = self._streams[GET] = self._new_stream(GET)
        if self.record.protocol_version >= PRIMING_SINCE:
            event_id = await self._store_event(ids.GET_STREAM, None)
            if event_id is not None:
                stream.extend([(event_id, None)])
                stream.resumable_by_client = True
        stream.extend([item for item, _ in self._standalone])
        self._standalone.clear()
        self._standalone_bytes = 0
        return stream

    async def _resume_standalone(self, position: str) -> Stream:
        if not self._router.attach_get():
            raise StreamConflict("a standalone GET stream is already open for this session")
        stream = self._streams[GET] = self._new_stream(GET)
        self._standalone.clear()  # everything queued is in the store too
        self._standalone_bytes = 0
        stream.prepend_replay(await self._stored(ids.GET_STREAM, position))
        return stream

    async def _resume_post_stream(self, name: str, position: str) -> Stream:
        key = next((k for k, n in self._names.items() if n == name and isinstance(k, int)), None)
        if key is not None:  # still open here: replay, then live
            if (previous := self._streams.get(key)) is not None:
                previous.close()  # the newer resume wins; the old reader ends, not hangs
            stream = self._streams[key] = self._new_stream(key)
            self._router.attach(key)
            stream.prepend_replay(await self._stored(name, position))
            return stream
        # Finished, or interrupted (a gateway restart, a lost upstream).
        events = await self._stored(name, "")
        requests, answered = self._requests_and_answers(events)
        missing = [r for r in requests if r.get("id") not in answered]
        after = _after(events, position)
        key = self._router.open_stream()
        stream = self._streams[key] = self._new_stream(key)
        stream.extend([e for e in after if e[1] is not None])
        if not missing:
            stream.close()
            self._router.close_stream(key)
            return stream
        self._names[key] = name
        await self._answer_interrupted(missing, key, stream)
        return stream

    async def _answer_interrupted(self, missing: list[Message], key: int, stream: Stream) -> None:
        """Exactly one answer each: a retry if safe to repeat, else an error."""
        retry = [r for r in missing if r.get("method") in handshake.SAFE_TO_REPEAT]
        for request in missing:
            if request in retry:
                continue
            error = jsonrpc.error_response(
                request["id"],
                errors.REQUEST_INTERRUPTED,
                "request interrupted: the gateway restarted before the upstream answered; "
                "it was not repeated because it may have had effects",
            )
            event_id = await self._store_event(self._names[key], error)
            stream.extend([(event_id, error)])
        log.info("interrupted_requests", session_id=short(self.id), retried=len(retry),
                 failed=len(missing) - len(retry))  # fmt: skip
        self._metrics.interrupted.labels(self.record.server, "retried").inc(len(retry))
        self._metrics.interrupted.labels(self.record.server, "failed").inc(
            len(missing) - len(retry)
        )
        if retry:
            await self._send_requests(retry, key)
        else:
            self._names.pop(key, None)
            self._router.close_stream(key)
            stream.close()

    @staticmethod
    def _requests_and_answers(events: list[Outgoing]) -> tuple[list[Message], set[Any]]:
        requests: list[Message] = []
        answered: set[Any] = set()
        for _, message in events:
            if message is None:
                continue
            if META in message:
                requests = list(message[META].get("requests", []))
            elif "id" in message and "method" not in message:
                answered.add(message["id"])
        return requests, answered

    async def _stored(self, name: str, position: str) -> list[Outgoing]:
        """Events of ``name`` after ``position`` ("" for all), as ``(event id, message)``.

        The record of a stream's requests stays inside; priming events are dropped.
        """
        found: list[Outgoing] = []
        try:
            async for event in self._stores.events.replay_after(self.id, name, position):
                if event.message is not None:
                    found.append((str(ids.EventId(self._tag, name, event.position)), event.message))
        except StoreUnavailable as exc:
            log.warning("replay_failed", session_id=short(self.id), error=str(exc))
        if position:
            return [e for e in found if e[1] is not None and META not in e[1]]
        return found


def _after(events: list[Outgoing], position: str) -> list[Outgoing]:
    """The events after the one at ``position``; all of them if it is not there."""
    for index, (event_id, _) in enumerate(events):
        if event_id is not None and event_id.rsplit(".", 1)[-1] == position:
            return [e for e in events[index + 1 :] if e[1] is None or META not in e[1]]
    return [e for e in events if e[1] is None or META not in e[1]]
