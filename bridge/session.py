"""Session: one live MCP session between a downstream client and its upstream.

A Session owns the upstream connection and the task that reads it. HTTP
handlers never own upstream work (STYLE rule 5): a POST hands its messages to
the session and then only drains a :class:`Stream`. A client that drops a
stream therefore cancels nothing upstream (spec 2025-11-25 transports
§Sending Messages 6); what would have gone on that stream is dropped.

Routing decisions are :class:`bridge.routing.Router`'s; this module does the
I/O around them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

import structlog

from bridge import errors, jsonrpc, tasks
from bridge.errors import InvalidRequest, StreamConflict, UpstreamError
from bridge.jsonrpc import Message
from bridge.log import short
from bridge.routing import GET, Delivery, Router, StreamKey
from bridge.sessions.store import SessionRecord, SessionStore
from bridge.upstreams.base import UpstreamConnection

log = structlog.get_logger("bridge.session")

_ENDED: Final = object()


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Seconds and counts; see :class:`bridge.settings.Settings`."""

    stream_queue_size: int
    standalone_buffer_size: int
    close_timeout: float
    initialize_timeout: float
    ttl: float


class Stream:
    """One downstream SSE stream's outbox: bounded, closable, detachable.

    The upstream reader :meth:`put`\\ s and waits while the outbox is full
    (backpressure, STYLE rule 8); once the HTTP response goes away the stream
    is detached and puts return at once, so a vanished client can never block
    the session.
    """

    def __init__(self, key: StreamKey, limit: int) -> None:
        self.key = key
        self._limit = limit
        self._items: deque[Message] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        self.detached = False

    async def put(self, message: Message) -> None:
        while len(self._items) >= self._limit and not (self.detached or self.closed):
            self._writable.clear()
            await self._writable.wait()
        if not self.detached and not self.closed:
            self._items.append(message)
            self._readable.set()

    def extend(self, messages: deque[Message]) -> None:
        self._items.extend(messages)
        self._readable.set()

    def close(self) -> None:
        self.closed = True
        self._readable.set()
        self._writable.set()

    def detach(self) -> None:
        self.detached = True
        self._writable.set()

    async def get(self) -> Message | None:
        """The next message, or None once the stream is closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item


class Session:
    def __init__(
        self,
        record: SessionRecord,
        connection: UpstreamConnection,
        store: SessionStore,
        limits: SessionLimits,
    ) -> None:
        self.record = record
        self.id = record.session_id
        self._conn = connection
        self._store = store
        self._limits = limits
        self._router = Router()
        self._streams: dict[StreamKey, Stream] = {}
        self._standalone: deque[Message] = deque(maxlen=limits.standalone_buffer_size)
        self._reader: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._initialize_timer: asyncio.TimerHandle | None = None
        self.last_active = time.monotonic()
        self.ended = asyncio.Event()
        self.end_reason = ""

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._reader = tasks.spawn(self._read_upstream(), name=f"upstream-reader:{short(self.id)}")

    def idle_for(self, now: float) -> float:
        """Seconds without a client request while no stream is attached; 0 if busy."""
        if self._streams:
            return 0.0
        return now - self.last_active

    async def close(self, reason: str, code: int = errors.SESSION_TERMINATED) -> None:
        """End the session: answer what is pending, close streams, release upstream.

        Idempotent and shielded: concurrent callers wait for the same close.
        """
        await asyncio.shield(self._begin_close(reason, code))

    def _begin_close(self, reason: str, code: int) -> asyncio.Task[None]:
        if self._close_task is None:
            self._close_task = tasks.spawn(
                self._close(reason, code), name=f"session-close:{short(self.id)}"
            )
        return self._close_task

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished: streams closed, upstream released."""
        await self.ended.wait()
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    async def _close(self, reason: str, code: int) -> None:
        self.end_reason = reason
        self.ended.set()
        if self._initialize_timer is not None:
            self._initialize_timer.cancel()
        for delivery in self._router.fail_all(code, reason):
            self._deliver_now(delivery)
        for stream in list(self._streams.values()):
            stream.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            await tasks.cancel_and_wait(self._reader, self._limits.close_timeout, "session ended")
        await self._conn.aclose()
        await self._store.delete(self.id)
        log.info("session_ended", session_id=short(self.id), reason=reason)

    # -- client -> upstream ------------------------------------------------

    async def post_requests(self, requests: list[Message]) -> Stream:
        """Send client requests upstream; their answers arrive on the returned stream."""
        self._check_open()
        self.last_active = time.monotonic()
        key = self._router.open_stream()
        stream = self._streams[key] = Stream(key, self._limits.stream_queue_size)
        for request in requests:
            is_initialize = request.get("method") == "initialize"
            if is_initialize:
                request = self._negotiate(request)
            upstream_message = self._router.client_request(request, key)
            up_id = upstream_message["id"]
            if is_initialize:
                self._watch_initialize(up_id)
            try:
                await self._send(upstream_message)
            except UpstreamError as exc:
                # The session may have ended meanwhile and answered it already.
                if self._router.is_pending(up_id):
                    self._deliver_now(self._router.fail(up_id, exc.jsonrpc_code, exc.message))
        return stream

    async def post_other(self, message: Message, kind: jsonrpc.Kind) -> None:
        """Forward a client notification or response (the caller answers 202)."""
        self._check_open()
        self.last_active = time.monotonic()
        if kind is jsonrpc.Kind.RESPONSE:
            forwarded = self._router.client_response(message)
            deliveries: list[Delivery] = []
        else:
            forwarded, deliveries = self._router.client_notification(message)
        for delivery in deliveries:
            self._deliver_now(delivery)
        if forwarded is None:
            log.debug("client_message_dropped", session_id=short(self.id), reason="unknown id")
            return
        await self._send(forwarded)

    def open_standalone(self) -> Stream:
        """The GET stream, with what was queued for it (spec transports §Listening).

        Raises:
            StreamConflict: one is already open (409, as both SDKs answer).
        """
        self._check_open()
        self.last_active = time.monotonic()
        if not self._router.attach_get():
            raise StreamConflict("a standalone GET stream is already open for this session")
        stream = self._streams[GET] = Stream(GET, self._limits.stream_queue_size)
        stream.extend(self._standalone)
        self._standalone.clear()
        return stream

    def detach(self, stream: Stream) -> None:
        """The HTTP response for ``stream`` ended (finished, or the client left)."""
        stream.detach()
        self._router.detach(stream.key)
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
        self.last_active = time.monotonic()

    def _check_open(self) -> None:
        if self.ended.is_set():
            raise errors.SessionNotFound("session has ended")

    def _negotiate(self, request: Message) -> Message:
        """Offer upstream only a revision the front door can serve (spec-notes §4.2)."""
        params = jsonrpc.params(request)
        if params.get("protocolVersion") in jsonrpc.SUPPORTED_VERSIONS:
            return request
        return {**request, "params": {**params, "protocolVersion": jsonrpc.LATEST_VERSION}}

    async def _send(self, message: Message) -> None:
        # Shielded: once we start writing a frame upstream, a client that
        # disconnects must not leave half a message behind.
        send = tasks.spawn(self._conn.send(message), name="upstream-send", awaited=True)
        await asyncio.shield(send)

    # -- upstream -> client ------------------------------------------------

    async def _read_upstream(self) -> None:
        reason = f"server {self.record.server!r}: upstream closed the connection"
        try:
            async for message in self._conn.messages():
                try:
                    kind = jsonrpc.kind(message)
                except InvalidRequest as exc:
                    log.warning(
                        "upstream_invalid_message", session_id=short(self.id), error=str(exc)
                    )
                    continue
                delivery = self._router.upstream_message(message, kind)
                if delivery is not None:
                    await self._deliver(delivery)
        except UpstreamError as exc:
            reason = exc.message
        log.warning("upstream_lost", session_id=short(self.id), reason=reason)
        # Pending requests get an error now, never a hang (issue #2), and the
        # session ends: the client's next request gets 404 and re-initializes.
        await self.close(reason, errors.UPSTREAM_UNAVAILABLE)

    async def _deliver(self, delivery: Delivery) -> None:
        if delivery.answers == "initialize" and delivery.message is not None:
            await self._record_initialize(delivery.message)
        stream = self._streams.get(delivery.stream)
        if delivery.stream == GET and stream is None:
            if delivery.message is not None:
                if len(self._standalone) == self._standalone.maxlen:
                    log.warning("standalone_buffer_full", session_id=short(self.id))
                self._standalone.append(delivery.message)
            return
        if stream is None:
            log.debug("stream_gone", session_id=short(self.id), stream=delivery.stream)
            return
        if delivery.message is not None:
            await stream.put(delivery.message)
        if delivery.final:
            stream.close()

    def _deliver_now(self, delivery: Delivery) -> None:
        """Deliver without waiting for room: for errors and closes the gateway makes."""
        stream = self._streams.get(delivery.stream)
        if stream is None:
            return
        if delivery.message is not None:
            stream.extend(deque([delivery.message]))
        if delivery.final:
            stream.close()

    def _watch_initialize(self, up_id: int) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._limits.initialize_timeout
        self._initialize_timer = loop.call_later(timeout, self._initialize_overdue, up_id)

    def _initialize_overdue(self, up_id: int) -> None:
        """The upstream never answered initialize: answer the client, end the session."""
        if not self._router.is_pending(up_id):
            return
        text = f"server {self.record.server!r}: no answer to initialize in time"
        self._deliver_now(self._router.fail(up_id, errors.UPSTREAM_TIMEOUT, text))
        _ = self._begin_close(text, errors.UPSTREAM_TIMEOUT)  # owned as self._close_task

    async def _record_initialize(self, response: Message) -> None:
        if self._initialize_timer is not None:
            self._initialize_timer.cancel()
        result = response.get("result")
        if not isinstance(result, dict):
            return
        version = result.get("protocolVersion")
        if isinstance(version, str):
            self.record.protocol_version = version
        self.record.init_result = result
        await self._store.save(self.record, self._limits.ttl)
