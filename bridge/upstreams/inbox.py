"""Inbox: the one ordered output of a connection that reads several streams at once.

Contract:

- :meth:`Inbox.put` waits while the inbox holds ``size`` messages: readers
  stop reading, so a slow consumer slows the upstream (TCP backpressure)
  instead of growing memory (STYLE rule 8).
- Waiting puts get room in the order they began to wait, and a new put
  queues behind them: a reader with an endless supply of messages (an
  upstream flooding one stream) cannot starve another stream's reader, whose
  message may be the answer a client waits for.
- :meth:`Inbox.end` ends it, cleanly (None) or with the error that ended the
  connection. What was queued before is still delivered, then :meth:`get`
  returns None or raises that error. A message put after the end is dropped,
  and a put waiting for room returns (its message dropped too).
- A put cancelled while it waits leaves nothing behind; one cancelled after
  it was given room has delivered its message.
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
        # Puts waiting for room, first come first served: each future is
        # resolved once its message is in _items (or dropped by the end).
        self._putters: deque[tuple[asyncio.Future[None], Message]] = deque()
        self._arrived = asyncio.Event()  # for the getter: an item came, or the end
        self.ended = False
        self.error: UpstreamError | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, message: Message) -> None:
        """Queue ``message``, waiting (in turn) for room; dropped once the inbox has ended."""
        if self.ended:
            return
        self._admit()  # drops puts cancelled while waiting, so they hold no one up
        if len(self._items) < self._size and not self._putters:
            self._append(message)
            return
        admitted = asyncio.get_running_loop().create_future()
        self._putters.append((admitted, message))
        await admitted

    async def get(self) -> Message | None:
        """The next message; None after a clean end; raises the error it ended with."""
        while not self._items:
            if self.ended:
                if self.error is not None:
                    raise self.error
                return None
            self._arrived.clear()
            await self._arrived.wait()
        message = self._items.popleft()
        self._admit()
        return message

    def end(self, error: UpstreamError | None) -> None:
        """End the inbox (the first end wins)."""
        if self.ended:
            return
        self.ended, self.error = True, error
        self._arrived.set()
        while self._putters:
            admitted, _ = self._putters.popleft()
            if not admitted.done():
                admitted.set_result(None)

    def _admit(self) -> None:
        """Give freed room to the longest-waiting puts."""
        while self._putters and len(self._items) < self._size:
            admitted, message = self._putters.popleft()
            if not admitted.done():  # else cancelled while waiting: nothing to deliver
                self._append(message)
                admitted.set_result(None)

    def _append(self, message: Message) -> None:
        self._items.append(message)
        self._arrived.set()
