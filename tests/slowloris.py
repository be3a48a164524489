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
import threading

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


class SlowlorisThread:
    """A :class:`Slowloris` on an event loop of its own, in a thread of its own.

    In life the attacker and the client it tries to starve are different
    machines. On one loop, 512 attacking tasks that reconnect the moment they
    are closed delay the test's own client between its connect and its first
    write, long enough for the gateway's cap to cycle past it: the client is
    then starved by its own process, not by the gateway.
    """

    def __init__(self, host: str, port: int, slots: int, pace: float) -> None:
        self.attack = Slowloris(host, port, slots, pace)
        self._saturated = threading.Event()
        self._running = threading.Event()  # its loop exists: stop() can reach it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                        name="slowloris", daemon=True)  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    async def saturated(self, within: float) -> None:
        """Wait until ``slots`` connects were made; TimeoutError after ``within`` seconds."""
        if not await asyncio.to_thread(self._saturated.wait, within):
            raise TimeoutError(f"slowloris: {self.attack.connects} connects in {within}s")

    async def stop(self, within: float = 30.0) -> None:
        """Cancel the attack and wait (at most ``within`` seconds) for its thread to end."""
        if await asyncio.to_thread(self._running.wait, within):
            assert self._loop is not None
            assert self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, within)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._running.set()
        self.attack.start()
        watch = tasks.spawn(self._watch(), name="slowloris-watch")
        try:
            await self._stop.wait()
        finally:
            watch.cancel()
            await self.attack.stop()

    async def _watch(self) -> None:
        await self.attack.saturated.wait()
        self._saturated.set()
