"""An :class:`EventStore` in an SQLite file, sharing the sessions' connection.

Schema::

    bridge_streams(id INTEGER PRIMARY KEY, session_id TEXT, stream TEXT,
                   expires_at REAL, UNIQUE (session_id, stream))
    bridge_events(position INTEGER PRIMARY KEY AUTOINCREMENT, stream_id INTEGER,
                  stored_at REAL, message TEXT)   -- message NULL: priming event

A position is the decimal string of ``bridge_events.position``.
AUTOINCREMENT guarantees it is never reused, even after the newest event of
the file is deleted, so positions strictly increase within a stream.

An append, in one transaction: deletes up to :data:`PURGE_BATCH` expired
streams with their events, (re)starts the stream's sliding expiry at
``ttl``, inserts the event, and trims the stream to ``max_events`` events
none older than ``max_age``. Reads check expiry themselves.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from bridge import jsonrpc
from bridge.events.store import StoredEvent
from bridge.jsonrpc import Message
from bridge.sessions.sqlite import SqliteSessionStore
from bridge.sessions.sqlite_db import SqliteDatabase, placeholders
from bridge.sessions.store import SessionStore

#: Most expired streams deleted per write (bounded work per call).
PURGE_BATCH: Final = 100
#: Events read from the database per step of a replay.
REPLAY_BATCH: Final = 100
# At most 18 digits: always fits SQLite's signed 64-bit INTEGER.
_POSITION: Final = re.compile(r"[0-9]{1,18}")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS bridge_streams (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    expires_at REAL NOT NULL,
    UNIQUE (session_id, stream)
);
CREATE INDEX IF NOT EXISTS bridge_streams_expires_at ON bridge_streams (expires_at);
CREATE TABLE IF NOT EXISTS bridge_events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS bridge_events_stream ON bridge_events (stream_id, position);
"""


class SqliteEventStore:
    """Events per ``(session_id, stream)``; see the module docstring.

    Args:
        db: the connection, shared with :class:`SqliteSessionStore`.
        max_events: most events kept per stream (oldest dropped).
        max_age: seconds an event is kept, however short its stream.
        sessions: if given, every append also touches the session's record
            with the same ``ttl``, as the Redis store does.
        clock: Unix time in seconds (a seam for tests).
    """

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        max_events: int,
        max_age: float,
        sessions: SessionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._max_events = max_events
        self._max_age = max_age
        self._sessions = sessions
        # Records in this same file: touched in the append's own transaction.
        self._touch_in_append = (
            sessions.touch_in(db) if isinstance(sessions, SqliteSessionStore) else None
        )
        self._clock = clock

    @classmethod
    async def open(
        cls,
        db: SqliteDatabase,
        *,
        max_events: int,
        max_age: float,
        sessions: SessionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SqliteEventStore:
        """The store over ``db``, creating its tables if need be."""
        await db.read(lambda conn: conn.executescript(_SCHEMA))
        return cls(db, max_events=max_events, max_age=max_age, sessions=sessions, clock=clock)

    async def append(
        self, session_id: str, stream: str, message: Message | None, ttl: float
    ) -> str:
        text = None if message is None else jsonrpc.encode(message)
        now = self._clock()
        touch = self._touch_in_append

        def work(conn: sqlite3.Connection) -> int:
            position = self._append(conn, now, session_id, stream, text, ttl)
            if touch is not None:
                touch(conn, session_id, ttl)
            return position

        position = await self._db.write(work)
        if self._sessions is not None and touch is None:
            await self._sessions.touch(session_id, ttl)
        return str(position)

    async def replay_after(
        self, session_id: str, stream: str, position: str
    ) -> AsyncIterator[StoredEvent]:
        if not (position == "" or _POSITION.fullmatch(position)):
            return
        after, now = (int(position) if position else -1), self._clock()
        stream_id = await self._db.read(
            functools.partial(
                _replayable, now=now, session_id=session_id, stream=stream, after=after
            )
        )
        while stream_id is not None:
            page = await self._db.read(functools.partial(_page, stream_id=stream_id, after=after))
            for event in page:
                yield event
            if len(page) < REPLAY_BATCH:
                return
            after = int(page[-1].position)

    async def delete_session(self, session_id: str) -> None:
        now = self._clock()
        await self._db.write(lambda conn: _delete_session(conn, now, session_id))

    def _append(
        self,
        conn: sqlite3.Connection,
        now: float,
        session_id: str,
        stream: str,
        text: str | None,
        ttl: float,
    ) -> int:
        _purge(conn, now)
        stream_id = _restart(conn, now, session_id, stream, now + ttl)
        cursor = conn.execute(
            "INSERT INTO bridge_events (stream_id, stored_at, message) VALUES (?, ?, ?)",
            (stream_id, now, text),
        )
        conn.execute(
            "DELETE FROM bridge_events WHERE stream_id = ? AND (stored_at <= ? OR position <= ("
            " SELECT position FROM bridge_events WHERE stream_id = ?"
            " ORDER BY position DESC LIMIT 1 OFFSET ?))",
            (stream_id, now - self._max_age, stream_id, self._max_events),
        )
        assert cursor.lastrowid is not None  # set by every successful INSERT
        return cursor.lastrowid


def _drop_streams(conn: sqlite3.Connection, ids: list[int]) -> None:
    if ids:
        marks = placeholders(len(ids))
        conn.execute(f"DELETE FROM bridge_events WHERE stream_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM bridge_streams WHERE id IN ({marks})", ids)


def _purge(conn: sqlite3.Connection, now: float) -> None:
    rows = conn.execute(
        "SELECT id FROM bridge_streams WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
        (now, PURGE_BATCH),
    ).fetchall()
    _drop_streams(conn, [row[0] for row in rows])


def _restart(
    conn: sqlite3.Connection, now: float, session_id: str, stream: str, expires_at: float
) -> int:
    """The stream's id, its expiry pushed back; an expired stream starts empty."""
    rows = conn.execute(
        "SELECT id FROM bridge_streams WHERE session_id = ? AND stream = ? AND expires_at <= ?",
        (session_id, stream, now),
    ).fetchall()
    _drop_streams(conn, [row[0] for row in rows])
    conn.execute(
        "INSERT INTO bridge_streams (session_id, stream, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (session_id, stream) DO UPDATE SET expires_at = excluded.expires_at",
        (session_id, stream, expires_at),
    )
    row = conn.execute(
        "SELECT id FROM bridge_streams WHERE session_id = ? AND stream = ?", (session_id, stream)
    ).fetchone()
    return int(row[0])


def _replayable(
    conn: sqlite3.Connection, *, now: float, session_id: str, stream: str, after: int
) -> int | None:
    """The live stream's id if it still holds the event at ``after`` (-1: any), else None."""
    if after < 0:
        row = conn.execute(
            "SELECT id FROM bridge_streams WHERE session_id = ? AND stream = ? AND expires_at > ?",
            (session_id, stream, now),
        ).fetchone()
        return None if row is None else int(row[0])
    row = conn.execute(
        "SELECT s.id FROM bridge_streams AS s JOIN bridge_events AS e ON e.stream_id = s.id"
        " WHERE s.session_id = ? AND s.stream = ? AND s.expires_at > ? AND e.position = ?",
        (session_id, stream, now, after),
    ).fetchone()
    return None if row is None else int(row[0])


def _page(conn: sqlite3.Connection, *, stream_id: int, after: int) -> list[StoredEvent]:
    rows = conn.execute(
        "SELECT position, message FROM bridge_events WHERE stream_id = ? AND position > ?"
        " ORDER BY position LIMIT ?",
        (stream_id, after, REPLAY_BATCH),
    ).fetchall()
    return [
        StoredEvent(str(pos), None if text is None else jsonrpc.loads_frame(text))
        for pos, text in rows
    ]


def _delete_session(conn: sqlite3.Connection, now: float, session_id: str) -> None:
    _purge(conn, now)
    rows = conn.execute(
        "SELECT id FROM bridge_streams WHERE session_id = ?", (session_id,)
    ).fetchall()
    _drop_streams(conn, [row[0] for row in rows])
