"""The hot path's codecs and plumbing (issue #13): orjson where it reads and writes as
the standard library did, the standard library where it would not; one encoding per
message; the event loop choice; batched log lines that keep every line, in order."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import sys
from typing import Any

import pytest

from bridge import jsonrpc
from bridge.errors import ConfigError, ParseError
from bridge.log import FIELD_MAX, FLUSH_CHARS, BatchedWriter, _json_line, bound_fields
from bridge.loop import loop_factory

BIG = 2**64  # one past what orjson reads as an integer
BODIES = [
    b'{"jsonrpc":"2.0","id":18446744073709551616,"method":"m"}',
    b'{"jsonrpc":"2.0","id":-9223372036854775809,"method":"m"}',
    b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"n":123456789012345678901234567890}}',
    b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"f":1e-7,"g":0.1,"h":-0.0,"i":1E5}}',
    b'{"jsonrpc":"2.0","id":"\\ud83d\\ude00","method":"\\u00e9\\n"}',
    b'\xef\xbb\xbf{"jsonrpc":"2.0","method":"bom"}',
    b'{"a":1,"a":2}',
]


@pytest.mark.parametrize("body", BODIES)
def test_decode_reads_what_the_standard_library_reads(body: bytes) -> None:
    value = jsonrpc.decode(body)
    assert value == json.loads(body.decode("utf-8-sig"))
    assert _types(value) == _types(json.loads(body.decode("utf-8-sig")))


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize(
    "body",
    [
        b'{"x": NaN}',
        b'{"x": 1e999}',
        b'{"x": "\\ud800"}',
        b"[" * 129 + b"]" * 129,
        b'{"x": "\x01"}',
    ],
)
def test_decode_refuses_what_it_refused(body: bytes) -> None:
    with pytest.raises(ParseError):
        jsonrpc.decode(body)


def test_decode_accepts_the_deepest_nesting_allowed() -> None:
    body = b"[" * jsonrpc.MAX_DEPTH + b"]" * jsonrpc.MAX_DEPTH
    assert jsonrpc.decode(body) is not None


@pytest.mark.parametrize("as_bytes", [False, True])
@pytest.mark.parametrize("number", [BIG, -(2**63) - 1, 10**40])
def test_big_integers_keep_every_digit_both_ways(number: int, as_bytes: bool) -> None:
    text = f'{{"jsonrpc":"2.0","id":1,"result":{{"\u00e9":"\u00e9t\u00e9","n":{number}}}}}'
    message = jsonrpc.loads_frame(text.encode() if as_bytes else text)
    assert message["result"]["n"] == number
    assert type(message["result"]["n"]) is int
    assert jsonrpc.encode_bytes(message) == text.encode()


@pytest.mark.parametrize(
    ("data", "long"),
    [
        (b"1" * 18, False),
        (b"1" * 19, True),
        (b'{"n":' + b"9" * 18 + b"}", False),
        (b'{"n":-' + b"9" * 19 + b"}", True),
        (b"123456789\xc3\xa90123456789", False),  # a non-ASCII byte breaks the run
        (b'"' + b"0" * 30 + b'"', True),  # in a string too: a harmless detour
        (b"", False),
    ],
)
def test_long_digit_runs_are_found_as_the_regex_found_them(data: bytes, long: bool) -> None:
    assert jsonrpc._long_digits(data) is long
    assert (re.search(rb"[0-9]{19}", data) is not None) is long


def test_nan_from_an_upstream_goes_on_as_it_came() -> None:
    message = jsonrpc.loads_frame('{"jsonrpc":"2.0","id":1,"result":{"x":NaN,"y":-Infinity}}')
    assert math.isnan(message["result"]["x"])
    assert jsonrpc.encode(message) == '{"jsonrpc":"2.0","id":1,"result":{"x":NaN,"y":-Infinity}}'


def test_encode_falls_back_for_lone_surrogates_and_non_str_keys() -> None:
    assert jsonrpc.encode({"s": "\ud800"}) == '{"s":"\\ud800"}'
    assert jsonrpc.encode({"k": {1: "x"}}) == '{"k":{"1":"x"}}'


def test_encode_writes_utf8_and_compact() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {"t": "naïve ✓ \u2028"}}
    assert (
        jsonrpc.encode_bytes(message)
        == json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert jsonrpc.size(message) == len(jsonrpc.encode_bytes(message))


def test_a_message_is_encoded_once_and_a_new_one_anew() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {"x": 1}}
    first = jsonrpc.encode_bytes(message)
    assert jsonrpc.encode_bytes(message) is first  # remembered
    copy = jsonrpc.with_id(message, 2)
    assert jsonrpc.encode_bytes(copy) == b'{"jsonrpc":"2.0","id":2,"result":{"x":1}}'


def test_large_encodings_are_not_remembered() -> None:
    message = {"text": "x" * (64 * 1024)}
    assert jsonrpc.encode_bytes(message) is not jsonrpc.encode_bytes(message)


def test_loop_choice() -> None:
    name, factory = loop_factory("auto")
    assert name == "uvloop"  # installed with the gateway (pyproject), on Linux
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    assert loop_factory("asyncio")[0] == "asyncio"


def test_uvloop_required_but_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # "import uvloop" now raises ImportError
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_factory("uvloop")
    assert loop_factory("auto")[0] == "asyncio"  # falls back without a word


async def test_info_lines_wait_a_little_and_keep_their_order() -> None:
    out = io.StringIO()
    writer = BatchedWriter(out)
    writer.info("one")
    writer.debug("two")
    assert out.getvalue() == ""  # batched
    writer.warning("three")  # written at once, after what waited
    assert out.getvalue() == "one\ntwo\nthree\n"
    flushed = asyncio.Event()
    out.flush = flushed.set  # type: ignore[method-assign]
    writer.info("four")
    async with asyncio.timeout(5):  # FLUSH_INTERVAL later, on the loop's timer
        await flushed.wait()
    assert out.getvalue().endswith("three\nfour\n")


async def test_many_waiting_lines_are_written_at_once() -> None:
    out = io.StringIO()
    writer = BatchedWriter(out)
    line = "x" * 1000
    for _ in range(FLUSH_CHARS // 1000 + 1):
        writer.info(line)
    assert out.getvalue().count("\n") == FLUSH_CHARS // 1000 + 1


def test_outside_a_loop_lines_are_written_at_once() -> None:
    out = io.StringIO()
    BatchedWriter(out).info("now")
    assert out.getvalue() == "now\n"


class _NotJson:
    def __repr__(self) -> str:
        return "<not json>"


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "request", "status": 200, "duration_ms": 1.23, "path": "/mcp", "tool": None},
        {"event": "x", "text": 'h\u00e9llo \u2713 "quoted"\n', "flag": True, "items": [1, "a"]},
        {"event": "x", "big": 2**70, 1: "a key that is not a string", "nan": math.nan},
        {"event": "x", "what": _NotJson(), "nested": {"more": [_NotJson()]}},
    ],
)
def test_a_json_line_is_what_json_dumps_wrote(fields: dict[Any, Any]) -> None:
    """The reused encoder changes nothing a log reader sees (issue #13: only its cost)."""
    assert _json_line(dict(fields)) == json.dumps(fields, default=repr)


def test_only_long_fields_are_cut() -> None:
    short_text, long_text = "a" * FIELD_MAX, "b" * (FIELD_MAX + 5)
    fields = {
        "n": 1,
        "f": 0.5,
        "none": None,
        "ok": short_text,
        "long": long_text,
        "list": [long_text],
    }
    out = bound_fields(None, "info", dict(fields))
    assert out["ok"] is short_text
    assert (out["n"], out["f"], out["none"]) == (1, 0.5, None)
    assert out["long"] == "b" * FIELD_MAX + "...(+5 chars)"
    assert out["list"] == ["b" * FIELD_MAX + "...(+5 chars)"]
