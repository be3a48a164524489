"""Group: the upstream sessions one share key uses, and the client sessions on them.

A server's :class:`~bridge.pool.pool.Pool` keeps one group per share key: per
principal in mode ``principal`` (tenants never share an upstream session),
one for everybody in mode ``all``; in both, clients whose forwarded headers
differ (``forward_headers``, e.g. their own upstream token) never share
either. Within a group:

- **Dispatch** (mux rule 3): a request goes to a live upstream session it
  :func:`~bridge.pool.mux.fits`: the one this client already uses if it
  fits, else the least busy. Requests of clients that cannot be called back
  share one upstream session freely, so 200 concurrent slow calls run
  concurrently. A request that may call back, from a client that can be
  called back, needs a session no other client has requests in flight on; if
  none fits, the group starts another (within the pool's ``max``), else waits
  for one to free up, at most ``wait_timeout`` seconds (then 503, Retry-After).
- **Routing back**: whatever the mux decides, the group carries out; list
  changes go to every client of the group, resource updates to subscribers.
- **Shared state**: subscriptions live on one upstream session (the *home*),
  reference-counted; the upstream log level is the most verbose any client
  asked for. A lost session is replaced on the next request, and the home's
  subscriptions and the log level are set again on its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from bridge import errors, jsonrpc, tasks
from bridge.errors import UpstreamError
from bridge.jsonrpc import Message
from bridge.pool.channel import Channel, Refused, severity
from bridge.pool.mux import UPDATED, Broadcast, Drop, Reply, Routed, ToLane, may_call_back
from bridge.pool.upstream_session import UpstreamSession

if TYPE_CHECKING:
    from bridge.pool.pool import Pool

log = structlog.get_logger("bridge.pool")

GroupKey = Hashable
#: Pages of ``tools/list`` read at most for :meth:`Group.tool_schema`.
TOOL_PAGES = 20


class Group:
    def __init__(self, pool: Pool, key: GroupKey, headers: Mapping[str, str] | None) -> None:
        self.pool = pool
        self.server = pool.name
        self.key = key
        self.headers = headers  # of the client request that made the group (forwarded ones)
        self.sessions: list[UpstreamSession] = []
        self.channels: set[Channel] = set()
        self._subscribers: dict[str, set[Channel]] = {}
        self._home: UpstreamSession | None = None
        self.log_level: str | None = None  # applied upstream
        self._starting: asyncio.Task[UpstreamSession] | None = None
        self._tools: dict[str, object] | None = None  # name -> inputSchema (tool_schema)

    def live(self) -> list[UpstreamSession]:
        return [s for s in self.sessions if not s.closed]

    def idle(self) -> bool:
        """No client attached and nothing in flight: the group may go."""
        return not self.channels and not any(s.mux.in_flight() for s in self.sessions)

    # -- client sessions ---------------------------------------------------

    def attach(self, *, modern: bool = False) -> Channel:
        config = self.pool.config
        channel = Channel(self, config.channel_limit, config.channel_bytes, modern=modern)
        self.channels.add(channel)
        return channel

    async def tool_schema(self, name: str) -> object:
        """The ``inputSchema`` of tool ``name`` (None if the server lists no such tool).

        Listed once per group and again after ``tools/list_changed``, for the
        2026-07-28 ``Mcp-Param-*`` checks (:func:`bridge.modern.wire.check_param_headers`).

        Raises:
            UpstreamError, PoolBusy: as :meth:`dispatch`.
        """
        if self._tools is None:
            session = await self.any_session()
            tools: dict[str, object] = {}
            cursor = None
            for _ in range(TOOL_PAGES):
                result = await session.call("tools/list", {"cursor": cursor} if cursor else {})
                for tool in result.get("tools") or []:
                    if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                        tools[tool["name"]] = tool.get("inputSchema")
                cursor = result.get("nextCursor")
                if not isinstance(cursor, str):
                    break
            self._tools = tools
        return self._tools.get(name)

    async def leave(self, channel: Channel) -> None:
        """A client session let go: cancel its requests, drop its subscriptions."""
        self.channels.discard(channel)
        for session in self.live():
            for cancel in session.mux.leave(channel):
                with contextlib.suppress(UpstreamError):
                    await session.send(cancel)
        for uri in list(channel.subscriptions):
            with contextlib.suppress(Refused):
                await self.subscribe(channel, uri, "resources/unsubscribe")
        with contextlib.suppress(UpstreamError):
            await self.apply_log_level()
        self.pool.notify()

    def drop_later(self, channel: Channel) -> None:
        """A client too slow to read leaves at once, so it holds nobody up."""
        _ = tasks.spawn(self.leave(channel), name=f"pool-leave:{self.server}")

    # -- dispatch ----------------------------------------------------------

    async def dispatch(self, channel: Channel, message: Message) -> None:
        """Send a client request on an upstream session that fits (module docstring).

        Raises:
            PoolBusy: nothing fit within ``wait_timeout`` (503, ``Retry-After``).
            UpstreamError: no upstream session could be started, or the send failed.
        """
        exclusive = may_call_back(message["method"], channel.capabilities)
        session = await self._lane(channel, exclusive)
        await session.request(channel, message, exclusive=exclusive)

    async def _lane(self, lane: Channel | None, exclusive: bool) -> UpstreamSession:
        """A live upstream session ``lane`` may use now (any one for None), started if need be.

        Raises:
            PoolBusy: none within ``wait_timeout`` (or too many already wait).
            UpstreamError: a needed upstream session could not be started.
        """
        session = self._pick(lane, exclusive)
        if session is not None:
            return session
        async with self.pool.waiting():
            while True:
                if (session := self._pick(lane, exclusive)) is not None:
                    return session
                if self._starting is not None or self.pool.may_start():
                    await self._start()
                else:
                    # A call held for its client's input (2026-07-28) gives way first:
                    # ending it frees its upstream session and notifies the pool.
                    _ = self.pool.reclaim(self.pool)
                    await self.pool.changed()

    def _pick(self, lane: Channel | None, exclusive: bool) -> UpstreamSession | None:
        live = self.live()
        if lane is None:
            return live[0] if live else None
        fitting = [s for s in live if s.mux.fits(lane, exclusive)]
        if not fitting:
            return None
        return min(fitting, key=lambda s: (lane not in s.mux.busy, s.mux.in_flight()))

    async def _start(self) -> UpstreamSession:
        """Join the start under way, or begin one (the caller reserved room for it)."""
        if self._starting is None:
            self._starting = tasks.spawn(self._start_one(), name=f"pool-start:{self.server}",
                                         awaited=True)  # fmt: skip
            self._starting.add_done_callback(lambda _: setattr(self, "_starting", None))
        return await asyncio.shield(self._starting)

    async def _start_one(self) -> UpstreamSession:
        session = await self.pool.start_session(self)
        self.sessions.append(session)
        if self._subscribers and (self._home is None or self._home.closed):
            await self._rehome(session)
        self.pool.notify()
        return session

    async def any_session(self) -> UpstreamSession:
        """A live upstream session of the group, started if there is none.

        Raises:
            PoolBusy, UpstreamError: as :meth:`dispatch`.
        """
        return await self._lane(None, False)

    def home(self) -> UpstreamSession | None:
        """The session holding the group's subscriptions, if any are held."""
        return self._home if self._subscribers else None

    async def initialize_result(self, version: str) -> dict[str, Any]:
        """What a client's ``initialize`` is answered: the server's, at ``version``."""
        session = await self.any_session()
        return {**session.init_result, "protocolVersion": version}

    async def cancel(self, channel: Channel, message: Message) -> None:
        for session in self.live():
            if (forwarded := session.mux.cancel(channel, message)) is not None:
                self.pool.notify()
                await session.relay(forwarded)
                return

    async def answer(self, channel: Channel, message: Message) -> None:
        for session in self.live():
            if (forwarded := session.mux.answer(channel, message)) is not None:
                await session.relay(forwarded)
                return
        log.debug("pool_answer_dropped", server=self.server, reason="not asked of this client")

    # -- shared state --------------------------------------------------------

    async def subscribe(self, channel: Channel, uri: object, method: str) -> dict[str, Any]:
        """Reference-counted ``resources/subscribe`` / ``unsubscribe`` on the home session.

        Raises:
            Refused: a bad URI, or the server refused (the client gets its error).
        """
        if not isinstance(uri, str):
            raise Refused(errors.INVALID_PARAMS, "params.uri must be a string")
        subscribers = self._subscribers.setdefault(uri, set())
        if method == "resources/subscribe":
            if not subscribers:
                await self._upstream_call(method, uri)
            subscribers.add(channel)
            channel.subscriptions.add(uri)
            return {}
        subscribers.discard(channel)
        channel.subscriptions.discard(uri)
        if not subscribers:
            del self._subscribers[uri]
            if self._home is not None and not self._home.closed:
                with contextlib.suppress(Refused):
                    await self._upstream_call(method, uri)
        return {}

    async def _upstream_call(self, method: str, uri: str) -> None:
        try:
            if self._home is None or self._home.closed:
                self._home = await self.any_session()
            await self._home.call(method, {"uri": uri})
        except UpstreamError as exc:
            raise Refused(exc.jsonrpc_code, exc.message) from exc

    async def _rehome(self, session: UpstreamSession) -> None:
        """Subscriptions again, on a new home (the old one was lost)."""
        self._home = session
        for uri in list(self._subscribers):
            try:
                await session.call("resources/subscribe", {"uri": uri})
            except UpstreamError as exc:
                log.warning("pool_resubscribe_failed", server=self.server, error=exc.message)

    async def apply_log_level(self) -> None:
        """Run the upstream at the most verbose level any client of the group asked for.

        With no upstream session live, the level waits for the next one to start.

        Raises:
            UpstreamError: the server refused ``logging/setLevel``.
        """
        levels = [c.log_level for c in self.channels if c.log_level is not None]
        wanted = min(levels, key=severity) if levels else None
        if wanted is None or wanted == self.log_level:
            return
        for session in self.live():
            await session.call("logging/setLevel", {"level": wanted})
        self.log_level = wanted

    # -- from upstream sessions --------------------------------------------

    def route(self, session: UpstreamSession, routed: Routed) -> None:
        """Carry out what the mux decided about one upstream message."""
        if isinstance(routed, ToLane):
            assert isinstance(routed.lane, Channel)
            routed.lane.push(routed.message)
            if "method" not in routed.message:  # a response: a lane may have freed up
                self.pool.notify()
        elif isinstance(routed, Reply):
            _ = tasks.spawn(self._reply(session, routed.message), name=f"pool-reply:{self.server}")
        elif isinstance(routed, Broadcast):
            self._broadcast(routed.message)
        elif isinstance(routed, Drop):
            self.pool.metrics.pool_dropped.labels(self.server, routed.reason).inc()

    async def _reply(self, session: UpstreamSession, message: Message) -> None:
        with contextlib.suppress(UpstreamError):
            await session.send(message)

    def _broadcast(self, message: Message) -> None:
        if message.get("method") == UPDATED:
            uri = jsonrpc.params(message).get("uri")
            targets = self._subscribers.get(uri, set()) if isinstance(uri, str) else set()
        else:  # */list_changed: every client of the group (spec server/*/list_changed)
            targets = self.channels
            if message.get("method") == "notifications/tools/list_changed":
                self._tools = None
        for channel in list(targets):
            channel.push(message)

    def lost(self, session: UpstreamSession, reason: str) -> None:
        """An upstream session ended by itself; the next request starts a successor."""
        if session in self.sessions:
            self.sessions.remove(session)
        if self._home is session:
            self._home = None
            if self._subscribers:
                _ = tasks.spawn(self._replace_home(), name=f"pool-rehome:{self.server}")
        self.pool.session_lost(session, reason)

    async def _replace_home(self) -> None:
        with contextlib.suppress(UpstreamError):
            session = await self.any_session()
            if self._home is None or self._home.closed:
                await self._rehome(session)

    def discard(self, session: UpstreamSession) -> None:
        """Take a session out of dispatch at once (it is being closed)."""
        if session in self.sessions:
            self.sessions.remove(session)
        if self._home is session:
            self._home = None

    def discard_all(self) -> None:
        """Take every session out of dispatch at once (a private group is closing)."""
        self.sessions.clear()
        self._home = None

    async def close_session(self, session: UpstreamSession) -> None:
        """The pool reaps or evicts an idle session."""
        self.discard(session)
        await session.aclose()

    async def aclose(self, reason: str) -> None:
        for channel in list(self.channels):
            channel.end(reason)
        await asyncio.gather(*(s.aclose() for s in self.sessions))
        self.sessions.clear()
