"""bridge.routing.Router: id rewriting and stream choice, as playbooks.

Pins the rules in the module docstring (spec-notes §1.5-1.7, §4.6-4.8): fresh
gateway ids both ways and their restoration, exactly one stream per message,
progress by token, unrelated traffic to the single live request stream, else
the GET stream, else the newest request stream; cancels rewritten or dropped;
a stream is final once every request on it is answered.

The tests read like mitmproxy's ``Playbook`` (test/mitmproxy/proxy/tutils.py):
``>> event`` feeds the router, ``<< output`` states the next thing it must
emit, and ``<< NOTHING`` says it emitted nothing more. A :class:`Placeholder`
captures a value the router chooses (a fresh id, a stream key) the first time
it is compared, and ``p()`` reads it back in a later step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, assert_never

from bridge import errors, jsonrpc
from bridge.jsonrpc import Message
from bridge.routing import GET, Delivery, Router, StreamKey

T = TypeVar("T")


class Placeholder(Generic[T]):
    """Equal to the first value of exactly type ``T`` it meets; then only to that value."""

    def __init__(self, cls: type[T]) -> None:
        self._cls = cls
        self._bound: list[T] = []

    def __call__(self) -> T:
        assert self._bound, "placeholder read before a << step bound it"
        return self._bound[0]

    def __eq__(self, other: object) -> bool:
        if not self._bound:
            if type(other) is not self._cls:
                return False
            self._bound.append(other)  # narrowed to T by the type() check
            return True
        value = self._bound[0]
        return type(other) is type(value) and bool(other == value)

    __hash__ = None  # type: ignore[assignment]  # mutable equality

    def __repr__(self) -> str:
        return f"Placeholder({self._bound[0]!r})" if self._bound else "<unbound placeholder>"


# -- events fed in -------------------------------------------------------------


@dataclass(frozen=True)
class OpenStream:
    """A POST arrived: the session opens its reply stream."""


@dataclass(frozen=True)
class ClientRequest:
    message: Message
    stream: int


@dataclass(frozen=True)
class ClientResponse:
    message: Message


@dataclass(frozen=True)
class ClientNotification:
    message: Message


@dataclass(frozen=True)
class FromUpstream:
    message: Message


@dataclass(frozen=True)
class AttachGet:
    pass


@dataclass(frozen=True)
class Detach:
    stream: StreamKey


@dataclass(frozen=True)
class FailAll:
    code: int
    text: str


Event = (
    OpenStream
    | ClientRequest
    | ClientResponse
    | ClientNotification
    | FromUpstream
    | AttachGet
    | Detach
    | FailAll
)

# -- outputs expected ----------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    stream: object


@dataclass(frozen=True)
class ToUpstream:
    message: Message


@dataclass(frozen=True)
class GetAttached:
    ok: bool


@dataclass(frozen=True)
class Nothing:
    pass


NOTHING: Final = Nothing()
Output = Opened | ToUpstream | GetAttached | Delivery | Nothing


class Playbook:
    """Feeds events to one Router and checks its outputs in order, eagerly.

    Evaluation is left to right, so a placeholder bound by a ``<<`` step can
    be read in any later ``>>`` step of the same expression. Each ``>>``
    requires that every output of the previous event was checked; ``bool()``
    requires the same of the last one, so wrap a playbook in ``assert``.
    """

    def __init__(self) -> None:
        self.router = Router()
        self._outputs: deque[Output] = deque()

    def __rshift__(self, event: Event) -> Playbook:
        assert not self._outputs, f"unchecked outputs before {event!r}: {list(self._outputs)}"
        self._outputs.extend(self._handle(event))
        return self

    def __lshift__(self, expected: Output) -> Playbook:
        if isinstance(expected, Nothing):
            assert not self._outputs, f"expected nothing more, got {list(self._outputs)}"
            return self
        assert self._outputs, f"expected {expected!r}, but the router emitted nothing more"
        actual = self._outputs.popleft()
        assert actual == expected
        return self

    def __bool__(self) -> bool:
        assert not self._outputs, f"unchecked outputs: {list(self._outputs)}"
        return True

    def _handle(self, event: Event) -> list[Output]:
        router = self.router
        match event:
            case OpenStream():
                return [Opened(router.open_stream())]
            case ClientRequest(message, stream):
                return [ToUpstream(router.client_request(message, stream))]
            case ClientResponse(message):
                forwarded = router.client_response(message)
                return [] if forwarded is None else [ToUpstream(forwarded)]
            case ClientNotification(message):
                forwarded, deliveries = router.client_notification(message)
                # As Session.post_other does: close streams first, then send.
                tail: list[Output] = [] if forwarded is None else [ToUpstream(forwarded)]
                return [*deliveries, *tail]
            case FromUpstream(message):
                delivery = router.upstream_message(message, jsonrpc.kind(message))
                return [] if delivery is None else [delivery]
            case AttachGet():
                return [GetAttached(router.attach_get())]
            case Detach(stream):
                router.detach(stream)
                return []
            case FailAll(code, text):
                return list(router.fail_all(code, text))
            case _:
                assert_never(event)


# -- message builders ----------------------------------------------------------


def request(id_: object, method: str, token: object = None, **params: Any) -> Message:
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


def result(id_: object, **value: Any) -> Message:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


def notification(method: str, **params: Any) -> Message:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def cancelled(request_id: object, reason: str = "user abort") -> Message:
    return notification("notifications/cancelled", requestId=request_id, reason=reason)


def progress(token: object, value: int) -> Message:
    return notification("notifications/progress", progressToken=token, progress=value)


LOG = notification("notifications/message", level="info", data="hello")

# -- client requests and their responses ---------------------------------------


def test_request_gets_a_fresh_id_and_its_response_the_clients_id_back() -> None:
    s, up = Placeholder(int), Placeholder(int)
    original = request("abc", "tools/call", name="echo")
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(original, s())
        << ToUpstream(request(up, "tools/call", name="echo"))
        >> FromUpstream(result(up(), content=[]))
        << Delivery(s(), result("abc", content=[]), final=True, answers="tools/call")
    )
    assert original["id"] == "abc"  # the router copied, it did not mutate


def test_error_response_is_restored_too() -> None:
    s, up = Placeholder(int), Placeholder(int)
    error = jsonrpc.error_response
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request(9, "tools/call"), s())
        << ToUpstream(request(up, "tools/call"))
        >> FromUpstream(error(up(), -32602, "bad"))
        << Delivery(s(), error(9, -32602, "bad"), final=True, answers="tools/call")
    )


def test_equal_looking_client_ids_get_distinct_upstream_ids() -> None:
    s1, s2, up1, up2 = Placeholder(int), Placeholder(int), Placeholder(int), Placeholder(int)
    pb = (
        Playbook()
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request(1, "tools/list"), s1())
        << ToUpstream(request(up1, "tools/list"))
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request("1", "prompts/list"), s2())
        << ToUpstream(request(up2, "prompts/list"))
    )
    assert s1() != s2()
    assert up1() != up2()
    assert (
        pb
        >> FromUpstream(result(up2()))
        << Delivery(s2(), result("1"), final=True, answers="prompts/list")
        >> FromUpstream(result(up1()))
        << Delivery(s1(), result(1), final=True, answers="tools/list")
    )


def test_reused_client_id_gets_a_new_upstream_id_and_late_answers_are_dropped() -> None:
    s1, s2, up1, up2 = Placeholder(int), Placeholder(int), Placeholder(int), Placeholder(int)
    pb = (
        Playbook()
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request(1, "ping"), s1())
        << ToUpstream(request(up1, "ping"))
        >> FromUpstream(result(up1()))
        << Delivery(s1(), result(1), final=True, answers="ping")
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request(1, "ping"), s2())
        << ToUpstream(request(up2, "ping"))
    )
    assert up2() != up1()
    assert (
        pb
        >> FromUpstream(result(up1()))  # a duplicate of the first answer
        << NOTHING
        >> FromUpstream(result(up2()))
        << Delivery(s2(), result(1), final=True, answers="ping")
        >> FromUpstream(result(up2()))  # late: already completed
        << NOTHING
    )
    assert pb.router.in_flight() == 0


def test_response_with_an_id_never_issued_is_dropped() -> None:
    assert (
        Playbook()
        >> FromUpstream(result(1))
        << NOTHING
        >> FromUpstream(result("1"))
        << NOTHING
        >> FromUpstream(jsonrpc.error_response(None, -32700, "parse error"))
        << NOTHING
    )


def test_batch_on_one_stream_is_final_only_after_both_answers() -> None:
    s, up_a, up_b = Placeholder(int), Placeholder(int), Placeholder(int)
    pb = (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request("a", "tools/list"), s())
        << ToUpstream(request(up_a, "tools/list"))
        >> ClientRequest(request("b", "resources/list"), s())
        << ToUpstream(request(up_b, "resources/list"))
    )
    assert up_a() != up_b()
    assert (
        pb
        >> FromUpstream(result(up_b()))
        << Delivery(s(), result("b"), final=False, answers="resources/list")
        >> FromUpstream(result(up_a()))
        << Delivery(s(), result("a"), final=True, answers="tools/list")
    )


# -- progress --------------------------------------------------------------------


def test_progress_goes_to_the_stream_that_carried_its_token() -> None:
    s1, s2, s3 = Placeholder(int), Placeholder(int), Placeholder(int)
    up1 = Placeholder(int)
    assert (
        Playbook()
        >> AttachGet()
        << GetAttached(ok=True)
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request(1, "tools/call", token="tok"), s1())
        << ToUpstream(request(up1, "tools/call", token="tok"))
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request(2, "tools/call", token=5), s2())
        << ToUpstream(request(Placeholder(int), "tools/call", token=5))
        >> OpenStream()
        << Opened(s3)
        >> ClientRequest(request(3, "tools/call", token="5"), s3())
        << ToUpstream(request(Placeholder(int), "tools/call", token="5"))
        # Tokens are not rewritten; an int token and a string token differ.
        >> FromUpstream(progress("tok", 1))
        << Delivery(s1(), progress("tok", 1))
        >> FromUpstream(progress(5, 1))
        << Delivery(s2(), progress(5, 1))
        >> FromUpstream(progress("5", 1))
        << Delivery(s3(), progress("5", 1))
        # Still there after the client's connection for it dropped (rule 4).
        >> Detach(s1())
        >> FromUpstream(progress("tok", 2))
        << Delivery(s1(), progress("tok", 2))
        # Once its request is answered the token means nothing any more: the
        # notification is unrelated, and two request streams plus GET are live.
        >> FromUpstream(result(up1()))
        << Delivery(s1(), result(1), final=True, answers="tools/call")
        >> FromUpstream(progress("tok", 3))
        << Delivery(GET, progress("tok", 3))
    )


def test_progress_with_an_unknown_token_is_unrelated() -> None:
    s = Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request(1, "tools/call", token="tok"), s())
        << ToUpstream(request(Placeholder(int), "tools/call", token="tok"))
        >> FromUpstream(progress("other", 1))
        << Delivery(s(), progress("other", 1))  # the single live request stream
    )


def test_malformed_progress_token_from_upstream_is_unrelated_not_a_crash() -> None:
    for token in ([1], {"t": 1}, True, None):
        assert Playbook() >> FromUpstream(progress(token, 1)) << Delivery(GET, progress(token, 1))


def test_bool_progress_token_does_not_match_integer_token_1() -> None:
    s1, s2 = Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        >> AttachGet()
        << GetAttached(ok=True)
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request("a", "tools/call", token=1), s1())
        << ToUpstream(request(Placeholder(int), "tools/call", token=1))
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request("b", "tools/call"), s2())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> FromUpstream(progress(True, 1))
        << Delivery(GET, progress(True, 1))
    )


# -- unrelated traffic: notifications and server->client requests -------------


def test_unrelated_goes_to_the_only_live_request_stream_even_with_get_attached() -> None:
    s = Placeholder(int)
    assert (
        Playbook()
        >> AttachGet()
        << GetAttached(ok=True)
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request(1, "tools/call"), s())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> FromUpstream(LOG)
        << Delivery(s(), LOG)
    )


def test_unrelated_goes_to_get_when_several_request_streams_are_live() -> None:
    s1, s2 = Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request(1, "tools/call"), s1())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request(2, "tools/call"), s2())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> AttachGet()
        << GetAttached(ok=True)
        >> FromUpstream(LOG)
        << Delivery(GET, LOG)
    )


def test_unrelated_goes_to_the_newest_request_stream_without_get() -> None:
    s1, s2, s3 = Placeholder(int), Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request(1, "tools/call"), s1())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request(2, "tools/call"), s2())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> OpenStream()
        << Opened(s3)
        >> ClientRequest(request(3, "tools/call"), s3())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> FromUpstream(LOG)
        << Delivery(s3(), LOG)
        # A GET stream that came and went does not count.
        >> AttachGet()
        << GetAttached(ok=True)
        >> Detach(GET)
        >> FromUpstream(LOG)
        << Delivery(s3(), LOG)
    )


def test_unrelated_goes_to_get_when_no_request_stream_is_live() -> None:
    s1, s2, up1 = Placeholder(int), Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        # Nothing attached at all: queued for the GET stream.
        >> FromUpstream(LOG)
        << Delivery(GET, LOG)
        # A stream whose requests are all answered is not live.
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request(1, "ping"), s1())
        << ToUpstream(request(up1, "ping"))
        >> FromUpstream(result(up1()))
        << Delivery(s1(), result(1), final=True, answers="ping")
        >> FromUpstream(LOG)
        << Delivery(GET, LOG)
        # Nor is a detached one, though its request is still pending.
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request(2, "tools/call"), s2())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> Detach(s2())
        >> FromUpstream(LOG)
        << Delivery(GET, LOG)
    )


def test_server_requests_follow_the_same_rule() -> None:
    s1, s2 = Placeholder(int), Placeholder(int)
    down1, down2 = Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request(1, "tools/call"), s1())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> FromUpstream(request("srv-1", "sampling/createMessage"))
        << Delivery(s1(), request(down1, "sampling/createMessage"))
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request(2, "tools/call"), s2())
        << ToUpstream(request(Placeholder(int), "tools/call"))
        >> FromUpstream(request("srv-2", "roots/list"))
        << Delivery(s2(), request(down2, "roots/list"))
    )


def test_only_one_get_stream_at_a_time() -> None:
    assert (
        Playbook()
        >> AttachGet()
        << GetAttached(ok=True)
        >> AttachGet()
        << GetAttached(ok=False)
        >> Detach(GET)
        >> AttachGet()
        << GetAttached(ok=True)
    )


# -- server -> client requests ----------------------------------------------------


def test_server_request_gets_a_fresh_id_and_the_clients_answer_the_upstream_id() -> None:
    d1, d2 = Placeholder(int), Placeholder(int)
    pb = (
        Playbook()
        >> AttachGet()
        << GetAttached(ok=True)
        >> FromUpstream(request(1, "roots/list"))
        << Delivery(GET, request(d1, "roots/list"))
        >> FromUpstream(request("1", "ping"))
        << Delivery(GET, request(d2, "ping"))
    )
    assert d1() != d2()
    assert (
        pb
        >> ClientResponse(result(d2()))
        << ToUpstream(result("1"))
        >> ClientResponse(jsonrpc.error_response(d1(), -32601, "no roots"))
        << ToUpstream(jsonrpc.error_response(1, -32601, "no roots"))
        # Each answer is forwarded once; a repeat is dropped.
        >> ClientResponse(result(d1()))
        << NOTHING
    )


def test_client_response_with_an_unknown_id_is_dropped() -> None:
    d = Placeholder(int)
    assert (
        Playbook()
        >> FromUpstream(request("srv", "ping"))
        << Delivery(GET, request(d, "ping"))
        >> ClientResponse(result("srv"))  # the upstream's id, not the one we issued
        << NOTHING
        >> ClientResponse(result(d() + 1000))
        << NOTHING
        >> ClientResponse(jsonrpc.error_response(None, -32700, "parse error"))
        << NOTHING
        >> ClientResponse(result(d()))
        << ToUpstream(result("srv"))
    )


# -- cancellation -------------------------------------------------------------------


def test_client_cancel_is_rewritten_and_closes_the_stream() -> None:
    s, up = Placeholder(int), Placeholder(int)
    pb = (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request("c1", "tools/call", token="t"), s())
        << ToUpstream(request(up, "tools/call", token="t"))
        >> ClientNotification(cancelled("c1", reason="too slow"))
        << Delivery(s(), None, final=True)
        << ToUpstream(cancelled(up(), reason="too slow"))
    )
    assert pb.router.in_flight() == 0
    assert (
        pb
        # The upstream SHOULD NOT answer any more; if it does, it is dropped.
        >> FromUpstream(result(up()))
        << NOTHING
        # The token is forgotten: its progress is now unrelated traffic.
        >> FromUpstream(progress("t", 1))
        << Delivery(GET, progress("t", 1))
        # A second cancel for the same request knows nothing to cancel.
        >> ClientNotification(cancelled("c1"))
        << NOTHING
    )


def test_cancel_of_one_request_in_a_batch_keeps_the_stream_open() -> None:
    s, up_a = Placeholder(int), Placeholder(int)
    up_b = Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request("a", "tools/call"), s())
        << ToUpstream(request(up_a, "tools/call"))
        >> ClientRequest(request("b", "tools/call"), s())
        << ToUpstream(request(up_b, "tools/call"))
        >> ClientNotification(cancelled("a"))
        << Delivery(s(), None, final=False)
        << ToUpstream(cancelled(up_a()))
        >> FromUpstream(result(up_b()))
        << Delivery(s(), result("b"), final=True, answers="tools/call")
    )


def test_cancel_for_an_unknown_or_malformed_id_is_dropped() -> None:
    s, up = Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request(1, "tools/call"), s())
        << ToUpstream(request(up, "tools/call"))
        >> ClientNotification(cancelled("1"))
        << NOTHING
        >> ClientNotification(cancelled(2))
        << NOTHING
        >> ClientNotification(cancelled(True))  # a bool is no id, though True == 1
        << NOTHING
        >> ClientNotification(cancelled([1]))
        << NOTHING
        >> ClientNotification(notification("notifications/cancelled"))
        << NOTHING
        # The request is untouched by all that.
        >> FromUpstream(result(up()))
        << Delivery(s(), result(1), final=True, answers="tools/call")
    )


def test_cancel_of_initialize_is_dropped() -> None:
    s, up = Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request(0, "initialize", protocolVersion="2025-11-25"), s())
        << ToUpstream(request(up, "initialize", protocolVersion="2025-11-25"))
        >> ClientNotification(cancelled(0))
        << NOTHING
        >> FromUpstream(result(up(), protocolVersion="2025-11-25"))
        << Delivery(s(), result(0, protocolVersion="2025-11-25"), final=True, answers="initialize")
    )


def test_other_client_notifications_pass_through_unchanged() -> None:
    initialized = notification("notifications/initialized")
    roots = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
    assert (
        Playbook()
        >> ClientNotification(initialized)
        << ToUpstream(initialized)
        >> ClientNotification(roots)
        << ToUpstream(roots)
    )


def test_upstream_cancel_of_a_server_request_is_rewritten() -> None:
    d = Placeholder(int)
    assert (
        Playbook()
        >> AttachGet()
        << GetAttached(ok=True)
        >> FromUpstream(request("srv-7", "elicitation/create"))
        << Delivery(GET, request(d, "elicitation/create"))
        >> FromUpstream(cancelled("srv-7", reason="timeout"))
        << Delivery(GET, cancelled(d(), reason="timeout"))
    )


def test_upstream_cancel_for_an_unknown_id_is_dropped() -> None:
    # Forwarded unchanged it would carry an upstream id into the client's id
    # space, where it could name a different request (module rule 3).
    d = Placeholder(int)
    pb = Playbook() >> FromUpstream(request("srv", "ping")) << Delivery(GET, request(d, "ping"))
    assert (
        pb
        >> FromUpstream(cancelled(d()))  # our downstream id, unknown upstream
        << NOTHING
        >> FromUpstream(cancelled("other"))
        << NOTHING
        >> FromUpstream(cancelled(True))
        << NOTHING
    )


# -- failure ------------------------------------------------------------------------


def test_fail_all_answers_every_pending_request_and_forgets_them() -> None:
    s1, s2 = Placeholder(int), Placeholder(int)
    up_a, d = Placeholder(int), Placeholder(int)
    code = errors.UPSTREAM_UNAVAILABLE
    error = jsonrpc.error_response
    pb = (
        Playbook()
        >> AttachGet()
        << GetAttached(ok=True)
        >> OpenStream()
        << Opened(s1)
        >> ClientRequest(request("a", "tools/call"), s1())
        << ToUpstream(request(up_a, "tools/call"))
        >> ClientRequest(request("b", "tools/list"), s1())
        << ToUpstream(request(Placeholder(int), "tools/list"))
        >> OpenStream()
        << Opened(s2)
        >> ClientRequest(request(3, "initialize"), s2())
        << ToUpstream(request(Placeholder(int), "initialize"))
        >> FromUpstream(request("srv", "ping"))
        << Delivery(GET, request(d, "ping"))
        >> FailAll(code, "upstream gone")
        << Delivery(s1(), error("a", code, "upstream gone"), final=False, answers="tools/call")
        << Delivery(s1(), error("b", code, "upstream gone"), final=True, answers="tools/list")
        << Delivery(s2(), error(3, code, "upstream gone"), final=True, answers="initialize")
    )
    assert pb.router.in_flight() == 0
    assert (
        pb
        >> FailAll(code, "again")
        << NOTHING
        >> FromUpstream(result(up_a()))
        << NOTHING
        >> ClientResponse(result(d()))  # the server request died with its upstream
        << NOTHING
    )


def test_answers_names_the_method_of_the_answered_request() -> None:
    s, up_init, up_custom = Placeholder(int), Placeholder(int), Placeholder(int)
    assert (
        Playbook()
        >> OpenStream()
        << Opened(s)
        >> ClientRequest(request(1, "initialize"), s())
        << ToUpstream(request(up_init, "initialize"))
        >> ClientRequest(request(2, "vendor/custom"), s())
        << ToUpstream(request(up_custom, "vendor/custom"))
        >> FromUpstream(result(up_custom()))
        << Delivery(s(), result(2), final=False, answers="vendor/custom")
        >> FromUpstream(result(up_init()))
        << Delivery(s(), result(1), final=True, answers="initialize")
    )
