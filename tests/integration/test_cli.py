"""The ``mcp-bridge`` command: configuration errors, one-flag upstreams, logs, health.

A bad configuration exits with status 2 and a message naming the file, the
server and the field, before any port is bound (issue #2 "The interface").
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge.settings import Settings
from tests.conftest import REPO, ProcFactory, free_port, start_fixture_sse, start_gateway
from tests.integration.test_limits import stalled_flood
from tests.integration.test_stdio_lifecycle import assert_gone
from tests.rawclient import RawClient

EXIT_TIMEOUT = 30.0


@pytest.mark.parametrize(
    ("document", "needles"),
    [
        pytest.param({"mcpServers": {"w": {"url": "http://h/mcp", "type": "websocket"}}}, ["'w'", "'type'", "websocket"], id="unknown-type"),
        pytest.param({"mcpServers": {"w": {"url": "ftp://h/other"}}}, ["'w'", "'url'"], id="url-not-http"),
        pytest.param({"mcpServers": {"f": {"command": "x", "args": "not-a-list"}}}, ["'f'", "'args'"], id="bad-args"),
        pytest.param({"mcpServers": {"f": {"command": "x", "env": {"T": "${NOPE_UNSET_VAR}"}}}}, ["'f'", "'env'", "NOPE_UNSET_VAR"], id="unset-var"),
        pytest.param({"mcpServers": {"bad name!": {"command": "x"}}}, ["'bad name!'"], id="server-name"),
        pytest.param({"servers": {}}, ["mcpServers"], id="no-mcpServers"),
    ],
)  # fmt: skip
async def test_bad_config_exits_2_before_binding(
    document: dict[str, object], needles: list[str], procs: ProcFactory, tmp_path: Path
) -> None:
    config = tmp_path / "servers.json"
    config.write_text(json.dumps(document))
    port = free_port()
    proc = await procs(sys.executable, "-m", "bridge", "--config", config, "--port", str(port))
    assert await proc.exited(EXIT_TIMEOUT) == 2
    message = "\n".join(proc.lines)
    assert str(config) in message
    for needle in needles:
        assert needle in message, message
    with socket.socket() as sock:  # nothing was ever bound to the port
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param([], "exactly one of"),
        pytest.param(["--stdio", "a", "--sse", "http://h/sse"], "exactly one of"),
        pytest.param(["--config", "/nonexistent/servers.yaml"], "/nonexistent/servers.yaml"),
        pytest.param(["--stdio", "x", "--port", "not-a-port"], "port"),
    ],
)
async def test_bad_flags_exit_2(args: list[str], needle: str, procs: ProcFactory) -> None:
    proc = await procs(sys.executable, "-m", "bridge", *args, env={"BRIDGE_CONFIG": ""})
    assert await proc.exited(EXIT_TIMEOUT) == 2
    assert needle in "\n".join(proc.lines)


async def test_yaml_config_env_config_and_request_log(procs: ProcFactory, tmp_path: Path) -> None:
    """BRIDGE_CONFIG names a YAML file; each request is one JSON log line without secrets."""
    config = tmp_path / "servers.yaml"
    config.write_text(
        "mcpServers:\n"
        "  example:\n"
        f"    command: {sys.executable}\n"
        "    args: [-m, bridge.examples.server]\n"
        "    env: {API_TOKEN: '${SECRET_TOKEN}'}\n"
    )
    secret = "s3cr3t-value-that-must-not-be-logged"
    gateway, base = await start_gateway(
        procs, env={"BRIDGE_CONFIG": str(config), "SECRET_TOKEN": secret}
    )
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/servers/example/mcp")
        await client.initialize()
        assert client.session_id
        tools = await client.post(client.request("tools/list"))
        assert {t["name"] for t in tools.messages[-1]["result"]["tools"]} == {"echo", "add", "slow"}
        health = await http.get(f"{base}/healthz")
        assert health.status == 200
        assert await health.json() == {"status": "ok", "sessions": 1}
        assert await client.delete() == 200
        assert gateway.json_events("child_started")  # the shared child still runs
    assert await gateway.stop() == 0
    # Shutdown closes the child's transports while the loop still runs: no
    # "Exception ignored in: <function BaseSubprocessTransport.__del__ ...>:
    # RuntimeError: Event loop is closed" on stderr (issue #15).
    assert not [line for line in gateway.lines if "Exception ignored" in line], gateway.lines[-30:]
    assert not [line for line in gateway.lines if "Event loop is closed" in line]
    requests = gateway.json_events("request")
    listed = [r for r in requests if r["rpc_method"] == "tools/list"]
    assert len(listed) == 1
    line = listed[0]
    assert line["method"] == "POST"
    assert line["path"] == "/servers/example/mcp"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["session_id"] == client.session_id[:8]  # truncated, never whole
    everything = "\n".join(gateway.lines)
    assert secret not in everything
    assert client.session_id not in everything


async def test_sse_flag_and_default_bind(procs: ProcFactory) -> None:
    url = await start_fixture_sse(procs)
    gateway, base = await start_gateway(procs, "--sse", url)
    [listening] = gateway.json_events("listening")
    assert listening["host"] == "127.0.0.1"
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/mcp")
        init = await client.initialize()
        assert init.messages[-1]["result"]["serverInfo"]["name"]
        assert await client.delete() == 200


def test_example_config_is_valid() -> None:
    from bridge.settings import Settings, StdioServer, load_servers

    settings = Settings(config=REPO / "config" / "example.json")
    [server] = load_servers(settings, environ={})
    assert isinstance(server, StdioServer)
    assert server.args == ("-m", "bridge.examples.server")


async def test_api_key_command_and_a_gateway_that_asks_for_it(
    procs: ProcFactory, tmp_path: Path
) -> None:
    made = await procs(sys.executable, "-m", "bridge", "api-key", "ci")
    assert await made.exited(EXIT_TIMEOUT) == 0
    token, entry = made.lines
    assert entry.startswith("ci:sha256:")
    assert token not in entry
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated 2026-11\n{entry}\n")
    example = f"{sys.executable} -m bridge.examples.server"
    proc, base = await start_gateway(
        procs, "--stdio", example, env={"BRIDGE_API_KEYS_FILE": str(keys)}
    )
    async with aiohttp.ClientSession() as http:
        anonymous = RawClient(http, f"{base}/mcp")
        assert (await anonymous.post(anonymous.request("ping"))).status == 401
        client = RawClient(http, f"{base}/mcp")
        plain = client.headers
        client.headers = lambda **extra: plain(Authorization=f"Bearer {token}", **extra)  # type: ignore[method-assign]
        await client.initialize()
        assert (await client.post(client.request("ping"))).status == 200
    assert token not in "\n".join(proc.lines)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param("just-a-token-no-name", "entry 1 is not NAME:TOKEN", id="no-name"),
        pytest.param("ok:tok\nci:sha256:abc", "'ci' has a bad sha256 digest", id="bad-digest"),
        pytest.param("# nothing but comments\n", "no API keys found", id="empty"),
    ],
)
async def test_bad_api_keys_file_exits_2(
    content: str, needle: str, procs: ProcFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    proc = await procs(
        sys.executable, "-m", "bridge", "--stdio", "true", "--api-keys-file", keys, "--port", "0"
    )
    assert await proc.exited(EXIT_TIMEOUT) == 2
    message = "\n".join(proc.lines)
    assert needle in message, message
    assert "Traceback" not in message


async def test_sigterm_with_a_child_held_back_exits_cleanly(
    procs: ProcFactory, tmp_path: Path
) -> None:
    """A child whose stdout the gateway stopped reading (its client reads nothing) is
    running at SIGTERM: the gateway exits 0, the child is gone, and stderr holds no
    ``Exception ignored in: <function BaseSubprocessTransport.__del__>`` with
    ``RuntimeError: Event loop is closed`` (issue #15)."""
    config = tmp_path / "servers.json"
    server = {"command": sys.executable, "args": [str(REPO / "tests/fixtures/flood_server.py")]}
    config.write_text(json.dumps({"mcpServers": {"flood": server}}))
    gateway, base = await start_gateway(
        procs, "--config", str(config), "--share", "none", "--stream-queue-size", "64",
        "--shutdown-timeout", "2",
    )  # fmt: skip
    flood = {"count": 6000, "size": 16 * 1024, "every": 100}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=EXIT_TIMEOUT)) as http:
        client = RawClient(http, f"{base}/mcp")
        await client.initialize()
        assert client.session_id is not None
        writer = await stalled_flood(f"{base}/mcp", client.session_id, flood)
        try:
            await gateway.wait_for(r"flooded 200\b", EXIT_TIMEOUT)  # held back from here on
            gateway.process.send_signal(signal.SIGTERM)
            assert await gateway.exited(EXIT_TIMEOUT) == 0
        finally:
            writer.close()
    assert not [line for line in gateway.lines if "Exception ignored" in line], gateway.lines[-20:]
    assert not [line for line in gateway.lines if "Event loop is closed" in line]
    [child] = [e["pid"] for e in gateway.json_events("child_started")]
    assert_gone(child)


# -- operator experience (issue #14) ----------------------------------------------------


async def run_bridge(
    procs: ProcFactory,
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[int, str]:
    """``mcp-bridge ARGS`` to its end: its exit status and all its output."""
    proc = await procs(
        sys.executable, "-m", "bridge", *args, env={"BRIDGE_CONFIG": "", **(env or {})}, cwd=cwd
    )
    code = await proc.exited(EXIT_TIMEOUT)
    return code, "\n".join(proc.lines)


async def test_help_names_every_setting_its_variable_default_and_unit(procs: ProcFactory) -> None:
    code, text = await run_bridge(procs, "--help")
    assert code == 0
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')} " in text, name
        assert f"BRIDGE_{name.upper()}; default:" in text, name
    assert "--session-ttl SECONDS" in text
    assert "BRIDGE_SESSION_TTL; default: 604800 s (7 days)" in text
    assert "--max-body-bytes BYTES" in text
    assert "4194304 (4 MiB)" in text
    assert "BRIDGE_OAUTH_ALGORITHMS; default: RS256,ES256" in text
    for command in ("sessions", "api-key NAME", "--check", "--version"):
        assert command in text
    for noise in ("{Path,null}", "null", "default factory", "<lambda>", "SecretStr"):
        assert noise not in text, noise


async def test_version(procs: ProcFactory) -> None:
    code, text = await run_bridge(procs, "--version")
    assert code == 0
    assert text == f"mcp-bridge {importlib.metadata.version('mcp-bridge-gateway')}"


async def test_list_setting_in_env_form_as_its_docs_show(procs: ProcFactory) -> None:
    """BRIDGE_ALLOWED_HOSTS=localhost used to crash with a SettingsError traceback."""
    example = f"{sys.executable} -m bridge.examples.server"
    _, base = await start_gateway(
        procs, "--stdio", example, env={"BRIDGE_ALLOWED_HOSTS": "localhost"}
    )
    async with aiohttp.ClientSession() as http:
        allowed = await http.get(f"{base}/healthz", headers={"Host": "localhost"})
        client = RawClient(http, f"{base}/mcp")
        refused = await client.post(client.request("ping"))  # Host: 127.0.0.1, not listed
    assert allowed.status == 200
    assert refused.status == 421


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        pytest.param({"BRIDGE_MAX_SESSIONS": "many"}, "BRIDGE_MAX_SESSIONS: 'many' is not a whole number", id="int"),
        pytest.param({"BRIDGE_ALLOWED_HOSTS": "[oops"}, "BRIDGE_ALLOWED_HOSTS: '[oops' is not a JSON list", id="list"),
        pytest.param({"BRIDGE_SHARE": "some"}, "BRIDGE_SHARE: 'some' must be 'none', 'principal' or 'all'", id="choice"),
    ],
)  # fmt: skip
async def test_bad_env_value_exits_2_with_a_message(
    env: dict[str, str], needle: str, procs: ProcFactory
) -> None:
    code, text = await run_bridge(procs, "--stdio", "true", "--port", "0", env=env)
    assert code == 2
    assert needle in text, text
    assert "Traceback" not in text


async def test_default_store_is_in_the_state_dir_and_startup_says_so(
    procs: ProcFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    work = tmp_path / "cwd"
    work.mkdir()
    env = {"XDG_STATE_HOME": str(state), "BRIDGE_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    example = f"{sys.executable} -m bridge.examples.server"
    proc = await procs(
        sys.executable, "-m", "bridge", "--stdio", example, "--port", "0", "--log-format", "json",
        env=env, cwd=work,
    )  # fmt: skip
    await proc.wait_for(r'"event": "listening"')
    [line] = proc.json_events("session_store")
    assert line["url"] == f"sqlite:///{state}/mcp-bridge/sessions.db"
    assert (state / "mcp-bridge" / "sessions.db").exists()
    assert list(work.iterdir()) == []  # nothing in the working directory


async def test_sessions_list_creates_nothing(procs: ProcFactory, tmp_path: Path) -> None:
    """``mcp-bridge sessions list`` run from / used to create /.mcp-bridge/."""
    state = tmp_path / "state"
    code, text = await run_bridge(
        procs, "sessions", "list", env={"XDG_STATE_HOME": str(state)}, cwd=Path("/")
    )
    assert (code, text) == (0, "")
    assert not await asyncio.to_thread(Path("/.mcp-bridge").exists)
    assert not state.exists()


async def test_check_prints_what_would_run(procs: ProcFactory, tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "servers": {
                    "files": {"type": "stdio", "command": "python3", "args": ["-m", "srv"], "env": {"T": "${env:TOKEN}"}},
                    "api": {"type": "http", "url": "http://127.0.0.1:9/mcp", "autoApprove": ["x"]},
                    "off": {"command": "nope-not-here", "disabled": True},
                }
            }
        )
    )  # fmt: skip
    code, text = await run_bridge(
        procs, "--check", "--config", config, "--store-url", f"sqlite:///{tmp_path}/db/s.db",
        env={"TOKEN": "secret-token-value"},
    )  # fmt: skip
    assert code == 0, text
    assert "server files: stdio: python3 -m srv (env T)" in text
    assert "  Streamable HTTP: http://127.0.0.1:8080/servers/files/mcp\n" in text
    assert "  legacy SSE:      http://127.0.0.1:8080/servers/files/sse\n" in text
    assert "server api: Streamable HTTP: http://127.0.0.1:9/mcp" in text
    assert "server off: disabled" in text
    assert "server api: client-only keys ignored: autoApprove" in text
    assert "configuration OK" in text
    assert "secret-token-value" not in text
    assert not (tmp_path / "db").exists()  # checked, not created


async def test_check_reports_every_problem_at_once(procs: ProcFactory, tmp_path: Path) -> None:
    config = tmp_path / "servers.yaml"
    config.write_text(
        "mcpServers:\n"
        "  gone: {command: no-such-command-anywhere}\n"
        "  badurl: {url: 'not a url'}\n"
        "  unset: {command: python3, env: {K: '${CHECK_UNSET_VAR}'}}\n"
        "  nodir: {command: python3, cwd: /no/such/dir}\n"
    )
    code, text = await run_bridge(
        procs, "--check", "--config", config, "--store-url", f"redis://127.0.0.1:{free_port()}/0",
        "--store-timeout", "2", "--session-ttl", "-5",
    )  # fmt: skip
    assert code == 2
    for needle in (
        "--session-ttl: '-5' must be more than 0",
        "server 'badurl': field 'url': 'not a url' is not a URL",
        "CHECK_UNSET_VAR is not set",
        "server 'gone': command 'no-such-command-anywhere' is not found on PATH",
    ):
        assert needle in text, text
    assert "Input should be" not in text
    assert "Traceback" not in text


async def test_check_reports_the_store_and_directory(procs: ProcFactory, tmp_path: Path) -> None:
    config = tmp_path / "servers.json"
    config.write_text(
        json.dumps({"mcpServers": {"d": {"command": "python3", "cwd": "/no/such/dir"}}})
    )
    code, text = await run_bridge(
        procs, "--check", "--config", config, "--store-url", f"redis://127.0.0.1:{free_port()}/0",
        "--store-timeout", "2", "--store-probe-timeout", "2",
    )  # fmt: skip
    assert code == 2
    assert "server 'd': cwd '/no/such/dir' is not a directory" in text
    assert "store redis://127.0.0.1:" in text
