"""Inbox: the one ordered output of a connection that reads several streams at once.

Contract:

- :meth:`Inbox.put` waits while the inbox holds ``size`` messages: readers
  stop reading, so a slow consumer slows the upstream (TCP backpressure)
  instead of growing memory (STYLE rule 8).
- :meth:`Inbox.end` ends it, cleanly (None) or with the error that ended the
  connection. What was queued before is still delivered, then :meth:`get`
  returns None or raises that error. A message put after the end is dropped,
  and a put waiting for room returns.
"""

from __future__ import annotations

import asyncio
from collections import deque

from bridge.errors import UpstreamError
from bridge.jsonrpc import Message


class Inbox:
    def __init__(self, size: int) -> None:
        self._items: deque[Message] = deque()
        self._size = size
        # One event for both sides: every waiter re-checks its condition on wake-up.
        self._changed = asyncio.Event()
        self.ended = False
        self.error: UpstreamError | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, message: Message) -> None:
        """Queue ``message``, waiting for room; dropped once the inbox has ended."""
        while len(self._items) >= self._size and not self.ended:
            self._changed.clear()
            await self._changed.wait()
        if not self.ended:
            self._items.append(message)
            self._changed.set()

    async def get(self) -> Message | None:
        """The next message; None after a clean end; raises the error it ended with."""
        while not self._items:
            if self.ended:
                if self.error is not None:
                    raise self.error
                return None
            self._changed.clear()
            await self._changed.wait()
        message = self._items.popleft()
        self._changed.set()
        return message

    def end(self, error: UpstreamError | None) -> None:
        """End the inbox (the first end wins)."""
        if not self.ended:
            self.ended, self.error = True, error
            self._changed.set()
