"""The EventStore contract (bridge/events/store.py), for every backend.

spec 2025-11-25 transports §Resumability; spec-notes §6.1. Positions
increase within a stream and fit in an SSE id; a replay yields exactly the
later events of that one stream of that one session, in order, and nothing
for a position the stream does not hold; streams are bounded by
``max_events`` and ``max_age``; a session's events go with
``delete_session`` or ``ttl`` seconds after the last append, leaving
nothing behind (memory and SQLite by moving their clock, Redis by the TTL
on every key).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from typing import Final

import pytest

from bridge.events.store import EventStore
from bridge.jsonrpc import Message
from bridge.sessions.store import SessionRecord, StoreUnavailable
from bridge.stores import open_stores
from tests.contract.conftest import Backend, OpenBackend
from tests.redis_server import RedisServer

TTL: Final = 60.0
# Visible ASCII without '.': the gateway composes SSE ids as <tag>.<stream>.<position>.
SAFE_POSITION: Final = re.compile(r"[!-\-/-~]+")


def msg(n: int) -> Message:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"n": n, "s": "ü✓"}}


async def replay(backend: Backend, session_id: str, stream: str, position: str) -> list[object]:
    """The messages replayed (None for priming events)."""
    return [e.message async for e in backend.events.replay_after(session_id, stream, position)]


async def append_all(backend: Backend, session_id: str, stream: str, count: int) -> list[str]:
    return [await backend.events.append(session_id, stream, msg(n), TTL) for n in range(count)]


async def trim_slack(backend: Backend) -> int:
    """Events a stream may hold beyond its limit: Redis trims whole stream nodes (``~``)."""
    if backend.redis is None:
        return 0
    config = await backend.redis.config_get("stream-node-max-entries")
    return int(str(config["stream-node-max-entries"]))


# --- every backend --------------------------------------------------------------


async def test_positions_increase_and_fit_in_an_sse_id(stores: Backend) -> None:
    positions = await append_all(stores, "s-1", "get", 3)
    positions.append(await stores.events.append("s-1", "get", None, TTL))

    assert all(SAFE_POSITION.fullmatch(p) for p in positions), positions
    assert len(set(positions)) == 4
    for earlier, later in itertools.pairwise(positions):
        assert await replay(stores, "s-1", "get", earlier)  # each is followed by the next
        assert earlier not in [
            e.position async for e in stores.events.replay_after("s-1", "get", later)
        ]


async def test_concurrent_appends_get_distinct_totally_ordered_positions(
    stores: Backend,
) -> None:
    positions = await asyncio.gather(
        *(stores.events.append("s-1", "get", msg(n), TTL) for n in range(30))
    )

    later = [len(await replay(stores, "s-1", "get", p)) for p in positions]

    assert sorted(later) == list(range(30))  # exactly one position is first, one second...


async def test_an_append_keeps_the_session_record_alive(clocked: Backend) -> None:
    await clocked.sessions.create(SessionRecord("s-1", "srv", "2025-11-25", {}), 10)
    await clocked.events.append("s-1", "get", msg(0), 1000)
    clocked.advance(100)  # past the record's own TTL, within the append's
    assert await clocked.sessions.get("s-1") is not None


async def test_replay_yields_the_later_events_of_that_stream_in_order(stores: Backend) -> None:
    a0 = await stores.events.append("s-1", "req:1", msg(0), TTL)
    await stores.events.append("s-1", "get", msg(100), TTL)
    a1 = await stores.events.append("s-1", "req:1", msg(1), TTL)
    await stores.events.append("s-1", "req:2", msg(200), TTL)
    a2 = await stores.events.append("s-1", "req:1", msg(2), TTL)

    replayed = [e async for e in stores.events.replay_after("s-1", "req:1", a0)]

    assert [e.position for e in replayed] == [a1, a2]
    assert [e.message for e in replayed] == [msg(1), msg(2)]
    assert await replay(stores, "s-1", "req:1", a2) == []


async def test_replay_from_the_start_with_an_empty_position(stores: Backend) -> None:
    await stores.events.append("s-1", "req:1", None, TTL)
    await stores.events.append("s-1", "get", msg(100), TTL)
    await stores.events.append("s-1", "req:1", msg(1), TTL)

    assert await replay(stores, "s-1", "req:1", "") == [None, msg(1)]
    assert await replay(stores, "s-1", "req:unknown", "") == []
    assert await replay(stores, "s-2", "req:1", "") == []  # another session's namesake


async def test_priming_events_round_trip(stores: Backend) -> None:
    first = await stores.events.append("s-1", "req:7", msg(0), TTL)
    priming = await stores.events.append("s-1", "req:7", None, TTL)
    await stores.events.append("s-1", "req:7", msg(1), TTL)

    assert await replay(stores, "s-1", "req:7", first) == [None, msg(1)]
    assert await replay(stores, "s-1", "req:7", priming) == [msg(1)]


async def test_priming_event_alone_opens_a_stream(stores: Backend) -> None:
    priming = await stores.events.append("s-1", "req:7", None, TTL)
    await stores.events.append("s-1", "req:7", msg(1), TTL)

    assert await replay(stores, "s-1", "req:7", priming) == [msg(1)]


async def test_another_sessions_stream_of_the_same_name_is_never_replayed(
    stores: Backend,
) -> None:
    mine = await stores.events.append("mine", "get", msg(0), TTL)
    await stores.events.append("mine", "get", msg(1), TTL)
    theirs = await stores.events.append("theirs", "get", msg(2), TTL)
    await stores.events.append("theirs", "get", msg(3), TTL)

    # Positions are per stream: Redis entry ids of two keys may coincide (same
    # millisecond), so a foreign position may name an event of this stream too.
    # What must hold is that a replay never yields another session's events.
    assert set(map(str, await replay(stores, "theirs", "get", mine))) <= {str(msg(3))}
    assert set(map(str, await replay(stores, "mine", "get", theirs))) <= {str(msg(1))}
    assert await replay(stores, "mine", "get", mine) == [msg(1)]
    assert await replay(stores, "theirs", "get", theirs) == [msg(3)]


async def test_a_position_of_another_stream_never_yields_that_streams_events(
    stores: Backend,
) -> None:
    other = await stores.events.append("s-1", "req:1", msg(0), TTL)
    await stores.events.append("s-1", "req:1", msg(2), TTL)
    await stores.events.append("s-1", "req:2", msg(1), TTL)

    # Nothing, or (a coincident Redis entry id) this stream's own later events.
    assert set(map(str, await replay(stores, "s-1", "req:2", other))) <= {str(msg(1))}


@pytest.mark.parametrize(
    "position",
    [
        "x",
        "1.2",
        " 1",
        "1 ",
        "-1",
        "0-0-0",
        "99999999999999999999999",
        "99999999999999999999-0",
        "1-",
        "\u0661",
    ],
)
async def test_unknown_or_malformed_positions_yield_nothing(stores: Backend, position: str) -> None:
    await append_all(stores, "s-1", "get", 2)

    assert await replay(stores, "s-1", "get", position) == []


async def test_unknown_streams_and_sessions_yield_nothing(stores: Backend) -> None:
    first, _ = await append_all(stores, "s-1", "get", 2)

    assert await replay(stores, "s-1", "req:1", first) == []
    assert await replay(stores, "nobody", "get", first) == []


async def test_a_position_past_the_end_yields_nothing_until_more_is_appended(
    stores: Backend,
) -> None:
    (last,) = await append_all(stores, "s-1", "get", 1)

    assert await replay(stores, "s-1", "get", last) == []
    await stores.events.append("s-1", "get", msg(9), TTL)
    assert await replay(stores, "s-1", "get", last) == [msg(9)]


async def test_long_replays_come_in_order_across_pages(stores: Backend) -> None:
    positions = await append_all(stores, "s-1", "get", 250)

    replayed = [e async for e in stores.events.replay_after("s-1", "get", positions[0])]

    assert [e.position for e in replayed] == positions[1:]
    assert [e.message for e in replayed] == [msg(n) for n in range(1, 250)]


async def test_appended_messages_are_copied(stores: Backend) -> None:
    first = await stores.events.append("s-1", "get", msg(0), TTL)
    mutable = msg(1)
    await stores.events.append("s-1", "get", mutable, TTL)
    mutable["params"]["n"] = "changed"

    assert await replay(stores, "s-1", "get", first) == [msg(1)]


async def test_streams_keep_only_the_latest_max_events(open_backend: OpenBackend) -> None:
    backend = await open_backend(max_events=10)
    slack = await trim_slack(backend)
    count = 10 + 2 * slack + 30  # enough that even approximate trimming must drop some

    positions = await append_all(backend, "s-1", "get", count)

    kept = await replay(backend, "s-1", "get", positions[-10])
    assert kept == [msg(n) for n in range(count - 9, count)]  # the latest 10 survive
    assert await replay(backend, "s-1", "get", positions[0]) == []  # the oldest went
    assert await replay(backend, "s-1", "get", positions[count - 11 - slack]) == []


async def test_delete_session_forgets_every_stream_of_that_session_only(
    stores: Backend,
) -> None:
    mine_get = await stores.events.append("mine", "get", msg(0), TTL)
    await stores.events.append("mine", "get", msg(1), TTL)
    mine_req = await stores.events.append("mine", "req:1", msg(2), TTL)
    await stores.events.append("mine", "req:1", msg(3), TTL)
    theirs = await stores.events.append("theirs", "get", msg(4), TTL)
    await stores.events.append("theirs", "get", msg(5), TTL)

    await stores.events.delete_session("mine")
    await stores.events.delete_session("nobody")

    assert await replay(stores, "mine", "get", mine_get) == []
    assert await replay(stores, "mine", "req:1", mine_req) == []
    assert await replay(stores, "theirs", "get", theirs) == [msg(5)]


async def test_a_deleted_session_can_append_again(stores: Backend) -> None:
    await append_all(stores, "s-1", "get", 2)
    await stores.events.delete_session("s-1")

    first, _ = await append_all(stores, "s-1", "get", 2)

    assert await replay(stores, "s-1", "get", first) == [msg(1)]


async def test_appends_made_together_each_land_in_their_own_stream_in_order(
    stores: Backend,
) -> None:
    """Many sessions' events at once (SQLite commits them as a group, Redis
    pipelines them, issue #13): every caller gets its own position, and each
    stream replays exactly its own events, in order."""
    sessions, per_stream = 20, 3
    for round_ in range(per_stream):
        positions = await asyncio.gather(*(
            stores.events.append(f"s-{i}", f"req:{i % 2}", msg(round_ * 100 + i), TTL)
            for i in range(sessions)
        ))  # fmt: skip
        assert all(SAFE_POSITION.fullmatch(p) for p in positions)  # unique per stream only
    for i in range(sessions):
        expected = [msg(round_ * 100 + i) for round_ in range(per_stream)]
        assert await replay(stores, f"s-{i}", f"req:{i % 2}", "") == expected
        assert await replay(stores, f"s-{i}", f"req:{(i + 1) % 2}", "") == []


# --- expiry and bounds, by moving the clock (memory, SQLite) ---------------------


async def test_a_stream_lives_ttl_after_its_last_append(clocked: Backend) -> None:
    first = await clocked.events.append("s-1", "get", msg(0), 10)
    clocked.advance(9.9)
    await clocked.events.append("s-1", "get", msg(1), 10)
    clocked.advance(9.9)
    assert await replay(clocked, "s-1", "get", first) == [msg(1)]

    clocked.advance(0.2)
    assert await replay(clocked, "s-1", "get", first) == []
    again = await clocked.events.append("s-1", "get", msg(2), 10)
    await clocked.events.append("s-1", "get", msg(3), 10)
    assert await replay(clocked, "s-1", "get", first) == []  # expired events stay gone
    assert await replay(clocked, "s-1", "get", again) == [msg(3)]


async def test_events_older_than_max_age_are_dropped(open_clocked: OpenBackend) -> None:
    backend = await open_clocked(max_age=30)
    old = await append_all(backend, "s-1", "get", 3)
    backend.advance(20)
    newer = await backend.events.append("s-1", "get", msg(3), TTL)
    backend.advance(11)  # the first three are 31 s old now, the fourth 11 s

    await backend.events.append("s-1", "get", msg(4), TTL)

    assert await replay(backend, "s-1", "get", old[-1]) == []
    assert await replay(backend, "s-1", "get", newer) == [msg(4)]


async def test_appending_pushes_the_session_records_expiry_back(clocked: Backend) -> None:
    await clocked.sessions.create(SessionRecord("s-1", "srv", "2025-11-25", {}), 10)
    clocked.advance(8)
    await clocked.events.append("s-1", "get", msg(0), 10)
    clocked.advance(8)

    assert await clocked.sessions.get("s-1") is not None
    clocked.advance(2.1)
    assert await clocked.sessions.get("s-1") is None


async def test_an_abandoned_session_leaves_nothing_behind(clocked: Backend) -> None:
    await clocked.sessions.create(SessionRecord("s-1", "srv", "2025-11-25", {}), 10)
    await append_all(clocked, "s-1", "get", 3)
    await clocked.events.append("s-1", "req:1", None, 10)
    await append_all(clocked, "s-2", "req:9", 2)
    assert clocked.rows() > 0
    clocked.advance(TTL + 1)

    await clocked.sessions.delete("unrelated")  # any write purges
    await clocked.events.delete_session("unrelated")

    assert clocked.rows() == 0


async def test_delete_leaves_nothing_behind(clocked: Backend) -> None:
    await clocked.sessions.create(SessionRecord("s-1", "srv", "2025-11-25", {}), TTL)
    await append_all(clocked, "s-1", "get", 3)
    await clocked.events.append("s-1", "req:1", None, TTL)

    await clocked.sessions.delete("s-1")
    await clocked.events.delete_session("s-1")

    assert clocked.rows() == 0


# --- expiry and bounds as Redis keeps them -------------------------------------------


async def test_redis_keys_follow_the_layout_and_all_carry_the_ttl(redis_stores: Backend) -> None:
    redis, prefix = redis_stores.redis, redis_stores.prefix
    assert redis is not None
    await redis_stores.sessions.create(SessionRecord("s-1", "srv", "2025-11-25", {}), 10)
    await redis_stores.events.append("s-1", "get", msg(0), 10)
    await redis_stores.events.append("s-1", "req:1", None, 10)

    keys = await redis_stores.keys()
    ttls = {key: await redis.pttl(key) for key in keys}

    assert keys == sorted(
        [
            f"{prefix}:{{s-1}}:session",
            f"{prefix}:{{s-1}}:streams",
            f"{prefix}:{{s-1}}:ev:get",
            f"{prefix}:{{s-1}}:ev:req:1",
        ]
    )
    assert all(0 < ttl <= 10_000 for ttl in ttls.values()), ttls
    entries = await redis.xrange(f"{prefix}:{{s-1}}:ev:req:1") or []
    assert [fields for _, fields in entries] == [{"m": ""}]


async def test_redis_append_pushes_every_touched_key_ttl_back(redis_stores: Backend) -> None:
    redis, prefix = redis_stores.redis, redis_stores.prefix
    assert redis is not None
    await redis_stores.sessions.create(SessionRecord("s-1", "srv", "2025-11-25", {}), 10)
    await redis_stores.events.append("s-1", "get", msg(0), 10)

    await redis_stores.events.append("s-1", "get", msg(1), 1000)

    for suffix in ("session", "streams", "ev:get"):
        assert 10_000 < await redis.pttl(f"{prefix}:{{s-1}}:{suffix}") <= 1_000_000, suffix


async def test_redis_abandoned_or_deleted_session_leaves_nothing_behind(
    redis_stores: Backend,
) -> None:
    assert redis_stores.redis is not None
    await redis_stores.sessions.create(SessionRecord("s-1", "srv", "2025-11-25", {}), 10)
    for stream in ("get", "req:1", "req:2"):
        await redis_stores.events.append("s-1", stream, msg(0), 10)
        await redis_stores.events.append("s-1", stream, None, 10)

    keys = await redis_stores.keys()
    assert len(keys) == 5
    for key in keys:  # abandoned: Redis drops every key within the TTL
        assert 0 < await redis_stores.redis.pttl(key) <= 10_000, key

    await redis_stores.sessions.delete("s-1")
    await redis_stores.events.delete_session("s-1")
    assert await redis_stores.keys() == []


async def test_redis_drops_names_of_expired_streams(redis_stores: Backend) -> None:
    redis, prefix = redis_stores.redis, redis_stores.prefix
    assert redis is not None
    names = f"{prefix}:{{s-1}}:streams"
    await redis_stores.events.append("s-1", "req:1", msg(0), 10)
    # As if req:1 had last been appended to over a TTL ago (its key gone by now).
    await redis.zadd(names, {"req:1": int(time.time() * 1000) - 20_000})

    await redis_stores.events.append("s-1", "req:2", msg(1), 10)

    assert await redis.zrange(names, 0, -1) == ["req:2"]


async def test_redis_drops_entries_older_than_max_age(open_redis: OpenBackend) -> None:
    backend = await open_redis(max_age=30)
    redis, slack = backend.redis, await trim_slack(backend)
    assert redis is not None
    key = f"{backend.prefix}:{{s-1}}:ev:get"
    # Entries as if appended an hour ago: ids are milliseconds of Unix time.
    old_ms = int(time.time() * 1000) - 3_600_000
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(2 * slack):
            pipe.xadd(key, {"m": ""}, id=f"{old_ms}-{n}")  # type: ignore[unused-awaitable]
        await pipe.execute()

    latest = await backend.events.append("s-1", "get", msg(0), TTL)

    assert await replay(backend, "s-1", "get", f"{old_ms}-0") == []  # trimmed
    remaining = await redis.xlen(key)
    assert remaining <= slack + 1  # at most one partly old node survives `~`
    assert [entry_id for entry_id, _ in await redis.xrange(key) or []][-1] == latest


# --- Redis outages ------------------------------------------------------------------


async def test_redis_outage_fails_appends_and_replays_then_heals(own_redis: RedisServer) -> None:
    stores = await open_stores(own_redis.url, prefix="t", max_events=10, max_age=60, timeout=0.3)
    try:
        first = await stores.events.append("s-1", "get", msg(0), TTL)
        own_redis.kill()

        with pytest.raises(StoreUnavailable):
            await stores.events.append("s-1", "get", msg(1), TTL)
        with pytest.raises(StoreUnavailable):
            await replay_of(stores.events, first)
        with pytest.raises(StoreUnavailable):
            await stores.events.delete_session("s-1")

        own_redis.start()
        again = await stores.events.append("s-1", "get", msg(2), TTL)
        await stores.events.append("s-1", "get", msg(3), TTL)
        assert await replay_of(stores.events, again) == [msg(3)]
    finally:
        await stores.aclose()


async def test_redis_appends_made_together_survive_a_flushed_script_cache(
    redis_stores: Backend,
) -> None:
    """A restarted Redis has forgotten the append script: appends sent together
    as EVALSHA get NOSCRIPT, load it, and are stored all the same."""
    assert redis_stores.redis is not None
    await redis_stores.redis.script_flush()
    await asyncio.gather(
        *(redis_stores.events.append(f"s-{i}", "get", msg(i), TTL) for i in range(10))
    )
    for i in range(10):
        assert await replay(redis_stores, f"s-{i}", "get", "") == [msg(i)]


async def test_redis_outage_fails_every_append_made_together(own_redis: RedisServer) -> None:
    stores = await open_stores(own_redis.url, prefix="t", max_events=10, max_age=60, timeout=0.3)
    try:
        await stores.events.append("s-0", "get", msg(0), TTL)
        own_redis.kill()
        results = await asyncio.gather(
            *(stores.events.append(f"s-{i}", "get", msg(i), TTL) for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        own_redis.start()
        assert await stores.events.append("s-1", "get", msg(1), TTL)
    finally:
        await stores.aclose()


async def replay_of(events: EventStore, position: str) -> list[object]:
    return [e.message async for e in events.replay_after("s-1", "get", position)]
