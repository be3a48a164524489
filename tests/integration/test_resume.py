"""A client never starts over (issue #3): resume after a restart, Last-Event-ID replay.

- The gateway runs as a subprocess on a durable store, gets SIGKILL, and a new
  gateway on the same store (another port) serves the same session: its next
  request succeeds with no re-initialize, and its GET stream resumes.
- A request in flight at the crash gets exactly one answer on the stream the
  client resumes: a transparent retry for a method safe to repeat, else a
  -32035 error.
- ``Last-Event-ID`` replays the missed events of that stream once and in
  order, then live ones; an id of another session gets 404.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import errors
from bridge.events.memory import MemoryEventStore
from tests.conftest import REPO, GatewayFactory, ProcFactory, example_stdio, start_gateway
from tests.rawclient import RawClient, next_event, read_events, read_reply

RECORDER = REPO / "tests" / "fixtures" / "recorder_server.py"
BOUND = 20.0  # seconds


async def open_post(client: RawClient, message: dict[str, Any]) -> aiohttp.ClientResponse:
    response = await client.http.post(client.url, json=message, headers=client.headers())
    assert response.status == 200
    return response


async def resume(client: RawClient, last_event_id: str) -> aiohttp.ClientResponse:
    headers = client.headers(Accept="text/event-stream", **{"Last-Event-ID": last_event_id})
    return await client.http.get(client.url, headers=headers)


async def test_last_event_id_replays_missed_events_once_then_live(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()])
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        slow = client.request(
            "tools/call", {"name": "slow", "arguments": {"steps": 4, "delay": 0.3}}
        )
        slow["params"]["_meta"] = {"progressToken": "p"}
        async with asyncio.timeout(BOUND):
            response = await open_post(client, slow)
            priming = await next_event(response)
            assert priming["data"] == ""  # spec 2025-11-25: an id and empty data
            assert priming["retry"] == "1000"
            progress = await next_event(response)
            assert json.loads(progress["data"])["params"]["progress"] == 1
            response.close()  # the laptop sleeps
            resumed = await resume(client, progress["id"])
            assert resumed.status == 200
            reply = await read_reply(resumed)
        steps = [m["params"]["progress"] for m in reply.messages if m.get("method")]
        assert steps == [2, 3, 4]  # exactly the missed ones, in order
        assert reply.messages[-1]["id"] == slow["id"]
        assert reply.messages[-1]["result"]["content"][0]["text"] == "done after 4 steps"

        # Resuming again from the priming event replays everything once more.
        async with asyncio.timeout(BOUND):
            again = await read_reply(await resume(client, priming["id"]))
        assert [m.get("params", {}).get("progress") for m in again.messages] == [1, 2, 3, 4, None]


async def test_foreign_or_bogus_last_event_id_is_404(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()])
    async with aiohttp.ClientSession() as http:
        alice, mallory = RawClient(http, f"{gw.url}/http"), RawClient(http, f"{gw.url}/http")
        await alice.initialize()
        await mallory.initialize()
        async with asyncio.timeout(BOUND):
            call = alice.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
            response = await open_post(alice, call)
            alice_event = (await next_event(response))["id"]
            await read_reply(response)
            for bogus in (alice_event, "garbage", "a.b.c.d", "x" * 5000):
                reply = await resume(mallory, bogus)
                assert reply.status == 404, bogus
                assert (await reply.json())["error"]["code"] == errors.SESSION_NOT_FOUND


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sessions.db'}"


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_gateway_restart_resumes_session_and_streams(
    procs: ProcFactory, sqlite_url: str, tmp_path: Path, share: str
) -> None:
    record = tmp_path / "received.jsonl"
    record.touch()
    command = f"{sys.executable} {RECORDER} {record}"
    options = ("--stdio", command, "--store-url", sqlite_url, "--share", share)
    first, base = await start_gateway(procs, *options)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/http")
        await client.initialize()
        await client.post(client.request("logging/setLevel", {"level": "debug"}))
        async with asyncio.timeout(BOUND):
            get_stream = await http.get(
                client.url, headers=client.headers(Accept="text/event-stream")
            )
            get_priming = (await next_event(get_stream))["id"]
            # In flight at the crash: one unsafe call, one safe to repeat.
            unsafe = await open_post(
                client, client.request("tools/call", {"name": "hold", "arguments": {}})
            )
            unsafe_id = (await next_event(unsafe))["id"]
            # Asking for progress makes even a safe request's reply a resumable stream.
            ask = client.request("prompts/get", {"name": "once", "_meta": {"progressToken": 1}})
            safe = await open_post(client, ask)
            safe_id = (await next_event(safe))["id"]
            await client.post(client.request("ping"))  # orders the recorder's writes
        first.process.send_signal(signal.SIGKILL)
        await first.exited(BOUND)

        second, base2 = await start_gateway(procs, *options)
        client.url = f"{base2}/http"  # same session id, another process and port
        async with asyncio.timeout(BOUND):
            reply = await client.post(
                client.request("tools/call", {"name": "release", "arguments": {}})
            )
            assert reply.status == 200
            assert reply.messages[-1]["result"]["content"][0]["text"] == "release done"
            unsafe_answer = await read_reply(await resume(client, unsafe_id))
            safe_answer = await read_reply(await resume(client, safe_id))
            get_again = await resume(client, get_priming)
            assert get_again.status == 200
            get_again.close()
        [error] = unsafe_answer.messages
        assert error["error"]["code"] == errors.REQUEST_INTERRUPTED
        [retried] = safe_answer.messages
        assert retried["result"]["messages"][0]["content"]["text"] == "asked again"
        # The new upstream heard the client's handshake again, from the gateway;
        # shared, only the gateway's own: the client's is never replayed (issue #10).
        received = [json.loads(line) for line in record.read_text().splitlines()]
        methods = [m.get("method") for m in received]
        assert methods.count("initialize") == 2
        assert methods.count("logging/setLevel") == 2
        clients = {
            m["params"]["clientInfo"]["name"] for m in received if m.get("method") == "initialize"
        }
        assert clients == {"raw-test-client" if share == "none" else "mcp-bridge"}
        # Resuming the interrupted stream again gives the same single answer.
        async with asyncio.timeout(BOUND):
            again = await read_reply(await resume(client, unsafe_id))
        assert again.messages == [error]
        await second.stop()


@pytest.mark.parametrize(
    ("method", "params", "content_type"),
    [
        pytest.param("tools/list", {}, "application/json", id="safe-lone-request"),
        pytest.param("ping", None, "application/json", id="ping"),
        pytest.param("tools/list", {"_meta": {"progressToken": 7}}, "text/event-stream", id="asks-progress"),
        pytest.param("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, "text/event-stream", id="unsafe"),
    ],
)  # fmt: skip
async def test_plain_json_only_for_safe_requests_without_progress(
    method: str, params: dict[str, Any] | None, content_type: str, gateway: GatewayFactory
) -> None:
    """A plain JSON reply stores no events (issue #3 "Cost"); everything else is resumable."""
    gw = await gateway([example_stdio()])
    events = gw.hub.stores.events
    assert isinstance(events, MemoryEventStore)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        streams_before = len(events)
        message = client.request(method, params)
        response = await http.post(client.url, json=message, headers=client.headers())
        assert response.content_type == content_type
        reply = await read_reply(response)
        assert reply.messages[-1]["id"] == message["id"]
        assert "result" in reply.messages[-1]
        new_streams = len(events) - streams_before
        assert new_streams == (0 if content_type == "application/json" else 1)


async def test_delete_of_a_released_session_forgets_record_and_events(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway([example_stdio()], upstream_idle_timeout=0.3)
    events = gw.hub.stores.events
    assert isinstance(events, MemoryEventStore)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        assert client.session_id
        await client.post(
            client.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
        )
        assert len(events) > 0
        session = await gw.hub.get(client.session_id, "example")
        async with asyncio.timeout(BOUND):
            await session.wait_closed()  # released: only the store holds it now
        assert await client.delete() == 200  # without resuming an upstream for it
        assert len(events) == 0
        assert await gw.hub.stores.sessions.get(client.session_id) is None
        assert (await client.post(client.request("ping"))).status == 404


async def test_streams_close_early_so_that_clients_poll(gateway: GatewayFactory) -> None:
    """spec 2025-11-25 §1.9: close after BRIDGE_SSE_POLL_AFTER; the client resumes."""
    gw = await gateway([example_stdio()], sse_poll_after=0.4)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        slow = client.request(
            "tools/call", {"name": "slow", "arguments": {"steps": 3, "delay": 0.5}}
        )
        slow["params"]["_meta"] = {"progressToken": "poll"}
        seen: list[dict[str, Any]] = []
        last_id = ""
        async with asyncio.timeout(BOUND):
            response = await open_post(client, slow)
            polls = 0
            while not seen or "method" in seen[-1]:  # until the response arrives
                events, raw = await read_events(response)
                batch = [json.loads(e.data) for e in events if e.data]
                seen += batch
                if not any("result" in m for m in batch):  # closed early, with a retry hint
                    assert raw.endswith(b"retry: 1000\r\n\r\n")
                last_id = next((e.id for e in reversed(events) if e.id), last_id)
                response = await resume(client, last_id)
                polls += 1
            response.close()
        assert polls >= 2  # the stream was closed early at least once
        assert [m["params"]["progress"] for m in seen[:-1]] == [1, 2, 3]  # each once, in order
        assert seen[-1]["result"]["content"][0]["text"] == "done after 3 steps"


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_sigterm_drains_then_hands_over_to_another_gateway(
    procs: ProcFactory, sqlite_url: str, share: str
) -> None:
    """issue #6 graceful shutdown: no request is lost across a rolling restart."""
    common = (
        "--stdio", f"{sys.executable} -m bridge.examples.server", "--store-url", sqlite_url,
        "--share", share,
    )  # fmt: skip
    first, base = await start_gateway(procs, *common, "--shutdown-timeout", "3")
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/http")
        await client.initialize()

        def slow(steps: int) -> dict[str, Any]:
            message = client.request(
                "tools/call", {"name": "slow", "arguments": {"steps": steps, "delay": 0.25}}
            )
            message["params"]["_meta"] = {"progressToken": steps}
            return message

        quick, long = slow(2), slow(40)  # 0.5 s fits the drain grace (1.8 s); 10 s does not
        async with asyncio.timeout(BOUND):
            quick_stream = await open_post(client, quick)
            long_stream = await open_post(client, long)
            long_id = (await next_event(long_stream))["id"]  # the priming event
            first.process.send_signal(signal.SIGTERM)
            quick_reply = await read_reply(quick_stream)
            long_reply = await read_reply(long_stream)
            assert await first.exited(BOUND) == 0
        assert quick_reply.messages[-1]["result"]["content"][0]["text"] == "done after 2 steps"
        assert all("method" in m for m in long_reply.messages)  # not answered here

        _, base2 = await start_gateway(procs, *common)
        client.url = f"{base2}/http"
        async with asyncio.timeout(BOUND):
            resumed = await read_reply(await resume(client, long_id))
        answers = [m for m in resumed.messages if "method" not in m]
        assert len(answers) == 1  # exactly one answer, at the gateway it resumed at
        assert answers[0]["id"] == long["id"]
        assert answers[0]["error"]["code"] == errors.REQUEST_INTERRUPTED


async def test_a_second_resume_of_a_live_stream_ends_the_first(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()])
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        slow = client.request(
            "tools/call", {"name": "slow", "arguments": {"steps": 3, "delay": 0.3}}
        )
        slow["params"]["_meta"] = {"progressToken": "twice"}
        async with asyncio.timeout(BOUND):
            response = await open_post(client, slow)
            priming = (await next_event(response))["id"]
            response.close()
            first = await resume(client, priming)
            second = await resume(client, priming)
            ended = await read_reply(first)  # it ends, not left hanging on keepalives
            assert all("method" in m for m in ended.messages)  # the answer goes to the second
            reply = await read_reply(second)
        assert reply.messages[-1]["result"]["content"][0]["text"] == "done after 3 steps"
