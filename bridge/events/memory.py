"""An in-process :class:`EventStore`: for tests and throwaway runs.

Positions are decimal strings of one counter shared by every stream of the
store, so they increase within a stream and are never reused. A stream keeps
at most ``max_events`` events, none older than ``max_age`` seconds, and is
forgotten ``ttl`` seconds after its last append (sliding expiry, checked on
read; every write also forgets up to :data:`PURGE_BATCH` expired streams).

Messages are kept as JSON text, as the durable stores keep them, so a caller
that mutates a message after appending it does not change what is replayed.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

from bridge import jsonrpc
from bridge.events.store import StoredEvent
from bridge.jsonrpc import Message
from bridge.sessions.store import SessionStore

#: Most expired streams forgotten per write (bounded work per call).
PURGE_BATCH: Final = 100
_POSITION: Final = re.compile(r"[0-9]{1,20}")


@dataclass(slots=True)
class _Event:
    position: int
    stored_at: float
    text: str | None  # message JSON; None for a priming event


@dataclass(slots=True)
class _Stream:
    expires_at: float
    events: deque[_Event] = field(default_factory=deque)


class MemoryEventStore:
    """Events per ``(session_id, stream)``.

    Args:
        max_events: most events kept per stream (oldest dropped).
        max_age: seconds an event is kept, however short its stream.
        sessions: if given, every append also touches the session's record
            with the same ``ttl``, as the Redis store does.
        clock: Unix time in seconds (a seam for tests).
    """

    def __init__(
        self,
        *,
        max_events: int,
        max_age: float,
        sessions: SessionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_events = max_events
        self._max_age = max_age
        self._sessions = sessions
        self._clock = clock
        self._counter = itertools.count(1)
        # (session id, stream) -> stream, in append order (oldest append first).
        self._streams: OrderedDict[tuple[str, str], _Stream] = OrderedDict()
        # session id -> names of its streams held (so delete_session need not scan).
        self._names: dict[str, set[str]] = {}

    async def append(
        self, session_id: str, stream: str, message: Message | None, ttl: float
    ) -> str:
        text = None if message is None else jsonrpc.encode(message)
        now = self._purge()
        held = self._live(session_id, stream, now)
        if held is None:
            held = self._streams[session_id, stream] = _Stream(expires_at=0.0)
            self._names.setdefault(session_id, set()).add(stream)
        self._streams.move_to_end((session_id, stream))
        held.expires_at = now + ttl
        event = _Event(next(self._counter), now, text)
        held.events.append(event)
        self._trim(held.events, now)
        if self._sessions is not None:
            await self._sessions.touch(session_id, ttl)
        return str(event.position)

    async def replay_after(
        self, session_id: str, stream: str, position: str
    ) -> AsyncIterator[StoredEvent]:
        held = self._live(session_id, stream, self._clock())
        if held is None or not (position == "" or _POSITION.fullmatch(position)):
            return
        after = int(position) if position else -1
        if position and not any(event.position == after for event in held.events):
            return
        for event in [event for event in held.events if event.position > after]:
            message = None if event.text is None else jsonrpc.loads_frame(event.text)
            yield StoredEvent(str(event.position), message)

    async def delete_session(self, session_id: str) -> None:
        self._purge()
        for stream in self._names.pop(session_id, set()):
            del self._streams[session_id, stream]

    def __len__(self) -> int:
        """Streams held, including expired ones not purged yet."""
        return len(self._streams)

    def _live(self, session_id: str, stream: str, now: float) -> _Stream | None:
        held = self._streams.get((session_id, stream))
        if held is None or held.expires_at <= now:
            return None
        return held

    def _trim(self, events: deque[_Event], now: float) -> None:
        while len(events) > self._max_events:
            events.popleft()
        while events and events[0].stored_at <= now - self._max_age:
            events.popleft()

    def _purge(self) -> float:
        """Forget up to PURGE_BATCH expired streams, oldest append first; return now."""
        now = self._clock()
        for _ in range(PURGE_BATCH):
            oldest = next(iter(self._streams.items()), None)
            if oldest is None or oldest[1].expires_at > now:
                break
            self._forget(*oldest[0])
        return now

    def _forget(self, session_id: str, stream: str) -> None:
        del self._streams[session_id, stream]
        names = self._names[session_id]
        names.discard(stream)
        if not names:
            del self._names[session_id]
