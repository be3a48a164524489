"""The 2026-07-28 wire, sans-IO: which era a request is of, its checks, its answers.

Revision 2026-07-28 has no session (spec-notes §7): every request carries its
protocol version, client capabilities and (SHOULD) client info in ``_meta``,
and on HTTP mirrors method, name and version in headers that intermediaries
route on. This module decides, for one parsed POST, whether it is a request of
that era (:func:`is_modern`), checks it the way the spec orders
(:func:`check`), and shapes what the gateway answers (:func:`complete`,
:func:`upstream_error`). Nothing here does I/O.

Sources: 2026-07-28 basic/index §_meta and §Error Codes; basic/versioning;
basic/transports/streamable-http §Request Metadata, §Server Validation,
§Value Encoding; server/utilities/caching; basic/patterns/mrtr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge import errors, jsonrpc
from bridge.errors import (
    HeaderMismatch,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    MissingSession,
    VersionNotServed,
)
from bridge.jsonrpc import Message

MODERN_VERSION: Final = "2026-07-28"
#: Sessionless revisions served, newest first.
MODERN_VERSIONS: Final = (MODERN_VERSION,)
#: Every revision the gateway serves, newest first (``data.supported``).
ALL_VERSIONS: Final = (*MODERN_VERSIONS, *reversed(jsonrpc.SUPPORTED_VERSIONS))

PREFIX: Final = "io.modelcontextprotocol/"
META_VERSION: Final = PREFIX + "protocolVersion"
META_CLIENT_INFO: Final = PREFIX + "clientInfo"
META_CAPABILITIES: Final = PREFIX + "clientCapabilities"
META_LOG_LEVEL: Final = PREFIX + "logLevel"
META_SERVER_INFO: Final = PREFIX + "serverInfo"
META_SUBSCRIPTION_ID: Final = PREFIX + "subscriptionId"
#: The upstream's name for one of its server-to-client requests, which becomes
#: its key in ``inputRequests`` (README "2026-07-28"); stripped before relaying.
META_INPUT_KEY: Final = "mcp-bridge/inputKey"

VERSION_HEADER: Final = "MCP-Protocol-Version"
METHOD_HEADER: Final = "Mcp-Method"
NAME_HEADER: Final = "Mcp-Name"
PARAM_HEADER_PREFIX: Final = "Mcp-Param-"

#: Methods this revision removed; a modern request for one is 404 -32601.
REMOVED: Final = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
#: The requests of this revision the gateway serves (schema.mdx ClientRequest);
#: anything else, extension methods included, is 404 -32601: a session-era
#: server behind may answer an unknown method with -32602 or not at all.
SERVED: Final = frozenset(
    {
        "server/discover",
        "subscriptions/listen",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    }
)
#: Methods whose ``Mcp-Name`` header mirrors a body field.
NAME_FIELD: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
#: Methods that may answer ``InputRequiredResult`` (mrtr §Supported Requests).
MAY_REQUIRE_INPUT: Final = frozenset(NAME_FIELD)
#: Results that carry caching hints (caching §Cacheable Results).
CACHEABLE: Final = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)
#: The hints the gateway gives where the upstream (of an earlier era) gives
#: none: stale at once, and never shared across authorization contexts, since
#: a session-era server's answer may depend on who asks.
DEFAULT_TTL_MS: Final = 0
DEFAULT_CACHE_SCOPE: Final = "private"
LOG_LEVELS: Final = (
    "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
)  # fmt: skip
_SENTINEL_HEAD, _SENTINEL_TAIL = "=?base64?", "?="
#: HTTP field-value characters (RFC 9110 §5.5): visible ASCII, space, tab.
_FIELD_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) | {"\t"}
#: Request params that are not part of what a request asks (its digest).
_NOT_SALIENT: Final = frozenset({"_meta", "inputResponses", "requestState"})


def meta(message: Message) -> dict[str, Any]:
    value = jsonrpc.params(message).get("_meta")
    return value if isinstance(value, dict) else {}


def is_modern(message: Message, headers: Mapping[str, str]) -> bool:
    """Whether a sessionless POST is of the 2026-07-28 era (versioning §Backward Compatibility).

    A dual-era server selects by how the client opens: a legacy ``initialize``
    (no ``_meta`` version) selects the session era; a request with a ``_meta``
    protocol version, or a ``MCP-Protocol-Version`` header of no session-era
    revision, is modern. The caller has already seen no ``Mcp-Session-Id``.
    """
    if META_VERSION in meta(message):
        return True
    header = headers.get(VERSION_HEADER)
    return (
        message.get("method") != "initialize"
        and header is not None
        and header not in jsonrpc.SUPPORTED_VERSIONS
    )


@dataclass(frozen=True, slots=True)
class ModernRequest:
    """A checked 2026-07-28 request: the message and what its ``_meta`` declares."""

    message: Message
    version: str
    capabilities: dict[str, Any]
    client_info: dict[str, Any] | None
    log_level: str | None

    @property
    def method(self) -> str:
        return str(self.message["method"])

    @property
    def id(self) -> jsonrpc.RequestId:
        request_id: jsonrpc.RequestId = self.message["id"]
        return request_id

    @property
    def params(self) -> dict[str, Any]:
        return jsonrpc.params(self.message)

    def digest(self) -> str:
        """What the request asks, hashed: method and params but ``_meta`` and MRTR fields."""
        salient = {k: v for k, v in self.params.items() if k not in _NOT_SALIENT}
        text = json.dumps([self.method, salient], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def check(message: Message, kind: jsonrpc.Kind, headers: Mapping[str, str]) -> ModernRequest:
    """Check one modern POST body against its headers; the request, or an error.

    Raises:
        InvalidRequest: a response, or a notification (none is defined on HTTP).
        InvalidParams: ``_meta`` lacks a required field or has a bad one (400 -32602).
        VersionNotServed: a ``_meta`` version the gateway does not serve (400 -32022).
        MissingSession: a session-era version without a session (plain 400, so that
            a dual-era client falls back to ``initialize``).
        HeaderMismatch: a mirrored header missing, malformed or not the body's (400 -32020).
        MethodNotFound: a method this revision removed (404 -32601).
    """
    if kind is not jsonrpc.Kind.REQUEST:
        raise InvalidRequest(
            "revision 2026-07-28 takes one JSON-RPC request per POST (no responses; "
            "a closed stream, not notifications/cancelled, cancels on HTTP)"
        )
    fields = meta(message)
    version = fields.get(META_VERSION)
    header_version = headers.get(VERSION_HEADER)
    if version is None:
        if header_version in MODERN_VERSIONS:
            raise InvalidParams(f"params._meta lacks {META_VERSION!r} (required on every request)")
        version = header_version
    if not isinstance(version, str):
        raise InvalidParams(f"params._meta {META_VERSION!r} must be a string")
    if header_version is not None and header_version != version:
        # Before the version's support: a mismatch is the client's bug whatever the version.
        raise HeaderMismatch(
            f"Header mismatch: {VERSION_HEADER} {header_version[:64]!r} does not match "
            f"params._meta version {version[:64]!r}"
        )
    if version in jsonrpc.SUPPORTED_VERSIONS:
        raise MissingSession(
            f"protocol version {version} is served with a session: send initialize first"
        )
    if version not in MODERN_VERSIONS:
        raise VersionNotServed(
            "Unsupported protocol version",
            data={"supported": list(ALL_VERSIONS), "requested": version[:64]},
        )
    if header_version is None:
        raise HeaderMismatch(f"missing {VERSION_HEADER} header (required on every POST)")
    capabilities = fields.get(META_CAPABILITIES)
    if not isinstance(capabilities, dict):
        raise InvalidParams(f"params._meta lacks {META_CAPABILITIES!r} (an object; required)")
    client_info = fields.get(META_CLIENT_INFO)
    level = fields.get(META_LOG_LEVEL)
    if level is not None and level not in LOG_LEVELS:
        raise InvalidParams(f"params._meta {META_LOG_LEVEL!r} is not a log level")
    method = str(message["method"])
    _check_mirrored(METHOD_HEADER, headers.get(METHOD_HEADER), method, encoded=False)
    if (name_field := NAME_FIELD.get(method)) is not None:
        body_value = jsonrpc.params(message).get(name_field)
        if not isinstance(body_value, str):
            raise InvalidParams(f"params.{name_field} must be a string")
        _check_mirrored(NAME_HEADER, headers.get(NAME_HEADER), body_value, encoded=True)
    if method in REMOVED:
        raise MethodNotFound(f"Method not found: {method} (removed in revision {version})")
    if method not in SERVED:
        raise MethodNotFound(f"Method not found: {method[:64]}")
    return ModernRequest(
        message=message,
        version=version,
        capabilities=capabilities,
        client_info=client_info if isinstance(client_info, dict) else None,
        log_level=level,
    )


def _check_mirrored(header: str, value: str | None, body: str, *, encoded: bool) -> None:
    if value is None:
        raise HeaderMismatch(f"missing {header} header (required for this request)")
    decoded = decode_header_value(header, value) if encoded else _plain(header, value)
    if decoded != body:
        raise HeaderMismatch(
            f"Header mismatch: {header} header value {decoded[:64]!r} does not match "
            f"body value {body[:64]!r}"
        )


def _plain(header: str, value: str) -> str:
    if not set(value) <= _FIELD_CHARS:
        raise HeaderMismatch(f"{header} header has characters outside visible ASCII")
    return value


def decode_header_value(header: str, value: str) -> str:
    """A mirrored value as the body has it (§Value Encoding): plain, or the base64 sentinel.

    Raises:
        HeaderMismatch: characters outside the field-value set, or a sentinel
            whose payload is not base64 of UTF-8.
    """
    value = _plain(header, value)
    if value.startswith(_SENTINEL_HEAD) and value.endswith(_SENTINEL_TAIL):
        payload = value[len(_SENTINEL_HEAD) : -len(_SENTINEL_TAIL)]
        try:
            return base64.b64decode(payload, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise HeaderMismatch(f"{header} header is not valid =?base64?...?= text") from None
    return value


# -- x-mcp-header (tools §x-mcp-header; transports §Custom Headers) --------------


def param_headers(schema: object) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(header name, property path)`` for each ``x-mcp-header`` statically reachable.

    Only chains of ``properties`` keys count (§Schema Extension); annotations
    elsewhere make the tool invalid for a client, and the gateway does not
    expect headers for them.
    """
    stack: list[tuple[object, tuple[str, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, dict):
            continue
        name = node.get("x-mcp-header")
        if path and isinstance(name, str) and name:
            yield name, path
        properties = node.get("properties")
        if isinstance(properties, dict):
            stack.extend((child, (*path, key)) for key, child in properties.items())


def check_param_headers(schema: object, arguments: object, headers: Mapping[str, str]) -> None:
    """A ``tools/call``'s ``Mcp-Param-*`` headers against its arguments (§Server Validation).

    Raises:
        HeaderMismatch: a value in the body without its header, or a header
            whose decoded value is not the body's (integers compare numerically).
    """
    for name, path in param_headers(schema):
        value: object = arguments
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        header = PARAM_HEADER_PREFIX + name
        raw = headers.get(header)
        if value is None:
            continue  # "Server MUST NOT expect the header"
        if raw is None:
            raise HeaderMismatch(f"missing {header} header: params.arguments has the value")
        if not _same_value(decode_header_value(header, raw), value):
            raise HeaderMismatch(f"Header mismatch: {header} does not match its argument")


def _same_value(text: str, value: object) -> bool:
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    if isinstance(value, int):
        try:
            return float(text) == value
        except ValueError:
            return False
    return isinstance(value, str) and text == value


# -- answers -----------------------------------------------------------------------


def complete(
    result: object, method: str, server_info: object, *, retried: bool = False
) -> dict[str, Any]:
    """A final result as this revision has it: ``resultType``, server info, caching hints.

    ``retried``: the request carried ``inputResponses`` or ``requestState``; such
    results MUST NOT be cached (caching §Cache Key), so their ``ttlMs`` is 0.
    """
    shaped = dict(result) if isinstance(result, dict) else {}
    shaped.setdefault("resultType", "complete")
    meta_out = shaped.get("_meta")
    meta_out = dict(meta_out) if isinstance(meta_out, dict) else {}
    if isinstance(server_info, dict):
        meta_out.setdefault(META_SERVER_INFO, server_info)
    if meta_out:
        shaped["_meta"] = meta_out
    if method in CACHEABLE:
        shaped.setdefault("ttlMs", DEFAULT_TTL_MS)
        shaped.setdefault("cacheScope", DEFAULT_CACHE_SCOPE)
        if retried:
            shaped["ttlMs"] = 0
    return shaped


def upstream_error(error: object, request: ModernRequest) -> dict[str, Any]:
    """An upstream's JSON-RPC error member, in this revision's codes.

    Resource not found moved from -32002 to -32602 with ``data.uri``
    (changelog minor 6); the gateway's own codes shift out of the reserved
    range (:func:`bridge.errors.for_modern`).
    """
    shaped = dict(error) if isinstance(error, dict) else {"code": errors.INTERNAL_ERROR}
    code = shaped.get("code")
    if code == -32002:
        shaped["code"] = errors.INVALID_PARAMS
        data = shaped.get("data")
        data = dict(data) if isinstance(data, dict) else {}
        if request.method == "resources/read":
            data.setdefault("uri", request.params.get("uri"))
        shaped["data"] = data
    elif isinstance(code, int):
        shaped["code"] = errors.for_modern(code)
    return shaped


def discover_result(init_result: Mapping[str, Any]) -> dict[str, Any]:
    """``server/discover`` from an upstream's ``InitializeResult`` (server/discover §Response)."""
    capabilities = init_result.get("capabilities")
    result: dict[str, Any] = {
        # Both eras (versioning §Protocol Version Negotiation): the same list
        # as -32022's data.supported; a session-era pick means initialize.
        "supportedVersions": list(ALL_VERSIONS),
        # As the server declared them; resources.subscribe now means subscriptions/listen
        # can watch resource URIs (resourceSubscriptions).
        "capabilities": capabilities if isinstance(capabilities, dict) else {},
    }
    if isinstance(instructions := init_result.get("instructions"), str):
        result["instructions"] = instructions
    return complete(result, "server/discover", init_result.get("serverInfo"))
