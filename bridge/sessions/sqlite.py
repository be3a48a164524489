"""A :class:`SessionStore` in an SQLite file, and the connection the SQLite stores share.

One :class:`SqliteDatabase` holds one ``sqlite3`` connection, driven by one
worker thread. Every store operation is a plain function that runs there
whole (a write inside one ``BEGIN IMMEDIATE`` transaction), so operations of
concurrent coroutines never interleave and the event loop never blocks on
the disk. WAL mode lets other processes read while this one writes; the busy
timeout and the wait for the worker are both bounded by ``timeout``.

A call that is cancelled, or that gives up after ``timeout``, may still be
carried out by the worker afterwards: the store stays consistent, the caller
just does not learn the outcome. Every ``sqlite3.Error`` (locked, full, I/O
error, ``database disk image is malformed``) surfaces as
:class:`StoreUnavailable`: whatever the kind, the store cannot serve the call.

Schema::

    bridge_sessions(session_id TEXT PRIMARY KEY, record TEXT, expires_at REAL, owner TEXT,
                    used_at REAL)

``record`` is :meth:`SessionRecord.to_json`; ``expires_at`` and ``used_at``
(the last create, save or touch) are Unix seconds; ``owner`` is ``p:`` + the
record's principal, ``''`` for none. ``owner`` and ``used_at`` are added to
older files on open, indexed together for ``create``'s cap.
Expiry is checked on read; every write also deletes up to
:data:`PURGE_BATCH` expired records.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from bridge.sessions.store import SessionRecord, StoreUnavailable

T = TypeVar("T")

#: Most expired rows deleted per write (bounded work per call).
PURGE_BATCH: Final = 100
#: The row :meth:`SqliteSessionStore.ping` writes, already expired (never a
#: session: ids are URL-safe base64) and purged by a later write.
PROBE_ID: Final = "!probe"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS bridge_sessions (
    session_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bridge_sessions_expires_at ON bridge_sessions (expires_at);
CREATE TABLE IF NOT EXISTS bridge_values (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS bridge_values_expires_at ON bridge_values (expires_at);
"""


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; writes BEGIN explicitly.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL survives a process crash; a power cut may lose the
        # last transactions, which for session state only means a re-initialize.
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class SqliteDatabase:
    """One SQLite connection and the one thread that uses it.

    Writes are committed in groups (issue #13): the writes that arrive while
    the thread is busy run together in the next ``BEGIN IMMEDIATE``
    transaction, each inside a savepoint of its own, and one ``COMMIT`` makes
    them all durable. A write whose work raises is rolled back to its
    savepoint alone; the others still commit. A failed ``BEGIN`` or
    ``COMMIT`` fails every write of the group. A write's caller returns only
    after its group committed, so what a caller was told is stored is stored,
    as with a transaction per write; the group shares the pages SQLite writes
    to the WAL per commit, which is most of a small write's cost.
    """

    def __init__(
        self, executor: ThreadPoolExecutor, conn: sqlite3.Connection, timeout: float
    ) -> None:
        self._executor = executor
        self._conn = conn
        self._timeout = timeout
        self._closed = False
        # Writes not yet taken by the thread; _flushing: a group job is queued or running.
        self._lock = threading.Lock()
        self._pending: list[_Write[Any]] = []
        self._flushing = False

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        timeout: float,  # noqa: ASYNC109 - bounds every later call too, not just this one
    ) -> SqliteDatabase:
        """Open (or create) the database file; raise ``sqlite3.Error`` if it cannot be."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-sqlite")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                conn = await loop.run_in_executor(executor, _connect, path, timeout)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn, timeout)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in the worker thread, outside any transaction.

        Raises:
            StoreUnavailable: closed, no answer within ``timeout`` seconds, or a ``sqlite3.Error``.
        """
        if self._closed:
            raise StoreUnavailable("sqlite store is closed")
        loop = asyncio.get_running_loop()
        return await self._bounded(loop.run_in_executor(self._executor, work, self._conn))

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in the worker thread inside a transaction (grouped: see the class).

        Raises:
            StoreUnavailable: as :meth:`read`.
        """
        if self._closed:
            raise StoreUnavailable("sqlite store is closed")
        loop = asyncio.get_running_loop()
        write: _Write[T] = _Write(work, loop.create_future())
        with self._lock:
            self._pending.append(write)
            start, self._flushing = not self._flushing, True
        if start:
            self._executor.submit(self._flush, loop)
        return await self._bounded(write.done)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _bounded(self, future: asyncio.Future[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError as exc:
            raise StoreUnavailable(f"sqlite did not answer within {self._timeout}s") from exc
        except sqlite3.Error as exc:  # locked, disk full, I/O error, a corrupt page
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the thread: commit the writes pending now as one group, then hand back.

        One group per job: reads queued meanwhile run before the next group.
        """
        with self._lock:
            group, self._pending = self._pending, []
        try:
            outcomes = _commit_group(self._conn, group) if group else []
        except BaseException as exc:  # not an Exception: still answer, and flush again
            outcomes = [(write, None, StoreUnavailable(f"sqlite: {exc!r}")) for write in group]
        with self._lock:
            again = self._flushing = bool(self._pending)
        if again:
            try:
                self._executor.submit(self._flush, loop)
            except RuntimeError:  # closed meanwhile: what is left fails now, not at its timeout
                with self._lock:
                    left, self._pending, self._flushing = self._pending, [], False
                closed = StoreUnavailable("sqlite store is closed")
                outcomes += [(write, None, closed) for write in left]
        if outcomes:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, outcomes)


@dataclasses.dataclass(slots=True)
class _Write(Generic[T]):
    work: Callable[[sqlite3.Connection], T]
    done: asyncio.Future[T]


#: A write, and what its work returned or raised.
_Outcome = tuple["_Write[Any]", Any, BaseException | None]


def _commit_group(conn: sqlite3.Connection, group: list[_Write[Any]]) -> list[_Outcome]:
    # IMMEDIATE takes the write lock up front, so a second process makes
    # us wait (bounded by the busy timeout) instead of failing mid-way.
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return [(write, None, exc) for write in group]
    outcomes: list[_Outcome] = []
    try:
        for write in group:
            conn.execute("SAVEPOINT bridge_write")
            try:
                result = write.work(conn)
            except Exception as exc:  # this write's alone: undo it, keep the others
                conn.execute("ROLLBACK TO bridge_write")
                conn.execute("RELEASE bridge_write")
                outcomes.append((write, None, exc))
                continue
            conn.execute("RELEASE bridge_write")
            outcomes.append((write, result, None))
        conn.execute("COMMIT")
    except BaseException as exc:  # the transaction itself failed (COMMIT, a savepoint, I/O)
        if conn.in_transaction:  # also after a failed COMMIT, or the next BEGIN fails
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if not isinstance(exc, Exception):
            raise
        return [(write, None, exc) for write in group]
    return outcomes


def _settle(outcomes: list[_Outcome]) -> None:
    """On the loop: each waiting write gets its result or error (a cancelled one, nothing)."""
    for write, result, error in outcomes:
        if write.done.done():
            continue
        if error is None:
            write.done.set_result(result)
        else:
            write.done.set_exception(error)


def placeholders(count: int) -> str:
    """``?, ?, ...`` for an ``IN (...)`` of ``count`` values."""
    return ", ".join("?" * count)


#: A store operation run inside another's write: ``(conn, session_id, ttl) -> touched``.
InTransaction = Callable[[sqlite3.Connection, str, float], bool]


class SqliteSessionStore:
    """Session records in ``bridge_sessions``; see the module docstring."""

    def __init__(self, db: SqliteDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    @classmethod
    async def open(
        cls, db: SqliteDatabase, *, clock: Callable[[], float] = time.time
    ) -> SqliteSessionStore:
        """The store over ``db``, creating its table if need be."""
        await db.read(lambda conn: conn.executescript(_SCHEMA))
        if await db.read(_needs_migration):  # a write only when there is something to do
            await db.write(_migrate)
        return cls(db, clock=clock)

    async def create(
        self,
        record: SessionRecord,
        ttl: float,
        *,
        max_per_principal: int | None = None,
        keep: Collection[str] = (),
    ) -> list[str]:
        now, text, owner = self._clock(), record.to_json(), _owner(record.principal)
        session_id, kept = record.session_id, frozenset(keep)

        def work(conn: sqlite3.Connection) -> list[str]:
            _save(conn, now, session_id, text, now + ttl, owner)
            if max_per_principal is None:
                return []
            return _cap(conn, now, record, max_per_principal, kept)

        return await self._db.write(work)

    async def save(self, record: SessionRecord, ttl: float) -> None:
        now, text, owner = self._clock(), record.to_json(), _owner(record.principal)
        await self._db.write(
            lambda conn: _save(conn, now, record.session_id, text, now + ttl, owner)
        )

    async def get(self, session_id: str) -> SessionRecord | None:
        now = self._clock()
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT record FROM bridge_sessions WHERE session_id = ? AND expires_at > ?",
                (session_id, now),
            ).fetchone()
        )
        return None if row is None else SessionRecord.readable(row[0])

    async def touch(self, session_id: str, ttl: float) -> bool:
        now = self._clock()
        return await self._db.write(lambda conn: _touch(conn, now, session_id, now + ttl))

    def touch_in(
        self, db: SqliteDatabase
    ) -> Callable[[sqlite3.Connection, str, float], bool] | None:
        """:meth:`touch` as a step of another write on ``db`` (an event's append: one
        transaction, one trip to the database's thread, issue #13); None if the records
        live in another database."""
        if db is not self._db:
            return None

        def touch(conn: sqlite3.Connection, session_id: str, ttl: float) -> bool:
            now = self._clock()
            return _touch(conn, now, session_id, now + ttl)

        return touch

    async def delete(self, session_id: str) -> None:
        now = self._clock()
        await self._db.write(lambda conn: _delete(conn, now, session_id))

    async def list(self, limit: int) -> list[SessionRecord]:
        now = self._clock()
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT record FROM bridge_sessions WHERE expires_at > ? LIMIT ?", (now, limit)
            ).fetchall()
        )
        found = (SessionRecord.readable(row[0]) for row in rows)
        return [record for record in found if record is not None]

    async def put_value(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> str:
        now = self._clock()
        return await self._db.write(
            lambda conn: _put_value(conn, now, key, value, now + ttl, only_new)
        )

    async def get_value(self, key: str) -> str | None:
        now = self._clock()
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT value FROM bridge_values WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def ping(self) -> None:
        now, nonce = self._clock(), secrets.token_hex(8)
        await self._db.write(lambda conn: _save(conn, now, PROBE_ID, nonce, now - 1))
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT record FROM bridge_sessions WHERE session_id = ?", (PROBE_ID,)
            ).fetchone()
        )
        if row is None or row[0] != nonce:
            raise StoreUnavailable("sqlite: the probe record did not read back")

    async def aclose(self) -> None:
        """Nothing to release: the shared :class:`SqliteDatabase` is closed by its owner."""


def _purge(conn: sqlite3.Connection, now: float) -> None:
    conn.execute(
        "DELETE FROM bridge_sessions WHERE session_id IN ("
        " SELECT session_id FROM bridge_sessions WHERE expires_at <= ?"
        " ORDER BY expires_at LIMIT ?)",
        (now, PURGE_BATCH),
    )


def _owner(principal: str | None) -> str:
    """The ``owner`` column of a principal's records: '' for None (auth off)."""
    return "" if principal is None else "p:" + principal


def _save(
    conn: sqlite3.Connection,
    now: float,
    session_id: str,
    text: str,
    expires_at: float,
    owner: str = "",
) -> None:
    _purge(conn, now)
    conn.execute(
        "INSERT INTO bridge_sessions (session_id, record, expires_at, owner, used_at)"
        " VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (session_id) DO UPDATE SET record = excluded.record,"
        " expires_at = excluded.expires_at, owner = excluded.owner, used_at = excluded.used_at",
        (session_id, text, expires_at, owner, now),
    )


def _cap(
    conn: sqlite3.Connection, now: float, record: SessionRecord, cap: int, keep: frozenset[str]
) -> list[str]:
    """Delete the principal's other live records past ``cap - 1``, longest unused first.

    Records in ``keep`` are passed over (the principal may stay over the cap).
    """
    owner = _owner(record.principal)
    (others,) = conn.execute(
        "SELECT COUNT(*) FROM bridge_sessions"
        " WHERE owner = ? AND expires_at > ? AND session_id <> ?",
        (owner, now, record.session_id),
    ).fetchone()
    excess = int(others) - max(cap - 1, 0)
    if excess <= 0:
        return []
    rows = conn.execute(
        "SELECT session_id FROM bridge_sessions"
        " WHERE owner = ? AND expires_at > ? AND session_id <> ?"
        " ORDER BY used_at, session_id LIMIT ?",
        (owner, now, record.session_id, excess + len(keep)),
    ).fetchall()
    evicted = [str(row[0]) for row in rows if row[0] not in keep][:excess]
    for start in range(0, len(evicted), 500):
        batch = evicted[start : start + 500]
        conn.execute(
            f"DELETE FROM bridge_sessions WHERE session_id IN ({placeholders(len(batch))})",
            batch,
        )
    return evicted


def _needs_migration(conn: sqlite3.Connection) -> bool:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(bridge_sessions)")}
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(bridge_sessions)")}
    return not {"owner", "used_at"} <= columns or "bridge_sessions_used" not in indexes


def _migrate(conn: sqlite3.Connection) -> None:
    """Add ``owner`` and ``used_at`` (for create's cap) to a file made before them."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(bridge_sessions)")}
    if "owner" not in columns:
        conn.execute("ALTER TABLE bridge_sessions ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        conn.execute(
            "UPDATE bridge_sessions SET owner = 'p:' || json_extract(record, '$.principal')"
            " WHERE json_valid(record) AND json_extract(record, '$.principal') IS NOT NULL"
        )
    if "used_at" not in columns:  # records made before it count as unused the longest
        conn.execute("ALTER TABLE bridge_sessions ADD COLUMN used_at REAL NOT NULL DEFAULT 0")
    conn.execute("DROP INDEX IF EXISTS bridge_sessions_owner")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS bridge_sessions_used ON bridge_sessions (owner, used_at)"
    )


def _touch(conn: sqlite3.Connection, now: float, session_id: str, expires_at: float) -> bool:
    _purge(conn, now)
    cursor = conn.execute(
        "UPDATE bridge_sessions SET expires_at = ?, used_at = ?"
        " WHERE session_id = ? AND expires_at > ?",
        (expires_at, now, session_id, now),
    )
    return cursor.rowcount == 1


def _delete(conn: sqlite3.Connection, now: float, session_id: str) -> None:
    _purge(conn, now)
    conn.execute("DELETE FROM bridge_sessions WHERE session_id = ?", (session_id,))


def _put_value(
    conn: sqlite3.Connection, now: float, key: str, value: str, expires_at: float, only_new: bool
) -> str:
    conn.execute(
        "DELETE FROM bridge_values WHERE key IN ("
        " SELECT key FROM bridge_values WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, PURGE_BATCH),
    )
    if only_new:
        row = conn.execute(
            "SELECT value FROM bridge_values WHERE key = ? AND expires_at > ?", (key, now)
        ).fetchone()
        if row is not None:
            return str(row[0])
    conn.execute(
        "INSERT INTO bridge_values (key, value, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        (key, value, expires_at),
    )
    return value
