"""What both front doors do the same way: admit a request, pick the server, read a bounded body."""

from __future__ import annotations

from aiohttp import web

from bridge.auth import Authenticator
from bridge.errors import ParseError, PayloadTooLarge, UnknownServer
from bridge.frontends.context import DOOR, PRINCIPAL, SERVER
from bridge.frontends.guard import Guard
from bridge.hub import SessionHub


async def admit(
    request: web.Request,
    hub: SessionHub,
    guard: Guard,
    auth: Authenticator,
    default: str | None,
    door: str,
) -> tuple[str, str | None]:
    """Check Host/Origin, then credentials, then name the server the URL is for.

    Returns ``(server, principal)``; the principal is None when auth is off.
    Credentials are checked before the server name, so that a stranger
    cannot probe which servers exist.

    Raises:
        MisdirectedHost, ForbiddenOrigin: see :class:`Guard`.
        Unauthorized, InsufficientScope, AuthServerDown: see :mod:`bridge.auth`.
        UnknownServer: no server by that name (404).
    """
    request[DOOR] = door
    guard.check(request)
    principal = await auth.authenticate(request)
    if principal is not None:
        request[PRINCIPAL] = principal
    name = request.match_info.get("server", default)
    if name is None or name not in hub.upstreams:
        raise UnknownServer(f"no MCP server named {name!r} here")
    request[SERVER] = name
    return name, principal


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (declared or streamed).

    Raises:
        PayloadTooLarge: over the limit (413).
        ParseError: the bytes do not decode as their Content-Encoding or
            framing says, e.g. a corrupt gzip body (400).
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body over {limit} bytes") from None
    except web.RequestPayloadError as exc:
        coding = request.headers.get("Content-Encoding", "none")[:40]
        raise ParseError(f"request body could not be decoded (Content-Encoding: {coding})") from exc
