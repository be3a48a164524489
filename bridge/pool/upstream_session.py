"""UpstreamSession: one MCP session with an upstream server, shared by many clients.

The gateway is this session's client (spec-notes §3.4, §4.2): its handshake
names the gateway in ``clientInfo``, offers the newest revision the gateway
serves (the server answers with the one it speaks), and declares only the
client capabilities the gateway can relay (:data:`bridge.pool.mux.RELAYED`;
never ``roots``, see :mod:`bridge.pool.mux` rule 5). Client sessions then
borrow it through :class:`bridge.pool.channel.Channel`; what comes back is
routed by its :class:`~bridge.pool.mux.Mux`.

Health: a session that has heard nothing from its server for
``ping_interval`` seconds sends a ``ping``, bounded by ``ping_timeout``; no
answer ends the session as lost (spec utilities/ping: a timeout MAY mark the
connection dead). A lost session answers every request in flight with a
-32030 error naming the server, and its group replaces it on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import structlog

from bridge import errors, jsonrpc, tasks
from bridge.errors import InvalidRequest, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from bridge.jsonrpc import Message
from bridge.pool.mux import Lane, Mux, Routed
from bridge.upstreams.base import UpstreamConnection

log = structlog.get_logger("bridge.pool")

#: What the gateway calls itself upstream (spec lifecycle §Initialization).
CLIENT_INFO: Final = {"name": "mcp-bridge", "version": "0.1.0"}
#: The client capabilities the gateway relays (mux rule 5: never roots).
CLIENT_CAPABILITIES: Final[dict[str, dict[str, Any]]] = {"sampling": {}, "elicitation": {}}


@dataclass(frozen=True, slots=True)
class SessionTimeouts:
    """Seconds; see :class:`bridge.settings.Settings` (``initialize_timeout``, ``pool_*``)."""

    initialize: float
    ping_interval: float
    ping_timeout: float
    close: float


class UpstreamSession:
    """A live upstream session: its connection, reader, mux and health.

    ``route`` receives every upstream message the mux has decided about,
    ``lost`` is called once when the session ends by itself (never after
    :meth:`aclose`).
    """

    def __init__(
        self,
        server: str,
        connection: UpstreamConnection,
        ids: Iterator[int],
        timeouts: SessionTimeouts,
        route: Callable[[UpstreamSession, Routed], None],
        lost: Callable[[UpstreamSession, str], None],
        capable: Callable[[Lane, str], bool],
    ) -> None:
        self.server = server
        self.mux = Mux(ids)
        self.init_result: dict[str, Any] = {}
        self.started_at = time.monotonic()
        self.last_used = time.monotonic()  # last request sent or answered
        self._conn = connection
        self._ids = ids
        self._timeouts = timeouts
        self._route = route
        self._lost = lost
        self._capable = capable
        self._internal: dict[int, asyncio.Future[Message]] = {}
        self._heard = time.monotonic()
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._started = False  # the handshake is done: a loss from now on is the group's news
        self.closed = False

    @property
    def version(self) -> str:
        """The revision the server answered the gateway's handshake with."""
        return str(self.init_result.get("protocolVersion", jsonrpc.LATEST_VERSION))

    # -- lifecycle ---------------------------------------------------------

    async def start(self, log_level: str | None) -> None:
        """Read, then shake hands as the gateway; set ``log_level`` if any client asked one.

        Raises:
            UpstreamTimeout: no answer within ``initialize`` seconds.
            UpstreamProtocolError: the server refused the handshake.
            UpstreamUnavailable: the connection went away meanwhile.
        """
        self._reader = tasks.spawn(self._read(), name=f"pool-reader:{self.server}")
        params = {
            "protocolVersion": jsonrpc.LATEST_VERSION,
            "capabilities": CLIENT_CAPABILITIES,
            "clientInfo": CLIENT_INFO,
        }
        try:
            async with asyncio.timeout(self._timeouts.initialize):
                self.init_result = await self.call("initialize", params)
                await self.send(jsonrpc.notification("notifications/initialized"))
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self.server!r}: handshake timed out") from exc
        if log_level is not None:  # what the group's clients asked for; not fatal if refused
            try:
                await self.call("logging/setLevel", {"level": log_level})
            except UpstreamError as exc:
                log.warning("pool_set_level_failed", server=self.server, error=exc.message)
        self._started = True
        self._pinger = tasks.spawn(self._ping_when_silent(), name=f"pool-ping:{self.server}")

    async def aclose(self) -> None:
        """Close the connection (reaping a child); answer what is in flight. Bounded."""
        if self.closed:
            return
        self.closed = True
        self._fail_pending("upstream session closed by the gateway")
        current = asyncio.current_task()
        for task in (self._pinger, self._reader):
            if task is not None and task is not current:
                await tasks.cancel_and_wait(task, self._timeouts.close, "pool session closed")
        await self._conn.aclose()

    # -- sending -----------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send one frame upstream; shielded so a leaving client cannot cut it in half.

        Raises:
            UpstreamError: as :meth:`UpstreamConnection.send`.
        """
        send = tasks.spawn(self._conn.send(message), name="pool-send", awaited=True)
        await asyncio.shield(send)

    async def relay(self, message: Message) -> None:
        """Send one frame for a client session, whose own send is shielded already.

        Raises:
            UpstreamError: as :meth:`UpstreamConnection.send`.
        """
        await self._conn.send(message)

    async def request(self, lane: Lane, message: Message, *, exclusive: bool) -> None:
        """Send a client's request under a pool-unique id (mux rule 1).

        Called from a client session's shielded send (:meth:`bridge.session.Session._send`).

        Raises:
            UpstreamError: it could not be sent (the mux forgets it first).
        """
        self.last_used = time.monotonic()
        rewritten = self.mux.request(lane, message, exclusive=exclusive)
        try:
            await self._conn.send(rewritten)
        except UpstreamError:
            self.mux.forget(lane, message["id"])
            raise

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A request of the gateway's own; its result, within ``initialize`` seconds.

        Raises:
            UpstreamProtocolError: the server answered with an error.
            UpstreamUnavailable: the session ended before it answered.
            UpstreamTimeout: no answer in time.
        """
        up_id = next(self._ids)
        waiter = self._internal[up_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._timeouts.initialize):
                await self.send({"jsonrpc": "2.0", "id": up_id, "method": method, "params": params})
                answer = await waiter
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self.server!r}: no answer to {method} in time") from exc
        finally:
            self._internal.pop(up_id, None)
        result = answer.get("result")
        if not isinstance(result, dict):
            error = answer.get("error") or {}
            if error.get("code") == errors.UPSTREAM_UNAVAILABLE and self.closed:
                raise errors.UpstreamUnavailable(str(error.get("message")))
            raise UpstreamProtocolError(
                f"server {self.server!r}: {method} failed: {error.get('message', answer)}"
            )
        return result

    # -- reading -----------------------------------------------------------

    async def _read(self) -> None:
        reason = f"server {self.server!r}: upstream closed the connection"
        try:
            async for message in self._conn.messages():
                self._heard = time.monotonic()
                self._take(message)
        except UpstreamError as exc:
            reason = exc.message
        if not self.closed:
            log.warning("upstream_lost", server=self.server, reason=reason, shared=True)
            self.closed = True
            self._fail_pending(reason)
            if self._started:  # else start() raises, and its caller counts the failure
                self._lost(self, reason)
            with contextlib.suppress(Exception):
                await self._conn.aclose()

    def _take(self, message: Message) -> None:
        try:
            kind = jsonrpc.kind(message)
        except InvalidRequest as exc:
            log.warning("upstream_bad_message", server=self.server, error=str(exc))
            return
        up_id = message.get("id")
        if kind is jsonrpc.Kind.RESPONSE and isinstance(up_id, int):
            waiter = self._internal.get(up_id)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(message)
                return
            self.last_used = time.monotonic()
        self._route(self, self.mux.inbound(message, kind, self._capable))

    def _fail_pending(self, reason: str) -> None:
        for waiter in self._internal.values():
            if not waiter.done():
                error = jsonrpc.error_response(None, errors.UPSTREAM_UNAVAILABLE, reason)
                waiter.set_result(error)
        for routed in self.mux.fail_all(errors.UPSTREAM_UNAVAILABLE, reason):
            self._route(self, routed)

    async def _ping_when_silent(self) -> None:
        interval = self._timeouts.ping_interval
        while not self.closed:
            await asyncio.sleep(max(0.0, self._heard + interval - time.monotonic()))
            if time.monotonic() - self._heard < interval:
                continue
            try:
                async with asyncio.timeout(self._timeouts.ping_timeout):
                    await self.call("ping", {})
            except (TimeoutError, UpstreamError) as exc:
                reason = f"server {self.server!r}: no answer to ping ({exc.__class__.__name__})"
                log.warning("pool_session_unhealthy", server=self.server, reason=reason)
                _ = tasks.spawn(self._give_up(reason), name=f"pool-unhealthy:{self.server}")
                return
            self._heard = time.monotonic()

    async def _give_up(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._fail_pending(reason)
        self._lost(self, reason)
        if self._reader is not None:
            await tasks.cancel_and_wait(self._reader, self._timeouts.close, reason)
        await self._conn.aclose()
