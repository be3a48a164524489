"""Settings and server specs: the only place that reads the environment.

:class:`Settings` comes from, in order of precedence, command-line flags,
``BRIDGE_*`` environment variables and defaults (pydantic-settings). Servers
come from an ``mcpServers`` file (JSON or YAML, in the dialects of Claude
Desktop, Cursor, Cline, Windsurf, VS Code and Gemini CLI) or from one
``--stdio`` / ``--sse`` flag, and are validated once into the
:data:`ServerSpec` union by :func:`load_servers`. Command-line flags are built
from :class:`Settings`' fields by :mod:`bridge.options`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import platformdirs
import structlog
import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bridge.errors import ConfigError

log = structlog.get_logger("bridge.config")


@dataclass(frozen=True, slots=True)
class Unit:
    """A setting's unit, for ``--help`` (``METAVAR``) and its default (``30 s``)."""

    metavar: str
    symbol: str


SECONDS: Final = Unit("SECONDS", "s")
BYTES: Final = Unit("BYTES", "bytes")
MILLISECONDS: Final = Unit("MS", "ms")

Seconds = Annotated[float, Field(gt=0), SECONDS]
#: Seconds where 0 means "none" or "never" (each setting says which).
SecondsOrZero = Annotated[float, Field(ge=0), SECONDS]
Bytes = Annotated[int, Field(gt=0), BYTES]
Count = Annotated[int, Field(gt=0)]


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

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: ``${VAR}``, ``${VAR:-default}``, and VS Code's ``${env:VAR}``.
_VAR = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: VS Code's ``${input:ID}``: a value VS Code asks its user for; the gateway cannot.
_INPUT = re.compile(r"\$\{input:([^}]*)\}")
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
        default_factory=default_store_url,
        description="where sessions live: memory://, sqlite:///PATH, redis://HOST:PORT/DB, "
        "rediss://...; default: SQLite in the platform's state directory",
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


#: Keys other clients' mcpServers entries carry that only the client acts on
#: (approval lists, its own request timeout, its tool filters, its UI): accepted
#: and ignored, with one info line (issue #14). Cline/Roo: autoApprove,
#: alwaysAllow, timeout, disabledTools, watchPaths; VS Code: dev, gallery,
#: version; Gemini CLI: trust, includeTools, excludeTools; several: description.
CLIENT_ONLY_KEYS: Final = frozenset(
    {
        "alwaysAllow", "autoApprove", "description", "dev", "disabledTools", "excludeTools",
        "gallery", "includeTools", "timeout", "trust", "version", "watchPaths",
    }
)  # fmt: skip


def expand_vars(value: Any, environ: dict[str, str]) -> Any:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``${env:VAR}`` in every string, recursively.

    Raises:
        KeyError: a variable with no default is unset (the name is the key), or a
            VS Code ``${input:ID}`` (the key is ``input:ID``), which only VS Code can ask.
    """
    if isinstance(value, str):
        if found := _INPUT.search(value):
            raise KeyError(f"input:{found.group(1)}")

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
    raise ValueError(
        f"type: unknown server type {kind!r} (expected 'stdio', 'sse' or 'streamable-http')"
    )


def describe(error: ErrorDetails) -> str:
    """Pydantic's error as a person would say it, naming the value where it helps."""
    kind, value = error["type"], error.get("input")
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
    shown = repr(value) if isinstance(value, str | int | float) else None
    plain = {
        "int_parsing": "is not a whole number",
        "int_type": "is not a whole number",
        "int_from_float": "is not a whole number",
        "float_parsing": "is not a number",
        "float_type": "is not a number",
        "bool_parsing": "is not true or false",
        "string_type": "is not a string",
        "list_type": "is not a list",
        "tuple_type": "is not a list",
        "dict_type": "is not an object of names and values",
        "missing": "is required",
        "extra_forbidden": "is not a field this gateway knows",
        "string_too_short": "is empty",
        "url_parsing": "is not a URL (expected http://HOST[:PORT]/PATH)",
        "url_scheme": "is not an http:// or https:// URL",
        "url_type": "is not a URL (expected http://HOST[:PORT]/PATH)",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "literal_error": f"must be {ctx.get('expected')}",
        "string_pattern_mismatch": f"does not have the expected form ({ctx.get('pattern')})",
    }.get(kind)
    if plain is None:
        text = str(ctx["error"]) if kind == "value_error" and "error" in ctx else error["msg"]
        return text if shown is None or kind in ("value_error", "assertion_error") else (
            f"{shown}: {text}"
        )  # fmt: skip
    if shown is None or kind in ("missing", "extra_forbidden"):
        return plain
    return f"{shown} {plain}"


def _translate(entry: dict[str, Any]) -> dict[str, Any]:
    """Other clients' spellings as this gateway's: Windsurf's ``serverUrl``, Gemini
    CLI's ``httpUrl`` (Streamable HTTP), Cline's ``transportType``."""
    entry = dict(entry)
    for alias, kind in (("serverUrl", None), ("httpUrl", "streamable-http")):
        if alias in entry:
            if "url" in entry:
                raise ValueError(f"{alias}: give url or {alias}, not both")
            entry["url"] = entry.pop(alias)
            if kind is not None:
                entry.setdefault("type", kind)
    if "transportType" in entry:
        kind = entry.pop("transportType")
        entry.setdefault("type", kind)
    return entry


@dataclass
class ServerFile:
    """What an mcpServers document holds, besides the server specs.

    Attributes:
        specs: the servers to run, in file order.
        ignored: client-only keys (:data:`CLIENT_ONLY_KEYS`) per server name.
        disabled: servers whose entry says ``"disabled": true``.
        problems: one line per error, each naming the source, server and field.
    """

    specs: list[ServerSpec] = field(default_factory=list)
    ignored: dict[str, list[str]] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def raise_problems(self) -> None:
        """Raise every problem at once (:class:`ConfigError`, one per line)."""
        if self.problems:
            raise ConfigError("\n".join(self.problems))

    def log_notes(self, source: str) -> None:
        """One info line for ignored keys, one for disabled servers."""
        if self.ignored:
            log.info("config_client_keys_ignored", source=source, servers=self.ignored)
        if self.disabled:
            log.info("config_servers_disabled", source=source, servers=self.disabled)


def _parse_server(
    source: str, name: str, entry: Any, environ: dict[str, str], into: ServerFile
) -> None:
    where = f"{source}: server {name!r}"
    if not SERVER_NAME.match(name):
        into.problems.append(f"{where}: the name must match {SERVER_NAME.pattern}")
        return
    if not isinstance(entry, dict):
        into.problems.append(f"{where}: expected an object")
        return
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        into.problems.append(f"{where}: field 'disabled': {disabled!r} is not true or false")
        return
    if disabled:
        into.disabled.append(name)
        return
    ignored = sorted(k for k in entry if k in CLIENT_ONLY_KEYS)
    if ignored:
        into.ignored[name] = ignored
    expanded = {}
    failed = False
    for key, value in entry.items():
        if key in CLIENT_ONLY_KEYS or key == "disabled":
            continue
        try:
            expanded[key] = expand_vars(value, environ)
        except KeyError as exc:
            var = exc.args[0]
            why = (
                f"{'${'}{var}{'}'} is a VS Code input, which only VS Code can ask for; "
                "write the value or ${VAR}"
                if var.startswith("input:")
                else f"environment variable {var} is not set"
            )
            into.problems.append(f"{where}: field {key!r}: {why}")
            failed = True
    if failed:
        return
    try:
        translated = _translate(expanded)
        kind = _server_kind(translated)
    except ValueError as exc:
        key, _, text = str(exc).partition(": ")
        into.problems.append(f"{where}: field {key!r}: {text}")
        return
    try:
        into.specs.append(kind.model_validate({**translated, "name": name}))
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "?"
            into.problems.append(f"{where}: field {key!r}: {describe(err)}")


def _servers_object(source: str, document: Any) -> dict[str, Any]:
    """The servers object: ``mcpServers`` (most clients), ``servers`` (VS Code's
    ``mcp.json``) or ``mcp.servers`` (VS Code's ``settings.json``).

    Raises:
        ConfigError: none of them, or more than one.
    """
    if not isinstance(document, dict):
        raise ConfigError(f'{source}: expected an object with an "mcpServers" object')
    vscode = document.get("mcp")
    found = {
        key: value
        for key, value in (
            ("mcpServers", document.get("mcpServers")),
            ("servers", document.get("servers")),
            ("mcp.servers", vscode.get("servers") if isinstance(vscode, dict) else None),
        )
        if value is not None
    }
    if len(found) > 1:
        raise ConfigError(f"{source}: give one of {' or '.join(found)}, not both")
    if not found or not isinstance(servers := next(iter(found.values())), dict):
        raise ConfigError(
            f'{source}: expected an object with an "mcpServers" object (or VS Code\'s "servers")'
        )
    if not servers:
        raise ConfigError(f"{source}: mcpServers is empty")
    return servers


def read_servers(source: str, document: Any, environ: dict[str, str]) -> ServerFile:
    """Validate a decoded ``{"mcpServers": {...}}`` document, collecting every problem.

    Raises:
        ConfigError: the document has no servers object at all.
    """
    result = ServerFile()
    for name, entry in _servers_object(source, document).items():
        _parse_server(source, str(name), entry, environ, result)
    if not result.problems and not result.specs:
        result.problems.append(f"{source}: every server is disabled")
    return result


def parse_servers(source: str, document: Any, environ: dict[str, str]) -> list[ServerSpec]:
    """Validate a decoded ``{"mcpServers": {...}}`` document.

    Other clients' dialects are accepted: see :data:`CLIENT_ONLY_KEYS` and
    :func:`_translate`; ``"disabled": true`` leaves a server out.

    Raises:
        ConfigError: every problem at once, one per line, each naming ``source``,
            the server and the field.
    """
    result = read_servers(source, document, environ)
    result.raise_problems()
    result.log_notes(source)
    return result.specs


def read_server_sources(sources: ServerSources, environ: dict[str, str]) -> ServerFile:
    """The servers ``--config``, ``--stdio`` or ``--sse`` name, with every problem found.

    Raises:
        ConfigError: no source, several sources, an unreadable or undecodable file.
    """
    given = [s for s in (sources.config, sources.stdio, sources.sse) if s]
    if len(given) != 1:
        raise ConfigError("give exactly one of --config (BRIDGE_CONFIG), --stdio or --sse")
    if sources.stdio:
        argv = shlex.split(sources.stdio)
        if not argv:
            raise ConfigError("--stdio: empty command")
        entry: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
        return read_servers("--stdio", {"mcpServers": {"default": entry}}, environ)
    if sources.sse:
        return read_servers(
            "--sse", {"mcpServers": {"default": {"url": sources.sse, "type": "sse"}}}, environ
        )
    assert sources.config is not None
    path = sources.config
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    is_json = path.suffix == ".json"
    try:
        document = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {exc}") from None
    return read_servers(str(path), document, environ)


def load_servers(
    settings: ServerSources, environ: dict[str, str] | None = None
) -> list[ServerSpec]:
    """The servers named by ``--config``, ``--stdio`` or ``--sse``.

    Logs one info line for client-only keys ignored and one for servers disabled.

    Raises:
        ConfigError: no source, several sources, unreadable file, or bad entries
            (all of them, one per line).
    """
    env = dict(os.environ) if environ is None else environ
    result = read_server_sources(settings, env)
    result.raise_problems()
    result.log_notes(str(settings.config or "--stdio/--sse"))
    return result.specs
