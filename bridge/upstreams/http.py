"""What the HTTP upstreams share: how an HTTP answer or an aiohttp failure becomes an error.

One mapping for legacy SSE, Streamable HTTP and the probe, so that the same
fault gets the same JSON-RPC code whichever transport met it:

=====================================  =========================  ======
what the upstream did                  error                      code
=====================================  =========================  ======
5xx                                    UpstreamUnavailable        -32030
3xx (redirects are never followed:     UpstreamProtocolError      -32031
the configured headers may hold
credentials)
other non-2xx                          UpstreamProtocolError      -32031
no answer within the bound             UpstreamTimeout            -32032
malformed HTTP (junk status line,      UpstreamProtocolError      -32031
bad headers)
connection refused, reset, or cut      UpstreamUnavailable        -32030
mid-body (``ClientPayloadError``)
=====================================  =========================  ======

Messages name the server and the aiohttp error class, never the URL or an
exception's text: both may carry credentials, and the text of a malformed
answer is whatever junk the upstream sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aiohttp

from bridge.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from bridge.sse import Decoder, Event


def forwarded(names: Sequence[str], client_headers: Mapping[str, str] | None) -> dict[str, str]:
    """The client's values of the headers a server's ``forward_headers`` lists (opt-in).

    ``client_headers`` is the client request's (case-insensitive) header map.
    """
    if not names or not client_headers:
        return {}
    return {name: client_headers[name] for name in names if name in client_headers}


def status_error(server: str, what: str, status: int) -> UpstreamError:
    """The error a non-2xx ``status`` answering ``what`` (``"GET"``, ``"POST"``) means."""
    text = f"server {server!r}: {what} answered HTTP {status}"
    if status >= 500:
        return UpstreamUnavailable(text)
    if 300 <= status < 400:
        return UpstreamProtocolError(f"{text} (a redirect; redirects are not followed)")
    return UpstreamProtocolError(text)


def client_error(server: str, what: str, exc: aiohttp.ClientError | TimeoutError) -> UpstreamError:
    """The error an aiohttp failure (or a timeout) during ``what`` means.

    ``exc`` is its ``__cause__`` even where it is not raised ``from`` it, so
    that ``/readyz`` finds the OS error (errno) under it.
    """
    error: UpstreamError
    if isinstance(exc, TimeoutError):
        error = UpstreamTimeout(f"server {server!r}: {what} timed out")
    elif isinstance(exc, aiohttp.ClientResponseError):  # the status line or headers were junk
        error = UpstreamProtocolError(f"server {server!r}: {what} got a malformed HTTP answer")
    else:
        error = UpstreamUnavailable(f"server {server!r}: {what} failed ({type(exc).__name__})")
    error.__cause__ = exc
    return error


async def read_limited(response: aiohttp.ClientResponse, limit: int, server: str) -> bytes:
    """The whole body, or UpstreamProtocolError past ``limit`` bytes (``max_message_bytes``)."""
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise UpstreamProtocolError(f"server {server!r}: a body larger than {limit} bytes")
    return bytes(body)


def feed(decoder: Decoder, chunk: bytes, server: str) -> list[Event]:
    """``decoder.feed(chunk)``, with the server named in its error.

    Raises:
        UpstreamProtocolError: an event over ``max_message_bytes``.
    """
    try:
        return decoder.feed(chunk)
    except UpstreamProtocolError as exc:
        raise UpstreamProtocolError(f"server {server!r}: {exc.message}") from exc
