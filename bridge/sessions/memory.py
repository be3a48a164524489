"""An in-process :class:`SessionStore`: for tests and throwaway runs.

Nothing survives the process. Records are kept as JSON text, as the durable
stores keep them, so callers can neither share nor mutate what is stored,
and a record that cannot be serialized fails here as it would there.

Expiry is sliding and checked whenever a record is read; every write also
forgets up to :data:`PURGE_BATCH` expired records, oldest write first, so
abandoned sessions do not accumulate.

Records are kept in write order (a write moves a record to the end), so with
one ``ttl`` for every record the oldest write is the first to expire and the
purge stops at the first live record. A record written with a longer ``ttl``
may shelter shorter-lived ones behind it until it expires too; they are still
never returned after their expiry.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Final

from bridge.sessions.store import SessionRecord

#: Most expired records forgotten per write (bounded work per call).
PURGE_BATCH: Final = 100


class MemorySessionStore:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # session id -> (record JSON, expires at); in write order, oldest first.
        self._records: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._values: OrderedDict[str, tuple[str, float]] = OrderedDict()  # put_value, likewise
        # principal -> its records' ids (create's cap), and back.
        self._owners: dict[str | None, dict[str, None]] = {}
        self._owner_of: dict[str, str | None] = {}
        self._used_at: dict[str, float] = {}  # session id -> last create, save or touch

    async def create(
        self,
        record: SessionRecord,
        ttl: float,
        *,
        max_per_principal: int | None = None,
        keep: Collection[str] = (),
    ) -> list[str]:
        await self.save(record, ttl)
        if max_per_principal is None:
            return []
        now, ids = self._clock(), self._owners.get(record.principal, {})
        others = [
            session_id
            for session_id in ids
            if session_id != record.session_id and self._live(session_id, now) is not None
        ]
        excess = max(0, len(others) + 1 - max_per_principal)
        if not excess:
            return []
        others.sort(key=lambda session_id: (self._used_at.get(session_id, 0.0), session_id))
        evicted = [session_id for session_id in others if session_id not in keep][:excess]
        for session_id in evicted:
            self._drop(session_id)
        return evicted

    async def save(self, record: SessionRecord, ttl: float) -> None:
        now = self._purge()
        self._put(record.session_id, record.to_json(), now, ttl)
        self._owner_of[record.session_id] = record.principal
        self._owners.setdefault(record.principal, {})[record.session_id] = None

    async def get(self, session_id: str) -> SessionRecord | None:
        entry = self._live(session_id, self._clock())
        return None if entry is None else SessionRecord.readable(entry[0])

    async def touch(self, session_id: str, ttl: float) -> bool:
        now = self._purge()
        entry = self._live(session_id, now)
        if entry is None:
            return False
        self._put(session_id, entry[0], now, ttl)
        return True

    async def delete(self, session_id: str) -> None:
        self._purge()
        self._drop(session_id)

    async def list(self, limit: int) -> list[SessionRecord]:
        now = self._clock()
        live = (text for text, expires_at in self._records.values() if expires_at > now)
        found = (SessionRecord.readable(text) for text in live)
        return [r for r, _ in zip((r for r in found if r is not None), range(limit), strict=False)]

    async def put_value(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> str:
        now = self._clock()
        for _ in range(PURGE_BATCH):
            oldest = next(iter(self._values.items()), None)
            if oldest is None or oldest[1][1] > now:
                break
            del self._values[oldest[0]]
        current = self._values.get(key)
        if only_new and current is not None and current[1] > now:
            return current[0]
        self._values[key] = (value, now + ttl)
        self._values.move_to_end(key)
        return value

    async def get_value(self, key: str) -> str | None:
        entry = self._values.get(key)
        return entry[0] if entry is not None and entry[1] > self._clock() else None

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def __len__(self) -> int:
        """Records held, including expired ones not purged yet."""
        return len(self._records)

    def _live(self, session_id: str, now: float) -> tuple[str, float] | None:
        entry = self._records.get(session_id)
        if entry is None or entry[1] <= now:
            return None
        return entry

    def _put(self, session_id: str, text: str, now: float, ttl: float) -> None:
        self._records[session_id] = (text, now + ttl)
        self._records.move_to_end(session_id)
        self._used_at[session_id] = now

    def _purge(self) -> float:
        """Forget up to PURGE_BATCH expired records, oldest write first; return now."""
        now = self._clock()
        for _ in range(PURGE_BATCH):
            oldest = next(iter(self._records.items()), None)
            if oldest is None or oldest[1][1] > now:
                break
            self._drop(oldest[0])
        return now

    def _drop(self, session_id: str) -> None:
        """Forget a record and its place in the principal index."""
        self._records.pop(session_id, None)
        self._used_at.pop(session_id, None)
        if session_id not in self._owner_of:
            return
        principal = self._owner_of.pop(session_id)
        ids = self._owners.get(principal)
        if ids is not None:
            ids.pop(session_id, None)
            if not ids:
                del self._owners[principal]
