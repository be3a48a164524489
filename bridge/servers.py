"""Server specs and the mcpServers file, in the dialects clients already use.

Servers come from an ``mcpServers`` file (JSON or YAML: Claude Desktop,
Claude Code, Cursor, Cline, Roo Code, Windsurf, VS Code and Gemini CLI write
it) or from one ``--stdio`` / ``--sse`` flag, and are validated once into the
:data:`ServerSpec` union by :func:`load_servers`. Every problem is reported at
once, one per line, naming the source, the server and the field.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

import structlog
import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.errors import ConfigError
from bridge.values import Seconds, describe

log = structlog.get_logger("bridge.config")

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: ``${VAR}``, ``${VAR:-default}``, and VS Code's ``${env:VAR}``.
_VAR = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: VS Code's ``${input:ID}``: a value VS Code asks its user for; the gateway cannot.
_INPUT = re.compile(r"\$\{input:([^}]*)\}")


class Sources(Protocol):
    """Where the servers come from (:class:`bridge.settings.Settings` is one)."""

    @property
    def config(self) -> Path | None: ...
    @property
    def stdio(self) -> str | None: ...
    @property
    def sse(self) -> str | None: ...


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

    @model_validator(mode="after")
    def _one_authorization(self) -> _HttpSpec:
        """URL userinfo becomes an ``Authorization`` header (aiohttp): it cannot be
        combined with another, configured or forwarded (else every request fails)."""
        named = {name.lower() for name in (*self.headers, *self.forward_headers)}
        if (self.url.username or self.url.password) and "authorization" in named:
            raise ValueError(
                "the url carries credentials (user:password@) and an Authorization header "
                "is also set or forwarded: keep one"
            )
        return self


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


def read_server_sources(sources: Sources, environ: dict[str, str]) -> ServerFile:
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


def load_servers(settings: Sources, environ: dict[str, str] | None = None) -> list[ServerSpec]:
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
