"""The test load balancer (tests/balancer.py) against plain aiohttp backends on 127.0.0.1.

Round robin per request (on one keep-alive client connection too), what is
forwarded and what is not, SSE relayed chunk by chunk, refused backends
skipped, a backend dying mid-body, a client leaving, and the process form.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.balancer import Balancer
from tests.conftest import REPO, ProcFactory, free_port

BOUND: Final = 10.0  # seconds for any one step of these tests
#: Every client request of these tests, whole (they are all short).
CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout(total=BOUND)


def echo_app(name: str) -> web.Application:
    """A backend that answers with its name and everything it was sent, as JSON."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path_qs": request.rel_url.raw_path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(),
            },
            headers={"X-Backend": name, "Keep-Alive": "timeout=5", "Proxy-Thing": "x"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def backends(aiohttp_server: AiohttpServer) -> list[str]:
    """Three echo backends, ``a``, ``b`` and ``c``; their base URLs."""
    servers = [await aiohttp_server(echo_app(name)) for name in "abc"]
    return [f"http://127.0.0.1:{s.port}" for s in servers]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        yield session


async def test_round_robin_per_request_on_one_keep_alive_connection(backends: list[str]) -> None:
    connections = 0

    async def created(*_: object) -> None:
        nonlocal connections
        connections += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(created)
    connector = aiohttp.TCPConnector(limit=1)
    async with (
        Balancer(backends) as lb,
        aiohttp.ClientSession(
            connector=connector, trace_configs=[trace], timeout=CLIENT_TIMEOUT
        ) as client,
    ):
        seen = []
        for _ in range(7):
            async with client.get(lb.url + "/x") as response:
                seen.append((await response.json())["backend"])
        assert seen == list("abcabca")
        assert connections == 1  # one client connection, three backends
        assert lb.counts.requests == {backends[0]: 3, backends[1]: 2, backends[2]: 2}
        assert lb.counts.own_5xx == 0


async def test_forwards_request_and_response_minus_hop_by_hop(
    backends: list[str], http: aiohttp.ClientSession
) -> None:
    async with (
        Balancer(backends[:1]) as lb,
        http.post(
            lb.url + "/mcp/path?a=1&b=%20x",
            data=b'{"hello": "world"}',
            headers={
                "Host": "gateway.example:8080",
                "Content-Type": "application/json",
                "X-Forwarded-For": "10.0.0.1",
                "Connection": "keep-alive, X-Conn-Only",
                "X-Conn-Only": "dropped",
                "Proxy-Authorization": "Basic secret",
                "TE": "trailers",
                "Mcp-Session-Id": "abc",
            },
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Backend"] == "a"
        assert "Keep-Alive" not in response.headers
        assert "Proxy-Thing" not in response.headers
        seen = await response.json()
    assert seen["method"] == "POST"
    assert seen["path_qs"] == "/mcp/path?a=1&b=%20x"
    assert seen["body"] == '{"hello": "world"}'
    headers = seen["headers"]
    assert headers["host"] == "gateway.example:8080"  # as the client sent it
    assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert headers["mcp-session-id"] == "abc"
    assert headers["content-type"] == "application/json"
    for gone in ("x-conn-only", "proxy-authorization", "te"):
        assert gone not in headers, gone


async def test_streams_a_request_body_without_buffering_it(
    aiohttp_server: AiohttpServer, http: aiohttp.ClientSession
) -> None:
    """The backend gets the first body chunk while the client still holds the rest."""
    first_chunk = asyncio.Event()

    async def upload(request: web.Request) -> web.Response:
        received = b""
        async for chunk in request.content.iter_any():
            received += chunk
            first_chunk.set()
        return web.Response(text=received.decode())

    app = web.Application()
    app.router.add_post("/up", upload)
    server = await aiohttp_server(app)

    async def body() -> AsyncIterator[bytes]:
        yield b"one,"
        async with asyncio.timeout(BOUND):
            await first_chunk.wait()  # a balancer that buffered the body would hang here
        yield b"two"

    async with (
        Balancer([f"http://127.0.0.1:{server.port}"]) as lb,
        http.post(lb.url + "/up", data=body()) as response,
    ):
        assert await response.text() == "one,two"


async def test_sse_events_arrive_before_the_backend_ends_the_stream(
    aiohttp_server: AiohttpServer, http: aiohttp.ClientSession
) -> None:
    got_first = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        async with asyncio.timeout(BOUND):
            await got_first.wait()  # ends only once the client has the first event
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/sse", events)
    server = await aiohttp_server(app)
    async with (
        Balancer([f"http://127.0.0.1:{server.port}"]) as lb,
        http.get(lb.url + "/sse") as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        async with asyncio.timeout(BOUND):
            assert await response.content.readline() == b"data: one\n"
            got_first.set()
            assert await response.read() == b"\ndata: two\n\n"


async def test_a_refused_backend_is_skipped_and_all_refused_is_502(
    backends: list[str], http: aiohttp.ClientSession
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with Balancer([down, backends[0]]) as lb:
        for _ in range(4):
            async with http.get(lb.url + "/") as response:
                assert response.status == 200
                assert (await response.json())["backend"] == "a"
        assert lb.counts.refused[down] == 2  # every other request tried it first
        assert lb.counts.requests == {backends[0]: 4}

        lb.set_backends([down])
        async with http.get(lb.url + "/") as response:
            assert response.status == 502
            assert response.content_type == "text/plain"
            assert "no backend accepted" in await response.text()
        assert lb.counts.own_5xx == 1

        lb.set_backends(backends[1:2])  # changed at runtime
        async with http.get(lb.url + "/") as response:
            assert (await response.json())["backend"] == "b"


async def test_a_backend_dying_mid_body_ends_the_client_response(
    aiohttp_server: AiohttpServer, http: aiohttp.ClientSession
) -> None:
    async def dies(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        assert request.transport is not None
        request.transport.abort()  # no terminating chunk: the body is cut
        return response

    app = web.Application()
    app.router.add_get("/sse", dies)
    server = await aiohttp_server(app)
    async with (
        Balancer([f"http://127.0.0.1:{server.port}"]) as lb,
        http.get(lb.url + "/sse") as response,
    ):
        assert response.status == 200
        async with asyncio.timeout(BOUND):
            assert await response.content.readline() == b"data: one\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert lb.counts.own_5xx == 0


async def test_a_client_gone_closes_the_backend_request(
    aiohttp_server: AiohttpServer,
) -> None:
    started, ended = asyncio.Event(), asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": open\n\n")
        started.set()
        try:
            await asyncio.Event().wait()  # until the connection goes (the handler is cancelled)
        finally:
            ended.set()
        return response

    app = web.Application()
    app.router.add_get("/sse", endless)
    server = await aiohttp_server(app)
    async with Balancer([f"http://127.0.0.1:{server.port}"]) as lb:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as client:
            response = await client.get(lb.url + "/sse")
            async with asyncio.timeout(BOUND):
                await started.wait()
            response.close()  # the client leaves mid-stream
        async with asyncio.timeout(BOUND):
            await ended.wait()


async def test_runs_as_a_process(procs: ProcFactory, backends: list[str]) -> None:
    argv = [sys.executable, "-m", "tests.balancer", "--port", "0"]
    for backend in backends[:2]:
        argv += ["--backend", backend]
    balancer = await procs(*argv, cwd=REPO)
    match = await balancer.wait_for(r"^balancer listening on (http://127\.0\.0\.1:\d+)$", BOUND)
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        seen = []
        for _ in range(3):
            async with http.get(match[1] + "/") as response:
                seen.append(json.loads(await response.text())["backend"])
    assert seen == ["a", "b", "a"]
