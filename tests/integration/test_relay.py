"""What crosses the gateway, seen from the upstream's side (spec-notes §1.5, §4.6-4.8).

The upstream is tests/fixtures/recorder_server.py, which writes down every
message it receives. Covered: id rewriting, cancellation in both directions,
a dropped stream that must not cancel, server->client requests and their
responses, keepalive comments on idle streams.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import errors
from bridge.settings import StdioServer
from tests.conftest import REPO, GatewayFactory, RunningGateway
from tests.rawclient import RawClient, next_message, read_reply

RECORDER = REPO / "tests" / "fixtures" / "recorder_server.py"
BOUND = 10.0  # seconds


class Recorded:
    def __init__(self, path: Path) -> None:
        self.path = path

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def calls(self, name: str) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages()
            if m.get("method") == "tools/call" and m["params"]["name"] == name
        ]

    def cancels(self) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m.get("method") == "notifications/cancelled"]


@pytest.fixture(params=["none", "principal"])
def share(request: pytest.FixtureRequest) -> str:
    """Each test runs with an upstream of its own and on a shared one (issue #10)."""
    return str(request.param)


@pytest.fixture
async def recorded(
    gateway: GatewayFactory, tmp_path: Path, share: str
) -> AsyncIterator[tuple[RunningGateway, RawClient, Recorded]]:
    path = tmp_path / "received.jsonl"
    path.touch()
    spec = StdioServer(name="rec", command=sys.executable, args=(str(RECORDER), str(path)))
    gw = await gateway([spec], sse_keepalive_interval=0.2, share=share)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        yield gw, client, Recorded(path)


def call(client: RawClient, name: str) -> dict[str, Any]:
    return client.request("tools/call", {"name": name, "arguments": {}})


async def test_ids_are_rewritten_and_restored(
    recorded: tuple[RunningGateway, RawClient, Recorded],
) -> None:
    _, client, record = recorded
    request = call(client, "release")
    request["id"] = "client-chosen-id"
    reply = await client.post(request)
    assert reply.messages == [
        {
            "jsonrpc": "2.0",
            "id": "client-chosen-id",
            "result": {"content": [{"type": "text", "text": "release done"}]},
        }
    ]
    [upstream] = record.calls("release")
    assert isinstance(upstream["id"], int)  # the gateway's own id space upstream


async def test_client_cancel_reaches_upstream_and_ends_stream(
    recorded: tuple[RunningGateway, RawClient, Recorded],
) -> None:
    _, client, record = recorded
    hold = call(client, "hold")
    async with asyncio.timeout(BOUND):
        stream = await client.http.post(client.url, json=hold, headers=client.headers())
        await client.post(call(client, "sync"))  # the recorder handles messages in order
        [upstream_hold] = record.calls("hold")
        cancel = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": hold["id"]},
        }
        assert (await client.post(cancel)).status == 202
        reply = await read_reply(stream)  # ends without a response (the client asked for none)
        await client.post(call(client, "sync"))  # the recorder has written the cancel now
    assert reply.messages == []
    [upstream_cancel] = record.cancels()
    assert upstream_cancel["params"]["requestId"] == upstream_hold["id"]
    # A late answer from the upstream is dropped, and the session goes on.
    assert (await client.post(call(client, "release"))).messages[0]["result"]


async def test_dropped_stream_does_not_cancel_upstream(
    recorded: tuple[RunningGateway, RawClient, Recorded],
) -> None:
    _, client, record = recorded
    async with asyncio.timeout(BOUND):
        stream = await client.http.post(
            client.url, json=call(client, "hold"), headers=client.headers()
        )
        assert stream.status == 200
        stream.close()  # the client goes away mid-request
        reply = await client.post(call(client, "release"))  # answers the held call too
    assert reply.messages[-1]["result"]["content"][0]["text"] == "release done"
    assert record.calls("hold")
    assert record.cancels() == []  # spec 2025-11-25: a disconnect is not a cancel


@pytest.mark.parametrize("share", ["none"])
async def test_server_request_round_trip_and_upstream_cancel(
    recorded: tuple[RunningGateway, RawClient, Recorded],
) -> None:
    _, client, record = recorded
    ask = call(client, "ask")
    async with asyncio.timeout(BOUND):
        response = await client.http.post(client.url, json=ask, headers=client.headers())
        roots_request = await next_message(response)
        assert roots_request["method"] == "roots/list"
        assert roots_request["id"] != "srv-ask"  # a gateway id downstream
        answer = {
            "jsonrpc": "2.0",
            "id": roots_request["id"],
            "result": {"roots": [{"uri": "file:///w"}]},
        }
        assert (await client.post(answer)).status == 202
        reply = await read_reply(response)
    assert json.loads(reply.messages[-1]["result"]["content"][0]["text"]) == [{"uri": "file:///w"}]
    [upstream_answer] = [m for m in record.messages() if m.get("id") == "srv-ask"]
    assert upstream_answer["result"]["roots"] == [{"uri": "file:///w"}]

    reply = await client.post(call(client, "ask-then-cancel"))
    request, cancel, result = reply.messages
    assert request["method"] == "roots/list"
    assert cancel["method"] == "notifications/cancelled"
    assert cancel["params"]["requestId"] == request["id"]  # rewritten like the request
    assert result["result"]["content"][0]["text"] == "cancelled"


@pytest.mark.parametrize("share", ["principal", "all"])
async def test_roots_are_never_relayed_on_a_shared_upstream(
    recorded: tuple[RunningGateway, RawClient, Recorded],
) -> None:
    """One client's roots must not widen another's reach (bridge.pool.mux rule 5)."""
    _, client, record = recorded
    reply = await client.post(call(client, "ask"))
    [result] = reply.messages  # no roots/list reached the client
    assert json.loads(result["result"]["content"][0]["text"]) == []
    [refusal] = [m for m in record.messages() if m.get("id") == "srv-ask"]
    assert refusal["error"]["code"] == errors.METHOD_NOT_FOUND
    [handshake] = [m for m in record.messages() if m.get("method") == "initialize"]
    assert "roots" not in handshake["params"]["capabilities"]
    assert handshake["params"]["clientInfo"]["name"] == "mcp-bridge"


async def test_idle_streams_get_keepalive_comments(
    recorded: tuple[RunningGateway, RawClient, Recorded],
) -> None:
    _, client, _ = recorded
    async with asyncio.timeout(BOUND):
        stream = await client.http.get(
            client.url, headers=client.headers(Accept="text/event-stream")
        )
        priming = await stream.content.readuntil(b"\r\n\r\n")
        assert priming.startswith(b"id: ")  # 2025-11-25: something to resume from
        assert await stream.content.readuntil(b"\r\n\r\n") == b": ping\r\n\r\n"
        stream.close()


async def test_upstream_request_timeout_errors_and_cancels(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A request the upstream never answers ends in -32032 and a cancel upstream."""
    path = tmp_path / "received.jsonl"
    path.touch()
    spec = StdioServer(name="rec", command=sys.executable, args=(str(RECORDER), str(path)))
    gw = await gateway([spec], upstream_request_timeout=0.5)
    record = Recorded(path)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        hold = call(client, "hold")
        async with asyncio.timeout(BOUND):
            reply = await client.post(hold)
            await client.post(call(client, "sync"))  # orders the recorder's writes
        [answer] = reply.messages
        assert answer["id"] == hold["id"]
        assert answer["error"]["code"] == errors.UPSTREAM_TIMEOUT
        [upstream_hold] = record.calls("hold")
        [cancel] = record.cancels()
        assert cancel["params"]["requestId"] == upstream_hold["id"]
