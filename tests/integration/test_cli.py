"""The ``mcp-bridge`` command: configuration errors, one-flag upstreams, logs, health.

A bad configuration exits with status 2 and a message naming the file, the
server and the field, before any port is bound (issue #2 "The interface").
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

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
