"""Exchange: one 2026-07-28 request served by a session-era upstream, across its rounds.

The data's path for a sessionless request: front door
(:mod:`bridge.frontends.modern_http`) -> **exchange** (no client session) ->
pool group (:class:`bridge.pool.group.Group`) -> upstream session ->
transport. An exchange is a transient ``modern`` lane on the group: it sends
the request upstream under the pool's attribution rules (mux rule 3: a
request that may call back, from a client that can answer, runs on an
upstream session of its own) and reads what comes back.

Translation (spec 2026-07-28 basic/patterns/mrtr; spec-notes §7):

- The upstream's server-to-client requests (``sampling/createMessage``,
  ``elicitation/create``, ``roots/list``) during the call are gathered (those
  arriving within ``gather`` seconds of each other), then the client is
  answered an ``InputRequiredResult``: each request under a key (the
  upstream's ``_meta["mcp-bridge/inputKey"]`` if it names one, else
  ``<kind>-<n>``), and a ``requestState`` (:mod:`bridge.modern.state`) naming
  this exchange. The upstream call is *held*: it stays in flight, waiting for
  those answers, for at most ``hold`` seconds.
- The client's retry carries ``inputResponses`` and that ``requestState``: the
  held requests are answered upstream with them and the call goes on, to its
  final result or to another round. A key the retry lacks is asked again (mrtr
  §Error Handling); keys nobody asked are ignored. Answers given for keys in
  a request's ``inputResponses`` are used as soon as the upstream asks for
  that key, so a client that answers ahead (no ``requestState``) is served in
  one round.
- A request the client did not declare the capability for is refused
  upstream (the server sees a client without it) while others are relayed; if
  it is the only one, the client gets -32021 with ``data.requiredCapabilities``
  and the upstream call is cancelled.
- Progress reaches the HTTP request being served now, under that request's
  own ``progressToken``; log messages only if that request set a level.
- A client that goes away mid-call (its stream closed) cancels the upstream
  request (transports/streamable-http §Cancellation): the lane leaves the
  group, which sends ``notifications/cancelled`` upstream.

An exchange is driven by one HTTP request at a time (:meth:`Exchange.drive`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import structlog

from bridge import errors, jsonrpc, tasks
from bridge.errors import InvalidParams, MissingClientCapability, UpstreamTimeout
from bridge.jsonrpc import Message
from bridge.modern import wire
from bridge.modern.wire import ModernRequest
from bridge.pool.channel import Channel
from bridge.pool.group import Group
from bridge.pool.mux import CANCELLED, CAPABILITY_FOR, LOG, PROGRESS

log = structlog.get_logger("bridge.modern")

#: The JSON-RPC id the exchange's request goes upstream under (the mux maps it).
LOCAL_ID: Final = 1
_MRTR_FIELDS: Final = frozenset({"inputResponses", "requestState"})


@dataclass(frozen=True, slots=True)
class Notice:
    """A notification for the HTTP request being served (progress, log)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Answered:
    """The final JSON-RPC response (already in this revision's shape)."""

    message: Message
    status: int = 200


@dataclass(frozen=True, slots=True)
class InputRequired:
    """The call waits on the client: these requests, by key."""

    requests: dict[str, dict[str, Any]]


Step = Notice | Answered | InputRequired


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds: ``gather`` server requests, ``hold`` a call for input, bound a ``request``."""

    gather: float
    hold: float
    request: float


class Exchange:
    """One modern request's upstream call, held between rounds (module docstring)."""

    def __init__(
        self, group: Group, request: ModernRequest, principal: str | None, timing: Timing
    ) -> None:
        self.id = ""  # set by the Holds registry
        self.group = group
        self.request = request
        self.principal = principal
        self.round = 0
        self.current_id: jsonrpc.RequestId = request.id  # of the HTTP request being served
        self._timing = timing
        self._channel: Channel = group.attach(modern=True)
        self._channel.capabilities = _declared(request.capabilities)
        self._pending: dict[str, int] = {}  # key -> the down id the server's request has
        self._asked: dict[str, dict[str, Any]] = {}  # key -> {method, params}, as the client sees
        self._answers: dict[str, Any] = {}  # answers the client gave ahead, by key
        #: Every answer the client gave that went upstream, by key: what a
        #: replica that picks the call up must give again (see Holds' records).
        self.given: dict[str, Any] = {}
        self._counters: dict[str, itertools.count[int]] = {}
        self._lock = asyncio.Lock()
        self._refused: dict[object, str] = {}  # down id -> capability the client lacks
        self.done = False
        self.expires = 0.0

    def __repr__(self) -> str:
        return f"<Exchange {self.group.server} {self.request.method} round {self.round}>"

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    # -- starting ------------------------------------------------------------

    async def start(self) -> None:
        """Send the request upstream (to a session it fits, mux rule 3).

        Raises:
            PoolBusy, UpstreamError: as :meth:`bridge.pool.group.Group.dispatch`.
        """
        message = _upstream_copy(self.request)
        self._channel.log_level = self.request.log_level
        if self.request.log_level is not None:
            try:
                await self.group.apply_log_level()
            except errors.UpstreamError as exc:
                log.info("modern_set_level_refused", server=self.group.server, error=exc.message)
        await self.group.dispatch(self._channel, message)

    # -- one HTTP request's worth ------------------------------------------

    async def drive(self, current: ModernRequest) -> AsyncIterator[Step]:
        """Serve ``current`` (the first request or a retry): its notices, then one end step.

        Ends with :class:`Answered` (the exchange is done) or :class:`InputRequired`
        (it is held for the next retry).

        Raises:
            InvalidParams: ``inputResponses`` is not an object of objects.
            MissingClientCapability: the upstream asks only what the client cannot do.
            UpstreamTimeout: no final answer within ``request`` seconds of activity.
            UpstreamUnavailable: the upstream session was lost.
        """
        async with self._lock:
            self.current_id = current.id
            self._channel.log_level = current.log_level
            self._take_answers(current.params.get("inputResponses"))
            await self._answer_pending()
            if self._pending:  # what the retry did not answer is asked again
                yield self._input_required()
                return
            async for step in self._read(current):
                yield step
                if not isinstance(step, Notice):
                    return

    def seed(self, answers: dict[str, Any]) -> None:
        """Answers given in earlier rounds, elsewhere: used as the server asks again."""
        self._answers.update(answers)

    def _take_answers(self, responses: object) -> None:
        if responses is None:
            return
        if not isinstance(responses, dict) or not all(
            isinstance(v, dict) for v in responses.values()
        ):
            raise InvalidParams("params.inputResponses must map input keys to result objects")
        self._answers.update(responses)

    async def _answer_pending(self) -> None:
        for key in [k for k in self._pending if k in self._answers]:
            down = self._pending.pop(key)
            self._asked.pop(key, None)
            result = self.given[key] = self._answers.pop(key)
            await self.group.answer(self._channel, {"jsonrpc": "2.0", "id": down, "result": result})

    async def _read(self, current: ModernRequest) -> AsyncIterator[Step]:
        messages = self._channel.messages().__aiter__()
        gathering = False
        while True:
            window = self._timing.gather if gathering else self._timing.request
            try:
                async with asyncio.timeout(window):
                    message = await anext(messages)
            except TimeoutError:
                if gathering and self._pending:
                    # Asked with what the client can answer; the rest refused upstream.
                    for down, capability in self._refused.items():
                        await self._refuse(down, f"the client did not declare {capability!r}")
                    self._refused.clear()
                    yield self._input_required()
                    return
                if gathering and self._refused:
                    # basic/index §_meta: only what the client did not declare was asked.
                    needed: dict[str, Any] = {
                        capability: {} for capability in self._refused.values()
                    }
                    raise MissingClientCapability(
                        f"the server needs client capabilities {sorted(needed)} for this request",
                        data={"requiredCapabilities": needed},
                    ) from None
                raise UpstreamTimeout(
                    f"server {self.group.server!r}: no answer to {self.request.method} "
                    f"within {window:g} s"
                ) from None
            except StopAsyncIteration:
                raise errors.UpstreamUnavailable(
                    f"server {self.group.server!r}: upstream session ended"
                ) from None
            if "method" not in message:  # the response to our one request
                self.done = True
                yield Answered(*self._final(message, current))
                return
            method = message["method"]
            if "id" in message:
                gathering = await self._server_request(message) or gathering
            elif method == PROGRESS:
                if (notice := _progress_for(message, current)) is not None:
                    yield Notice(notice)
            elif method == LOG:
                yield Notice(message)
            elif method == CANCELLED:
                self._server_cancelled(message)

    async def _server_request(self, message: Message) -> bool:
        """Take one server-to-client request; whether to gather (the client is to be asked)."""
        method = message["method"]
        params = dict(jsonrpc.params(message))
        meta = dict(params.get("_meta") or {})
        hint = meta.pop(wire.META_INPUT_KEY, None)
        if meta:
            params["_meta"] = meta
        else:
            params.pop("_meta", None)
        capability = CAPABILITY_FOR.get(method)
        if capability is None:
            text = f"the client cannot be asked {method!r} through this gateway"
            await self._refuse(message["id"], text)
            return False
        if capability not in self._channel.capabilities:
            self._refused[message["id"]] = capability  # decided when gathering ends
            return True
        key = self._key(method, hint)
        if key in self._answers:
            result = self.given[key] = self._answers.pop(key)
            answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            await self.group.answer(self._channel, answer)
            return False
        self._pending[key] = message["id"]
        self._asked[key] = {"method": method, "params": params}
        return True

    async def _refuse(self, down: object, text: str) -> None:
        reply = jsonrpc.error_response(down, errors.METHOD_NOT_FOUND, text)  # type: ignore[arg-type]
        await self.group.answer(self._channel, reply)

    def _key(self, method: str, hint: object) -> str:
        if isinstance(hint, str) and hint and hint not in self._pending:
            return hint[:128]
        kind = CAPABILITY_FOR.get(method, "input")  # sampling, elicitation, roots
        counter = self._counters.setdefault(kind, itertools.count(1))
        while (key := f"{kind}-{next(counter)}") in self._pending:
            pass
        return key

    def _server_cancelled(self, message: Message) -> None:
        down = jsonrpc.params(message).get("requestId")
        for key, pending in list(self._pending.items()):
            if pending == down:
                del self._pending[key]
                self._asked.pop(key, None)

    def _input_required(self) -> InputRequired:
        self.round += 1
        self.expires = time.time() + self._timing.hold
        return InputRequired(dict(self._asked))

    def _final(self, message: Message, current: ModernRequest) -> tuple[Message, int]:
        """The response for ``current``, and its HTTP status if sent as JSON."""
        final: Message = {"jsonrpc": "2.0", "id": current.id}
        retried = "inputResponses" in current.params or "requestState" in current.params
        if "result" in message:
            final["result"] = wire.complete(
                message["result"], current.method, self.server_info, retried=retried
            )
            return final, 200
        final["error"] = error = wire.upstream_error(message.get("error"), current)
        # transports/streamable-http §Protocol Version Header: an unimplemented method is 404.
        return final, 404 if error.get("code") == errors.METHOD_NOT_FOUND else 200

    @property
    def server_info(self) -> object:
        live = self.group.live()
        return live[0].init_result.get("serverInfo") if live else None

    # -- ending ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Leave the group: an unfinished upstream call is cancelled. Never raises."""
        self.done = True
        await self._channel.aclose()


def _declared(capabilities: dict[str, Any]) -> frozenset[str]:
    return frozenset(name for name in CAPABILITY_FOR.values() if name in capabilities)


def _upstream_copy(request: ModernRequest) -> Message:
    """The request as a session-era server takes it: id :data:`LOCAL_ID`, no modern fields."""
    params = {k: v for k, v in request.params.items() if k not in _MRTR_FIELDS}
    meta = {k: v for k, v in wire.meta(request.message).items() if not k.startswith(wire.PREFIX)}
    if meta:
        params["_meta"] = meta
    else:
        params.pop("_meta", None)
    message: Message = {"jsonrpc": "2.0", "id": LOCAL_ID, "method": request.method}
    if params:
        message["params"] = params
    return message


def _progress_for(message: Message, current: ModernRequest) -> Message | None:
    """Progress under the current request's own token; none if it asked for none."""
    token = jsonrpc.progress_token(current.message)
    if token is None:
        return None
    params = {**jsonrpc.params(message), "progressToken": token}
    return {**message, "params": params}


class Holds:
    """The exchanges of this process waiting on their clients' input, by id; bounded in time."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._by_id: dict[str, Exchange] = {}
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, exchange: Exchange, hold_id: str) -> bool:
        """Hold ``exchange`` under ``hold_id``; False when the process holds ``limit`` already."""
        if len(self._by_id) >= self._limit and exchange.id not in self._by_id:
            return False
        exchange.id = hold_id
        self._by_id[hold_id] = exchange
        if self._reaper is None:
            self._reaper = tasks.spawn(self._reap(), name="modern-holds-reaper")
        return True

    def get(self, hold_id: str) -> Exchange | None:
        return self._by_id.get(hold_id)

    def reclaim(self, pool: object) -> bool:
        """End the oldest call of ``pool`` held for input, so a waiting request gets its
        upstream session; whether there was one. Its client's retry runs the call again
        (the answers it gave are in the store's record): a re-run, not a refusal."""
        held = [(e.expires, i) for i, e in self._by_id.items()
                if e.group.pool is pool and not e.busy]  # fmt: skip
        if not held:
            return False
        _, hold_id = min(held)
        exchange = self._by_id.pop(hold_id)
        log.info("modern_hold_reclaimed", server=exchange.group.server)
        _ = tasks.spawn(self._end(exchange), name=f"modern-hold-reclaim:{exchange.group.server}")
        return True

    @staticmethod
    async def _end(exchange: Exchange) -> None:
        await exchange.aclose()
        exchange.group.pool.release(exchange.group)

    def pop(self, hold_id: str) -> Exchange | None:
        return self._by_id.pop(hold_id, None)

    async def _reap(self) -> None:
        try:
            while self._by_id:
                now = time.time()
                for hold_id, exchange in list(self._by_id.items()):
                    if not exchange.busy and exchange.expires < now:
                        del self._by_id[hold_id]
                        log.info("modern_hold_expired", server=exchange.group.server)
                        await self._end(exchange)
                soonest = min((e.expires for e in self._by_id.values()), default=now)
                await asyncio.sleep(max(0.05, soonest - time.time()))
        finally:
            self._reaper = None

    async def aclose(self) -> None:
        if self._reaper is not None:
            await tasks.cancel_and_wait(self._reaper, 1.0, "gateway shutting down")
        exchanges, self._by_id = list(self._by_id.values()), {}
        for exchange in exchanges:
            await exchange.aclose()
