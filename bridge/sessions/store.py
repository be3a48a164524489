"""The session store seam (STYLE §3.2, spec-notes §6.2).

A :class:`SessionRecord` holds only facts that can be recreated elsewhere:
what the client sent in ``initialize``, what it was answered, the negotiated
version, which server, and when. Live things (tasks, pipes, sockets) stay in
:class:`bridge.session.Session`, so that a durable store can let another
process pick the session up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class SessionRecord:
    session_id: str
    server: str
    protocol_version: str
    client_params: dict[str, Any]  # the client's initialize params
    init_result: dict[str, Any] = field(default_factory=dict)  # what the client was answered
    created_at: float = 0.0  # Unix seconds
    last_seen_at: float = 0.0  # Unix seconds


class SessionStore(Protocol):
    async def create(self, record: SessionRecord, ttl: float) -> None:
        """Store a new record that expires ``ttl`` seconds after its last touch."""

    async def get(self, session_id: str) -> SessionRecord | None:
        """The record, or None if unknown or expired."""

    async def save(self, record: SessionRecord, ttl: float) -> None:
        """Replace a record's facts (e.g. the initialize result) and its expiry."""

    async def touch(self, session_id: str, ttl: float) -> bool:
        """Push expiry back; False if the record is gone."""

    async def delete(self, session_id: str) -> None:
        """Forget a record; deleting an unknown one is not an error."""
