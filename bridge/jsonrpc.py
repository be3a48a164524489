"""JSON-RPC 2.0 envelopes, sans-IO: parse, classify, build, serialize.

Payloads (``params``, ``result``, ``error``) stay opaque dicts so that MCP
methods this gateway has never heard of pass through untouched; only the
envelope is checked (spec 2025-11-25 basic/index §Messages).

A message is kept as the decoded JSON object (``Message``, a ``dict``) and
classified by :func:`kind`. The gateway rewrites ids with :func:`with_id`,
which copies; it never mutates a message it did not create.

Contract (issue #5 "Bad input"): for any bytes, :func:`decode` returns a value
or raises :class:`ParseError`, and :func:`parse_message` / :func:`kind` return
or raise :class:`InvalidRequest`; any other exception is a bug. What
:func:`decode` accepts, :func:`encode` writes back as UTF-8-safe text that
decodes to an equal value. So :func:`decode` refuses what JSON text may spell
but the gateway could not pass on faithfully (RFC 8259, RFC 7493 I-JSON):

- ``NaN``, ``Infinity`` and numbers too large for a float (``1e999``);
- integers of more than 4300 digits (CPython's int/str conversion limit);
- strings holding an unpaired UTF-16 surrogate (``"\\ud800"``): no UTF-8
  text can carry one, and MCP SDKs' parsers refuse it (I-JSON §2.1);
- nesting deeper than :data:`MAX_DEPTH`;
- bytes that are not UTF-8 (RFC 8259 §8.1; one leading BOM is ignored).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from enum import Enum
from typing import Any, Final, NoReturn

import orjson

from bridge.errors import InvalidRequest, ParseError

Message = dict[str, Any]
RequestId = str | int

PROTOCOL_VERSION_2024_11_05: Final = "2024-11-05"
PROTOCOL_VERSION_2025_03_26: Final = "2025-03-26"
PROTOCOL_VERSION_2025_06_18: Final = "2025-06-18"
PROTOCOL_VERSION_2025_11_25: Final = "2025-11-25"
#: Revisions the front door serves, oldest first.
SUPPORTED_VERSIONS: Final = (
    PROTOCOL_VERSION_2024_11_05,
    PROTOCOL_VERSION_2025_03_26,
    PROTOCOL_VERSION_2025_06_18,
    PROTOCOL_VERSION_2025_11_25,
)
LATEST_VERSION: Final = SUPPORTED_VERSIONS[-1]
#: spec 2025-06-18 transports §Protocol Version Header: assume this when absent.
DEFAULT_HEADER_VERSION: Final = PROTOCOL_VERSION_2025_03_26
#: Deepest nesting of arrays and objects :func:`decode` accepts (the top level
#: is 1). serde_json's default limit; pydantic-core, which the Python SDK's
#: servers parse with, stops near 200, and a deeper request would only be
#: dropped upstream and leave its client waiting. It also keeps every later
#: ``json.dumps`` of a decoded message far from Python's recursion limit.
MAX_DEPTH: Final = 128
# An unpaired surrogate can only enter a decoded str through a \uD800-\uDFFF
# escape (strict UTF-8 decoding refuses raw ones), so bodies without such an
# escape skip the per-string check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM: Final = b"\xef\xbb\xbf"  # RFC 8259 §8.1: a parser MAY ignore one
#: 19 digits in a row: possibly an integer orjson would read as a float (beyond 64 bits).
#: Found by mapping every digit to "0" and every other byte to "x", then a substring
#: search: both in C, about 1 ns a byte, where ``re.search(rb"[0-9]{19}")`` took
#: about 25 (68 us for a 2.9 KB ``tools/list`` answer; issue #13).
_LONG_DIGITS: Final = b"0" * 19
_DIGITS_TO_ZERO: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x78 for byte in range(256))
#: Encodings remembered (:func:`encode_bytes`): at most this many, of at most
#: this many bytes each, so at most 2 MiB held.
_MEMO_SIZE: Final = 128
_MEMO_MAX_BYTES: Final = 16 * 1024
_encoded: dict[int, tuple[object, bytes]] = {}


class Kind(Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"  # result or error


def is_request_id(value: object) -> bool:
    """A JSON-RPC id as MCP allows it: a string or an integer, never bool or null."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def kind(message: Message) -> Kind:
    """Classify one decoded object (JSON-RPC 2.0 §4-5, spec-notes §4.4).

    - a request has a string ``method`` and an ``id`` that is a string or an
      integer (never bool, null or a float);
    - a notification has a string ``method`` and no ``id``;
    - a response has exactly one of ``result`` and ``error`` (an object), no
      ``method``, and a string or integer ``id``; only an error may carry
      ``id: null`` (the request it answers could not be read).

    ``params``, ``result`` and ``error`` contents stay opaque.

    Raises:
        InvalidRequest: anything else (400, -32600).
    """
    if message.get("jsonrpc") != "2.0":
        raise InvalidRequest('not a JSON-RPC 2.0 message: "jsonrpc" must be "2.0"')
    if "method" in message:
        if not isinstance(message["method"], str):
            raise InvalidRequest('"method" must be a string')
        if "result" in message or "error" in message:
            raise InvalidRequest('a message with "method" must not carry "result" or "error"')
        params = message.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise InvalidRequest('"params" must be an object')
        if "id" not in message:
            return Kind.NOTIFICATION
        if not is_request_id(message["id"]):
            raise InvalidRequest('request "id" must be a string or an integer')
        return Kind.REQUEST
    if "result" in message or "error" in message:
        if ("result" in message) == ("error" in message):
            raise InvalidRequest('a response has exactly one of "result" and "error"')
        if "error" in message and not isinstance(message["error"], dict):
            raise InvalidRequest('"error" must be an object')
        if "id" not in message or not (message["id"] is None or is_request_id(message["id"])):
            raise InvalidRequest('response "id" must be a string or an integer')
        if message["id"] is None and "result" in message:
            raise InvalidRequest('only an error response may have "id": null')
        return Kind.RESPONSE
    raise InvalidRequest('not a JSON-RPC message: no "method", "result" or "error"')


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def decode(body: bytes) -> Any:
    """Decode a body of UTF-8 JSON text into Python values (see the module docstring).

    orjson parses; the standard library parses what orjson refuses or would
    change (see :func:`_orjson_fits`), so both accept and refuse the same bodies.

    Raises:
        ParseError: not UTF-8, not JSON, or JSON the gateway refuses (400, -32700).
    """
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if _orjson_fits(body):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the standard library's error message (or its wider integers)
        else:
            # orjson refuses lone surrogates itself; only the depth is left to check.
            if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
                _check_tree(value, strings=False)
            return value
    return _decode_stdlib(body)


def _orjson_fits(body: bytes) -> bool:
    """Whether orjson reads ``body`` as the standard library does: it turns integers
    beyond 64 bits into floats, which a run of 19 or more digits may be."""
    return not _long_digits(body)


def _long_digits(data: bytes) -> bool:
    """Whether ``data`` holds a run of 19 or more ASCII digits."""
    return _LONG_DIGITS in data.translate(_DIGITS_TO_ZERO)


class _NonFinite(float):
    """NaN or an infinity an upstream sent (not JSON): orjson refuses to write a float
    subclass, so :func:`encode` writes it as the standard library does, as before."""


def loads_frame(text: str | bytes) -> Any:
    """An upstream frame's JSON, as leniently as ``json.loads`` reads it (NaN included).

    Raises:
        ValueError: not JSON (``UnicodeDecodeError`` among them).
        RecursionError: nested too deep for the standard library.
    """
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if not _long_digits(data):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text, parse_constant=_NonFinite)


def _decode_stdlib(body: bytes) -> Any:
    try:
        value = json.loads(
            body.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise ParseError(f"body is not valid JSON: nested deeper than {MAX_DEPTH}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParseError(f"body is not valid JSON: {exc}") from exc
    _check_tree(value, strings=_SURROGATE_ESCAPE.search(body) is not None)
    return value


def _check_tree(value: Any, *, strings: bool) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and, with ``strings``, lone surrogates.

    Recursive, and so about 4x faster than a walk with a stack of its own,
    yet never deeper than ``MAX_DEPTH`` calls: it refuses before it goes
    further. Decoded JSON holds exact dicts and lists, hence ``type() is``.
    """
    kind = type(value)
    if kind is dict or kind is list:
        _check_container(value, 1, strings)
    elif strings and kind is str and _SURROGATE.search(value):
        raise ParseError("body is not valid JSON: a string holds an unpaired surrogate")


def _check_container(item: dict[str, Any] | list[Any], depth: int, strings: bool) -> None:
    if depth > MAX_DEPTH:
        raise ParseError(f"body is not valid JSON: nested deeper than {MAX_DEPTH}")
    if isinstance(item, dict):
        if strings and any(_SURROGATE.search(key) for key in item):
            raise ParseError("body is not valid JSON: a string holds an unpaired surrogate")
        children: Iterable[Any] = item.values()
    else:
        children = item
    for child in children:
        kind = type(child)
        if kind is dict or kind is list:
            _check_container(child, depth + 1, strings)
        elif strings and kind is str and _SURROGATE.search(child):
            raise ParseError("body is not valid JSON: a string holds an unpaired surrogate")


def parse_message(obj: Any) -> tuple[Message, Kind]:
    """Check one decoded value is a JSON-RPC message; return it with its kind."""
    if not isinstance(obj, dict):
        raise InvalidRequest("a JSON-RPC message must be a JSON object")
    return obj, kind(obj)


def encode(message: Message | list[Message]) -> str:
    """Compact JSON on one line (spec 2025-11-25 transports §stdio) that UTF-8 can carry.

    Non-ASCII text is written as is, except that a str holding an unpaired
    surrogate (an upstream may send one; :func:`decode` refuses them) makes
    the whole message ASCII with ``\\u`` escapes, instead of text that
    ``str.encode()`` would fail on.

    Raises:
        ValueError: an integer of more than 4300 digits (never from :func:`decode`).
    """
    return encode_bytes(message).decode()


def size(message: Message) -> int:
    """Bytes of ``message`` encoded (what the byte budgets count)."""
    return len(encode_bytes(message))


def encode_bytes(message: Message | list[Message]) -> bytes:
    """:func:`encode` as UTF-8 bytes, what is written to a socket or a pipe.

    A message is encoded once however often it is asked for: it is sized
    for the byte budgets, stored, and sent, so the last few encodings of
    small messages are remembered by identity (holding the message, so its
    id cannot be reused meanwhile). That relies on this module's rule that a
    message is never changed once built (:func:`with_id` copies).

    orjson writes it; what orjson cannot write (integers beyond 64 bits,
    non-str keys, lone surrogates, a NaN an upstream sent: see
    :func:`bridge.upstreams.base.decode_frames`) the standard library does,
    as before. Floats are written in their shortest round-trip form (``1e-7``
    where ``json`` writes ``1e-07``): the same number.
    """
    key = id(message)
    known = _encoded.get(key)
    if known is not None and known[0] is message:
        return known[1]
    data = _encode(message)
    if len(data) <= _MEMO_MAX_BYTES:
        if len(_encoded) >= _MEMO_SIZE:
            del _encoded[next(iter(_encoded))]  # the oldest
        _encoded[key] = (message, data)
    return data


def _encode(message: Message | list[Message]) -> bytes:
    try:
        return orjson.dumps(message)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    if _SURROGATE.search(text):
        return json.dumps(message, separators=(",", ":")).encode()
    return text.encode()


def with_id(message: Message, new_id: RequestId) -> Message:
    """A copy of ``message`` carrying ``new_id``."""
    return {**message, "id": new_id}


def method(message: Message) -> str | None:
    value = message.get("method")
    return value if isinstance(value, str) else None


def params(message: Message) -> dict[str, Any]:
    value = message.get("params")
    return value if isinstance(value, dict) else {}


#: Characters of a URI scheme taken as one (RFC 3986 §3.1; longer ones are cut).
_SCHEME_MAX: Final = 32


def target(message: Message) -> str | None:
    """What a request acts on, for logs and metrics: the tool name of a
    ``tools/call``, the URI scheme of a ``resources/read`` (``file``,
    ``https``; never the rest of the URI, which may carry secrets), else None.

    Raw from the client: callers bound it (:func:`bridge.log.clip`,
    :meth:`bridge.metrics.Metrics.count_target`).
    """
    name = method(message)
    if name == "tools/call":
        tool = params(message).get("name")
        return tool if isinstance(tool, str) else None
    if name == "resources/read":
        uri = params(message).get("uri")
        if not isinstance(uri, str):
            return None
        scheme, colon, _ = uri[: _SCHEME_MAX + 1].partition(":")
        return scheme.lower() if colon and scheme else "none"
    return None


def progress_token(message: Message) -> RequestId | None:
    """``params._meta.progressToken`` of a request (spec utilities/progress)."""
    meta = params(message).get("_meta")
    if isinstance(meta, dict):
        token = meta.get("progressToken")
        if is_request_id(token):
            return token
    return None


def error_response(request_id: RequestId | None, code: int, message: str) -> Message:
    """A JSON-RPC error response; ``request_id`` None when it could not be read."""
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def notification(method_name: str, params_: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "method": method_name}
    if params_ is not None:
        message["params"] = params_
    return message
