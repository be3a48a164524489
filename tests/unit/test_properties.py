"""Property tests of the sans-IO parsers under hostile input (issue #5 "Bad input").

bridge.jsonrpc (spec-notes §4.4; RFC 8259, RFC 7493):

- :func:`decode` of any bytes returns a value or raises ParseError, nothing
  else; what it returns encodes to one line of valid UTF-8 that decodes to an
  equal value, is no deeper than ``MAX_DEPTH`` and holds no NaN, infinity or
  unpaired surrogate;
- :func:`encode` of any JSON value, lone surrogates included, is one line
  that UTF-8 can carry and that reads back equal;
- :func:`parse_message` of any JSON value returns or raises InvalidRequest,
  and what it classifies is sound: a request has a string method and a
  string or integer id, a response is never classified as a request, ids of
  any other type are refused.

bridge.sse.Decoder (WHATWG HTML §9.2.6): any bytes in any chunking give the
same events, last event id, reconnection time and size error as a reference
parser written straight from the WHATWG text over the whole stream; events
written with CRLF, LF or CR line ends, a BOM, comments, multi-line data and
``id``/``retry``/``event`` fields decode back to themselves.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import jsonrpc
from bridge.errors import InvalidRequest, ParseError, UpstreamProtocolError
from bridge.jsonrpc import MAX_DEPTH, Kind
from bridge.sse import BOM, Decoder, Event

# Bounded, deterministic and without an example database in the repository:
# the whole file runs in a few seconds and fails the same way every time.
BOUNDED = settings(max_examples=200, deadline=None, derandomize=True, database=None)

# -- strategies: JSON values ---------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=12)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=6), children, max_size=4
    )


json_values = st.recursive(scalars, containers, max_leaves=10)
# Cheaper, one level deep: for envelope fields, whose contents kind() never reads.
flat_values = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.text(max_size=4), scalars, max_size=3)
)
# Any Python str, unpaired surrogates included (what an upstream's JSON may hold).
any_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=12)
any_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_floats | any_text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=4),
    max_leaves=10,
)

# Fragments that JSON parsers trip over, joined at random into candidate bodies.
FRAGMENTS = [
    "{", "}", "[", "]", ",", ":", '"', " ", "\t", "\n", "0", "-", "1", "9" * 40, ".", "e", "E+",
    "1e999", "-1e400", "NaN", "Infinity", "-Infinity", "true", "false", "null", "\\", "\\u",
    '"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"\\\\ud800"', '"\\u0000"', "\ufeff", "é",
    '"jsonrpc"', '"2.0"', '"id"', '"method"', '"params"', '"result"', '"error"', "[" * 200,
]  # fmt: skip
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)
hostile_bytes = (
    st.binary(max_size=120)
    | fragment_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
    | fragment_text.map(lambda t: t.encode("utf-16"))
    | st.builds(lambda n, m: b"[" * n + b"]" * m, st.integers(0, 3000), st.integers(0, 3000))
    | json_values.map(lambda v: json.dumps(v).encode())
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def scalars_of(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in scalars_of(v))]
    if isinstance(value, list):
        return [s for v in value for s in scalars_of(v)]
    return [value]


def nested(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"[]" + b"}" * (levels - 1)


# -- jsonrpc.decode / encode ---------------------------------------------------


@BOUNDED
@given(hostile_bytes)
def test_decode_returns_a_faithful_value_or_raises_parse_error(body: bytes) -> None:
    try:
        value = jsonrpc.decode(body)
    except ParseError:
        return
    line = jsonrpc.encode(value)
    assert "\n" not in line
    assert "\r" not in line
    assert jsonrpc.decode(line.encode("utf-8")) == value  # UTF-8 can carry it; it reads back
    assert depth(value) <= MAX_DEPTH
    for scalar in scalars_of(value):
        assert not (isinstance(scalar, float) and not math.isfinite(scalar))
        assert not (isinstance(scalar, str) and re.search("[\ud800-\udfff]", scalar))


@BOUNDED
@given(json_values)
def test_encode_then_decode_round_trips(value: Any) -> None:
    line = jsonrpc.encode(value)
    assert "\n" not in line
    assert jsonrpc.decode(line.encode("utf-8")) == value
    assert jsonrpc.decode(BOM + line.encode("utf-8")) == value  # RFC 8259 §8.1: MAY ignore


@BOUNDED
@given(any_values)
def test_encode_is_one_utf8_line_for_any_value(value: Any) -> None:
    line = jsonrpc.encode(value)
    assert "\n" not in line
    assert "\r" not in line
    line.encode("utf-8")  # never UnicodeEncodeError, even for a lone surrogate
    # The same value JSON text can carry: what the stdlib's ASCII encoding
    # says (two surrogates in a row read back as one character).
    assert json.loads(line) == json.loads(json.dumps(value))


@BOUNDED
@given(
    st.text(max_size=4),
    st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]),
    st.text(max_size=4),
)
def test_decode_refuses_unpaired_surrogates(before: str, surrogate: str, after: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": before + surrogate + after}).encode()
    with pytest.raises(ParseError, match="surrogate"):
        jsonrpc.decode(body)
    as_key = json.dumps({before + surrogate + after: 1}).encode()
    with pytest.raises(ParseError, match="surrogate"):
        jsonrpc.decode(as_key)


@BOUNDED
@given(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" + "0" * 4400]))
def test_decode_refuses_numbers_json_cannot_carry(number: str) -> None:
    with pytest.raises(ParseError):
        jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"result":{"n":' + number.encode() + b"}}")


@BOUNDED
@given(st.integers(1, MAX_DEPTH), st.integers(MAX_DEPTH + 1, 5000))
def test_decode_nesting_bound(shallow: int, deep: int) -> None:
    assert depth(jsonrpc.decode(nested(shallow))) == shallow
    with pytest.raises(ParseError, match="nested deeper"):
        jsonrpc.decode(nested(deep))
    with pytest.raises(ParseError):
        jsonrpc.decode(b"[" * deep + b"]" * deep)


# -- jsonrpc.parse_message / kind ------------------------------------------------

valid_ids = st.integers() | st.text(max_size=8)
# Never an id, and never null either (null is only for an error's id).
wrong_ids = (
    st.booleans()
    | finite_floats
    | st.lists(scalars, max_size=2)
    | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
)
forbidden_ids = wrong_ids | st.none()
params = st.dictionaries(st.text(max_size=6), flat_values, max_size=3)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", "2", 2.0, None]) | flat_values,
        "id": valid_ids | forbidden_ids,
        "method": st.text(max_size=8) | flat_values,
        "params": flat_values,
        "result": flat_values,
        "error": flat_values,
        "other": flat_values,
    },
)


def is_valid_id(value: object) -> bool:
    return type(value) in (int, str)


@BOUNDED
@given(envelopes | flat_values)
def test_classification_is_sound(obj: Any) -> None:
    try:
        message, kind = jsonrpc.parse_message(obj)
    except InvalidRequest:
        return
    assert message is obj
    assert message["jsonrpc"] == "2.0"
    if kind is Kind.RESPONSE:
        assert "method" not in message
        assert ("result" in message) != ("error" in message)
        assert is_valid_id(message["id"]) or (message["id"] is None and "error" in message)
        assert "result" in message or isinstance(message["error"], dict)
        return
    assert isinstance(message["method"], str)
    assert "result" not in message
    assert "error" not in message
    assert message.get("params") is None or isinstance(message["params"], dict | list)
    if kind is Kind.REQUEST:
        assert is_valid_id(message["id"])
    else:
        assert kind is Kind.NOTIFICATION
        assert "id" not in message


requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "id": valid_ids, "method": st.text(max_size=12)},
    optional={"params": params},
)
notifications = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.text(max_size=12)}, optional={"params": params}
)
errors_ = st.fixed_dictionaries({"code": st.integers(), "message": st.text(max_size=8)})
responses = st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": valid_ids, "result": flat_values}) | st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": valid_ids | st.none(), "error": errors_})  # fmt: skip


@BOUNDED
@given(
    st.one_of(
        requests.map(lambda m: (m, Kind.REQUEST)),
        notifications.map(lambda m: (m, Kind.NOTIFICATION)),
        responses.map(lambda m: (m, Kind.RESPONSE)),
    )
)
def test_messages_survive_the_wire_with_their_kind(case: tuple[dict[str, Any], Kind]) -> None:
    message, expected = case
    assert jsonrpc.parse_message(jsonrpc.decode(jsonrpc.encode(message).encode())) == (
        message,
        expected,
    )


@BOUNDED
@given(responses, st.text(max_size=8))
def test_a_response_is_never_a_request(response: dict[str, Any], method: str) -> None:
    assert jsonrpc.kind(response) is Kind.RESPONSE
    with pytest.raises(InvalidRequest):
        jsonrpc.kind({**response, "method": method})


@BOUNDED
@given(requests, responses, wrong_ids)
def test_ids_of_forbidden_types_are_refused(
    request: dict[str, Any], response: dict[str, Any], bad_id: Any
) -> None:
    assert not jsonrpc.is_request_id(bad_id)
    with pytest.raises(InvalidRequest, match="id"):
        jsonrpc.kind({**request, "id": bad_id})
    with pytest.raises(InvalidRequest, match="id"):
        jsonrpc.kind({**response, "id": bad_id})
    with pytest.raises(InvalidRequest, match="id"):
        jsonrpc.kind({**request, "id": None})  # a request never has a null id
    with pytest.raises(InvalidRequest, match="id"):
        jsonrpc.kind({"jsonrpc": "2.0", "id": None, "result": {}})  # only errors may


@BOUNDED
@given(flat_values | valid_ids)
def test_is_request_id_means_string_or_integer(value: Any) -> None:
    assert jsonrpc.is_request_id(value) == is_valid_id(value)


@BOUNDED
@given(requests, valid_ids)
def test_with_id_copies(request: dict[str, Any], new_id: jsonrpc.RequestId) -> None:
    before = json.dumps(request)
    rewritten = jsonrpc.with_id(request, new_id)
    assert json.dumps(request) == before
    assert rewritten == {**request, "id": new_id}
    assert jsonrpc.kind(rewritten) is Kind.REQUEST


# -- sse: a reference parser straight from the WHATWG text -----------------------

LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass
class Outcome:
    events: list[Event]
    error: bool
    last_event_id: str | None
    reconnection_ms: int | None


def reference(stream: bytes, limit: int) -> Outcome:
    """The whole stream at once: WHATWG HTML §9.2.6, with the decoder's size bound.

    Splitting bytes before decoding equals decoding before splitting: CR and
    LF are ASCII and end every invalid UTF-8 sequence.
    """
    *lines, tail = LINE_END.split(stream.removeprefix(BOM))
    data_buffer, type_buffer, id_buffer = "", "", None
    last_id: str | None = None
    retry_in_block: int | None = None
    reconnection: int | None = None
    held = 0
    events: list[Event] = []
    for raw in lines:
        if not raw:  # dispatch
            last_id = id_buffer
            if data_buffer:
                data = data_buffer.removesuffix("\n")
                events.append(Event(type_buffer or "message", data, id_buffer, retry_in_block))
            data_buffer, type_buffer, retry_in_block, held = "", "", None, 0
            continue
        held += len(raw)
        if held > limit:
            return Outcome(events, True, last_id, reconnection)
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            value = value[1:] if value.startswith(" ") else value
        else:
            name, value = line, ""
        if name == "event":
            type_buffer = value
        elif name == "data":
            data_buffer += value + "\n"
        elif name == "id" and "\x00" not in value:
            id_buffer = value
        elif name == "retry" and re.fullmatch("[0-9]+", value):
            retry_in_block = reconnection = int(value)
    return Outcome(events, held + len(tail) > limit, last_id, reconnection)


def run_decoder(stream: bytes, cuts: list[int], limit: int) -> Outcome:
    decoder = Decoder(max_event_bytes=limit)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    events: list[Event] = []
    error = False
    try:
        for start, end in itertools.pairwise(bounds):
            events += decoder.feed(stream[start:end])
        events += decoder.feed(b"")  # a deferred size error shows here
    except UpstreamProtocolError:
        error = True
        with pytest.raises(UpstreamProtocolError):  # and it stays broken
            decoder.feed(b"data: x\n\n")
    return Outcome(events, error, decoder.last_event_id, decoder.reconnection_ms)


# Streams built line by line, so that fields, values and blank lines (which
# dispatch) are common, with bytes that break UTF-8 and pieces of a BOM.
VALUE_PIECES = [
    b"x", b"7", b"42", b" ", b":", b"-1", b"\x00", b"\xff", b"\xc3", b"\xa9", b"\xe2\x9c\x93",
    b"\xf0\x9f", b"\xd9\xa3", BOM, b"message", b"endpoint",
]  # fmt: skip
eols = st.sampled_from([b"\r\n", b"\n", b"\r"])
sse_lines = st.tuples(
    st.sampled_from(
        [b"data"] * 3 + [b"event", b"id", b"retry", b"", b"DATA", b"dat", BOM + b"data"]
    ),
    st.sampled_from([b":", b": ", b"", b"::", b":  "]),
    st.lists(st.sampled_from(VALUE_PIECES), max_size=4).map(b"".join),
    eols,
).map(b"".join)
sse_soup = st.tuples(
    st.sampled_from([BOM, b"", BOM[:1], BOM[:2], BOM + BOM]),
    st.lists(sse_lines | sse_lines | eols | st.sampled_from([b"\xef", b"\xbb\xbf"]), max_size=16),
).map(lambda t: t[0] + b"".join(t[1]))
cut_lists = st.lists(st.integers(0, 10_000), max_size=25)
BIG = 1 << 20


@settings(BOUNDED, max_examples=500)
@given(sse_soup | st.binary(max_size=200), cut_lists)
def test_sse_any_bytes_any_chunking_match_the_reference(stream: bytes, cuts: list[int]) -> None:
    assert run_decoder(stream, cuts, BIG) == reference(stream, BIG)


# Limits of at least 3: the decoder holds up to two bytes that may begin a BOM
# until it can tell, and a stream may end there.
@BOUNDED
@given(sse_soup, cut_lists, st.integers(3, 40))
def test_sse_size_bound_does_not_depend_on_chunking(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    assert run_decoder(stream, cuts, limit) == reference(stream, limit)


# -- sse: round trip of written events ------------------------------------------

line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10)


@dataclass(frozen=True)
class Block:
    """One event block as a server writes it."""

    event: str | None
    data: list[str]  # one data line each; empty: no data field (not dispatched)
    id: str | None
    retry: int | None
    comments: list[str]


blocks = st.builds(
    Block,
    event=st.none() | line_text,
    data=st.lists(line_text, max_size=3),
    id=st.none() | line_text.filter(lambda t: "\x00" not in t),
    retry=st.none() | st.integers(0, 10**9),
    comments=st.lists(line_text, max_size=2),
)


def write(blocks: list[Block], draw_eol: Any, draw_spaced: Any, bom: bool) -> bytes:
    out = [BOM] if bom else []

    def field(name: str, value: str) -> None:
        # "name:value" only when no space begins the value; one space is always dropped.
        sep = ": " if value.startswith(" ") or draw_spaced() else ":"
        out.append(f"{name}{sep}{value}".encode() + draw_eol())

    for block in blocks:
        for comment in block.comments:
            out.append(f":{comment}".encode() + draw_eol())
        if block.event is not None:
            field("event", block.event)
        if block.id is not None:
            field("id", block.id)
        for line in block.data:
            field("data", line)
        if block.retry is not None:
            field("retry", str(block.retry))
        out.append(draw_eol())
    return b"".join(out)


def expected(blocks: list[Block]) -> Outcome:
    events: list[Event] = []
    last_id: str | None = None
    reconnection: int | None = None
    for block in blocks:
        last_id = block.id if block.id is not None else last_id
        reconnection = block.retry if block.retry is not None else reconnection
        if block.data:
            event = block.event or "message"
            events.append(Event(event, "\n".join(block.data), last_id, block.retry))
    return Outcome(events, False, last_id, reconnection)


@BOUNDED
@given(st.lists(blocks, max_size=6), st.booleans(), cut_lists, st.data())
def test_sse_written_events_decode_back(
    written: list[Block], bom: bool, cuts: list[int], data: st.DataObject
) -> None:
    ends = st.sampled_from([b"\r\n", b"\n", b"\r"])
    previous = [b""]

    def eol() -> bytes:
        end = data.draw(ends)
        # A CR then an LF would be one CRLF: a writer mixing ends must avoid it.
        previous[0] = end = b"\r\n" if previous[0] == b"\r" and end == b"\n" else end
        return end

    stream = write(written, eol, lambda: data.draw(st.booleans()), bom)
    assert run_decoder(stream, cuts, BIG) == expected(written)
    assert reference(stream, BIG) == expected(written)


@BOUNDED
@given(st.lists(line_text, min_size=1, max_size=5), cut_lists)
def test_sse_multiline_data_keeps_its_lines(lines: list[str], cuts: list[int]) -> None:
    stream = "".join(f"data: {line}\r\n" for line in lines).encode() + b"\r\n"
    outcome = run_decoder(stream, cuts, BIG)
    assert [e.data for e in outcome.events] == ["\n".join(lines)]
