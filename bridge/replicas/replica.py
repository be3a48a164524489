"""This process as one of several replicas on a Redis store (see :mod:`bridge.replicas`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import structlog
from aiohttp import web

from bridge import tasks
from bridge.hub import SessionHub
from bridge.metrics import Metrics
from bridge.replicas.bus import Bus
from bridge.replicas.forward import Forwarder
from bridge.replicas.lease import Ownership
from bridge.sessions.store import StoreUnavailable
from bridge.stores import redis_client

log = structlog.get_logger("bridge.replicas")

#: Seconds one blocking read of the bus waits for a frame.
BUS_BLOCK: Final = 1.0
#: Most seconds between two refreshes of the owner keys of live sessions.
REFRESH_CAP: Final = 3600.0


class Replica:
    """This process as one of several replicas on a Redis store.

    Args:
        url: the Redis or Redis Cluster store URL (:func:`bridge.stores.redis_client`).
        prefix: the store's key prefix.
        timeout: seconds one Redis call may take (the store's).
        lease: seconds this replica counts as alive after a renewal (renewed every third).
        forward_timeout: seconds an owner has to acknowledge a forwarded exchange.
        session_ttl: seconds an owner key lives after its last refresh.
        metrics: the process's metrics.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        lease: float,
        forward_timeout: float,
        session_ttl: float,
        metrics: Metrics,
    ) -> None:
        # Clients of its own: the bus's blocking reads need a longer socket timeout.
        self._client = redis_client(url, timeout=timeout)
        self._reader = redis_client(url, timeout=timeout + BUS_BLOCK)
        self.ownership = Ownership(
            self._client,
            prefix=prefix,
            lease=lease,
            on_takeover=lambda _: metrics.takeovers.inc(),
        )
        me = self.ownership.me
        self.bus = Bus(self._client, self._reader, prefix=prefix, me=me, block=BUS_BLOCK)
        self.forwarder = Forwarder(
            self.bus, self.ownership, metrics, forward_timeout=forward_timeout
        )
        self._ttl = session_ttl
        self._refresh_every = min(session_ttl / 4, REFRESH_CAP)
        self._metrics = metrics
        self._loops: list[asyncio.Task[None]] = []

    async def start(self, app: web.Application, hub: SessionHub) -> None:
        """Listen for forwarded exchanges, read the bus, take and keep the lease."""
        await self.forwarder.listen(app)
        self._loops.append(tasks.spawn(self.bus.run(self.forwarder.deliver), name="replica-bus"))
        try:
            await self.ownership.renew()
        except StoreUnavailable as exc:  # /readyz says so; the loop tries again
            log.warning("replica_lease_renew_failed", error=str(exc))
        self._loops.append(tasks.spawn(self._hold_lease(hub), name="replica-lease"))
        log.info("replica", id=self.ownership.me[:8], lease_s=self.ownership.lease)

    async def _hold_lease(self, hub: SessionHub) -> None:
        next_refresh = time.monotonic() + self._refresh_every
        while True:
            await asyncio.sleep(self.ownership.lease / 3)
            # Checked before renewing (a process paused or cut off past its
            # lease may find its sessions taken, even if Redis now answers) and
            # after (paused while the renewal was in flight).
            await self._let_go_if_lapsed(hub)
            try:
                await self.ownership.renew()
                if time.monotonic() >= next_refresh:
                    await self.ownership.refresh((s.id for s in hub.live()), self._ttl)
                    next_refresh = time.monotonic() + self._refresh_every
            except StoreUnavailable as exc:
                log.warning("replica_lease_renew_failed", error=str(exc))
            await self._let_go_if_lapsed(hub)

    async def _let_go_if_lapsed(self, hub: SessionHub) -> None:
        if self.ownership.lapsed() and hub.live():
            # Another replica may have taken these sessions over: let them go.
            log.error("replica_lease_lapsed", sessions=len(hub.live()))
            await hub.let_go("replica lease lapsed")

    async def aclose(self, grace: float) -> None:
        """Stop: forwarded exchanges get ``grace`` seconds; then the lease goes."""
        for loop in self._loops:
            await tasks.cancel_and_wait(loop, 1.0, "shutting down")
        await self.forwarder.aclose(grace)
        try:
            await self.ownership.resign()
        except StoreUnavailable as exc:  # it lapses by itself within the lease
            log.warning("replica_resign_failed", error=str(exc))
        await self._reader.aclose()
        await self._client.aclose()

    def state(self) -> dict[str, Any]:
        """For ``/readyz``: this replica's id, lease and bus."""
        lapsed = self.ownership.lapsed()
        return {
            "id": self.ownership.me[:8],
            "lease": "lapsed" if lapsed else "held",
            "bus": "reading" if self.bus.reading else "down",
            "forwarded": self.forwarder.forwarded,
            "served_for_others": self.forwarder.served,
            "cut": self.forwarder.failed,
            "takeovers": self.ownership.takeovers,
        }
