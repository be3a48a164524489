"""The Streamable HTTP front door: POST, GET and DELETE on one endpoint.

Implements spec 2025-03-26 / 2025-06-18 / 2025-11-25 transports §Streamable
HTTP (spec-notes §1). Each handler checks headers in the order the errors
are listed in :mod:`bridge.errors`, hands messages to the session, and then
only relays a :class:`bridge.session.Stream` as SSE.

Requests are answered with an SSE stream, since legacy SSE and stdio
upstreams give no hint of whether progress, logging or a server-to-client
request will precede a response; the exception is a lone request safe to
repeat and without a progress token (:func:`plain_json_suffices`), answered
as plain JSON, with any unrelated upstream message routed elsewhere.
Every event carries an id naming session, stream and position; a GET with
``Last-Event-ID`` resumes that stream (spec 2025-11-25 §Resumability). Clients
of 2025-11-25 get a priming event with a ``retry`` hint first (§1.9).

A POST without a session whose ``_meta`` (or ``MCP-Protocol-Version``) is of
the sessionless 2026-07-28 era goes to :mod:`bridge.frontends.modern_http`:
both eras on one URL (spec-notes §7).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from bridge import handshake, jsonrpc
from bridge.auth import Authenticator
from bridge.errors import (
    InvalidRequest,
    MissingSession,
    NotAcceptable,
    SessionNotFound,
    UnsupportedMediaType,
    UnsupportedProtocolVersion,
)
from bridge.frontends.common import StreamCap, admit, read_body
from bridge.frontends.context import RPC_ID, RPC_METHOD, RPC_TARGET, SESSION_ID
from bridge.frontends.guard import Guard
from bridge.frontends.modern_http import ModernFrontDoor
from bridge.hub import SessionHub
from bridge.jsonrpc import Kind, Message
from bridge.modern.wire import is_modern
from bridge.session import Session
from bridge.streams import Outgoing, Stream

log = structlog.get_logger("bridge.frontend")

SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"
JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream"
FRONT_DOOR: Final = "streamable_http"


@dataclass(frozen=True, slots=True)
class FrontDoorConfig:
    """Seconds and bytes; see :class:`bridge.settings.Settings`."""

    max_body_bytes: int
    keepalive_interval: float
    send_timeout: float
    retry_ms: int  # the SSE retry hint sent with priming events
    poll_after: float  # seconds; close a resumable 2025-11-25 stream then (0: never)
    body_timeout: float
    streams: StreamCap  # GET streams open per principal, shared with the legacy door


@functools.lru_cache(maxsize=64)  # clients send the same few headers again and again
def accepts(header: str, media_type: str) -> bool:
    """Whether an Accept header admits ``media_type`` (RFC 9110 §12.5.1).

    The most specific matching range decides (``type/sub`` over ``type/*``
    over ``*/*``); it admits unless its ``q`` is 0.
    """
    main = media_type.split("/")[0]
    rank = {media_type: 3, f"{main}/*": 2, "*/*": 1}
    best, best_q = 0, 0.0
    for item in header.split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        specificity = rank.get(kind.lower(), 0)
        if specificity > best:
            best, best_q = specificity, _quality(params)
    return best > 0 and best_q > 0


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0


def plain_json_suffices(request: Message) -> bool:
    """Whether a request's reply can be plain JSON instead of a stored SSE stream.

    Only for a lone request that is safe to repeat and asks for no progress:
    nothing the upstream sends can belong on its stream before the response,
    and a client that loses the answer (a gateway crash) can simply ask
    again. It costs no event-store writes (issue #3 "Cost").
    """
    return (
        request.get("method") in handshake.SAFE_TO_REPEAT
        and jsonrpc.progress_token(request) is None
    )


def visible_ascii(value: str) -> bool:
    """Whether ``value`` is visible ASCII, 0x21-0x7E only: what a session id may hold
    (spec-notes §1). Printable ASCII is 0x20-0x7E; the space is the one left out."""
    return value.isascii() and value.isprintable() and " " not in value


class StreamableHttpFrontDoor:
    def __init__(
        self,
        hub: SessionHub,
        config: FrontDoorConfig,
        guard: Guard,
        auth: Authenticator,
        modern: ModernFrontDoor,
    ) -> None:
        self._hub = hub
        self._modern = modern
        self._config = config
        self._guard = guard
        self._auth = auth

    def routes(self, path: str) -> list[web.RouteDef]:
        return [
            web.post(path, self.post),
            # No HEAD: the GET handler opens the session's one standalone
            # stream and writes events, which a HEAD answer must not carry.
            web.get(path, self.get, allow_head=False),
            web.delete(path, self.delete),
        ]

    # -- handlers ----------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        server, principal = await self._admit(request)
        accept = request.headers.get("Accept", "")
        if not (accepts(accept, JSON) and accepts(accept, EVENT_STREAM)):
            raise NotAcceptable(f"Accept must list both {JSON} and {EVENT_STREAM}")
        if request.content_type != JSON:
            raise UnsupportedMediaType(f"Content-Type must be {JSON}")
        body = await self._read_body(request)
        messages, batch = self._parse(body)
        first = messages[0][0]
        if (method := jsonrpc.method(first)) is not None:
            request[RPC_METHOD] = method
        if not batch and (target := jsonrpc.target(first)) is not None:
            request[RPC_TARGET] = target
        if not batch and jsonrpc.is_request_id(first.get("id")):
            request[RPC_ID] = first["id"]
        sessionless = SESSION_HEADER not in request.headers and not batch
        if sessionless and is_modern(first, request.headers):
            return await self._modern.post(request, server, principal, first, messages[0][1])
        if any(m.get("method") == "initialize" for m, _ in messages):
            if batch:
                raise InvalidRequest("initialize must not be part of a JSON-RPC batch")
            session, stream = await self._hub.initialize(
                server, messages[0][0], principal, request.headers
            )
            request[SESSION_ID] = session.id
            client = jsonrpc.params(messages[0][0]).get("clientInfo")
            name = client.get("name") if isinstance(client, dict) else None
            self._hub.metrics.count_client(FRONT_DOOR, name)
            return await self._relay(request, session, stream)
        session = await self._session(request, server, principal)
        if batch and session.record.protocol_version != jsonrpc.PROTOCOL_VERSION_2025_03_26:
            raise InvalidRequest(
                f"JSON-RPC batches are not allowed in protocol version "
                f"{session.record.protocol_version} (only 2025-03-26)"
            )
        requests = [m for m, k in messages if k is Kind.REQUEST]
        for message, kind in messages:
            if kind is not Kind.REQUEST:
                await session.post_other(message, kind)
        if not requests:
            return web.Response(status=202)
        if not batch and plain_json_suffices(requests[0]):
            stream = await session.post_requests(requests, resumable=False, size=len(body))
            return await self._reply_json(session, stream)
        stream = await session.post_requests(requests, size=len(body))
        return await self._relay(request, session, stream)

    async def get(self, request: web.Request) -> web.StreamResponse:
        server, principal = await self._admit(request)
        self._refuse_sessionless(request)
        if not accepts(request.headers.get("Accept", ""), EVENT_STREAM):
            raise NotAcceptable(f"Accept must list {EVENT_STREAM}")
        session = await self._session(request, server, principal)
        await session.mark_used()  # a client that listens is using its session
        last_event_id = request.headers.get("Last-Event-ID") or None  # empty: none (WHATWG)
        with self._config.streams.hold(principal):
            return await self._relay(request, session, await session.open_standalone(last_event_id))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        server, principal = await self._admit(request)
        self._refuse_sessionless(request)
        session_id = self._session_id(request)
        await self._hub.end(session_id, server, principal, "client sent DELETE")
        return web.Response(status=200)

    # -- checks ------------------------------------------------------------

    @staticmethod
    def _refuse_sessionless(request: web.Request) -> None:
        """GET or DELETE without a session: 405, as 2026-07-28 has neither (§Backward
        Compatibility, SHOULD); a session-era client names its revision and gets 400."""
        if SESSION_HEADER in request.headers:
            return
        if request.headers.get(VERSION_HEADER) in jsonrpc.SUPPORTED_VERSIONS:
            raise MissingSession(f"missing {SESSION_HEADER} header (send initialize first)")
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])

    async def _admit(self, request: web.Request) -> tuple[str, str | None]:
        return await admit(request, self._hub, self._guard, self._auth, FRONT_DOOR)

    def _session_id(self, request: web.Request) -> str:
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            version = request.headers.get(VERSION_HEADER, "")
            if version and version not in jsonrpc.SUPPORTED_VERSIONS:
                # spec-notes §7: a sessionless request of a later era (2026-07-28)
                # gets a plain 400, not its own -32020..-32022 codes, so that a
                # dual-era client falls back to initialize.
                raise MissingSession(
                    f"protocol version {version[:40]!r} without a session is not served "
                    f"here; send initialize (supported: {', '.join(jsonrpc.SUPPORTED_VERSIONS)})"
                )
            raise MissingSession(f"missing {SESSION_HEADER} header (send initialize first)")
        request[SESSION_ID] = session_id
        if not visible_ascii(session_id):
            raise SessionNotFound("session not found")
        return session_id

    async def _session(self, request: web.Request, server: str, principal: str | None) -> Session:
        session = await self._hub.get(self._session_id(request), server, principal, request.headers)
        self._check_version(request, session)
        return session

    def _check_version(self, request: web.Request, session: Session) -> None:
        """spec 2025-06-18 transports §Protocol Version Header: bad or unsupported -> 400."""
        version = request.headers.get(VERSION_HEADER)
        if version is None:
            return  # absent: the session's negotiated version (or 2025-03-26) applies
        if version not in jsonrpc.SUPPORTED_VERSIONS and version != session.record.protocol_version:
            raise UnsupportedProtocolVersion(
                f"unsupported {VERSION_HEADER} {version[:40]!r}; "
                f"supported: {', '.join(jsonrpc.SUPPORTED_VERSIONS)}"
            )

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(request, self._config.max_body_bytes, self._config.body_timeout)

    @staticmethod
    def _parse(body: bytes) -> tuple[list[tuple[Message, Kind]], bool]:
        value = jsonrpc.decode(body)
        if isinstance(value, list):
            if not value:
                raise InvalidRequest("empty JSON-RPC batch")
            return [jsonrpc.parse_message(item) for item in value], True
        return [jsonrpc.parse_message(value)], False

    # -- replying ----------------------------------------------------------

    async def _reply_json(self, session: Session, stream: Stream) -> web.StreamResponse:
        """The one response as ``application/json`` (spec §Sending Messages 5)."""
        try:
            item = await stream.get()
        finally:
            session.detach(stream)
        headers = {SESSION_HEADER: session.id}
        if item is None or item[1] is None:  # cancelled by the client: no answer is due
            return web.Response(status=204, headers=headers)
        body = jsonrpc.encode_bytes(item[1])
        return web.Response(body=body, headers=headers, content_type=JSON, charset="utf-8")

    async def _relay(
        self, request: web.Request, session: Session, stream: Stream
    ) -> web.StreamResponse:
        """Relay ``stream`` as SSE until it closes or the client goes away."""
        response = EventSourceResponse(
            headers={SESSION_HEADER: session.id},
            allow_all_methods=True,
            ping_interval=self._config.keepalive_interval,
            send_timeout=self._config.send_timeout,
        )
        response.headers["Cache-Control"] = "no-cache, no-transform"
        poll = self._config.poll_after if stream.resumable_by_client else 0.0
        # spec 2025-11-25 §Sending Messages 6: once the client holds an event id,
        # the server MAY close the connection without ending the stream; the
        # client then resumes it with GET and Last-Event-ID (polling).
        window = asyncio.timeout(poll or None)
        try:
            await response.prepare(request)
            async with response, window:
                while (item := await stream.get()) is not None:
                    await self._send_event(response, item)
        except TimeoutError as exc:
            if window.expired():  # a last retry hint, as SHOULD (§1.9), then close
                with contextlib.suppress(ConnectionResetError):
                    await response.write(f"retry: {self._config.retry_ms}\r\n\r\n".encode())
            else:
                log.info("stream_client_gone", error=exc.__class__.__name__)
        except ConnectionResetError as exc:
            log.info("stream_client_gone", error=exc.__class__.__name__)
        finally:
            session.detach(stream)
        return response

    async def _send_event(self, response: EventSourceResponse, item: Outgoing) -> None:
        event_id, message = item
        if message is None:  # priming: an id to resume from, and when
            await response.send("", id=event_id, retry=self._config.retry_ms)
        else:
            await response.send(jsonrpc.encode(message), id=event_id, event="message")
