"""Forwarding: an HTTP exchange for a session held by another replica, carried over the bus.

A request that names a session another live replica holds (its responses to
server-to-client requests, ``notifications/cancelled``, progress, new
requests, a GET stream, a ``Last-Event-ID`` resume, DELETE) is tunnelled
whole to that replica, the *owner*, which serves it exactly as if the client
had reached it, and the answer is relayed back as it comes: status, headers,
then the body chunk by chunk (an SSE stream stays a stream). So a session's
conversation is whole whichever replica the load balancer picks, and every
rule the front doors follow holds unchanged.

Frames (:mod:`bridge.replicas.bus`), ``t`` the tunnel's token:

======== ============ ======================================================
``req``  to owner     ``r`` reply-to replica, ``m`` method, ``p`` path and
                      query, ``h`` headers, ``b`` body (``e``: ``u`` UTF-8
                      text or ``b`` base64)
``ack``  from owner   sent on receipt, before any work: the owner took it
``head`` from owner   ``s`` status, ``h`` headers, ``b``/``e`` the body's
                      first bytes (sent with the status, so a client never
                      holds a 200 without its stream's priming event)
``whole`` from owner  ``s``, ``h`` and the body at once: an answer with a
                      ``Content-Length`` (plain JSON, 202, errors), one frame
``data`` from owner   ``b``/``e`` a body chunk
``end``  from owner   the body is complete
``fail`` from owner   the owner could not serve it (``why``)
``cancel`` to owner   the client went away: the owner drops the exchange
======== ============ ======================================================

Bounds: the owner must acknowledge within ``forward_timeout``; while a
tunnel waits, the owner's lease is checked every half lease, and a lapsed
owner ends the tunnel. The owner acknowledges before it starts any work, so:

- no acknowledgement within ``forward_timeout``: the sender drops the
  request's claim (:mod:`bridge.replicas.bus`); if that wins, the owner never
  runs it, and once the owner is waited out (at most its lease) the session
  is taken over and served here; if the owner took it just then, its answer
  is awaited as usual;
- acknowledged, then lost before the answer started: the request may have
  run, so it is not run again; the client gets 503 -32038, its one answer;
- lost after the answer started: the client's connection is closed, and the
  client resumes (``Last-Event-ID``) wherever it lands, which takes the
  session over with the answers the single-gateway restart path gives.

The owner serves a tunnelled request through its own application on a
loopback listener of its own (:meth:`Forwarder.listen`), which outlives the
public one during a drain, so a draining replica serves forwarded requests
for the sessions it still holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from bridge import tasks
from bridge.errors import OwnedElsewhere, ReplicaUnavailable, StoreDown
from bridge.metrics import Metrics
from bridge.replicas.bus import Bus, Frame
from bridge.replicas.lease import Ownership
from bridge.sessions.store import StoreUnavailable

log = structlog.get_logger("bridge.replicas")

#: Request header that marks an exchange the owner serves for another replica
#: (its value a secret of this process, so a client cannot forge it).
HOP_HEADER: Final = "Mcp-Bridge-Hop"
#: Response header of an owner that no longer holds the session: serve it where it landed.
MOVED_HEADER: Final = "Mcp-Bridge-Moved"
#: Frames a tunnel buffers for a slow client before it gives up the exchange.
TUNNEL_FRAMES: Final = 1024
#: Times one request may go looking for its session's owner.
MAX_HOPS: Final = 3
#: Seconds to connect to this replica's own loopback listener.
LOOPBACK_CONNECT: Final = 5.0
#: Most seconds the owner holds a forwarded answer's status back for its first bytes
#: (a 2025-11-25 stream's priming event comes at once; an older GET stream's first
#: event may not).
FIRST_CHUNK_WAIT: Final = 0.5
#: Seconds past a lease's expiry to look again (timer and PTTL rounding).
EXPIRY_MARGIN: Final = 0.05

_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",  # recomputed for the body as relayed
        HOP_HEADER.lower(),
        MOVED_HEADER.lower(),
    }
)


#: Response headers the replica a request landed at sets itself (aiohttp-cors,
#: for the request's Origin, with the same options as the owner): relayed, they
#: would be set twice, which aiohttp-cors refuses (an AssertionError, a 500).
_SET_HERE: Final = _HOP_BY_HOP | {
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
}


class OwnerUnreachable(Exception):
    """The owner did not acknowledge in time (or lapsed), and the request's claim was
    moved to ``dropped`` first: the owner never ran it, so it may run here."""


class Moved(Exception):
    """The owner no longer holds the session: it is free to be served here."""


def _pack(chunk: bytes) -> dict[str, str]:
    try:
        return {"b": chunk.decode(), "e": "u"}
    except UnicodeDecodeError:
        return {"b": base64.b64encode(chunk).decode(), "e": "b"}


def _unpack(frame: Frame) -> bytes:
    body = str(frame.get("b", ""))
    return base64.b64decode(body) if frame.get("e") == "b" else body.encode()


def _headers(pairs: Any, drop: frozenset[str] = _HOP_BY_HOP) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in pairs if str(k).lower() not in drop]


class _Tunnel:
    """Frames for one forwarded exchange, as the owner sends them."""

    __slots__ = ("frames", "overflowed")

    def __init__(self) -> None:
        self.frames: asyncio.Queue[Frame] = asyncio.Queue(TUNNEL_FRAMES)
        self.overflowed = False


class Forwarder:
    """Both ends of forwarding: the replica a request lands at, and the owner.

    Args:
        bus: the replicas' bus.
        ownership: leases and owners.
        metrics: forwarded counts and latency.
        forward_timeout: seconds the owner has to acknowledge a forwarded request.
    """

    def __init__(
        self, bus: Bus, ownership: Ownership, metrics: Metrics, *, forward_timeout: float
    ) -> None:
        self._bus = bus
        self._ownership = ownership
        self._metrics = metrics
        self._forward_timeout = forward_timeout
        self._check_every = ownership.lease / 2
        self.hop_token = secrets.token_urlsafe(32)
        self._tunnels: dict[str, _Tunnel] = {}
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._listener: asyncio.Server | None = None
        self._server: web.Server | None = None
        self._loopback = ""
        self.forwarded = 0
        self.served = 0
        self.failed = 0

    # -- lifetime ----------------------------------------------------------

    async def listen(self, app: web.Application) -> None:
        """Serve ``app`` on a loopback port of its own, for tunnelled requests."""
        # aiohttp's runner makes its server the same way; a second runner
        # for one app would run its startup hooks twice.
        self._server = app._make_handler(access_log=None, handler_cancellation=True)
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._server, "127.0.0.1", 0)
        port = self._listener.sockets[0].getsockname()[1]
        self._loopback = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=LOOPBACK_CONNECT),
        )

    async def aclose(self, grace: float) -> None:
        """Stop serving tunnelled requests (those running get ``grace`` seconds)."""
        for task in list(self._serving.values()):
            await tasks.cancel_and_wait(task, grace, "replica shutting down")
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            await self._server.shutdown(grace)
        if self._http is not None:
            await self._http.close()

    def is_hop(self, request: web.Request) -> bool:
        """Whether ``request`` is one this replica serves for another (its own secret)."""
        given = request.headers.get(HOP_HEADER)
        return given is not None and hmac.compare_digest(given, self.hop_token)

    # -- frames from the bus ------------------------------------------------

    def deliver(self, frame: Frame) -> None:
        kind, token = frame["k"], str(frame.get("t", ""))
        if kind == "req":
            task = tasks.spawn(self._serve(frame), name=f"forwarded:{token[:8]}")
            self._serving[token] = task
            task.add_done_callback(lambda _: self._serving.pop(token, None))
        elif kind == "cancel":
            if (running := self._serving.get(token)) is not None:
                running.cancel("the client went away at the replica it reached")
        elif (tunnel := self._tunnels.get(token)) is not None:
            try:
                tunnel.frames.put_nowait(frame)
            except asyncio.QueueFull:
                tunnel.overflowed = True

    # -- the owner's end ----------------------------------------------------

    async def _serve(self, frame: Frame) -> None:
        token, reply_to = str(frame["t"]), str(frame["r"])

        def send(frame: Frame) -> Awaitable[None]:
            return self._bus.send(reply_to, {**frame, "t": token})

        self.served += 1
        self._metrics.forwarded.labels("in").inc()
        try:
            if self._http is None:
                raise RuntimeError("not listening")
            headers = CIMultiDict(_headers(frame.get("h", ())))
            headers[HOP_HEADER] = self.hop_token
            exchange = self._http.request(
                str(frame["m"]),
                self._loopback + str(frame["p"]),
                headers=headers,
                data=_unpack(frame) or None,
                allow_redirects=False,
            )
            # Taken, then acknowledged, before any work starts: a request the
            # other end gave up on first (this replica paused, or slow to
            # read) is never run here; it runs it itself (bridge.replicas.bus).
            if not await self._bus.settle(self._bus.me, token, "taken"):
                log.info("forwarded_request_dropped", reason="the other end gave up on it")
                return
            await send({"k": "ack"})
            response = await exchange.__aenter__()
            try:
                # The Moved mark goes in the frame (the forwarding end reads it there);
                # the forwarding end strips it from what its client gets.
                head = _headers(response.headers.items(), _HOP_BY_HOP - {MOVED_HEADER.lower()})
                if response.content_length is not None:  # all of it, in one frame
                    body = await response.read()
                    await send({"k": "whole", "s": response.status, "h": head, **_pack(body)})
                    return
                first = await self._first_chunk(response)
                await send({"k": "head", "s": response.status, "h": head, **_pack(first)})
                async for chunk in response.content.iter_any():
                    await send({"k": "data", **_pack(chunk)})
            finally:
                await exchange.__aexit__(None, None, None)
            await send({"k": "end"})
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            log.warning("forwarded_request_failed", error=f"{exc.__class__.__name__}: {exc}")
            with contextlib.suppress(StoreUnavailable):
                await send({"k": "fail", "why": exc.__class__.__name__})
        except StoreUnavailable as exc:  # the bus is down: the other end times out
            log.warning("bus_send_failed", error=str(exc))

    @staticmethod
    async def _first_chunk(response: aiohttp.ClientResponse) -> bytes:
        """The body's first bytes, if they come within :data:`FIRST_CHUNK_WAIT` (else b"").

        They travel in the ``head`` frame, so the client gets the status and a
        stream's priming event (the id it resumes from) together: an owner
        that dies between the two would leave it a 200 with nothing to resume.
        """
        try:
            async with asyncio.timeout(FIRST_CHUNK_WAIT):
                return await response.content.readany()
        except TimeoutError:
            return b""

    # -- the receiving end --------------------------------------------------

    async def forward(self, request: web.Request, owner: str) -> web.StreamResponse:
        """Serve ``request`` at ``owner`` and relay its answer.

        Raises:
            OwnerUnreachable: no acknowledgement within ``forward_timeout``, or
                the owner lapsed before acknowledging: it never ran the request.
            ReplicaUnavailable: the owner took the request and was lost before
                answering (503 -32038).
            Moved: the owner does not hold the session any more.
            StoreDown: the bus (Redis) cannot be written.
        """
        token = secrets.token_urlsafe(16)
        body = await request.read()
        frame = {
            "k": "req",
            "t": token,
            "r": self._bus.me,
            "m": request.method,
            "p": request.path_qs,
            "h": _headers(request.headers.items(), _HOP_BY_HOP | {"content-encoding"}),
            **_pack(body),
        }
        tunnel = self._tunnels[token] = _Tunnel()
        finished = False
        started = time.perf_counter()
        try:
            try:
                await self._bus.send_request(owner, token, frame)
            except StoreUnavailable as exc:
                raise StoreDown(f"replica bus unavailable: {exc}") from exc
            self.forwarded += 1
            self._metrics.forwarded.labels("out").inc()
            ack = await self._next(tunnel, owner, within=self._forward_timeout)
            if ack is None:
                if await self._drop(owner, token):
                    raise OwnerUnreachable(owner)  # never taken: it may run here
                ack = await self._next(tunnel, owner)  # taken just now: the owner's
            if ack is None or ack["k"] != "ack":
                raise self._lost()
            self._metrics.forward_seconds.observe(time.perf_counter() - started)
            head = await self._next(tunnel, owner)
            if head is None or head["k"] not in ("head", "whole"):
                raise self._lost()
            headers = CIMultiDict(_headers(head.get("h", ()), _SET_HERE))
            if head["s"] == 503 and MOVED_HEADER in CIMultiDict(head.get("h", ())):
                raise Moved(owner)
            if head["k"] == "whole":
                finished = True
                return web.Response(status=int(head["s"]), headers=headers, body=_unpack(head))
            response = web.StreamResponse(status=int(head["s"]), headers=headers)
            try:
                finished = await self._relay(request, response, tunnel, owner, _unpack(head))
            except ConnectionResetError as exc:  # the owner's exchange is cancelled below
                log.info("forwarded_client_gone", error=exc.__class__.__name__)
                return response
            if finished:
                return response
            # The owner failed or lapsed mid-answer: cut the client off, as a
            # replica dying would; it resumes wherever it lands next.
            self.failed += 1
            log.warning("forwarded_answer_cut", owner=owner[:8], overflowed=tunnel.overflowed)
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            del self._tunnels[token]
            if not finished:
                _ = tasks.spawn(self._cancel(owner, token), name=f"forward-cancel:{token[:8]}")

    async def _relay(
        self,
        request: web.Request,
        response: web.StreamResponse,
        tunnel: _Tunnel,
        owner: str,
        first: bytes,
    ) -> bool:
        """Send the owner's answer on, ``first`` its first bytes: whether it came
        whole (``end``), not cut short.

        Raises:
            ConnectionResetError: the client went away.
        """
        await response.prepare(request)
        if first:
            await response.write(first)
        while (item := await self._next(tunnel, owner)) is not None:
            if item["k"] == "data":
                await response.write(_unpack(item))
            elif item["k"] == "end":
                await response.write_eof()
                return True
            else:
                return False
        return False

    def _lost(self) -> ReplicaUnavailable:
        """The owner took the request and was lost before answering: it may have
        run, so it is not run again here. One answer: this (503 -32038)."""
        self.failed += 1
        return ReplicaUnavailable(
            "the replica holding this session was lost while serving this request, "
            "which may have run; the session goes on at another replica",
            headers={"Retry-After": "1"},
        )

    async def _drop(self, owner: str, token: str) -> bool:
        """Give up on an unacknowledged request: whether the owner can no longer take it."""
        try:
            return await self._bus.settle(owner, token, "dropped")
        except StoreUnavailable:
            return False  # cannot tell: treat it as taken (never run it twice)

    async def _cancel(self, owner: str, token: str) -> None:
        # If the bus is down the owner's exchange runs to its own end, unread.
        with contextlib.suppress(StoreUnavailable):
            await self._bus.send(owner, {"k": "cancel", "t": token})

    async def _next(self, tunnel: _Tunnel, owner: str, within: float | None = None) -> Frame | None:
        """The next frame; None if the tunnel overflowed, ``within`` passed or the owner lapsed."""
        deadline = None if within is None else time.monotonic() + within
        while not tunnel.overflowed:
            wait = self._check_every
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            try:
                async with asyncio.timeout(wait):
                    return await tunnel.frames.get()
            except TimeoutError:
                try:
                    if not await self._ownership.alive(owner):
                        return None
                except StoreUnavailable:
                    return None
        return None

    async def outlived(self, owner: str) -> bool:
        """Wait out ``owner``'s lease (at most one lease); whether it lapsed."""
        try:
            left = await self._ownership.lease_left(owner)
            if left > 0:
                # A wait for a remote expiry, bounded by the lease; a little past
                # it, as timers and PTTL's milliseconds round.
                await asyncio.sleep(left + EXPIRY_MARGIN)
            return not await self._ownership.alive(owner)
        except StoreUnavailable:
            return False


def moved_response() -> web.Response:
    """What an owner that no longer holds the session answers a forwarded request."""
    return web.json_response(
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32038, "message": "session moved"}},
        status=503,
        headers={MOVED_HEADER: "1"},
    )


def middleware(forwarder: Forwarder, forget: Callable[[str], None]) -> Any:
    """An aiohttp middleware that forwards what a handler finds held by another replica.

    ``forget(session_id)`` is called when forwarding to the replica the hub
    named failed, so that the next attempt asks the store again.
    """

    @web.middleware
    async def forwarding(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hop = forwarder.is_hop(request)
        for _ in range(MAX_HOPS):
            try:
                return await handler(request)
            except OwnedElsewhere as held:
                if hop or held.owner is None:
                    return moved_response()  # the replica that forwarded it serves it
                try:
                    return await forwarder.forward(request, held.owner)
                except Moved:
                    forget(held.session_id)
                    continue
                except OwnerUnreachable:
                    forget(held.session_id)
                    if await forwarder.outlived(held.owner):
                        continue  # lapsed: the next round takes the session over here
                    raise ReplicaUnavailable(
                        "the replica holding this session did not answer; retry",
                        headers={"Retry-After": "1"},
                    ) from None
        raise ReplicaUnavailable(
            "the session kept moving between replicas; retry", headers={"Retry-After": "1"}
        )

    return forwarding
