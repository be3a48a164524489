"""Legacy HTTP+SSE upstream (spec 2024-11-05 transports §HTTP with SSE).

Contract (spec-notes §2):

- ``connect`` GETs the SSE URL and waits, within ``upstream_connect_timeout``,
  for the ``endpoint`` event; its data is resolved against the SSE URL and
  must stay on the same origin (an upstream must not redirect our POSTs, and
  the credentials in ``headers``, elsewhere) and carry no userinfo (aiohttp
  would turn it into an ``Authorization`` header); a malformed URL is an
  UpstreamProtocolError like those. The answer must be a 200 event
  stream; events before ``endpoint`` are kept for messages(), up to
  ``max_message_bytes`` of them in all, past which the upstream is flooding
  rather than shaking hands (UpstreamProtocolError).
- Messages are POSTed there; any 2xx is success (both SDKs answer 202). A
  failed POST is logged (``upstream_post_failed``) and raised.
- HTTP statuses and aiohttp failures map to errors as :mod:`.http` says.
- Every server message, responses included, arrives as a ``message`` event.
- The stream has no total timeout; ``upstream_read_timeout`` bounds silence.
- URLs may carry credentials in their query, so only the server name is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Final
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog

from bridge import jsonrpc
from bridge.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from bridge.jsonrpc import Message
from bridge.settings import SseServer
from bridge.sse import Decoder, Event
from bridge.upstreams.base import UpstreamTimeouts, decode_frames
from bridge.upstreams.http import client_error, feed, forwarded, status_error

log = structlog.get_logger("bridge.upstream.sse")

EVENT_STREAM: Final = "text/event-stream"


def _origin(url: str) -> tuple[str, str | None, int | None]:
    """Scheme, host and port of ``url``.

    Raises:
        ValueError: a malformed URL (a port out of range or not a number, an unclosed ``[``).
    """
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _userinfo(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[0]


def endpoint_url(base: str, data: str, server: str) -> str:
    """The absolute URL an ``endpoint`` event's ``data`` names, resolved against ``base``.

    Raises:
        UpstreamProtocolError: the URL is malformed, carries credentials
            (userinfo) other than ``base``'s, or is not on ``base``'s origin.
    """
    try:
        endpoint = urljoin(base, data.strip())
        origin = _origin(endpoint)
        # Only the configured URL's own userinfo, if any, may come back.
        userinfo = _userinfo(endpoint) != _userinfo(base)
        same = origin == _origin(base)
    except ValueError:
        raise UpstreamProtocolError(
            f"server {server!r}: endpoint event names a malformed URL"
        ) from None
    if userinfo:
        raise UpstreamProtocolError(f"server {server!r}: endpoint event URL carries credentials")
    if not same:
        raise UpstreamProtocolError(f"server {server!r}: endpoint event points to another origin")
    return endpoint


class SseUpstream:
    def __init__(
        self, spec: SseServer, client: aiohttp.ClientSession, timeouts: UpstreamTimeouts
    ) -> None:
        self.name = spec.name
        self._url = str(spec.url)
        self._headers = dict(spec.headers)
        self._forward = spec.forward_headers
        self._client = client
        self._timeouts = timeouts
        # Each POST in flight holds a connection (a socket at the upstream):
        # bounded per server, so a thousand clients sharing one upstream
        # session cost it a thousand fds no more than one would (issue #10).
        self._posts = asyncio.Semaphore(timeouts.max_posts)

    async def connect(self, client_headers: Mapping[str, str] | None = None) -> SseConnection:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeouts.connect, sock_read=self._timeouts.read
        )
        extra = forwarded(self._forward, client_headers)
        headers = {**self._headers, **extra, "Accept": EVENT_STREAM}
        try:
            async with asyncio.timeout(self._timeouts.connect):
                # No redirects: the configured headers may carry credentials.
                response = await self._client.get(
                    self._url, headers=headers, timeout=timeout, allow_redirects=False
                )
                try:
                    return await self._handshake(response, extra)
                except BaseException:
                    response.close()
                    raise
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self.name!r}: no endpoint event in time") from exc
        except aiohttp.ClientError as exc:
            raise client_error(self.name, "GET", exc) from exc

    async def _handshake(
        self, response: aiohttp.ClientResponse, extra: dict[str, str]
    ) -> SseConnection:
        if response.status != 200:
            raise status_error(self.name, "GET", response.status)
        if response.content_type != EVENT_STREAM:
            raise UpstreamProtocolError(
                f"server {self.name!r}: GET answered Content-Type {response.content_type!r}, "
                f"not {EVENT_STREAM}"
            )
        limit = self._timeouts.max_message_bytes
        decoder = Decoder(limit)
        early: list[Event] = []
        early_bytes = 0
        async for chunk in response.content.iter_any():
            for event in feed(decoder, chunk, self.name):
                if event.event != "endpoint":
                    early_bytes += len(event.data)
                    if early_bytes > limit:  # a flood that is not the handshake
                        raise UpstreamProtocolError(
                            f"server {self.name!r}: more than {limit} bytes of events "
                            "before the endpoint event"
                        )
                    early.append(event)
                    continue
                endpoint = endpoint_url(self._url, event.data, self.name)
                log.debug("upstream_endpoint", server=self.name)
                return SseConnection(self, response, decoder, endpoint, early, extra)
        raise UpstreamProtocolError(f"server {self.name!r}: stream ended before endpoint event")

    async def post(self, endpoint: str, message: Message, extra: dict[str, str]) -> None:
        """POST one message to the endpoint, with the connection's forwarded headers ``extra``.

        Bounded by ``upstream_send_timeout``.

        Raises:
            UpstreamUnavailable: unreachable, cut off, a 5xx, or 404/410 (the
                upstream session is gone).
            UpstreamProtocolError: another non-2xx answer, or a malformed one.
            UpstreamTimeout: no answer in time.
        """
        headers = {**self._headers, **extra, "Content-Type": "application/json"}
        body = jsonrpc.encode_bytes(message)
        try:
            async with (
                asyncio.timeout(self._timeouts.send),
                self._posts,
                self._client.post(
                    endpoint, data=body, headers=headers, allow_redirects=False
                ) as response,
            ):
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise client_error(self.name, "POST", exc) from exc
        if response.status in (404, 410):
            raise UpstreamUnavailable(f"server {self.name!r}: upstream session is gone")
        if not 200 <= response.status < 300:
            raise status_error(self.name, "POST", response.status)


class SseConnection:
    def __init__(
        self,
        upstream: SseUpstream,
        response: aiohttp.ClientResponse,
        decoder: Decoder,
        endpoint: str,
        early: list[Event],
        extra: dict[str, str],
    ) -> None:
        self._upstream = upstream
        self._extra = extra  # forwarded client headers (forward_headers), for every POST
        self._response = response
        self._decoder = decoder
        self._endpoint = endpoint
        self._early = early

    async def send(self, message: Message) -> None:
        if self._response.closed:
            raise UpstreamUnavailable(f"server {self._upstream.name!r}: SSE stream closed")
        try:
            await self._upstream.post(self._endpoint, message, self._extra)
        except UpstreamError as exc:
            log.warning("upstream_post_failed", server=self._upstream.name, error=exc.message)
            raise

    async def messages(self) -> AsyncIterator[Message]:
        events, self._early = self._early, []
        for message in self._messages(events):
            yield message
        try:
            async for chunk in self._response.content.iter_any():
                for message in self._messages(feed(self._decoder, chunk, self._upstream.name)):
                    yield message
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"server {self._upstream.name!r}: SSE stream broke ({exc.__class__.__name__})"
            ) from exc

    def _messages(self, events: list[Event]) -> list[Message]:
        return [
            message
            for event in events
            if event.event == "message"
            for message in decode_frames(event.data, self._upstream.name)
        ]

    async def aclose(self) -> None:
        self._response.close()
