"""The upstream seam: one Protocol for every transport (STYLE §3.2).

:class:`Session` sees only :class:`UpstreamConnection`; whether frames travel
over a child's pipes or a legacy SSE stream is the implementation's business.
An upstream that supervises what it runs (stdio) may also implement
:class:`ReportsHealth`; :func:`upstream_report` merges that into ``/readyz``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

import structlog

from bridge import jsonrpc
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

    async def connect(self, client_headers: Mapping[str, str] | None = None) -> UpstreamConnection:
        """Open a connection, bounded by ``upstream_connect_timeout``.

        ``client_headers`` are the headers of the client request that needs
        the connection; an HTTP upstream sends those its config lists in
        ``forward_headers`` (none by default), stdio ignores them.

        Raises:
            UpstreamUnavailable: could not connect or start the server.
            UpstreamTimeout: it did not become ready in time.
            UpstreamProtocolError: it answered, but not as an MCP server.
        """


#: A JSON object for ``/readyz``: counters, timestamps, short lists of text.
Health: TypeAlias = dict[str, str | int | float | list[str]]


@runtime_checkable
class ReportsHealth(Protocol):
    """An upstream that knows more about its health than whether connects succeed."""

    def health(self) -> Health:
        """Its state for ``/readyz``; a ``"status"`` key overrides the hub's.

        Cheap and synchronous: called on every ``/readyz`` request.
        """


def upstream_report(
    upstreams: Mapping[str, Upstream], states: Mapping[str, Mapping[str, str]]
) -> dict[str, Health]:
    """``/readyz``'s ``upstreams`` object: the hub's view of each, with its own health merged in."""
    report: dict[str, Health] = {}
    for name, upstream in upstreams.items():
        report[name] = {**states.get(name, {})}
        if isinstance(upstream, ReportsHealth):
            report[name].update(upstream.health())
    return report


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a crashed stdio child may be started again; seconds (see Settings ``stdio_*``)."""

    backoff_base: float = 0.5
    backoff_max: float = 30.0
    wait: float = 1.0
    healthy_after: float = 10.0


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Seconds; see :class:`bridge.settings.Settings` for each one's meaning."""

    connect: float
    read: float
    send: float
    shutdown_grace: float
    max_message_bytes: int
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    max_posts: int = 8  # legacy SSE: POSTs in flight at once per server (each holds a connection)
    stderr_log_lines: int = 100  # stdio: stderr lines logged per child per stderr_log_interval
    stderr_log_interval: float = 10.0  # seconds


def decode_frames(text: str | bytes, server: str) -> Iterator[Message]:
    """The JSON-RPC objects in one upstream frame (an object or a 2025-03-26 batch).

    A frame that is not JSON or holds no object is logged and skipped: an
    upstream's garbage must not end a session that might still recover.
    """
    try:
        value = jsonrpc.loads_frame(text)
    except (ValueError, RecursionError):  # RecursionError: "[" x 5000
        log.warning("upstream_garbage", server=server, size=len(text))
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            yield item
        else:
            log.warning("upstream_garbage", server=server, size=len(text))
