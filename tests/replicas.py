"""N gateway replicas sharing one store, behind the round-robin test balancer (issue #12).

Each replica is a real ``mcp-bridge`` subprocess (:func:`tests.conftest.start_gateway`)
on a fixed port of its own, so that it can be killed, stopped and started
again on the same port (a rolling restart) while the balancer
(:class:`tests.balancer.Balancer`, in this process) keeps sending every
request to the next replica in turn::

    async with replica_set(procs, "--stdio", CMD, store_url=redis.url, count=2) as replicas:
        replicas.url                  # the balancer's base URL: what clients use
        replicas.balancer.counts      # requests per replica URL
        await replicas.kill(0)        # SIGKILL: a crash
        code = await replicas.stop(1) # SIGTERM, then waits (bounded) for its exit
        await replicas.start(0)       # again, on the same port

Processes belong to the test's ``procs`` fixture, which kills whatever is
left when the test ends; the balancer closes when the ``async with`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from tests.balancer import Balancer
from tests.conftest import Proc, ProcFactory, restartable_port, start_gateway

#: Seconds a replica has to exit after SIGTERM (its sessions close within
#: ``--shutdown-timeout``, 10 s by default, plus process exit).
STOP_TIMEOUT: Final = 20.0
#: Seconds to reap a killed replica and its process group.
KILL_TIMEOUT: Final = 5.0


@dataclass
class Replica:
    """One gateway replica: its fixed port and its current process (None while down)."""

    index: int
    port: int
    proc: Proc | None = None
    runs: list[Proc] = field(default_factory=list)  # every process it has been, in order

    @property
    def url(self) -> str:
        """The replica's own base URL (no path), as the balancer counts it."""
        return f"http://127.0.0.1:{self.port}"


class Replicas:
    """Replicas of one gateway command line, one store, and the balancer in front."""

    def __init__(
        self,
        procs: ProcFactory,
        args: Sequence[str],
        *,
        count: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self._procs = procs
        self._args = tuple(args)
        self._env = env
        self.replicas = [Replica(i, restartable_port()) for i in range(count)]
        self.balancer = Balancer([r.url for r in self.replicas])

    @property
    def url(self) -> str:
        """The balancer's base URL (no path): where clients connect."""
        return self.balancer.url

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    async def start(self, index: int) -> Proc:
        """Start replica ``index`` on its port; return once it logs ``listening``.

        Raises:
            AssertionError: it exited before listening, or did not listen within
                :data:`tests.conftest.START_TIMEOUT` (a ``TimeoutError``).
            RuntimeError: it is running already.
        """
        replica = self.replicas[index]
        if replica.proc is not None:
            raise RuntimeError(f"replica {index} is running already")
        proc, url = await start_gateway(self._procs, *self._args, env=self._env, port=replica.port)
        assert url == replica.url, (url, replica.url)
        replica.proc = proc
        replica.runs.append(proc)
        return proc

    async def start_all(self) -> None:
        """Start every replica that is down, concurrently."""
        down = [r.index for r in self.replicas if r.proc is None]
        await asyncio.gather(*(self.start(i) for i in down))

    async def kill(self, index: int) -> int:
        """SIGKILL replica ``index`` (and its process group: its stdio children); its exit code."""
        proc = self._take(index)
        return await proc.stop(signal.SIGKILL, KILL_TIMEOUT)

    async def stop(self, index: int, within: float = STOP_TIMEOUT) -> int:
        """SIGTERM replica ``index`` and wait for it to exit by itself; its exit code.

        Raises:
            TimeoutError: it did not exit within ``within`` seconds (it is then killed).
        """
        proc = self._take(index)
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signal.SIGTERM)
        try:
            return await proc.exited(within)
        finally:
            await proc.stop(signal.SIGKILL, KILL_TIMEOUT)  # whatever it left in its group

    async def aclose(self) -> None:
        """Close the balancer; the replicas' processes are left to ``procs``."""
        await self.balancer.aclose()

    def _take(self, index: int) -> Proc:
        replica = self.replicas[index]
        if replica.proc is None:
            raise RuntimeError(f"replica {index} is not running")
        proc, replica.proc = replica.proc, None
        return proc


@contextlib.asynccontextmanager
async def replica_set(
    procs: ProcFactory,
    *args: str,
    store_url: str,
    count: int = 2,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Replicas]:
    """``count`` gateways ``mcp-bridge ARGS --store-url STORE_URL``, started, behind a balancer.

    Args:
        procs: the test's ``procs`` fixture (it owns the processes).
        args: the gateway arguments every replica gets (servers, settings).
        store_url: the store they share (``redis://127.0.0.1:PORT/0``).
        count: how many replicas.
        env: extra environment for every replica.
    """
    replicas = Replicas(procs, (*args, "--store-url", store_url), count=count, env=env)
    await replicas.balancer.start()
    try:
        await replicas.start_all()
        yield replicas
    finally:
        await replicas.aclose()
