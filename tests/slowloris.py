"""A slowloris from the test process: raw sockets that trickle a request head a byte at a time.

Used by ``tests/integration/test_slowloris.py`` and ``bench/slowloris.py``.
Each of ``slots`` tasks connects, sends ``GET / HTTP/1.1`` then one byte every
``pace`` seconds forever; when the gateway closes it (or refuses it), it
connects again at once. ``saturated`` is set once ``slots`` connects were made.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource

from bridge import tasks

CONNECT_TIMEOUT = 2.0  # seconds for one connect (the gateway's backlog may be full)
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def allow_fds(wanted: int) -> None:
    """Raise this process's open-files soft limit to ``wanted`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class Slowloris:
    def __init__(self, host: str, port: int, slots: int, pace: float) -> None:
        self.host, self.port, self.slots, self.pace = host, port, slots, pace
        self.connects = 0
        self.closed_by_peer = 0
        self.saturated = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        allow_fds(self.slots + 256)
        self._tasks = [tasks.spawn(self._slot(), name=f"slowloris-{n}") for n in range(self.slots)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _slot(self) -> None:
        while True:
            writer = None
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, writer = await asyncio.open_connection(self.host, self.port)
                self.connects += 1
                if self.connects >= self.slots:
                    self.saturated.set()
                head = HEAD + b"a" * 1_000_000
                for n in range(len(head)):
                    writer.write(head[n : n + 1])
                    await writer.drain()
                    if writer.transport.is_closing():
                        break
                    await asyncio.sleep(self.pace)  # the attack's pace, not a synchronisation
            except (OSError, TimeoutError):
                self.closed_by_peer += 1
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
