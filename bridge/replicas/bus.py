"""Frames between replicas, over Redis Streams: one inbox per replica.

Redis is the bus (issue #12): no component beside the store. Each replica
reads its own inbox with ``XREAD BLOCK`` and writes to another's with
``XADD``; each command names one key, so it is legal on Redis Cluster::

    {prefix}:bus:{<replica id>}   stream  frames for that replica, field ``f`` =
                                          one frame as JSON; PX ``INBOX_TTL``
                                          pushed back by every write; at most
                                          ``MAX_FRAMES`` kept (older trimmed)

A frame is a JSON object with ``k`` (its kind) and ``t`` (the tunnel token
it belongs to); :mod:`bridge.replicas.forward` gives the kinds meaning.

A request frame comes with a *claim* key beside the inbox (same hash tag)::

    {prefix}:bus:{<replica id>}:t:<token>   string  pending, taken or dropped

The receiver may start on it only by turning ``pending`` into ``taken``; the
sender, giving up, turns ``pending`` into ``dropped``. Whichever comes first
wins (a compare-and-set), so a request is run at most once even when the
receiver reads it late (paused, slow) after the sender gave up on it. The
reader deletes what it has read (``XTRIM MINID``), so an inbox holds only
frames not yet read: a replica that lags more than ``MAX_FRAMES`` behind
loses the oldest, and the tunnels they belonged to end by their own bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import structlog

from bridge import jsonrpc
from bridge.sessions.redis import Client, ms, unavailable
from bridge.sessions.store import StoreUnavailable

log = structlog.get_logger("bridge.replicas")

#: Most frames an inbox keeps unread.
MAX_FRAMES: Final = 10_000
#: Seconds an inbox lives after its last write (its reader is gone by then).
INBOX_TTL: Final = 300.0
#: Frames read per XREAD.
READ_COUNT: Final = 256
#: Seconds after a failed read before the next (Redis down): bounded backoff.
READ_RETRY: Final = 0.5

Frame = dict[str, Any]

# KEYS[1] a request's claim; ARGV[1] what it becomes if still pending.
_SETTLE: Final = """
if redis.call('GET', KEYS[1]) == 'pending' then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 1
end
return 0
"""


class Bus:
    """Send frames to replicas and read this one's inbox.

    Args:
        client: for writes (bounded calls).
        reader: for this replica's blocking reads: a client of its own, whose
            socket timeout exceeds ``block`` (a blocking read holds its
            connection for up to ``block`` seconds).
        prefix: the store's key prefix.
        me: this replica's id.
        block: seconds one ``XREAD BLOCK`` waits for a frame.
    """

    def __init__(
        self, client: Client, reader: Client, *, prefix: str, me: str, block: float
    ) -> None:
        self._client = client
        self._settle = client.register_script(_SETTLE)
        self._reader = reader
        self._prefix = prefix
        self.me = me
        self._block = block
        self.sent = 0
        self.received = 0
        self.reading = False

    def inbox(self, replica: str) -> str:
        return f"{self._prefix}:bus:{{{replica}}}"

    def claim_key(self, replica: str, token: str) -> str:
        return f"{self._prefix}:bus:{{{replica}}}:t:{token}"

    async def send_request(self, replica: str, token: str, frame: Frame) -> None:
        """Append a request ``frame`` with its claim, ``pending``. Raises StoreUnavailable."""
        await self.send(replica, frame, claim=self.claim_key(replica, token))

    async def settle(self, replica: str, token: str, outcome: str) -> bool:
        """Turn the claim of ``token`` from ``pending`` into ``outcome`` (``taken`` by
        the receiver, ``dropped`` by the sender); whether this call did. Raises
        StoreUnavailable."""
        with unavailable("bus claim"):
            done = await self._settle(keys=[self.claim_key(replica, token)], args=[outcome])
        return bool(done)

    async def send(self, replica: str, frame: Frame, *, claim: str | None = None) -> None:
        """Append ``frame`` to ``replica``'s inbox. Raises StoreUnavailable."""
        key = self.inbox(replica)
        with unavailable("bus send"):
            async with self._client.pipeline(transaction=False) as pipe:
                if claim is not None:  # before the frame, in the same slot
                    _ = pipe.set(claim, "pending", px=ms(INBOX_TTL))
                entry: dict[Any, Any] = {"f": jsonrpc.encode(frame)}
                _ = pipe.xadd(key, entry, maxlen=MAX_FRAMES, approximate=True)
                _ = pipe.pexpire(key, ms(INBOX_TTL))
                await pipe.execute()
        self.sent += 1

    async def run(self, deliver: Callable[[Frame], None]) -> None:
        """Read this replica's inbox until cancelled, handing each frame to ``deliver``."""
        key, last = self.inbox(self.me), "0-0"  # the inbox is new: this id is new
        while True:
            try:
                with unavailable("bus read"):
                    replies: Any = await self._reader.xread(
                        {key: last}, count=READ_COUNT, block=ms(self._block)
                    )
                    self.reading = True
                    if replies:
                        for _, entries in replies:
                            for entry_id, fields in entries:
                                last = str(entry_id)
                                self._deliver(deliver, fields)
                        await self._reader.xtrim(key, minid=last, approximate=False)
                        # XTRIM MINID keeps the entry at ``last``: drop it too.
                        await self._reader.xdel(key, last)
            except StoreUnavailable as exc:
                self.reading = False
                log.warning("bus_read_failed", error=str(exc))
                await asyncio.sleep(READ_RETRY)

    def _deliver(self, deliver: Callable[[Frame], None], fields: dict[Any, Any]) -> None:
        self.received += 1
        raw = fields.get("f")
        try:
            frame = jsonrpc.decode(raw.encode() if isinstance(raw, str) else bytes(raw or b""))
        except Exception as exc:  # a foreign or torn entry: skip it
            log.warning("bus_frame_unreadable", error=str(exc)[:200])
            return
        if isinstance(frame, dict) and isinstance(frame.get("k"), str):
            deliver(frame)
