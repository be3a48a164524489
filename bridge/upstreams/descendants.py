"""What a stdio child starts ends with it: descendants, orphans, a gateway's death (issue #15).

A child runs in its own process group, and closing a connection signals that
group; but a grandchild that calls ``setsid()`` leaves the group, and a child
that ignores stdin's end of file outlives a gateway that was SIGKILLed. So:

- :func:`become_subreaper` (``prctl(PR_SET_CHILD_SUBREAPER)``, called once by
  ``mcp-bridge`` at start): a process whose parent exits is reparented to the
  gateway rather than to init, so an orphan of a child stays in reach, and the
  gateway reaps it (:class:`Reaper`).
- :func:`die_with_gateway` runs in each child before it execs:
  ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills a direct child
  when the gateway dies, however it dies.
- Each child gets a tag in its environment (:data:`TAG_ENV`; its descendants
  inherit it). :func:`find` lists what a child started: the process tree under
  it (by parent pid, from ``/proc``) and, once that tree is broken (an
  intermediate process exited and its children came to the gateway), the
  gateway's adopted children that carry the child's tag, with their trees.
  :func:`end` SIGKILLs such a set and reaps those that are the gateway's.

Left over: when the gateway is SIGKILLed, its direct children die with it,
but their descendants are reparented to the next subreaper or init, and
those that left the child's process group, or ignore the end of their
pipes, live on (README "How it behaves", stdio supervision). Linux only; elsewhere
each function does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Final

import structlog

log = structlog.get_logger("bridge.upstream.stdio")

TAG_ENV: Final = "MCP_BRIDGE_CHILD"  # environment variable naming a child's tag
PR_SET_PDEATHSIG: Final = 1
PR_SET_CHILD_SUBREAPER: Final = 36
#: Seconds between sweeps for adopted orphans that exited by themselves.
REAP_INTERVAL: Final = 5.0
_POLL: Final = 0.02  # seconds between checks while killed descendants exit

#: Pids of the stdio children the gateway started itself: asyncio reaps those.
DIRECT: set[int] = set()
_state = {"subreaper": False}


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return function


_PRCTL: Final = _prctl()


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; whether it is now."""
    if _PRCTL is None or _PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return False
    _state["subreaper"] = True
    return True


def is_subreaper() -> bool:
    return _state["subreaper"]


def die_with_gateway() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when its parent dies."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the gateway died before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _stat(pid: int) -> tuple[int, str, int] | None:
    """A process's parent pid, state letter and process group, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[0].decode(), int(fields[2])


def process_table() -> dict[int, tuple[int, str, int]]:
    """Every process's parent pid, state and process group, from ``/proc``."""
    table: dict[int, tuple[int, str, int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                table[int(entry.name)] = stat
    return table


def _tagged(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            environ = file.read()
    except OSError:
        return False
    return f"\0{TAG_ENV}={tag}\0".encode() in b"\0" + environ


def find(child: int | None, group: int, tag: str) -> set[int]:
    """What a child started: the tree under ``child`` (None: it is gone), and its orphans.

    Orphans are the gateway's adopted children (it is their subreaper) that
    carry the child's ``tag`` or are in its process ``group`` (exited ones
    too: their environment is gone, their group is not), with their trees.
    """
    table = process_table()
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    adopted = [
        p
        for p in children.get(me, ())
        if p != child and p not in DIRECT and (table[p][2] == group or _tagged(p, tag))
    ]
    found: set[int] = set()
    todo = [*(children.get(child, ()) if child is not None else ()), *adopted]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, ())
    return found


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(pid: int) -> bool:
    """Reap ``pid`` if it is the gateway's exited child; whether it is gone now."""
    stat = _stat(pid)
    if stat is None:
        return True
    ppid, state, _ = stat
    if state != "Z" or ppid != os.getpid():
        return False  # still running, or its own parent reaps it
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return _stat(pid) is None


async def end(pids: set[int], within: float) -> set[int]:
    """SIGKILL ``pids`` and reap those that are the gateway's; what is left after ``within``."""
    signal_all(pids, signal.SIGKILL)
    left = set(pids)
    deadline = time.monotonic() + within
    while left:
        left = {pid for pid in left if not _reap(pid)}
        if not left or time.monotonic() >= deadline:
            break
        await asyncio.sleep(_POLL)
    return left


class Reaper:
    """Reaps orphans the gateway adopted as subreaper that exited by themselves.

    A zombie child of the gateway that is not one of its stdio children
    (:data:`DIRECT`, reaped by asyncio) is reaped once it has been seen at two
    sweeps in a row: a child asyncio started a moment ago, not yet in
    :data:`DIRECT`, is reaped by asyncio's watcher well within an interval.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self.reaped = 0

    def sweep(self) -> None:
        me = os.getpid()
        zombies = {
            pid
            for pid, (ppid, state, _) in process_table().items()
            if ppid == me and state == "Z" and pid not in DIRECT
        }
        for pid in zombies & self._seen:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
                self.reaped += 1
        self._seen = zombies - self._seen

    async def run(self, interval: float = REAP_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.sweep)
