"""The session store seam (STYLE §3.2, spec-notes §6.2).

A :class:`SessionRecord` holds only facts that can be recreated elsewhere:
what the client sent in ``initialize``, what it was answered, the negotiated
version, which server, the log level and subscriptions the client set, and
when. Live things (tasks, pipes, sockets) stay in
:class:`bridge.session.Session`, so that any gateway process that reaches the
store can pick the session up.

Every store keeps a record for ``ttl`` seconds after its last write or
touch (sliding expiry), and forgets it after that without being asked.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

log = structlog.get_logger("bridge.sessions")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class StoreUnavailable(Exception):
    """The store cannot be reached (e.g. Redis is down). Never a client's fault."""


@dataclass(slots=True)
class SessionRecord:
    session_id: str
    server: str  # upstream name
    protocol_version: str  # negotiated with the downstream client
    client_params: dict[str, Any]  # the client's initialize params, as sent
    init_result: dict[str, Any] = field(default_factory=dict)  # what the client was answered
    upstream: dict[str, Any] = field(default_factory=dict)  # upstream session facts
    log_level: str | None = None  # last logging/setLevel params.level
    subscriptions: list[str] = field(default_factory=list)  # resources/subscribe URIs
    principal: str | None = None  # who created it (front-door auth)
    created_at: float = 0.0  # Unix seconds
    last_seen_at: float = 0.0  # Unix seconds
    used: bool = False  # the client did more than initialize (kept for the full TTL)

    def summary(self) -> dict[str, Any]:
        """What an operator lists: no client params beyond the client's name."""
        client = self.client_params.get("clientInfo") or {}
        return {
            "session_id": self.session_id,
            "server": self.server,
            "protocol_version": self.protocol_version,
            "principal": self.principal,
            "client": f"{client.get('name', '?')} {client.get('version', '')}".strip(),
            "created_at": _iso(self.created_at),
            "last_seen_at": _iso(self.last_seen_at),
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionRecord:
        """Raises ValueError (bad JSON) or TypeError (fields missing or unknown)."""
        return cls(**json.loads(text))

    @classmethod
    def readable(cls, text: str | bytes) -> SessionRecord | None:
        """The record, or None (logged) if the stored text is not one.

        A record written by hand, truncated, or by an incompatible version is
        no session this gateway can serve: its client gets 404 and starts a
        new one, never a 500 on every request (issue #15).
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not all(
                isinstance(data.get(name), str) for name in ("session_id", "server")
            ):
                raise TypeError("not a record")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            log.error("record_unreadable", error=type(exc).__name__, size=len(text))
            return None


class SessionStore(Protocol):
    async def create(
        self,
        record: SessionRecord,
        ttl: float,
        *,
        max_per_principal: int | None = None,
        keep: Collection[str] = (),
    ) -> list[str]:
        """Store a new record that expires ``ttl`` seconds after its last touch.

        With ``max_per_principal``, the records of ``record.principal`` (None
        is one principal too) are capped: past it, the other records of that
        principal unused the longest (the oldest last create, save or touch,
        whatever their TTL) are deleted, events not included, except those in
        ``keep`` (sessions serving a stream or a request right now); with too
        few others to delete, the principal stays over the cap. Returns the
        ids deleted so.
        """

    async def get(self, session_id: str) -> SessionRecord | None:
        """The record, or None if unknown or expired."""

    async def save(self, record: SessionRecord, ttl: float) -> None:
        """Replace a record's facts and push its expiry back to ``ttl`` seconds."""

    async def touch(self, session_id: str, ttl: float) -> bool:
        """Push expiry back to ``ttl`` seconds from now; False if the record is gone."""

    async def delete(self, session_id: str) -> None:
        """Forget a record (not its events: see EventStore.delete_session); unknown ids are fine."""

    async def list(self, limit: int) -> list[SessionRecord]:
        """Up to ``limit`` live records, in no particular order (for operators)."""

    async def put_value(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> str:
        """Keep ``value`` under ``key`` for ``ttl`` seconds; the value now stored.

        With ``only_new``, an existing live value is kept (and returned): the
        first writer wins, as replicas agreeing on one secret need. Values live
        apart from session records (the 2026-07-28 front door's holds and key).
        """

    async def get_value(self, key: str) -> str | None:
        """The live value under ``key``, or None."""

    async def ping(self) -> None:
        """Return if the store takes a write and reads it back, else raise StoreUnavailable.

        The readiness probe: it writes and reads what sessions use (SQLite's
        sessions table, a Redis key under the prefix), so a store that answers
        a ``PING`` but refuses writes (an ACL, a full disk, a corrupt page)
        is reported as down. It leaves nothing a reader sees: the probe record
        is already expired (SQLite) or expires within a minute (Redis).
        """

    async def aclose(self) -> None:
        """Release connections and files."""
