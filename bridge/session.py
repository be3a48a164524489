"""Session: one live MCP session between a downstream client and its upstream.

A Session owns the upstream connection and the task that reads it. HTTP
handlers never own upstream work (STYLE rule 5): a POST hands its messages to
the session and then only drains a :class:`Stream`. A client that drops a
stream therefore cancels nothing upstream (spec 2025-11-25 transports
§Sending Messages 6).

Resumability (spec 2025-11-25 transports §Resumability, spec-notes §6):

- Every event of every stream is written to the event store before it is
  queued, under an id naming session, stream and position
  (:mod:`bridge.events.ids`). A POST stream's first stored event records the
  requests it carries; 2025-11-25 clients get it as the priming event (an
  ``id`` with empty ``data`` and a ``retry`` hint).
- A GET with ``Last-Event-ID`` gets that stream's later events, once each and
  in order, then the live ones. If the stream's requests were interrupted (a
  gateway restart), each gets exactly one answer there: a transparent retry
  for methods safe to repeat, else a -32035 error.
- A session outlives its upstream connection. Releasing it (idle reaping,
  upstream loss, gateway shutdown) keeps the record; :meth:`Session.resume`
  opens a new connection and replays the client's handshake, so the client
  never has to initialize again. Only DELETE and a failed ``initialize``
  forget the record.

Routing decisions are :class:`bridge.routing.Router`'s; this module does the
I/O around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from bridge import errors, handshake, jsonrpc, tasks
from bridge.errors import (
    InvalidRequest,
    SessionNotFound,
    StreamConflict,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from bridge.events import ids
from bridge.events.store import EventStore
from bridge.jsonrpc import Message
from bridge.log import short
from bridge.metrics import Metrics, end_reason, method_label
from bridge.routing import GET, INTERNAL, Delivery, Router, StreamKey
from bridge.sessions.store import SessionRecord, SessionStore, StoreUnavailable
from bridge.streams import Outgoing, Stream
from bridge.upstreams.base import UpstreamConnection

log = structlog.get_logger("bridge.session")

#: Key of the stored first event of a POST stream: the requests it carries.
META: Final = "io.github.mcp-bridge/stream"
#: Seconds a client told "too many requests in flight" waits before it retries.
REQUEST_RETRY_AFTER: Final = 1
#: spec-notes §1.9: priming events only for clients of this revision or later.
PRIMING_SINCE: Final = jsonrpc.PROTOCOL_VERSION_2025_11_25


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Seconds, milliseconds and counts; see :class:`bridge.settings.Settings`."""

    stream_queue_size: int
    standalone_buffer_size: int
    close_timeout: float
    initialize_timeout: float
    request_timeout: float
    ttl: float
    retry_ms: int
    max_requests: int = 64  # requests in flight at once (429 above)
    stream_queue_bytes: int = 16 * 1024 * 1024  # per stream, and for the standalone buffer


@dataclass(frozen=True, slots=True)
class Stores:
    sessions: SessionStore
    events: EventStore


class Session:
    def __init__(
        self,
        record: SessionRecord,
        connection: UpstreamConnection,
        stores: Stores,
        limits: SessionLimits,
        metrics: Metrics,
    ) -> None:
        self.record = record
        self._metrics = metrics
        self._sent_at: dict[int, float] = {}  # upstream id -> monotonic send time
        self._deadlines: dict[int, asyncio.TimerHandle] = {}  # upstream id -> request timeout
        self.id = record.session_id
        self._conn = connection
        self._stores = stores
        self._limits = limits
        self._router = Router()
        self._tag = ids.session_tag(self.id)
        self._names: dict[StreamKey, str] = {GET: ids.GET_STREAM}  # open streams' store names
        self._streams: dict[StreamKey, Stream] = {}  # attached outboxes
        # Events for a GET stream not yet open: the newest, within count and bytes.
        self._standalone: deque[tuple[Outgoing, int]] = deque()
        self._standalone_bytes = 0
        self._resume_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._initialize_timer: asyncio.TimerHandle | None = None
        self._internal: dict[int, asyncio.Future[Message]] = {}
        self._quiet = asyncio.Event()  # set whenever nothing is in flight upstream
        self._on_closed: list[Callable[[], None]] = []
        self.closed = False  # True once close() has finished
        self.last_active = time.monotonic()
        self.last_touch = time.monotonic()  # last sliding-expiry touch of the record
        self.ended = asyncio.Event()
        self.end_reason = ""

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._reader = tasks.spawn(self._read_upstream(), name=f"upstream-reader:{short(self.id)}")

    @classmethod
    async def resume(
        cls,
        record: SessionRecord,
        connection: UpstreamConnection,
        stores: Stores,
        limits: SessionLimits,
        metrics: Metrics,
    ) -> Session:
        """A live session again for a stored record, on a new connection: replays the handshake.

        Raises:
            UpstreamError: the upstream refused or did not finish the handshake
                (the connection is closed; the record is kept: a later request may succeed).
        """
        session = cls(record, connection, stores, limits, metrics)
        session.start()
        try:
            await session._replay_handshake()
        except BaseException:
            await session.close("handshake replay failed", errors.UPSTREAM_UNAVAILABLE)
            raise
        log.info("session_resumed", session_id=short(session.id), server=record.server)
        return session

    async def _replay_handshake(self) -> None:
        try:
            async with asyncio.timeout(self._limits.initialize_timeout):
                await self._call("initialize", handshake.initialize_params(self.record))
                await self._send(jsonrpc.notification("notifications/initialized"))
                for method, params in handshake.replay_calls(self.record):
                    await self._call(method, params)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self.record.server!r}: handshake timed out") from exc

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send a request of the gateway's own upstream and wait for its result."""
        message = self._router.internal_request(method, params)
        waiter = self._internal[message["id"]] = asyncio.get_running_loop().create_future()
        await self._send(message)
        answer = await waiter
        if not isinstance(answer.get("result"), dict):
            error = answer.get("error") or {}
            if self.ended.is_set():  # our own error: the upstream went away mid-call (503)
                raise errors.UpstreamUnavailable(str(error.get("message", "upstream lost")))
            raise UpstreamProtocolError(
                f"server {self.record.server!r}: {method} failed: {error.get('message', answer)}"
            )
        return answer["result"]  # type: ignore[no-any-return]

    def idle_for(self, now: float) -> float:
        """Seconds without a client request while no stream is attached; 0 if busy."""
        if self._streams:
            return 0.0
        return now - self.last_active

    async def close(
        self,
        reason: str,
        code: int = errors.SESSION_TERMINATED,
        *,
        forget: bool = False,
        hand_over: bool = False,
    ) -> None:
        """Release the live session: answer what is pending, close streams and upstream.

        With ``forget`` the stored record goes too (DELETE, failed initialize);
        without, the session can be resumed from the store. With ``hand_over``
        (gateway shutdown) requests pending on resumable streams are left
        unanswered: the client resumes them at a gateway sharing the store,
        which answers each exactly once (a retry, or -32035). Idempotent and
        shielded: concurrent callers wait for the same close.
        """
        await asyncio.shield(self._begin_close(reason, code, forget, hand_over))

    def _begin_close(
        self, reason: str, code: int, forget: bool, hand_over: bool = False
    ) -> asyncio.Task[None]:
        if self._close_task is None:
            self._close_task = tasks.spawn(
                self._close(reason, code, forget, hand_over),
                name=f"session-close:{short(self.id)}",
            )
        return self._close_task

    async def wait_quiet(self) -> None:
        """Until no request of this session waits for the upstream (drain)."""
        while self._router.in_flight():
            self._quiet.clear()
            await self._quiet.wait()

    def close_standalone(self) -> None:
        """Close the GET stream (drain): it carries no responses; the client reconnects."""
        stream = self._streams.get(GET)
        if stream is not None:
            stream.close()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished: streams closed, upstream released."""
        await self.ended.wait()
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    def on_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once :meth:`close` has finished (at once if it has)."""
        if self.closed:
            callback()
        else:
            self._on_closed.append(callback)

    async def _close(self, reason: str, code: int, forget: bool, hand_over: bool) -> None:
        try:
            await self._release(reason, code, forget, hand_over)
        finally:
            self.closed = True
            for callback in self._on_closed:
                callback()

    async def _release(self, reason: str, code: int, forget: bool, hand_over: bool) -> None:
        # A session whose initialize never completed cannot be resumed (hub
        # answers 404 for it): its record would only wait for the TTL.
        forget = forget or not self.record.init_result
        self.end_reason = reason
        self.ended.set()
        if self._initialize_timer is not None:
            self._initialize_timer.cancel()
        for delivery in self._router.fail_all(code, reason):
            if hand_over and self._names.get(delivery.stream):
                continue  # resumable: answered at whichever gateway the client resumes
            await self._deliver(delivery, wait=False)
        for stream in list(self._streams.values()):
            stream.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            await tasks.cancel_and_wait(self._reader, self._limits.close_timeout, "session ended")
        await self._conn.aclose()
        if forget:
            await self._forget_stored()
        self._sent_at.clear()
        for deadline in self._deadlines.values():
            deadline.cancel()
        self._deadlines.clear()
        self._metrics.sessions_ended.labels(self.record.server, end_reason(reason, forget)).inc()
        log.info("session_released", session_id=short(self.id), reason=reason, forgotten=forget)

    async def _forget_stored(self) -> None:
        try:
            await self._stores.sessions.delete(self.id)
            await self._stores.events.delete_session(self.id)
        except StoreUnavailable as exc:  # the TTL removes it later
            log.warning("store_delete_failed", session_id=short(self.id), error=str(exc))

    # -- client -> upstream ------------------------------------------------

    async def post_requests(self, requests: list[Message], *, resumable: bool = True) -> Stream:
        """Send client requests upstream; their answers arrive on the returned stream.

        ``resumable=False`` is for a plain JSON reply: nothing is stored, and
        the stream carries only the response.

        Raises:
            SessionNotFound: the session has ended.
            TooManyRequests: ``max_requests`` would be in flight (429, ``Retry-After``).
        """
        self._check_open()
        if self.in_flight() + len(requests) > self._limits.max_requests:
            self._metrics.limited.labels("requests_per_session").inc()
            raise errors.TooManyRequests(
                f"more than {self._limits.max_requests} requests in flight in this session",
                headers={"Retry-After": str(REQUEST_RETRY_AFTER)},
            )
        self.last_active = time.monotonic()
        key = self._router.open_stream(unrelated=resumable)
        stream = self._streams[key] = self._new_stream(key)
        if resumable:
            name = self._names[key] = ids.new_post_stream()
            event_id = await self._store_event(name, {META: {"requests": requests}})
            if event_id is not None and self._priming(requests):
                stream.extend([(event_id, None)])
                stream.resumable_by_client = True
        await self._send_requests(requests, key, refuse_busy=True)
        return stream

    async def _send_requests(
        self, requests: list[Message], key: int, *, refuse_busy: bool = False
    ) -> None:
        """Send each request upstream; one that cannot be sent is answered with its error.

        With ``refuse_busy``, a full pool refusing the first request raises
        instead, before anything was sent (503 with ``Retry-After``, issue #10).

        Raises:
            PoolBusy: as said, and the stream is forgotten.
        """
        for index, request in enumerate(requests):
            is_initialize = request.get("method") == "initialize"
            if is_initialize:
                request = self._negotiate(request)
            upstream_message = self._router.client_request(request, key)
            up_id = upstream_message["id"]
            if is_initialize:
                self._watch_initialize(up_id)
            self._sent_at[up_id] = time.monotonic()
            self._deadlines[up_id] = asyncio.get_running_loop().call_later(
                self._limits.request_timeout, self._request_overdue, up_id
            )
            try:
                await self._send(upstream_message)
            except UpstreamError as exc:
                if isinstance(exc, errors.PoolBusy) and refuse_busy and index == 0:
                    self._abandon(up_id, key)
                    raise
                # The session may have ended meanwhile and answered it already.
                if self._router.is_pending(up_id):
                    failed = self._router.fail(up_id, exc.jsonrpc_code, exc.message)
                    await self._deliver(failed, wait=False)
                continue
            if handshake.remember(self.record, request):
                await self._save_record()

    def _abandon(self, up_id: int, key: int) -> None:
        """Forget a request that was never sent, and its stream."""
        if self._router.is_pending(up_id):
            self._router.fail(up_id, errors.LIMIT_EXCEEDED, "")
        if (deadline := self._deadlines.pop(up_id, None)) is not None:
            deadline.cancel()
        self._sent_at.pop(up_id, None)
        self._names.pop(key, None)
        self._router.close_stream(key)
        if (stream := self._streams.pop(key, None)) is not None:
            stream.close()

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
            await self._deliver(delivery, wait=False)
        if forwarded is None:
            log.debug("client_message_dropped", session_id=short(self.id), reason="unknown id")
            return
        await self._send(forwarded)

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

    def in_flight(self) -> int:
        """Requests waiting for the upstream's answer."""
        return self._router.in_flight()

    def open_streams(self) -> dict[str, int]:
        """Attached streams by kind ("get", "post"): for the metrics scrape."""
        get = int(GET in self._streams)
        return {"get": get, "post": len(self._streams) - get}

    def detach(self, stream: Stream) -> None:
        """The HTTP response for ``stream`` ended (finished, or the client left)."""
        stream.detach()
        self._router.detach(stream.key)
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
        self.last_active = time.monotonic()

    def _check_open(self) -> None:
        if self.ended.is_set():
            raise SessionNotFound("session has ended")

    def _priming(self, requests: list[Message]) -> bool:
        if any(r.get("method") == "initialize" for r in requests):
            return False  # the client does not know the negotiated version yet
        return self.record.protocol_version >= PRIMING_SINCE

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

    # -- resuming streams --------------------------------------------------

    def _new_stream(self, key: StreamKey) -> Stream:
        return Stream(key, self._limits.stream_queue_size, self._limits.stream_queue_bytes)

    def _buffer_standalone(self, item: Outgoing) -> None:
        """Keep an event for a GET stream not yet open; drop the oldest past the limits."""
        assert item[1] is not None
        size = len(jsonrpc.encode(item[1]))
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

    # -- upstream -> client ------------------------------------------------

    async def _read_upstream(self) -> None:
        reason = f"server {self.record.server!r}: upstream closed the connection"
        code = errors.UPSTREAM_UNAVAILABLE
        try:
            async for message in self._conn.messages():
                try:
                    kind = jsonrpc.kind(message)
                except InvalidRequest as exc:
                    log.warning("upstream_bad_message", session_id=short(self.id), error=str(exc))
                    continue
                delivery = self._router.upstream_message(message, kind)
                if delivery is not None:
                    await self._deliver(delivery)
        except UpstreamError as exc:  # its code: -32031 for nonsense (an oversized message)
            reason, code = exc.message, exc.jsonrpc_code
        log.warning("upstream_lost", session_id=short(self.id), reason=reason)
        self._metrics.upstream_losses.labels(self.record.server).inc()
        # Pending requests get an error now, never a hang. The record stays:
        # the client's next request resumes the session on a new connection.
        await self.close(reason, code)

    async def _deliver(self, delivery: Delivery, *, wait: bool = True) -> None:
        """Store, then queue, one message; ``wait=False`` never waits for room."""
        message = delivery.message
        if delivery.stream == INTERNAL:
            waiter = None if message is None else self._internal.pop(message["id"], None)
            if waiter is not None and message is not None and not waiter.done():
                waiter.set_result(message)
            return
        if delivery.up_id is not None and (deadline := self._deadlines.pop(delivery.up_id, None)):
            deadline.cancel()
        if delivery.up_id is not None and (sent := self._sent_at.pop(delivery.up_id, None)):
            self._metrics.upstream_latency.labels(
                self.record.server, method_label(delivery.answers)
            ).observe(time.monotonic() - sent)
        refused = False
        if delivery.answers == "initialize" and message is not None:
            refused = not await self._record_initialize(message)
        name = self._names.get(delivery.stream)
        event_id = None
        if message is not None and name is not None:
            event_id = await self._store_event(name, message)
        stream = self._streams.get(delivery.stream)
        if message is not None:
            if stream is not None and wait:
                await stream.put((event_id, message), len(jsonrpc.encode(message)))
            elif stream is not None:
                stream.extend([(event_id, message)])
            elif delivery.stream == GET:
                self._buffer_standalone((event_id, message))
        if delivery.final:
            self._names.pop(delivery.stream, None)
            if stream is not None:
                stream.close()
        if not self._router.in_flight():
            self._quiet.set()
        if refused:  # after the client has its answer: nothing to resume later
            _ = self._begin_close("upstream refused initialize", errors.SESSION_TERMINATED, True)

    async def _store_event(self, name: str, message: Message | None) -> str | None:
        """Store one event; its SSE id, or None if the store is down (sent unresumable)."""
        started = time.monotonic()
        try:
            position = await self._stores.events.append(self.id, name, message, self._limits.ttl)
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("append").inc()
            log.warning("event_store_failed", session_id=short(self.id), error=str(exc))
            return None
        self._metrics.store_latency.labels("append").observe(time.monotonic() - started)
        return str(ids.EventId(self._tag, name, position))

    async def _save_record(self) -> None:
        try:
            await self._stores.sessions.save(self.record, self._limits.ttl)
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("save").inc()
            log.warning("record_save_failed", session_id=short(self.id), error=str(exc))

    def _request_overdue(self, up_id: int) -> None:
        """No answer in time: error to the client, cancel upstream (spec lifecycle §Timeouts)."""
        self._deadlines.pop(up_id, None)
        if not self._router.is_pending(up_id) or self.ended.is_set():
            return
        seconds = self._limits.request_timeout
        text = f"server {self.record.server!r}: no answer within {seconds:g} s"
        failed = self._router.fail(up_id, errors.UPSTREAM_TIMEOUT, text)
        cancel = jsonrpc.notification(
            "notifications/cancelled", {"requestId": up_id, "reason": "gateway timeout"}
        )
        log.warning("upstream_request_timeout", session_id=short(self.id), timeout_s=seconds)
        _ = tasks.spawn(self._time_out(failed, cancel), name=f"timeout:{short(self.id)}")

    async def _time_out(self, failed: Delivery, cancel: Message) -> None:
        # Cancel first: once the client has its error, the upstream has been told.
        with contextlib.suppress(UpstreamError):  # the upstream may be gone already
            await self._send(cancel)
        await self._deliver(failed, wait=False)

    def _watch_initialize(self, up_id: int) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._limits.initialize_timeout
        self._initialize_timer = loop.call_later(timeout, self._initialize_overdue, up_id)

    def _initialize_overdue(self, up_id: int) -> None:
        """The upstream never answered initialize: answer the client, end the session."""
        if not self._router.is_pending(up_id):
            return
        text = f"server {self.record.server!r}: no answer to initialize in time"
        failed = self._router.fail(up_id, errors.UPSTREAM_TIMEOUT, text)
        stream = self._streams.get(failed.stream)
        if stream is not None and failed.message is not None:
            stream.extend([(None, failed.message)])
            stream.close()
        _ = self._begin_close(text, errors.UPSTREAM_TIMEOUT, True)  # owned as self._close_task

    async def _record_initialize(self, response: Message) -> bool:
        """Store what initialize negotiated; False if the upstream refused it."""
        if self._initialize_timer is not None:
            self._initialize_timer.cancel()
        result = response.get("result")
        if not isinstance(result, dict):
            return False
        version = result.get("protocolVersion")
        if isinstance(version, str):
            self.record.protocol_version = version
        self.record.init_result = result
        await self._save_record()
        return True


def _after(events: list[Outgoing], position: str) -> list[Outgoing]:
    """The events after the one at ``position``; all of them if it is not there."""
    for index, (event_id, _) in enumerate(events):
        if event_id is not None and event_id.rsplit(".", 1)[-1] == position:
            return [e for e in events[index + 1 :] if e[1] is None or META not in e[1]]
    return [e for e in events if e[1] is None or META not in e[1]]
