"""Streamable HTTP upstreams (spec 2025-11-25 transports §Streamable HTTP) and detection.

Through the gateway, with the official SDK client in front:

- the scenario of test_sdk_clients (initialize, tools, progress before the
  result, a sampling round trip, resources, prompts, ping, DELETE) to FastMCP
  and to server-everything over Streamable HTTP; the upstream session is
  DELETEd too; and FastMCP answering in JSON instead of SSE;
- the upstream restarts mid-session (SIGKILL, then a new process on the same
  port): the client's next request succeeds on the same gateway session with
  no re-initialize, because the gateway re-initialized upstream;
- detection (spec §Backwards Compatibility, spec-notes §2.5) of a type-less
  URL: FastMCP's /mcp is Streamable HTTP (the probe's session is DELETEd, and
  two sessions cause one probe); a FastMCP legacy server whose SSE path was
  moved to /events, so that the path does not say "sse" and the probe's POST
  gets 405, is legacy SSE; a URL where neither works fails the client's
  initialize with 503 and is probed again next time.

The connection on its own, against real servers: a forgotten upstream session
(FastMCP answers 404, server-everything 400 "No valid session ID") raises
UpstreamUnavailable from send() and ends messages(); a POST stream the server
closes before the answer (the fixture's test_reconnection, SEP-1699) is
resumed with GET + Last-Event-ID. Against an in-process fake, where timing is
the test's to decide: a JSON answer slower than the send timeout still
arrives; a stream that ends unanswered and without ids answers its request
with -32030; the headers; aclose() DELETEs and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from pytest_aiohttp import AiohttpServer

from bridge import errors
from bridge.errors import UpstreamUnavailable
from bridge.jsonrpc import Message
from bridge.settings import AutoHttpServer, StreamableHttpServer
from bridge.upstreams.base import UpstreamTimeouts
from bridge.upstreams.detect import AutoHttpUpstream
from bridge.upstreams.streamable_http import StreamableHttpConnection, StreamableHttpUpstream
from tests.conftest import (
    EVERYTHING,
    FIXTURE_SERVER,
    GatewayFactory,
    Proc,
    ProcFactory,
    free_port,
    start_fixture_http,
)
from tests.integration.test_sdk_clients import EVERYTHING as EVERYTHING_PROFILE
from tests.integration.test_sdk_clients import FASTMCP, run_scenario
from tests.rawclient import RawClient

BOUND = 30.0  # seconds for any one wait
FASTMCP_SESSION = "Created new transport with session ID: "  # the py SDK's INFO log
FASTMCP_DELETED = "Terminating session: "
EVERYTHING_SESSION = "Session initialized with ID: "
TIMEOUTS = UpstreamTimeouts(
    connect=10.0, read=60.0, send=10.0, shutdown_grace=2.0, max_message_bytes=1 << 20
)


async def start_everything_http(procs: ProcFactory, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    proc = await procs(EVERYTHING, "streamableHttp", env={"PORT": str(port)})
    await proc.wait_for(f"listening on port {port}")
    return proc, f"http://127.0.0.1:{port}/mcp"


SERVERS = {
    "fastmcp": (start_fixture_http, FASTMCP, FASTMCP_SESSION),
    "everything": (start_everything_http, EVERYTHING_PROFILE, EVERYTHING_SESSION),
}


def http_spec(url: str) -> StreamableHttpServer:
    return StreamableHttpServer(name="remote", url=url, type="streamable-http")


def text(result: types.CallToolResult) -> str:
    assert not result.isError, result
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def distinct(proc: Proc, prefix: str, count: int) -> list[str]:
    """The ids in the first ``count`` distinct lines ``prefix ID`` of ``proc``'s output."""
    found: list[str] = []
    for _ in range(count):
        exclude = "".join(f"(?!{re.escape(f)})" for f in found)
        match = await proc.wait_for(re.escape(prefix) + exclude + r"(\S+)", within=BOUND)
        found.append(match.group(1))
    return found


# -- through the gateway -----------------------------------------------------


@pytest.mark.parametrize("share", ["none", "principal"])
@pytest.mark.parametrize("server", ["fastmcp", "everything"])
async def test_sdk_client_scenario(
    server: str, share: str, procs: ProcFactory, gateway: GatewayFactory
) -> None:
    start, profile, created = SERVERS[server]
    upstream, url = await start(procs)
    gw = await gateway([http_spec(url)], share=share)
    await run_scenario(f"{gw.url}/mcp", profile)
    if share != "none":  # the pool keeps its upstream session for the next client
        assert gw.hub.pools["remote"].health()["size"] == 1
        await gw.hub.close_pools()  # ... until the gateway stops: then it is DELETEd
    if server == "fastmcp":  # the gateway's DELETE went upstream too
        (session_id,) = await distinct(upstream, created, 1)
        await upstream.wait_for(re.escape(FASTMCP_DELETED + session_id), within=BOUND)
    else:
        await upstream.wait_for("Received session termination request", within=BOUND)


async def test_fastmcp_answering_in_json(procs: ProcFactory, gateway: GatewayFactory) -> None:
    """json_response mode: each request's answer is one JSON body (no progress, no sampling)."""
    _, url = await start_fixture_http(procs, None, "--json-response")
    gw = await gateway([http_spec(url)])
    async with (
        streamable_http_client(f"{gw.url}/mcp") as (read, write, _),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        name, args, expected = FASTMCP.tool
        assert expected in text(await client.call_tool(name, args))
        uri, needle = FASTMCP.resource
        contents = (await client.read_resource(uri)).contents  # type: ignore[arg-type]
        assert any(needle in getattr(c, "text", "") for c in contents)
        assert isinstance(await client.send_ping(), types.EmptyResult)


@pytest.mark.parametrize("share", ["none", "principal"])
@pytest.mark.parametrize("server", ["fastmcp", "everything"])
async def test_upstream_restart_mid_session(
    server: str, share: str, procs: ProcFactory, gateway: GatewayFactory
) -> None:
    start, profile, created = SERVERS[server]
    port = free_port()
    upstream, url = await start(procs, port)
    gw = await gateway([http_spec(url)], share=share)
    pool = gw.hub.pools["remote"]
    name, args, expected = profile.tool
    async with (
        streamable_http_client(f"{gw.url}/mcp") as (read, write, get_session_id),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        assert expected in text(await client.call_tool(name, args))
        session_id = get_session_id()
        assert session_id is not None
        session = await gw.hub.get(session_id, "remote")

        await upstream.stop(signal.SIGKILL)
        restarted, _ = await start(procs, port)
        async with asyncio.timeout(BOUND):  # the gateway notices: GET stream gone, session unknown
            if share == "none":
                await session.ended.wait()
            while share != "none" and not pool.counts.losses:  # the pool's session instead
                await pool.changed()
        assert expected in text(await client.call_tool(name, args))
        assert get_session_id() == session_id
        # The gateway's session resumed on a new upstream session of the new process
        # (shared: the client session went on, on the pool's replacement).
        await distinct(restarted, created, 1)
        resumed = await gw.hub.get(session_id, "remote")
        assert (resumed is not session) if share == "none" else (resumed is session)


async def test_detects_streamable_http_once(procs: ProcFactory, gateway: GatewayFactory) -> None:
    upstream, url = await start_fixture_http(procs)
    # An upstream session per client session, each DELETEd when its client leaves.
    gw = await gateway([AutoHttpServer(name="remote", url=url)], share="none")
    detector = gw.hub.upstreams["remote"]
    assert isinstance(detector, AutoHttpUpstream)
    assert detector.transport is None
    name, args, expected = FASTMCP.tool
    for _ in range(2):
        async with (
            streamable_http_client(f"{gw.url}/mcp") as (read, write, _),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            assert expected in text(await client.call_tool(name, args))
        assert detector.transport == "streamable-http"
    # One probe and two sessions; every one of them was DELETEd.
    created = await distinct(upstream, FASTMCP_SESSION, 3)
    assert sorted(await distinct(upstream, FASTMCP_DELETED, 3)) == sorted(created)
    assert sum(FASTMCP_SESSION in line for line in upstream.lines) == 3


async def test_detects_legacy_sse_where_post_gets_405(
    procs: ProcFactory, gateway: GatewayFactory
) -> None:
    port = free_port()
    upstream = await procs(
        sys.executable, FIXTURE_SERVER, "--transport", "sse",
        "--sse-path", "/events", "--port", str(port),
    )  # fmt: skip
    await upstream.wait_for("Uvicorn running on")
    gw = await gateway([AutoHttpServer(name="remote", url=f"http://127.0.0.1:{port}/events")])
    await run_scenario(f"{gw.url}/mcp", FASTMCP)
    detector = gw.hub.upstreams["remote"]
    assert isinstance(detector, AutoHttpUpstream)
    assert detector.transport == "sse"
    await upstream.wait_for(r'"POST /events HTTP/1\.1" 405', within=BOUND)


async def test_detection_failure_is_an_error_and_not_remembered(
    procs: ProcFactory, gateway: GatewayFactory
) -> None:
    _, url = await start_fixture_http(procs)
    gw = await gateway([AutoHttpServer(name="remote", url=url.replace("/mcp", "/nothing"))])
    detector = gw.hub.upstreams["remote"]
    assert isinstance(detector, AutoHttpUpstream)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/mcp")
        for _ in range(2):
            params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}}
            reply = await client.post(client.request("initialize", params))
            assert reply.status == 503, reply
            assert reply.error_code == errors.UPSTREAM_UNAVAILABLE
            assert detector.transport is None


# -- the connection on its own, against real servers -------------------------


def initialize(version: str = "2025-11-25") -> Message:
    params = {
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    }
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


async def next_message(messages: AsyncIterator[Message]) -> Message:
    async with asyncio.timeout(BOUND):
        return await anext(messages)


async def opened(
    http: aiohttp.ClientSession, url: str, timeouts: UpstreamTimeouts = TIMEOUTS
) -> tuple[StreamableHttpConnection, AsyncIterator[Message]]:
    """A connection that has been answered ``initialize``."""
    connection = await StreamableHttpUpstream(http_spec(url), http, timeouts).connect()
    messages = connection.messages()
    await connection.send(initialize())
    assert "result" in await next_message(messages)
    return connection, messages


@pytest.mark.parametrize("server", ["fastmcp", "everything"])
async def test_forgotten_upstream_session_ends_the_connection(
    server: str, procs: ProcFactory
) -> None:
    start, _, _ = SERVERS[server]
    port = free_port()
    upstream, url = await start(procs, port)
    async with aiohttp.ClientSession() as http:
        connection, messages = await opened(http, url)
        assert connection.session_id is not None
        assert connection.protocol_version == "2025-11-25"
        await upstream.stop(signal.SIGKILL)
        await start(procs, port)
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        with pytest.raises(UpstreamUnavailable, match="session is gone"):
            await connection.send(ping)  # FastMCP: 404; server-everything: 400
        with pytest.raises(UpstreamUnavailable, match="session is gone"):
            await next_message(messages)
        with pytest.raises(UpstreamUnavailable):
            await connection.send(ping)
        await connection.aclose()


async def test_post_stream_closed_before_its_answer_is_resumed(procs: ProcFactory) -> None:
    """SEP-1699: the fixture closes the stream mid-call; the answer comes by Last-Event-ID."""
    upstream, url = await start_fixture_http(procs)
    async with aiohttp.ClientSession() as http:
        connection, messages = await opened(http, url)
        await connection.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "test_reconnection", "arguments": {}}
        await connection.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        while "id" not in (message := await next_message(messages)):
            assert message["method"] == "notifications/message"
        assert message["id"] == 2
        assert "Reconnection test completed" in json.dumps(message["result"])
        await connection.aclose()
    resumes = [line for line in upstream.lines if '"GET /mcp HTTP/1.1" 200' in line]
    assert len(resumes) >= 2  # the standalone stream, and at least one resume


# -- the connection on its own, against a fake whose timing the test holds ---


class Fake:
    """A Streamable HTTP server whose ``slow`` answer waits for :attr:`release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[tuple[str, str | None, str | None, str | None]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/mcp", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        message: dict[str, Any] = await request.json() if request.method == "POST" else {}
        headers = request.headers
        self.seen.append(
            (
                str(message.get("method", request.method)),
                headers.get("Mcp-Session-Id"),
                headers.get("MCP-Protocol-Version"),
                headers.get("X-Token"),
            )
        )
        if request.method != "POST":
            return web.Response(status=405 if request.method == "GET" else 200)
        if "id" not in message:
            return web.Response(status=202)
        method, answer = message["method"], {"jsonrpc": "2.0", "id": message["id"], "result": {}}
        if method == "initialize":
            answer["result"] = {"protocolVersion": "2025-06-18", "capabilities": {}}
            return web.json_response(answer, headers={"Mcp-Session-Id": "fake-session"})
        if method == "slow":
            await self.release.wait()
            return web.json_response(answer)
        # "broken": an event without an id, then the end, and no answer
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {}}
        await response.write(f"event: message\ndata: {json.dumps(note)}\n\n".encode())
        return response


async def test_connection_against_a_fake(aiohttp_server: AiohttpServer) -> None:
    fake = Fake()
    server = await aiohttp_server(fake.app())
    timeouts = UpstreamTimeouts(
        connect=10.0, read=60.0, send=0.5, shutdown_grace=2.0, max_message_bytes=1 << 20
    )
    spec = StreamableHttpServer(
        name="fake", url=str(server.make_url("/mcp")), headers={"X-Token": "t"}
    )
    async with aiohttp.ClientSession() as http:
        connection = await StreamableHttpUpstream(spec, http, timeouts).connect()
        messages = connection.messages()
        await connection.send(initialize())
        await next_message(messages)
        assert (connection.session_id, connection.protocol_version) == (
            "fake-session",
            "2025-06-18",
        )
        await connection.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

        # send() returns though the server holds its JSON answer past the send timeout.
        await connection.send({"jsonrpc": "2.0", "id": 2, "method": "slow"})
        fake.release.set()
        assert (await next_message(messages))["id"] == 2

        await connection.send({"jsonrpc": "2.0", "id": 3, "method": "broken"})
        assert (await next_message(messages))["method"] == "notifications/message"
        answer = await next_message(messages)
        assert answer["id"] == 3
        assert answer["error"]["code"] == errors.UPSTREAM_UNAVAILABLE

        await connection.aclose()
        assert await anext(messages, None) is None
    leftover = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("upstream-")]
    assert leftover == []
    session, version = "fake-session", "2025-06-18"
    # The GET (answered 405: no standalone stream, which is fine) races the next POST.
    assert ("GET", session, version, "t") in fake.seen
    assert [s for s in fake.seen if s[0] != "GET"] == [
        ("initialize", None, None, "t"),
        ("notifications/initialized", session, version, "t"),
        ("slow", session, version, "t"),
        ("broken", session, version, "t"),
        ("DELETE", session, version, "t"),
    ]
