"""Settings and server specs: the only place that reads the environment.

:class:`Settings` comes from, in order of precedence, command-line flags,
``BRIDGE_*`` environment variables and defaults (pydantic-settings). Servers
come from an ``mcpServers`` file (the format Claude Desktop and Cursor use,
JSON or YAML) or from one ``--stdio`` / ``--sse`` flag, and are validated once
into the :data:`ServerSpec` union by :func:`load_servers`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.errors import ConfigError

Seconds = Annotated[float, Field(gt=0)]
Bytes = Annotated[int, Field(gt=0)]

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Settings(BaseSettings):
    """Every knob of the gateway. Times are in seconds, sizes in bytes."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_ignore_empty=True,
        cli_kebab_case=True,
        cli_prog_name="mcp-bridge",
        extra="ignore",
    )

    config: Path | None = Field(None, description="mcpServers file (JSON or YAML)")
    stdio: str | None = Field(None, description="one stdio upstream: 'COMMAND ARGS...'")
    sse: str | None = Field(None, description="one legacy HTTP+SSE upstream URL")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names clients may use; empty: loopback names when bound to loopback",
    )
    allowed_origins: list[str] = Field(
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
    oauth_audience: list[str] = Field(
        default_factory=list,
        description="accepted token audiences; empty: the endpoint's URL or public_url",
    )
    oauth_scopes: list[str] = Field(
        default_factory=list, description="scopes every token must carry (403 without)"
    )
    oauth_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"], description="accepted JWT signing algorithms"
    )
    oauth_leeway: float = Field(30.0, ge=0, description="clock skew allowed on exp/nbf/iat")
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

    max_body_bytes: Bytes = Field(4 * 1024 * 1024, description="POST body limit (413 above)")
    max_message_bytes: Bytes = Field(
        16 * 1024 * 1024, description="largest message accepted from an upstream"
    )
    store_url: str = Field(
        "sqlite:///./.mcp-bridge/sessions.db",
        description="where sessions live: memory://, sqlite:///PATH, redis://HOST:PORT/DB, rediss://...",
    )
    store_prefix: str = Field("mcpb", description="Redis key prefix")
    store_timeout: Seconds = Field(5.0, description="one store operation (connect, read, write)")
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
    event_max_events: Bytes = Field(1000, description="events kept per SSE stream for replay")
    event_max_age: Seconds = Field(86400.0, description="events older than this are dropped")
    sse_keepalive_interval: Seconds = Field(15.0, description="SSE comment keepalive period")
    sse_retry_ms: Bytes = Field(
        1000, description="milliseconds a 2025-11-25 client waits before resuming a stream"
    )
    sse_poll_after: float = Field(
        0.0,
        ge=0,
        description="close a 2025-11-25 client's stream after this long so that it polls "
        "(resumes with Last-Event-ID); 0: never",
    )
    sse_send_timeout: Seconds = Field(
        60.0, description="abort a downstream stream whose client reads nothing for this long"
    )
    stream_queue_size: Bytes = Field(
        256, description="messages buffered per downstream stream before the upstream waits"
    )
    stream_queue_bytes: Bytes = Field(
        16 * 1024 * 1024,
        description="bytes of messages buffered per downstream stream (queued for its client, "
        "or kept for a GET stream not yet open); a single larger message still passes",
    )
    standalone_buffer_size: Bytes = Field(
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
    stdio_restart_wait: float = Field(
        1.0,
        ge=0,
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


class PoolSpec(BaseModel):
    """A server's ``"pool"`` object; unset fields take the ``pool_*`` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=1)
    max_starting: int | None = Field(None, ge=1)
    idle_timeout: Seconds | None = None

    @model_validator(mode="after")
    def _ordered(self) -> PoolSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = ""
    #: How client sessions share this server's upstream sessions (README "Sharing");
    #: None: the ``share`` setting.
    share: Literal["none", "principal", "all"] | None = None
    pool: PoolSpec = Field(default_factory=PoolSpec)


class StdioServer(_Spec):
    """An upstream run as a child process speaking newline-delimited JSON-RPC."""

    command: str = Field(min_length=1)
    type: Literal["stdio"] | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


#: Headers a server's ``forward_headers`` may not name: the transport's own,
#: hop-by-hop ones, and what would let a client steer the gateway's requests.
UNFORWARDABLE = frozenset(
    {
        "accept", "connection", "content-encoding", "content-length", "content-type",
        "cookie", "expect", "host", "keep-alive", "last-event-id", "mcp-protocol-version",
        "mcp-session-id", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade",
    }
)  # fmt: skip
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _HttpSpec(_Spec):
    url: AnyHttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    #: Client request headers passed on to this server, e.g. ``["Authorization"]``:
    #: token passthrough, off unless listed (spec 2025-11-25 authorization
    #: §Access Token Privilege Restriction; spec-notes §1.15).
    forward_headers: tuple[str, ...] = ()

    @field_validator("forward_headers")
    @classmethod
    def _forwardable(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not _TOKEN.match(name) or name.lower() in UNFORWARDABLE:
                raise ValueError(f"header {name!r} cannot be forwarded")
        return names


class SseServer(_HttpSpec):
    """A legacy HTTP+SSE upstream (spec 2024-11-05)."""

    type: Literal["sse"] | None = None


#: ``type`` spellings of a Streamable HTTP server (mcpServers files differ between clients).
STREAMABLE_TYPES = ("streamable-http", "http", "streamableHttp")


class StreamableHttpServer(_HttpSpec):
    """A Streamable HTTP upstream (spec 2025-03-26 and later)."""

    type: Literal["streamable-http", "http", "streamableHttp"] | None = None


class AutoHttpServer(_HttpSpec):
    """An HTTP upstream of unstated transport: probed on first connect (spec-notes §2.5)."""

    type: None = None


ServerSpec = StdioServer | SseServer | StreamableHttpServer | AutoHttpServer


def expand_vars(value: Any, environ: dict[str, str]) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string, recursively.

    Raises:
        KeyError: a variable with no default is unset (the name is the key).
    """
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ and (environ[name] or default is None):
                return environ[name]
            if default is not None:
                return default
            raise KeyError(name)

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_vars(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_vars(v, environ) for v in value]
    return value


def _server_kind(entry: dict[str, Any]) -> type[ServerSpec]:
    kind = entry.get("type")
    if "command" in entry:
        if "url" in entry:
            raise ValueError("command/url: give one of them, not both")
        return StdioServer
    if "url" not in entry:
        raise ValueError('command/url: a server needs "command" (stdio) or "url" (HTTP)')
    if kind == "sse":
        return SseServer
    if kind in STREAMABLE_TYPES:
        return StreamableHttpServer
    if kind is None:
        # A path ending in /sse is the legacy convention (spec-notes §2.3);
        # anything else is probed (spec transports §Backwards Compatibility).
        path = urlsplit(str(entry["url"])).path.rstrip("/")
        return SseServer if path.endswith("/sse") else AutoHttpServer
    raise ValueError(f"type: unknown server type {kind!r} (expected 'sse' or 'streamable-http')")


def _parse_server(source: str, name: str, entry: Any, environ: dict[str, str]) -> ServerSpec:
    where = f"{source}: server {name!r}"
    if not SERVER_NAME.match(name):
        raise ConfigError(f"{where}: the name must match {SERVER_NAME.pattern}")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    expanded = {}
    for field, value in entry.items():
        try:
            expanded[field] = expand_vars(value, environ)
        except KeyError as exc:
            raise ConfigError(
                f"{where}: field {field!r}: environment variable {exc.args[0]} is not set"
            ) from None
    entry = expanded
    try:
        kind = _server_kind(entry)
    except ValueError as exc:
        field, _, text = str(exc).partition(": ")
        raise ConfigError(f"{where}: field {field!r}: {text}") from None
    try:
        return kind.model_validate({**entry, "name": name})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        raise ConfigError(f"{where}: field {field!r}: {err['msg']}") from None


def parse_servers(source: str, document: Any, environ: dict[str, str]) -> list[ServerSpec]:
    """Validate a decoded ``{"mcpServers": {...}}`` document.

    Raises:
        ConfigError: naming ``source``, the server and the field.
    """
    if not isinstance(document, dict) or not isinstance(document.get("mcpServers"), dict):
        raise ConfigError(f'{source}: expected an object with an "mcpServers" object')
    servers = document["mcpServers"]
    if not servers:
        raise ConfigError(f"{source}: mcpServers is empty")
    return [_parse_server(source, name, entry, environ) for name, entry in servers.items()]


def load_servers(settings: Settings, environ: dict[str, str] | None = None) -> list[ServerSpec]:
    """The servers named by ``--config``, ``--stdio`` or ``--sse``.

    Raises:
        ConfigError: no source, several sources, unreadable file, or a bad entry.
    """
    env = dict(os.environ) if environ is None else environ
    given = [s for s in (settings.config, settings.stdio, settings.sse) if s]
    if len(given) != 1:
        raise ConfigError("give exactly one of --config (BRIDGE_CONFIG), --stdio or --sse")
    if settings.stdio:
        argv = shlex.split(settings.stdio)
        if not argv:
            raise ConfigError("--stdio: empty command")
        entry: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
        return parse_servers("--stdio", {"mcpServers": {"default": entry}}, env)
    if settings.sse:
        return parse_servers(
            "--sse", {"mcpServers": {"default": {"url": settings.sse, "type": "sse"}}}, env
        )
    assert settings.config is not None
    path = settings.config
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    is_json = path.suffix == ".json"
    try:
        document = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {exc}") from None
    return parse_servers(str(path), document, env)
