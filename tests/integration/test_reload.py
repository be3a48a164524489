"""Reloading the servers without a restart: SIGHUP and the opt-in file watch (issue #14).

A real gateway process with a config file; the file is edited, the gateway
told (SIGHUP) or left to notice (BRIDGE_CONFIG_WATCH), and each test waits for
the ``config_reloaded`` (or ``config_reload_refused``) log line, bounded.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Proc, ProcFactory, start_gateway
from tests.rawclient import RawClient, next_message, read_reply

BOUND = 30.0  # seconds for a reload, a request
GAUGES = ("mcp_bridge_pool_upstream_sessions", "mcp_bridge_pool_waiting")
EXAMPLE = {"command": sys.executable, "args": ["-m", "bridge.examples.server"]}


def write(path: Path, servers: dict[str, Any]) -> None:
    path.write_text(json.dumps({"mcpServers": servers}))


def started(gateway: Proc, server: str) -> int:
    return sum(e["server"] == server for e in gateway.json_events("child_started"))


async def reloaded(gateway: Proc, count: int, event: str = "config_reloaded") -> dict[str, Any]:
    """The ``count``-th ``event`` line (1-based), once it is there."""
    await gateway.wait_for_lines(f'"event": "{event}"', count, BOUND)
    return gateway.json_events(event)[count - 1]


async def add(client: RawClient) -> Any:
    reply = await client.post(
        client.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
    )
    assert reply.status == 200, reply
    return reply.messages[-1]["result"]["structuredContent"]["result"]


async def test_sighup_adds_removes_and_changes_servers(procs: ProcFactory, tmp_path: Path) -> None:
    config = tmp_path / "servers.json"
    write(config, {"keep": EXAMPLE, "drop": EXAMPLE, "alter": EXAMPLE})
    gateway, base = await start_gateway(procs, "--config", str(config))
    async with aiohttp.ClientSession() as http:
        clients = {n: RawClient(http, f"{base}/servers/{n}/mcp") for n in ("keep", "drop", "alter")}
        for client in clients.values():
            await client.initialize()
            assert await add(client) == 5
        keep_id = clients["keep"].session_id
        assert keep_id is not None
        drop = clients["drop"]
        # A call in flight on the server about to go (its first progress seen),
        # and its session's GET stream.
        call = drop.request("tools/call", {"name": "slow", "arguments": {"steps": 100, "delay": 0.1},
                                           "_meta": {"progressToken": "p"}})  # fmt: skip
        slow = await http.post(drop.url, json=call, headers=drop.headers())
        assert (await next_message(slow))["method"] == "notifications/progress"
        stream = await http.get(drop.url, headers=drop.headers(Accept="text/event-stream"))
        assert stream.status == 200

        write(config, {"keep": EXAMPLE, "alter": {**EXAMPLE, "env": {"X": "2"}}, "fresh": EXAMPLE})
        gateway.process.send_signal(signal.SIGHUP)
        line = await reloaded(gateway, 1)
        assert line["trigger"] == "SIGHUP"
        assert (line["added"], line["removed"]) == (["fresh"], ["drop"])
        assert (line["changed"], line["unchanged"]) == (["alter"], ["keep"])

        # Removed: the call in flight got an error, the GET stream ended, the
        # next request is a 404 naming no server, and its child exited.
        async with asyncio.timeout(BOUND):
            rest = await read_reply(slow)
            assert rest.messages[-1]["id"] == call["id"]
            assert "error" in rest.messages[-1], rest
            await read_reply(stream)  # ends
        gone = await drop.post(drop.request("tools/list"))
        assert gone.status == 404
        assert "drop" in gone.messages[0]["error"]["message"]
        await gateway.wait_for('^(?=.*"event": "child_stopped")(?=.*"server": "drop")', BOUND)
        closed = gateway.json_events("server_closed")
        assert {e["server"] for e in closed} == {"drop", "alter"}

        # Unchanged: the same session and child, untouched.
        assert await add(clients["keep"]) == 5
        assert clients["keep"].session_id == keep_id
        assert started(gateway, "keep") == 1
        released = gateway.json_events("session_released")
        assert not [e for e in released if e["session_id"] == keep_id[:8]]

        # Changed: the session resumes on the new definition (a new child).
        assert await add(clients["alter"]) == 5
        await gateway.wait_for_lines('^(?=.*"child_started")(?=.*"server": "alter")', 2, BOUND)

        # Added: serves at once.
        fresh = RawClient(http, f"{base}/servers/fresh/mcp")
        await fresh.initialize()
        assert await add(fresh) == 5

        # A bad configuration is refused, with a log line; the servers stay.
        config.write_text('{"mcpServers": {"broken": {"command": ""}')
        gateway.process.send_signal(signal.SIGHUP)
        refused = await reloaded(gateway, 1, "config_reload_refused")
        assert refused["level"] == "error"
        assert str(config) in refused["error"]
        assert await add(clients["keep"]) == 5
        assert await add(fresh) == 5
        ready = await (await http.get(f"{base}/readyz")).json()
        assert set(ready["upstreams"]) == {"keep", "alter", "fresh"}
        metrics = await (await http.get(f"{base}/metrics")).text()
        assert 'mcp_bridge_sessions_ended_total{reason="reconfigured",server="drop"} 1.0' in metrics
        gauges = [line for line in metrics.splitlines() if line.startswith(GAUGES)]
        assert gauges
        assert not [line for line in gauges if 'server="drop"' in line]
    assert await gateway.stop() == 0


async def test_file_watch_reloads_and_short_paths_follow(
    procs: ProcFactory, tmp_path: Path
) -> None:
    """With BRIDGE_CONFIG_WATCH a saved file is enough; /mcp names the server only
    while exactly one is configured."""
    config = tmp_path / "servers.yaml"
    config.write_text(f"mcpServers:\n  one:\n    command: {sys.executable}\n"
                      "    args: [-m, bridge.examples.server]\n")  # fmt: skip
    gateway, base = await start_gateway(
        procs,
        "--config",
        str(config),
        env={"BRIDGE_CONFIG_WATCH": "true", "BRIDGE_CONFIG_WATCH_INTERVAL": "0.2"},
    )
    async with aiohttp.ClientSession() as http:
        short = RawClient(http, f"{base}/mcp")
        await short.initialize()
        assert await add(short) == 5

        tmp = tmp_path / "servers.yaml.new"  # an editor's save: write, then rename over
        tmp.write_text(config.read_text() + f"  two:\n    command: {sys.executable}\n"
                       "    args: [-m, bridge.examples.server]\n")  # fmt: skip
        tmp.replace(config)
        line = await reloaded(gateway, 1)
        assert (line["trigger"], line["added"], line["unchanged"]) == (
            "file changed",
            ["two"],
            ["one"],
        )

        two = RawClient(http, f"{base}/servers/two/mcp")
        await two.initialize()
        assert await add(two) == 5
        ambiguous = await short.post(short.request("tools/list"))
        assert ambiguous.status == 404
        assert "/servers/NAME" in ambiguous.messages[0]["error"]["message"]
        served = RawClient(http, f"{base}/servers/one/mcp")
        served.session_id = short.session_id  # the same session, by its full URL
        assert await add(served) == 5
    assert await gateway.stop() == 0
