"""No stdio child outlives its session, on any path (issue #2; spec-notes §3.3).

Paths: DELETE, the idle timeout, a child crash (which must also fail the
pending request at once), and SIGTERM to the gateway process. Each checks the
process table: the child's pid is gone, and nothing is left in its process
group.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp
import psutil
import pytest

from bridge import errors
from tests.conftest import GatewayFactory, ProcFactory, example_stdio, start_gateway
from tests.rawclient import RawClient, next_message, read_reply

BOUND = 15.0  # seconds any single lifecycle step may take


def example_children() -> list[psutil.Process]:
    """This test process's children running the example server."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "bridge.examples.server" in " ".join(p.cmdline())
    ]


def assert_gone(pid: int) -> None:
    """The pid is not in the process table (not even as a zombie) and its group is empty."""
    assert not psutil.pid_exists(pid), psutil.Process(pid).status()
    group = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pid]
    assert group == [], group


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


async def test_delete_reaps_child(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()], share="none")
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        [child] = example_children()
        assert os.getpgid(child.pid) == child.pid  # its own process group
        assert await client.delete() == 200
    assert_gone(child.pid)


async def test_a_shared_child_outlives_its_clients_until_the_pool_reaps_it(
    gateway: GatewayFactory,
) -> None:
    """share principal: the pool keeps the child warm past DELETE, then closes it idle."""
    gw = await gateway([example_stdio()], pool_idle_timeout=0.5)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        [child] = example_children()
        assert await client.delete() == 200
        assert child.is_running()  # the next client pays no cold start
        async with asyncio.timeout(BOUND):
            await asyncio.to_thread(child.wait, BOUND)  # the reaper closes it once idle
    assert_gone(child.pid)
    assert gw.hub.pools["example"].health()["size"] == 0


async def test_idle_release_reaps_child_and_next_request_resumes(gateway: GatewayFactory) -> None:
    """Idle past the timeout: the child goes, the session stays (issue #3 hibernation)."""
    gw = await gateway([example_stdio()], upstream_idle_timeout=0.5, share="none")
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        assert client.session_id
        session = await gw.hub.get(client.session_id, "example")
        [child] = example_children()
        async with asyncio.timeout(BOUND):
            await session.wait_closed()
        assert session.end_reason == "idle: upstream released"
        assert_gone(child.pid)
        # The client knows nothing of it: same session id, no re-initialize.
        reply = await client.post(
            client.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}})
        )
        assert reply.status == 200
        assert reply.messages[-1]["result"]["content"][0]["text"] == "2.0"
        [new_child] = example_children()
        assert new_child.pid != child.pid


async def test_open_stream_keeps_session_alive(gateway: GatewayFactory) -> None:
    """A client holding its GET stream is not idle, however long it stays quiet."""
    gw = await gateway([example_stdio()], upstream_idle_timeout=0.3)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        assert client.session_id
        session = await gw.hub.get(client.session_id, "example")
        stream = await http.get(client.url, headers=client.headers(Accept="text/event-stream"))
        assert stream.status == 200
        far_future = time.monotonic() + 3600
        assert session.idle_for(far_future) == 0
        # A call longer than the idle timeout: the background reaper runs meanwhile.
        slow = client.request(
            "tools/call", {"name": "slow", "arguments": {"steps": 2, "delay": 0.4}}
        )
        reply = await client.post(slow)
        assert reply.messages[-1]["result"]["content"][0]["text"] == "done after 2 steps"
        assert not session.ended.is_set()
        stream.close()
        async with asyncio.timeout(BOUND):
            await session.wait_closed()  # once the stream is gone the idle clock runs
        assert session.end_reason == "idle: upstream released"


async def test_child_crash_fails_pending_request_at_once(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()])
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        [child] = example_children()
        slow = client.request(
            "tools/call", {"name": "slow", "arguments": {"steps": 100, "delay": 0.1}}
        )
        slow["params"]["_meta"] = {"progressToken": "crash"}
        async with asyncio.timeout(BOUND):
            response = await http.post(client.url, json=slow, headers=client.headers())
            assert response.status == 200
            first = await next_message(response)
            assert first["method"] == "notifications/progress"
            child.kill()
            reply = await read_reply(response)
        last = reply.messages[-1]
        assert last["id"] == slow["id"]
        assert last["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
        assert "server 'example'" in last["error"]["message"]
        assert_gone(child.pid)
        reply = await client.post(client.request("ping"))
        assert reply.status == 200  # resumed on a new child, no re-initialize


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_gateway_sigterm_leaves_no_child(procs: ProcFactory, share: str) -> None:
    command = f"{sys.executable} -m bridge.examples.server"
    gateway, base = await start_gateway(
        procs, "--stdio", command, "--shutdown-timeout", "2", "--share", share
    )
    children = 3 if share == "none" else 1  # 3 clients: a child each, or one shared
    async with aiohttp.ClientSession() as http:
        clients = [RawClient(http, f"{base}/http") for _ in range(3)]
        for client in clients:
            await client.initialize()
        # One stream is open while the gateway stops: shutdown must not wait on it.
        stream = await http.get(
            clients[0].url, headers=clients[0].headers(Accept="text/event-stream")
        )
        assert stream.status == 200
        # A request outlasts the drain grace: its stream is handed over, not answered
        # here (test_resume.py shows another gateway answering it); a JSON reply
        # (not resumable) pending at the end gets -32033.
        slow = clients[1].request(
            "tools/call", {"name": "slow", "arguments": {"steps": 100, "delay": 0.1}}
        )
        slow["params"]["_meta"] = {"progressToken": 1}
        pending = await http.post(clients[1].url, json=slow, headers=clients[1].headers())
        assert (await next_message(pending))["method"] == "notifications/progress"
        pids = [e["pid"] for e in gateway.json_events("child_started")]
        assert len(pids) == children
        async with asyncio.timeout(BOUND):
            gateway.process.send_signal(signal.SIGTERM)
            reply = await read_reply(pending)
            assert await gateway.exited(BOUND) == 0
        rest = await stream.content.read()  # returns: the stream was ended, not left hanging
        assert b"event: message" not in rest  # only its priming event and keepalives
        assert reply.messages  # progress arrived before the drain ended the stream
        assert all(m.get("method") == "notifications/progress" for m in reply.messages)
    for pid in pids:
        assert_gone(pid)
    assert len(gateway.json_events("child_stopped")) == children
    assert gateway.json_events("stopped")
