"""Hostile upstreams get a bounded, logged failure, never a gateway crash (issue #5 "Bad input").

One gateway process serves every case: each case is its own server in the
gateway's config, pointing at a path of tests/fixtures/hostile_upstream.py
(legacy HTTP+SSE, Streamable HTTP and detected upstreams) or running it as a
stdio child. A raw client initializes through the Streamable HTTP front door
and, for each case, the test asserts that:

- the client gets one JSON-RPC error answering its request, with the code
  bridge/errors.py gives the failure, within the setting that bounds it
  (each set small here) plus ``SLACK``;
- the gateway logs a line naming the server and saying what failed;
- where the upstream sends without end (a line with no newline, a flood of
  events nobody asked for), the gateway hung up on it after it had sent at
  least ``max_message_bytes`` (a line) or ``FLOOD_MIB`` times that (a flood),
  and the gateway's RSS stayed under ``RSS_LIMIT`` at every MiB sent;
- the gateway process is alive and still serves a good server (the stdio
  recorder fixture) configured beside the hostile ones.

Trouble on a Streamable HTTP upstream's GET stream, after a good handshake,
fails nothing the client asked for: the session keeps answering requests,
during a flood too, and its end ends the flood.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import psutil
import pytest
import pytest_asyncio

from bridge import errors
from tests.conftest import REPO, Proc
from tests.fixtures import hostile_upstream as hostile
from tests.rawclient import LATEST, RawClient

#: The async tests share the loop of the module's one gateway and hostile server.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

HOSTILE = REPO / "tests" / "fixtures" / "hostile_upstream.py"
RECORDER = REPO / "tests" / "fixtures" / "recorder_server.py"
MIB = 1 << 20
LIMIT = MIB  # max_message_bytes
#: Gateway settings (BRIDGE_*), small so that every case ends in a few seconds.
SETTINGS: dict[str, float | str] = {
    "upstream_connect_timeout": 1.0,
    "initialize_timeout": 1.5,
    "upstream_send_timeout": 1.0,
    "upstream_read_timeout": 3.0,
    "max_message_bytes": LIMIT,
    "stdio_shutdown_grace": 0.5,
    # Each client's own upstream, so that every failure is met by the client's
    # own request; on a shared upstream the gateway's handshake meets it first
    # (tests/integration/test_pool.py covers what a client sees then).
    "share": "none",
}
SLACK = 3.0  # seconds on top of a case's setting: scheduling on a loaded CI box
FLOOD_MIB = 4  # a flood must have sent this many max_message_bytes
RSS_LIMIT = 200 * MIB
BOUND = 5.0  # seconds for any other wait

UNAVAILABLE = errors.UPSTREAM_UNAVAILABLE
PROTOCOL = errors.UPSTREAM_PROTOCOL_ERROR
TIMEOUT = errors.UPSTREAM_TIMEOUT
CONNECT = "upstream_connect_timeout"  # connect, and wait for the legacy endpoint event
SEND = "upstream_send_timeout"  # the POST of a message
INITIALIZE = "initialize_timeout"  # the answer to initialize

CONNECT_FAILED = "upstream_connect_failed"
POST_FAILED = "upstream_post_failed"
GARBAGE = "upstream_garbage"
LOST = "upstream_lost"
RELEASED = "session_released"
NO_ENDPOINT = "no endpoint event in time"
NO_ANSWER = "no answer to initialize in time"
REDIRECT = "redirects are not followed"
BAD_ENDPOINT = "endpoint event names a malformed URL"
TOO_LARGE = "larger than"
#: How an endless upstream ends: cut off once it has sent max_message_bytes (one
#: endless line, or that much of a flood where none is allowed), or a flood
#: that goes on until the client's request times out and the session ends.
CUT: Final = "cut"
FLOOD: Final = "flood"

Pattern = Callable[[int], str]  # n -> a regex for the line reporting the n-th MiB sent


def server(path: str) -> str:
    """The gateway's name for the server at ``path`` (KIND/CASE)."""
    return path.replace("/", ".")


@dataclass(frozen=True)
class Case:
    path: str  # KIND/CASE in hostile_upstream.py; "stdio/MODE" for a child
    code: int  # the JSON-RPC error code the client gets
    within: str  # the setting that bounds the failure
    event: str  # the gateway's log line
    text: str = ""  # ... and what it says
    endless: Literal["", "cut", "flood"] = ""  # the upstream sends without end

    def spec(self, base: str) -> dict[str, Any]:
        kind, case = self.path.split("/")
        if kind == "stdio":
            return {"command": sys.executable, "args": [str(HOSTILE), "--stdio", case]}
        if kind == "legacy":
            return {"url": f"{base}/{self.path}", "type": "sse"}
        if kind == "mcp":
            return {"url": f"{base}/{self.path}", "type": "streamable-http"}
        return {"url": f"{base}/{self.path}"}  # no type, no /sse: probed

    def __str__(self) -> str:
        return self.path


CASES = [
    # Legacy HTTP+SSE, before the endpoint event ...
    Case("legacy/keepalive-only", TIMEOUT, CONNECT, CONNECT_FAILED, NO_ENDPOINT),
    Case("legacy/silent-stream", TIMEOUT, CONNECT, CONNECT_FAILED, NO_ENDPOINT),
    Case("legacy/no-answer", TIMEOUT, CONNECT, CONNECT_FAILED, NO_ENDPOINT),
    Case("legacy/ends-without-endpoint", PROTOCOL, CONNECT, CONNECT_FAILED, "ended before endpoint"),
    Case("legacy/binary-junk", PROTOCOL, CONNECT, CONNECT_FAILED, "ended before endpoint"),
    Case("legacy/html", PROTOCOL, CONNECT, CONNECT_FAILED, "'text/html'"),
    Case("legacy/status-500", UNAVAILABLE, CONNECT, CONNECT_FAILED, "HTTP 500"),
    Case("legacy/redirect", PROTOCOL, CONNECT, CONNECT_FAILED, REDIRECT),
    Case("legacy/endless-line", PROTOCOL, CONNECT, CONNECT_FAILED, TOO_LARGE, CUT),
    Case("legacy/flood-before-endpoint", PROTOCOL, CONNECT, CONNECT_FAILED, "before the endpoint", CUT),
    Case("legacy/foreign-endpoint", PROTOCOL, CONNECT, CONNECT_FAILED, "another origin"),
    Case("legacy/endpoint-port-out-of-range", PROTOCOL, CONNECT, CONNECT_FAILED, BAD_ENDPOINT),
    Case("legacy/endpoint-port-not-a-number", PROTOCOL, CONNECT, CONNECT_FAILED, BAD_ENDPOINT),
    Case("legacy/endpoint-bad-ipv6", PROTOCOL, CONNECT, CONNECT_FAILED, BAD_ENDPOINT),
    Case("legacy/endpoint-userinfo", PROTOCOL, CONNECT, CONNECT_FAILED, "credentials"),
    Case("legacy/endpoint-from-query", PROTOCOL, CONNECT, CONNECT_FAILED, BAD_ENDPOINT),
    # ... and after it, on the gateway's POST of initialize.
    Case("legacy/garbage-after-endpoint", TIMEOUT, INITIALIZE, GARBAGE),
    Case("legacy/half-event", UNAVAILABLE, INITIALIZE, LOST, "closed the connection"),
    Case("legacy/endless-after-endpoint", PROTOCOL, INITIALIZE, LOST, TOO_LARGE, CUT),
    Case("legacy/flood-after-endpoint", TIMEOUT, INITIALIZE, RELEASED, NO_ANSWER, FLOOD),
    Case("legacy/post-500", UNAVAILABLE, SEND, POST_FAILED, "HTTP 500"),
    Case("legacy/post-truncated", UNAVAILABLE, SEND, POST_FAILED, "ClientPayloadError"),
    # Streamable HTTP: the answer to the POST of initialize.
    Case("mcp/status-500", UNAVAILABLE, SEND, POST_FAILED, "HTTP 500"),
    Case("mcp/status-502", UNAVAILABLE, SEND, POST_FAILED, "HTTP 502"),
    Case("mcp/redirect", PROTOCOL, SEND, POST_FAILED, REDIRECT),
    Case("mcp/html", PROTOCOL, SEND, POST_FAILED, "'text/html'"),
    Case("mcp/junk-status-line", PROTOCOL, SEND, POST_FAILED, "malformed HTTP"),
    Case("mcp/json-garbage", PROTOCOL, SEND, POST_FAILED, "no answer to the request"),
    Case("mcp/json-not-jsonrpc", PROTOCOL, SEND, POST_FAILED, "no answer to the request"),
    Case("mcp/json-binary-junk", PROTOCOL, SEND, POST_FAILED, "no answer to the request"),
    Case("mcp/json-truncated", UNAVAILABLE, INITIALIZE, POST_FAILED, "ClientPayloadError"),
    Case("mcp/json-endless", PROTOCOL, INITIALIZE, POST_FAILED, TOO_LARGE, CUT),
    Case("mcp/sse-garbage", UNAVAILABLE, INITIALIZE, POST_FAILED, "no event ids"),
    Case("mcp/sse-half-event", UNAVAILABLE, INITIALIZE, POST_FAILED, "no event ids"),
    Case("mcp/sse-endless-line", PROTOCOL, INITIALIZE, POST_FAILED, TOO_LARGE, CUT),
    Case("mcp/sse-flood", TIMEOUT, INITIALIZE, RELEASED, NO_ANSWER, FLOOD),
    Case("mcp/silent", TIMEOUT, INITIALIZE, RELEASED, NO_ANSWER),
    # Detection of a server whose config names no transport.
    Case("auto/status-500", UNAVAILABLE, CONNECT, CONNECT_FAILED, "HTTP 500"),
    Case("auto/html", PROTOCOL, CONNECT, CONNECT_FAILED, "without JSON-RPC"),
    Case("auto/redirect", PROTOCOL, CONNECT, CONNECT_FAILED, REDIRECT),
    Case("auto/json-truncated", UNAVAILABLE, CONNECT, CONNECT_FAILED, "ClientPayloadError"),
    Case("auto/json-endless", PROTOCOL, CONNECT, CONNECT_FAILED, TOO_LARGE, CUT),
    Case("auto/sse-endless-line", PROTOCOL, CONNECT, CONNECT_FAILED, TOO_LARGE, CUT),
    Case("auto/sse-flood", TIMEOUT, CONNECT, CONNECT_FAILED, "no answer to the probe", FLOOD),
    Case("auto/404-keepalive-only", TIMEOUT, CONNECT, CONNECT_FAILED, NO_ENDPOINT),
    Case("auto/405-html", UNAVAILABLE, CONNECT, CONNECT_FAILED, "no MCP transport found"),
    # stdio.
    Case("stdio/garbage", TIMEOUT, INITIALIZE, GARBAGE),
    Case("stdio/endless-line", PROTOCOL, INITIALIZE, LOST, "exceeds", CUT),
    Case("stdio/exit-mid-line", UNAVAILABLE, INITIALIZE, LOST, "exited with status 3"),
]  # fmt: skip


@dataclass(frozen=True)
class GetCase:
    """A Streamable HTTP server that shakes hands properly, then misbehaves on the GET stream."""

    path: str
    event: str  # the gateway's log line
    text: str = ""  # ... and what it says
    endless: Literal["", "cut", "flood"] = ""

    def __str__(self) -> str:
        return self.path


GET_CASES = [
    GetCase("mcp/get-endless-line", "upstream_get_stream_failed", TOO_LARGE, CUT),
    GetCase("mcp/get-flood", "session_started", endless=FLOOD),
    GetCase("mcp/get-garbage", GARBAGE),
]


@dataclass
class World:
    gateway: Proc
    upstream: Proc  # the hostile HTTP server
    url: str  # the gateway's base URL

    def rss(self) -> int:
        return int(psutil.Process(self.gateway.pid).memory_info().rss)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """The hostile server, and one gateway configured with every case and a good server."""
    tmp = tmp_path_factory.mktemp("hostile")
    started: list[Proc] = []
    try:
        upstream = await Proc.start(sys.executable, HOSTILE)
        started.append(upstream)
        base = (await upstream.wait_for(r"listening on (http://\S+)", BOUND)).group(1)
        servers = {server(case.path): case.spec(base) for case in CASES}
        for get in GET_CASES:
            servers[server(get.path)] = {"url": f"{base}/{get.path}", "type": "streamable-http"}
        servers["good"] = {"command": sys.executable, "args": [str(RECORDER), str(tmp / "rec")]}
        config = tmp / "servers.json"
        config.write_text(json.dumps({"mcpServers": servers}))
        env = {f"BRIDGE_{name.upper()}": str(value) for name, value in SETTINGS.items()}
        gateway = await Proc.start(
            sys.executable, "-m", "bridge", "--config", config, "--store-url", "memory://",
            "--port", "0", "--log-format", "json",
            env={"PYTHONUNBUFFERED": "1", **env},
        )  # fmt: skip
        started.append(gateway)
        match = await gateway.wait_for(r'"event": "listening"', BOUND)
        yield World(gateway, upstream, f"http://127.0.0.1:{json.loads(match.string)['port']}")
    finally:
        await asyncio.gather(*(p.stop(signal.SIGKILL, 5.0) for p in started))


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def logged(name: str, event: str, text: str = "") -> str:
    """A regex for a gateway JSON log line of ``event`` naming server ``name``, whose
    ``error``, ``reason`` or ``line`` says ``text``."""
    named = rf"(?<![\w.-]){re.escape(name)}(?![\w.-])"
    said = rf'(?=.*"(?:error|reason|line)": "(?:[^"\\]|\\.)*{re.escape(text)})' if text else ""
    return rf'^(?=.*"event": "{event}")(?=.*{named}){said}'


async def expect_log(world: World, name: str, event: str, text: str = "") -> None:
    """Wait (bounded) for the gateway to log ``event`` naming ``name`` and saying ``text``."""
    try:
        await world.gateway.wait_for(logged(name, event, text), BOUND)
    except TimeoutError:
        said = [line for line in world.gateway.lines if name in line]
        raise AssertionError(f"no {event} log for {name}: " + "\n".join(said[-10:])) from None


def sent(path: str) -> Pattern:
    return lambda n: rf"^{re.escape(path)} sent {n} MiB$"


def progress(case: Case, world: World) -> tuple[Proc, Pattern]:
    """Where the upstream of ``case`` reports each MiB it sent: a process, a line pattern."""
    kind, mode = case.path.split("/")
    if kind == "stdio":  # the child's stderr, as the gateway logs it
        name = server(case.path)
        return world.gateway, lambda n: logged(name, "child_stderr", f"{mode} sent {n} MiB")
    return world.upstream, sent(case.path)


async def cut_off(world: World, path: str) -> int:
    """Bytes the upstream at ``path`` had sent when the gateway hung up on it."""
    line = rf"^{re.escape(path)} closed after (\d+) bytes"
    return int((await world.upstream.wait_for(line, BOUND)).group(1))


def at_least(endless: str) -> int:
    """Bytes an endless upstream must have sent before it is cut off."""
    return FLOOD_MIB * LIMIT if endless == FLOOD else LIMIT


class RssPeak:
    """The gateway's peak RSS, sampled each time the upstream reports another MiB sent."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.peak = world.rss()
        self.samples = 1

    async def follow(self, proc: Proc, pattern: Pattern, until: int | None = None) -> None:
        """Sample at each line ``pattern(1)``, ``pattern(2)``, ... of ``proc``: until
        ``until``, or until cancelled."""
        n = 1
        while until is None or n <= until:
            await proc.wait_for(pattern(n), within=BOUND * 10)
            self.peak = max(self.peak, self.world.rss())
            self.samples += 1
            n += 1


async def assert_healthy(world: World, http: aiohttp.ClientSession) -> None:
    """The gateway lives, within its memory bound, and a good server behind it answers."""
    assert world.gateway.process.returncode is None
    client = RawClient(http, f"{world.url}/servers/good/mcp")
    async with asyncio.timeout(BOUND):
        await client.initialize()
        reply = await client.post(client.request("ping"))
        assert reply.messages == [{"jsonrpc": "2.0", "id": client._next_id, "result": {}}]
        assert await client.delete() == 200
    assert world.rss() < RSS_LIMIT


@in_module_loop
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_hostile_upstream_fails_cleanly(
    case: Case, world: World, http: aiohttp.ClientSession
) -> None:
    name = server(case.path)
    client = RawClient(http, f"{world.url}/servers/{name}/mcp")
    params = {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}  # fmt: skip
    request = client.request("initialize", params)
    rss = RssPeak(world)
    async with asyncio.TaskGroup() as group:
        follower = group.create_task(rss.follow(*progress(case, world)))
        started = time.monotonic()
        async with asyncio.timeout(float(SETTINGS[case.within]) + SLACK):
            reply = await client.post(request)
        elapsed = time.monotonic() - started
        answers = [m for m in reply.messages if m.get("id") == request["id"]]
        assert len(answers) == 1, reply
        assert answers[0]["error"]["code"] == case.code, (answers[0], f"{elapsed:.2f} s")
        assert reply.status in (200, 502, 503, 504)  # an SSE stream had begun, or not
        await expect_log(world, name, case.event, case.text)
        if case.endless and case.path.startswith("stdio/"):
            await world.gateway.wait_for(progress(case, world)[1](1), BOUND)
            await expect_log(world, name, "child_stopped")
        elif case.endless:
            assert await cut_off(world, case.path) >= at_least(case.endless)
        follower.cancel()
    assert rss.peak < RSS_LIMIT, rss.peak
    assert rss.samples > 1 or not case.endless  # sampled while the upstream was sending
    await assert_healthy(world, http)


@in_module_loop
@pytest.mark.parametrize("case", GET_CASES, ids=str)
async def test_hostile_get_stream_leaves_requests_working(
    case: GetCase, world: World, http: aiohttp.ClientSession
) -> None:
    name = server(case.path)
    client = RawClient(http, f"{world.url}/servers/{name}/mcp")
    async with asyncio.timeout(BOUND):
        await client.initialize()
    await expect_log(world, name, case.event, case.text)
    rss = RssPeak(world)
    if case.endless == CUT:
        assert await cut_off(world, case.path) >= at_least(CUT)
    elif case.endless == FLOOD:  # ask while it floods
        await rss.follow(world.upstream, sent(case.path), FLOOD_MIB)
    async with asyncio.timeout(BOUND):
        reply = await client.post(client.request("ping"))
    assert reply.messages == [{"jsonrpc": "2.0", "id": client._next_id, "result": {}}]
    assert rss.peak < RSS_LIMIT, rss.peak
    if case.endless == FLOOD:
        assert not [line for line in world.upstream.lines if line.startswith(f"{case.path} closed")]
        assert await client.delete() == 200
        assert await cut_off(world, case.path) >= at_least(FLOOD)  # the session's end ends it
    else:
        assert await client.delete() == 200
    await assert_healthy(world, http)


def test_every_case_is_one_the_hostile_upstream_has() -> None:
    """A typo here would test a 404 or a missing mode, not the misbehaviour; and no
    misbehaviour of the fixture goes untested."""
    paths = {c.path for c in CASES} | {c.path for c in GET_CASES}
    served = {path.removeprefix("/") for path in hostile.CASES}
    assert paths == served | {f"stdio/{mode}" for mode in hostile.STDIO_MODES}
