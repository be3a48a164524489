"""Which replica holds a session's upstream work: a lease per replica, an owner per session.

Several gateways (replicas) may share one Redis behind a load balancer with
no affinity (issue #12). At most one of them drives a session's upstream
work at a time, its *owner*; the others forward what they receive for that
session to it (:mod:`bridge.replicas.bus`). Keys, each touching one Redis
Cluster slot (the hash tags), each with a TTL::

    {prefix}:replica:{<replica id>}   string  this replica is alive: written
                                              with PX ``lease`` every lease/3
    {prefix}:{<session id>}:owner     string  the id of the replica holding the
                                              session live; PX the session TTL

A replica id is 128 bits from a CSPRNG, new at every start, so a restarted
replica never mistakes a dead predecessor's sessions for its own.

Rules:

- A session started or resumed here is owned here (:meth:`Ownership.claim`).
- A replica asked for a session it does not hold reads the owner key. No
  owner, or an owner whose lease has lapsed (killed, cut off from Redis):
  it takes the session over with a compare-and-set, so two replicas racing
  for it cannot both win. A live owner: the request is forwarded there.
- A session released here (idle, DELETE, shutdown hand-over) gives its owner
  key back, only if it still names this replica.
- A replica that cannot renew its lease for ``lease`` seconds must assume
  another has taken its sessions and let them go (:attr:`Ownership.lapsed`,
  which the hub watches).

With a store other than Redis there is one replica (SQLite is locked to one
process, memory is in-process): :class:`Solo` owns everything.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import structlog

from bridge import jsonrpc, tasks
from bridge.sessions.redis import Client, ms, unavailable, valid_session_id
from bridge.sessions.store import StoreUnavailable

log = structlog.get_logger("bridge.replicas")

#: Rounds of read-then-compare-and-set before a claim gives up on a contended key.
CLAIM_ROUNDS: Final = 3
#: Live sessions whose owner keys one pipelined refresh covers.
REFRESH_BATCH: Final = 500

# KEYS[1] owner key; ARGV: expected owner ("" = none), new owner, PX ms.
_SWAP: Final = """
local cur = redis.call('GET', KEYS[1])
if (not cur and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1] owner key; ARGV[1] the owner it must still name.
_GIVE_BACK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_replica_id() -> str:
    return secrets.token_hex(16)


class Owners(Protocol):
    """What the hub asks of ownership; see :class:`Ownership` and :class:`Solo`."""

    me: str
    shared: bool
    lease: float

    async def claim(self, session_id: str, ttl: float) -> str: ...

    async def adopt(self, session_id: str, ttl: float) -> None: ...

    async def holder(self, session_id: str) -> str | None: ...

    def give_back(self, session_id: str) -> None: ...

    async def give_back_all(self, session_ids: Iterable[str]) -> None: ...

    def lapsed(self) -> bool: ...


class Solo:
    """One replica: every session is this process's (memory and SQLite stores)."""

    shared = False
    lease = 0.0

    def __init__(self) -> None:
        self.me = new_replica_id()

    async def claim(self, session_id: str, ttl: float) -> str:
        return self.me

    async def adopt(self, session_id: str, ttl: float) -> None:
        return None

    async def holder(self, session_id: str) -> str | None:
        return None

    def give_back(self, session_id: str) -> None:
        return None

    async def give_back_all(self, session_ids: Iterable[str]) -> None:
        return None

    def lapsed(self) -> bool:
        return False


class Ownership:
    """Replica leases and session owners in Redis (module docstring).

    Args:
        client: a Redis (or Redis Cluster) client with bounded calls.
        prefix: the store's key prefix.
        lease: seconds a replica counts as alive after its last renewal.
        on_takeover: called with the session id when this replica takes a
            session over from a lapsed one (metrics).
    """

    shared = True

    def __init__(
        self,
        client: Client,
        *,
        prefix: str,
        lease: float,
        on_takeover: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = new_replica_id()
        self._client = client
        self._prefix = prefix
        self.lease = lease
        self._on_takeover = on_takeover
        self._clock = clock
        self._swap = client.register_script(_SWAP)
        self._give_back_script = client.register_script(_GIVE_BACK)
        #: Sessions taken over from lapsed replicas.
        self.takeovers = 0
        #: When the lease was last renewed (monotonic); None before the first renewal.
        self.renewed_at: float | None = None
        self._giving_back: set[asyncio.Task[None]] = set()

    # -- keys --------------------------------------------------------------

    def alive_key(self, replica: str) -> str:
        return f"{self._prefix}:replica:{{{replica}}}"

    def owner_key(self, session_id: str) -> str:
        return f"{self._prefix}:{{{session_id}}}:owner"

    # -- this replica's lease ----------------------------------------------

    async def renew(self) -> None:
        """Write this replica's lease (PX ``lease``). Raises StoreUnavailable."""
        facts = jsonrpc.encode({"host": socket.gethostname(), "pid": os.getpid()})
        # Stamped when asked, not when answered: a process paused while the
        # write was in flight must not count the pause as leased time.
        started = self._clock()
        with unavailable("lease"):
            await self._client.set(self.alive_key(self.me), facts, px=ms(self.lease))
        self.renewed_at = started

    def lapsed(self) -> bool:
        """Whether this replica's lease may have run out: its sessions may be another's."""
        return self.renewed_at is None or self._clock() - self.renewed_at >= self.lease

    async def resign(self) -> None:
        """Delete this replica's lease (shutdown): others take its sessions at once."""
        with unavailable("resign"):
            await self._client.delete(self.alive_key(self.me))

    async def alive(self, replica: str) -> bool:
        """Whether ``replica`` holds a lease. Raises StoreUnavailable."""
        with unavailable("lease"):
            return bool(await self._client.exists(self.alive_key(replica)))

    async def lease_left(self, replica: str) -> float:
        """Seconds until ``replica``'s lease lapses (0: lapsed). Raises StoreUnavailable."""
        with unavailable("lease"):
            left = await self._client.pttl(self.alive_key(replica))
        return max(0.0, int(left) / 1000)

    # -- session owners ----------------------------------------------------

    async def owner(self, session_id: str) -> str | None:
        with unavailable("owner"):
            value = await self._client.get(self.owner_key(session_id))
        return None if value is None else str(value)

    async def claim(self, session_id: str, ttl: float) -> str:
        """The replica that holds ``session_id`` after this call: this one if it was
        free or its owner's lease had lapsed, else the live owner.

        Raises:
            StoreUnavailable: Redis cannot say.
        """
        if not valid_session_id(session_id):
            return self.me  # the store treats such an id as unknown anyway
        key = self.owner_key(session_id)
        current: str | None = None
        for _ in range(CLAIM_ROUNDS):
            current = await self.owner(session_id)
            if current is not None and current != self.me and await self.alive(current):
                return current
            with unavailable("claim"):
                swapped = await self._swap(keys=[key], args=[current or "", self.me, ms(ttl)])
            if swapped:
                if current is not None and current != self.me:
                    log.info("session_taken_over", session_id=session_id[:8], was=current[:8])
                    self.takeovers += 1
                    self._on_takeover(session_id)
                return self.me
        # Contended every round: report whoever holds it now.
        holder = await self.owner(session_id)
        if holder is None:
            raise StoreUnavailable("owner key contended; try again")
        return holder

    async def adopt(self, session_id: str, ttl: float) -> None:
        """Own a session this replica just created. Raises StoreUnavailable."""
        with unavailable("adopt"):
            await self._client.set(self.owner_key(session_id), self.me, px=ms(ttl))

    async def holder(self, session_id: str) -> str | None:
        """The live replica other than this one that holds ``session_id``, if any.

        Raises:
            StoreUnavailable: Redis cannot say.
        """
        if not valid_session_id(session_id):
            return None
        owner = await self.owner(session_id)
        if owner is None or owner == self.me or not await self.alive(owner):
            return None
        return owner

    async def refresh(self, session_ids: Iterable[str], ttl: float) -> None:
        """Push back the owner keys' expiry of sessions live here (one pipeline per batch)."""
        batch: list[str] = []
        for session_id in session_ids:
            if valid_session_id(session_id):
                batch.append(session_id)
            if len(batch) >= REFRESH_BATCH:
                await self._refresh(batch, ttl)
                batch = []
        if batch:
            await self._refresh(batch, ttl)

    async def _refresh(self, session_ids: list[str], ttl: float) -> None:
        with unavailable("refresh"):
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in session_ids:
                    _ = pipe.pexpire(self.owner_key(session_id), ms(ttl))
                await pipe.execute()

    def give_back(self, session_id: str) -> None:
        """Release ``session_id``'s owner key if it names this replica (in the background)."""
        if not valid_session_id(session_id):
            return
        task = tasks.spawn(self._give_back(session_id), name=f"give-back:{session_id[:8]}")
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, session_id: str) -> None:
        try:
            with unavailable("give_back"):
                await self._give_back_script(keys=[self.owner_key(session_id)], args=[self.me])
        except StoreUnavailable as exc:
            # Harmless: the key names a replica whose lease lapses with it, or
            # a live one that no longer holds the session and will claim it
            # again (as its owner) on the session's next request.
            log.debug("give_back_failed", session_id=session_id[:8], error=str(exc))

    async def give_back_all(self, session_ids: Iterable[str]) -> None:
        """Release every owner key in ``session_ids`` that names this replica, and wait."""
        ids = [s for s in session_ids if valid_session_id(s)]
        await asyncio.gather(*(self._give_back(s) for s in ids), *self._giving_back)
