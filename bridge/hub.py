"""SessionHub: creates, finds, reaps and closes the live sessions of one process.

- ``initialize`` opens an upstream connection and a session; the work runs in
  a task the hub owns, so a client that disconnects mid-handshake cannot leak
  a child process or a socket (STYLE rule 5).
- Session ids are 256 bits from ``secrets`` (a CSPRNG), URL-safe base64, so
  visible ASCII as spec 2025-11-25 transports §Session Management 1 requires.
- A session idle past ``session_idle_timeout`` (no request and no attached
  stream) is ended and its upstream released.
- ``aclose`` ends every session concurrently within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from bridge import jsonrpc, tasks
from bridge.errors import SessionNotFound
from bridge.jsonrpc import Message
from bridge.log import short
from bridge.session import Session, SessionLimits, Stream
from bridge.sessions.store import SessionRecord, SessionStore
from bridge.upstreams.base import Upstream

log = structlog.get_logger("bridge.hub")


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Seconds; see :class:`bridge.settings.Settings`."""

    idle_timeout: float
    shutdown_timeout: float
    limits: SessionLimits


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


class SessionHub:
    def __init__(
        self, upstreams: Mapping[str, Upstream], store: SessionStore, config: HubConfig
    ) -> None:
        self.upstreams = dict(upstreams)
        self._store = store
        self._config = config
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        """Live sessions (not ended)."""
        return sum(not s.ended.is_set() for s in self._sessions.values())

    async def initialize(self, server: str, request: Message) -> tuple[Session, Stream]:
        """Open a session on ``server`` and post its ``initialize`` request.

        Raises:
            UpstreamError: the upstream could not be reached or started.
        """
        work = tasks.spawn(
            self._initialize(server, request), name=f"initialize:{server}", awaited=True
        )
        return await asyncio.shield(work)

    async def _initialize(self, server: str, request: Message) -> tuple[Session, Stream]:
        connection = await self.upstreams[server].connect()
        now = time.time()
        params = jsonrpc.params(request)
        record = SessionRecord(
            session_id=new_session_id(),
            server=server,
            protocol_version=str(params.get("protocolVersion", jsonrpc.LATEST_VERSION)),
            client_params=params,
            created_at=now,
            last_seen_at=now,
        )
        session = Session(record, connection, self._store, self._config.limits)
        self._sessions[session.id] = session
        await self._store.create(record, self._config.limits.ttl)
        session.start()
        log.info("session_started", session_id=short(session.id), server=server)
        return session, await session.post_requests([request])

    def get(self, session_id: str, server: str) -> Session:
        """The live session, if it belongs to ``server``.

        Raises:
            SessionNotFound: unknown, ended, or another server's (all look alike).
        """
        session = self._sessions.get(session_id)
        if session is None or session.record.server != server or session.ended.is_set():
            raise SessionNotFound("session not found")
        return session

    async def end(self, session_id: str, server: str, reason: str) -> None:
        """End a session (DELETE); later use gets 404.

        Raises:
            SessionNotFound: as for :meth:`get`.
        """
        session = self.get(session_id, server)
        await session.close(reason)
        self._sessions.pop(session_id, None)

    async def reap(self) -> int:
        """End sessions idle past the timeout and forget ended ones; return how many.

        A session stays known until its close has finished, so that
        :meth:`aclose` can wait for closes already under way.
        """
        now = time.monotonic()
        idle = [
            s
            for s in self._sessions.values()
            if s.ended.is_set() or s.idle_for(now) > self._config.idle_timeout
        ]
        if idle:
            await asyncio.gather(*(s.close("session idle timeout") for s in idle))
        for session in idle:
            self._sessions.pop(session.id, None)
        return len(idle)

    async def run_reaper(self) -> None:
        """Reap forever, checking often enough that no session outlives its timeout by half."""
        interval = min(self._config.idle_timeout / 2, 30.0)
        while True:
            await asyncio.sleep(interval)
            await self.reap()

    async def aclose(self) -> None:
        """End every session, bounded by ``shutdown_timeout``."""
        sessions, self._sessions = list(self._sessions.values()), {}
        if not sessions:
            return
        log.info("closing_sessions", count=len(sessions))
        try:
            async with asyncio.timeout(self._config.shutdown_timeout):
                await asyncio.gather(*(s.close("gateway shutting down") for s in sessions))
        except TimeoutError:
            log.error("shutdown_timeout", timeout_s=self._config.shutdown_timeout)
