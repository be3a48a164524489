"""The upstream pool (issue #10): many client sessions over few upstream sessions.

Real parts only: the gateway on a socket, stdio children, SDK clients. What
is asserted is what the issue makes the first requirement: every reply and
every server-to-client request reaches exactly the client that caused it,
tenants never share an upstream session, and sharing keeps concurrency.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.context import RequestContext
from pydantic import SecretStr
from pytest_aiohttp import AiohttpServer

from bridge import errors
from bridge.settings import StdioServer, StreamableHttpServer
from tests.conftest import REPO, GatewayFactory, RunningGateway, fixture_stdio
from tests.rawclient import RawClient, keyed

STDIO_FIXTURE = REPO / "tests" / "fixtures" / "stdio_server.py"
RECORDER = REPO / "tests" / "fixtures" / "recorder_server.py"
BOUND = 60.0  # seconds for a whole scenario


def stdio_fixture(name: str = "echo", **fields: Any) -> StdioServer:
    return StdioServer(name=name, command=sys.executable, args=(str(STDIO_FIXTURE),), **fields)


def text_of(reply_message: dict[str, Any]) -> str:
    return str(reply_message["result"]["content"][0]["text"])


def children(gw: RunningGateway) -> list[psutil.Process]:
    """The gateway runs in this process: its stdio upstreams are our children."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and str(STDIO_FIXTURE) in " ".join(p.cmdline())
    ]


async def readyz_pool(http: aiohttp.ClientSession, gw: RunningGateway, server: str) -> Any:
    ready = await (await http.get(f"{gw.url}/readyz")).json()
    return ready["upstreams"][server]["pool"]


async def test_200_sessions_x_10_echo_through_one_shared_child_without_crosstalk(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway([stdio_fixture()])
    outcome: Counter[str] = Counter()

    async def client_run(http: aiohttp.ClientSession, n: int) -> None:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        for i in range(10):
            text = f"client {n} call {i}"
            reply = await client.post(
                client.request("tools/call", {"name": "echo", "arguments": {"text": text}})
            )
            if reply.status != 200 or "result" not in reply.messages[-1]:
                outcome["failed"] += 1
            else:
                outcome["right" if text_of(reply.messages[-1]) == text else "wrong"] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*(client_run(http, n) for n in range(200)))
        pool = await readyz_pool(http, gw, "echo")
    assert outcome == Counter({"right": 2000})
    assert (pool["size"], pool["starts"], pool["clients"]) == (1, 1, 200)
    assert len(children(gw)) == 1
    assert len(gw.hub) == 200  # the 101st client of one principal is not refused


async def test_tenants_never_share_an_upstream_session_and_one_principal_does(
    gateway: GatewayFactory,
) -> None:
    keys = "alice:tok-alice,bob:tok-bob"
    gw = await gateway([stdio_fixture()], api_keys=SecretStr(keys))

    async def upstream_of(http: aiohttp.ClientSession, token: str) -> dict[str, int]:
        client = keyed(http, f"{gw.url}/http", token)
        await client.initialize()
        reply = await client.post(client.request("tools/call", {"name": "pid", "arguments": {}}))
        return json.loads(text_of(reply.messages[-1]))  # type: ignore[no-any-return]

    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        alice_1, alice_2, bob = await asyncio.gather(
            upstream_of(http, "tok-alice"),
            upstream_of(http, "tok-alice"),
            upstream_of(http, "tok-bob"),
        )
    assert alice_1["pid"] == alice_2["pid"]  # seen from the upstream's side
    assert alice_1["initialized"] == 1  # one gateway handshake, not one per client
    assert bob["pid"] != alice_1["pid"]


async def test_share_none_gives_each_client_its_own_child_and_replays_its_initialize(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway([stdio_fixture(share="none")])
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        pids = set()
        for _ in range(3):
            client = RawClient(http, f"{gw.url}/http")
            init = await client.initialize()
            assert init.messages[0]["result"]["serverInfo"]["name"] == "stdio-fixture"
            reply = await client.post(
                client.request("tools/call", {"name": "pid", "arguments": {}})
            )
            pids.add(json.loads(text_of(reply.messages[-1]))["pid"])
        pool = await readyz_pool(http, gw, "echo")
    assert len(pids) == 3
    assert (pool["share"], pool["size"]) == ("none", 3)


async def test_each_client_gets_its_own_initialize_answer_at_its_own_version(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway([stdio_fixture()])
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        old, new = RawClient(http, f"{gw.url}/http"), RawClient(http, f"{gw.url}/http")
        old_init = (await old.initialize("2025-03-26")).messages[0]["result"]
        new_init = (await new.initialize("2025-11-25")).messages[0]["result"]
    assert (old_init["protocolVersion"], new_init["protocolVersion"]) == (
        "2025-03-26",
        "2025-11-25",
    )
    assert (
        old_init["serverInfo"]
        == new_init["serverInfo"]
        == {"name": "stdio-fixture", "version": "1"}
    )


async def test_concurrent_slow_calls_on_a_shared_session_overlap(gateway: GatewayFactory) -> None:
    """200 concurrent calls of a tool that calls nobody back take about one call's time."""
    gw = await gateway([fixture_stdio()])
    seconds = 1.0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http, asyncio.timeout(BOUND):
        clients = [RawClient(http, f"{gw.url}/http") for _ in range(200)]
        await asyncio.gather(*(c.initialize() for c in clients))
        started = time.monotonic()
        replies = await asyncio.gather(
            *(
                c.post(
                    c.request(
                        "tools/call", {"name": "pool_sleep", "arguments": {"seconds": seconds}}
                    )
                )
                for c in clients
            )
        )
        took = time.monotonic() - started
        pool = await readyz_pool(http, gw, "fixture")
    assert all(text_of(r.messages[-1]) == f"slept {seconds}" for r in replies)
    assert took < seconds * 10  # serialized, they would take 200 s
    assert pool["size"] == 1


async def _sampling_client(url: str, n: int, seen: dict[int, list[str]]) -> str:
    async def sample(
        context: RequestContext[ClientSession, Any], params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        seen[n].append(prompt.text if isinstance(prompt, types.TextContent) else "?")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"answer for client {n}"),
            model="test-model",
        )

    async with (
        streamable_http_client(url) as (read, write, _),
        ClientSession(read, write, sampling_callback=sample) as session,
    ):
        await session.initialize()
        result = await session.call_tool("test_sampling", {"prompt": f"prompt of client {n}"})
        content = result.content[0]
        return content.text if isinstance(content, types.TextContent) else "?"


async def test_concurrent_sampling_clients_each_get_exactly_their_own_request_and_result(
    gateway: GatewayFactory,
) -> None:
    """Attribution under concurrency, against a real SDK server over stdio (mux rule 3)."""
    gw = await gateway([fixture_stdio()], pool_max=4)
    seen: dict[int, list[str]] = {n: [] for n in range(20)}
    async with asyncio.timeout(BOUND):
        results = await asyncio.gather(
            *(_sampling_client(f"{gw.url}/http", n, seen) for n in range(20))
        )
    assert results == [f"LLM response: answer for client {n}" for n in range(20)]
    assert seen == {n: [f"prompt of client {n}"] for n in range(20)}
    async with aiohttp.ClientSession() as http:
        pool = await readyz_pool(http, gw, "fixture")
    assert 1 <= pool["size"] <= 4


async def test_a_client_without_sampling_is_never_sent_another_clients_sampling_request(
    gateway: GatewayFactory,
) -> None:
    """The server sees a client without the capability: the tool reports it, nobody is asked."""
    gw = await gateway([fixture_stdio()])
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()  # declares no capabilities
        reply = await client.post(
            client.request("tools/call", {"name": "test_sampling", "arguments": {"prompt": "p"}})
        )
    [result] = reply.messages  # no sampling/createMessage on the stream
    assert result["result"]["isError"] is True


async def test_a_full_pool_answers_503_with_retry_after(gateway: GatewayFactory) -> None:
    """share none, max 1: a second client waits ``pool_wait_timeout``, then is refused."""
    gw = await gateway([stdio_fixture(share="none", pool={"max": 1})], pool_wait_timeout=0.3)
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        await RawClient(http, f"{gw.url}/http").initialize()
        second = RawClient(http, f"{gw.url}/http")
        reply = await second.post(
            second.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        )
        ready = await (await http.get(f"{gw.url}/readyz")).json()
    assert (reply.status, reply.error_code) == (503, errors.LIMIT_EXCEEDED)
    assert reply.headers["Retry-After"] == "1"
    assert ready["upstreams"]["echo"]["pool"]["refused"] == 1


async def test_a_lost_upstream_session_fails_its_requests_and_is_replaced(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway([stdio_fixture()])
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        echo = client.request("tools/call", {"name": "pid", "arguments": {}})
        first = json.loads(text_of((await client.post(echo)).messages[-1]))["pid"]
        child = psutil.Process(first)
        child.kill()
        child.wait(10)
        replies = []
        for _ in range(3):  # the first may meet the dead one; then a replacement serves
            reply = await client.post(
                client.request("tools/call", {"name": "pid", "arguments": {}})
            )
            replies.append(reply.messages[-1])
            if "result" in reply.messages[-1]:
                break
        second = json.loads(text_of(replies[-1]))["pid"]
        pool = await readyz_pool(http, gw, "echo")
    assert second != first
    assert all(r["error"]["code"] == errors.UPSTREAM_UNAVAILABLE for r in replies[:-1])
    assert (pool["size"], pool["losses"], pool["starts"]) == (1, 1, 2)


@pytest.mark.parametrize("share", ["principal", "all"])
async def test_log_levels_and_subscriptions_are_each_clients_own(
    gateway: GatewayFactory, share: str
) -> None:
    gw = await gateway([fixture_stdio()], share=share)
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        quiet, chatty = RawClient(http, f"{gw.url}/http"), RawClient(http, f"{gw.url}/http")
        await quiet.initialize()
        await chatty.initialize()
        await quiet.post(quiet.request("logging/setLevel", {"level": "error"}))
        await chatty.post(chatty.request("logging/setLevel", {"level": "debug"}))
        logged = await quiet.post(
            quiet.request("tools/call", {"name": "test_tool_with_logging", "arguments": {}})
        )
        assert [m for m in logged.messages if m.get("method") == "notifications/message"] == []
        logged = await chatty.post(
            chatty.request("tools/call", {"name": "test_tool_with_logging", "arguments": {}})
        )
        assert [m for m in logged.messages if m.get("method") == "notifications/message"]


async def test_legacy_and_streamable_clients_share_one_child(gateway: GatewayFactory) -> None:
    """The legacy front door (/sse) borrows from the same pool."""
    from mcp.client.sse import sse_client

    gw = await gateway([stdio_fixture()])
    async with asyncio.timeout(BOUND):
        async with (
            sse_client(f"{gw.url}/sse") as (read, write),
            ClientSession(read, write) as legacy,
        ):
            await legacy.initialize()
            legacy_pid = (await legacy.call_tool("pid", {})).content[0]
        async with aiohttp.ClientSession() as http:
            client = RawClient(http, f"{gw.url}/http")
            await client.initialize()
            reply = await client.post(
                client.request("tools/call", {"name": "pid", "arguments": {}})
            )
            pool = await readyz_pool(http, gw, "echo")
    assert isinstance(legacy_pid, types.TextContent)
    assert json.loads(legacy_pid.text)["pid"] == json.loads(text_of(reply.messages[-1]))["pid"]
    assert pool["starts"] == 1


async def test_upstream_cookies_never_cross_principals(
    gateway: GatewayFactory, aiohttp_server: AiohttpServer
) -> None:
    """issue #15 (High): a cookie an upstream sets for one principal's upstream session
    must not ride on another principal's requests (the gateway keeps no cookie jar)."""
    cookies: list[str | None] = []

    async def mcp(request: web.Request) -> web.StreamResponse:
        cookies.append(request.headers.get("Cookie"))
        if request.method != "POST":
            return web.Response(status=405 if request.method == "GET" else 200)
        message = await request.json()
        if "id" not in message:
            return web.Response(status=202)
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
        if message["method"] == "initialize":
            answer["result"] = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                                "serverInfo": {"name": "cookie-setter", "version": "1"}}  # fmt: skip
            response = web.json_response(answer, headers={"Mcp-Session-Id": secrets.token_hex(8)})
            response.set_cookie("upstream-session", secrets.token_hex(8))
            return response
        return web.json_response(answer)

    app = web.Application()
    app.router.add_route("*", "/mcp", mcp)
    upstream = await aiohttp_server(app)
    # A host name, not an IP literal: a cookie jar would keep cookies for it.
    url = f"http://localhost:{upstream.port}/mcp"
    spec = StreamableHttpServer(name="cookies", url=url, type="streamable-http")
    gw = await gateway([spec], api_keys=SecretStr("alice:tok-alice,bob:tok-bob"))
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        for token in ("tok-alice", "tok-bob", "tok-alice"):
            client = keyed(http, f"{gw.url}/http", token)
            await client.initialize()
            assert (await client.post(client.request("tools/list"))).status == 200
    assert len(cookies) >= 4
    assert cookies == [None] * len(cookies)


async def test_subscriptions_are_reference_counted_upstream(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Two clients subscribe to one URI: the upstream hears one subscribe, and one
    unsubscribe once the last of them lets go."""
    record = tmp_path / "received.jsonl"
    record.touch()
    spec = StdioServer(name="rec", command=sys.executable, args=(str(RECORDER), str(record)))
    gw = await gateway([spec])

    def upstream(method: str) -> list[Any]:
        lines = [json.loads(line) for line in record.read_text().splitlines()]
        return [m["params"]["uri"] for m in lines if m.get("method") == method]

    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        one, two = RawClient(http, f"{gw.url}/http"), RawClient(http, f"{gw.url}/http")
        await one.initialize()
        await two.initialize()
        for client in (one, two):
            reply = await client.post(client.request("resources/subscribe", {"uri": "file:///a"}))
            assert reply.messages[-1]["result"] == {}
        sync = {"name": "sync", "arguments": {}}  # answered once all before it is recorded
        await one.post(one.request("tools/call", sync))
        assert upstream("resources/subscribe") == ["file:///a"]
        await one.post(one.request("resources/unsubscribe", {"uri": "file:///a"}))
        await one.post(one.request("tools/call", sync))
        assert upstream("resources/unsubscribe") == []  # two still listens
        await two.post(two.request("resources/unsubscribe", {"uri": "file:///a"}))
        await two.post(two.request("tools/call", sync))
        assert upstream("resources/unsubscribe") == ["file:///a"]


async def test_a_full_pool_makes_room_by_closing_the_longest_idle_session(
    gateway: GatewayFactory,
) -> None:
    """pool max 1, two principals: each takes the one upstream session in turn."""
    keys = SecretStr("alice:tok-alice,bob:tok-bob")
    gw = await gateway([stdio_fixture(pool={"max": 1})], api_keys=keys)

    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        url = f"{gw.url}/http"
        alice, bob = keyed(http, url, "tok-alice"), keyed(http, url, "tok-bob")
        await alice.initialize()
        await bob.initialize()  # alice's idle session makes room
        for client in (alice, bob, alice):
            reply = await client.post(
                client.request("tools/call", {"name": "pid", "arguments": {}})
            )
            assert "result" in reply.messages[-1]
        pool = await readyz_pool(http, gw, "echo")
    assert pool["size"] == 1
    assert pool["starts"] >= 3
    assert pool["refused"] == 0
