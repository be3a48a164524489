"""Transport detection for an HTTP upstream whose config names none (spec-notes §2.5).

spec 2025-03-26 and 2025-11-25 transports §Backwards Compatibility: POST an
``initialize`` to the URL; a success means Streamable HTTP. A 400, 404 or 405
means an older server: GET the URL and expect an ``endpoint`` event first,
which means legacy HTTP+SSE.

Design: a separate probe on the first connect, with a throwaway ``initialize``
whose upstream session is DELETEd at once; the answer is remembered for every
later connect in this process, and logged once.

The alternative, detecting lazily by POSTing the client's own ``initialize`` on
a connection of undecided kind, saves one round trip per process, but that
connection would change kind after its first send(): messages() and every
error path would exist twice, connect() could no longer report an unreachable
server, and on fallback the client's initialize would have to be re-sent to
the legacy endpoint. The probe keeps every connection one transport with one
contract and needs nothing from :class:`bridge.session.Session`. Its costs:
one extra initialize per server and process, and a server that refuses DELETE
(405 is allowed) keeps the probe's session until it expires it.

A 2xx counts only with a JSON-RPC answer to the probe in its body (a result
or an error both mean an MCP server spoke); anything else is a protocol error
and, like every failure, is not remembered: the next connect probes again.
Other statuses and aiohttp failures map to errors as :mod:`.http` says; a
body or event over ``max_message_bytes`` is a protocol error, and the whole
probe is bounded by ``upstream_connect_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Final

import aiohttp
import structlog
from multidict import CIMultiDict

from bridge import __version__, jsonrpc
from bridge.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from bridge.jsonrpc import Message
from bridge.settings import AutoHttpServer, SseServer, StreamableHttpServer
from bridge.sse import Decoder
from bridge.upstreams.base import UpstreamConnection, UpstreamTimeouts, decode_frames
from bridge.upstreams.http import (
    client_error,
    feed,
    forwarded,
    read_limited,
    status_error,
)
from bridge.upstreams.sse import SseUpstream
from bridge.upstreams.streamable_http import (
    ACCEPT_POST,
    EVENT_STREAM,
    SESSION_HEADER,
    StreamableHttpUpstream,
)

log = structlog.get_logger("bridge.upstream.detect")

STREAMABLE: Final = "streamable-http"
LEGACY_SSE: Final = "sse"
#: spec 2025-11-25 transports §Backwards Compatibility names exactly these.
FALLBACK_STATUSES: Final = frozenset({400, 404, 405})
PROBE_ID: Final = "mcp-bridge-probe"
NAME_MAX: Final = 64  # characters of the upstream's self-reported name that reach the log


def probe_request() -> Message:
    params = {
        "protocolVersion": jsonrpc.LATEST_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp-bridge-probe", "version": __version__},
    }
    return {"jsonrpc": "2.0", "id": PROBE_ID, "method": "initialize", "params": params}


class AutoHttpUpstream:
    def __init__(
        self, spec: AutoHttpServer, client: aiohttp.ClientSession, timeouts: UpstreamTimeouts
    ) -> None:
        self.name = spec.name
        self._url = str(spec.url)
        self._headers = dict(spec.headers)
        self._forward = spec.forward_headers
        self._client = client
        self._timeouts = timeouts
        fields = {
            "name": spec.name,
            "url": spec.url,
            "headers": spec.headers,
            "forward_headers": spec.forward_headers,
        }
        self._streamable = StreamableHttpUpstream(
            StreamableHttpServer.model_validate(fields), client, timeouts
        )
        self._legacy = SseUpstream(SseServer.model_validate(fields), client, timeouts)
        self._chosen: StreamableHttpUpstream | SseUpstream | None = None
        self._lock = asyncio.Lock()  # concurrent first connects probe once

    @property
    def transport(self) -> str | None:
        """``"streamable-http"`` or ``"sse"`` once detected; None before."""
        if self._chosen is None:
            return None
        return STREAMABLE if self._chosen is self._streamable else LEGACY_SSE

    async def connect(self, client_headers: Mapping[str, str] | None = None) -> UpstreamConnection:
        """Detect on the first call (bounded by the probe's and the legacy GET's timeouts)."""
        async with self._lock:
            if self._chosen is None:
                return await self._detect(client_headers)
        return await self._chosen.connect(client_headers)

    async def _detect(self, client_headers: Mapping[str, str] | None) -> UpstreamConnection:
        extra = forwarded(self._forward, client_headers)
        status, answer = await self._probe(extra)
        connection: UpstreamConnection
        if 200 <= status < 300:
            if answer is None:
                raise UpstreamProtocolError(
                    f"server {self.name!r}: POST initialize answered {status} without JSON-RPC"
                )
            connection = await self._streamable.connect(client_headers)
            self._chosen = self._streamable
        elif status in FALLBACK_STATUSES:
            connection = await self._legacy_connect(status, client_headers)
            self._chosen = self._legacy
        else:
            raise status_error(self.name, "POST initialize", status)
        log.info(
            "upstream_transport_detected",
            server=self.name,
            transport=self.transport,
            upstream_name=_server_name(answer),
        )
        return connection

    async def _legacy_connect(
        self, status: int, client_headers: Mapping[str, str] | None
    ) -> UpstreamConnection:
        try:
            return await self._legacy.connect(client_headers)
        except UpstreamTimeout:
            raise
        except UpstreamError as exc:
            raise UpstreamUnavailable(
                f"server {self.name!r}: no MCP transport found "
                f"(POST initialize answered {status}; then {exc.message})"
            ) from exc

    async def _probe(self, extra: dict[str, str]) -> tuple[int, Message | None]:
        """POST a throwaway initialize: the status, and the answer if it was a 2xx."""
        headers = CIMultiDict(self._headers)
        headers.update(extra)
        headers["Accept"] = ACCEPT_POST
        headers["Content-Type"] = "application/json"
        body = jsonrpc.encode(probe_request()).encode()
        session_id = None
        try:
            async with (
                asyncio.timeout(self._timeouts.connect),
                self._client.post(
                    self._url, data=body, headers=headers, allow_redirects=False
                ) as response,
            ):
                if not 200 <= response.status < 300:
                    return response.status, None
                session_id = response.headers.get(SESSION_HEADER)
                return response.status, await self._answer(response)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self.name!r}: no answer to the probe in time") from exc
        except aiohttp.ClientError as exc:
            raise client_error(self.name, "POST initialize", exc) from exc
        finally:
            if session_id is not None:
                await self._end_probe_session(session_id, extra)

    async def _answer(self, response: aiohttp.ClientResponse) -> Message | None:
        """The answer to the probe in a JSON body or an SSE stream; None if there is none."""
        limit = self._timeouts.max_message_bytes
        if response.content_type == "application/json":
            body = await read_limited(response, limit, self.name)
            return _probe_answer(decode_frames(body, self.name))
        if response.content_type != EVENT_STREAM:
            return None
        decoder = Decoder(limit)
        async for chunk in response.content.iter_any():
            for event in feed(decoder, chunk, self.name):
                if event.event == "message" and event.data.strip():  # not a priming event
                    answer = _probe_answer(decode_frames(event.data, self.name))
                    if answer is not None:
                        return answer
        return None

    async def _end_probe_session(self, session_id: str, extra: dict[str, str]) -> None:
        headers = CIMultiDict(self._headers)
        headers.update(extra)
        headers[SESSION_HEADER] = session_id
        try:
            async with (
                asyncio.timeout(self._timeouts.shutdown_grace),
                self._client.delete(self._url, headers=headers, allow_redirects=False),
            ):
                pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("probe_delete_failed", server=self.name, error=type(exc).__name__)


def _probe_answer(messages: Iterable[Message]) -> Message | None:
    for message in messages:
        if message.get("id") == PROBE_ID and ("result" in message or "error" in message):
            return message
    return None


def _server_name(answer: Message | None) -> str | None:
    result = answer.get("result") if answer else None
    info = result.get("serverInfo") if isinstance(result, dict) else None
    name = info.get("name") if isinstance(info, dict) else None
    return name[:NAME_MAX] if isinstance(name, str) else None
