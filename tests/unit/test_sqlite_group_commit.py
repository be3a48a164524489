"""SQLite writes committed in groups (issue #13): one COMMIT for the writes
that arrive together, each write still all-or-nothing and durable when its
caller returns. A real database file on disk; no fakes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.sessions.sqlite_db import SqliteDatabase
from bridge.sessions.store import StoreUnavailable

WRITES = 50


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = await SqliteDatabase.open(tmp_path / "db.sqlite", timeout=5.0)
    await database.write(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    yield database
    await database.aclose()


def insert(key: int) -> Callable[[sqlite3.Connection], int]:
    def work(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        return key

    return work


def committed(path: Path) -> list[int]:
    """What another connection, in another thread, sees on disk."""
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT k FROM t ORDER BY k")]
    finally:
        conn.close()


async def test_concurrent_writes_share_commits_and_each_is_durable_on_return(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    commits: list[str] = []
    await db.read(lambda conn: conn.set_trace_callback(
        lambda sql: commits.append(sql) if sql == "COMMIT" else None
    ))  # fmt: skip
    results = await asyncio.gather(*(db.write(insert(k)) for k in range(WRITES)))
    assert results == list(range(WRITES))
    # The first write's job may take it alone; the rest wait for the next group.
    assert 1 <= len(commits) <= 3, commits
    assert committed(tmp_path / "db.sqlite") == list(range(WRITES))


async def test_a_failing_write_is_undone_alone(db: SqliteDatabase, tmp_path: Path) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES (1000)")
        conn.execute("INSERT INTO t (k) VALUES (1)")  # 1 is taken: IntegrityError

    first = await db.write(insert(1))
    results = await asyncio.gather(
        db.write(insert(2)), db.write(half_then_fail), db.write(insert(3)),
        return_exceptions=True,
    )  # fmt: skip
    assert first == 1
    assert results[0] == 2
    assert results[2] == 3
    assert isinstance(results[1], StoreUnavailable)
    assert "UNIQUE" in str(results[1])
    assert committed(tmp_path / "db.sqlite") == [1, 2, 3]  # not 1000


async def test_an_error_of_the_work_itself_reaches_its_caller_unchanged(
    db: SqliteDatabase,
) -> None:
    def broken(_: sqlite3.Connection) -> None:
        raise ValueError("a bug in a store operation")

    results = await asyncio.gather(db.write(broken), db.write(insert(7)), return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert results[1] == 7


async def test_a_group_that_cannot_begin_fails_every_write_in_it(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    # Another process holds the write lock past the busy timeout.
    fast = await SqliteDatabase.open(tmp_path / "db.sqlite", timeout=0.2)
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        results = await asyncio.gather(
            fast.write(insert(10)), fast.write(insert(11)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        # The callers gave up at their timeout; the thread's BEGIN waits out the
        # same busy timeout. A read queued behind it returns once it has failed.
        for _ in range(50):
            with contextlib.suppress(StoreUnavailable):
                await fast.read(lambda _: None)
                break
        other.execute("ROLLBACK")
        assert await fast.write(insert(12)) == 12  # and the next group goes through
    finally:
        other.close()
        await fast.aclose()
    assert committed(tmp_path / "db.sqlite") == [12]


async def test_writes_after_close_are_refused(db: SqliteDatabase) -> None:
    await db.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await db.write(insert(1))
