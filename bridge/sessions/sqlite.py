"""A :class:`SessionStore` in an SQLite file, on the shared
:class:`~bridge.sessions.sqlite_db.SqliteDatabase` (one connection, one
worker thread; its errors surface as :class:`StoreUnavailable`).

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

import secrets
import sqlite3
import time
from collections.abc import Callable, Collection
from typing import Final

from bridge.sessions.sqlite_db import SqliteDatabase, placeholders
from bridge.sessions.store import SessionRecord, StoreUnavailable

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
