"""bridge.upstreams.inbox.Inbox: bounded, ordered, and ended exactly once.

A full inbox makes the putter wait (backpressure) until the consumer takes a
message; an end delivers what was queued first, then None (closed) or the
error (lost); puts after the end, and puts waiting for room, are dropped.
Every wait here is bounded.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import UpstreamUnavailable
from bridge.jsonrpc import Message
from bridge.upstreams.inbox import Inbox

BOUND = 5.0


def msg(n: int) -> Message:
    return {"jsonrpc": "2.0", "method": "n", "params": {"n": n}}


async def test_fifo_and_a_full_inbox_makes_the_putter_wait() -> None:
    inbox = Inbox(2)
    await inbox.put(msg(1))
    await inbox.put(msg(2))
    third = asyncio.ensure_future(inbox.put(msg(3)))
    await asyncio.sleep(0)  # one turn: the put has run up to its wait
    assert not third.done()
    assert len(inbox) == 2
    async with asyncio.timeout(BOUND):
        assert await inbox.get() == msg(1)
        await third
        assert [await inbox.get(), await inbox.get()] == [msg(2), msg(3)]


async def test_get_waits_for_a_put() -> None:
    inbox = Inbox(1)
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    await inbox.put(msg(1))
    async with asyncio.timeout(BOUND):
        assert await waiting == msg(1)


async def test_clean_end_delivers_what_is_queued_then_none() -> None:
    inbox = Inbox(4)
    await inbox.put(msg(1))
    inbox.end(None)
    inbox.end(UpstreamUnavailable("later ends are ignored"))
    await inbox.put(msg(2))  # dropped
    assert await inbox.get() == msg(1)
    assert await inbox.get() is None
    assert inbox.error is None


async def test_lost_end_delivers_what_is_queued_then_raises() -> None:
    inbox = Inbox(4)
    await inbox.put(msg(1))
    inbox.end(UpstreamUnavailable("gone"))
    assert await inbox.get() == msg(1)
    with pytest.raises(UpstreamUnavailable, match="gone"):
        await inbox.get()


async def test_end_wakes_waiting_putters_and_getters() -> None:
    full, empty = Inbox(1), Inbox(1)
    await full.put(msg(1))
    putter = asyncio.ensure_future(full.put(msg(2)))
    getter = asyncio.ensure_future(empty.get())
    await asyncio.sleep(0)
    full.end(None)
    empty.end(None)
    async with asyncio.timeout(BOUND):
        await putter
        assert await getter is None
    assert len(full) == 1


async def test_waiting_puts_get_room_in_turn() -> None:
    """A reader with an endless supply cannot starve another one (issue #5, a flooding stream)."""
    inbox = Inbox(1)
    await inbox.put(msg(0))
    flood = asyncio.ensure_future(inbox.put(msg(1)))
    answer = asyncio.ensure_future(inbox.put(msg(2)))
    await asyncio.sleep(0)  # one turn: both puts wait for room
    async with asyncio.timeout(BOUND):
        assert await inbox.get() == msg(0)
        await flood
        late = asyncio.ensure_future(inbox.put(msg(3)))  # the flood's next put queues behind
        assert await inbox.get() == msg(1)
        await answer
        assert await inbox.get() == msg(2)
        await late
        assert await inbox.get() == msg(3)


async def test_a_put_cancelled_while_waiting_delivers_nothing() -> None:
    inbox = Inbox(1)
    await inbox.put(msg(1))
    cancelled = asyncio.ensure_future(inbox.put(msg(2)))
    await asyncio.sleep(0)
    cancelled.cancel()
    async with asyncio.timeout(BOUND):
        assert await inbox.get() == msg(1)
        await inbox.put(msg(3))
        assert await inbox.get() == msg(3)
    assert len(inbox) == 0
