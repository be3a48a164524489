"""What the gateway logs is bounded and holds no whole session id (issue #15 "Logs").

A real gateway (subprocess, JSON logs) with the stdio fixture server:

- a 3,000,000-character JSON-RPC method, a long request id and an upstream
  error quoting them: every log line stays under ``LINE_MAX`` characters and
  the ``request`` line's ``rpc_method`` is cut, not whole;
- ``/admin/sessions/ID`` (show, evict) logs the id's first characters, never
  the whole id;
- a child that floods stderr is logged at most ``--stderr-log-lines`` lines
  per ``--stderr-log-interval``; what was dropped is logged once per interval
  (``child_stderr_dropped``) and counted in ``mcp_bridge_stderr_dropped_total``.
"""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bridge.log import FIELD_MAX
from tests.conftest import REPO, ProcFactory, start_gateway
from tests.rawclient import RawClient, read_reply

STDIO_SERVER = REPO / "tests" / "fixtures" / "stdio_server.py"
ADMIN = "admin-token-for-the-log-test"
#: Characters of one log line: a few bounded fields, far below the megabytes sent.
LINE_MAX = 16 * FIELD_MAX
BOUND = 20.0  # seconds for any one wait


def config(tmp_path: Path, *args: str) -> Path:
    path = tmp_path / "servers.json"
    server = {"command": sys.executable, "args": [str(STDIO_SERVER), *args]}
    path.write_text(json.dumps({"mcpServers": {"fixture": server}}))
    return path


async def test_client_fields_are_bounded_and_admin_paths_hold_no_session_id(
    procs: ProcFactory, tmp_path: Path
) -> None:
    gateway, base = await start_gateway(
        procs, "--config", str(config(tmp_path)), "--admin-token", ADMIN
    )
    huge_method = "m" * 3_000_000
    huge_id = "i" * 100_000
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as http:
        client = RawClient(http, f"{base}/mcp")
        await client.initialize()
        assert client.session_id
        # The fixture answers -32601 "no method MMM...": the upstream quotes it back.
        body = json.dumps({"jsonrpc": "2.0", "id": huge_id, "method": huge_method}).encode()
        async with http.post(client.url, data=io.BytesIO(body), headers=client.headers()) as sent:
            reply = await read_reply(sent)
        assert reply.messages[-1]["error"]["code"] == -32601
        async with http.get(f"{base}/admin/sessions/{client.session_id}", headers=auth) as shown:
            assert shown.status == 200
        async with http.delete(f"{base}/admin/sessions/{client.session_id}", headers=auth) as gone:
            assert gone.status == 200
    await gateway.stop()
    longest = max(gateway.lines, key=len)
    assert len(longest) <= LINE_MAX, longest[:300]
    [line] = [r for r in gateway.json_events("request") if (r["rpc_method"] or "")[:3] == "mmm"]
    assert len(line["rpc_method"]) <= FIELD_MAX
    admin = [r for r in gateway.json_events("request") if r["path"].startswith("/admin/")]
    assert len(admin) == 2
    for record in admin:
        assert record["path"].startswith(f"/admin/sessions/{client.session_id[:8]}")
    assert not [line for line in gateway.lines if client.session_id in line]


async def test_a_stderr_flood_is_rate_limited_and_counted(
    procs: ProcFactory, tmp_path: Path
) -> None:
    flood = 20_000
    lines, interval = 50, 1.0
    gateway, base = await start_gateway(
        procs,
        "--config", str(config(tmp_path, "--stderr-flood", str(flood))),
        "--share", "none",  # the session's own child: its DELETE ends it
        "--stderr-log-lines", str(lines),
        "--stderr-log-interval", str(interval),
    )  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as http:
        client = RawClient(http, f"{base}/mcp")
        await client.initialize()
        await gateway.wait_for(r'"event": "child_stderr_dropped"', BOUND)
        assert await client.delete() == 200
        stopped = json.loads((await gateway.wait_for(r'"event": "child_stopped"', BOUND)).string)
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
    [started] = gateway.json_events("child_started")
    seconds = (at(stopped) - at(started)).total_seconds()  # the child's life, logged lines and all
    logged = [e for e in gateway.json_events("child_stderr") if e["line"].startswith("flood ")]
    reports = gateway.json_events("child_stderr_dropped")
    dropped = sum(r["dropped"] for r in reports)
    assert len(logged) + dropped == flood  # every line either logged or counted
    # A bucket of `lines`, refilled at `lines` per `interval`; one report per interval.
    assert len(logged) <= lines * (1 + seconds / interval) + 1, (len(logged), seconds)
    assert len(reports) <= 2 + seconds / interval
    assert all(r["server"] == "fixture" and r["interval_s"] == interval for r in reports)
    [family] = [
        f for f in text_string_to_metric_families(text) if f.name == "mcp_bridge_stderr_dropped"
    ]
    [sample] = [s for s in family.samples if s.name.endswith("_total")]
    assert sample.labels == {"server": "fixture"}
    assert sample.value == dropped


def at(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["timestamp"])
