"""One gateway process per SQLite file: an exclusive ``flock`` on ``<db>.lock`` (issue #12).

An SQLite store is for one gateway: two gateway processes on one file would
each serve sessions the other holds live, and answer twice. So a gateway
opening the file takes an exclusive, non-blocking ``flock`` on a sidecar file
next to it (``sessions.db`` -> ``sessions.db.lock``) and holds it until its
store closes; a second process finds it held and is refused at startup.

* The kernel drops a ``flock`` when its holder's last descriptor closes, so a
  gateway killed with SIGKILL leaves no stale lock behind. The sidecar file
  itself is left in place (deleting it would let two processes lock two
  different files of one name).
* The descriptor is close-on-exec: a stdio child the gateway starts never
  inherits the lock (nor outlives it holding it).
* ``flock`` locks belong to an open file description, so two opens in one
  process would conflict. Within one process the lock is therefore counted:
  the first :func:`acquire` locks, later ones share it, and the last
  :meth:`FileLock.release` unlocks. One process may open the file again after
  closing it (a restart simulated in-process), or twice at once (in-process
  test replicas); only other processes are refused.
* The holder writes its pid into the file, for the refusal's message only.
* ``flock`` is advisory and may not work on network filesystems (NFS): an
  SQLite file belongs on a local disk anyway.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SUFFIX: Final = ".lock"
#: Most bytes of the holder's pid read back for a refusal message.
_PID_BYTES: Final = 32


class LockHeld(Exception):
    """Another process holds the lock on ``path``; ``holder`` is its pid when known."""

    def __init__(self, path: Path, holder: int | None) -> None:
        self.path = path
        self.holder = holder
        who = "another process" if holder is None else f"process {holder}"
        super().__init__(f"{who} holds {path}")


@dataclass(slots=True)
class _Held:
    fd: int
    count: int


_held: dict[tuple[int, int], _Held] = {}  # (st_dev, st_ino) of the lock file -> our hold
_guard = threading.Lock()


def lock_path(db_path: Path) -> Path:
    """The sidecar lock file of the database ``db_path``: ``<db_path>.lock``."""
    return db_path.with_name(db_path.name + SUFFIX)


class FileLock:
    """This process's share of the lock on one database file; release it once."""

    def __init__(self, key: tuple[int, int], path: Path) -> None:
        self.path = path
        self._key: tuple[int, int] | None = key

    def release(self) -> None:
        """Give this share back; the last share in the process unlocks. Idempotent."""
        key, self._key = self._key, None
        if key is None:
            return
        with _guard:
            held = _held[key]
            held.count -= 1
            if held.count:
                return
            del _held[key]
        os.close(held.fd)  # closing the last descriptor drops the flock


def acquire(db_path: Path) -> FileLock:
    """Lock ``<db_path>.lock`` for this process (created if missing; its directory must exist).

    Raises:
        LockHeld: another process holds it.
        OSError: the lock file cannot be created or opened.
    """
    path = lock_path(db_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        stat = os.fstat(fd)
        key = (stat.st_dev, stat.st_ino)
        with _guard:
            held = _held.get(key)
            if held is not None:  # this process holds it already: share it
                held.count += 1
                os.close(fd)
                return FileLock(key, path)
            _lock(fd, path)
            _held[key] = _Held(fd, 1)
    except BaseException:
        os.close(fd)  # never registered: registering is the last step
        raise
    return FileLock(key, path)


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise LockHeld(path, _holder(fd)) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
