"""Streamable HTTP upstream (spec 2025-03-26 … 2025-11-25 transports §Streamable HTTP).

Contract (spec-notes §1):

- A connection is one upstream MCP session. Every message is its own POST
  (``Accept: application/json, text/event-stream``) with the configured
  ``headers``, the ``Mcp-Session-Id`` the server set on the response carrying
  the InitializeResult (§1.10) and, once that result is in, the negotiated
  ``MCP-Protocol-Version`` (§1.12).
- :meth:`~StreamableHttpConnection.send` returns once the upstream has
  accepted the message (its status is in: 202 for a notification or a
  response, 200 for a request), and raises if it refused it. A request's
  answer, one JSON body or an SSE stream, is read by a task the connection
  owns, so a long stream never holds up another send. A server that answers
  in JSON sends its status only with the answer: past ``upstream_send_timeout``
  send() stops waiting and the task reads on, bounded by ``upstream_read_timeout``.
  A JSON body must hold the answer (spec-notes §1.4), and no body or event
  may exceed ``max_message_bytes``; else the request gets -32031. HTTP
  statuses and aiohttp failures map to errors as :mod:`.http` says, and
  every failed POST is logged (``upstream_post_failed``).
- :meth:`~StreamableHttpConnection.messages` is the one output: what every
  POST answer and the standalone GET stream carry (each stream in order,
  streams interleaved as they arrive) goes through one bounded
  :class:`~bridge.upstreams.inbox.Inbox`, whose room goes to the streams in
  turn: a flooding stream cannot hold up the answer on another. The GET stream
  opens once ``notifications/initialized`` is accepted; 405 means the server
  has none (§1.6); a refused or garbled one (an event over the bound) is given
  up and logged (``upstream_get_stream_failed``), and requests go on.
- A stream that breaks before it is finished is resumed with GET and
  ``Last-Event-ID`` when its events carried ids (§1.8), after the server's
  ``retry`` hint (§1.9), until ``RESUME_ATTEMPTS`` tries in a row bring
  nothing. A request whose answer is lost that way gets a JSON-RPC error
  (-32030) through messages(): an answer, never a hang. The GET stream is
  reopened whenever it ends. Priming events (an id, empty data) move the
  cursor and are never decoded.
- The connection is *lost*, and messages() raises UpstreamUnavailable after
  what it already holds, when the upstream forgot the session (404 to a
  request carrying the session id, or server-everything's 400 "No valid
  session ID", spec-notes §5.3) or can no longer be reached. The Session then
  resumes on a new connection, which initializes anew (spec-notes §6.3).
- :meth:`~StreamableHttpConnection.aclose` cancels and awaits every task,
  then DELETEs the upstream session (§1.11), each within ``shutdown_grace``;
  DELETE errors are ignored.
- Redirects are not followed (the configured headers may hold credentials).
  The URL and header values are never logged; session ids are truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog
from multidict import CIMultiDict

from bridge import jsonrpc, tasks
from bridge.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from bridge.jsonrpc import Message, RequestId
from bridge.log import short
from bridge.settings import StreamableHttpServer
from bridge.sse import Decoder, Event
from bridge.upstreams.base import UpstreamTimeouts, decode_frames
from bridge.upstreams.http import (
    client_error,
    feed,
    forwarded,
    read_limited,
    status_error,
)
from bridge.upstreams.inbox import Inbox

log = structlog.get_logger("bridge.upstream.streamable_http")

ACCEPT_POST: Final = "application/json, text/event-stream"
EVENT_STREAM: Final = "text/event-stream"
SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"
#: Messages read from the upstream that the session has not taken yet. When it
#: is full the stream readers stop reading, so a slow client slows the
#: upstream (TCP backpressure) instead of growing this process's memory.
INBOX_SIZE: Final = 64
#: Tries in a row that bring no event before a broken stream is given up.
RESUME_ATTEMPTS: Final = 3
#: Wait before a resume when the server sent no ``retry`` (the py SDK client's default).
DEFAULT_RETRY_MS: Final = 1000
#: Bytes of an error body read to recognise the "no valid session" 400.
ERROR_BODY_BYTES: Final = 4096
#: spec-notes §5.3: server-everything (and py SDK < 1.26) answer an unknown session with 400.
_NO_SESSION: Final = re.compile(r"(no valid|invalid|unknown|missing) session", re.IGNORECASE)
#: spec 2025-11-25 transports §Session Management 1: visible ASCII (0x21-0x7E).
_VISIBLE_ASCII: Final = re.compile(r"^[\x21-\x7E]{1,1024}$")


class StreamableHttpUpstream:
    def __init__(
        self,
        spec: StreamableHttpServer,
        client: aiohttp.ClientSession,
        timeouts: UpstreamTimeouts,
    ) -> None:
        self.name = spec.name
        self.url = str(spec.url)
        self.headers = dict(spec.headers)
        self.forward = spec.forward_headers
        self.client = client
        self.timeouts = timeouts
        # No total (aiohttp's default of 300 s would cut long streams): silence is what we bound.
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )

    async def connect(
        self, client_headers: Mapping[str, str] | None = None
    ) -> StreamableHttpConnection:
        """A new connection. No I/O yet: its first request, ``initialize``, opens the session."""
        return StreamableHttpConnection(self, forwarded(self.forward, client_headers))


@dataclass(slots=True)
class _Cursor:
    """How far one SSE stream has been read: what resuming it needs."""

    waiting: set[RequestId] | None  # a POST's requests still unanswered; None: the GET stream
    last_id: str | None = None
    retry_ms: int = DEFAULT_RETRY_MS

    @property
    def finished(self) -> bool:
        return self.waiting is not None and not self.waiting

    def advance(self, event: Event) -> None:
        if event.id is not None:
            self.last_id = event.id or None  # WHATWG: an empty id resets it
        if event.retry is not None:
            self.retry_ms = event.retry


@dataclass(slots=True)
class _Post:
    message: Message
    cursor: _Cursor
    accepted: asyncio.Future[UpstreamError | None]  # None: the upstream took it
    detached: bool = False  # send() stopped waiting: failures go through messages()


class StreamableHttpConnection:
    def __init__(self, upstream: StreamableHttpUpstream, extra: dict[str, str]) -> None:
        self._up = upstream
        self._extra = extra  # forwarded client headers (forward_headers), on every request
        self._name = upstream.name
        self._timeouts = upstream.timeouts
        self._inbox = Inbox(INBOX_SIZE)
        self._session_id: str | None = None
        self._version: str | None = None
        self._initialize_ids: set[RequestId] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listening = False
        self._gone = False  # the upstream forgot the session: nothing to DELETE
        self._close_task: asyncio.Task[None] | None = None

    @property
    def session_id(self) -> str | None:
        """The upstream's ``Mcp-Session-Id``; None before initialize or for a stateless server."""
        return self._session_id

    @property
    def protocol_version(self) -> str | None:
        """The revision the upstream's InitializeResult names; None before it."""
        return self._version

    # -- sending -------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self._inbox.ended:
            error = self._inbox.error
            closed = f"server {self._name!r}: connection closed"
            raise UpstreamUnavailable(error.message if error else closed)
        method = message.get("method")
        is_request = method is not None and jsonrpc.is_request_id(message.get("id"))
        waiting: set[RequestId] = {message["id"]} if is_request else set()
        if method == "initialize":
            self._initialize_ids |= waiting
        body = jsonrpc.encode_bytes(message)
        post = _Post(message, _Cursor(waiting), asyncio.get_running_loop().create_future())
        task = self._own(self._exchange(post, body), f"upstream-post:{self._name}")
        error = await self._accepted(post, task)
        if error is not None:
            raise error
        if method == "notifications/initialized" and not self._listening:
            self._listening = True
            _ = self._own(self._listen(), f"upstream-get:{self._name}")

    async def _accepted(self, post: _Post, task: asyncio.Task[None]) -> UpstreamError | None:
        """Wait (bounded by the send timeout) for the upstream to take ``post``.

        A waiter of its own rather than ``asyncio.timeout`` and ``shield``: the
        same (a cancelled caller leaves ``post.accepted`` alone), for a timer
        handle and a callback instead of two futures and a Timeout (issue #13).
        """
        accepted = post.accepted
        if not accepted.done():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: object = None) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            accepted.add_done_callback(wake)
            timer = loop.call_later(self._timeouts.send, wake)
            try:
                await waiter
            finally:
                timer.cancel()
                accepted.remove_done_callback(wake)
                post.detached = not accepted.done()
        if accepted.done():
            return accepted.result()
        if post.cursor.waiting:  # a request: a JSON-answering server is still at work
            log.debug("upstream_answer_pending", server=self._name)
            return None
        task.cancel("not accepted in time")
        error = UpstreamTimeout(f"server {self._name!r}: POST not accepted in time")
        log.warning("upstream_post_failed", server=self._name, error=error.message)
        return error

    async def _exchange(self, post: _Post, body: bytes) -> None:
        """One POST: its status for send(), then its answer for messages()."""
        try:
            async with self._up.client.post(
                self._up.url,
                data=body,
                headers=self._headers(ACCEPT_POST, post=True),
                timeout=self._up.stream_timeout,
                allow_redirects=False,
            ) as response:
                await self._check(response, "POST")
                if post.message.get("method") == "initialize":
                    self._learn_session(response)
                _settle(post, None)
                await self._read_answer(response, post.cursor)
        except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
            await self._post_failed(post, self._mapped(exc, "POST"))
        finally:
            _settle(post, UpstreamUnavailable(f"server {self._name!r}: connection closed"))

    async def _post_failed(self, post: _Post, error: UpstreamError) -> None:
        log.warning("upstream_post_failed", server=self._name, error=error.message)
        if not post.accepted.done() and not post.detached:
            _settle(post, error)  # send() raises it
            return
        # send() has returned: answer what is still waiting through messages().
        _settle(post, error)
        for request_id in post.cursor.waiting or ():
            await self._inbox.put(
                jsonrpc.error_response(request_id, error.jsonrpc_code, error.message)
            )

    def _headers(self, accept: str, *, post: bool = False) -> CIMultiDict[str]:
        headers = CIMultiDict(self._up.headers)
        headers.update(self._extra)
        headers["Accept"] = accept
        if post:
            headers["Content-Type"] = "application/json"
        if self._session_id is not None:
            headers[SESSION_HEADER] = self._session_id
        if self._version is not None:
            headers[VERSION_HEADER] = self._version
        return headers

    async def _check(self, response: aiohttp.ClientResponse, what: str) -> None:
        """Raise the error a non-2xx status means; a forgotten session also ends the connection."""
        status = response.status
        if 200 <= status < 300:
            return
        if SESSION_HEADER in response.request_info.headers and (
            status == 404 or (status == 400 and _NO_SESSION.search(await _error_text(response)))
        ):
            self._gone = True
            error = UpstreamUnavailable(
                f"server {self._name!r}: the upstream session is gone ({what} answered {status})"
            )
            self._lose(error)
            raise error
        raise status_error(self._name, what, status)

    def _learn_session(self, response: aiohttp.ClientResponse) -> None:
        value = response.headers.get(SESSION_HEADER)
        if value is None:
            return  # a stateless server
        if not _VISIBLE_ASCII.match(value):
            raise UpstreamProtocolError(f"server {self._name!r}: malformed {SESSION_HEADER}")
        self._session_id = value
        log.debug("upstream_session", server=self._name, upstream_session=short(value))

    def _mapped(
        self, exc: aiohttp.ClientError | TimeoutError | UpstreamError, what: str
    ) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        error = client_error(self._name, what, exc)
        if isinstance(exc, aiohttp.ClientConnectorError):
            self._lose(error)  # nothing listens there now: a new connection must find out
        return error

    # -- receiving -----------------------------------------------------------

    async def messages(self) -> AsyncIterator[Message]:
        while (message := await self._inbox.get()) is not None:
            yield message

    async def _read_answer(self, response: aiohttp.ClientResponse, cursor: _Cursor) -> None:
        if response.status == 202 or not cursor.waiting:
            return  # a notification or response; or a request answered on the GET stream
        if response.content_type == "application/json":
            body = await read_limited(response, self._timeouts.max_message_bytes, self._name)
            for message in decode_frames(body, self._name):
                await self._deliver(message, cursor)
            if cursor.waiting:  # the whole body is in and holds no answer (spec-notes §1.4)
                raise UpstreamProtocolError(
                    f"server {self._name!r}: POST answered JSON with no answer to the request"
                )
        elif response.content_type == EVENT_STREAM:
            await self._read_events(response, cursor)
            await self._resume(cursor)
        else:
            raise UpstreamProtocolError(
                f"server {self._name!r}: answered with Content-Type {response.content_type!r}"
            )

    async def _read_events(self, response: aiohttp.ClientResponse, cursor: _Cursor) -> int:
        """Deliver a stream's messages until it ends, breaks or is answered; count its events."""
        decoder = Decoder(self._timeouts.max_message_bytes)
        count = 0
        try:
            async for chunk in response.content.iter_any():
                for event in feed(decoder, chunk, self._name):
                    count += 1
                    cursor.advance(event)
                    if event.event == "message" and event.data.strip():  # else priming (§1.9)
                        for message in decode_frames(event.data, self._name):
                            await self._deliver(message, cursor)
                # A block with no data dispatches no event but may still set the
                # id or the retry hint (WHATWG; our own front door ends a polled
                # stream with a bare "retry:" block).
                if decoder.reconnection_ms is not None:
                    cursor.retry_ms = decoder.reconnection_ms
                if decoder.last_event_id is not None:
                    cursor.last_id = decoder.last_event_id or None
                if cursor.finished:
                    break  # the server SHOULD close now; no need to wait for it
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("upstream_stream_broke", server=self._name, error=type(exc).__name__)
        return count

    async def _deliver(self, message: Message, cursor: _Cursor) -> None:
        request_id = message.get("id")
        if "method" not in message and jsonrpc.is_request_id(request_id):
            if cursor.waiting is not None:
                cursor.waiting.discard(request_id)
            if request_id in self._initialize_ids:
                self._learn_version(message)
        await self._inbox.put(message)

    def _learn_version(self, response: Message) -> None:
        result = response.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str) and _VISIBLE_ASCII.match(version):
            self._version = version

    # -- resuming ------------------------------------------------------------

    async def _resume(self, cursor: _Cursor) -> None:
        """Resume a POST stream until it is answered (spec §Resumability), or raise."""
        failures = 0
        while not cursor.finished:
            if cursor.last_id is None:
                raise UpstreamUnavailable(
                    f"server {self._name!r}: the answer's stream broke and had no event ids"
                )
            if failures == RESUME_ATTEMPTS:
                raise UpstreamUnavailable(
                    f"server {self._name!r}: the answer's stream broke; resuming it failed"
                )
            await asyncio.sleep(self._delay(cursor))
            log.debug("upstream_stream_resume", server=self._name, attempt=failures + 1)
            events, refused = 0, False
            try:
                async with self._get(cursor) as response:
                    refused = response is None
                    if response is not None:
                        events = await self._read_events(response, cursor)
            except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
                if self._inbox.ended:
                    raise self._mapped(exc, "GET") from exc
                log.debug("upstream_resume_failed", server=self._name, error=type(exc).__name__)
            if refused:
                raise UpstreamUnavailable(
                    f"server {self._name!r}: the answer's stream broke and GET answered 405"
                )
            failures = 0 if events else failures + 1

    async def _listen(self) -> None:
        """The standalone GET stream (spec §Listening): reopened, or resumed, whenever it ends."""
        cursor = _Cursor(waiting=None)
        failures = 0
        while True:
            try:
                async with self._get(cursor) as response:
                    if response is None:
                        log.debug("upstream_no_get_stream", server=self._name)
                        return
                    failures = 0
                    await self._read_events(response, cursor)
            except UpstreamProtocolError as exc:  # refused, or garbage: do without
                log.warning("upstream_get_stream_failed", server=self._name, error=exc.message)
                return
            except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
                failures += 1
                if self._inbox.ended:
                    return
                if failures == RESUME_ATTEMPTS:
                    self._lose(self._unreachable(exc))
                    return
            await asyncio.sleep(self._delay(cursor))

    def _unreachable(
        self, exc: aiohttp.ClientError | TimeoutError | UpstreamError
    ) -> UpstreamUnavailable:
        error = self._mapped(exc, "GET")
        if isinstance(error, UpstreamUnavailable):
            return error
        return UpstreamUnavailable(error.message)

    @contextlib.asynccontextmanager
    async def _get(self, cursor: _Cursor) -> AsyncIterator[aiohttp.ClientResponse | None]:
        """GET the session's stream, resuming ``cursor``'s if it has an id; None: 405."""
        headers = self._headers(EVENT_STREAM)
        if cursor.last_id is not None:
            headers["Last-Event-ID"] = cursor.last_id
        async with asyncio.timeout(self._timeouts.connect):
            response = await self._up.client.get(
                self._up.url,
                headers=headers,
                timeout=self._up.stream_timeout,
                allow_redirects=False,
            )
        try:
            if response.status == 405:
                yield None
                return
            if response.status == 409:  # our previous GET is not closed upstream yet (§1.6)
                raise UpstreamUnavailable(f"server {self._name!r}: GET answered 409")
            await self._check(response, "GET")
            if response.content_type != EVENT_STREAM:
                raise UpstreamProtocolError(f"server {self._name!r}: GET answered no event stream")
            yield response
        finally:
            response.close()

    def _delay(self, cursor: _Cursor) -> float:
        """The server's ``retry`` (MUST be honoured, §1.9), capped by the read timeout."""
        return min(cursor.retry_ms / 1000, self._timeouts.read)

    # -- ending --------------------------------------------------------------

    def _lose(self, error: UpstreamError) -> None:
        if not self._inbox.ended:
            log.info("upstream_connection_lost", server=self._name, reason=error.message)
            self._inbox.end(error)

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = tasks.spawn(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        if self._close_task is None:
            self._close_task = tasks.spawn(self._shutdown(), name=f"http-close:{self._name}")
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._inbox.end(None)
        grace = self._timeouts.shutdown_grace
        await asyncio.gather(
            *(tasks.cancel_and_wait(t, grace, "connection closed") for t in list(self._tasks))
        )
        if self._session_id is not None and not self._gone:
            await self._delete(grace)

    async def _delete(self, grace: float) -> None:
        """End the upstream session (§1.11, SHOULD); 405 and failures are fine."""
        try:
            async with (
                asyncio.timeout(grace),
                self._up.client.delete(
                    self._up.url, headers=self._headers(ACCEPT_POST), allow_redirects=False
                ) as response,
            ):
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("upstream_delete_failed", server=self._name, error=type(exc).__name__)
            return
        log.debug(
            "upstream_session_deleted",
            server=self._name,
            upstream_session=short(self._session_id),
            status=status,
        )


def _settle(post: _Post, error: UpstreamError | None) -> None:
    if not post.accepted.done():
        post.accepted.set_result(error)


async def _error_text(response: aiohttp.ClientResponse) -> str:
    try:
        return (await response.content.read(ERROR_BODY_BYTES)).decode("utf-8", errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        return ""
