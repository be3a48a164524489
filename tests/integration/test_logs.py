"""What the gateway logs is bounded and holds no whole session id (issue #15 "Logs").

A real gateway (subprocess, JSON logs) with the stdio fixture server:

- a 3,000,000-character JSON-RPC method, a long request id and an upstream
  error quoting them: every log line stays under ``LINE_MAX`` characters and
  the ``request`` line's ``rpc_method`` is cut, not whole;
- ``/admin/sessions/ID`` (show, evict) logs the id's first characters, never
  the whole id.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import aiohttp

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
