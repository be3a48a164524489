"""What both front doors do the same way: pick the server, read a bounded body."""

from __future__ import annotations

from aiohttp import web

from bridge.errors import PayloadTooLarge, UnknownServer
from bridge.frontends.context import DOOR, SERVER
from bridge.frontends.guard import Guard
from bridge.hub import SessionHub


def resolve_server(
    request: web.Request, hub: SessionHub, guard: Guard, default: str | None, door: str
) -> str:
    """Check Host/Origin, then name the configured server the URL is for.

    Raises:
        MisdirectedHost, ForbiddenOrigin: see :class:`Guard`.
        UnknownServer: no server by that name (404).
    """
    request[DOOR] = door
    guard.check(request)
    name = request.match_info.get("server", default)
    if name is None or name not in hub.upstreams:
        raise UnknownServer(f"no MCP server named {name!r} here")
    request[SERVER] = name
    return name


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (declared or streamed).

    Raises:
        PayloadTooLarge: over the limit (413).
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body over {limit} bytes") from None
