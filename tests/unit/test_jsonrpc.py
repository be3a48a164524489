"""bridge.jsonrpc: the JSON-RPC envelope contract (spec-notes §4.4, §3 stdio framing).

- :func:`kind` classifies requests, notifications and responses and raises
  :class:`InvalidRequest` for anything else: ids are strings or integers,
  never bool and never null on a request; a response has exactly one of
  ``result`` and ``error``.
- :func:`decode` raises :class:`ParseError` for bytes that are not UTF-8 JSON.
- :func:`encode` emits one line: no raw newline, whatever the payload holds.
- :func:`with_id` copies; the gateway never mutates a message it did not create.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bridge import errors, jsonrpc
from bridge.errors import InvalidRequest, ParseError
from bridge.jsonrpc import Kind, Message

# -- kind ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, Kind.REQUEST),
        ({"jsonrpc": "2.0", "id": "a-1", "method": "tools/list", "params": {}}, Kind.REQUEST),
        ({"jsonrpc": "2.0", "id": 0, "method": "x", "params": [1, 2]}, Kind.REQUEST),
        ({"jsonrpc": "2.0", "method": "notifications/initialized"}, Kind.NOTIFICATION),
        ({"jsonrpc": "2.0", "method": "n", "params": {"a": 1}}, Kind.NOTIFICATION),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, Kind.RESPONSE),
        ({"jsonrpc": "2.0", "id": "x", "result": None}, Kind.RESPONSE),
        ({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "no"}}, Kind.RESPONSE),
        # An error for a request that could not be read carries id null.
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}, Kind.RESPONSE),
    ],
)
def test_kind_classifies_valid_messages(message: Message, expected: Kind) -> None:
    assert jsonrpc.kind(message) is expected


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": 2.0, "id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"'),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, '"method" must be a string'),
        ({"jsonrpc": "2.0", "id": 1, "method": None}, '"method" must be a string'),
        ({"jsonrpc": "2.0", "id": 1, "method": "m", "params": "x"}, '"params"'),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, "request"),
        ({"jsonrpc": "2.0", "id": False, "method": "ping"}, "request"),
        ({"jsonrpc": "2.0", "id": None, "method": "ping"}, "request"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, "request"),
        ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, "request"),
        ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "m"}}, "one"),
        ({"jsonrpc": "2.0", "id": 1, "error": "boom"}, '"error" must be an object'),
        ({"jsonrpc": "2.0", "id": True, "result": {}}, "response"),
        ({"jsonrpc": "2.0", "id": {}, "result": {}}, "response"),
        ({"jsonrpc": "2.0", "result": {}}, "response"),
        ({"jsonrpc": "2.0", "id": 1}, 'no "method", "result" or "error"'),
        ({"jsonrpc": "2.0"}, 'no "method", "result" or "error"'),
    ],
)
def test_kind_rejects_invalid_envelopes(message: Message, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason) as info:
        jsonrpc.kind(message)
    assert info.value.http_status == 400
    assert info.value.jsonrpc_code == errors.INVALID_REQUEST


@pytest.mark.parametrize("value", [1, 0, -3, 2**63, "", "abc"])
def test_is_request_id_accepts_strings_and_integers(value: object) -> None:
    assert jsonrpc.is_request_id(value)


@pytest.mark.parametrize("value", [True, False, None, 1.0, [1], {"id": 1}])
def test_is_request_id_rejects_everything_else(value: object) -> None:
    assert not jsonrpc.is_request_id(value)


def test_parse_message_rejects_non_objects() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        jsonrpc.parse_message([{"jsonrpc": "2.0", "method": "m"}])
    message = {"jsonrpc": "2.0", "method": "m"}
    assert jsonrpc.parse_message(message) == (message, Kind.NOTIFICATION)


# -- decode / encode ---------------------------------------------------------


def test_decode_reads_utf8_json() -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": "é"}, ensure_ascii=False).encode()
    assert jsonrpc.decode(body) == {"jsonrpc": "2.0", "method": "é"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc": "2.0", "method": "\xff"}',  # not UTF-8
        b'{"jsonrpc": "2.0", "method": "\xc3"}',  # truncated UTF-8 sequence
        b'{"jsonrpc": "2.0",',
        b"",
        b"not json",
        b'{"a": 1} trailing',
    ],
)
def test_decode_raises_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError) as info:
        jsonrpc.decode(body)
    assert info.value.jsonrpc_code == errors.PARSE_ERROR
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    "text", ["line\nbreak", "cr\rlf\r\n", "\n", "tab\tand\u2028separator", "naïve ✓"]
)
def test_encode_is_one_line_and_round_trips(text: str) -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {"text": text, "list": [text]}}
    line = jsonrpc.encode(message)
    assert "\n" not in line
    assert "\r" not in line
    assert json.loads(line) == message


def test_encode_batch_is_one_line() -> None:
    batch = [jsonrpc.notification("a", {"x": "1\n2"}), jsonrpc.notification("b")]
    line = jsonrpc.encode(batch)
    assert "\n" not in line
    assert json.loads(line) == batch


# -- builders and accessors ------------------------------------------------


def test_with_id_copies_and_leaves_the_original_alone() -> None:
    original: Message = {"jsonrpc": "2.0", "id": "client-1", "method": "m", "params": {"a": 1}}
    snapshot = copy.deepcopy(original)
    rewritten = jsonrpc.with_id(original, 42)
    assert rewritten == {**snapshot, "id": 42}
    assert rewritten is not original
    assert original == snapshot


def test_with_id_adds_an_id_to_a_message_without_one() -> None:
    original: Message = {"jsonrpc": "2.0", "method": "m"}
    assert jsonrpc.with_id(original, "x") == {"jsonrpc": "2.0", "method": "m", "id": "x"}
    assert "id" not in original


@pytest.mark.parametrize(
    ("params", "token"),
    [
        ({"_meta": {"progressToken": "tok"}}, "tok"),
        ({"_meta": {"progressToken": 0}}, 0),
        ({"_meta": {"progressToken": True}}, None),
        ({"_meta": {"progressToken": None}}, None),
        ({"_meta": {"progressToken": 1.5}}, None),
        ({"_meta": {"other": 1}}, None),
        ({"_meta": "tok"}, None),
        ({}, None),
        ([1, 2], None),
        (None, None),
    ],
)
def test_progress_token(params: Any, token: object) -> None:
    message: Message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    if params is not None:
        message["params"] = params
    assert jsonrpc.progress_token(message) == token
    assert type(jsonrpc.progress_token(message)) is type(token)


def test_error_response_shape() -> None:
    response = jsonrpc.error_response("r-1", -32601, "no such method")
    assert response == {
        "jsonrpc": "2.0",
        "id": "r-1",
        "error": {"code": -32601, "message": "no such method"},
    }
    assert jsonrpc.kind(response) is Kind.RESPONSE


def test_error_response_for_an_unreadable_request_has_id_null() -> None:
    response = jsonrpc.error_response(None, errors.PARSE_ERROR, "bad")
    assert "id" in response
    assert response["id"] is None
    assert jsonrpc.kind(response) is Kind.RESPONSE


def test_notification_builder() -> None:
    assert jsonrpc.notification("n") == {"jsonrpc": "2.0", "method": "n"}
    built = jsonrpc.notification("n", {"a": 1})
    assert built == {"jsonrpc": "2.0", "method": "n", "params": {"a": 1}}
    assert jsonrpc.kind(built) is Kind.NOTIFICATION


def test_method_and_params_accessors_tolerate_odd_shapes() -> None:
    assert jsonrpc.method({"method": "m"}) == "m"
    assert jsonrpc.method({"method": 3}) is None
    assert jsonrpc.method({}) is None
    assert jsonrpc.params({"params": {"a": 1}}) == {"a": 1}
    assert jsonrpc.params({"params": [1]}) == {}
    assert jsonrpc.params({}) == {}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"method": "tools/call", "params": {"name": "search"}}, "search"),
        ({"method": "tools/call", "params": {"name": 3}}, None),
        ({"method": "tools/call"}, None),
        ({"method": "resources/read", "params": {"uri": "HTTPS://h/x?token=s3cret"}}, "https"),
        ({"method": "resources/read", "params": {"uri": "file:///etc/hosts"}}, "file"),
        ({"method": "resources/read", "params": {"uri": "no-scheme-here"}}, "none"),
        ({"method": "resources/read", "params": {"uri": "x" * 500 + ":y"}}, "none"),
        ({"method": "tools/list"}, None),
    ],
)
def test_target_is_the_tool_or_the_uri_scheme(
    message: dict[str, Any], expected: str | None
) -> None:
    assert jsonrpc.target({"jsonrpc": "2.0", "id": 1, **message}) == expected
