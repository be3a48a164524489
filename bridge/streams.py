"""A downstream SSE stream's outbox, between a session and an HTTP handler.

Items are ``(event_id, message)``: the SSE ``id`` (None when the event could
not be stored) and the JSON-RPC message (None for a priming event, sent as an
``id`` with empty ``data``; spec 2025-11-25 transports §Sending Messages 6).
"""

from __future__ import annotations

import asyncio
from collections import deque

from bridge.jsonrpc import Message
from bridge.routing import StreamKey

Outgoing = tuple[str | None, Message | None]


class Stream:
    """One downstream SSE stream's outbox: bounded, closable, detachable.

    The upstream reader :meth:`put`\\ s and waits while the outbox is full
    (backpressure, STYLE rule 8); once the HTTP response goes away the stream
    is detached and puts return at once, so a vanished client can never block
    the session.
    """

    def __init__(self, key: StreamKey, limit: int) -> None:
        self.key = key
        self._limit = limit
        self._items: deque[Outgoing] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        self.detached = False
        # The client holds an event id of this stream (priming or replay), so
        # it can resume it: the front door may close it early (polling).
        self.resumable_by_client = False

    async def put(self, message: Outgoing) -> None:
        while len(self._items) >= self._limit and not (self.detached or self.closed):
            self._writable.clear()
            await self._writable.wait()
        if not self.detached and not self.closed:
            self._items.append(message)
            self._readable.set()

    def extend(self, messages: list[Outgoing]) -> None:
        self._items.extend(messages)
        self._readable.set()

    def prepend_replay(self, replayed: list[Outgoing]) -> None:
        """Put replayed events first; drop live ones the replay already holds.

        Live events are stored before they are queued, so one that was queued
        while the replay was read may be in both: it is sent once, in order.
        """
        seen = {event_id for event_id, _ in replayed}
        live = [item for item in self._items if item[0] is None or item[0] not in seen]
        self._items = deque([*replayed, *live])
        self._readable.set()

    def queued(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self.closed = True
        self._readable.set()
        self._writable.set()

    def detach(self) -> None:
        self.detached = True
        self._writable.set()

    async def get(self) -> Outgoing | None:
        """The next event, or None once the stream is closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item
