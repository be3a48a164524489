"""The configured servers of a running gateway: how each is built, and how a new
configuration replaces them without a restart (issue #14 "reload").

:class:`ServerSet` holds the specs in force. :meth:`ServerSet.apply` compares a
newly loaded list with them, by name:

- **added**: a new upstream and pool; its URLs answer at once.
- **removed**: its live sessions end (pending requests get an error, streams
  close), its pool closes (children exit, connections close); the next
  request to its URLs gets 404. Records stay in the store until their TTL
  (a replica sharing the store may still serve the server).
- **changed** (any field differs): as removed, then added under the same
  name; the sessions' records are kept, so each client's next request resumes
  its session on the new definition (a replayed handshake, as after an
  upstream restart).
- **unchanged**: untouched, sessions and pools alike.

Settings other than the servers are read once, at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp

from bridge.hub import SessionHub
from bridge.log import redact
from bridge.metrics import Metrics
from bridge.pool import Pool, PoolConfig, SessionTimeouts
from bridge.settings import ServerSpec, Settings, SseServer, StdioServer, StreamableHttpServer
from bridge.upstreams.base import RestartPolicy, Upstream, UpstreamTimeouts
from bridge.upstreams.detect import AutoHttpUpstream
from bridge.upstreams.sse import SseUpstream
from bridge.upstreams.stdio import StdioUpstream
from bridge.upstreams.streamable_http import StreamableHttpUpstream

#: The reason a reload gives the sessions it ends (metrics label ``reconfigured``).
REMOVED: Final = "configuration reloaded: server removed"
CHANGED: Final = "configuration reloaded: server changed"


def upstream_timeouts(settings: Settings) -> UpstreamTimeouts:
    """The upstream bounds (seconds, bytes, counts) ``settings`` give every server."""
    return UpstreamTimeouts(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        send=settings.upstream_send_timeout,
        shutdown_grace=settings.stdio_shutdown_grace,
        max_message_bytes=settings.max_message_bytes,
        max_posts=settings.upstream_max_posts,
        stderr_log_lines=settings.stderr_log_lines,
        stderr_log_interval=settings.stderr_log_interval,
        restart=RestartPolicy(
            backoff_base=settings.stdio_restart_backoff_base,
            backoff_max=settings.stdio_restart_backoff_max,
            wait=settings.stdio_restart_wait,
            healthy_after=settings.stdio_healthy_after,
        ),
    )


def make_upstream(
    spec: ServerSpec,
    client: aiohttp.ClientSession,
    timeouts: UpstreamTimeouts,
    metrics: Metrics | None = None,
) -> Upstream:
    if isinstance(spec, StdioServer):
        return StdioUpstream(spec, timeouts, metrics)
    if isinstance(spec, SseServer):
        return SseUpstream(spec, client, timeouts)
    if isinstance(spec, StreamableHttpServer):
        return StreamableHttpUpstream(spec, client, timeouts)
    return AutoHttpUpstream(spec, client, timeouts)


#: Upstream sessions per server when neither the server nor the settings say.
DEFAULT_POOL_MAX: Final = {"none": 100, "principal": 16, "all": 16}


def pool_config(spec: ServerSpec, settings: Settings) -> PoolConfig:
    """A server's pool bounds: its own ``share`` and ``pool`` fields, else the settings'."""
    share = spec.share or settings.share
    own = spec.pool
    maximum = own.max or settings.pool_max or DEFAULT_POOL_MAX[share]
    forward = getattr(spec, "forward_headers", ())
    return PoolConfig(
        share=share,
        min=min(own.min if own.min is not None else settings.pool_min, maximum),
        max=maximum,
        max_starting=own.max_starting or settings.pool_max_starting,
        wait_timeout=settings.pool_wait_timeout,
        max_waiting=settings.pool_max_waiting,
        idle_timeout=own.idle_timeout or settings.pool_idle_timeout,
        # The client session's own stream queue (stream_queue_*) applies after
        # this one; this only catches a session that reads nothing at all.
        channel_limit=settings.stream_queue_size * 16,
        channel_bytes=settings.stream_queue_bytes * 2,
        timeouts=SessionTimeouts(
            initialize=settings.initialize_timeout,
            ping_interval=settings.pool_ping_interval,
            ping_timeout=settings.pool_ping_timeout,
            close=settings.stdio_shutdown_grace * 3 + 1,
        ),
        forward_headers=tuple(forward),
        target=public_target(spec),
    )


def public_target(spec: ServerSpec) -> dict[str, str]:
    """What ``spec`` runs or reaches, fit for anyone's eyes: the command (not its
    arguments or environment, which may hold secrets) or the URL, its userinfo
    and anything that looks like a credential redacted (:func:`bridge.log.redact`)."""
    if isinstance(spec, StdioServer):
        return {"command": redact(spec.command)}
    return {"url": redact(str(spec.url))}


def endpoint_paths(servers: Sequence[ServerSpec]) -> frozenset[str]:
    """Every MCP endpoint path (README "URLs"), e.g. for RFC 9728 metadata lookups."""
    names = [f"/servers/{spec.name}" for spec in servers] + ([""] if len(servers) == 1 else [])
    return frozenset(f"{base}/{leaf}" for base in names for leaf in ("http", "mcp", "sse"))


@dataclass(frozen=True, slots=True)
class Change:
    """What a reload did, by server name (each tuple sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


class ServerSet:
    """The servers in force, their pools built from ``settings`` on the shared ``client``."""

    def __init__(
        self,
        specs: Sequence[ServerSpec],
        settings: Settings,
        client: aiohttp.ClientSession,
        metrics: Metrics,
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self._settings = settings
        self._client = client
        self._metrics = metrics
        self._timeouts = upstream_timeouts(settings)
        self._endpoints = endpoint_paths(specs)
        self._lock = asyncio.Lock()
        #: Called with each pool made by a reload, before it serves (the
        #: 2026-07-28 front door's reclaim hook, warming).
        self.on_new_pool: Callable[[Pool], None] = lambda pool: None

    def pools(self, specs: Iterable[ServerSpec]) -> dict[str, Pool]:
        """A new upstream and pool for each of ``specs``, by name."""
        pools = {}
        for spec in specs:
            upstream = make_upstream(spec, self._client, self._timeouts, self._metrics)
            pools[spec.name] = Pool(upstream, pool_config(spec, self._settings), self._metrics)
        return pools

    def is_endpoint(self, path: str) -> bool:
        """Whether ``path`` is an MCP endpoint of the servers now in force."""
        return path in self._endpoints

    async def apply(self, hub: SessionHub, specs: Sequence[ServerSpec]) -> Change:
        """Make ``specs`` the servers in force (module docstring); one reload at a time.

        New pools serve before this awaits anything; it returns once the
        sessions and pools of removed and changed servers are closed (each
        close bounded by its own grace).
        """
        async with self._lock:
            new = {spec.name: spec for spec in specs}
            old = self.specs
            change = Change(
                added=tuple(sorted(new.keys() - old.keys())),
                removed=tuple(sorted(old.keys() - new.keys())),
                changed=tuple(sorted(n for n in new.keys() & old.keys() if new[n] != old[n])),
                unchanged=tuple(sorted(n for n in new.keys() & old.keys() if new[n] == old[n])),
            )
            if not change:
                return change
            pools = self.pools(new[name] for name in (*change.added, *change.changed))
            for pool in pools.values():
                self.on_new_pool(pool)
            self.specs = new
            self._endpoints = endpoint_paths(specs)
            ending = {name: REMOVED for name in change.removed}
            ending.update({name: CHANGED for name in change.changed})
            await hub.replace_servers(pools, ending)
            return change
