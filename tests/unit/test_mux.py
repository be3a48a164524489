"""bridge.pool.mux: id rewriting and attribution on a shared upstream session (issue #10)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from bridge import errors, jsonrpc
from bridge.jsonrpc import Kind
from bridge.pool.mux import RELAYED, Broadcast, Drop, Mux, Reply, ToLane, fits, may_call_back

A, B = "lane-a", "lane-b"
SAMPLING = frozenset({"sampling"})


def request(request_id: Any, method: str = "tools/call", token: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "t"}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def response(up_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": up_id, "result": {"ok": up_id}}


def inbound(mux: Mux, message: dict[str, Any], capable: frozenset[str] = SAMPLING) -> Any:
    return mux.inbound(message, jsonrpc.kind(message), lambda lane, cap: cap in capable)


def test_the_same_client_id_from_two_lanes_gets_two_upstream_ids_and_goes_back_right() -> None:
    mux = Mux(itertools.count(1))
    up_a = mux.request(A, request(1), exclusive=False)
    up_b = mux.request(B, request(1), exclusive=False)
    assert up_a["id"] != up_b["id"]
    assert inbound(mux, response(up_b["id"])) == ToLane(B, {**response(up_b["id"]), "id": 1})
    assert inbound(mux, response(up_a["id"])) == ToLane(A, {**response(up_a["id"]), "id": 1})
    assert inbound(mux, response(up_a["id"])) == Drop("late_response")
    assert mux.in_flight() == 0
    assert mux.busy == {}


def test_ids_are_unique_across_sessions_sharing_a_counter() -> None:
    ids = itertools.count(1)
    one, two = Mux(ids), Mux(ids)
    assert (
        one.request(A, request(1), exclusive=False)["id"]
        != two.request(A, request(1), exclusive=False)["id"]
    )


def test_progress_tokens_are_rewritten_and_restored_to_the_lane_that_asked() -> None:
    mux = Mux(itertools.count(1))
    sent_a = mux.request(A, request(1, token="tok"), exclusive=False)
    sent_b = mux.request(B, request(2, token="tok"), exclusive=False)
    token_a = sent_a["params"]["_meta"]["progressToken"]
    token_b = sent_b["params"]["_meta"]["progressToken"]
    assert token_a != token_b
    assert "tok" not in (token_a, token_b)
    progress = jsonrpc.notification(
        "notifications/progress", {"progressToken": token_b, "progress": 1}
    )
    routed = inbound(mux, progress)
    assert isinstance(routed, ToLane)
    assert routed.lane == B
    assert routed.message["params"]["progressToken"] == "tok"
    forged = jsonrpc.notification("notifications/progress", {"progressToken": "tok", "progress": 1})
    assert inbound(mux, forged) == Drop("unknown_progress_token")


@pytest.mark.parametrize(
    ("busy", "owner", "lane", "exclusive", "expected"),
    [
        ({}, None, A, True, True),
        ({A: 2}, None, A, True, True),
        ({B: 1}, None, A, True, False),  # another client in flight: not exclusively
        ({B: 1}, None, A, False, True),  # shared requests mix freely
        ({B: 1}, B, A, False, False),  # B holds it exclusively
        ({A: 1}, A, A, False, True),
    ],
)
def test_fits(
    busy: dict[str, int], owner: str | None, lane: str, exclusive: bool, expected: bool
) -> None:
    assert fits(busy, owner, lane, exclusive) is expected  # type: ignore[arg-type]


def test_only_clients_that_can_be_called_back_need_a_session_to_themselves() -> None:
    assert may_call_back("tools/call", SAMPLING)
    assert not may_call_back("tools/call", frozenset())
    assert not may_call_back("tools/list", SAMPLING)


def test_a_server_request_reaches_the_only_lane_in_flight_and_only_it_may_answer() -> None:
    mux = Mux(itertools.count(1))
    mux.request(A, request(1), exclusive=True)
    assert mux.owner == A
    routed = inbound(mux, {"jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage"})
    assert isinstance(routed, ToLane)
    assert routed.lane == A
    down = routed.message["id"]
    answer = {"jsonrpc": "2.0", "id": down, "result": {"text": "mine"}}
    assert mux.answer(B, answer) is None  # B was never asked
    assert mux.answer(A, answer) == {**answer, "id": "srv-1"}
    assert mux.answer(A, answer) is None  # once


def test_a_server_request_nobody_can_be_said_to_have_caused_gets_an_error_upstream() -> None:
    mux = Mux(itertools.count(1))
    mux.request(A, request(1), exclusive=False)
    mux.request(B, request(2), exclusive=False)
    ask = {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage"}
    routed = inbound(mux, ask)
    assert isinstance(routed, Reply)
    assert routed.message["id"] == 7
    assert routed.message["error"]["code"] == errors.METHOD_NOT_FOUND


@pytest.mark.parametrize("method", ["roots/list", "sampling/createMessage"])
def test_a_lane_without_the_capability_is_not_asked(method: str) -> None:
    mux = Mux(itertools.count(1))
    mux.request(A, request(1), exclusive=False)
    ask = {"jsonrpc": "2.0", "id": 7, "method": method}
    routed = inbound(mux, ask, capable=frozenset())
    assert isinstance(routed, Reply)
    assert "error" in routed.message


def test_roots_list_goes_only_to_a_lane_that_may_be_asked_it() -> None:
    """Rule 5: a session-era client's capabilities never include roots (RELAYED), so
    roots/list reaches only a 2026-07-28 lane, which answers for its one request."""
    assert "roots" not in RELAYED
    mux = Mux(itertools.count(1))
    mux.request(A, request(1), exclusive=True)
    ask = {"jsonrpc": "2.0", "id": 3, "method": "roots/list"}
    routed = inbound(mux, ask, frozenset({"sampling", "elicitation"}))
    assert isinstance(routed, Reply)
    assert routed.message["error"]["code"] == errors.METHOD_NOT_FOUND
    routed = inbound(mux, ask, frozenset({"roots"}))
    assert isinstance(routed, ToLane)
    assert routed.lane == A


def test_server_pings_are_answered_by_the_gateway() -> None:
    routed = inbound(Mux(itertools.count(1)), {"jsonrpc": "2.0", "id": 5, "method": "ping"})
    assert routed == Reply({"jsonrpc": "2.0", "id": 5, "result": {}})


def test_notifications_follow_attribution_or_are_dropped() -> None:
    mux = Mux(itertools.count(1))
    log = jsonrpc.notification("notifications/message", {"level": "info", "data": "x"})
    assert inbound(mux, log) == Drop("unattributed")
    mux.request(A, request(1), exclusive=False)
    assert inbound(mux, log) == ToLane(A, log)
    mux.request(B, request(2), exclusive=False)
    assert inbound(mux, log) == Drop("unattributed")
    changed = jsonrpc.notification("notifications/tools/list_changed")
    assert inbound(mux, changed) == Broadcast(changed)


def test_a_client_cancel_reaches_only_its_own_request() -> None:
    mux = Mux(itertools.count(1))
    up = mux.request(A, request(1), exclusive=False)
    cancel = jsonrpc.notification("notifications/cancelled", {"requestId": 1})
    assert mux.cancel(B, cancel) is None
    forwarded = mux.cancel(A, cancel)
    assert forwarded is not None
    assert forwarded["params"]["requestId"] == up["id"]
    assert mux.in_flight() == 0


def test_leaving_cancels_the_lanes_requests_upstream_and_forgets_them() -> None:
    mux = Mux(itertools.count(1))
    up = mux.request(A, request(1), exclusive=True)
    mux.request(B, request(1), exclusive=False)
    [cancel] = mux.leave(A)
    assert cancel["params"]["requestId"] == up["id"]
    assert mux.owner is None
    assert mux.busy == {B: 1}


def test_a_lost_session_answers_every_request_in_flight_with_an_error() -> None:
    mux = Mux(itertools.count(1))
    mux.request(A, request("a"), exclusive=False)
    mux.request(B, request("b"), exclusive=False)
    failed = mux.fail_all(errors.UPSTREAM_UNAVAILABLE, "gone")
    assert {(f.lane, f.message["id"]) for f in failed} == {(A, "a"), (B, "b")}
    assert all(f.message["error"]["code"] == errors.UPSTREAM_UNAVAILABLE for f in failed)
    assert mux.in_flight() == 0


def test_kinds_are_read_by_jsonrpc() -> None:
    assert jsonrpc.kind(response(1)) is Kind.RESPONSE
