"""Settings: the only place that reads the environment.

:class:`Settings` comes from, in order of precedence, command-line flags
(:mod:`bridge.options` builds them from its fields), ``BRIDGE_*`` environment
variables and defaults (pydantic-settings). The servers, and the mcpServers
file they come from, are :mod:`bridge.servers`' (re-exported here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import platformdirs
from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridge.servers import (
    CLIENT_ONLY_KEYS,
    SERVER_NAME,
    STREAMABLE_TYPES,
    UNFORWARDABLE,
    AutoHttpServer,
    PoolSpec,
    ServerFile,
    ServerSpec,
    SseServer,
    StdioServer,
    StreamableHttpServer,
    expand_vars,
    load_servers,
    parse_servers,
    read_server_sources,
    read_servers,
)
from bridge.values import (
    BYTES,
    MILLISECONDS,
    SECONDS,
    Bytes,
    Count,
    Seconds,
    SecondsOrZero,
    Unit,
    describe,
)

#: Re-exported: what other modules long imported from here.
__all__ = [
    "APP_NAME",
    "BYTES",
    "CLIENT_ONLY_KEYS",
    "MILLISECONDS",
    "SECONDS",
    "SERVER_NAME",
    "STREAMABLE_TYPES",
    "UNFORWARDABLE",
    "AutoHttpServer",
    "Bytes",
    "Count",
    "Names",
    "PoolSpec",
    "Seconds",
    "SecondsOrZero",
    "ServerFile",
    "ServerSources",
    "ServerSpec",
    "Settings",
    "SseServer",
    "StdioServer",
    "StreamableHttpServer",
    "Unit",
    "default_store_url",
    "describe",
    "expand_vars",
    "load_servers",
    "parse_servers",
    "read_server_sources",
    "read_servers",
]


def _split_list(value: Any) -> Any:
    """A list setting from the environment or a flag: ``a,b``, or JSON ``["a", "b"]``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a JSON list") from None
        return [item.strip() for item in text.split(",") if item.strip()]
    if isinstance(value, list | tuple):  # repeated flags, each maybe a,b
        return [item for part in value for item in _split_list(part)]
    return value


#: A list setting: comma-separated or a JSON list, in the environment as on the
#: command line (``BRIDGE_ALLOWED_HOSTS=a,b``; issue #14). NoDecode: pydantic-settings
#: would otherwise insist on JSON in the environment.
Names = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]

APP_NAME: Final = "mcp-bridge"


def default_store_url() -> str:
    """SQLite in the platform's state directory (``$XDG_STATE_HOME/mcp-bridge`` on Linux).

    Independent of the working directory, so ``mcp-bridge sessions list`` run
    from ``/`` finds the same store as the gateway, and creates nothing there.
    """
    return f"sqlite:///{platformdirs.user_state_path(APP_NAME) / 'sessions.db'}"


class ServerSources(BaseSettings):
    """Where the servers come from: the three settings :func:`load_servers` reads."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", env_ignore_empty=True, extra="ignore")

    config: Path | None = Field(
        None, description="mcpServers file (JSON or YAML; Claude Desktop, Cursor, Cline, "
        "Windsurf, VS Code dialects)",
    )  # fmt: skip
    stdio: str | None = Field(None, description="one stdio upstream: 'COMMAND ARGS...'")
    sse: str | None = Field(None, description="one legacy HTTP+SSE upstream URL")


class Settings(ServerSources):
    """Every knob of the gateway. Times are in seconds, sizes in bytes."""

    config_watch: bool = Field(
        False,
        description="reload the servers when the config file changes (SIGHUP always does)",
    )
    config_watch_interval: Seconds = Field(
        2.0, description="how often the config file is checked for a change (config_watch)"
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")

    allowed_hosts: Names = Field(
        default_factory=list,
        description="Host names clients may use; empty: loopback names when bound to loopback",
    )
    allowed_origins: Names = Field(
        default_factory=list,
        description="extra browser Origins (scheme://host[:port]) allowed besides same-host ones",
    )

    admin_token: SecretStr | None = Field(
        None, description="enables /admin/sessions; callers send it as a Bearer token"
    )

    api_keys: SecretStr | None = Field(
        None,
        description="front-door API keys, comma-separated: NAME:TOKEN or NAME:sha256:HEX; "
        "clients send 'Authorization: Bearer TOKEN'",
    )
    api_keys_file: Path | None = Field(
        None, description="file of API keys, one NAME:TOKEN or NAME:sha256:HEX per line"
    )
    oauth_issuer: str | None = Field(
        None, description="OAuth 2.1 resource-server mode: the trusted issuer (iss)"
    )
    oauth_jwks_url: str | None = Field(
        None, description="the issuer's JWKS URL (required with oauth_issuer)"
    )
    oauth_audience: Names = Field(
        default_factory=list,
        description="accepted token audiences; empty: the endpoint's URL or public_url",
    )
    oauth_scopes: Names = Field(
        default_factory=list, description="scopes every token must carry (403 without)"
    )
    oauth_algorithms: Names = Field(
        ["RS256", "ES256"], description="accepted JWT signing algorithms"
    )
    oauth_leeway: SecondsOrZero = Field(30.0, description="clock skew allowed on exp/nbf/iat")
    oauth_jwks_timeout: Seconds = Field(5.0, description="one JWKS fetch from the issuer")
    oauth_jwks_failure_ttl: Seconds = Field(
        10.0,
        description="after a JWKS fetch failed, requests that need the keys get 503 with "
        "Retry-After for this long, without fetching again",
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="the gateway's external base URL (e.g. https://mcp.example.com); "
        "required with oauth_issuer; names the resource in RFC 9728 metadata",
    )

    max_sessions: int = Field(
        10000, ge=1, description="live client sessions per gateway process (503 above)"
    )
    max_sessions_per_principal: int = Field(
        100,
        ge=1,
        description="live sessions with an upstream of their own (share none) one principal "
        "may hold per process (429 above); sessions on shared upstreams are bounded by the pool",
    )
    max_requests_per_session: int = Field(
        64, ge=1, description="requests in flight in one session (429 above)"
    )
    max_subscriptions_per_session: int = Field(
        100,
        ge=1,
        description="resources one session may be subscribed to; a resources/subscribe past it "
        "gets a -32602 error and is neither sent upstream nor stored",
    )

    max_session_bytes: Bytes = Field(
        32 * 1024 * 1024,
        description="bytes a session holds in memory: its requests in flight (their bodies) "
        "and the answers its client has not read yet; past it its next request gets 429",
    )
    max_principal_bytes: Bytes = Field(
        128 * 1024 * 1024,
        description="the same for all of one principal's sessions in this process (429 above)",
    )
    max_stored_bytes_per_session: Bytes = Field(
        64 * 1024 * 1024,
        description="bytes of events one session stores for replay while live in this process; "
        "later events are sent without an id (not resumable)",
    )
    max_stored_bytes_per_principal: Bytes = Field(
        256 * 1024 * 1024,
        description="the same for all of one principal's live sessions in this process",
    )
    max_streams_per_principal: int = Field(
        256,
        ge=1,
        description="GET streams (legacy /sse and Streamable HTTP) one principal holds open at "
        "once per process (429 above)",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="open client connections per process; 0: the open-files limit "
        "(RLIMIT_NOFILE) minus fd_reserve minus 128 (room for bursts of accept()). Past it the "
        "oldest connection with no request in progress is closed, else the new one is",
    )
    fd_reserve: int = Field(
        64,
        ge=0,
        description="file descriptors kept free of client connections (for upstreams, children "
        "and the store) when max_connections is 0",
    )
    header_timeout: Seconds = Field(
        10.0,
        description="a client connection must deliver a request's line and headers within this "
        "long of its first byte (or of connecting), else it is closed",
    )
    body_timeout: Seconds = Field(
        30.0, description="a request body must arrive within this long of its headers (408 above)"
    )
    accept_error_log_interval: Seconds = Field(
        10.0,
        description="failed accept() calls (out of file descriptors) are counted and logged at "
        "most once per this interval",
    )

    share: Literal["none", "principal", "all"] = Field(
        "principal",
        description="how client sessions share upstream sessions, for servers that do not say: "
        "none (one each), principal (per principal; with auth off, everyone) or all",
    )
    pool_min: int = Field(
        0, ge=0, description="upstream sessions (or, with share none, spare connections) kept "
        "started per server, for servers that do not say",
    )  # fmt: skip
    pool_max: int | None = Field(
        None, ge=1, description="upstream sessions (children, connections) per server, for "
        "servers that do not say; default 16, or 100 with share none",
    )  # fmt: skip
    pool_max_starting: int = Field(
        4, ge=1, description="upstream sessions one server's pool starts at once (a burst queues)"
    )
    pool_wait_timeout: Seconds = Field(
        30.0, description="a request waits this long for a free upstream session, then 503"
    )
    pool_max_waiting: int = Field(
        10000, ge=1, description="requests waiting for a server's upstream sessions (503 above)"
    )
    pool_idle_timeout: Seconds = Field(
        300.0, description="close a shared upstream session unused this long (down to pool_min)"
    )
    pool_ping_interval: Seconds = Field(
        30.0, description="ping a shared upstream session silent this long (health check)"
    )
    pool_ping_timeout: Seconds = Field(
        10.0, description="a shared upstream session that does not answer a ping in time is lost"
    )

    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="auto (uvloop where it is installed, else asyncio's), uvloop or asyncio",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error"
    )
    log_format: Literal["auto", "console", "json"] = Field(
        "auto", description="auto (console on a TTY, JSON lines otherwise), console or json"
    )
    log_request_start_after: float = Field(
        10.0,
        ge=0,
        description="a request still running this long gets a request_start log line besides "
        "its request line at the end (GET streams too); 0: every request",
    )
    otlp_endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="OTLP/HTTP collector base URL for traces, e.g. http://otel-collector:4318 "
        "(sent to /v1/traces; needs the otel extra); unset: OTEL_EXPORTER_OTLP_ENDPOINT if "
        "set, else no tracing",
    )

    max_body_bytes: Bytes = Field(4 * 1024 * 1024, description="POST body limit (413 above)")
    max_message_bytes: Bytes = Field(
        16 * 1024 * 1024, description="largest message accepted from an upstream"
    )
    store_url: str = Field(
        default_factory=default_store_url,
        description="where sessions live: memory://, sqlite:///PATH, redis://HOST:PORT/DB, "
        "rediss://..., redis+cluster://HOST:PORT (a Redis Cluster, any one node), "
        "rediss+cluster://...; default: SQLite in the platform's state directory",
    )
    store_prefix: str = Field("mcpb", description="Redis key prefix")
    store_timeout: Seconds = Field(5.0, description="one store operation (connect, read, write)")
    replica_lease: Seconds = Field(
        10.0,
        description="replicas on one Redis: a replica counts as alive this long after it last "
        "renewed its lease (every third of it); a killed replica's sessions are taken over "
        "after it",
    )
    forward_timeout: Seconds = Field(
        5.0,
        description="replicas on one Redis: the replica holding a session has this long to "
        "acknowledge a request forwarded to it over the bus",
    )
    store_probe_timeout: Seconds = Field(
        5.0,
        description="the /readyz store probe as a whole (a write and a read of a probe record); "
        "past it the store is reported unavailable",
    )
    session_ttl: Seconds = Field(
        7 * 24 * 3600.0, description="a session is forgotten this long after its last use"
    )
    session_unused_ttl: Seconds = Field(
        900.0,
        description="a session that did nothing but initialize is forgotten this long after "
        "it; its first request, notification or GET stream gives it session_ttl",
    )
    max_records_per_principal: int = Field(
        1000,
        ge=1,
        description="session records one principal keeps in the store (live or not); a new "
        "one past it deletes that principal's longest-unused records",
    )
    upstream_idle_timeout: Seconds = Field(
        1800.0,
        description="release a session's upstream (child, SSE stream) after no request and no "
        "open stream for this long; the session itself lives on until session_ttl",
    )
    event_max_events: Count = Field(1000, description="events kept per SSE stream for replay")
    event_max_age: Seconds = Field(86400.0, description="events older than this are dropped")
    sse_keepalive_interval: Seconds = Field(15.0, description="SSE comment keepalive period")
    sse_retry_ms: Annotated[int, Field(gt=0), MILLISECONDS] = Field(
        1000, description="milliseconds a 2025-11-25 client waits before resuming a stream"
    )
    sse_poll_after: SecondsOrZero = Field(
        0.0,
        description="close a 2025-11-25 client's stream after this long so that it polls "
        "(resumes with Last-Event-ID); 0: never",
    )
    sse_send_timeout: Seconds = Field(
        60.0, description="abort a downstream stream whose client reads nothing for this long"
    )
    stream_queue_size: Count = Field(
        256, description="messages buffered per downstream stream before the upstream waits"
    )
    stream_queue_bytes: Bytes = Field(
        16 * 1024 * 1024,
        description="bytes of messages buffered per downstream stream (queued for its client, "
        "or kept for a GET stream not yet open); a single larger message still passes",
    )
    standalone_buffer_size: Count = Field(
        1024, description="messages kept for a standalone GET stream not yet open"
    )
    upstream_connect_timeout: Seconds = Field(
        10.0, description="connect, spawn, and wait for the legacy 'endpoint' event"
    )
    upstream_read_timeout: Seconds = Field(
        300.0, description="HTTP upstreams: longest silence on an SSE stream before it is dead"
    )
    upstream_send_timeout: Seconds = Field(
        30.0, description="one message to an upstream: an HTTP POST or a stdio write"
    )
    upstream_max_posts: int = Field(
        8, ge=1, description="legacy SSE upstreams: POSTs in flight at once per server (each "
        "holds a connection); more wait their turn within upstream_send_timeout",
    )  # fmt: skip
    initialize_timeout: Seconds = Field(30.0, description="upstream answer to initialize")
    upstream_request_timeout: Seconds = Field(
        600.0,
        description="upstream answer to any request (tool calls can be slow); then a "
        "-32032 error to the client and notifications/cancelled upstream",
    )
    input_gather_window: Seconds = Field(
        0.05,
        description="2026-07-28 clients: server-to-client requests an upstream sends within this "
        "long of each other are asked of the client together, in one InputRequiredResult",
    )
    input_hold_timeout: Seconds = Field(
        300.0,
        description="2026-07-28 clients: how long an upstream call waits for the client's retry "
        "with inputResponses (and its requestState stays valid); then it is cancelled upstream",
    )
    max_held_requests: int = Field(
        1000, ge=1, description="2026-07-28 clients: upstream calls held for input at once; "
        "past it a request that needs input gets 503",
    )  # fmt: skip
    state_secret: SecretStr | None = Field(
        None,
        description="HMAC key (any string) for 2026-07-28 requestState tokens; unset: one is "
        "made and shared through the session store, so replicas sharing a store agree",
    )
    stdio_shutdown_grace: Seconds = Field(
        2.0, description="stdio: wait after closing stdin, and again after SIGTERM"
    )
    stdio_restart_backoff_base: Seconds = Field(
        0.5,
        description="stdio: delay before a server whose child crashed (exited by itself within "
        "stdio_healthy_after, or failed to start) starts another; doubles with each crash in a "
        "row, with jitter (half to all of it)",
    )
    stdio_restart_backoff_max: Seconds = Field(30.0, description="stdio: longest restart delay")
    stdio_restart_wait: SecondsOrZero = Field(
        1.0,
        description="stdio: a request that needs a child during the restart delay waits at most "
        "this long for it; if the delay is longer, it gets 503 with Retry-After at once",
    )
    stdio_healthy_after: Seconds = Field(
        10.0, description="stdio: a child that runs this long resets the restart delay"
    )
    stderr_log_lines: int = Field(
        100,
        gt=0,
        description="stdio: stderr lines of one child logged per BRIDGE_STDERR_LOG_INTERVAL "
        "(a burst may use them at once); the rest are counted, not logged",
    )
    stderr_log_interval: Seconds = Field(
        10.0,
        description="stdio: the interval of BRIDGE_STDERR_LOG_LINES; lines dropped are "
        "logged as a count once per interval",
    )
    shutdown_timeout: Seconds = Field(10.0, description="graceful shutdown budget")
    public_path_prefix: str = Field(
        "",
        pattern=r"^(/[^?#\s]*)?$",
        description="path the gateway is mounted under behind a reverse proxy (e.g. /mcp-gw); "
        "prefixes the legacy 'endpoint' URL",
    )
    legacy_grace: Seconds = Field(
        30.0,
        description="a legacy SSE session is ended this long after its GET stream closed",
    )
    legacy_deprecation_header: str = Field(
        "",
        description="value of a Deprecation header on legacy SSE responses ('true' or an "
        "HTTP-date); empty: none",
    )

    @model_validator(mode="after")
    def _oauth_complete(self) -> Settings:
        # The audience check must not trust a client's Host header (a token
        # minted for another server would pass): the resource URL is configured.
        incomplete = self.oauth_jwks_url is None or self.public_url is None
        if self.oauth_issuer is not None and incomplete:
            raise ValueError("oauth_issuer needs oauth_jwks_url and public_url")
        return self

    @property
    def auth_enabled(self) -> bool:
        """Whether the front doors ask for credentials."""
        return bool(self.api_keys or self.api_keys_file or self.oauth_issuer)
