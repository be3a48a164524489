"""The 2026-07-28 front door (issue #11) on the wire, in front of a session-era server.

The upstream is the recorder (tests/fixtures/recorder_server.py) over stdio, so
each test can also see what reached the server: its cancels, subscriptions and
answers. The official conformance suite runs the same door in
test_conformance.py; these tests pin what it does not check: requestState
bound to caller, request and round; cancel on disconnect; the listen filter;
private upstreams in mode ``none``; both eras on one URL.
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

from bridge.settings import StdioServer
from tests.conftest import GatewayFactory, RunningGateway, fixture_stdio
from tests.rawclient import ACCEPT_BOTH, RawClient, next_message, read_reply

REPO = Path(__file__).resolve().parents[2]
RECORDER = REPO / "tests" / "fixtures" / "recorder_server.py"
V = "2026-07-28"
BOUND = 30.0  # seconds for any one wait
KEYS = "alice:alice-key,bob:bob-key"


def body(method: str, params: dict[str, Any] | None = None, *, id: int | str = 1,
         capabilities: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:  # fmt: skip
    fields = {"io.modelcontextprotocol/protocolVersion": V,
              "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
              "io.modelcontextprotocol/clientCapabilities": capabilities or {}, **meta}  # fmt: skip
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": method,
        "params": {**(params or {}), "_meta": fields},
    }


def headers(message: dict[str, Any], token: str | None = "alice-key") -> dict[str, str]:
    out = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json",
           "MCP-Protocol-Version": V, "Mcp-Method": message["method"]}  # fmt: skip
    name = message["params"].get("name") or message["params"].get("uri")
    if name is not None:
        out["Mcp-Name"] = name
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    return out


class Modern:
    """A raw 2026-07-28 client: one POST per request, no session."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None = "alice-key"):
        self.http, self.url, self.token = http, url, token

    async def call(
        self, message: dict[str, Any]
    ) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
        async with self.http.post(
            self.url, json=message, headers=headers(message, self.token)
        ) as r:
            reply = await read_reply(r)
            assert len(reply.messages) >= 1, reply
            return reply.status, reply.messages[-1], reply.headers


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as session:
        yield session


async def start(gateway: GatewayFactory, tmp_path: Path, share: str = "principal",
                **settings: Any) -> tuple[RunningGateway, Path]:  # fmt: skip
    record = tmp_path / "record.jsonl"
    record.touch()
    spec = StdioServer(name="rec", command=sys.executable, args=(str(RECORDER), str(record)),
                       share=share)  # fmt: skip
    return await gateway([spec], api_keys=KEYS, **settings), record


def upstream(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


async def until(gw: RunningGateway, predicate: Any, what: str) -> None:
    """Wait, bounded, until the upstream has recorded what ``predicate()`` looks for.

    Each round is a ``sync`` call through the gateway on its own connection: once
    answered, the recorder has written everything the gateway sent before it.
    """
    message = body("tools/call", {"name": "sync", "arguments": {}}, id="sync")
    async with aiohttp.ClientSession() as http, asyncio.timeout(BOUND):
        while not predicate():
            async with http.post(gw.url + "/mcp", json=message, headers=headers(message)) as r:
                assert r.status == 200, await r.text()
    assert predicate(), what


ELICIT = {"name": "elicit", "arguments": {}}
CAN_ELICIT: dict[str, Any] = {"elicitation": {}}


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_input_round_trip_and_request_state_refusals(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, share: str
) -> None:
    gw, _ = await start(gateway, tmp_path, share)
    alice, bob = Modern(http, gw.url + "/mcp"), Modern(http, gw.url + "/mcp", "bob-key")

    status, first, hdrs = await alice.call(body("tools/call", ELICIT, capabilities=CAN_ELICIT))
    assert status == 200
    assert "Mcp-Session-Id" not in hdrs
    result = first["result"]
    assert result["resultType"] == "input_required"
    ((key, asked),) = result["inputRequests"].items()
    assert asked["method"] == "elicitation/create"
    token = result["requestState"]
    answers = {key: {"action": "accept", "content": {"name": "Ada"}}}

    async def retry(
        client: Modern, state: str, params: dict[str, Any] = ELICIT
    ) -> tuple[int, dict[str, Any]]:
        message = body("tools/call", {**params, "requestState": state, "inputResponses": answers},
                       id=2, capabilities=CAN_ELICIT)  # fmt: skip
        status, reply, _ = await client.call(message)
        return status, reply

    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for client, state, params, reason in [
        (alice, tampered, ELICIT, "integrity"),
        (bob, token, ELICIT, "another caller"),
        (alice, token, {"name": "elicit", "arguments": {"x": 1}}, "another request"),
    ]:
        status, reply = await retry(client, state, params)
        assert (status, reply["error"]["code"]) == (400, -32602), reply
        assert reason in reply["error"]["message"]
        assert reply["id"] == 2

    status, done = await retry(alice, token)  # the refusals left the held call as it was
    assert status == 200
    assert done["id"] == 2
    assert done["result"]["resultType"] == "complete"
    assert json.loads(done["result"]["content"][0]["text"]) == {"name": "Ada"}

    status, replayed = await retry(alice, token)
    assert (status, replayed["error"]["code"]) == (400, -32602)
    assert "already used" in replayed["error"]["message"]


async def test_request_state_expires_with_its_hold(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw, record = await start(gateway, tmp_path, input_hold_timeout=0.5)
    alice = Modern(http, gw.url + "/mcp")
    _, first, _ = await alice.call(body("tools/call", ELICIT, capabilities=CAN_ELICIT))
    token = first["result"]["requestState"]
    # The hold ends by itself: the upstream call is cancelled ...
    await until(gw, lambda: any(m.get("method") == "notifications/cancelled" for m in upstream(record)),
                "the held call was cancelled upstream")  # fmt: skip
    # ... and its token is refused.
    message = body("tools/call", {**ELICIT, "requestState": token, "inputResponses": {}}, id=2,
                   capabilities=CAN_ELICIT)  # fmt: skip
    status, reply, _ = await alice.call(message)
    assert (status, reply["error"]["code"]) == (400, -32602)
    assert "expired" in reply["error"]["message"]


async def test_an_undeclared_capability_is_32021_and_the_call_is_cancelled(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw, record = await start(gateway, tmp_path)
    status, reply, _ = await Modern(http, gw.url + "/mcp").call(body("tools/call", ELICIT))
    assert status == 400
    assert reply["error"]["code"] == -32021
    assert reply["error"]["data"] == {"requiredCapabilities": {"elicitation": {}}}
    call = next(m for m in upstream(record) if m.get("method") == "tools/call")
    await until(
        gw,
        lambda: any(m.get("method") == "notifications/cancelled"
                    and m["params"]["requestId"] == call["id"] for m in upstream(record)),
        "the upstream call was cancelled",
    )  # fmt: skip


async def test_a_client_that_goes_away_cancels_its_request(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    """transports/streamable-http §Cancellation: closing the connection cancels."""
    gw, record = await start(gateway, tmp_path)
    message = body("tools/call", {"name": "hold", "arguments": {}})
    async with aiohttp.ClientSession() as http:
        post = asyncio.ensure_future(
            http.post(gw.url + "/mcp", json=message, headers=headers(message))
        )
        await until(gw, lambda: any(m.get("params", {}).get("name") == "hold" for m in upstream(record)),
                    "the call reached the upstream")  # fmt: skip
        post.cancel()  # the client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await post
    call = next(m for m in upstream(record) if m.get("params", {}).get("name") == "hold")
    await until(
        gw,
        lambda: any(m.get("method") == "notifications/cancelled"
                    and m["params"]["requestId"] == call["id"] for m in upstream(record)),
        "notifications/cancelled reached the upstream",
    )  # fmt: skip


async def test_listen_acknowledges_then_relays_only_what_was_asked(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw, record = await start(gateway, tmp_path)
    listen = body("subscriptions/listen", {"notifications": {
        "toolsListChanged": True, "resourceSubscriptions": ["test://watched"]}}, id="sub-1")  # fmt: skip
    async with http.post(gw.url + "/mcp", json=listen, headers=headers(listen)) as stream:
        assert stream.status == 200
        assert stream.content_type == "text/event-stream"
        assert "Mcp-Session-Id" not in stream.headers
        ack = await next_message(stream)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": "sub-1"}
        assert ack["params"]["notifications"] == {
            "toolsListChanged": True, "resourceSubscriptions": ["test://watched"]}  # fmt: skip
        assert [m["params"]["uri"] for m in upstream(record)
                if m.get("method") == "resources/subscribe"] == ["test://watched"]  # fmt: skip

        status, _, _ = await Modern(http, gw.url + "/mcp").call(
            body("tools/call", {"name": "notify", "arguments": {}}, id=5)
        )
        assert status == 200
        got = [await next_message(stream), await next_message(stream)]
        assert [(m["method"], m["params"].get("uri")) for m in got] == [
            ("notifications/tools/list_changed", None),
            ("notifications/resources/updated", "test://watched"),
        ]  # not prompts/list_changed, not test://other: not asked for
        for message in got:
            assert message["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1"
    await until(gw, lambda: any(m.get("method") == "resources/unsubscribe" for m in upstream(record)),
                "closing the stream ended the upstream subscription")  # fmt: skip


async def test_both_eras_on_one_url_and_sessionless_get_delete_are_405(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw, _ = await start(gateway, tmp_path)
    url = gw.url + "/mcp"
    legacy = RawClient(http, url)
    plain = legacy.headers
    legacy.headers = lambda **extra: plain(Authorization="Bearer alice-key", **extra)  # type: ignore[method-assign]
    init = await legacy.initialize()
    assert init.status == 200
    assert init.headers["Mcp-Session-Id"]
    modern = Modern(http, url)
    sync = {"name": "sync", "arguments": {}}
    (old, _), (status, new, _) = await asyncio.gather(
        _legacy_call(legacy, sync), modern.call(body("tools/call", sync, id=9)))  # fmt: skip
    assert old == "synced"
    assert status == 200
    assert new["result"]["content"][0]["text"] == "synced"
    assert new["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "recorder"
    auth = {"Authorization": "Bearer alice-key", "Accept": "text/event-stream"}
    for verb in ("GET", "DELETE"):
        async with http.request(verb, url, headers={**auth, "MCP-Protocol-Version": V}) as r:
            assert r.status == 405
            assert r.headers["Allow"] == "POST"


async def _legacy_call(client: RawClient, params: dict[str, Any]) -> tuple[str, int]:
    reply = await client.post(client.request("tools/call", params))
    return reply.messages[-1]["result"]["content"][0]["text"], reply.status


async def test_mode_none_gives_each_request_a_private_upstream_that_ends_with_it(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw, record = await start(gateway, tmp_path, share="none")
    pool = gw.hub.pools["rec"]
    modern = Modern(http, gw.url + "/mcp")
    for n in range(3):
        status, reply, _ = await modern.call(
            body("tools/call", {"name": "sync", "arguments": {}}, id=n)
        )
        assert status == 200
        assert reply["result"]["content"][0]["text"] == "synced"
    assert pool.health()["size"] == 0  # each private upstream closed with its request
    starts = [m for m in upstream(record) if m.get("method") == "initialize"]
    assert len(starts) == 3  # one upstream session (child) per request: never shared


async def test_a_retry_at_another_replica_sharing_the_store_carries_on(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Each round's answers are kept in the session store: a replica that does not hold
    the call runs it again, answering what was answered before; a used token is spent
    at every replica."""
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = [(await gateway([fixture_stdio()], store_url=store)).url + "/mcp" for _ in range(2)]
    tool = {"name": "test_input_required_result_multi_round", "arguments": {}}
    everything: dict[str, Any] = {"elicitation": {}, "sampling": {}}

    async def ask(url: str, id: int, **params: Any) -> dict[str, Any]:
        message = body("tools/call", {**tool, **params}, id=id, capabilities=everything)
        status, reply, _ = await Modern(http, url, token=None).call(message)
        assert status == 200, reply
        return reply

    one = (await ask(a, 1))["result"]
    assert list(one["inputRequests"]) == ["step1"]
    name = {"step1": {"action": "accept", "content": {"name": "Ada"}}}
    two = (await ask(b, 2, requestState=one["requestState"], inputResponses=name))["result"]
    assert list(two["inputRequests"]) == ["step2"]  # B ran the call again, step1 answered
    colour = {"step2": {"action": "accept", "content": {"color": "teal"}}}
    three = await ask(a, 3, requestState=two["requestState"], inputResponses=colour)
    text = three["result"]["content"][0]["text"]
    assert text == "Multi-round complete for Ada who likes teal"  # step1 from B's record

    message = body("tools/call", {**tool, "requestState": two["requestState"],
                                  "inputResponses": colour}, id=4, capabilities=everything)  # fmt: skip
    status, replayed, _ = await Modern(http, b, token=None).call(message)
    assert (status, replayed["error"]["code"]) == (400, -32602)  # B holds it, the store says used
    assert "already used" in replayed["error"]["message"]


async def test_a_full_pool_takes_back_a_call_held_for_input_and_its_retry_runs_it_again(
    gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A client that never answers must not keep the server's last upstream session from
    others: a request that finds the pool full ends the oldest held call (cancelled
    upstream); that call's own retry then runs it again, answering from the retry."""
    gw, record = await start(gateway, tmp_path, share="all", pool_max=1)
    alice, bob = Modern(http, gw.url + "/mcp"), Modern(http, gw.url + "/mcp", "bob-key")
    _, first, _ = await alice.call(body("tools/call", ELICIT, capabilities=CAN_ELICIT))
    ((key, _),) = first["result"]["inputRequests"].items()

    status, synced, _ = await bob.call(body("tools/call", {"name": "sync", "arguments": {}}))
    assert status == 200
    assert synced["result"]["content"][0]["text"] == "synced"
    assert [m for m in upstream(record) if m.get("method") == "notifications/cancelled"]

    answers = {key: {"action": "accept", "content": {"name": "Ada"}}}
    retry = body("tools/call", {**ELICIT, "requestState": first["result"]["requestState"],
                                "inputResponses": answers}, id=2, capabilities=CAN_ELICIT)  # fmt: skip
    status, done, _ = await alice.call(retry)
    assert status == 200, done
    assert json.loads(done["result"]["content"][0]["text"]) == {"name": "Ada"}
    assert len([m for m in upstream(record) if m.get("params", {}).get("name") == "elicit"]) == 2
