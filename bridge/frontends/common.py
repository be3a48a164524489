"""What both front doors do the same way: admit a request, pick the server, read a bounded
body in bounded time, and count each principal's open streams (:class:`StreamCap`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

from aiohttp import web

from bridge.auth import Authenticator
from bridge.errors import BodyTimeout, ParseError, PayloadTooLarge, TooManyRequests, UnknownServer
from bridge.frontends.context import DOOR, PRINCIPAL, SERVER
from bridge.frontends.guard import Guard
from bridge.hub import SessionHub
from bridge.metrics import Metrics


async def admit(
    request: web.Request,
    hub: SessionHub,
    guard: Guard,
    auth: Authenticator,
    door: str,
) -> tuple[str, str | None]:
    """Check Host/Origin, then credentials, then name the server the URL is for.

    Returns ``(server, principal)``; the principal is None when auth is off.
    Credentials are checked before the server name, so that a stranger
    cannot probe which servers exist. A URL with no server name (``/mcp``,
    ``/sse``) is for the one server configured; with several (a reload can
    change how many) it names none.

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
    name = request.match_info.get("server", hub.sole_server)
    if name is None:
        raise UnknownServer(
            f'{len(hub.pools)} servers are configured here: use /servers/NAME/... (README "URLs")'
        )
    if name not in hub.upstreams:
        raise UnknownServer(f"no MCP server named {name!r} here")
    request[SERVER] = name
    return name, principal


class StreamCap:
    """GET streams (legacy ``/sse``, Streamable HTTP) open per principal, at most ``limit``.

    Each holds a connection, so a file descriptor: one principal must not hold
    them all (issue #15). With auth off every client is one principal (None).
    """

    def __init__(self, limit: int, metrics: Metrics | None = None) -> None:
        self.limit = limit
        self._metrics = metrics
        self._open: Counter[str | None] = Counter()

    def open(self, principal: str | None) -> int:
        return self._open[principal]

    @contextlib.contextmanager
    def hold(self, principal: str | None) -> Iterator[None]:
        """One stream of ``principal`` while the block runs.

        Raises:
            TooManyRequests: it holds ``limit`` already (429 with ``Retry-After``).
        """
        if self._open[principal] >= self.limit:
            if self._metrics is not None:
                self._metrics.limited.labels("streams_per_principal").inc()
            raise TooManyRequests(
                f"more than {self.limit} streams open for this client",
                headers={"Retry-After": "1"},
            )
        self._open[principal] += 1
        try:
            yield
        finally:
            self._open[principal] -= 1
            if not self._open[principal]:
                del self._open[principal]


async def read_body(request: web.Request, limit: int, within: float) -> bytes:
    """The whole body, at most ``limit`` bytes (declared or streamed), within ``within`` seconds.

    Raises:
        PayloadTooLarge: over the limit (413).
        BodyTimeout: not all there ``within`` seconds after the headers (408;
            the connection closes after it, once aiohttp's lingering read of the
            rest, at most 10 s, ends).
        ParseError: the bytes do not decode as their Content-Encoding or
            framing says, e.g. a corrupt gzip body (400).
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    try:
        if request.content.is_eof():  # all of it is in already: nothing to time
            return await request.read()
        async with asyncio.timeout(within):
            return await request.read()
    except TimeoutError:
        request.protocol.close()  # no further request on this connection
        raise BodyTimeout(
            f"request body not received within {within} s", headers={"Connection": "close"}
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body over {limit} bytes") from None
    except web.RequestPayloadError as exc:
        coding = request.headers.get("Content-Encoding", "none")[:40]
        raise ParseError(f"request body could not be decoded (Content-Encoding: {coding})") from exc
