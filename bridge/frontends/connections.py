"""Client connections: a cap below the open-files limit, a header timeout, quiet accept errors.

Issue #15 ("Slowloris and fd exhaustion"): connections that trickle a header
byte every few seconds held every file descriptor; ``accept()`` then failed,
nobody else got in (``/healthz`` neither), and asyncio logged a traceback per
failure. Here:

- :class:`ConnectionGate` counts the connections it admitted. At
  ``max_connections`` (by default the ``RLIMIT_NOFILE`` soft limit minus
  ``fd_reserve``, kept for upstreams, children and the store, minus the
  listening backlog, which asyncio may accept in one go) a new connection
  closes one with no request in progress and takes its place: the one that
  has waited longest for a request's headers, else the one idle longest
  between requests (a keep-alive client that has just sent a request is
  the last to go); if every connection is serving a request (a stream), the
  new one is closed at once. So ``accept()``
  never runs out of descriptors, and a client that sends its request at once
  gets in even while a slowloris holds every other slot.
- Each connection must deliver a request's line and headers within
  ``header_timeout`` of connecting or of its first byte after the previous
  request, else it is closed (aiohttp has only an idle keepalive timeout, which
  any byte renews).
- :class:`AcceptErrors`: asyncio's "socket.accept() out of system resource"
  reports are counted and logged once per ``accept_error_log_interval``,
  without a traceback.

:class:`GuardedSite` is aiohttp's ``TCPSite`` whose protocol factory wraps
each :class:`~aiohttp.web_protocol.RequestHandler` in a :class:`_Guarded`
protocol. Whether a request is in progress is told by the app's middleware
(:meth:`ConnectionGate.begin` / :meth:`ConnectionGate.end`, keyed by
``request.protocol``), public API only. Refusals count in
``mcp_bridge_limited_total{limit}`` (``connections``,
``connections_evicted``, ``header_timeout``, ``accept``), open connections in
``mcp_bridge_open_connections``.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from bridge.frontends.acceptor import ACCEPT_FAILED, AcceptServer, listening_sockets
from bridge.metrics import Metrics

log = structlog.get_logger("bridge.connections")

MIN_CONNECTIONS: Final = 16  # the computed cap never goes below this
#: The listening socket's backlog. asyncio accepts up to this many
#: connections in one go, and may do so again before the first batch reaches
#: the gate (each connection is made in a task of its own), so a few batches'
#: worth of descriptors (``ACCEPT_HEADROOM``) must be free at the cap.
BACKLOG: Final = 32
ACCEPT_HEADROOM: Final = 4 * BACKLOG


def connection_cap(max_connections: int, fd_reserve: int) -> int:
    """``max_connections``; if 0, the open-files limit less ``fd_reserve`` and accept bursts."""
    if max_connections:
        return max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_CONNECTIONS, soft - fd_reserve - ACCEPT_HEADROOM)


class ConnectionGate:
    """The admitted connections of one process, oldest first, and which are busy."""

    def __init__(self, cap: int, header_timeout: float, metrics: Metrics | None = None) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self._metrics = metrics
        self._open: dict[_Guarded, None] = {}  # insertion order: oldest first
        self._by_handler: dict[object, _Guarded] = {}
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self._changed = asyncio.Event()  # a request began or ended, or a connection closed

    def __len__(self) -> int:
        return len(self._open)

    def _count(self, limit: str) -> None:
        if self._metrics is not None:
            self._metrics.limited.labels(limit).inc()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.open_connections.set(len(self._open))

    def admit(self, conn: _Guarded) -> bool:
        """Whether ``conn`` may open; at the cap, the oldest idle connection makes room."""
        if len(self._open) >= self.cap:
            # Longest waiting for a request's headers first, then longest idle
            # between requests; never one serving a request. By the time each
            # began waiting, not by connection age: a keep-alive client that
            # has just sent its next request (not yet handed to the app) is
            # armed too, but since a moment ago.
            victim = min(
                (c for c in self._open if not c.busy),
                key=lambda c: (not c.armed, c.since),
                default=None,
            )
            if victim is None:
                self.refused += 1
                self._count("connections")
                return False
            self.evicted += 1
            self._count("connections_evicted")
            self._drop(victim)
            victim.close()
        self._open[conn] = None
        self._by_handler[conn.handler] = conn
        self._gauge()
        return True

    def _drop(self, conn: _Guarded) -> None:
        if conn in self._open:
            del self._open[conn]
            self._by_handler.pop(conn.handler, None)
            self._gauge()

    def closed(self, conn: _Guarded) -> None:
        self._drop(conn)
        self._changed.set()

    async def settle(self, within: float) -> None:
        """Shutdown, once the listener is closed: wait at most ``within`` seconds until
        no connection is waiting for its request to begin (accepted, or its next
        request's bytes arriving), so that aiohttp's shutdown, which closes every
        connection not serving a request, drops no request a client has sent."""
        try:
            async with asyncio.timeout(within):
                while any(c.armed and not c.busy for c in self._open):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            waiting = sum(c.armed and not c.busy for c in self._open)
            log.info("shutdown_requests_unsent", connections=waiting, waited_s=within)

    def timed_out_headers(self) -> None:
        self.timed_out += 1
        self._count("header_timeout")

    def begin(self, handler: object, method: str = "POST") -> None:
        """A ``method`` request on ``handler``'s connection is being served (the middleware)."""
        if (conn := self._by_handler.get(handler)) is not None:
            conn.busy += 1
            conn.requests += method != "GET"
            conn.disarm()
            self._changed.set()

    def end(self, handler: object, method: str = "POST") -> None:
        if (conn := self._by_handler.get(handler)) is not None:
            conn.busy = max(0, conn.busy - 1)
            conn.requests = max(0, conn.requests - (method != "GET"))
            conn.since = time.monotonic()  # idle from now
            self._changed.set()

    @property
    def requests(self) -> int:
        """Requests other than GET (a GET may be a stream of hours) being served on the
        connections this gate admitted (a forwarded request comes another way)."""
        return sum(conn.requests for conn in self._open)

    async def requests_served(self, within: float) -> None:
        """Drain, before sessions are handed over: wait at most ``within`` seconds until
        no request other than a GET is being served, so that each request this
        process took reaches its session while this replica still claims sessions.
        Seconds; what is still running then goes on (the drain waits for it)."""
        try:
            async with asyncio.timeout(within):
                while self.requests:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            log.info("drain_requests_running", requests=self.requests, waited_s=within)


class _Guarded(asyncio.Protocol):
    """One client connection: aiohttp's handler, admitted by the gate, with a header timer."""

    def __init__(self, handler: RequestHandler, gate: ConnectionGate) -> None:
        self.handler = handler
        self.gate = gate
        self.busy = 0  # requests in progress
        self.requests = 0  # of them, those other than GET
        #: monotonic seconds since when it has waited for headers (armed) or idled
        self.since = time.monotonic()
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        if not self.gate.admit(self):
            self._transport.abort()
            return
        self._admitted = True
        self.handler.connection_made(self._transport)
        self._arm()

    def _arm(self) -> None:
        if self._timer is None:
            self.since = time.monotonic()
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.gate.header_timeout, self._headers_late)

    @property
    def armed(self) -> bool:
        """Whether a request's headers are due (it connected, or began one, and is not served)."""
        return self._timer is not None

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if not self.busy:
            self.gate.timed_out_headers()
            self.close()

    def close(self) -> None:
        self.disarm()
        self.handler.force_close()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if not self.busy:
            self._arm()  # the first byte of a request: its headers are due in time
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._admitted:
            self.handler.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self._admitted:
            self.gate.closed(self)
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self.handler.resume_writing()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass through a :class:`ConnectionGate`, accepted
    by an :class:`~bridge.frontends.acceptor.AcceptServer` (asyncio's accept semantics on
    any loop)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate) -> None:
        super().__init__(runner, host, port)
        self._gate = gate

    async def start(self) -> None:
        # web.TCPSite.start, with the protocol factory wrapped.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        gate = self._gate

        def factory() -> _Guarded:
            return _Guarded(server(), gate)

        sockets = await listening_sockets(
            self._host, self._port, BACKLOG, reuse_port=bool(self._reuse_port)
        )
        self._server = AcceptServer(sockets, factory, BACKLOG)
        await self._server.start_serving()


class AcceptErrors:
    """A loop exception handler: accept() failures counted, logged once per interval."""

    def __init__(
        self,
        interval: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._metrics = metrics
        self._clock = clock
        self._logged_at: float | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._error: str | None = None
        self.count = 0  # since the last log line
        self.total = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        self.count += 1
        self.total += 1
        if self._metrics is not None:
            self._metrics.limited.labels("accept").inc()
        exc = context.get("exception")
        self._error = str(exc) if exc is not None else None
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= self._interval:
            self.flush()
        elif self._flush is None:  # the count goes out within the interval
            self._flush = loop.call_later(self._logged_at + self._interval - now, self.flush)

    def flush(self) -> None:
        """Log the failures counted since the last line, if any."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.count:
            log.error(
                "accept_failed", count=self.count, interval_s=self._interval, error=self._error
            )
        self._logged_at = self._clock()
        self.count = 0
