"""Stream: a downstream outbox bounded by count and by bytes (issue #5 "Limits").

A put that finds no room waits; ``await asyncio.sleep(0)`` below gives the
put task exactly one turn, in which an unblocked put would finish: it is a
yield to the event loop, not a timed wait.
"""

from __future__ import annotations

import asyncio

from bridge.streams import Stream


def msg(n: int) -> dict[str, object]:
    return {"jsonrpc": "2.0", "method": "m", "params": {"n": n}}


async def test_the_byte_budget_holds_the_upstream_back() -> None:
    stream = Stream(1, limit=100, max_bytes=1000)
    await stream.put(("a", msg(1)), 600)
    second = asyncio.ensure_future(stream.put(("b", msg(2)), 600))
    await asyncio.sleep(0)  # one turn: the put has run up to its wait
    assert not second.done()
    assert stream.queued_bytes() == 600
    assert await stream.get() == ("a", msg(1))
    await second
    assert stream.queued_bytes() == 600
    assert await stream.take() == (("b", msg(2)), 600)
    assert stream.queued_bytes() == 0


async def test_a_message_over_the_budget_passes_alone() -> None:
    stream = Stream(1, limit=100, max_bytes=1000)
    await stream.put(("big", msg(1)), 5000)  # an empty outbox admits anything
    blocked = asyncio.ensure_future(stream.put(("small", msg(2)), 1))
    await asyncio.sleep(0)
    assert not blocked.done()
    await stream.get()
    await blocked


async def test_the_count_limit_still_applies() -> None:
    stream = Stream(1, limit=2, max_bytes=10**9)
    await stream.put((None, msg(1)), 1)
    await stream.put((None, msg(2)), 1)
    third = asyncio.ensure_future(stream.put((None, msg(3)), 1))
    await asyncio.sleep(0)
    assert not third.done()
    stream.detach()  # the client went away: the upstream is never blocked by it
    await third
    assert stream.queued() == 0  # and what it held is let go (issue #15)


async def test_a_ledger_is_told_what_the_stream_holds() -> None:
    """Queued bytes, then the last taken until the reader is back, then nothing once detached."""
    held: list[int] = []
    stream = Stream(1, limit=10, max_bytes=10**9, account=held.append)
    await stream.put((None, msg(1)), 100)
    await stream.put((None, msg(2)), 50)
    assert sum(held) == 150
    await stream.get()  # being written: still held
    assert sum(held) == 150
    await stream.get()  # the reader is back: the first one was written
    assert sum(held) == 50
    stream.detach()
    assert sum(held) == 0


async def test_replays_and_extends_are_not_counted_and_keep_live_sizes() -> None:
    stream = Stream(1, limit=100, max_bytes=1000)
    await stream.put(("live-1", msg(1)), 300)
    await stream.put(("live-2", msg(2)), 400)
    stream.prepend_replay([("old", msg(0)), ("live-1", msg(1))])  # live-1 is in both
    assert stream.queued_bytes() == 400
    stream.extend([("err", msg(9))])
    items = [await stream.get() for _ in range(stream.queued())]
    assert [i[0] for i in items if i] == ["old", "live-1", "live-2", "err"]
    assert stream.queued_bytes() == 0


async def test_a_live_event_queued_after_the_replay_that_holds_it_is_not_sent_twice() -> None:
    """Issue #15 soak: an event stored (its append still touching the record)
    while a resume read the replay was queued after it too: sent twice."""
    stream = Stream(1, limit=10)
    await stream.put(("s.1", msg(1)), 10)  # queued before the replay: dropped by it
    stream.prepend_replay([("s.1", msg(1)), ("s.2", msg(2))])
    await stream.put(("s.2", msg(2)), 10)  # its store write finished after the read
    stream.extend([("s.2", msg(2)), ("s.3", msg(3))])
    await stream.put(("s.4", msg(4)), 10)
    stream.close()
    sent = []
    while (item := await stream.get()) is not None:
        sent.append(item[0])
    assert sent == ["s.1", "s.2", "s.3", "s.4"]
