"""Prometheus metrics (prometheus-client), served at ``/metrics``.

Label sets stay bounded: server names come from the configuration, methods
are MCP method names (unknown ones are counted as ``other``), outcomes and
front doors are fixed words. Never a session id.

Each gateway app gets its own :class:`Metrics` on its own registry, so that
several apps in one process (tests) do not collide. The registry also carries
prometheus-client's ``process_*`` series (resident memory, CPU seconds, open
file descriptors and their limit, start time; Linux ``/proc``), and no
``_created`` series: prometheus-client adds one per counter and histogram
child, which doubles the series count and that the dashboard never reads.
"""

from __future__ import annotations

import re
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

#: MCP methods counted by name; anything else is "other" (bounded labels).
KNOWN_METHODS: Final = frozenset(
    {
        "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
        "resources/templates/list", "resources/subscribe", "resources/unsubscribe",
        "prompts/list", "prompts/get", "completion/complete", "logging/setLevel",
        "notifications/initialized", "notifications/cancelled", "notifications/progress",
        "notifications/roots/list_changed", "tasks/get", "tasks/result", "tasks/cancel",
        "tasks/list", "response",
    }
)  # fmt: skip
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: clientInfo.name labels: at most this many distinct names, then "other".
MAX_CLIENT_NAMES: Final = 50
_CLIENT_NAME_LENGTH: Final = 40
_NOT_IN_CLIENT_LABEL = re.compile(r"[^a-z0-9._-]+")
#: Target labels (tool names, URI schemes) per server and method: at most this
#: many distinct ones, then "other" (a client can send any tool name).
MAX_TARGETS: Final = 100
_TARGET_LENGTH: Final = 64
_NOT_IN_TARGET_LABEL = re.compile(r"[^A-Za-z0-9._/+-]+")


def client_label(name: object) -> str:
    """clientInfo.name as a bounded label: lowercase, [a-z0-9._-], 40 chars."""
    if not isinstance(name, str):
        return "unknown"
    label = _NOT_IN_CLIENT_LABEL.sub("_", name.lower())[:_CLIENT_NAME_LENGTH]
    return label or "unknown"


def end_reason(reason: str, forgotten: bool) -> str:
    """A bounded label for why a live session was released."""
    if "DELETE" in reason:
        return "deleted"
    if reason.startswith("idle"):
        return "idle"
    if "legacy client left" in reason:
        return "legacy_client_left"
    if "shutting down" in reason:
        return "shutdown"
    if "deleted elsewhere" in reason:
        return "evicted"
    if reason.startswith("configuration reloaded"):
        return "reconfigured"
    if reason.startswith("limit"):
        return "limit"
    if forgotten:
        return "initialize_failed"
    return "upstream_lost"


def method_label(method: str | None) -> str:
    if method is None:
        return "none"
    return method if method in KNOWN_METHODS else "other"


class Metrics:
    def __init__(self) -> None:
        # Process-wide in prometheus-client, so set on each construction: no
        # ``_created`` series on any registry of this process.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.sessions_active = Gauge(
            "mcp_bridge_sessions_active", "Live sessions (with an upstream connection)",
            ["server"], registry=r,
        )  # fmt: skip
        self.streams_open = Gauge(
            "mcp_bridge_streams_open", "Open downstream SSE streams",
            ["server", "front_door", "kind"], registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "mcp_bridge_requests_total", "JSON-RPC messages from clients, by outcome",
            ["server", "front_door", "method", "outcome"], registry=r,
        )  # fmt: skip
        self.http_duration = Histogram(
            "mcp_bridge_http_request_duration_seconds",
            "Time to answer an HTTP request (to the start of a stream for SSE)",
            ["front_door", "http_method", "status_class"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "mcp_bridge_upstream_response_seconds",
            "From sending a request upstream to its response", ["server", "method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_connects = Counter(
            "mcp_bridge_upstream_connects_total", "Upstream connections opened, by outcome",
            ["server", "outcome"], registry=r,
        )  # fmt: skip
        self.upstream_losses = Counter(
            "mcp_bridge_upstream_losses_total", "Upstream connections lost (crash, cut, error)",
            ["server"], registry=r,
        )  # fmt: skip
        self.resumes = Counter(
            "mcp_bridge_session_resumes_total",
            "Sessions resumed from the store (handshake replayed upstream), by outcome",
            ["server", "outcome"], registry=r,
        )  # fmt: skip
        self.replays = Counter(
            "mcp_bridge_replays_total", "Last-Event-ID resumptions", ["server"], registry=r
        )
        self.events_replayed = Counter(
            "mcp_bridge_events_replayed_total", "Events sent again on resumed streams",
            ["server"], registry=r,
        )  # fmt: skip
        self.interrupted = Counter(
            "mcp_bridge_interrupted_requests_total",
            "Requests found interrupted by a restart, by what was done",
            ["server", "action"], registry=r,
        )  # fmt: skip
        self.limited = Counter(
            "mcp_bridge_limited_total",
            "Requests refused by a limit (sessions, sessions_per_principal, requests_per_session, "
            "subscriptions_per_session, streams_per_principal, bytes_per_session, "
            "bytes_per_principal), events not stored (stored_bytes_per_session, "
            "stored_bytes_per_principal), and connections (connections, connections_evicted, "
            "header_timeout, accept); records_per_principal counts stored records "
            "deleted for a principal's newer ones",
            ["limit"],
            registry=r,
        )
        self.open_connections = Gauge(
            "mcp_bridge_open_connections",
            "Client connections open (admitted under BRIDGE_MAX_CONNECTIONS)",
            registry=r,
        )
        self.store_errors = Counter(
            "mcp_bridge_store_errors_total",
            "Store operations that failed",
            ["operation"],
            registry=r,
        )
        self.store_latency = Histogram(
            "mcp_bridge_store_operation_seconds", "Store operation latency", ["operation"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.sessions_ended = Counter(
            "mcp_bridge_sessions_ended_total", "Sessions released or forgotten, by reason",
            ["server", "reason"], registry=r,
        )  # fmt: skip

        self.pool_sessions = Gauge(
            "mcp_bridge_pool_upstream_sessions",
            "Upstream sessions (children, connections) held by each server's pool, by state",
            ["server", "state"], registry=r,
        )  # fmt: skip
        self.pool_waiting = Gauge(
            "mcp_bridge_pool_waiting", "Requests waiting for an upstream session", ["server"],
            registry=r,
        )  # fmt: skip
        self.pool_starts = Counter(
            "mcp_bridge_pool_starts_total", "Upstream sessions the pool started, by outcome",
            ["server", "outcome"], registry=r,
        )  # fmt: skip
        self.pool_dropped = Counter(
            "mcp_bridge_pool_dropped_total",
            "Upstream messages on a shared session delivered to no client, by reason",
            ["server", "reason"], registry=r,
        )  # fmt: skip
        self.stderr_dropped = Counter(
            "mcp_bridge_stderr_dropped",
            "stdio children's stderr lines not logged (past BRIDGE_STDERR_LOG_LINES per "
            "BRIDGE_STDERR_LOG_INTERVAL)",
            ["server"], registry=r,
        )  # fmt: skip

        self.client_sessions = Counter(
            "mcp_bridge_client_sessions_total",
            "Sessions initialized, by front door and clientInfo.name (bounded; then other)",
            ["front_door", "client"], registry=r,
        )  # fmt: skip
        self._client_names: set[str] = set()
        self.targets = Counter(
            "mcp_bridge_request_targets_total",
            "tools/call by tool name and resources/read by URI scheme (target: at most "
            f"{MAX_TARGETS} distinct per server and method, then other), by outcome",
            ["server", "method", "target", "outcome"], registry=r,
        )  # fmt: skip
        self._targets: dict[tuple[str, str], set[str]] = {}
        # Replicas (issue #12): the bus between them and session takeovers.
        self.forwarded = Counter(
            "mcp_bridge_bus_forwarded_total",
            "HTTP exchanges forwarded over the replica bus: out (to a session's owner) or "
            "in (served here for another replica)",
            ["direction"], registry=r,
        )  # fmt: skip
        self.forward_seconds = Histogram(
            "mcp_bridge_bus_forward_seconds",
            "From forwarding an exchange to the owner's acknowledgement (the bus's own latency)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.takeovers = Counter(
            "mcp_bridge_takeovers_total",
            "Sessions taken over from a replica whose lease had lapsed", registry=r,
        )  # fmt: skip
        # Labelled children by label values: prometheus-client's labels() takes a
        # lock and checks every value each call (issue #13); the label sets are bounded.
        self._durations: dict[tuple[str, str, str], Any] = {}
        self._requests: dict[tuple[str, str, str, str], Any] = {}

    def observe_http(self, front_door: str, http_method: str, status: int, seconds: float) -> None:
        """One HTTP request answered (``http_duration``), by status class."""
        key = (front_door, http_method, f"{status // 100}xx")
        child = self._durations.get(key)
        if child is None:
            child = self._durations[key] = self.http_duration.labels(*key)
        child.observe(seconds)

    def count_request(self, server: str, front_door: str, method: str, outcome: str) -> None:
        """One JSON-RPC message from a client (``requests``); ``method`` already a label."""
        key = (server, front_door, method, outcome)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()

    def count_client(self, front_door: str, name: object) -> None:
        """Count one initialize by client name; past 50 names new ones are "other"."""
        label = client_label(name)
        if label not in self._client_names:
            if len(self._client_names) >= MAX_CLIENT_NAMES:
                label = "other"
            else:
                self._client_names.add(label)
        self.client_sessions.labels(front_door, label).inc()

    def count_target(self, server: str, method: str, target: str, outcome: str) -> None:
        """Count a tools/call or resources/read by its (bounded) target label."""
        label = _NOT_IN_TARGET_LABEL.sub("_", target)[:_TARGET_LENGTH] or "none"
        seen = self._targets.setdefault((server, method), set())
        if label not in seen:
            if len(seen) >= MAX_TARGETS:
                label = "other"
            else:
                seen.add(label)
        self.targets.labels(server, method, label, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
