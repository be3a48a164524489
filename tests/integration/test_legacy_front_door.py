"""The legacy HTTP+SSE front door (spec 2024-11-05; spec-notes §2).

Client: the official SDK's ``sse_client`` + ``ClientSession`` at ``/sse``,
through the gateway to the example server and the conformance fixture over
stdio; plus raw requests for the error cases, the endpoint prefix, the
Deprecation header and the migration metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from mcp import ClientSession, types
from mcp.client.sse import sse_client

from bridge.metrics import MAX_CLIENT_NAMES, Metrics, client_label
from bridge.settings import ServerSpec, StdioServer, StreamableHttpServer
from tests.conftest import (
    GatewayFactory,
    ProcFactory,
    example_stdio,
    fixture_stdio,
    sse_spec,
    start_everything_sse,
    start_fixture_http,
    start_fixture_sse,
)
from tests.integration.test_metrics import scrape, value
from tests.integration.test_sdk_clients import (
    EVERYTHING,
    FASTMCP,
    Profile,
    _sampling,
    exercise,
)
from tests.integration.test_streamable_upstream import start_everything_http

BOUND = 20.0  # seconds
EXAMPLE = Profile(
    tool=("add", {"a": 1, "b": 2}, "3"),
    progress_tool=("slow", {"steps": 3, "delay": 0.05}),
    sampling_tool=("", {}),  # the example server has no sampling tool
    resource=("example://greeting", "Hello from the mcp-bridge example server."),
    prompt=("summarize", {"topic": "tides"}, "tides"),
)
CLIENT = types.Implementation(name="Legacy Test-Client/1", version="1.0")


async def run_legacy_scenario(url: str, profile: Profile) -> None:
    async with (
        asyncio.timeout(BOUND),
        sse_client(url) as (read, write),
        ClientSession(read, write, sampling_callback=_sampling, client_info=CLIENT) as session,
    ):
        init = await session.initialize()
        assert init.protocolVersion == types.LATEST_PROTOCOL_VERSION

        await exercise(session, profile)


@pytest.mark.parametrize(
    ("spec", "profile"),
    [
        pytest.param(example_stdio(), EXAMPLE, id="example-stdio"),
        pytest.param(fixture_stdio(), FASTMCP, id="fixture-stdio"),
    ],
)
async def test_sdk_sse_client_through_legacy_door(
    spec: StdioServer, profile: Profile, gateway: GatewayFactory
) -> None:
    gw = await gateway([spec])
    await run_legacy_scenario(f"{gw.url}/sse", profile)
    await run_legacy_scenario(f"{gw.url}/servers/{spec.name}/sse", profile)


async def _open(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, str]:
    """GET a legacy stream; return it and the data of its first (endpoint) event."""
    response = await http.get(url, headers={"Accept": "text/event-stream"})
    assert response.status == 200
    event, data = await _event(response)
    assert event == "endpoint"
    return response, data


async def _event(response: aiohttp.ClientResponse) -> tuple[str, str]:
    event, data = "message", list[str]()
    async with asyncio.timeout(BOUND):
        while True:
            line = (await response.content.readline()).decode().rstrip("\r\n")
            if not line:
                if data:
                    return event, "\n".join(data)
                continue
            field, _, rest = line.partition(":")
            if field == "event":
                event = rest.strip()
            elif field == "data":
                data.append(rest.removeprefix(" "))


async def test_error_cases(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()])
    ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        stream, endpoint = await _open(http, f"{gw.url}/sse")
        assert "Deprecation" not in stream.headers  # off by default
        assert endpoint.startswith("/messages/?session_id=")
        post = f"{gw.url}{endpoint}"

        response = await http.post(f"{gw.url}/messages/?session_id=nope", json=ping)
        assert response.status == 404
        body = await response.json()
        assert body["error"]["code"] == -32001
        assert body["id"] == 7

        response = await http.post(f"{gw.url}/messages/", json=ping)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == -32600

        response = await http.post(post, json=[ping])
        assert response.status == 400
        assert (await response.json())["error"]["code"] == -32600

        response = await http.post(
            post, data=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert response.status == 400
        assert (await response.json())["error"]["code"] == -32700

        response = await http.post(post, json=ping)  # before initialize
        assert response.status == 400

        stream.close()
        response = await http.post(f"{gw.url}/servers/other/messages/?session_id=x", json=ping)
        assert response.status == 404


async def test_endpoint_prefix_and_deprecation_header(gateway: GatewayFactory) -> None:
    gw = await gateway(
        [example_stdio()], public_path_prefix="/gw", legacy_deprecation_header="true"
    )
    async with aiohttp.ClientSession() as http:
        stream, endpoint = await _open(http, f"{gw.url}/sse")
        assert stream.headers["Deprecation"] == "true"
        assert endpoint.startswith("/gw/messages/?session_id=")
        assert len(endpoint.partition("=")[2]) >= 40  # a CSPRNG id
        stream.close()
        stream, endpoint = await _open(http, f"{gw.url}/servers/example/sse")
        assert endpoint.startswith("/gw/servers/example/messages/?session_id=")
        # The public path is for the proxy; the gateway itself serves the bare one.
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2024-11-05",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        response = await http.post(f"{gw.url}{endpoint.removeprefix('/gw')}", json=init)
        assert response.status == 202
        assert response.headers["Deprecation"] == "true"
        event, data = await _event(stream)
        assert event == "message"
        assert '"id":1' in data.replace(" ", "")
        assert '"result"' in data
        stream.close()


async def test_metrics_and_session_end_after_client_left(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()], legacy_grace=0.1, sse_keepalive_interval=0.1)
    await run_legacy_scenario(f"{gw.url}/sse", EXAMPLE)
    async with aiohttp.ClientSession() as http:
        samples = await scrape(http, gw.url)
    ok = {"server": "example", "front_door": "legacy_sse", "outcome": "ok"}
    assert value(samples, "mcp_bridge_requests_total", method="tools/list", **ok) == 1
    assert value(samples, "mcp_bridge_requests_total", method="initialize", **ok) == 1
    assert (
        value(
            samples,
            "mcp_bridge_client_sessions_total",
            front_door="legacy_sse",
            client="legacy_test-client_1",
        )
        == 1
    )
    # The client leaves: its session is ended after the grace.
    before = {s.id for s in gw.hub.live()}
    async with (
        asyncio.timeout(BOUND),
        sse_client(f"{gw.url}/sse") as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        live = [s for s in gw.hub.live() if s.id not in before]
    assert len(live) == 1
    async with asyncio.timeout(BOUND):
        await live[0].ended.wait()
    async with aiohttp.ClientSession() as http:
        samples = await scrape(http, gw.url)
    reason = {"server": "example", "reason": "legacy_client_left"}
    assert value(samples, "mcp_bridge_sessions_ended_total", **reason) >= 1


def test_client_label_is_bounded() -> None:
    assert client_label("Claude Desktop") == "claude_desktop"
    assert client_label(None) == "unknown"
    assert len(client_label("x" * 100)) == 40
    metrics = Metrics()
    for n in range(MAX_CLIENT_NAMES + 5):
        metrics.count_client("legacy_sse", f"client{n}")
    metrics.count_client("legacy_sse", "client0")
    names = {
        s.labels["client"]
        for family in metrics.registry.collect()
        if family.name == "mcp_bridge_client_sessions"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(names) == MAX_CLIENT_NAMES + 1
    assert "other" in names


Setup = Callable[[ProcFactory], Awaitable[ServerSpec]]


async def _fastmcp_over_sse(procs: ProcFactory) -> ServerSpec:
    return sse_spec(await start_fixture_sse(procs))


async def _fastmcp_over_http(procs: ProcFactory) -> ServerSpec:
    _, url = await start_fixture_http(procs)
    return StreamableHttpServer(name="remote", url=url, type="streamable-http")


async def _everything_over_sse(procs: ProcFactory) -> ServerSpec:
    return sse_spec(await start_everything_sse(procs))


async def _everything_over_http(procs: ProcFactory) -> ServerSpec:
    _, url = await start_everything_http(procs)
    return StreamableHttpServer(name="remote", url=url, type="streamable-http")


@pytest.mark.parametrize(
    ("setup", "profile"),
    [
        pytest.param(_fastmcp_over_sse, FASTMCP, id="fastmcp-legacy-sse"),
        pytest.param(_fastmcp_over_http, FASTMCP, id="fastmcp-streamable-http"),
        pytest.param(_everything_over_sse, EVERYTHING, id="everything-legacy-sse"),
        pytest.param(_everything_over_http, EVERYTHING, id="everything-streamable-http"),
    ],
)
async def test_legacy_door_over_http_upstreams(
    setup: Setup, profile: Profile, procs: ProcFactory, gateway: GatewayFactory
) -> None:
    """The rest of issue #4's matrix: legacy front door x {legacy SSE, Streamable HTTP} upstreams."""
    gw = await gateway([await setup(procs)])
    await run_legacy_scenario(f"{gw.url}/sse", profile)
