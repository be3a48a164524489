"""The gateway's one error tree, split by whose fault it is.

::

    BridgeError
    ├── ClientProtocolError            the downstream client broke a rule      4xx
    │   ├── NotAcceptable              Accept lacks a type we must send         406
    │   ├── UnsupportedMediaType       Content-Type is not application/json    415
    │   ├── PayloadTooLarge            body over ``max_body_bytes``             413
    │   ├── BodyTimeout                body not received within ``body_timeout``  408
    │   ├── ParseError                 body is not JSON                         400 -32700
    │   ├── InvalidRequest             not a JSON-RPC message / bad batch       400 -32600
    │   ├── MissingSession             no Mcp-Session-Id on a non-initialize    400
    │   ├── UnsupportedProtocolVersion bad MCP-Protocol-Version                 400
    │   ├── InvalidParams              2026-07-28: bad or missing ``_meta``        400 -32602
    │   ├── HeaderMismatch             2026-07-28: headers vs body                 400 -32020
    │   ├── MissingClientCapability    2026-07-28: capability not declared         400 -32021
    │   ├── VersionNotServed           2026-07-28: unknown ``_meta`` version       400 -32022
    │   ├── MethodNotFound             2026-07-28: removed or unknown method       404 -32601
    │   ├── SessionNotFound            unknown, ended or foreign session        404 -32001
    │   ├── UnknownServer              no server by that name                   404
    │   ├── Unauthorized               no or bad credentials (spec §Authz)      401 -32036
    │   ├── InsufficientScope          token lacks a required scope             403 -32036
    │   ├── ForbiddenOrigin            Origin not allowed (spec §Security)      403
    │   ├── MisdirectedHost            Host not allowed (DNS rebinding)         421
    │   ├── StreamConflict             a second standalone GET stream           409
    │   └── TooManyRequests            a per-client limit is reached            429 -32037
    ├── GatewayFull                    the gateway's session limit is reached   503 -32037
    ├── StoreDown                      the session store cannot be reached     503 -32034
    ├── AuthServerDown                 the issuer's keys cannot be fetched      503 -32036
    ├── ReplicaUnavailable             the replica holding the session is silent 503 -32038
    │   └── OwnedElsewhere             (internal) held by another replica: forwarded
    ├── UpstreamError                  the upstream MCP server failed us       5xx
    │   ├── UpstreamUnavailable        cannot connect / connection lost         503 -32030
    │   ├── UpstreamProtocolError      upstream spoke nonsense                  502 -32031
    │   ├── UpstreamTimeout            upstream took longer than allowed        504 -32032
    │   └── PoolBusy                   no upstream session free in time         503 -32037
    └── BridgeBug                      our fault                                500 -32603

Each class carries ``http_status`` (used while no response has started) and
``jsonrpc_code`` (used in the JSON-RPC error body, or in an error response on
an SSE stream that has already started; STYLE rule 12), and may carry
``headers`` for the HTTP response (``WWW-Authenticate``, ``Retry-After``).

The gateway-specific codes -32030..-32038 sit in JSON-RPC's implementation
defined server-error range (-32000..-32099), away from -32001/-32002 that SDKs
already use and from -32020..-32022 that MCP 2026-07-28 reserves. Revision
2026-07-28 (basic/index §Error Codes) reserves all of -32020..-32099 for the
specification, so a client of that revision gets them as -31030..-31037
instead (:func:`for_modern`): same meaning, outside JSON-RPC's reserved range.
"""

from __future__ import annotations

from typing import ClassVar, Final

# JSON-RPC 2.0 standard codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# Code the TypeScript SDK uses for an unknown session (spec-notes §1.17).
SESSION_NOT_FOUND: Final = -32001
# Gateway codes, documented in README.md ("Errors").
UPSTREAM_UNAVAILABLE: Final = -32030
UPSTREAM_PROTOCOL_ERROR: Final = -32031
UPSTREAM_TIMEOUT: Final = -32032
SESSION_TERMINATED: Final = -32033
STORE_UNAVAILABLE: Final = -32034
REQUEST_INTERRUPTED: Final = -32035
UNAUTHORIZED: Final = -32036
LIMIT_EXCEEDED: Final = -32037
REPLICA_UNAVAILABLE: Final = -32038
# MCP 2026-07-28 basic/index §Error Codes.
HEADER_MISMATCH: Final = -32020
MISSING_CLIENT_CAPABILITY: Final = -32021
UNSUPPORTED_VERSION: Final = -32022
#: What the gateway's own codes move by for a 2026-07-28 client.
MODERN_SHIFT: Final = 1000


def for_modern(code: int) -> int:
    """A code as a 2026-07-28 client may receive it (module docstring)."""
    reserved = -32099 <= code <= -32020
    spec = code in (HEADER_MISMATCH, MISSING_CLIENT_CAPABILITY, UNSUPPORTED_VERSION)
    return code + MODERN_SHIFT if reserved and not spec else code


class BridgeError(Exception):
    """Root of every error the gateway raises on purpose."""

    http_status: ClassVar[int] = 500
    jsonrpc_code: ClassVar[int] = INTERNAL_ERROR

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, data: object = None
    ) -> None:
        super().__init__(message)
        self.message = message
        #: Extra HTTP response headers, e.g. ``WWW-Authenticate`` or ``Retry-After``.
        self.headers: dict[str, str] = headers or {}
        #: The JSON-RPC error's ``data`` member, if any.
        self.data = data


class ClientProtocolError(BridgeError):
    """The downstream client sent something the transport rules forbid."""

    http_status = 400
    jsonrpc_code = INVALID_REQUEST


class NotAcceptable(ClientProtocolError):
    """spec 2025-11-25 transports §Sending Messages 2: Accept must list both types."""

    http_status = 406


class UnsupportedMediaType(ClientProtocolError):
    http_status = 415


class PayloadTooLarge(ClientProtocolError):
    http_status = 413


class BodyTimeout(ClientProtocolError):
    """The request body did not arrive within ``body_timeout`` of its headers."""

    http_status = 408


class ParseError(ClientProtocolError):
    jsonrpc_code = PARSE_ERROR


class InvalidRequest(ClientProtocolError):
    pass


class MissingSession(ClientProtocolError):
    """spec 2025-11-25 transports §Session Management 2 (SHOULD 400)."""


class UnsupportedProtocolVersion(ClientProtocolError):
    """spec 2025-06-18 transports §Protocol Version Header (MUST 400)."""


class InvalidParams(ClientProtocolError):
    """spec 2026-07-28 basic/index §_meta: a required per-request field is missing (MUST 400)."""

    jsonrpc_code = INVALID_PARAMS


class HeaderMismatch(ClientProtocolError):
    """spec 2026-07-28 transports/streamable-http §Server Validation (MUST 400 -32020)."""

    jsonrpc_code = HEADER_MISMATCH


class MissingClientCapability(ClientProtocolError):
    """spec 2026-07-28 basic/index §_meta: ``data.requiredCapabilities`` (MUST 400 -32021)."""

    jsonrpc_code = MISSING_CLIENT_CAPABILITY


class VersionNotServed(ClientProtocolError):
    """spec 2026-07-28 basic/versioning: ``data.supported`` and ``data.requested`` (400 -32022)."""

    jsonrpc_code = UNSUPPORTED_VERSION


class MethodNotFound(ClientProtocolError):
    """spec 2026-07-28 transports/streamable-http §Protocol Version Header (MUST 404 -32601)."""

    http_status = 404
    jsonrpc_code = METHOD_NOT_FOUND


class SessionNotFound(ClientProtocolError):
    """spec 2025-11-25 transports §Session Management 3 (MUST 404)."""

    http_status = 404
    jsonrpc_code = SESSION_NOT_FOUND


class UnknownServer(ClientProtocolError):
    http_status = 404
    jsonrpc_code = METHOD_NOT_FOUND


class Unauthorized(ClientProtocolError):
    """spec 2025-11-25 authorization §Error Handling: missing or invalid credentials -> 401.

    ``headers`` carries ``WWW-Authenticate`` (RFC 6750 §3; RFC 9728 §5.1).
    """

    http_status = 401
    jsonrpc_code = UNAUTHORIZED


class InsufficientScope(ClientProtocolError):
    """spec 2025-11-25 authorization §Scope Challenge: a valid token without the scope -> 403."""

    http_status = 403
    jsonrpc_code = UNAUTHORIZED


class ForbiddenOrigin(ClientProtocolError):
    """spec 2025-11-25 transports §Security Warning: invalid Origin -> 403."""

    http_status = 403


class MisdirectedHost(ClientProtocolError):
    """A Host header this gateway does not serve (DNS rebinding; the py SDK answers 421)."""

    http_status = 421


class StreamConflict(ClientProtocolError):
    http_status = 409


class TooManyRequests(ClientProtocolError):
    """A per-principal or per-session limit is reached; ``Retry-After`` says when to retry."""

    http_status = 429
    jsonrpc_code = LIMIT_EXCEEDED


class GatewayFull(BridgeError):
    """The gateway holds as many sessions as it may; another replica or later may serve."""

    http_status = 503
    jsonrpc_code = LIMIT_EXCEEDED


class StoreDown(BridgeError):
    """The session store cannot be reached: the session may well exist (not a 404)."""

    http_status = 503
    jsonrpc_code = STORE_UNAVAILABLE


class AuthServerDown(BridgeError):
    """OAuth mode: the issuer's JWKS cannot be fetched, so no token can be checked now."""

    http_status = 503
    jsonrpc_code = UNAUTHORIZED


class ReplicaUnavailable(BridgeError):
    """The replica holding a session's upstream work cannot be reached over the bus (issue #12)."""

    http_status = 503
    jsonrpc_code = REPLICA_UNAVAILABLE


class OwnedElsewhere(ReplicaUnavailable):
    """A session's work is held by another live replica (``owner``), or is moving (None).

    Raised by the hub, caught by :mod:`bridge.replicas.forward`'s middleware,
    which forwards the request there; it only reaches a client as a 503 if
    nothing forwards it.
    """

    def __init__(self, owner: str | None, session_id: str = "") -> None:
        super().__init__("this session is held by another replica", headers={"Retry-After": "1"})
        self.owner = owner
        self.session_id = session_id


class UpstreamError(BridgeError):
    """The upstream MCP server could not do its part."""

    http_status = 502
    jsonrpc_code = UPSTREAM_PROTOCOL_ERROR


class UpstreamUnavailable(UpstreamError, ConnectionError):
    http_status = 503
    jsonrpc_code = UPSTREAM_UNAVAILABLE


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError, TimeoutError):
    http_status = 504
    jsonrpc_code = UPSTREAM_TIMEOUT


class PoolBusy(UpstreamError):
    """Every upstream session a request may use is busy and the pool is at its bound."""

    http_status = 503
    jsonrpc_code = LIMIT_EXCEEDED


class BridgeBug(BridgeError):
    """Raised where an invariant of ours broke; never the client's fault."""


class ConfigError(Exception):
    """A configuration file or option is wrong; ``str()`` names file, server and field.

    Not a :class:`BridgeError`: it never reaches a client, it ends the process
    with exit status 2 before any port is bound.
    """
