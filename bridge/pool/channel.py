"""Channel: a client session's connection onto a shared group of upstream sessions.

A :class:`Channel` is an :class:`~bridge.upstreams.base.UpstreamConnection`,
so :class:`bridge.session.Session` drives it exactly as it would drive a
child's pipes (STYLE §3.2: one interface at every layer). Behind it, the
client's protocol state is the gateway's to virtualize (issue #10):

- ``initialize`` is answered by the gateway from the group's upstream
  handshake: the server's ``serverInfo``, ``capabilities`` and
  ``instructions``, at the version this client negotiated with the gateway
  (spec-notes §4.2). No round trip once the pool is warm, and a client that
  resumes after a restart never replays its ``initialize`` upstream.
  ``notifications/initialized`` stays here.
- The client's capabilities decide what it can be asked: a sampling or
  elicitation request goes only to a client that declared it (spec-notes §4.3).
- ``logging/setLevel`` is this client's own: the upstream runs at the most
  verbose level any client of the group asked for, and each client receives
  only log messages at or above its own level.
- ``resources/subscribe`` is reference-counted upstream; ``resources/updated``
  reaches only subscribers.
- ``ping`` goes upstream like any request: a client that pings wants to know
  that the server answers, not only the gateway.
- ``notifications/cancelled`` cancels only this client's request.

Everything else goes to the group (:class:`bridge.pool.group.Group`), which
picks an upstream session under the attribution rules of :mod:`bridge.pool.mux`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog

from bridge import errors, jsonrpc
from bridge.errors import UpstreamError, UpstreamUnavailable
from bridge.jsonrpc import Kind, Message
from bridge.pool.mux import CANCELLED, LOG, RELAYED

if TYPE_CHECKING:
    from bridge.pool.group import Group

log = structlog.get_logger("bridge.pool")

#: RFC 5424 severities, as MCP logging uses them, least severe first.
LOG_LEVELS: Final = (
    "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
)  # fmt: skip
#: Client notifications that concern only the gateway (or roots, never relayed).
KEPT_HERE: Final = frozenset({"notifications/initialized", "notifications/roots/list_changed"})


def severity(level: object) -> int:
    """A log level's rank (0 = debug); unknown levels rank as debug."""
    return LOG_LEVELS.index(level) if level in LOG_LEVELS else 0


class Channel:
    """One client session's view of a shared upstream (see the module docstring).

    ``limit`` (messages) and ``max_bytes`` bound what is queued for a client
    session that does not read it: past either the channel ends (the session's
    pending requests get -32030) rather than hold the shared reader, and so
    every other client, up. A message is measured only when it has to queue
    behind others: a session that keeps up costs no encoding here.
    """

    def __init__(self, group: Group, limit: int, max_bytes: int, *, modern: bool = False) -> None:
        self._group = group
        #: A 2026-07-28 exchange's lane (:mod:`bridge.modern`): it is asked every
        #: server request attributed to it and decides itself; with no log
        #: level it gets no log messages (2026-07-28 server/utilities/logging).
        self.modern = modern
        self._limit = limit
        self._max_bytes = max_bytes
        self._queued_bytes = 0
        self.capabilities: frozenset[str] = frozenset()
        self.version = jsonrpc.LATEST_VERSION
        self.log_level: str | None = None
        self.subscriptions: set[str] = set()
        self._inbox: deque[tuple[Message, int]] = deque()
        self._readable = asyncio.Event()
        self._ended: str | None = None  # why the channel ended, once it has
        self.closed = False

    def __repr__(self) -> str:
        return f"<Channel {self._group.server} {id(self):x}>"

    # -- UpstreamConnection -------------------------------------------------

    async def send(self, message: Message) -> None:
        """Take one message of the client session's (see the module docstring).

        Raises:
            UpstreamUnavailable: the channel has ended, or no upstream session
                could be had (with ``Retry-After`` when the pool is full).
            UpstreamError: the upstream session failed to take it.
        """
        if self._ended is not None:
            raise UpstreamUnavailable(self._ended)
        kind = jsonrpc.kind(message)
        if kind is Kind.REQUEST:
            await self._request(message)
        elif kind is Kind.RESPONSE:
            await self._group.answer(self, message)
        elif message.get("method") == CANCELLED:
            await self._group.cancel(self, message)
        # Other client notifications (initialized, roots changes, progress
        # for a server request) have no upstream meaning on a shared session.

    async def messages(self) -> AsyncIterator[Message]:
        """What the group routed to this client session; ends when the channel does.

        Raises:
            UpstreamUnavailable: the channel ended abnormally (a client too slow).
        """
        while True:
            while self._inbox:
                message, size = self._inbox.popleft()
                self._queued_bytes -= size
                yield message
            if self._ended is not None:
                if self.closed:
                    return
                raise UpstreamUnavailable(self._ended)
            self._readable.clear()
            await self._readable.wait()

    async def aclose(self) -> None:
        """Leave the group: cancel what is in flight, drop subscriptions. Never raises."""
        if self.closed:
            return
        self.closed = True
        self._end("channel closed")
        await self._group.leave(self)

    # -- from the group ----------------------------------------------------

    def push(self, message: Message) -> None:
        """Queue an upstream message for the client session (filtered by its log level)."""
        if self._ended is not None:
            return
        if message.get("method") == LOG and self._below_level(message):
            return
        size = jsonrpc.size(message) if self._inbox else 0
        if len(self._inbox) >= self._limit or self._queued_bytes + size > self._max_bytes:
            log.warning("pool_client_too_slow", server=self._group.server,
                        queued=len(self._inbox), queued_bytes=self._queued_bytes)  # fmt: skip
            self._end(f"server {self._group.server!r}: client session too slow to read")
            self._group.drop_later(self)
            return
        self._queued_bytes += size
        self._inbox.append((message, size))
        self._readable.set()

    def _below_level(self, message: Message) -> bool:
        if self.log_level is None:
            # never set: the server's own default applies, as it would directly; a
            # 2026-07-28 request that asked for no level MUST get none.
            return self.modern
        return severity(jsonrpc.params(message).get("level")) < severity(self.log_level)

    def end(self, reason: str) -> None:
        """The pool is closing: end the client session's connection."""
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
        self._readable.set()

    # -- virtualized requests ---------------------------------------------

    async def _request(self, message: Message) -> None:
        method = message["method"]
        params = jsonrpc.params(message)
        try:
            if method == "initialize":
                self._learn(params)
                result = await self._group.initialize_result(self.version)
            elif method == "logging/setLevel":
                result = await self._set_level(params.get("level"))
            elif method in ("resources/subscribe", "resources/unsubscribe"):
                result = await self._group.subscribe(self, params.get("uri"), method)
            else:
                await self._group.dispatch(self, message)
                return
        except Refused as exc:
            self.push(jsonrpc.error_response(message["id"], exc.code, exc.text))
            return
        self.push({"jsonrpc": "2.0", "id": message["id"], "result": result})

    def _learn(self, params: Mapping[str, Any]) -> None:
        capabilities = params.get("capabilities")
        declared = capabilities if isinstance(capabilities, dict) else {}
        self.capabilities = frozenset(name for name in RELAYED if name in declared)
        version = params.get("protocolVersion")
        if version in jsonrpc.SUPPORTED_VERSIONS:
            self.version = str(version)

    async def _set_level(self, level: object) -> dict[str, Any]:
        if level not in LOG_LEVELS:
            raise Refused(errors.INVALID_PARAMS, f"unknown log level {str(level)[:40]!r}")
        previous, self.log_level = self.log_level, str(level)
        try:
            await self._group.apply_log_level()
        except UpstreamError as exc:
            self.log_level = previous
            raise Refused(exc.jsonrpc_code, exc.message) from exc
        return {}


class Refused(Exception):
    """A virtualized request is answered with a JSON-RPC error (``code``, ``text``)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
