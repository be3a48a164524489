"""The SQLite connection the SQLite stores share, and its one worker thread.

One :class:`SqliteDatabase` holds one ``sqlite3`` connection, driven by one
worker thread. Every store operation is a plain function that runs there
whole (a write inside a ``BEGIN IMMEDIATE`` transaction, grouped with the
writes that arrive with it: see :class:`SqliteDatabase`), so operations of
concurrent coroutines never interleave and the event loop never blocks on
the disk. WAL mode lets other processes read while this one writes; the busy
timeout and the wait for the worker are both bounded by ``timeout``.

A call that is cancelled, or that gives up after ``timeout``, may still be
carried out by the worker afterwards: the store stays consistent, the caller
just does not learn the outcome. Every ``sqlite3.Error`` (locked, full, I/O
error, ``database disk image is malformed``) surfaces as
:class:`StoreUnavailable`: whatever the kind, the store cannot serve the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from bridge.sessions.store import StoreUnavailable

T = TypeVar("T")


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
