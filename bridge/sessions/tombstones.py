"""Sessions ended here (DELETE) whose record the store could not delete.

A DELETE the store fails is not pretended away: the session stays ended in
this process, never resumed here however the store answers, until the
record's TTL, and the store is asked again (a DELETE repeated, the reaper's
:meth:`Tombstones.retry`). Bounded: past :data:`MAX_TOMBSTONES` the oldest
is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import structlog

from bridge.log import short
from bridge.sessions.store import SessionStore, StoreUnavailable

log = structlog.get_logger("bridge.hub")

#: Most sessions this process remembers as ended although the store kept their
#: record (a DELETE it could not record); past it the oldest is forgotten.
MAX_TOMBSTONES: Final = 100_000
#: Tombstoned records the reaper tries to delete from the store per pass.
TOMBSTONE_RETRY_BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A session ended here (DELETE) whose record the store could not delete."""

    server: str
    principal: str | None
    expires_at: float  # monotonic: when the record expires in the store at the latest


class Tombstones:
    """The tombstones of one process, oldest first; ``ttl`` is the records' TTL in seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._graves: OrderedDict[str, Tombstone] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._graves)

    def bury(self, session_id: str, server: str, principal: str | None) -> None:
        """Remember ``session_id`` as ended here until its record's TTL."""
        expires_at = time.monotonic() + self._ttl
        self._graves[session_id] = Tombstone(server, principal, expires_at)
        self._graves.move_to_end(session_id)
        while len(self._graves) > MAX_TOMBSTONES:
            self._graves.popitem(last=False)
        log.warning("session_tombstoned", session_id=short(session_id))

    def get(self, session_id: str) -> Tombstone | None:
        """The live tombstone of ``session_id``, if any (an expired one is dropped)."""
        tombstone = self._graves.get(session_id)
        if tombstone is not None and tombstone.expires_at <= time.monotonic():
            del self._graves[session_id]
            return None
        return tombstone

    def discard(self, session_id: str) -> None:
        """Forget ``session_id``'s tombstone: its record is gone from the store."""
        self._graves.pop(session_id, None)

    async def retry(self, store: SessionStore) -> int:
        """Try again to delete the oldest tombstoned records; return how many went.

        Stops at the first :class:`StoreUnavailable`: the next pass tries again.
        """
        now, deleted = time.monotonic(), 0
        for session_id, tombstone in list(self._graves.items())[:TOMBSTONE_RETRY_BATCH]:
            if tombstone.expires_at <= now:
                self._graves.pop(session_id, None)
                continue
            try:
                await store.delete(session_id)
            except StoreUnavailable:
                break
            self._graves.pop(session_id, None)
            deleted += 1
        return deleted
