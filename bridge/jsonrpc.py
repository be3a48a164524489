"""JSON-RPC 2.0 envelopes, sans-IO: parse, classify, build, serialize.

Payloads (``params``, ``result``, ``error``) stay opaque dicts so that MCP
methods this gateway has never heard of pass through untouched; only the
envelope is checked (spec 2025-11-25 basic/index §Messages).

A message is kept as the decoded JSON object (``Message``, a ``dict``) and
classified by :func:`kind`. The gateway rewrites ids with :func:`with_id`,
which copies; it never mutates a message it did not create.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Final

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


class Kind(Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"  # result or error


def is_request_id(value: object) -> bool:
    """A JSON-RPC id as MCP allows it: a string or an integer, never bool or null."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def kind(message: Message) -> Kind:
    """Classify one decoded object, or raise :class:`InvalidRequest`."""
    if message.get("jsonrpc") != "2.0":
        raise InvalidRequest('not a JSON-RPC 2.0 message: "jsonrpc" must be "2.0"')
    if "method" in message:
        if not isinstance(message["method"], str):
            raise InvalidRequest('"method" must be a string')
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
        return Kind.RESPONSE
    raise InvalidRequest('not a JSON-RPC message: no "method", "result" or "error"')


def decode(body: bytes) -> Any:
    """Decode a body as UTF-8 JSON, or raise :class:`ParseError`."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParseError(f"body is not valid JSON: {exc}") from exc


def parse_message(obj: Any) -> tuple[Message, Kind]:
    """Check one decoded value is a JSON-RPC message; return it with its kind."""
    if not isinstance(obj, dict):
        raise InvalidRequest("a JSON-RPC message must be a JSON object")
    return obj, kind(obj)


def encode(message: Message | list[Message]) -> str:
    """Compact JSON with no newlines (spec 2025-11-25 transports §stdio)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def with_id(message: Message, new_id: RequestId) -> Message:
    """A copy of ``message`` carrying ``new_id``."""
    return {**message, "id": new_id}


def method(message: Message) -> str | None:
    value = message.get("method")
    return value if isinstance(value, str) else None


def params(message: Message) -> dict[str, Any]:
    value = message.get("params")
    return value if isinstance(value, dict) else {}


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
