"""An in-process :class:`SessionStore`: for tests and throwaway runs.

Nothing survives the process; expiry is checked when a record is read.
"""

from __future__ import annotations

import dataclasses
import time

from bridge.sessions.store import SessionRecord


class MemorySessionStore:
    def __init__(self) -> None:
        self._records: dict[str, tuple[SessionRecord, float]] = {}

    async def create(self, record: SessionRecord, ttl: float) -> None:
        await self.save(record, ttl)

    async def save(self, record: SessionRecord, ttl: float) -> None:
        self._records[record.session_id] = (dataclasses.replace(record), time.monotonic() + ttl)

    async def get(self, session_id: str) -> SessionRecord | None:
        entry = self._records.get(session_id)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._records[session_id]
            return None
        return dataclasses.replace(entry[0])

    async def touch(self, session_id: str, ttl: float) -> bool:
        entry = self._records.get(session_id)
        if entry is None or entry[1] < time.monotonic():
            self._records.pop(session_id, None)
            return False
        self._records[session_id] = (entry[0], time.monotonic() + ttl)
        return True

    async def delete(self, session_id: str) -> None:
        self._records.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._records)
