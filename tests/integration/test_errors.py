"""Bad input gets the right HTTP status and a JSON-RPC error body (issue #2 error matrix).

spec 2025-11-25 transports §Sending Messages, §Session Management, §Protocol
Version Header; 2025-03-26 §batching. Every case also checks that the
gateway still serves the session afterwards where one exists.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bridge import errors
from tests.conftest import GatewayFactory, example_stdio
from tests.rawclient import LATEST, RawClient

LIMIT = 64 * 1024  # max_body_bytes for these tests


@pytest.fixture
async def client(gateway: GatewayFactory) -> AsyncIterator[RawClient]:
    base = (await gateway([example_stdio()], max_body_bytes=LIMIT)).url
    async with aiohttp.ClientSession() as http:
        raw = RawClient(http, f"{base}/http")
        await raw.initialize()
        yield raw
        await raw.delete()


def ping(client: RawClient) -> dict[str, Any]:
    return client.request("ping")


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        pytest.param({"Accept": "application/json"}, 406, errors.INVALID_REQUEST, id="accept-json-only"),
        pytest.param({"Accept": "text/event-stream"}, 406, errors.INVALID_REQUEST, id="accept-sse-only"),
        pytest.param({"Accept": "text/html"}, 406, errors.INVALID_REQUEST, id="accept-html"),
        pytest.param({"Content-Type": "text/plain"}, 415, errors.INVALID_REQUEST, id="content-type"),
        pytest.param({"MCP-Protocol-Version": "1999-01-01"}, 400, errors.INVALID_REQUEST, id="version"),
        pytest.param({"Mcp-Session-Id": "no-such-session"}, 404, errors.SESSION_NOT_FOUND, id="unknown-session"),
        pytest.param({"Mcp-Session-Id": "bad\tid"}, 404, errors.SESSION_NOT_FOUND, id="non-visible-ascii-session"),
        pytest.param({"Mcp-Session-Id": ""}, 400, errors.INVALID_REQUEST, id="missing-session"),
        pytest.param({"Host": "evil.example.com"}, 421, errors.INVALID_REQUEST, id="foreign-host"),
        pytest.param({"Origin": "http://evil.example.com"}, 403, errors.INVALID_REQUEST, id="foreign-origin"),
    ],
)  # fmt: skip
async def test_header_errors(
    client: RawClient, headers: dict[str, str], status: int, code: int
) -> None:
    reply = await client.post(ping(client), **headers)
    assert (reply.status, reply.error_code) == (status, code)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.messages[0]["jsonrpc"] == "2.0"
    assert (await client.post(ping(client))).status == 200  # the session still works


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        pytest.param(b'{"jsonrpc": "2.0", "id": 1, "method": ', 400, errors.PARSE_ERROR, id="truncated-json"),
        pytest.param(b"\xff\xfe not utf-8", 400, errors.PARSE_ERROR, id="not-utf8"),
        pytest.param(b'{"hello": "world"}', 400, errors.INVALID_REQUEST, id="not-jsonrpc"),
        pytest.param(b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', 400, errors.INVALID_REQUEST, id="jsonrpc-1.0"),
        pytest.param(b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', 400, errors.INVALID_REQUEST, id="bool-id"),
        pytest.param(b'"just a string"', 400, errors.INVALID_REQUEST, id="scalar"),
        pytest.param(b"[]", 400, errors.INVALID_REQUEST, id="empty-batch"),
    ],
)  # fmt: skip
async def test_body_errors(client: RawClient, raw: bytes, status: int, code: int) -> None:
    reply = await client.post(None, raw)
    assert (reply.status, reply.error_code) == (status, code)


async def test_error_body_carries_request_id(client: RawClient) -> None:
    reply = await client.post(ping(client), **{"Mcp-Session-Id": "gone"})
    assert reply.status == 404
    assert reply.messages[0]["id"] == client._next_id


async def test_oversized_body_is_413(client: RawClient) -> None:
    big = client.request("tools/call", {"name": "echo", "arguments": {"text": "x" * LIMIT}})
    reply = await client.post(big)
    assert (reply.status, reply.error_code) == (413, errors.INVALID_REQUEST)
    chunked = await client.http.post(
        client.url, data=_chunks(json.dumps(big).encode()), headers=client.headers()
    )
    assert chunked.status == 413
    assert (await chunked.json())["error"]["code"] == errors.INVALID_REQUEST


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 4096):
        yield data[start : start + 4096]


async def test_delete_then_reuse_is_404(client: RawClient) -> None:
    assert await client.delete() == 200
    reply = await client.post(ping(client))
    assert (reply.status, reply.error_code) == (404, errors.SESSION_NOT_FOUND)
    assert await client.delete() == 404


async def test_batch_refused_after_2025_03_26(client: RawClient) -> None:
    reply = await client.post([ping(client), ping(client)])
    assert (reply.status, reply.error_code) == (400, errors.INVALID_REQUEST)
    assert "2025-03-26" in reply.messages[0]["error"]["message"]


async def test_batch_served_on_2025_03_26(gateway: GatewayFactory) -> None:
    base = (await gateway([example_stdio()])).url
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/http")
        init = await client.initialize("2025-03-26")
        assert init.messages[0]["result"]["protocolVersion"] == "2025-03-26"
        batch = [
            client.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}),
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
            client.request("ping"),
        ]
        reply = await client.post(batch, **{"MCP-Protocol-Version": "2025-03-26"})
        assert reply.status == 200
        assert sorted(m["id"] for m in reply.messages) == [batch[0]["id"], batch[2]["id"]]
        by_id = {m["id"]: m for m in reply.messages}
        assert by_id[batch[0]["id"]]["result"]["content"][0]["text"] == "3.0"
        only_notifications = [{"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}]
        assert (await client.post(only_notifications)).status == 202
        await client.delete()


async def test_initialize_in_batch_is_refused(client: RawClient) -> None:
    reply = await client.post([client.request("initialize", {}), ping(client)])
    assert (reply.status, reply.error_code) == (400, errors.INVALID_REQUEST)


async def test_notification_and_response_get_202(client: RawClient) -> None:
    assert (await client.post({"jsonrpc": "2.0", "method": "notifications/x"})).status == 202
    # A response to a server request the gateway never sent is accepted and dropped.
    assert (await client.post({"jsonrpc": "2.0", "id": 999, "result": {}})).status == 202


async def test_missing_version_header_is_accepted(client: RawClient) -> None:
    """spec 2025-06-18 §Protocol Version Header: absent means 2025-03-26 (SHOULD)."""
    reply = await client.post(ping(client))
    assert reply.status == 200
    assert reply.messages == [{"jsonrpc": "2.0", "id": client._next_id, "result": {}}]
    reply = await client.post(ping(client), **{"MCP-Protocol-Version": LATEST})
    assert reply.status == 200


async def test_get_stream_rules(client: RawClient) -> None:
    wrong = await client.http.get(client.url, headers=client.headers(Accept="application/json"))
    assert wrong.status == 406
    first = await client.http.get(client.url, headers=client.headers(Accept="text/event-stream"))
    assert first.status == 200
    assert first.content_type == "text/event-stream"
    assert first.headers["Cache-Control"] == "no-cache, no-transform"
    assert first.headers["X-Accel-Buffering"] == "no"
    second = await client.http.get(client.url, headers=client.headers(Accept="text/event-stream"))
    assert second.status == 409
    assert (await second.json())["error"]["code"] == errors.INVALID_REQUEST
    first.close()


async def test_method_not_allowed_and_unknown_server(client: RawClient) -> None:
    async with client.http.put(client.url, headers=client.headers()) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert (await resp.json())["error"]["code"] == errors.INVALID_REQUEST
    base = client.url.removesuffix("/http")
    async with client.http.post(
        f"{base}/servers/nope/http", json=ping(client), headers=client.headers()
    ) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == errors.METHOD_NOT_FOUND


async def test_unreachable_upstream_fails_initialize_cleanly(gateway: GatewayFactory) -> None:
    from tests.conftest import free_port, sse_spec

    base = (await gateway([sse_spec(f"http://127.0.0.1:{free_port()}/sse")])).url
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/http")
        reply = await client.post(client.request("initialize", {"protocolVersion": LATEST}))
        assert (reply.status, reply.error_code) == (503, errors.UPSTREAM_UNAVAILABLE)
        assert "Mcp-Session-Id" not in reply.headers
        health = await http.get(f"{base}/healthz")
        assert (await health.json())["sessions"] == 0


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_upstream_silent_on_initialize_times_out(gateway: GatewayFactory, share: str) -> None:
    """An upstream that reads but never answers: the client gets an error, not a hang."""
    from bridge.settings import StdioServer

    mute = StdioServer(
        name="mute", command=sys.executable, args=("-c", "import sys\nfor _ in sys.stdin: pass")
    )
    gw = await gateway([mute], initialize_timeout=0.5, share=share)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        request = client.request("initialize", {"protocolVersion": LATEST, "capabilities": {}})
        async with asyncio.timeout(10):
            reply = await client.post(request)
        if share != "none":  # the gateway's own handshake upstream timed out: no session
            assert (reply.status, reply.error_code) == (504, errors.UPSTREAM_TIMEOUT)
            return
        assert reply.status == 200  # the SSE stream had started before the timeout
        [answer] = reply.messages
        assert answer["id"] == request["id"]
        assert answer["error"]["code"] == errors.UPSTREAM_TIMEOUT
        client.session_id = reply.headers["Mcp-Session-Id"]
        assert (await client.post(client.request("ping"))).status == 404


async def test_sessionless_later_era_request_is_checked_as_that_era(client: RawClient) -> None:
    """spec-notes §7, issue #11: a sessionless 2026-07-28 request is served in its own era;
    here its ``_meta`` lacks the namespaced version key: 400 -32602, not a fallback 400."""
    client.session_id = None
    discover = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {"_meta": {"protocolVersion": "2026-07-28"}},
    }
    reply = await client.post(discover, **{"MCP-Protocol-Version": "2026-07-28"})
    assert (reply.status, reply.error_code) == (400, errors.INVALID_PARAMS)
    assert "io.modelcontextprotocol/protocolVersion" in reply.messages[0]["error"]["message"]
    assert "Mcp-Session-Id" not in reply.headers
