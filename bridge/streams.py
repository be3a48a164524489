"""A downstream SSE stream's outbox, between a session and an HTTP handler.

Items are ``(event_id, message)``: the SSE ``id`` (None when the event could
not be stored) and the JSON-RPC message (None for a priming event, sent as an
``id`` with empty ``data``; spec 2025-11-25 transports §Sending Messages 6).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from bridge.jsonrpc import Message
from bridge.routing import StreamKey

Outgoing = tuple[str | None, Message | None]


class Stream:
    """One downstream SSE stream's outbox: bounded, closable, detachable.

    The upstream reader :meth:`put`\\ s and waits while the outbox holds
    ``limit`` messages or ``max_bytes`` bytes of them (backpressure, STYLE
    rule 8); a lone message larger than ``max_bytes`` still goes through.
    Once the HTTP response goes away the stream is detached and puts return
    at once, so a vanished client can never block the session. Events
    queued without waiting (replays, priming, errors) are not counted.
    """

    def __init__(
        self,
        key: StreamKey,
        limit: int,
        max_bytes: int = 0,
        account: Callable[[int], None] | None = None,
    ) -> None:
        self.key = key
        # Told every change of the bytes this stream holds (its session's and
        # principal's budgets, issue #15): queued, and the last one taken until
        # its reader comes back for the next (it was being written meanwhile).
        self._account = account
        self._taken = 0
        self._limit = limit
        self._max_bytes = max_bytes  # 0: no byte budget
        self._items: deque[tuple[str | None, Message | None, int]] = deque()
        self._bytes = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        self.detached = False
        # The client holds an event id of this stream (priming or replay), so
        # it can resume it: the front door may close it early (polling).
        self.resumable_by_client = False
        self._replayed: frozenset[str] = frozenset()  # ids prepend_replay put first

    def _full(self, size: int) -> bool:
        if len(self._items) >= self._limit:
            return True
        return bool(self._max_bytes) and self._bytes > 0 and self._bytes + size > self._max_bytes

    async def put(self, message: Outgoing, size: int = 0) -> None:
        """Queue one event of ``size`` bytes (its encoded length), waiting for room."""
        if message[0] is not None and message[0] in self._replayed:
            return  # stored before the replay was read, queued after: sent already
        while self._full(size) and not (self.detached or self.closed):
            self._writable.clear()
            await self._writable.wait()
        if message[0] is not None and message[0] in self._replayed:
            return  # a replay came while this put waited for room
        if not self.detached and not self.closed:
            self._items.append((*message, size))
            self._bytes += size
            if self._account is not None:
                self._account(size)
            self._readable.set()

    def extend(self, messages: list[Outgoing]) -> None:
        self._items.extend(
            (event_id, message, 0)
            for event_id, message in messages
            if event_id is None or event_id not in self._replayed
        )
        self._readable.set()

    def prepend_replay(self, replayed: list[Outgoing]) -> None:
        """Put replayed events first; drop live ones the replay already holds.

        Live events are stored before they are queued, so one that was stored
        while the replay was read may be in both, queued before this call or
        after it (its store write still finishing): it is sent once, in order.
        """
        seen = {event_id for event_id, _ in replayed if event_id is not None}
        self._replayed = self._replayed | seen
        live = [item for item in self._items if item[0] is None or item[0] not in seen]
        self._items = deque([*((e, m, 0) for e, m in replayed), *live])
        before, self._bytes = self._bytes, sum(item[2] for item in live)
        if self._account is not None:
            self._account(self._bytes - before)
        self._readable.set()
        self._writable.set()

    def queued(self) -> int:
        return len(self._items)

    def queued_bytes(self) -> int:
        """Bytes of the events :meth:`put` queued and no one has taken yet."""
        return self._bytes

    def close(self) -> None:
        self.closed = True
        self._readable.set()
        self._writable.set()

    def detach(self) -> None:
        """Its reader is gone: puts return at once, and what it held is let go."""
        self.detached = True
        self._items.clear()
        held, self._bytes, self._taken = self._bytes + self._taken, 0, 0
        if self._account is not None and held:
            self._account(-held)
        self._writable.set()

    async def get(self) -> Outgoing | None:
        """The next event, or None once the stream is closed and drained."""
        taken = await self.take()
        return None if taken is None else taken[0]

    async def take(self) -> tuple[Outgoing, int] | None:
        """The next event and the size it was :meth:`put` with; None once closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        event_id, message, size = self._items.popleft()
        self._bytes -= size
        if self._account is not None:
            self._account(-self._taken)  # the one taken before has been written by now
        self._taken = size
        self._writable.set()
        return (event_id, message), size


class ByteLedger:
    """Bytes the streams of each principal's live sessions hold in memory (issue #15).

    Sessions add and subtract as their streams queue, send and let go of
    messages; a session that ends gives back whatever it still held. With
    auth off every client is one principal (None).
    """

    def __init__(self) -> None:
        self._held: dict[str | None, int] = {}

    def add(self, principal: str | None, delta: int) -> None:
        held = self._held.get(principal, 0) + delta
        if held > 0:
            self._held[principal] = held
        else:
            self._held.pop(principal, None)

    def held(self, principal: str | None) -> int:
        return self._held.get(principal, 0)
