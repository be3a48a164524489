"""One gateway process per SQLite file (issue #12): a second one refuses to start.

Real gateway subprocesses on one file: the second exits with status 2 and says
why; after the first stops (SIGTERM) or is killed (SIGKILL: the kernel drops
its ``flock``), a new one starts. Within one process the file may be opened
again, and twice at once; ``mcp-bridge sessions`` looks without locking.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Final

from bridge.sessions.sqlite_lock import lock_path
from bridge.stores import open_stores, sqlite_path
from tests.conftest import Proc, ProcFactory, start_gateway

EXAMPLE: Final = f"{sys.executable} -m bridge.examples.server"
BOUND: Final = 30.0  # seconds for a refused gateway to exit, a stopped one to stop
EXIT_CONFIG: Final = 2


async def refused(procs: ProcFactory, store: str) -> Proc:
    """A gateway started on ``store``; asserts it exits with status 2 before listening."""
    proc = await procs(
        sys.executable, "-m", "bridge", "--stdio", EXAMPLE, "--store-url", store,
        "--port", "0", "--log-format", "json",
    )  # fmt: skip
    assert await proc.exited(BOUND) == EXIT_CONFIG, proc.lines
    assert not proc.json_events("listening")
    return proc


async def test_a_second_gateway_on_one_sqlite_file_refuses_to_start(
    procs: ProcFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'state' / 'sessions.db'}"
    db = sqlite_path(store)  # as the gateway names it
    first, _ = await start_gateway(procs, "--stdio", EXAMPLE, "--store-url", store)

    second = await refused(procs, store)
    [message] = [line for line in second.lines if "another gateway uses" in line]
    assert message.startswith("mcp-bridge: store URL")
    assert str(db) in message
    assert f"process {first.pid} holds {lock_path(db)}" in message

    assert await first.stop(signal.SIGTERM) == 0  # its lock goes with its store
    third, _ = await start_gateway(procs, "--stdio", EXAMPLE, "--store-url", store)
    await refused(procs, store)

    await third.stop(signal.SIGKILL)  # no clean-up at all: the kernel drops the flock
    await start_gateway(procs, "--stdio", EXAMPLE, "--store-url", store)


async def test_one_process_may_open_its_file_twice_and_again_after_closing(
    procs: ProcFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'sessions.db'}"

    one = await open_stores(store, prefix="p", max_events=10, max_age=60, timeout=5.0)
    two = await open_stores(store, prefix="p", max_events=10, max_age=60, timeout=5.0)
    await one.aclose()
    await refused(procs, store)  # still held: by ``two``
    await two.aclose()
    await two.aclose()  # closing twice gives nothing back twice
    gateway, _ = await start_gateway(procs, "--stdio", EXAMPLE, "--store-url", store)

    looking = await open_stores(
        store, prefix="p", max_events=10, max_age=60, timeout=5.0, lock=False
    )
    try:
        assert await looking.sessions.list(10) == []
    finally:
        await looking.aclose()
    assert await gateway.stop(signal.SIGTERM) == 0
    again = await open_stores(store, prefix="p", max_events=10, max_age=60, timeout=5.0)
    await again.aclose()
