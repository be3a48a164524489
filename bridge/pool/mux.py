"""Multiplexing client sessions over one upstream session, sans-IO.

One :class:`Mux` per shared upstream session holds who asked what. Client
sessions are opaque hashable keys (``Lane``s); the mux never does I/O, keeps
no clock and decides everything by the tables below. Rules (spec-notes §3.4,
§4.6-4.8; issue #10):

1. **Ids.** Every client request goes upstream under a pool-unique integer id
   (drawn from the pool's counter, so two upstream sessions of one server
   never share one), and its progress token is rewritten likewise. Responses
   and progress map back to exactly the lane, id and token that asked. A
   response or a progress notification the mux does not know is dropped:
   late, or forged; never delivered to a guess.
2. **Server-to-client requests** (sampling, elicitation, roots, ping) go
   downstream under a pool-unique id too; only the lane they were sent to can
   answer them, and its answer goes upstream under the server's own id.
3. **Attribution.** stdio and legacy SSE give no relation hint on the wire
   (spec-notes §4.8), so the mux attributes an unrelated message to a lane
   only when one is unambiguous: the lane that holds the upstream session
   *exclusively*, else the single lane with requests in flight. The pool's
   dispatch makes that unambiguous for the traffic that matters: a request
   that may call back (:func:`may_call_back`) from a client that could be
   called back runs only on an upstream session where no other client has a
   request in flight (:func:`fits`).
4. **What cannot be attributed** is never guessed: a server-to-client request
   gets an error answer upstream (the server sees a client without that
   capability), a ping is answered by the gateway, and a log message or other
   unrelated notification is dropped (counted). ``list_changed`` goes to every
   client of the group and ``resources/updated`` to the subscribers of its URI
   (the group decides: :class:`Broadcast`).
5. **roots/list is never relayed** to a session-era client on a shared
   session. Roots are per connection on the server (``server-filesystem``
   reads them once, after the handshake, and they bound every later call), so
   one client's roots would widen what every other client's calls may reach.
   The gateway's handshake does not declare ``roots``; a server that asks
   anyway gets an error. Pick ``share: none`` for a server that needs its
   clients' roots. The one exception is a 2026-07-28 request (a ``modern``
   lane, :mod:`bridge.modern`): it runs exclusively, its client answers for
   that request alone (``inputResponses``), and ``capable`` lets the lane
   decide.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Final

from bridge import errors, jsonrpc
from bridge.jsonrpc import Message, RequestId

Lane = Hashable

CANCELLED: Final = "notifications/cancelled"
PROGRESS: Final = "notifications/progress"
LOG: Final = "notifications/message"
UPDATED: Final = "notifications/resources/updated"
#: Server-to-client request methods and the client capability each needs.
CAPABILITY_FOR: Final = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
#: Client capabilities the gateway relays on a shared upstream session for a
#: session-era client; one that declares none of them can never be called
#: back there. ``roots`` is not among them (rule 5).
RELAYED: Final = frozenset({"sampling", "elicitation"})
#: Requests a server answers without calling the client back (listings,
#: settings, liveness). Anything else may call back, unknown methods included.
NEVER_CALLS_BACK: Final = frozenset(
    {
        "ping",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
    }
)


def may_call_back(method: str, capabilities: frozenset[str]) -> bool:
    """Whether a request needs an upstream session to itself (rule 3).

    ``capabilities`` are the relayed ones (:data:`RELAYED`) its client declared.
    """
    return bool(capabilities) and method not in NEVER_CALLS_BACK


def fits(busy: dict[Lane, int], owner: Lane | None, lane: Lane, exclusive: bool) -> bool:
    """Whether ``lane`` may send a request on an upstream session now.

    ``busy`` counts requests in flight by lane; ``owner`` holds the session
    exclusively (rule 3). An exclusive request needs a session where no other
    lane has anything in flight; a shared one needs a session nobody else owns.
    """
    if owner is not None and owner != lane:
        return False
    if exclusive:
        return all(other == lane for other, count in busy.items() if count)
    return True


@dataclass(frozen=True, slots=True)
class ToLane:
    """Deliver ``message`` to ``lane``."""

    lane: Lane
    message: Message


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message`` back upstream (an answer the gateway gives itself)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A notification for the group to fan out (list_changed, resources/updated)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Drop:
    """Nobody gets it; ``reason`` is a metric label."""

    reason: str


Routed = ToLane | Reply | Broadcast | Drop


@dataclass(slots=True)
class _Pending:
    lane: Lane
    local_id: RequestId
    method: str
    exclusive: bool
    token: tuple[RequestId, int] | None  # (client's token, upstream token)


@dataclass(slots=True)
class Mux:
    """Routing state of one shared upstream session. Pure: no I/O, no clock."""

    ids: Iterator[int]
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _by_local: dict[tuple[Lane, RequestId], int] = field(default_factory=dict)
    _by_token: dict[int, int] = field(default_factory=dict)  # upstream token -> upstream id
    _down: dict[int, tuple[Lane, RequestId]] = field(default_factory=dict)  # down id -> lane, up id
    busy: dict[Lane, int] = field(default_factory=dict)  # requests in flight by lane
    _exclusive: dict[Lane, int] = field(default_factory=dict)

    # -- state -------------------------------------------------------------

    @property
    def owner(self) -> Lane | None:
        """The lane holding this upstream session exclusively, if any."""
        return next(iter(self._exclusive), None)

    def in_flight(self) -> int:
        return len(self._pending)

    def fits(self, lane: Lane, exclusive: bool) -> bool:
        return fits(self.busy, self.owner, lane, exclusive)

    # -- client -> upstream ------------------------------------------------

    def request(self, lane: Lane, message: Message, *, exclusive: bool) -> Message:
        """Register a client request; the copy to send upstream (rule 1)."""
        up_id = next(self.ids)
        token = jsonrpc.progress_token(message)
        rewritten = jsonrpc.with_id(message, up_id)
        pair = None
        if token is not None:
            up_token = next(self.ids)
            pair = (token, up_token)
            self._by_token[up_token] = up_id
            params = jsonrpc.params(message)
            meta = {**params["_meta"], "progressToken": up_token}
            rewritten["params"] = {**params, "_meta": meta}
        self._pending[up_id] = _Pending(lane, message["id"], message["method"], exclusive, pair)
        self._by_local[(lane, message["id"])] = up_id
        self.busy[lane] = self.busy.get(lane, 0) + 1
        if exclusive:
            self._exclusive[lane] = self._exclusive.get(lane, 0) + 1
        return rewritten

    def cancel(self, lane: Lane, message: Message) -> Message | None:
        """A client's ``notifications/cancelled`` for upstream; None if not ours."""
        params = jsonrpc.params(message)
        local = params.get("requestId")
        if not jsonrpc.is_request_id(local):
            return None
        up_id = self._by_local.get((lane, local))  # type: ignore[arg-type]
        if up_id is None:
            return None
        self._complete(up_id)
        return {**message, "params": {**params, "requestId": up_id}}

    def forget(self, lane: Lane, local_id: RequestId) -> None:
        """Forget a request that could not be sent."""
        up_id = self._by_local.get((lane, local_id))
        if up_id is not None:
            self._complete(up_id)

    def answer(self, lane: Lane, message: Message) -> Message | None:
        """A client's response to a server request, under the server's id (rule 2)."""
        down = message.get("id")
        if not isinstance(down, int) or isinstance(down, bool):
            return None
        target = self._down.get(down)
        if target is None or target[0] != lane:
            return None  # not sent to this client: never let it answer for another
        del self._down[down]
        return jsonrpc.with_id(message, target[1])

    def leave(self, lane: Lane) -> list[Message]:
        """Forget everything of ``lane``; the cancels to send upstream for its requests."""
        cancels = []
        for up_id, pending in list(self._pending.items()):
            if pending.lane == lane:
                self._complete(up_id)
                cancels.append(
                    jsonrpc.notification(CANCELLED, {"requestId": up_id, "reason": "client left"})
                )
        for down, (owner, _) in list(self._down.items()):
            if owner == lane:
                del self._down[down]
        return cancels

    # -- upstream -> client ------------------------------------------------

    def inbound(
        self, message: Message, kind: jsonrpc.Kind, capable: Callable[[Lane, str], bool]
    ) -> Routed:
        """Where an upstream message goes (rules 1-5).

        ``capable(lane, capability)`` says whether a client declared a capability.
        """
        if kind is jsonrpc.Kind.RESPONSE:
            return self._response(message)
        if kind is jsonrpc.Kind.REQUEST:
            return self._server_request(message, capable)
        method = message.get("method")
        if method == PROGRESS:
            return self._progress(message)
        if method == CANCELLED:
            return self._server_cancel(message)
        if isinstance(method, str) and (method.endswith("/list_changed") or method == UPDATED):
            return Broadcast(message)
        lane = self.attributed()
        return Drop("unattributed") if lane is None else ToLane(lane, message)

    def attributed(self) -> Lane | None:
        """The one lane an unrelated message can belong to, or None (rule 3)."""
        if (owner := self.owner) is not None:
            return owner
        lanes = [lane for lane, count in self.busy.items() if count]
        return lanes[0] if len(lanes) == 1 else None

    def fail_all(self, code: int, text: str) -> list[ToLane]:
        """An error response for every request in flight (the upstream session is lost)."""
        failed = []
        for up_id in list(self._pending):
            pending = self._complete(up_id)
            error = jsonrpc.error_response(pending.local_id, code, text)
            failed.append(ToLane(pending.lane, error))
        self._down.clear()
        return failed

    # -- internals ---------------------------------------------------------

    def _response(self, message: Message) -> Routed:
        up_id = message.get("id")
        if not isinstance(up_id, int) or up_id not in self._pending:
            return Drop("late_response")
        pending = self._complete(up_id)
        return ToLane(pending.lane, jsonrpc.with_id(message, pending.local_id))

    def _server_request(self, message: Message, capable: Callable[[Lane, str], bool]) -> Routed:
        method = message["method"]
        if method == "ping":  # spec utilities/ping: answered at once, by the gateway
            return Reply({"jsonrpc": "2.0", "id": message["id"], "result": {}})
        capability = CAPABILITY_FOR.get(method)
        lane = self.attributed()
        if capability is None or lane is None or not capable(lane, capability):
            text = f"the client cannot be asked {method!r} through this gateway"
            return Reply(jsonrpc.error_response(message["id"], errors.METHOD_NOT_FOUND, text))
        down = next(self.ids)
        self._down[down] = (lane, message["id"])
        return ToLane(lane, jsonrpc.with_id(message, down))

    def _progress(self, message: Message) -> Routed:
        params = jsonrpc.params(message)
        token = params.get("progressToken")
        up_id = self._by_token.get(token) if isinstance(token, int) else None
        pending = None if up_id is None else self._pending.get(up_id)
        if pending is None or pending.token is None:
            return Drop("unknown_progress_token")
        restored = {**message, "params": {**params, "progressToken": pending.token[0]}}
        return ToLane(pending.lane, restored)

    def _server_cancel(self, message: Message) -> Routed:
        params = jsonrpc.params(message)
        up = params.get("requestId")
        for down, (lane, known) in self._down.items():
            if known == up:
                del self._down[down]
                return ToLane(lane, {**message, "params": {**params, "requestId": down}})
        return Drop("unknown_cancel")

    def _complete(self, up_id: int) -> _Pending:
        pending = self._pending.pop(up_id)
        self._by_local.pop((pending.lane, pending.local_id), None)
        if pending.token is not None:
            self._by_token.pop(pending.token[1], None)
        _decrement(self.busy, pending.lane)
        if pending.exclusive:
            _decrement(self._exclusive, pending.lane)
        return pending


def _decrement(counts: dict[Lane, int], lane: Lane) -> None:
    left = counts[lane] - 1
    if left:
        counts[lane] = left
    else:
        del counts[lane]
