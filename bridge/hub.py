"""SessionHub: creates, finds, resumes, releases and closes the sessions of one process.

- ``initialize`` leases an upstream connection from the server's pool
  (:mod:`bridge.pool`: its own, or a channel onto shared upstream sessions)
  and opens a session; the work runs in
  a task the hub owns, so a client that disconnects mid-handshake cannot leak
  a child process or a socket (STYLE rule 5).
- Session ids are 256 bits from ``secrets`` (a CSPRNG), URL-safe base64, so
  visible ASCII as spec 2025-11-25 transports §Session Management 1 requires.
- ``get`` finds a live session, or resumes one from the store: after the
  upstream was released (idle, lost) or after a gateway restart, in this or
  any other process sharing the store. Concurrent requests for a session
  being resumed wait for the same resume.
- A session idle past ``idle_timeout`` (no request, no attached stream) is
  released: its upstream connection and child go, its record stays until the
  store's TTL. Sleeping clients thus cost a record, not a process.
- ``aclose`` releases every session (records kept, so a restarted gateway
  resumes them) within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import structlog

from bridge import jsonrpc, tasks
from bridge.errors import (
    GatewayFull,
    OwnedElsewhere,
    SessionNotFound,
    StoreDown,
    TooManyRequests,
    UnknownServer,
    UpstreamError,
)
from bridge.jsonrpc import Message
from bridge.log import short
from bridge.metrics import Metrics
from bridge.pool import Pool
from bridge.replicas.lease import Owners, Solo
from bridge.session import Session, SessionLimits, Stores
from bridge.sessions.store import SessionRecord, StoreUnavailable
from bridge.sessions.tombstones import Tombstones
from bridge.streams import ByteLedger, Stream
from bridge.upstreams.base import Upstream, UpstreamConnection

log = structlog.get_logger("bridge.hub")

#: Seconds a client turned away by a session limit is told to wait (Retry-After).
LIMIT_RETRY_AFTER: Final = 5
#: Seconds at most a drain waits for the requests taken before it to be served,
#: before it leaves quiet sessions to other replicas (:meth:`SessionHub.drain`):
#: long enough for each to reach its session, short enough that the quiet
#: sessions move on while a long call runs.
DRAIN_SETTLE_MAX: Final = 2.0
#: Sessions this process remembers as held by another replica (past it, it forgets them all).
MAX_ELSEWHERE: Final = 10_000


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Seconds; see :class:`bridge.settings.Settings`."""

    idle_timeout: float
    shutdown_timeout: float
    limits: SessionLimits
    max_sessions: int = 10000  # live client sessions in this process
    max_sessions_per_principal: int = 100  # ... that hold an upstream of their own (share none)
    max_records_per_principal: int = 1000  # stored records, live or not, per principal
    #: Tracing on: wraps each leased connection (server, session id); None: tracing off.
    trace: Callable[[UpstreamConnection, str, str], UpstreamConnection] | None = None


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


class SessionHub:
    def __init__(
        self,
        pools: Mapping[str, Pool],
        stores: Stores,
        config: HubConfig,
        metrics: Metrics,
        owners: Owners | None = None,
    ) -> None:
        self.pools = dict(pools)
        #: Which replica holds which session (:mod:`bridge.replicas.lease`).
        self.owners: Owners = owners or Solo()
        self._draining = False
        #: (session id, server, principal) -> (the live replica holding it, when
        #: learnt): forwarded there without asking the store again, for a third
        #: of a lease; forgotten when forwarding there fails (:meth:`forget_elsewhere`).
        self._elsewhere: dict[tuple[str, str, str | None], tuple[str, float]] = {}
        self._elsewhere_for = self.owners.lease / 3
        self.upstreams: dict[str, Upstream] = {n: p.upstream for n, p in pools.items()}
        self.metrics = metrics
        self.stores = stores
        self._store = stores.sessions
        self._config = config
        self._sessions: dict[str, Session] = {}
        #: Bytes each principal's sessions hold in memory (max_principal_bytes).
        self.ledger = ByteLedger()
        #: Bytes each principal's live sessions stored (max_stored_bytes_per_principal).
        self.stored = ByteLedger()
        #: (session id, server, principal) -> the lookup and resume under way.
        self._resuming: dict[tuple[str, str, str | None], asyncio.Task[Session]] = {}
        self._closing: set[Session] = set()
        #: Ended sessions whose record the store kept (a failed DELETE), oldest first:
        #: never resumed here, however the store answers, until the record's TTL.
        self._tombstones = Tombstones(config.limits.ttl)
        #: principal -> sessions being started or resumed (not yet in _sessions).
        self._starting: Counter[str | None] = Counter()
        # Sliding expiry without a store write per request (issue #3 "Cost").
        self._touch_every = min(config.limits.ttl / 10, 60.0)

    @property
    def upstream_state(self) -> dict[str, dict[str, str]]:
        """server -> {"status": "idle" | "up" | "failing", ...}: for /readyz."""
        return {name: pool.state for name, pool in self.pools.items()}

    @property
    def sole_server(self) -> str | None:
        """The server's name when exactly one is configured (``/mcp``, ``/sse``...), else None."""
        return next(iter(self.pools)) if len(self.pools) == 1 else None

    async def replace_servers(self, pools: Mapping[str, Pool], ending: Mapping[str, str]) -> None:
        """Serve ``pools`` (new servers, or new definitions of old ones) and end the
        servers in ``ending`` (name -> reason) that ``pools`` does not replace.

        The swap happens before the first await: from then on requests find
        the new pools, or no server (404). Then every live session of a server
        in ``ending`` is released (records kept: a changed server's clients
        resume on the new definition) and the old pools close. Bounded by each
        session's and pool's own close.
        """
        old = {name: self.pools.pop(name) for name in ending if name in self.pools}
        for name in ending:
            self.upstreams.pop(name, None)
        self.pools.update(pools)
        self.upstreams.update({name: pool.upstream for name, pool in pools.items()})
        sessions = [s for s in self._sessions.values() if s.record.server in old]
        for session in sessions:
            self._forget(session)
        await asyncio.gather(*(s.close(ending[s.record.server]) for s in sessions))
        await asyncio.gather(*(pool.aclose() for pool in old.values()))
        for name in old:
            ended = sum(s.record.server == name for s in sessions)
            log.info("server_closed", server=name, reason=ending[name], sessions_ended=ended)

    def pool(self, server: str) -> Pool:
        """The pool of ``server``.

        Raises:
            UnknownServer: no such server (any more: a reload may have removed
                it while the request was under way; 404).
        """
        pool = self.pools.get(server)
        if pool is None:
            raise UnknownServer(f"no MCP server named {server!r} here")
        return pool

    def live(self) -> list[Session]:
        """Sessions with an upstream connection in this process."""
        return [s for s in self._sessions.values() if not s.ended.is_set()]

    def __len__(self) -> int:
        """Live sessions (with an upstream connection) in this process."""
        return sum(not s.ended.is_set() for s in self._sessions.values())

    # -- create ------------------------------------------------------------

    async def initialize(
        self,
        server: str,
        request: Message,
        principal: str | None = None,
        client_headers: Mapping[str, str] | None = None,
    ) -> tuple[Session, Stream]:
        """Open a session on ``server`` for ``principal`` and post its ``initialize`` request.

        The session is bound to ``principal``: :meth:`get` and :meth:`end`
        treat it as unknown for anyone else (spec-notes §1.16).
        ``client_headers`` are the HTTP request's, for a server's opt-in
        ``forward_headers``.

        Raises:
            UpstreamError: the upstream could not be reached or started.
            StoreDown: the store could not record the session.
        """
        work = tasks.spawn(
            self._initialize(server, request, principal, client_headers),
            name=f"initialize:{server}",
            awaited=True,
        )
        return await asyncio.shield(work)

    async def _initialize(
        self,
        server: str,
        request: Message,
        principal: str | None,
        client_headers: Mapping[str, str] | None,
    ) -> tuple[Session, Stream]:
        session_id = new_session_id()
        with self._making_room(server, principal):
            connection = await self._connect(server, principal, client_headers, session_id)
        now = time.time()
        params = jsonrpc.params(request)
        record = SessionRecord(
            session_id=session_id,
            server=server,
            protocol_version=str(params.get("protocolVersion", jsonrpc.LATEST_VERSION)),
            client_params=params,
            principal=principal,
            created_at=now,
            last_seen_at=now,
        )
        session = Session(
            record,
            connection,
            self.stores,
            self._config.limits,
            self.metrics,
            self.ledger,
            self.stored,
        )
        try:
            await self.owners.adopt(session_id, session.record_ttl)
            evicted = await self._store.create(
                record,
                session.record_ttl,
                max_per_principal=self._config.max_records_per_principal,
                keep=self._serving(principal),
            )
        except BaseException as exc:
            # Whatever failed, the upstream leased for it belongs to no session.
            await connection.aclose()
            if isinstance(exc, StoreUnavailable):
                raise StoreDown(f"session store unavailable: {exc}") from exc
            raise
        self._sessions[session.id] = session
        session.start()
        log.info(
            "session_started", session_id=short(session.id), server=server, principal=principal
        )
        if evicted:
            self._evicted(evicted)
        return session, await session.post_requests([request])

    # -- find --------------------------------------------------------------

    async def get(
        self,
        session_id: str,
        server: str,
        principal: str | None = None,
        client_headers: Mapping[str, str] | None = None,
    ) -> Session:
        """``principal``'s live session, resumed from the store if need be.

        Raises:
            SessionNotFound: unknown, deleted, expired, another server's or
                another principal's (all look alike, spec 2025-11-25 §Session
                Management 3, spec-notes §1.16).
            StoreDown: the store cannot say (503, never a misleading 404).
            UpstreamError: the session exists but its upstream cannot be resumed now.
        """
        session = self._sessions.get(session_id)
        if session is not None and session.ended.is_set():
            self._forget(session)
            session = None
        if session is None or (session.record.server, session.record.principal) != (
            server,
            principal,
        ):
            # Unknown, ended elsewhere, or another principal's live session: the
            # same store lookup for each, so how long the 404 takes does not tell
            # a stranger that an id is live here (issue #15 "Timing").
            held = self._elsewhere.get((session_id, server, principal))
            if held is not None and time.monotonic() - held[1] < self._elsewhere_for:
                raise OwnedElsewhere(held[0], session_id)
            session = await self._resume(session_id, server, principal, client_headers)
        if (session.record.server, session.record.principal) != (server, principal):
            raise SessionNotFound("session not found")
        self._touch(session)
        return session

    async def _resume(
        self,
        session_id: str,
        server: str,
        principal: str | None,
        client_headers: Mapping[str, str] | None,
    ) -> Session:
        # Keyed by who asks too: a stranger's lookup (a 404) is never the
        # owner's resume, nor the other way round.
        key = (session_id, server, principal)
        task = self._resuming.get(key)
        if task is None:
            task = tasks.spawn(
                self._load_and_resume(session_id, server, principal, client_headers),
                name=f"resume:{short(session_id)}",
                awaited=True,
            )
            self._resuming[key] = task
            task.add_done_callback(lambda _: self._resuming.pop(key, None))
        return await asyncio.shield(task)

    async def _load_and_resume(
        self,
        session_id: str,
        server: str,
        principal: str | None,
        client_headers: Mapping[str, str] | None,
    ) -> Session:
        try:
            record = await self._store.get(session_id)
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        if record is None or not record.init_result or self._tombstones.get(session_id):
            raise SessionNotFound("session not found")
        if (record.server, record.principal) != (server, principal):
            raise SessionNotFound("session not found")  # a stranger must not start an upstream
        if record.server not in self.upstreams:  # removed from the configuration
            raise SessionNotFound("session not found")
        try:
            await self._own(session_id)
        except OwnedElsewhere as held:
            if held.owner is not None:
                if len(self._elsewhere) >= MAX_ELSEWHERE:
                    self._elsewhere.clear()
                self._elsewhere[(session_id, server, principal)] = (held.owner, time.monotonic())
            raise
        with self._making_room(record.server, principal):
            connection = await self._connect(record.server, principal, client_headers, session_id)
        try:
            session = await Session.resume(
                record,
                connection,
                self.stores,
                self._config.limits,
                self.metrics,
                self.ledger,
                self.stored,
            )
        except UpstreamError:
            self.metrics.resumes.labels(record.server, "failed").inc()
            raise
        self.metrics.resumes.labels(record.server, "ok").inc()
        self._sessions[session_id] = session
        return session

    async def _own(self, session_id: str) -> None:
        """Take ``session_id``'s work here, unless a live replica holds it (issue #12).

        Raises:
            OwnedElsewhere: another live replica holds it (forward there), or
                this one is draining and none does (``owner`` None: serve it
                where the request landed).
            StoreDown: the store cannot say who holds it.
        """
        try:
            if self._draining and self.owners.shared:
                await self.owners.give_back_all([session_id])
                # Another live replica holding it serves it (a request that reached
                # this one directly is forwarded there); else whoever forwarded it.
                raise OwnedElsewhere(await self.owners.holder(session_id), session_id)
            owner = await self.owners.claim(session_id, self._config.limits.ttl)
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        if owner != self.owners.me:
            raise OwnedElsewhere(owner, session_id)

    def forget_elsewhere(self, session_id: str) -> None:
        """Forwarding ``session_id`` to the replica remembered for it failed: ask again."""
        for key in [k for k in self._elsewhere if k[0] == session_id]:
            del self._elsewhere[key]

    async def _connect(
        self,
        server: str,
        principal: str | None,
        client_headers: Mapping[str, str] | None,
        session_id: str,
    ) -> UpstreamConnection:
        connection = await self.pool(server).lease(principal, client_headers)
        if self._config.trace is not None:
            return self._config.trace(connection, server, session_id)
        return connection

    @contextlib.contextmanager
    def _making_room(self, server: str, principal: str | None) -> Iterator[None]:
        """Count a session being started for ``principal`` against the limits.

        The per-principal limit counts only sessions with an upstream of their
        own (``share: none``): a session on a shared upstream costs a little
        memory, and the pool bounds the upstream sessions themselves.

        At a limit, the longest-idle session in scope (no stream, nothing in
        flight) has its upstream released to make room: its record stays, so
        its client resumes it transparently on its next request. If none is
        idle, the request is refused with ``Retry-After``.

        Raises:
            TooManyRequests: ``principal`` holds ``max_sessions_per_principal`` busy ones (429).
            GatewayFull: this process holds ``max_sessions`` busy ones (503).
        """
        live = self.live()
        dedicated = self.pool(server).config.share == "none"
        mine = [s for s in live if s.record.principal == principal and self._dedicated(s)]
        retry = {"Retry-After": str(LIMIT_RETRY_AFTER)}
        full = len(mine) + self._starting[principal] >= self._config.max_sessions_per_principal
        if dedicated and full and not self._release_idlest(mine):
            self.metrics.limited.labels("sessions_per_principal").inc()
            raise TooManyRequests("too many sessions for this client", headers=retry)
        live = self.live()  # without a session just released for room
        full = len(live) + self._starting.total() >= self._config.max_sessions
        if full and not self._release_idlest(live):
            self.metrics.limited.labels("sessions").inc()
            raise GatewayFull("this gateway holds as many sessions as it may", headers=retry)
        self._starting[principal] += 1
        try:
            yield
        finally:
            self._starting[principal] -= 1
            if self._starting[principal] <= 0:
                del self._starting[principal]

    def _serving(self, principal: str | None) -> list[str]:
        """Ids of ``principal``'s sessions live here with a stream or request: not evicted."""
        return [
            session_id
            for session_id, session in self._sessions.items()
            if session.record.principal == principal and session.serving()
        ]

    def _evicted(self, session_ids: list[str]) -> None:
        """Records the store deleted for the per-principal cap: release them here too,
        and drop their events (in the background: the new session does not wait)."""
        self.metrics.limited.labels("records_per_principal").inc(len(session_ids))
        log.info("records_evicted", count=len(session_ids))
        closing: list[Session] = []
        for session_id in session_ids:
            session = self._sessions.get(session_id)
            if session is not None:
                self._forget(session)
                closing.append(session)
        _ = tasks.spawn(self._drop_events(session_ids, closing), name="evicted-events")

    async def _drop_events(self, session_ids: list[str], closing: list[Session]) -> None:
        """Close the live ones first: closing answers what was pending on their
        streams, and those answers are events too, to be dropped with the rest."""
        await asyncio.gather(
            *(s.close("limit: record evicted for a newer one") for s in closing),
            return_exceptions=True,
        )
        for session_id in session_ids:
            try:
                await self.stores.events.delete_session(session_id)
            except StoreUnavailable:
                return  # they expire with the session TTL

    def _dedicated(self, session: Session) -> bool:
        pool = self.pools.get(session.record.server)
        return pool is not None and pool.config.share == "none"

    def _release_idlest(self, sessions: list[Session]) -> bool:
        now = time.monotonic()
        idle = [s for s in sessions if s.idle_for(now) > 0 and not s.in_flight()]
        if not idle:
            return False
        victim = max(idle, key=lambda s: s.idle_for(now))
        log.info("session_released_for_room", session_id=short(victim.id))
        self._forget(victim)
        _ = tasks.spawn(
            victim.close("limit: upstream released for a new session"),
            name=f"release:{short(victim.id)}",
        )
        return True

    def _touch(self, session: Session) -> None:
        now = time.monotonic()
        if now - session.last_touch < self._touch_every:
            return
        session.last_touch = now
        _ = tasks.spawn(self._touch_record(session), name=f"touch:{short(session.id)}")

    async def _touch_record(self, session: Session) -> None:
        """Slide the record's expiry; release the live copy if the record is gone.

        This is how an eviction elsewhere (DELETE at another replica, the
        admin command) reaches a gateway holding the session live: within one
        touch period, its next request gets 404.
        """
        try:
            alive = await self._store.touch(session.id, session.record_ttl)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("touch").inc()
            log.warning("store_touch_failed", session_id=short(session.id), error=str(exc))
            return
        if not alive:
            self._forget(session)
            await session.close("session deleted elsewhere")

    # -- end ---------------------------------------------------------------

    async def end(self, session_id: str, server: str, principal: str | None, reason: str) -> None:
        """End a session for good (DELETE): release it and forget its record.

        A session that is stored but not live is forgotten without resuming it.
        A record the store cannot delete is not pretended away: the session
        stays ended in this process (a tombstone, until the record's TTL) and
        the caller learns it (StoreDown, 503); a DELETE repeated later tries
        the store again, as does the reaper.

        Raises:
            SessionNotFound: as for :meth:`get` (another principal's session included).
            StoreDown: the store cannot be reached, or could not delete the record.
        """
        session = self._sessions.get(session_id)
        mine = session is not None and (session.record.server, session.record.principal) == (
            server,
            principal,
        )
        if session is not None and mine and not session.ended.is_set():
            await session.close(reason, forget=True)
            self._sessions.pop(session_id, None)
            self.owners.give_back(session_id)
            if session.forget_error is not None:
                self._tombstones.bury(session_id, server, principal)
                raise StoreDown(f"session store could not delete it: {session.forget_error}")
            return
        try:  # another principal's live session too: the same lookup as an unknown id
            record = await self._store.get(session_id)
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        tombstone = self._tombstones.get(session_id)
        if record is None and tombstone is not None and tombstone.principal == principal:
            self._tombstones.discard(session_id)  # deleted since (the reaper, the TTL, a replica)
            return
        if record is None or (record.server, record.principal) != (server, principal):
            raise SessionNotFound("session not found")
        try:  # held live by another replica: it must end its upstream work too
            holder = await self.owners.holder(session_id)
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        if holder is not None:
            raise OwnedElsewhere(holder, session_id)
        try:
            await self._store.delete(session_id)
        except StoreUnavailable as exc:
            self._tombstones.bury(session_id, server, principal)
            raise StoreDown(f"session store could not delete it: {exc}") from exc
        self._tombstones.discard(session_id)
        try:
            await self.stores.events.delete_session(session_id)
        except StoreUnavailable as exc:  # without a record nobody replays them; TTL removes them
            log.warning("event_delete_failed", session_id=short(session_id), error=str(exc))

    def _forget(self, session: Session) -> None:
        """Drop a released session from the live map; keep waiting for its close."""
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
            self.owners.give_back(session.id)
        if not session.closed:
            self._closing.add(session)
            session.on_closed(lambda: self._closing.discard(session))

    async def reap(self) -> int:
        """Release sessions idle past the timeout and drop released ones; return how many."""
        now = time.monotonic()
        idle = [
            s
            for s in list(self._sessions.values())
            if s.ended.is_set() or s.idle_for(now) > self._config.idle_timeout
        ]
        for session in idle:
            self._forget(session)
        await asyncio.gather(*(s.close("idle: upstream released") for s in idle))
        return len(idle)

    async def let_go(self, reason: str) -> None:
        """Release every live session, records kept, and go on serving (issue #12).

        For a replica whose lease lapsed: another may have taken its sessions,
        and at most one replica drives a session's upstream work.
        """
        sessions = list(self._sessions.values())
        for session in sessions:
            self._forget(session)
        await asyncio.gather(*(s.close(reason, hand_over=True) for s in sessions))

    async def run_reaper(self) -> None:
        """Reap forever, checking often enough that no session outlives its timeout by half.

        The interval follows the pools in force (a reload may add one with a
        shorter idle timeout).
        """
        while True:
            pools = [p.config.idle_timeout for p in self.pools.values()]
            await asyncio.sleep(min(min(self._config.idle_timeout, *pools) / 2, 30.0))
            await self.reap()
            if self._tombstones:
                await self._tombstones.retry(self._store)
            for pool in self.pools.values():
                await pool.reap()

    async def drain(
        self, grace: float, settle: Callable[[float], Awaitable[None]] | None = None
    ) -> None:
        """Shutdown, first part: close GET streams, let in-flight requests finish.

        Waits at most ``grace`` seconds for every request to be answered;
        what is still pending then is handed over by :meth:`aclose`.

        ``settle(seconds)``, if given, runs first, while this replica still
        claims sessions: the front doors' wait for the requests they took to
        be served (:meth:`~bridge.frontends.connections.ConnectionGate.requests_served`),
        at most :data:`DRAIN_SETTLE_MAX`. Only then are sessions left to other
        replicas: a request that was on its way as the drain began, for a
        session handed over meanwhile, would find no replica holding it and
        nowhere to be forwarded (503 -32038). A request still running after
        the wait has reached its session, which stays busy until it is answered.
        """
        deadline = asyncio.get_running_loop().time() + grace
        for session in self.live():
            session.close_standalone()
        if settle is not None:
            await settle(min(grace, DRAIN_SETTLE_MAX))
        self._draining = True  # sessions not live here are left to other replicas
        live = self.live()
        for session in live:  # those resumed meanwhile too
            session.close_standalone()
        busy = [s for s in live if s.in_flight()]
        log.info("draining", sessions=len(live), busy=len(busy), grace_s=grace)
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.gather(*(self._hand_over_when_quiet(s) for s in live))
        except TimeoutError:
            log.warning("drain_grace_over", still_busy=sum(bool(s.in_flight()) for s in busy))

    async def _hand_over_when_quiet(self, session: Session) -> None:
        """Wait until no request of ``session`` is on its way upstream or waits there; then,
        with replicas, release it.

        Released the moment it is quiet (nothing awaited between the check and
        the release) and its owner key given back, its next request is served
        by another replica (forwarded here, it is answered "moved"), instead
        of starting here and being cut by :meth:`aclose` (-32035).
        """
        await session.wait_quiet()
        if self.owners.shared:
            self._forget(session)
            await session.close("gateway draining: handed over", hand_over=True)

    async def aclose(self) -> None:
        """Release every session (records kept), bounded by ``shutdown_timeout``.

        Requests still pending on resumable streams are handed over to
        whichever gateway the client resumes at (see :meth:`Session.close`).
        """
        sessions = [*self._sessions.values(), *self._closing]
        self._sessions = {}
        self._draining = True
        if not sessions:
            await self.owners.give_back_all([])
            await self.close_pools()
            return
        log.info("releasing_sessions", count=len(sessions))
        try:
            async with asyncio.timeout(self._config.shutdown_timeout):
                await asyncio.gather(
                    *(s.close("gateway shutting down", hand_over=True) for s in sessions)
                )
        except TimeoutError:
            log.error("shutdown_timeout", timeout_s=self._config.shutdown_timeout)
        await self.owners.give_back_all(s.id for s in sessions)  # handed over: free to take
        await self.close_pools()

    async def close_pools(self) -> None:
        """Close every pool's upstream sessions (after the client sessions let go)."""
        await asyncio.gather(*(pool.aclose() for pool in self.pools.values()))
