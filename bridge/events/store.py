"""The event store seam: SSE events kept per session and stream for replay.

spec 2025-11-25 transports §Resumability; spec-notes §1.8, §6.1. The gateway
writes every event of a resumable stream here before sending it; a client
that reconnects with ``Last-Event-ID`` gets what followed on *that* stream
only, in order, exactly once.

Stores deal in ``(session_id, stream, position)``: ``stream`` is an opaque
name the session picks (unique within the session across restarts), and
``position`` is the store's own, strictly increasing within a stream. The
SSE ``id`` the client sees is composed from them by :mod:`bridge.events.ids`;
stores never parse it. Every key is namespaced by session, so one session's
events can never be replayed to another (GHSA-84j6-jc92-77jm).

Bounded: a stream keeps at most ``max_events`` events (oldest dropped), and
everything of a session expires ``ttl`` seconds after its last append.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from bridge.jsonrpc import Message


@dataclass(frozen=True, slots=True)
class StoredEvent:
    position: str
    message: Message | None  # None: a priming event (empty data)


class EventStore(Protocol):
    async def append(
        self, session_id: str, stream: str, message: Message | None, ttl: float
    ) -> str:
        """Store one event at the end of ``stream``; return its position.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """

    def replay_after(
        self, session_id: str, stream: str, position: str
    ) -> AsyncIterator[StoredEvent]:
        """The events of ``stream`` stored after ``position``, oldest first.

        ``position`` "" means from the start of the stream (all it still
        holds). An unknown stream, or a position it no longer holds (trimmed,
        expired, never there), yields nothing rather than a partial replay.
        """

    async def delete_session(self, session_id: str) -> None:
        """Forget every stream of the session."""
