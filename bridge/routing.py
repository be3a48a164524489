"""Per-session routing, sans-IO: id rewriting and which stream gets a message.

Rules (spec-notes §1.5-1.7, §4.6-4.8):

1. Every client request goes upstream under a fresh gateway id (an int); the
   client's id is restored on the response. The gateway can thus send its own
   requests upstream (a replayed ``initialize``) without colliding with the
   client's ids, and after an upstream restart late answers cannot be confused.
2. Every upstream request (sampling, elicitation, roots, ping) goes downstream
   under a fresh gateway id; the client's response gets the upstream's id back.
3. ``notifications/cancelled`` is rewritten in both directions; a cancel for
   an id we do not know is dropped (the receiver MAY ignore it anyway).
4. Each message goes on exactly one stream (§1.7). A response goes on the
   stream of its request, never on the standalone GET stream (§1.6). Progress
   goes where its ``progressToken`` came from. Anything else from an upstream
   that gives no relation hints (legacy SSE, stdio; §4.8) goes on the single
   attached request stream if there is exactly one, else on the GET stream.
   With no GET stream attached it falls back to the newest attached request
   stream, and with none attached at all it is queued for the GET stream.
5. A request stream is final once every request posted on it has its
   response (a batch posts several on one stream); then it closes (§1.5).

Stream keys: ints for POST-reply streams, :data:`GET` for the standalone one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from bridge import jsonrpc
from bridge.jsonrpc import Message, RequestId

GET: Final = "get"
#: Answers to the gateway's own requests upstream (a replayed handshake).
INTERNAL: Final = "internal"
StreamKey = int | str

CANCELLED: Final = "notifications/cancelled"
PROGRESS: Final = "notifications/progress"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Put ``message`` on ``stream``; close that stream after it if ``final``.

    ``message`` is None for a bare close (a cancelled request's stream).
    """

    stream: StreamKey
    message: Message | None
    final: bool = False
    answers: str | None = None  # for a response: the method of its request
    # For a response: the upstream id it answered (metrics only; not part of equality).
    up_id: int | None = field(default=None, compare=False)


@dataclass(slots=True)
class _Pending:
    client_id: RequestId
    stream: StreamKey
    method: str
    progress_token: RequestId | None


@dataclass(slots=True)
class Router:
    """Routing state of one MCP session. Pure: no I/O, no clock."""

    _next_up: int = 0
    _next_down: int = 0
    _next_stream: int = 0
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _up_id_by_client_id: dict[RequestId, int] = field(default_factory=dict)
    _stream_by_token: dict[RequestId, StreamKey] = field(default_factory=dict)
    _open: dict[StreamKey, int] = field(default_factory=dict)  # stream -> responses owed
    _attached: set[int] = field(default_factory=set)
    _get_attached: bool = False
    _server_requests: dict[int, RequestId] = field(default_factory=dict)  # down id -> up id

    # -- streams -----------------------------------------------------------

    def open_stream(self, *, unrelated: bool = True) -> int:
        """A new POST-reply stream, attached (its HTTP response is live).

        With ``unrelated=False`` (a plain JSON reply, which can carry only its
        response) no unrelated message is ever routed to it.
        """
        self._next_stream += 1
        self._open[self._next_stream] = 0
        if unrelated:
            self._attached.add(self._next_stream)
        return self._next_stream

    def detach(self, stream: StreamKey) -> None:
        """The HTTP response carrying ``stream`` went away; its requests go on."""
        if stream == GET:
            self._get_attached = False
        else:
            self._attached.discard(stream)

    def attach(self, stream: int) -> None:
        """A POST-reply stream is attached again (resumed with Last-Event-ID)."""
        if stream in self._open:
            self._attached.add(stream)

    def close_stream(self, stream: int) -> None:
        """Forget a POST-reply stream that owes no response (a finished resume)."""
        if not self._open.get(stream):
            self._open.pop(stream, None)
            self._attached.discard(stream)

    def attach_get(self) -> bool:
        """Attach the standalone stream; False if one is already attached (409)."""
        if self._get_attached:
            return False
        self._get_attached = True
        return True

    def in_flight(self) -> int:
        return len(self._pending)

    def is_pending(self, up_id: int) -> bool:
        return up_id in self._pending

    # -- client -> upstream ------------------------------------------------

    def client_request(self, message: Message, stream: int) -> Message:
        """Register a client request on ``stream``; return the copy to send upstream."""
        self._next_up += 1
        up_id = self._next_up
        token = jsonrpc.progress_token(message)
        self._pending[up_id] = _Pending(message["id"], stream, message["method"], token)
        self._up_id_by_client_id[message["id"]] = up_id
        self._open[stream] = self._open.get(stream, 0) + 1
        if token is not None:
            self._stream_by_token[token] = stream
        return jsonrpc.with_id(message, up_id)

    def internal_request(self, method: str, params: dict[str, Any] | None) -> Message:
        """A request of the gateway's own; its answer comes on :data:`INTERNAL`.

        The answer keeps the upstream id this returns (no client id to restore).
        """
        self._next_up += 1
        up_id = self._next_up
        self._pending[up_id] = _Pending(up_id, INTERNAL, method, None)
        self._open[INTERNAL] = self._open.get(INTERNAL, 0) + 1
        message: Message = {"jsonrpc": "2.0", "id": up_id, "method": method}
        if params is not None:
            message["params"] = params
        return message

    def client_response(self, message: Message) -> Message | None:
        """A client's answer to a server->client request, with the upstream's id."""
        up_id = self._server_requests.pop(message["id"], None)
        return None if up_id is None else jsonrpc.with_id(message, up_id)

    def client_notification(self, message: Message) -> tuple[Message | None, list[Delivery]]:
        """Rewrite a client notification for upstream; None drops it.

        A cancel also ends the request's downstream stream (the client asked
        for no answer; spec utilities/cancellation).
        """
        if message.get("method") != CANCELLED:
            return message, []
        params = jsonrpc.params(message)
        request_id = params.get("requestId")
        if not jsonrpc.is_request_id(request_id):  # unhashable, or a bool that equals 1
            return None, []
        up_id = self._up_id_by_client_id.get(request_id)  # type: ignore[arg-type]
        if up_id is None:
            return None, []
        pending = self._pending[up_id]
        if pending.method == "initialize":  # MUST NOT be cancelled (lifecycle)
            return None, []
        delivery = self._complete(up_id)
        forwarded = {**message, "params": {**params, "requestId": up_id}}
        return forwarded, [Delivery(delivery.stream, None, delivery.final)]

    # -- upstream -> client ------------------------------------------------

    def upstream_message(self, message: Message, kind: jsonrpc.Kind) -> Delivery | None:
        """Where an upstream message goes, rewritten; None drops it.

        Dropped: a late response, and a cancel for a request we never sent down.
        """
        if kind is jsonrpc.Kind.RESPONSE:
            return self._upstream_response(message)
        if kind is jsonrpc.Kind.REQUEST:
            self._next_down += 1
            self._server_requests[self._next_down] = message["id"]
            return Delivery(self._unrelated_stream(), jsonrpc.with_id(message, self._next_down))
        rewritten = self._rewrite_cancel(message)
        if rewritten is None:
            return None
        return Delivery(self._notification_stream(message), rewritten)

    def fail(self, up_id: int, code: int, text: str) -> Delivery:
        """An error response for one pending request (e.g. it could not be sent)."""
        client_id = self._pending[up_id].client_id
        done = self._complete(up_id)
        error = jsonrpc.error_response(client_id, code, text)
        return Delivery(done.stream, error, done.final, done.answers)

    def fail_all(self, code: int, text: str) -> list[Delivery]:
        """An error response for every pending request (upstream lost or session ended)."""
        self._server_requests.clear()
        return [self.fail(up_id, code, text) for up_id in list(self._pending)]

    # -- internals ---------------------------------------------------------

    def _upstream_response(self, message: Message) -> Delivery | None:
        up_id = message.get("id")
        if not isinstance(up_id, int) or up_id not in self._pending:
            return None
        client_id = self._pending[up_id].client_id
        done = self._complete(up_id)
        restored = jsonrpc.with_id(message, client_id)
        return Delivery(done.stream, restored, done.final, done.answers, up_id)

    def _complete(self, up_id: int) -> Delivery:
        """Forget a pending request; say whether its stream is now final."""
        pending = self._pending.pop(up_id)
        self._up_id_by_client_id.pop(pending.client_id, None)
        if pending.progress_token is not None:
            self._stream_by_token.pop(pending.progress_token, None)
        owed = self._open[pending.stream] - 1
        final = owed == 0
        if final:
            del self._open[pending.stream]
            self._attached.discard(pending.stream)
        else:
            self._open[pending.stream] = owed
        return Delivery(pending.stream, None, final, pending.method)

    def _notification_stream(self, message: Message) -> StreamKey:
        if message.get("method") == PROGRESS:
            token = jsonrpc.params(message).get("progressToken")
            if jsonrpc.is_request_id(token):  # unhashable, or a bool that equals 1
                stream = self._stream_by_token.get(token)  # type: ignore[arg-type]
                if stream is not None:
                    return stream
        return self._unrelated_stream()

    def _unrelated_stream(self) -> StreamKey:
        live = [s for s in self._attached if self._open.get(s)]
        if len(live) == 1:
            return live[0]
        if self._get_attached or not live:
            return GET
        return max(live)

    def _rewrite_cancel(self, message: Message) -> Message | None:
        """A cancel with our downstream id; None for an id we do not know (rule 3)."""
        if message.get("method") != CANCELLED:
            return message
        params = jsonrpc.params(message)
        up_id = params.get("requestId")
        if not jsonrpc.is_request_id(up_id):
            return None
        for down_id, known in self._server_requests.items():
            if known == up_id:
                return {**message, "params": {**params, "requestId": down_id}}
        return None
