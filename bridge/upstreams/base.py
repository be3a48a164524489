"""The upstream seam: one Protocol for every transport (STYLE §3.2).

:class:`Session` sees only :class:`UpstreamConnection`; whether frames travel
over a child's pipes or a legacy SSE stream is the implementation's business.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol

import structlog

from bridge.jsonrpc import Message

log = structlog.get_logger("bridge.upstream")


class UpstreamConnection(Protocol):
    """One live MCP connection to an upstream server."""

    async def send(self, message: Message) -> None:
        """Deliver one JSON-RPC message.

        Raises:
            UpstreamUnavailable: the connection is gone.
            UpstreamTimeout: not delivered within ``upstream_send_timeout``.
            UpstreamProtocolError: the upstream refused it.
        """

    def messages(self) -> AsyncIterator[Message]:
        """Every message the upstream sends, in order; ends when it closes.

        Raises:
            UpstreamUnavailable: the connection broke (rather than closed).
            UpstreamProtocolError: the upstream sent something unusable.
        """

    async def aclose(self) -> None:
        """Release the connection (and reap a child). Bounded; never raises."""


class Upstream(Protocol):
    """A configured server that can open connections."""

    name: str

    async def connect(self) -> UpstreamConnection:
        """Open a connection, bounded by ``upstream_connect_timeout``.

        Raises:
            UpstreamUnavailable: could not connect or start the server.
            UpstreamTimeout: it did not become ready in time.
            UpstreamProtocolError: it answered, but not as an MCP server.
        """


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Seconds; see :class:`bridge.settings.Settings` for each one's meaning."""

    connect: float
    read: float
    send: float
    shutdown_grace: float
    max_message_bytes: int


def decode_frames(text: str | bytes, server: str) -> Iterator[Message]:
    """The JSON-RPC objects in one upstream frame (an object or a 2025-03-26 batch).

    A frame that is not JSON or holds no object is logged and skipped: an
    upstream's garbage must not end a session that might still recover.
    """
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        log.warning("upstream_garbage", server=server, size=len(text))
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            yield item
        else:
            log.warning("upstream_garbage", server=server, size=len(text))
