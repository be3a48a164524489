"""Pool: a server's upstream sessions, lent to client sessions (issue #10).

The data's path: front door -> client session (:mod:`bridge.session`) ->
**pool** -> upstream session (:mod:`bridge.pool.upstream_session`) ->
transport (:mod:`bridge.upstreams`). :meth:`Pool.lease` gives a client session
its :class:`~bridge.upstreams.base.UpstreamConnection`, by the server's
sharing mode:

- ``none``: a connection of its own, as before the pool: the client's own
  ``initialize`` goes upstream. For servers that keep per-client state (a
  browser automation server, one that reads its clients' roots). Connections
  are still bounded (``max``) and started at most ``max_starting`` at a time,
  so a burst (every client resuming after a restart) queues instead of
  starting 50 children that all time out; ``min`` started spares wait for new
  sessions, so they do not pay a cold start.
- ``principal`` (the default): a :class:`~bridge.pool.channel.Channel` onto the
  group of upstream sessions of its principal; principals never share.
- ``all``: a channel onto one group for every client.

Bounds, per server: at most ``max`` upstream sessions (children, connections)
exist at once; a request that finds none free waits at most ``wait_timeout``
seconds, and at most ``max_waiting`` requests wait; the rest get 503 with
``Retry-After`` (-32037). A shared upstream session unused for
``idle_timeout`` seconds is closed, down to ``min`` per group.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from bridge import tasks
from bridge.errors import PoolBusy, UpstreamError
from bridge.jsonrpc import Message
from bridge.log import redact, short
from bridge.metrics import Metrics
from bridge.pool.channel import Channel
from bridge.pool.group import Group
from bridge.pool.mux import Lane
from bridge.pool.upstream_session import SessionTimeouts, UpstreamSession
from bridge.upstreams.base import Health, Upstream, UpstreamConnection

log = structlog.get_logger("bridge.pool")

Share = Literal["none", "principal", "all"]
#: Seconds a client turned away by a full pool is told to wait (Retry-After).
RETRY_AFTER = 1


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Counts and seconds; see README "Sharing" and :class:`bridge.settings.PoolSpec`."""

    share: Share
    min: int
    max: int
    max_starting: int
    wait_timeout: float
    max_waiting: int
    idle_timeout: float
    channel_limit: int  # messages queued for one client session on a shared upstream
    channel_bytes: int  # ... and their bytes
    timeouts: SessionTimeouts
    forward_headers: tuple[str, ...] = ()  # the server's; part of the share key
    #: What the server runs or reaches, safe to show anyone (``/readyz``, the
    #: log): ``{"command": ...}`` or ``{"url": ...}`` with credentials redacted.
    target: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Counts:
    starts: int = 0
    failures: int = 0
    losses: int = 0
    refused: int = 0


class Pool:
    def __init__(self, upstream: Upstream, config: PoolConfig, metrics: Metrics) -> None:
        self.name = upstream.name
        self.upstream = upstream
        self.config = config
        self.metrics = metrics
        self.counts = _Counts()
        self.ids = itertools.count(1)  # pool-unique upstream ids and tokens (mux rule 1)
        self._groups: dict[Hashable, Group] = {}
        self._slots = asyncio.Semaphore(config.max_starting)
        self._size = 0  # upstream sessions and dedicated connections, live or starting
        self._dedicated = 0
        self._waiting = 0
        self._changed = asyncio.Event()
        self._spares: list[UpstreamConnection] = []
        self._warming: asyncio.Task[None] | None = None
        self.state: dict[str, str] = {"status": "idle"}
        #: The last upstream session's handshake result (``server/discover`` in mode
        #: ``none`` answers from it rather than start an upstream for the question).
        self.init_result: dict[str, Any] = {}
        #: Set by the 2026-07-28 front door: end the oldest call of a pool held
        #: for its client's input, when a request finds the pool full.
        self.reclaim: Callable[[Pool], bool] = lambda pool: False
        self._closing: set[asyncio.Task[None]] = set()  # private groups closing (release)
        self._closed = False
        self._first_logged = False  # the first connect's outcome (upstream_first_connect)

    # -- leasing -----------------------------------------------------------

    async def lease(
        self, principal: str | None, client_headers: Mapping[str, str] | None = None
    ) -> UpstreamConnection:
        """A connection for a new or resumed client session of ``principal``.

        In the shared modes the group has a live upstream session when this
        returns, so the client's ``initialize`` is answered at once.

        Raises:
            UpstreamError: no upstream session could be started.
            PoolBusy: the pool is at ``max`` and none freed up in time.
        """
        if self.config.share == "none":
            return await self._dedicated_connection(client_headers)
        key = (principal if self.config.share == "principal" else None,
               self._forwarded(client_headers))  # fmt: skip
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(self, key, client_headers)
        channel = group.attach()
        try:
            await group.any_session()
        except BaseException:
            await channel.aclose()
            raise
        return channel

    def group_for(self, principal: str | None, client_headers: Mapping[str, str] | None) -> Group:
        """The group a 2026-07-28 request of ``principal`` is served by (:mod:`bridge.modern`).

        In the shared modes, the group a client session of the same principal
        and forwarded headers would use. In mode ``none`` a private group of
        its own, which :meth:`release` closes when the request is done: no
        upstream session is ever shared in that mode.
        """
        if self.config.share == "none":
            key: Hashable = ("private", next(self.ids))
        else:
            key = (principal if self.config.share == "principal" else None,
                   self._forwarded(client_headers))  # fmt: skip
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(self, key, client_headers)
        return group

    def release(self, group: Group) -> None:
        """A 2026-07-28 request is done with ``group``: close it if it is private.

        The close (a child's exit, up to its shutdown grace) runs in the
        background: the request's answer does not wait for it.
        """
        if self.config.share != "none" or self._groups.get(group.key) is not group:
            return
        del self._groups[group.key]
        live = group.live()
        self._size -= len(live)
        group.discard_all()
        closing = tasks.spawn(self._close_private(group, live), name=f"pool-release:{self.name}")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _close_private(self, group: Group, live: list[UpstreamSession]) -> None:
        for channel in list(group.channels):
            channel.end("request done")
        await asyncio.gather(*(session.aclose() for session in live))
        self.notify()

    def _forwarded(self, headers: Mapping[str, str] | None) -> str:
        """A digest of the headers this server forwards: clients differing there never share."""
        if not self.config.forward_headers or headers is None:
            return ""
        values = "\n".join(f"{n}:{headers.get(n, '')}" for n in self.config.forward_headers)
        return hashlib.sha256(values.encode()).hexdigest()

    # -- capacity ----------------------------------------------------------

    def may_start(self) -> bool:
        """Reserve room for one more upstream session, evicting an idle one if need be."""
        if self._size < self.config.max or self._evict_idle():
            self._size += 1
            return True
        return False

    def _evict_idle(self) -> bool:
        """Close the longest-unused idle session (nothing in flight, no subscriptions).

        Its group starts another on its next request: a cold start for one
        principal rather than a refusal for another (like the hub's release
        of idle sessions for room).
        """
        idle = [
            (session, group)
            for group in self._groups.values()
            for session in group.live()
            if not session.mux.in_flight() and session is not group.home()
        ]
        if not idle:
            return False
        session, group = min(idle, key=lambda pair: pair[0].last_used)
        log.info("pool_session_evicted", server=self.name, group=short(str(group.key)))
        self._size -= 1
        group.discard(session)  # before any await: nothing is dispatched to it
        _ = tasks.spawn(session.aclose(), name=f"pool-evict:{self.name}")
        return True

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """Count a request waiting for an upstream session; bound how long and how many.

        Raises:
            PoolBusy: ``max_waiting`` already wait, or ``wait_timeout`` ran out.
        """
        if self._waiting >= self.config.max_waiting:
            self._refuse("pool_waiting")
        self._waiting += 1
        window = asyncio.timeout(self.config.wait_timeout)
        try:
            async with window:
                yield
        except TimeoutError:
            if window.expired():
                self._refuse("pool_wait")
            raise
        finally:
            self._waiting -= 1

    def _refuse(self, limit: str) -> None:
        self.counts.refused += 1
        self.metrics.limited.labels(limit).inc()
        raise PoolBusy(
            f"server {self.name!r}: all {self.config.max} upstream sessions are busy",
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    def notify(self) -> None:
        """Something may have freed up: wake the requests waiting for a session."""
        self._changed.set()

    async def changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    # -- starting ----------------------------------------------------------

    async def _connect(self, client_headers: Mapping[str, str] | None) -> UpstreamConnection:
        """One transport connection; at most ``max_starting`` at a time."""
        async with self._slots:
            try:
                connection = await self.upstream.connect(client_headers)
            except UpstreamError as exc:
                # A refusal during a restart delay (Retry-After) was logged once, when
                # the crash loop began (upstream_crash_loop): not again per request.
                level = log.info if "Retry-After" in exc.headers else log.warning
                level("upstream_connect_failed", server=self.name, error=exc.message)
                self.metrics.upstream_connects.labels(self.name, "failed").inc()
                self.failing(exc)
                raise
        # Not "up" yet: a Streamable HTTP connect does no I/O. Up once the
        # handshake is done (start_session), or in mode none once the client's
        # own first message is accepted (_Dedicated.send).
        self.metrics.upstream_connects.labels(self.name, "ok").inc()
        return connection

    def up(self) -> None:
        """The upstream took a message or finished a handshake: up (``/readyz``)."""
        if self.state.get("status") != "up":
            self.state = {"status": "up", "since": _now()}
        self._first_outcome(None)

    def failing(self, exc: UpstreamError) -> None:
        """Record a failed connect or handshake for ``/readyz``: what, why, and the errno."""
        self.counts.failures += 1
        self.state = {"status": "failing", "error": redact(exc.message), **failure_errno(exc),
                      **self.config.target, "at": _now()}  # fmt: skip
        self._first_outcome(exc)

    def _first_outcome(self, exc: UpstreamError | None) -> None:
        """Log how the first connect to this server went, once (issue #14 "Run")."""
        if self._first_logged:
            return
        self._first_logged = True
        if exc is None:
            log.info("upstream_first_connect", server=self.name, outcome="ok", **self.config.target)
            return
        log.warning("upstream_first_connect", server=self.name, outcome="failed",
                    error=redact(exc.message), **failure_errno(exc),
                    **self.config.target)  # fmt: skip

    async def start_session(self, group: Group) -> UpstreamSession:
        """Start and initialize an upstream session for ``group`` (room already reserved)."""
        try:
            spare = self._take_spare(group.headers)
            if spare is not None:  # mode none: a private group (2026-07-28) takes a spare
                self._size -= 1  # counted already, as a spare
                self.warm()
            connection = spare or await self._connect(group.headers)
            session = UpstreamSession(
                self.name, connection, self.ids, self.config.timeouts,
                group.route, group.lost, _capable,
            )  # fmt: skip
            try:
                await session.start(group.log_level)
            except BaseException as exc:
                await session.aclose()
                if isinstance(exc, UpstreamError):
                    self.failing(exc)
                raise
        except BaseException:
            self._size -= 1
            self.metrics.pool_starts.labels(self.name, "failed").inc()
            self.notify()
            raise
        self._started()
        self.up()
        self.init_result = session.init_result
        log.info("pool_session_started", server=self.name, group=short(str(group.key)),
                 version=session.version)  # fmt: skip
        return session

    def _started(self) -> None:
        self.counts.starts += 1
        self.metrics.pool_starts.labels(self.name, "ok").inc()

    def session_lost(self, session: UpstreamSession, reason: str) -> None:
        self._size -= 1
        self.counts.losses += 1
        self.metrics.upstream_losses.labels(self.name).inc()
        self.notify()

    # -- mode none -----------------------------------------------------------

    async def _dedicated_connection(
        self, client_headers: Mapping[str, str] | None
    ) -> UpstreamConnection:
        spare = self._take_spare(client_headers)
        if spare is None:
            if not self.may_start():
                async with self.waiting():
                    while not self.may_start():
                        await self.changed()
            try:
                spare = await self._connect(client_headers)
            except BaseException:
                self._size -= 1
                self.notify()
                raise
            self._started()
        self._dedicated += 1
        self.warm()
        return _Dedicated(spare, self)

    def _take_spare(self, client_headers: Mapping[str, str] | None) -> UpstreamConnection | None:
        if self.config.forward_headers and client_headers:
            return None  # a spare was opened without this client's headers
        return self._spares.pop() if self._spares else None

    def release_dedicated(self) -> None:
        self._dedicated -= 1
        self._size -= 1
        self.notify()

    def warm(self) -> None:
        """Start what ``min`` asks for in the background: spares (``none``) or sessions."""
        if self._closed or self._warming is not None or not self.config.min:
            return
        self._warming = tasks.spawn(self._warm(), name=f"pool-warm:{self.name}")
        self._warming.add_done_callback(lambda _: setattr(self, "_warming", None))

    async def _warm(self) -> None:
        try:
            if self.config.share != "none":
                group = self._groups.get((None, ""))
                if group is None:
                    group = self._groups[(None, "")] = Group(self, (None, ""), None)
                while len(group.live()) < self.config.min and self.may_start():
                    group.sessions.append(await self.start_session(group))
                log.info("pool_warm", server=self.name, sessions=len(group.live()))
                return
            while len(self._spares) < self.config.min and self.may_start():
                try:
                    self._spares.append(await self._connect(None))
                except BaseException:
                    self._size -= 1
                    raise
                self._started()
            log.info("pool_warm", server=self.name, spares=len(self._spares))
        except UpstreamError as exc:
            log.warning("pool_warm_failed", server=self.name, error=exc.message)

    # -- upkeep --------------------------------------------------------------

    async def reap(self) -> int:
        """Close shared upstream sessions idle past ``idle_timeout`` (above ``min``)."""
        now = time.monotonic()
        closed = 0
        for key, group in list(self._groups.items()):
            keep = self.config.min if key == (None, "") or group.channels else 0
            for session in group.live():
                idle = not session.mux.in_flight() and session is not group.home()
                if idle and now - session.last_used > self.config.idle_timeout:
                    if len(group.live()) <= keep:
                        break
                    await group.close_session(session)
                    self._size -= 1
                    closed += 1
            if group.idle() and not group.live() and key != (None, ""):
                del self._groups[key]
        if closed:
            log.info("pool_sessions_reaped", server=self.name, count=closed)
            self.notify()
        return closed

    def health(self) -> Health:
        """``/readyz``'s ``pool`` object for this server."""
        sessions = [s for g in self._groups.values() for s in g.live()]
        return {
            "share": self.config.share,
            "size": len(sessions) + self._dedicated + len(self._spares),
            "max": self.config.max,
            "busy": sum(bool(s.mux.in_flight()) for s in sessions) + self._dedicated,
            "waiting": self._waiting,
            "clients": sum(len(g.channels) for g in self._groups.values()) + self._dedicated,
            "starts": self.counts.starts,
            "failures": self.counts.failures,
            "losses": self.counts.losses,
            "refused": self.counts.refused,
        }

    def observe(self) -> None:
        """Set this pool's gauges (at scrape time)."""
        report = self.health()
        busy = int(report["busy"])  # type: ignore[arg-type]
        self.metrics.pool_sessions.labels(self.name, "busy").set(busy)
        self.metrics.pool_sessions.labels(self.name, "idle").set(int(report["size"]) - busy)  # type: ignore[arg-type]
        self.metrics.pool_waiting.labels(self.name).set(self._waiting)

    async def aclose(self) -> None:
        """Close every upstream session and spare (gateway shutdown). Bounded by each close."""
        self._closed = True
        if self._warming is not None:
            await tasks.cancel_and_wait(self._warming, 1.0, "pool closing")
        groups, self._groups = list(self._groups.values()), {}
        await asyncio.gather(*(g.aclose("gateway shutting down") for g in groups))
        if self._closing:  # each bounded by its sessions' own close
            await asyncio.wait(set(self._closing))
        spares, self._spares = self._spares, []
        await asyncio.gather(*(s.aclose() for s in spares))


def _capable(lane: Lane, capability: str) -> bool:
    if not isinstance(lane, Channel):
        return False
    return lane.modern or capability in lane.capabilities


def failure_errno(exc: BaseException) -> dict[str, str]:
    """``{"errno": "ECONNREFUSED", "reason": "Connection refused"}`` from the first
    OS error in ``exc``'s chain (causes and contexts), or ``{}`` if none has one."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        code = getattr(cause, "errno", None)
        if isinstance(cause, OSError) and isinstance(code, int):
            return {"errno": errno.errorcode.get(code, str(code)), "reason": os.strerror(code)}
        cause = cause.__cause__ or cause.__context__
    return {}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(slots=True)
class _Dedicated:
    """A connection of one client session's own (mode ``none``), counted by its pool."""

    connection: UpstreamConnection
    pool: Pool
    _released: bool = field(default=False)
    _accepted: bool = field(default=False)  # the upstream took a message

    async def send(self, message: Message) -> None:
        if self._accepted:
            await self.connection.send(message)
            return
        try:  # the first message (the client's initialize): the handshake, for /readyz
            await self.connection.send(message)
        except UpstreamError as exc:
            self.pool.failing(exc)
            raise
        self._accepted = True
        self.pool.up()

    def messages(self) -> AsyncIterator[Message]:
        return self.connection.messages()

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self.pool.release_dedicated()
        await self.connection.aclose()
