"""The legacy HTTP+SSE front door (spec 2024-11-05; spec-notes §2).

``GET /sse`` opens a legacy connection: its first event is ``endpoint``, whose
data is the public POST URL ``<prefix>/messages/?session_id=<id>``. Each POST
there carries one JSON-RPC message (no batches) and is answered 202 at once;
everything the server sends, responses included, goes out as ``message``
events on the GET stream.

The connection id is a fresh CSPRNG id; the MCP session is created when the
client POSTs ``initialize``. The connection owns one bounded outbox; a pump
task per request stream (and one for the session's standalone stream) moves
messages into it in order. When the GET stream closes every stream is
detached and, after ``legacy_grace`` seconds, the session is ended: a legacy
client cannot resume (§2.4), it reconnects with a fresh GET and initialize.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from bridge import jsonrpc, tasks
from bridge.auth import Authenticator
from bridge.errors import (
    BridgeError,
    InvalidRequest,
    MissingSession,
    OwnedElsewhere,
    SessionNotFound,
    StoreDown,
    UnsupportedMediaType,
)
from bridge.frontends.common import StreamCap, admit, read_body
from bridge.frontends.context import RPC_ID, RPC_METHOD, RPC_TARGET, SESSION_ID
from bridge.frontends.guard import Guard
from bridge.hub import SessionHub, new_session_id
from bridge.jsonrpc import Kind, Message
from bridge.log import short
from bridge.session import Session
from bridge.sessions.store import StoreUnavailable
from bridge.streams import Stream

log = structlog.get_logger("bridge.frontend.legacy")

FRONT_DOOR: Final = "legacy_sse"
JSON: Final = "application/json"
QUERY_PARAM: Final = "session_id"
_OUTBOX_KEY: Final = 0  # the outbox is not a session stream; its key is unused
#: Seconds a legacy connection's owner key may outlive it in Redis (it is given
#: back when the stream closes; a replica that dies leaves it to expire).
CONNECTION_OWNER_TTL: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class LegacyConfig:
    """Seconds and bytes; see :class:`bridge.settings.Settings`."""

    max_body_bytes: int
    keepalive_interval: float
    send_timeout: float
    queue_size: int
    queue_bytes: int  # byte budget of the outbox (0: none)
    public_path_prefix: str  # mount path behind a reverse proxy, no trailing slash
    grace: float  # seconds the session outlives its GET stream
    deprecation: str  # value of the Deprecation header; empty: none
    body_timeout: float
    streams: StreamCap  # GET streams open per principal, shared with the Streamable HTTP door


class LegacyConnection:
    """One legacy GET stream: its outbox, its session, and the pumps feeding it."""

    def __init__(
        self,
        connection_id: str,
        server: str,
        principal: str | None,
        queue_size: int,
        queue_bytes: int = 0,
    ) -> None:
        self.id = connection_id
        self.server = server
        self.principal = principal  # only its creator may POST to it (spec-notes §1.16)
        self.outbox = Stream(_OUTBOX_KEY, queue_size, queue_bytes)
        self.session: Session | None = None
        self.initializing = False
        self._pumps: set[asyncio.Task[None]] = set()
        self._streams: set[Stream] = set()

    def pump(self, stream: Stream, *, standalone: bool = False) -> None:
        """Move ``stream``'s messages to the outbox, in order, until it closes."""
        self._streams.add(stream)
        name = f"legacy-pump:{short(self.id)}"
        task = tasks.spawn(self._pump(stream, standalone), name=name)
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _pump(self, stream: Stream, standalone: bool) -> None:
        try:
            while (taken := await stream.take()) is not None:
                item, size = taken
                if item[1] is not None:  # skip priming events: no resume here
                    await self.outbox.put(item, size)
        finally:
            self._streams.discard(stream)
            if self.session is not None:
                self.session.detach(stream)
        if standalone:  # the session was released: the legacy connection ends with it
            self.outbox.close()

    def close(self) -> None:
        """The GET stream is gone: stop the pumps and detach every stream."""
        self.outbox.detach()
        self.outbox.close()
        for task in list(self._pumps):
            task.cancel("legacy client left")
        for stream in list(self._streams):
            if self.session is not None:
                self.session.detach(stream)
        self._streams.clear()


class LegacySseFrontDoor:
    def __init__(
        self,
        hub: SessionHub,
        config: LegacyConfig,
        guard: Guard,
        auth: Authenticator,
    ) -> None:
        self._hub = hub
        self._config = config
        self._guard = guard
        self._auth = auth
        self._connections: dict[str, LegacyConnection] = {}
        self._grace: set[asyncio.Task[None]] = set()

    def routes(self, sse_path: str, messages_path: str) -> list[web.RouteDef]:
        return [web.get(sse_path, self.get), web.post(messages_path, self.post)]

    async def aclose(self) -> None:
        """Stop waiting to end sessions of gone clients (the hub releases them)."""
        for task in list(self._grace):
            await tasks.cancel_and_wait(task, 1.0, "shutting down")
        for connection in list(self._connections.values()):
            connection.close()

    # -- handlers ----------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        server, principal = await self._admit(request)
        with self._config.streams.hold(principal):
            return await self._stream(request, server, principal)

    async def _stream(
        self, request: web.Request, server: str, principal: str | None
    ) -> web.StreamResponse:
        connection = LegacyConnection(
            new_session_id(), server, principal, self._config.queue_size, self._config.queue_bytes
        )
        self._connections[connection.id] = connection
        request[SESSION_ID] = connection.id
        try:  # its POSTs may land at another replica, which forwards them here
            await self._hub.owners.adopt(connection.id, CONNECTION_OWNER_TTL)
        except StoreUnavailable as exc:
            log.warning("legacy_owner_unrecorded", error=str(exc))
        response = EventSourceResponse(
            headers=self._headers(),
            ping_interval=self._config.keepalive_interval,
            send_timeout=self._config.send_timeout,
        )
        response.headers["Cache-Control"] = "no-cache, no-transform"
        response.headers["X-Accel-Buffering"] = "no"
        watcher: asyncio.Task[None] | None = None
        try:
            await response.prepare(request)
            watcher = tasks.spawn(
                self._watch(response, connection), name=f"legacy-watch:{short(connection.id)}"
            )
            async with response:
                await response.send(self._endpoint(request, connection), event="endpoint")
                while (item := await connection.outbox.get()) is not None:
                    assert item[1] is not None
                    await response.send(jsonrpc.encode(item[1]), event="message")
        except (ConnectionResetError, TimeoutError) as exc:
            log.info("stream_client_gone", error=exc.__class__.__name__)
        finally:
            if watcher is not None:
                watcher.cancel()
            self._close(connection)
        return response

    async def post(self, request: web.Request) -> web.StreamResponse:
        server, principal = await self._admit(request)
        connection_id = request.query.get(QUERY_PARAM)
        if not connection_id:
            raise MissingSession(f"missing {QUERY_PARAM} query parameter (GET the SSE URL first)")
        request[SESSION_ID] = connection_id
        if request.content_type != JSON:
            raise UnsupportedMediaType(f"Content-Type must be {JSON}")
        body = await self._read_body(request)
        message, kind = self._parse(body)
        if (method := jsonrpc.method(message)) is not None:
            request[RPC_METHOD] = method
        if (target := jsonrpc.target(message)) is not None:
            request[RPC_TARGET] = target
        if jsonrpc.is_request_id(message.get("id")):
            request[RPC_ID] = message["id"]
        connection = self._connections.get(connection_id)
        if connection is None:
            await self._forward_if_held(connection_id)
        if connection is None or (connection.server, connection.principal) != (server, principal):
            raise SessionNotFound(
                "legacy SSE connection not found or closed; open a new one with GET"
            )
        if method == "initialize":
            await self._initialize(request, connection, message)
        else:
            session = connection.session
            if session is None:
                raise InvalidRequest("send initialize first")
            request[SESSION_ID] = session.id
            if kind is Kind.REQUEST:
                stream = await session.post_requests([message], resumable=False, size=len(body))
                connection.pump(stream)
            else:
                await session.post_other(message, kind)
        return web.Response(status=202, text="Accepted", headers=self._headers())

    async def _forward_if_held(self, connection_id: str) -> None:
        """A connection whose stream another live replica holds: forward the POST there.

        Raises:
            OwnedElsewhere: it is held elsewhere (the forwarding middleware takes it).
            StoreDown: the store cannot say.
        """
        try:
            holder = await self._hub.owners.holder(connection_id)
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        if holder is not None:
            raise OwnedElsewhere(holder)

    async def _initialize(
        self, request: web.Request, connection: LegacyConnection, message: Message
    ) -> None:
        if connection.session is not None or connection.initializing:
            raise InvalidRequest("this legacy connection is already initialized")
        connection.initializing = True
        try:
            session, stream = await self._hub.initialize(
                connection.server, message, connection.principal, request.headers
            )
        finally:
            connection.initializing = False
        request[SESSION_ID] = session.id
        client = jsonrpc.params(message).get("clientInfo")
        name = client.get("name") if isinstance(client, dict) else None
        self._hub.metrics.count_client(FRONT_DOOR, name)
        connection.session = session
        if connection.outbox.closed:  # the client left while the upstream started
            session.detach(stream)
            self._close(connection)
            return
        connection.pump(stream)
        connection.pump(await session.open_standalone(), standalone=True)

    # -- lifetimes ---------------------------------------------------------

    async def _watch(self, response: EventSourceResponse, connection: LegacyConnection) -> None:
        """Notice a client that went away while nothing was being sent."""
        await response.wait()
        connection.outbox.close()

    def _close(self, connection: LegacyConnection) -> None:
        if self._connections.pop(connection.id, None) is None:
            return
        self._hub.owners.give_back(connection.id)
        connection.close()
        session = connection.session
        if session is None:
            return
        log.info("legacy_client_left", session_id=short(session.id), grace_s=self._config.grace)
        task = tasks.spawn(
            self._end_later(session.id, connection.server, connection.principal),
            name=f"legacy-end:{short(session.id)}",
        )
        self._grace.add(task)
        task.add_done_callback(self._grace.discard)

    async def _end_later(self, session_id: str, server: str, principal: str | None) -> None:
        await asyncio.sleep(self._config.grace)
        with contextlib.suppress(BridgeError):
            await self._hub.end(session_id, server, principal, "legacy client left")

    # -- checks ------------------------------------------------------------

    async def _admit(self, request: web.Request) -> tuple[str, str | None]:
        return await admit(request, self._hub, self._guard, self._auth, FRONT_DOOR)

    def _headers(self) -> dict[str, str]:
        return {"Deprecation": self._config.deprecation} if self._config.deprecation else {}

    def _endpoint(self, request: web.Request, connection: LegacyConnection) -> str:
        prefix = self._config.public_path_prefix.rstrip("/")
        base = "" if "server" not in request.match_info else f"/servers/{connection.server}"
        return f"{prefix}{base}/messages/?{QUERY_PARAM}={connection.id}"

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(request, self._config.max_body_bytes, self._config.body_timeout)

    @staticmethod
    def _parse(body: bytes) -> tuple[Message, Kind]:
        value = jsonrpc.decode(body)
        if isinstance(value, list):
            raise InvalidRequest("JSON-RPC batches are not part of protocol version 2024-11-05")
        return jsonrpc.parse_message(value)
