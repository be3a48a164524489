"""bridge.settings: Settings sources and the mcpServers file (STYLE §3.3 rule 13).

Pins the contract of :func:`parse_servers` and :func:`load_servers`: stdio,
legacy SSE and Streamable HTTP entries validate into the ``ServerSpec`` union
once (a type-less URL not ending in /sse into the spec left to detection);
``${VAR}`` and ``${VAR:-default}`` expand from the environment; and every
``ConfigError`` names its source (the file, ``--stdio`` or ``--sse``), the
server and the field. :class:`Settings` reads CLI flags over ``BRIDGE_*``
variables over defaults.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from pydantic import ValidationError

from bridge import options
from bridge.errors import ConfigError
from bridge.settings import (
    AutoHttpServer,
    ServerSpec,
    Settings,
    SseServer,
    StdioServer,
    StreamableHttpServer,
    expand_vars,
    load_servers,
    parse_servers,
)

SOURCE = "servers.json"


@pytest.fixture(autouse=True)
def _no_bridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the BRIDGE_* variables they set themselves."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def cli(args: list[str]) -> Settings:
    """Settings as ``mcp-bridge ARGS`` would build them (flags over env over defaults)."""
    return Settings(**options.parse(args).flags)


def parse(servers: Any, environ: dict[str, str] | None = None) -> list[ServerSpec]:
    return parse_servers(SOURCE, {"mcpServers": servers}, environ or {})


def parse_error(servers: Any, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(servers, environ)
    return str(info.value)


def from_file(path: Path, environ: dict[str, str] | None = None) -> list[ServerSpec]:
    return load_servers(cli(["--config", str(path)]), environ or {})


def file_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        from_file(path)
    return str(info.value)


# -- entries ---------------------------------------------------------------------


def test_stdio_entry_with_every_field() -> None:
    (spec,) = parse(
        {
            "files": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                "env": {"DEBUG": "1"},
                "cwd": "/srv",
            }
        }
    )
    assert spec == StdioServer(
        name="files",
        command="npx",
        args=("-y", "@modelcontextprotocol/server-filesystem", "/tmp"),
        env={"DEBUG": "1"},
        cwd="/srv",
    )


def test_stdio_entry_minimal_and_with_explicit_type() -> None:
    plain, typed = parse({"a": {"command": "srv"}, "b": {"command": "srv", "type": "stdio"}})
    assert plain == StdioServer(name="a", command="srv")
    assert (plain.args, plain.env, plain.cwd) == ((), {}, None)
    assert typed == StdioServer(name="b", command="srv", type="stdio")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/sse", "https://mcp.example/v1/sse/"])
def test_url_ending_in_sse_is_a_legacy_sse_server(url: str) -> None:
    (spec,) = parse({"legacy": {"url": url, "headers": {"Authorization": "Bearer x"}}})
    assert isinstance(spec, SseServer)
    assert spec.name == "legacy"
    assert str(spec.url) == url
    assert spec.headers == {"Authorization": "Bearer x"}


def test_type_sse_makes_any_http_url_legacy_sse() -> None:
    (spec,) = parse({"legacy": {"url": "http://h:1/events", "type": "sse"}})
    assert isinstance(spec, SseServer)
    assert str(spec.url) == "http://h:1/events"


@pytest.mark.parametrize("kind", ["streamable-http", "http", "streamableHttp"])
def test_streamable_http_types_make_a_streamable_http_server(kind: str) -> None:
    (spec,) = parse({"remote": {"url": "http://h/sse", "type": kind, "headers": {"K": "v"}}})
    assert spec == StreamableHttpServer(
        name="remote", url="http://h/sse", type=kind, headers={"K": "v"}
    )


def test_url_that_is_neither_sse_path_nor_typed_is_detected() -> None:
    (spec,) = parse({"remote": {"url": "http://h/mcp"}})
    assert spec == AutoHttpServer(name="remote", url="http://h/mcp")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"args": ["x"]}, "command/url"),
        ({"command": "a", "url": "http://h/sse"}, "command/url"),
        ({"url": "http://h/sse", "type": "stdio"}, "type"),
        ({"command": "a", "type": "sse"}, "type"),
        ({"command": ""}, "command"),
        ({"command": "a", "args": "not-a-list"}, "args"),
        ({"command": "a", "env": {"K": 1}}, "env.K"),
        ({"url": "ftp://h/sse"}, "url"),
        ({"url": "not a url/sse"}, "url"),
        ({"url": "http://h/sse", "env": {}}, "env"),
    ],
)
def test_bad_entries_name_file_server_and_field(entry: dict[str, Any], field: str) -> None:
    message = parse_error({"srv": entry})
    assert SOURCE in message
    assert "'srv'" in message
    assert f"'{field}'" in message


@pytest.mark.parametrize("field", ["colour", "transport"])
def test_unknown_field_is_an_error_naming_it(field: str) -> None:
    message = parse_error({"srv": {"command": "a", field: "x"}})
    assert SOURCE in message
    assert "'srv'" in message
    assert f"'{field}'" in message


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "x" * 65, "ü"])
def test_bad_server_name(name: str) -> None:
    message = parse_error({name: {"command": "a"}})
    assert SOURCE in message
    assert repr(name) in message
    assert "name" in message


@pytest.mark.parametrize("name", ["a", "A1", "my-server_2.0", "x" * 64])
def test_good_server_names(name: str) -> None:
    assert [s.name for s in parse({name: {"command": "a"}})] == [name]


def test_entry_that_is_not_an_object() -> None:
    message = parse_error({"srv": ["npx"]})
    assert SOURCE in message
    assert "'srv'" in message


@pytest.mark.parametrize(
    "document",
    [{"mcpServers": {}}, {"mcpServers": []}, {"servers": {}}, [], None, "text"],
)
def test_document_without_servers(document: Any) -> None:
    with pytest.raises(ConfigError, match=SOURCE.replace(".", r"\.")) as info:
        parse_servers(SOURCE, document, {})
    assert "mcpServers" in str(info.value)


def test_several_servers_keep_their_order() -> None:
    specs = parse({"z": {"command": "a"}, "a": {"url": "http://h/sse"}, "m": {"command": "b"}})
    assert [(s.name, type(s)) for s in specs] == [
        ("z", StdioServer),
        ("a", SseServer),
        ("m", StdioServer),
    ]


# -- ${VAR} expansion ----------------------------------------------------------------


def test_variables_expand_in_every_string() -> None:
    environ = {"TOKEN": "s3cret", "ROOT": "/data", "HOST": "h.example"}
    stdio, sse = parse(
        {
            "files": {
                "command": "${ROOT}/bin/srv",
                "args": ["--root", "${ROOT}", "--n=${N:-3}"],
                "env": {"API_TOKEN": "${TOKEN}", "MODE": "${MODE:-fast}"},
                "cwd": "${ROOT}",
            },
            "web": {
                "url": "https://${HOST}/sse",
                "headers": {"Authorization": "Bearer ${TOKEN}"},
            },
        },
        environ,
    )
    assert stdio == StdioServer(
        name="files",
        command="/data/bin/srv",
        args=("--root", "/data", "--n=3"),
        env={"API_TOKEN": "s3cret", "MODE": "fast"},
        cwd="/data",
    )
    assert isinstance(sse, SseServer)
    assert str(sse.url) == "https://h.example/sse"
    assert sse.headers == {"Authorization": "Bearer s3cret"}


@pytest.mark.parametrize(
    ("template", "environ", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("${A}", {"A": ""}, ""),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),  # as in the shell, :- also covers empty
        ("${A:-d}", {"A": "v"}, "v"),
        ("${A:-}", {}, ""),
        ("${A:-with spaces and :-}", {}, "with spaces and :-"),
        ("x${A}y${B}z", {"A": "1", "B": "2"}, "x1y2z"),
        ("$A and $${A}", {"A": "1"}, "$A and $1"),
        ("${A}", {"A": "${B}", "B": "no"}, "${B}"),  # values are not expanded again
    ],
)
def test_expand_vars(template: str, environ: dict[str, str], expected: str) -> None:
    assert expand_vars(template, environ) == expected


def test_expand_vars_leaves_keys_and_non_strings_alone() -> None:
    value = {"${K}": ["${V}", 1, None, True, {"n": "${V}"}]}
    assert expand_vars(value, {"K": "k", "V": "v"}) == {"${K}": ["v", 1, None, True, {"n": "v"}]}


def test_unset_variable_without_default_names_it_the_file_and_the_server() -> None:
    message = parse_error({"srv": {"command": "a", "env": {"KEY": "${API_KEY}"}}})
    assert "API_KEY" in message
    assert SOURCE in message
    assert "'srv'" in message


def test_unset_variable_error_names_the_field() -> None:
    message = parse_error({"srv": {"command": "a", "env": {"KEY": "${API_KEY}"}}})
    assert "field 'env" in message


def test_load_servers_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_TEST_CMD", "from-env")
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": {"s": {"command": "${MCP_TEST_CMD}"}}}))
    settings = cli(["--config", str(path)])
    assert load_servers(settings) == [StdioServer(name="s", command="from-env")]


# -- files -----------------------------------------------------------------------------

DOCUMENT = {
    "mcpServers": {
        "files": {"command": "srv", "args": ["--ro"], "env": {"K": "${K:-v}"}},
        "legacy": {"url": "http://127.0.0.1:9000/sse"},
    }
}
EXPECTED = [
    StdioServer(name="files", command="srv", args=("--ro",), env={"K": "v"}),
    SseServer(name="legacy", url="http://127.0.0.1:9000/sse"),
]


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps(DOCUMENT), encoding="utf-8")
    assert from_file(path) == EXPECTED


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"servers{suffix}"
    path.write_text(yaml.safe_dump(DOCUMENT), encoding="utf-8")
    assert from_file(path) == EXPECTED


def test_error_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("mcpServers:\n  srv:\n    command: a\n    colour: red\n", encoding="utf-8")
    message = file_error(path)
    assert str(path) in message
    assert "'srv'" in message
    assert "'colour'" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    message = file_error(path)
    assert str(path) in message
    assert "cannot read" in message


@pytest.mark.parametrize("text", ['{"mcpServers": {"a": {"command": "x",}}}', "{", ""])
def test_invalid_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "servers.json"
    path.write_text(text, encoding="utf-8")
    message = file_error(path)
    assert str(path) in message
    assert "not valid JSON" in message


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("mcpServers: {a: [unclosed\n", encoding="utf-8")
    message = file_error(path)
    assert str(path) in message
    assert "not valid YAML" in message


def test_empty_servers_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("mcpServers: {}\n", encoding="utf-8")
    message = file_error(path)
    assert str(path) in message
    assert "empty" in message


# -- --stdio and --sse ------------------------------------------------------------------


def test_stdio_flag_gives_one_server_named_default() -> None:
    settings = cli(["--stdio", "python -m srv 'two words' --x=1"])
    assert load_servers(settings, {}) == [
        StdioServer(name="default", command="python", args=("-m", "srv", "two words", "--x=1"))
    ]


def test_sse_flag_gives_one_server_named_default() -> None:
    settings = cli(["--sse", "http://127.0.0.1:9000/events"])
    (spec,) = load_servers(settings, {})
    assert spec == SseServer(name="default", url="http://127.0.0.1:9000/events", type="sse")


def test_blank_stdio_command_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--stdio"):
        load_servers(cli(["--stdio", "   "]), {})


def test_sse_flag_error_names_the_flag_server_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        load_servers(cli(["--sse", "ftp://h/sse"]), {})
    message = str(info.value)
    assert "--sse" in message
    assert "'default'" in message
    assert "'url'" in message


@pytest.mark.parametrize(
    "args",
    [[], ["--stdio", "a", "--sse", "http://h/sse"], ["--config", "x.json", "--stdio", "a"]],
)
def test_exactly_one_server_source(args: list[str]) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        load_servers(cli(args), {})


# -- Settings --------------------------------------------------------------------------


def test_defaults() -> None:
    settings = cli([])
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert (settings.config, settings.stdio, settings.sse) == (None, None, None)
    assert (settings.allowed_hosts, settings.allowed_origins) == ([], [])
    assert (settings.log_level, settings.log_format) == ("info", "auto")


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BRIDGE_HOST", "0.0.0.0")
    monkeypatch.setenv("BRIDGE_PORT", "9001")
    monkeypatch.setenv("BRIDGE_CONFIG", str(tmp_path / "s.json"))
    monkeypatch.setenv("BRIDGE_ALLOWED_HOSTS", '["mcp.example", "localhost"]')
    monkeypatch.setenv("BRIDGE_LOG_FORMAT", "json")
    monkeypatch.setenv("BRIDGE_UPSTREAM_IDLE_TIMEOUT", "2.5")
    monkeypatch.setenv("PORT", "1")  # unprefixed: not ours
    settings = cli([])
    assert (settings.host, settings.port) == ("0.0.0.0", 9001)
    assert settings.config == tmp_path / "s.json"
    assert settings.allowed_hosts == ["mcp.example", "localhost"]
    assert settings.log_format == "json"
    assert settings.upstream_idle_timeout == 2.5


def test_cli_flags_are_kebab_case_and_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "9001")
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "error")
    settings = cli(
        [
            "--port", "9002",
            "--max-body-bytes", "1024",
            "--allowed-origins", "https://app.example",
            "--allowed-origins", "http://localhost:3000",
        ]
    )  # fmt: skip
    assert settings.port == 9002
    assert settings.log_level == "error"  # not on the command line: env applies
    assert settings.max_body_bytes == 1024
    assert settings.allowed_origins == ["https://app.example", "http://localhost:3000"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_PORT", "70000"),
        ("BRIDGE_PORT", "http"),
        ("BRIDGE_LOG_LEVEL", "verbose"),
        ("BRIDGE_UPSTREAM_IDLE_TIMEOUT", "0"),
        ("BRIDGE_MAX_BODY_BYTES", "-1"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        cli([])


def test_unknown_cli_flag_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli(["--no-such-flag", "1"])
    assert info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


# -- other clients' dialects (issue #14) ------------------------------------------------


def test_cline_entry_client_keys_are_ignored_with_one_info_line() -> None:
    document = {
        "mcpServers": {
            "files": {
                "command": "npx", "args": ["-y", "server-filesystem"], "disabled": False,
                "autoApprove": ["read_file"], "alwaysAllow": [], "timeout": 60,
            },
            "web": {"url": "http://h:9000/mcp", "type": "streamableHttp", "timeout": 30},
        }
    }  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        specs = parse_servers(SOURCE, document, {})
    assert [s.name for s in specs] == ["files", "web"]
    assert isinstance(specs[1], StreamableHttpServer)
    [line] = [e for e in logs if e["event"] == "config_client_keys_ignored"]
    assert line["log_level"] == "info"
    assert line["servers"] == {
        "files": ["alwaysAllow", "autoApprove", "timeout"],
        "web": ["timeout"],
    }


def test_disabled_servers_are_left_out() -> None:
    with structlog.testing.capture_logs() as logs:
        specs = parse({"on": {"command": "a"}, "off": {"command": "b", "disabled": True}})
    assert [s.name for s in specs] == ["on"]
    [line] = [e for e in logs if e["event"] == "config_servers_disabled"]
    assert line["servers"] == ["off"]


def test_every_server_disabled_is_an_error() -> None:
    assert "every server is disabled" in parse_error({"off": {"command": "b", "disabled": True}})


def test_windsurf_server_url_is_the_url() -> None:
    (spec,) = parse({"remote": {"serverUrl": "http://h:9000/sse", "headers": {"A": "b"}}})
    assert spec == SseServer(name="remote", url="http://h:9000/sse", headers={"A": "b"})


def test_gemini_http_url_is_streamable_http() -> None:
    (spec,) = parse({"remote": {"httpUrl": "http://h:9000/mcp", "trust": True}})
    assert isinstance(spec, StreamableHttpServer)


def test_cline_transport_type() -> None:
    (spec,) = parse({"old": {"url": "http://h:9000/events", "transportType": "sse"}})
    assert isinstance(spec, SseServer)


def test_vscode_servers_with_types_and_env_syntax() -> None:
    document = {
        "inputs": [{"type": "promptString", "id": "key"}],
        "servers": {
            "files": {"type": "stdio", "command": "npx", "args": ["x"], "env": {"T": "${env:TOKEN}"}},
            "api": {"type": "http", "url": "http://h:9000/mcp", "dev": {"watch": "src/**"}},
            "old": {"type": "sse", "url": "http://h:9000/events"},
        },
    }  # fmt: skip
    files, api, old = parse_servers(".vscode/mcp.json", document, {"TOKEN": "t0k"})
    assert isinstance(files, StdioServer)
    assert files.env == {"T": "t0k"}
    assert isinstance(api, StreamableHttpServer)
    assert isinstance(old, SseServer)


def test_vscode_settings_json_mcp_servers() -> None:
    (spec,) = parse_servers("settings.json", {"mcp": {"servers": {"a": {"command": "x"}}}}, {})
    assert spec.name == "a"


def test_vscode_input_variables_are_refused_by_name() -> None:
    message = parse_error({"a": {"command": "x", "env": {"KEY": "${input:api-key}"}}})
    assert "'a'" in message
    assert "${input:api-key}" in message
    assert "VS Code" in message


def test_both_mcpservers_and_servers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not both"):
        parse_servers(SOURCE, {"mcpServers": {"a": {"command": "x"}}, "servers": {}}, {})


def test_url_and_server_url_together_is_an_error() -> None:
    message = parse_error({"a": {"url": "http://h/mcp", "serverUrl": "http://h/mcp"}})
    assert "'serverUrl'" in message


def test_claude_desktop_config_as_written() -> None:
    document = {
        "globalShortcut": "Ctrl+Space",
        "mcpServers": {
            "weather": {"command": "npx", "args": ["-y", "mcp-remote", "http://localhost:8080/http"]},
            "sqlite": {"command": "uvx", "args": ["mcp-server-sqlite", "--db-path", "/tmp/t.db"], "env": {}},
        },
    }  # fmt: skip
    assert [s.name for s in parse_servers("claude_desktop_config.json", document, {})] == [
        "weather",
        "sqlite",
    ]


def test_unknown_keys_are_still_errors() -> None:
    assert "'comand'" in parse_error({"a": {"command": "x", "comand": "y"}})


def test_every_problem_at_once_in_plain_words() -> None:
    message = parse_error(
        {
            "a": {"url": "not a url"},
            "b": {"command": "x", "env": {"T": "${UNSET_ONE}"}},
            "c": {"command": "x", "args": "no-list", "cwd": 3},
        }
    )
    lines = message.splitlines()
    assert any("'a'" in line and "'not a url' is not a URL" in line for line in lines), lines
    assert any("'b'" in line and "UNSET_ONE" in line for line in lines), lines
    assert any("'c'" in line and "'args'" in line for line in lines), lines
    assert any("'c'" in line and "'cwd'" in line for line in lines), lines
    assert "Input should be" not in message
    assert "relative URL without a base" not in message


# -- list settings and the store's place (issue #14) ------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ["localhost"]),
        ("mcp.example, localhost", ["mcp.example", "localhost"]),
        ('["mcp.example", "localhost"]', ["mcp.example", "localhost"]),
    ],
)
def test_list_settings_take_names_or_json_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("BRIDGE_ALLOWED_HOSTS", value)
    monkeypatch.setenv("BRIDGE_OAUTH_SCOPES", value)
    settings = cli([])
    assert settings.allowed_hosts == expected
    assert settings.oauth_scopes == expected


def test_list_flags_take_commas_and_repeats() -> None:
    settings = cli(["--allowed-hosts", "a,b", "--allowed-hosts", "c"])
    assert settings.allowed_hosts == ["a", "b", "c"]


def test_bad_values_name_the_variable_or_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "http")
    monkeypatch.setenv("BRIDGE_ALLOWED_HOSTS", "[not json")
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "hunter2")
    with pytest.raises(ConfigError) as info:
        options.settings_from(options.parse(["--session-ttl", "0", "--log-level", "loud"]).flags)
    lines = str(info.value).splitlines()
    assert "BRIDGE_PORT: 'http' is not a whole number" in lines
    assert "--session-ttl: '0' must be more than 0" in lines
    assert any(line.startswith("--log-level: 'loud' must be 'debug'") for line in lines)
    assert any(line.startswith("BRIDGE_ALLOWED_HOSTS:") for line in lines), lines
    assert "hunter2" not in str(info.value)


def test_default_store_is_in_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    assert cli([]).store_url == f"sqlite:///{tmp_path}/state/mcp-bridge/sessions.db"
    assert not (tmp_path / "state").exists()  # named, not created


def test_every_env_variable_takes_the_default_the_readme_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README's settings table, value for value, in the environment (issue #14)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| `(BRIDGE_[A-Z_]+)` \| `--[a-z-]+`[^|]* \| `([^`]+)`", readme, re.M)
    assert len(rows) > 60
    for variable, shown in rows:
        monkeypatch.setenv(variable, shown)
    monkeypatch.delenv("BRIDGE_OAUTH_ISSUER", raising=False)  # needs two more settings
    settings = cli([])
    assert settings.allowed_hosts == []
    assert settings.oauth_algorithms == ["RS256", "ES256"]
    assert settings.session_ttl == 7 * 24 * 3600


@pytest.mark.parametrize(
    "entry",
    [
        {"url": "http://me:pw@127.0.0.1:9/sse", "forward_headers": ["authorization"]},
        {"url": "http://me@127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer x"}},
    ],
)
def test_url_credentials_and_an_authorization_header_are_refused(entry: dict[str, Any]) -> None:
    """Issue #15: aiohttp refuses to send both, so every request was a 500."""
    assert "credentials" in parse_error({"up": entry})
    assert parse({"up": {"url": "http://me:pw@127.0.0.1:9/sse"}})  # alone, fine
