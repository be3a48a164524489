"""The SessionStore contract (bridge/sessions/store.py), for every backend.

Round trips of every :class:`SessionRecord` field; sliding expiry ``ttl``
seconds after the last create/save/touch (memory and SQLite by moving their
clock, Redis by the TTL on its key); expired records purged by later writes;
Redis outages surfacing as :class:`StoreUnavailable` within a bound and
healing without a restart; and the URLs :func:`open_stores` accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster

from bridge.app import replica_for
from bridge.errors import ConfigError
from bridge.events.memory import MemoryEventStore
from bridge.events.redis import RedisEventStore
from bridge.events.sqlite import SqliteEventStore
from bridge.metrics import Metrics
from bridge.sessions import redis as redis_sessions
from bridge.sessions.memory import MemorySessionStore
from bridge.sessions.redis import RedisSessionStore
from bridge.sessions.sqlite import SqliteSessionStore
from bridge.sessions.store import SessionRecord, StoreUnavailable
from bridge.settings import Settings
from bridge.stores import open_stores, redis_client
from tests.contract.conftest import Backend
from tests.redis_server import RedisServer

TTL = 60.0
OUTAGE_TIMEOUT = 0.3  # seconds per store call in the outage tests
# Every attempt may wait one timeout, plus the backoff between attempts.
OUTAGE_BOUND = (
    (redis_sessions.RETRIES + 1) * OUTAGE_TIMEOUT
    + redis_sessions.RETRIES * redis_sessions.RETRY_CAP
    + 1.0  # scheduling slack
)


def record(session_id: str = "s-1", **changes: object) -> SessionRecord:
    """A record with every field set to something other than its default."""
    full = SessionRecord(
        session_id=session_id,
        server="everything",
        protocol_version="2025-11-25",
        client_params={
            "protocolVersion": "2025-11-25",
            "capabilities": {"roots": {"listChanged": True}},
            "clientInfo": {"name": "tést ✓", "version": "1.0"},
        },
        init_result={"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}},
        upstream={"session_id": "up-1", "last_event_id": "e.7"},
        log_level="debug",
        subscriptions=["file:///a", "file:///b"],
        principal="alice",
        created_at=1_800_000_000.25,
        last_seen_at=1_800_000_100.5,
        used=True,
    )
    return dataclasses.replace(full, **changes)  # type: ignore[arg-type]


async def age(stores: Backend, seconds: float, *session_ids: str) -> None:
    """As if ``seconds`` passed since the records were last used: the fake clock
    moves (memory, SQLite), or each record's Redis TTL is shortened by as much."""
    if stores.clock is not None:
        stores.advance(seconds)
        return
    assert stores.redis is not None
    for session_id in session_ids:
        key = f"{stores.prefix}:{{{session_id}}}:session"
        # Absolute expiry times (Redis >= 7), not PTTL then PEXPIRE: the time
        # between those two would make a record look younger by as much, and
        # records made a millisecond apart could swap places (a flake under load).
        expires_at = int(await stores.redis.execute_command("PEXPIRETIME", key))
        await stores.redis.pexpireat(key, expires_at - int(seconds * 1000))


# --- every backend --------------------------------------------------------------


async def test_create_then_get_round_trips_every_field(stores: Backend) -> None:
    await stores.sessions.create(record(), TTL)

    assert await stores.sessions.get("s-1") == record()


async def test_get_of_an_unknown_id_is_none(stores: Backend) -> None:
    assert await stores.sessions.get("nobody") is None


async def test_save_replaces_the_facts(stores: Backend) -> None:
    await stores.sessions.create(record(), TTL)
    changed = record(log_level="error", subscriptions=[], upstream={}, principal=None)

    await stores.sessions.save(changed, TTL)

    assert await stores.sessions.get("s-1") == changed


async def test_records_are_copied_in_and_out(stores: Backend) -> None:
    mine = record()
    await stores.sessions.create(mine, TTL)
    mine.subscriptions.append("file:///mutated")
    got = await stores.sessions.get("s-1")
    assert got is not None
    got.client_params["mutated"] = True

    assert await stores.sessions.get("s-1") == record()


async def test_touch_says_whether_the_record_lives(stores: Backend) -> None:
    await stores.sessions.create(record(), TTL)

    assert await stores.sessions.touch("s-1", TTL) is True
    assert await stores.sessions.touch("nobody", TTL) is False
    assert await stores.sessions.get("nobody") is None  # touch never creates


async def test_delete_forgets_and_unknown_ids_are_no_error(stores: Backend) -> None:
    await stores.sessions.create(record("s-1"), TTL)
    await stores.sessions.create(record("s-2"), TTL)

    await stores.sessions.delete("s-1")
    await stores.sessions.delete("nobody")

    assert await stores.sessions.get("s-1") is None
    assert await stores.sessions.touch("s-1", TTL) is False
    assert await stores.sessions.get("s-2") == record("s-2")


async def test_list_returns_live_records_up_to_limit(stores: Backend) -> None:
    for n in range(5):
        await stores.sessions.create(record(f"s-{n}"), TTL)
    await stores.sessions.delete("s-4")

    listed = await stores.sessions.list(10)
    some = await stores.sessions.list(2)

    assert sorted(r.session_id for r in listed) == ["s-0", "s-1", "s-2", "s-3"]
    assert listed[0] == record(listed[0].session_id)
    assert len(some) == 2
    assert {r.session_id for r in some} <= {"s-0", "s-1", "s-2", "s-3"}


async def test_create_caps_a_principals_records_longest_unused_first(stores: Backend) -> None:
    """Issue #15: one key made 2,766 records in 50 s, each kept for the whole TTL."""
    sessions = stores.sessions
    for n, ttl in enumerate((100.0, 200.0, 300.0)):
        assert await sessions.create(record(f"a-{n}"), ttl, max_per_principal=3) == []
    await sessions.create(record("b-0", principal="bob"), 50.0, max_per_principal=3)
    await age(stores, 10.0, "a-0", "a-1", "a-2", "b-0")
    assert await sessions.touch("a-0", 1000.0)  # used again: now the last to go

    assert await sessions.create(record("a-3"), 400.0, max_per_principal=3) == ["a-1"]
    # The new record stays even when it expires first (an unused one, short TTL).
    assert await sessions.create(record("a-4"), 10.0, max_per_principal=3) == ["a-2"]

    assert await sessions.get("a-1") is None
    assert await sessions.get("a-2") is None
    for kept in ("a-0", "a-3", "a-4", "b-0"):  # bob is capped apart
        assert await sessions.get(kept) is not None, kept
    assert len(await sessions.list(10)) == 4


async def test_the_cap_goes_by_last_use_not_expiry_and_spares_kept_ids(stores: Backend) -> None:
    """Issue #15 soak: by expiry, the cap deleted brand-new sessions (an unused
    record's TTL is short) and ones serving a stream, 404s by the thousand."""
    sessions = stores.sessions
    await sessions.create(record("a-old", used=True), 3600.0, max_per_principal=3)
    await sessions.create(record("b-old", used=True), 3600.0, max_per_principal=3)
    await sessions.create(record("c-new", used=False), 900.0, max_per_principal=3)

    # Longest unused first, though it expires last: not the new, short-lived one.
    assert await sessions.create(record("d-new"), 900.0, max_per_principal=3) == ["a-old"]
    # A record serving a stream here is passed over.
    evicted = await sessions.create(record("e-new"), 900.0, max_per_principal=3, keep=["b-old"])
    assert evicted == ["c-new"]
    # With every other record kept, the principal goes over the cap instead.
    kept = ["b-old", "d-new", "e-new"]
    assert await sessions.create(record("f-new"), 900.0, max_per_principal=3, keep=kept) == []
    assert {r.session_id for r in await sessions.list(10)} == {"b-old", "d-new", "e-new", "f-new"}


async def test_the_cap_counts_only_live_records_and_none_is_one_principal(
    stores: Backend,
) -> None:
    sessions = stores.sessions
    await sessions.create(record("n-0", principal=None), TTL, max_per_principal=2)
    await sessions.create(record("n-1", principal=None), TTL, max_per_principal=2)
    await sessions.delete("n-0")  # gone records do not count
    assert await sessions.create(record("n-2", principal=None), TTL, max_per_principal=2) == []
    assert await sessions.create(record("n-3", principal=None), TTL, max_per_principal=2) == ["n-1"]
    assert await sessions.create(record("x-0"), TTL) == []  # no cap asked: none applied
    assert {r.session_id for r in await sessions.list(10)} == {"n-2", "n-3", "x-0"}


async def test_ping_answers_and_its_probe_is_never_seen(stores: Backend) -> None:
    await stores.sessions.ping()
    await stores.sessions.ping()  # the probe record is written over, not added to
    assert await stores.sessions.list(10) == []


async def test_values_live_apart_from_records_and_first_writer_wins(stores: Backend) -> None:
    """put_value/get_value: the 2026-07-28 front door's key and holds (bridge.modern)."""
    assert await stores.sessions.get_value("k") is None
    assert await stores.sessions.put_value("k", "one", 60) == "one"
    assert await stores.sessions.put_value("k", "two", 60, only_new=True) == "one"
    assert await stores.sessions.get_value("k") == "one"
    assert await stores.sessions.put_value("k", "three", 60) == "three"
    assert await stores.sessions.get_value("k") == "three"
    assert await stores.sessions.list(10) == []  # values are not session records


# --- expiry, by moving the clock (memory, SQLite) ------------------------------


async def test_values_expire_after_their_ttl(clocked: Backend) -> None:
    await clocked.sessions.put_value("k", "one", 10)
    clocked.advance(9.9)
    assert await clocked.sessions.get_value("k") == "one"
    clocked.advance(0.2)
    assert await clocked.sessions.get_value("k") is None
    assert await clocked.sessions.put_value("k", "two", 10, only_new=True) == "two"


async def test_record_lives_ttl_after_its_last_write(clocked: Backend) -> None:
    await clocked.sessions.create(record(), 10)
    clocked.advance(9.9)
    assert await clocked.sessions.get("s-1") is not None

    assert await clocked.sessions.touch("s-1", 10) is True
    clocked.advance(9.9)
    assert await clocked.sessions.get("s-1") is not None

    await clocked.sessions.save(record(log_level="info"), 10)
    clocked.advance(9.9)
    assert await clocked.sessions.get("s-1") == record(log_level="info")

    clocked.advance(0.2)
    assert await clocked.sessions.get("s-1") is None
    assert await clocked.sessions.list(10) == []
    assert await clocked.sessions.touch("s-1", 10) is False


async def test_an_expired_id_can_be_created_afresh(clocked: Backend) -> None:
    await clocked.sessions.create(record(), 10)
    clocked.advance(11)

    await clocked.sessions.create(record(principal="bob"), 10)

    assert await clocked.sessions.get("s-1") == record(principal="bob")


async def test_writes_purge_expired_records(clocked: Backend) -> None:
    for n in range(3):
        await clocked.sessions.create(record(f"s-{n}"), 10)
    clocked.advance(11)

    await clocked.sessions.delete("unrelated")

    assert clocked.rows() == 0


# --- expiry as Redis keys it ------------------------------------------------------


async def test_redis_record_key_carries_the_ttl_of_the_last_write(redis_stores: Backend) -> None:
    assert redis_stores.redis is not None
    key = f"{redis_stores.prefix}:{{s-1}}:session"

    await redis_stores.sessions.create(record(), 10)
    after_create = await redis_stores.redis.pttl(key)
    await redis_stores.sessions.touch("s-1", 100)
    after_touch = await redis_stores.redis.pttl(key)
    await redis_stores.sessions.save(record(), 1000)
    after_save = await redis_stores.redis.pttl(key)

    assert await redis_stores.keys() == [key]
    assert 0 < after_create <= 10_000
    assert 10_000 < after_touch <= 100_000
    assert 100_000 < after_save <= 1_000_000


async def test_redis_list_ignores_streams_named_like_records(redis_stores: Backend) -> None:
    await redis_stores.sessions.create(record("s-1"), TTL)
    await redis_stores.events.append("s-1", "x:session", {"jsonrpc": "2.0", "method": "m"}, TTL)

    assert [r.session_id for r in await redis_stores.sessions.list(10)] == ["s-1"]


@pytest.mark.parametrize("session_id", ["", "a{b", "a}b", "}:ev:get"])
async def test_redis_refuses_ids_that_break_the_hash_tag(
    redis_stores: Backend, session_id: str
) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        await redis_stores.sessions.create(record(session_id), TTL)

    assert await redis_stores.sessions.get(session_id) is None
    assert await redis_stores.sessions.touch(session_id, TTL) is False
    await redis_stores.sessions.delete(session_id)
    assert await redis_stores.keys() == []


# --- SQLite trouble -------------------------------------------------------------------


async def test_sqlite_lock_held_elsewhere_fails_within_bound_then_heals(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    stores = await open_stores(
        f"sqlite:///{path}", prefix="p", max_events=10, max_age=60, timeout=OUTAGE_TIMEOUT
    )
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process writing, for too long
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="sqlite"):
            await stores.sessions.create(record(), TTL)
        elapsed = time.monotonic() - started
        other.execute("ROLLBACK")

        assert elapsed < OUTAGE_TIMEOUT + 1.0
        await stores.sessions.create(record(), TTL)
        assert await stores.sessions.get("s-1") == record()
    finally:
        other.close()
        await stores.aclose()


async def test_sqlite_ping_fails_while_writes_do_though_reads_work(tmp_path: Path) -> None:
    """The readiness probe writes (issue #15): a store that reads but cannot write is down."""
    path = tmp_path / "bridge.db"
    stores = await open_stores(
        f"sqlite:///{path}", prefix="p", max_events=10, max_age=60, timeout=OUTAGE_TIMEOUT
    )
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock; WAL readers go on
        assert await stores.sessions.get("s-1") is None
        with pytest.raises(StoreUnavailable, match="sqlite"):
            await stores.sessions.ping()
        other.execute("ROLLBACK")
        await stores.sessions.ping()
    finally:
        other.close()
        await stores.aclose()


async def test_sqlite_file_from_before_the_cap_gets_its_owners_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE bridge_sessions (session_id TEXT PRIMARY KEY, record TEXT NOT NULL,"
            " expires_at REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO bridge_sessions VALUES (?, ?, ?)",
            ("old-1", record("old-1").to_json(), time.time() + TTL),
        )
    stores = await open_stores(
        f"sqlite:///{path}", prefix="p", max_events=10, max_age=60, timeout=OUTAGE_TIMEOUT
    )
    try:
        assert await stores.sessions.get("old-1") == record("old-1")
        evicted = await stores.sessions.create(record("new-1"), TTL * 2, max_per_principal=1)
        assert evicted == ["old-1"]  # alice's, although written before owners were kept
    finally:
        await stores.aclose()


async def test_sqlite_stores_refuse_calls_once_closed(tmp_path: Path) -> None:
    stores = await open_stores(
        f"sqlite:///{tmp_path}/b.db", prefix="p", max_events=10, max_age=60, timeout=1
    )
    await stores.aclose()
    await stores.aclose()  # closing twice is harmless

    with pytest.raises(StoreUnavailable, match="closed"):
        await stores.sessions.get("s-1")
    with pytest.raises(StoreUnavailable, match="closed"):
        await stores.events.append("s-1", "get", None, TTL)


# --- Redis outages ------------------------------------------------------------------


async def test_redis_outage_fails_fast_and_heals_without_restart(own_redis: RedisServer) -> None:
    stores = await open_stores(
        own_redis.url, prefix="t", max_events=10, max_age=60, timeout=OUTAGE_TIMEOUT
    )
    try:
        await stores.sessions.create(record(), TTL)  # the pool now holds a connection
        own_redis.kill()

        for call in (stores.sessions.get("s-1"), stores.sessions.ping()):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="redis"):
                await call
            assert time.monotonic() - started < OUTAGE_BOUND

        own_redis.start()  # same port, empty (nothing persisted)

        await stores.sessions.ping()
        assert await stores.sessions.get("s-1") is None
        await stores.sessions.create(record(), TTL)
        assert await stores.sessions.get("s-1") == record()
    finally:
        await stores.aclose()


async def test_redis_error_replies_are_store_errors_and_fail_the_probe(
    own_redis: RedisServer,
) -> None:
    """An ACL user without write rights: NOPERM is StoreUnavailable, and PING alone would pass."""
    admin = Redis.from_url(own_redis.url)
    await admin.acl_setuser(
        "reader",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@write"],
    )
    await admin.aclose()
    url = f"redis://reader:pw@127.0.0.1:{own_redis.port}/0"
    stores = await open_stores(url, prefix="t", max_events=10, max_age=60, timeout=1.0)
    try:
        assert await stores.sessions.get("s-1") is None  # reads work
        calls = {
            "save": lambda: stores.sessions.create(record(), TTL),
            "delete": lambda: stores.sessions.delete("s-1"),
            "append": lambda: stores.events.append("s-1", "get", None, TTL),
            "probe": stores.sessions.ping,
        }
        for name, call in calls.items():
            with pytest.raises(
                StoreUnavailable, match=f"redis {name} failed: .*(permission|can't run)"
            ):
                await call()
    finally:
        await stores.aclose()


async def test_hung_redis_fails_within_bound_then_heals(own_redis: RedisServer) -> None:
    stores = await open_stores(
        own_redis.url, prefix="t", max_events=10, max_age=60, timeout=OUTAGE_TIMEOUT
    )
    try:
        await stores.sessions.create(record(), TTL)
        own_redis.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="redis"):
            await stores.sessions.get("s-1")
        elapsed = time.monotonic() - started
        own_redis.resume()

        assert OUTAGE_TIMEOUT <= elapsed < OUTAGE_BOUND
        assert await stores.sessions.get("s-1") == record()
    finally:
        await stores.aclose()


# --- open_stores --------------------------------------------------------------------


async def _open(url: str, prefix: str = "mcpb") -> None:
    stores = await open_stores(url, prefix=prefix, max_events=10, max_age=60, timeout=1)
    await stores.aclose()


async def test_memory_url_opens_memory_stores() -> None:
    stores = await open_stores("memory://", prefix="p", max_events=10, max_age=60, timeout=1)

    assert isinstance(stores.sessions, MemorySessionStore)
    assert isinstance(stores.events, MemoryEventStore)
    await stores.aclose()


@pytest.mark.parametrize("relative", [False, True])
async def test_sqlite_url_opens_one_file_creating_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///./state/deep/bridge.db" if relative else f"sqlite:///{tmp_path}/abs/b.db"
    stores = await open_stores(url, prefix="p", max_events=10, max_age=60, timeout=1)
    try:
        assert isinstance(stores.sessions, SqliteSessionStore)
        assert isinstance(stores.events, SqliteEventStore)
        await stores.sessions.create(record(), TTL)
        await stores.events.append("s-1", "get", None, TTL)
    finally:
        await stores.aclose()

    expected = tmp_path / ("state/deep/bridge.db" if relative else "abs/b.db")
    assert expected.is_file()
    reopened = await open_stores(url, prefix="p", max_events=10, max_age=60, timeout=1)
    try:
        assert await reopened.sessions.get("s-1") == record()
    finally:
        await reopened.aclose()


REDIS_URLS = [
    "redis://127.0.0.1:6379/0",
    "redis://localhost",
    "redis://user:secret@cache.internal:6380/3",
    "rediss://cache.example.com:6380/0",
    "redis://[::1]:6379/1",
    "redis+cluster://127.0.0.1:7000",
    "redis+cluster://user:secret@node-1.internal:7000/0",
    "rediss+cluster://cache.example.com:6380",
    "REDIS+CLUSTER://[::1]:7000/",
]


@pytest.mark.parametrize("url", REDIS_URLS)
async def test_redis_urls_open_without_connecting(url: str) -> None:
    stores = await open_stores(url, prefix="mcpb", max_events=10, max_age=60, timeout=1)

    assert isinstance(stores.sessions, RedisSessionStore)
    assert isinstance(stores.events, RedisEventStore)
    cluster = "+cluster" in url.lower()
    assert isinstance(stores.redis, RedisCluster if cluster else Redis)
    await stores.aclose()


@pytest.mark.parametrize("url", REDIS_URLS)
async def test_every_redis_url_that_opens_stores_gives_a_replica_the_same_client(
    url: str,
) -> None:
    """The replica's lease and bus (bridge/replicas/) use their own clients of the store's
    kind: a gateway on ``redis+cluster://`` once failed to start there (issue #12)."""
    client = redis_client(url, timeout=1)
    try:
        assert isinstance(client, RedisCluster if "+cluster" in url.lower() else Redis)
    finally:
        await client.aclose()
    replica = replica_for(Settings(store_url=url), Metrics())
    assert replica is not None


async def test_only_redis_urls_share_their_client() -> None:
    stores = await open_stores("memory://", prefix="mcpb", max_events=10, max_age=60, timeout=1)

    assert stores.redis is None
    await stores.aclose()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("", "expected memory://"),
        ("memory", "expected memory://"),
        ("memory://somewhere", "expected memory://"),
        ("MEMORY:/", "expected memory://"),
        ("postgres://app:secret@db/x", "expected memory://"),
        ("unix:///run/redis.sock", "expected memory://"),
        ("sqlite://bridge.db", "three slashes"),
        ("sqlite:///", "directory"),
        ("sqlite:///var/lib/", "directory"),
        ("sqlite:///./", "directory"),
        ("sqlite:///var/bridge.db?mode=ro", "no query"),
        ("redis://", "expected redis://HOST:PORT/DB"),
        ("redis://:6379/0", "expected redis://HOST:PORT/DB"),
        ("redis://host:port/0", "Port could not be cast"),
        ("redis://host:0/0", "expected redis://HOST:PORT/DB"),
        ("redis://host:6379/zero", "expected redis://HOST:PORT/DB"),
        ("rediss://u:secret@[::1/0", "Invalid IPv6 URL"),
        ("redis+cluster://", "expected redis+cluster://HOST:PORT"),
        ("redis+cluster://host:0", "expected redis+cluster://HOST:PORT"),
        ("redis+cluster://u:secret@host:7000/1", "a cluster has only DB 0"),
        ("rediss+cluster://u:secret@[::1/0", "Invalid IPv6 URL"),
        ("redis+sentinel://host:26379", "redis+cluster://HOST:PORT"),
    ],
)
async def test_bad_urls_are_config_errors_that_hide_passwords(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match="store URL") as caught:
        await _open(url)

    assert complaint in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("prefix", ["", "a{b}", "with space", "glob*"])
async def test_bad_redis_prefixes_are_config_errors(prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        await _open("redis://127.0.0.1:6379/0", prefix)


async def test_sqlite_file_that_cannot_be_used_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    (tmp_path / "not-a-database.db").write_bytes(b"hello, this is not SQLite" * 100)

    with pytest.raises(ConfigError, match="cannot open"):
        await _open(f"sqlite:///{tmp_path}/a-directory.db")
    with pytest.raises(ConfigError, match="cannot"):
        await _open(f"sqlite:///{tmp_path}/not-a-database.db")


async def test_sqlite_file_from_before_the_cap_columns_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE bridge_sessions"
            " (session_id TEXT PRIMARY KEY, record TEXT NOT NULL, expires_at REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO bridge_sessions VALUES (?, ?, ?)",
            ("old-0", record("old-0").to_json(), time.time() + TTL),
        )
    stores = await open_stores(
        f"sqlite:///{path}", prefix="p", max_events=10, max_age=60, timeout=5.0
    )
    try:
        assert await stores.sessions.get("old-0") == record("old-0")
        await stores.sessions.create(record("new-0"), TTL, max_per_principal=2)
        # The record from before counts for its principal, as unused the longest.
        assert await stores.sessions.create(record("new-1"), TTL, max_per_principal=2) == ["old-0"]
    finally:
        await stores.aclose()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(bridge_sessions)")}
    assert "bridge_sessions_used" in indexes


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"session_id": 5, "server": "x"}', "{}"])
async def test_an_unreadable_record_is_none_not_an_error(stores: Backend, text: str) -> None:
    """Issue #15: a corrupt record made every request of its session a 500."""
    await stores.sessions.create(record("bad"), TTL)
    await stores.sessions.create(record("good"), TTL)
    if stores.redis is not None:
        await stores.redis.set(f"{stores.prefix}:{{bad}}:session", text, px=60_000)
    elif stores.sqlite_path is not None:
        with contextlib.closing(sqlite3.connect(stores.sqlite_path)) as conn, conn:
            conn.execute("UPDATE bridge_sessions SET record = ? WHERE session_id = 'bad'", (text,))
    else:
        assert isinstance(stores.sessions, MemorySessionStore)
        stores.sessions._records["bad"] = (text, stores.sessions._records["bad"][1])

    assert await stores.sessions.get("bad") is None
    assert [r.session_id for r in await stores.sessions.list(10)] == ["good"]


async def test_a_burst_of_calls_past_redis_py_s_default_pool_waits_instead_of_failing(
    stores: Backend,
) -> None:
    """300 calls at once (a burst of clients): redis-py 8's default pool fails the 101st
    at once ("Too many connections", a 503); the store's pool lets it wait its turn."""
    await stores.sessions.create(record(), TTL)
    found = await asyncio.gather(*(stores.sessions.get("s-1") for _ in range(300)))
    assert found == [record()] * 300
