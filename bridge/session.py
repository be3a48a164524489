"""Session: one live client session, between a downstream client and the pool.

The data's path: front door -> **client session** -> pool -> upstream session
-> transport. A Session holds the client's streams, its record and its own
view of the protocol; the :class:`~bridge.upstreams.base.UpstreamConnection`
it was lent (:mod:`bridge.pool`: a channel onto shared upstream sessions, or
a connection of its own) and the task that reads it. HTTP
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
- GET streams and ``Last-Event-ID`` resumption are
  :class:`bridge.resumption.StreamResumption`'s.
- A session outlives its upstream connection. Releasing it (idle reaping,
  upstream loss, gateway shutdown) keeps the record; :meth:`Session.resume`
  leases a new connection and replays the client's handshake (on a shared
  upstream the channel answers it), so the client never has to initialize
  again. Only DELETE and a failed ``initialize`` forget the record.

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
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from bridge.events import ids
from bridge.events.store import EventStore
from bridge.jsonrpc import Message
from bridge.log import short
from bridge.metrics import Metrics, end_reason, method_label
from bridge.resumption import META, PRIMING_SINCE, StreamResumption
from bridge.routing import GET, INTERNAL, Delivery, Router, StreamKey
from bridge.sessions.store import SessionRecord, SessionStore, StoreUnavailable
from bridge.streams import ByteLedger, Outgoing, Stream
from bridge.upstreams.base import UpstreamConnection

log = structlog.get_logger("bridge.session")

#: Seconds a client told "too many requests in flight" waits before it retries.
REQUEST_RETRY_AFTER: Final = 1


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
    max_subscriptions: int = 100  # resources/subscribe URIs held at once (-32602 above)
    stream_queue_bytes: int = 16 * 1024 * 1024  # per stream, and for the standalone buffer
    unused_ttl: float = 900.0  # the record's TTL until the client does more than initialize
    max_session_bytes: int = 32 * 1024 * 1024  # requests in flight and answers unread (429)
    max_principal_bytes: int = 128 * 1024 * 1024  # ... of all of a principal's sessions (429)
    max_stored_bytes: int = 64 * 1024 * 1024  # events one session stores; past it: unstored
    max_stored_bytes_per_principal: int = 256 * 1024 * 1024  # ... all of a principal's


@dataclass(frozen=True, slots=True)
class Stores:
    sessions: SessionStore
    events: EventStore


class Session(StreamResumption):
    def __init__(
        self,
        record: SessionRecord,
        connection: UpstreamConnection,
        stores: Stores,
        limits: SessionLimits,
        metrics: Metrics,
        ledger: ByteLedger | None = None,
        stored: ByteLedger | None = None,
    ) -> None:
        self.record = record
        self._metrics = metrics
        self._ledger = ledger or ByteLedger()  # principal -> bytes held in memory
        self._store_ledger = stored or ByteLedger()  # principal -> bytes stored by live sessions
        self._request_bytes: dict[StreamKey, int] = {}  # a POST stream's requests, until answered
        self.held_bytes = 0  # held by its streams' queues (and their messages being sent)
        self.stored_bytes = 0  # of the events it stored in this process
        self._bytes_closed = False  # released: its streams' later counts are no one's
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
        self._admitting = 0  # post_requests past their checks, not yet sent upstream
        self._on_closed: list[Callable[[], None]] = []
        self.closed = False  # True once close() has finished
        self.last_active = time.monotonic()
        self.last_touch = time.monotonic()  # last sliding-expiry touch of the record
        self.ended = asyncio.Event()
        self.end_reason = ""
        #: Why the store kept the record when close(forget=True) meant to delete it.
        self.forget_error: str | None = None

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
        ledger: ByteLedger | None = None,
        stored: ByteLedger | None = None,
    ) -> Session:
        """A live session again for a stored record, on a new connection: replays the handshake.

        Raises:
            UpstreamError: the upstream refused or did not finish the handshake
                (the connection is closed; the record is kept: a later request may succeed).
        """
        session = cls(record, connection, stores, limits, metrics, ledger, stored)
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
        """Until no request of this session waits for the upstream, nor is on its way there
        (a POST that passed its checks and is storing its stream's first event): drain."""
        while self._router.in_flight() or self._admitting:
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
        # What its streams still hold is no longer its principal's (memory goes with
        # them), nor what it stored (trimmed by age and count, forgotten with it).
        self._ledger.add(self.record.principal, -self.held_bytes)
        self._store_ledger.add(self.record.principal, -self.stored_bytes)
        self.held_bytes, self.stored_bytes, self._bytes_closed = 0, 0, True
        self._request_bytes.clear()
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
        """Delete the record, then the events; a record that stays sets :attr:`forget_error`."""
        try:
            await self._stores.sessions.delete(self.id)
        except StoreUnavailable as exc:  # the caller decides (DELETE answers 503)
            self.forget_error = str(exc)
            log.warning("store_delete_failed", session_id=short(self.id), error=str(exc))
            return
        try:
            await self._stores.events.delete_session(self.id)
        except StoreUnavailable as exc:  # without a record nobody replays them; TTL removes them
            log.warning("event_delete_failed", session_id=short(self.id), error=str(exc))

    # -- client -> upstream ------------------------------------------------

    async def post_requests(
        self, requests: list[Message], *, resumable: bool = True, size: int = 0
    ) -> Stream:
        """Send client requests upstream; their answers arrive on the returned stream.

        ``resumable=False`` is for a plain JSON reply: nothing is stored, and
        the stream carries only the response. ``size``: the body's bytes, held
        against the session's and principal's budgets until the stream ends.

        Raises:
            SessionNotFound: the session has ended.
            TooManyRequests: ``max_requests`` would be in flight (429, ``Retry-After``).
        """
        self._check_open()
        self._check_bytes()
        if self.in_flight() + len(requests) > self._limits.max_requests:
            self._metrics.limited.labels("requests_per_session").inc()
            raise errors.TooManyRequests(
                f"more than {self._limits.max_requests} requests in flight in this session",
                headers={"Retry-After": str(REQUEST_RETRY_AFTER)},
            )
        self.last_active = time.monotonic()
        self._admitting += 1
        try:
            return await self._admit(requests, resumable, size)
        finally:
            self._admitting -= 1
            if not self._router.in_flight() and not self._admitting:
                self._quiet.set()

    async def _admit(self, requests: list[Message], resumable: bool, size: int) -> Stream:
        if any(r.get("method") != "initialize" for r in requests):
            await self.mark_used()
        key = self._router.open_stream(unrelated=resumable)
        stream = self._streams[key] = self._new_stream(key)
        if size:
            self._request_bytes[key] = size
            self._account(size)
        if resumable:
            name = self._names[key] = ids.new_post_stream()
            meta = {META: {"requests": [handshake.as_stored(r) for r in requests]}}
            event_id = await self._store_event(name, meta, jsonrpc.size(meta))
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
            if (refusal := self._over_limit(request)) is not None:
                await self._deliver(self._router.fail(up_id, *refusal), wait=False)
                continue
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

    def _account(self, delta: int) -> None:
        if self._bytes_closed:
            return
        self.held_bytes += delta
        self._ledger.add(self.record.principal, delta)

    def _check_bytes(self) -> None:
        """Refuse a request while this session, or its principal, holds its byte budget.

        Raises:
            TooManyRequests: 429 with ``Retry-After`` (the client reads, and retries).
        """
        limits = self._limits
        if self.held_bytes >= limits.max_session_bytes:
            limit, what = "bytes_per_session", f"{limits.max_session_bytes} bytes this session"
        elif self._ledger.held(self.record.principal) >= limits.max_principal_bytes:
            limit, what = "bytes_per_principal", f"{limits.max_principal_bytes} bytes this client"
        else:
            return
        self._metrics.limited.labels(limit).inc()
        raise errors.TooManyRequests(
            f"answers not yet read hold {what} may hold; read them first",
            headers={"Retry-After": str(REQUEST_RETRY_AFTER)},
        )

    def _over_limit(self, request: Message) -> tuple[int, str] | None:
        """The error for a request refused here, never sent upstream; None to send it.

        A ``resources/subscribe`` of a URI not yet held, past ``max_subscriptions``,
        is refused with -32602: each subscription is stored and replayed on every
        resume, so they must be bounded (issue #15).
        """
        if request.get("method") != "resources/subscribe":
            return None
        held, limit = self.record.subscriptions, self._limits.max_subscriptions
        if jsonrpc.params(request).get("uri") in held or len(held) < limit:
            return None
        self._metrics.limited.labels("subscriptions_per_session").inc()
        return errors.INVALID_PARAMS, f"more than {limit} resource subscriptions in this session"

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
        if message.get("method") != "notifications/initialized":
            await self.mark_used()
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

    def in_flight(self) -> int:
        """Requests waiting for the upstream's answer."""
        return self._router.in_flight()

    def serving(self) -> bool:
        """Whether a client stream is attached or a request awaits its answer."""
        return bool(self._streams) or self._router.in_flight() > 0

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
        size = 0 if message is None else jsonrpc.size(message)
        if message is not None and name is not None:
            event_id = await self._store_event(name, message, size)
        stream = self._streams.get(delivery.stream)
        if message is not None:
            if stream is not None and wait:
                await stream.put((event_id, message), size)
            elif stream is not None:
                stream.extend([(event_id, message)])
            elif delivery.stream == GET:
                self._buffer_standalone((event_id, message))
        if delivery.final:
            self._account(-self._request_bytes.pop(delivery.stream, 0))
            self._names.pop(delivery.stream, None)
            if stream is not None:
                stream.close()
        if not self._router.in_flight():
            self._quiet.set()
        if refused:  # after the client has its answer: nothing to resume later
            _ = self._begin_close("upstream refused initialize", errors.SESSION_TERMINATED, True)

    async def _store_event(self, name: str, message: Message | None, size: int = 0) -> str | None:
        """Store one event of ``size`` bytes; its SSE id, or None if it is sent unresumable.

        Unresumable: the store is down, or this session stored ``max_stored_bytes``
        already, or its principal's live sessions ``max_stored_bytes_per_principal``
        (issue #15: each event is kept for replay until trimmed, so what clients
        may put in the store is bounded in bytes, not only in events).
        """
        limits, principal = self._limits, self.record.principal
        if self.stored_bytes + size > limits.max_stored_bytes:
            self._metrics.limited.labels("stored_bytes_per_session").inc()
            return None
        if self._store_ledger.held(principal) + size > limits.max_stored_bytes_per_principal:
            self._metrics.limited.labels("stored_bytes_per_principal").inc()
            return None
        self.stored_bytes += size
        self._store_ledger.add(principal, size)
        started = time.monotonic()
        try:
            position = await self._stores.events.append(self.id, name, message, self.record_ttl)
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("append").inc()
            log.warning("event_store_failed", session_id=short(self.id), error=str(exc))
            return None
        self._metrics.store_latency.labels("append").observe(time.monotonic() - started)
        return str(ids.EventId(self._tag, name, position))

    @property
    def record_ttl(self) -> float:
        """The record's TTL: short until the client does more than initialize (issue #15)."""
        ttl = float(self._limits.ttl)
        return ttl if self.record.used else min(float(self._limits.unused_ttl), ttl)

    async def mark_used(self) -> None:
        """The client did more than initialize: keep the record for the full TTL from now."""
        if self.record.used:
            return
        self.record.used = True
        await self._save_record()

    async def _save_record(self) -> None:
        try:
            await self._stores.sessions.save(self.record, self.record_ttl)
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
