"""What the gateway tells its operator: startup lines, /readyz on failing upstreams,
request log lines (issue #14 "Run")."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from tests.conftest import ProcFactory, free_port, start_gateway
from tests.rawclient import RawClient

ADMIN = "admin-token-for-tests"
BOUND = 30.0  # seconds for a log line to come
INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "t", "version": "0"},
}


async def test_startup_warns_of_an_unreachable_store(procs: ProcFactory) -> None:
    """An unreachable store is a warning before ``listening``; ``listening`` is info."""
    port = free_port()  # nothing listens there
    url = f"redis://:hunter2-store-password@127.0.0.1:{port}/0"
    gateway, base = await start_gateway(
        procs, "--stdio", f"{sys.executable} -m bridge.examples.server", "--store-url", url,
        "--store-timeout", "2",
    )  # fmt: skip
    [warning] = gateway.json_events("store_unavailable")
    assert warning["level"] == "warning"
    assert f"127.0.0.1:{port}" in warning["store"]
    assert warning["error"]
    [listening] = gateway.json_events("listening")
    assert listening["level"] == "info"
    assert gateway.lines.index(json.dumps(warning)) < gateway.lines.index(json.dumps(listening))
    assert "hunter2-store-password" not in "\n".join(gateway.lines)
    async with aiohttp.ClientSession() as http:
        ready = await (await http.get(f"{base}/readyz")).json()
        assert ready["status"] == "degraded"
        assert ready["store"]["status"] == "unavailable"


async def test_store_that_answers_is_logged_ok(procs: ProcFactory) -> None:
    gateway, _ = await start_gateway(
        procs, "--stdio", f"{sys.executable} -m bridge.examples.server"
    )
    [ok] = gateway.json_events("store_ok")
    assert ok["level"] == "info"
    assert ok["store"] == "memory://"
    assert not gateway.json_events("store_unavailable")


async def test_first_connects_are_logged_and_readyz_names_failing_upstreams(
    procs: ProcFactory, tmp_path: Path
) -> None:
    """Each upstream's first connect is logged, ok or failed; /readyz says which
    upstream fails and why (URL or command, errno), credentials redacted."""
    closed = free_port()
    config = tmp_path / "servers.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "good": {"command": sys.executable, "args": ["-m", "bridge.examples.server"]},
                    "refused": {
                        "url": f"http://alice:s3cret-pw@127.0.0.1:{closed}/mcp",
                        "type": "streamable-http",
                    },
                    "missing": {"command": str(tmp_path / "no-such-command")},
                    # A Streamable HTTP connect does no I/O: the handshake decides.
                    "own": {
                        "url": f"http://127.0.0.1:{closed}/mcp",
                        "type": "streamable-http",
                        "share": "none",
                    },
                }
            }
        )
    )
    gateway, base = await start_gateway(
        procs, "--config", str(config), env={"BRIDGE_ADMIN_TOKEN": ADMIN}
    )
    async with aiohttp.ClientSession() as http:
        ready = await (await http.get(f"{base}/readyz")).json()
        assert ready["status"] == "ok"  # nothing tried yet
        await RawClient(http, f"{base}/servers/good/mcp").initialize()
        for name in ("refused", "missing", "own"):
            client = RawClient(http, f"{base}/servers/{name}/mcp")
            reply = await client.post(client.request("initialize", INIT))
            # Mode none: the client's own initialize went up, its answer is the error.
            assert reply.messages[-1]["error"]["code"] == -32030, (name, reply)
        await gateway.wait_for_lines('"event": "upstream_first_connect"', 4, BOUND)
        first = {e["server"]: e for e in gateway.json_events("upstream_first_connect")}
        assert first["good"]["outcome"] == "ok"
        assert first["good"]["level"] == "info"
        assert first["good"]["command"] == sys.executable
        assert first["refused"]["outcome"] == "failed"
        assert first["refused"]["level"] == "warning"
        assert first["refused"].get("errno") == "ECONNREFUSED", first["refused"]
        assert first["missing"].get("errno") == "ENOENT", first["missing"]
        assert first["missing"]["command"] == str(tmp_path / "no-such-command")
        assert (first["own"]["outcome"], first["own"].get("errno")) == ("failed", "ECONNREFUSED")

        response = await http.get(f"{base}/readyz")
        assert response.status == 200  # another replica would fail the same way
        ready = await response.json()
        assert ready["status"] == "degraded"
        assert ready["store"] == {"status": "ok"}
        assert ready["failing"] == ["missing", "own", "refused"]
        upstreams = ready["upstreams"]
        assert upstreams["good"]["status"] == "up"
        refused = upstreams["refused"]
        assert refused["status"] == "failing"
        assert refused["errno"] == "ECONNREFUSED"
        assert refused["reason"] == "Connection refused"
        assert refused["url"] == f"http://[redacted]@127.0.0.1:{closed}/mcp"
        assert refused["error"]
        missing = upstreams["missing"]
        assert (missing["errno"], missing["command"]) == (
            "ENOENT",
            str(tmp_path / "no-such-command"),
        )
        everything = "\n".join(gateway.lines) + json.dumps(ready)
        assert "s3cret-pw" not in everything


async def test_long_requests_get_a_start_line_and_targets_are_logged_and_counted(
    procs: ProcFactory,
) -> None:
    """A request past BRIDGE_LOG_REQUEST_START_AFTER is logged when it has run that
    long, and again at its end; tools/call lines name the tool, resources/read
    lines the URI scheme, and both are counted by that label."""
    gateway, base = await start_gateway(
        procs, "--stdio", f"{sys.executable} -m bridge.examples.server",
        "--log-request-start-after", "0.5",
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/mcp")
        await client.initialize()
        call = client.request("tools/call", {"name": "slow", "arguments": {"steps": 1, "delay": 3}})
        slow = asyncio.ensure_future(client.post(call))
        # The start line comes while the call still runs (it takes 3 s).
        match = await gateway.wait_for(
            r'^(?=.*"event": "request_start")(?=.*"rpc_method": "tools/call")', 10.0
        )
        assert not slow.done()
        start = json.loads(match.string)
        assert (start["rpc_method"], start["tool"], start["path"]) == ("tools/call", "slow", "/mcp")
        assert start["running_ms"] >= 500
        assert (await slow).status == 200
        read = await client.post(client.request("resources/read", {"uri": "example://greeting"}))
        assert read.status == 200
        samples = await (await http.get(f"{base}/metrics")).text()
        await gateway.wait_for(r'^(?=.*"event": "request")(?=.*"rpc_method": "resources/read")')
    ends = {e["rpc_method"]: e for e in gateway.json_events("request")}
    assert ends["tools/call"]["tool"] == "slow"
    assert ends["tools/call"]["duration_ms"] >= 3000
    assert ends["resources/read"]["uri_scheme"] == "example"
    assert "tool" not in ends["resources/read"]
    labels = 'outcome="ok",server="default"'
    assert (
        f'mcp_bridge_request_targets_total{{method="tools/call",{labels},target="slow"}} 1.0'
        in samples
    )
    assert (
        f'mcp_bridge_request_targets_total{{method="resources/read",{labels},target="example"}} 1.0'
        in samples
    )
