"""The official SDK client through the gateway to real MCP servers (issue #2 "Tests").

Client: ``mcp`` ``streamable_http_client`` + ``ClientSession`` on the Streamable
HTTP front door. Upstreams: a FastMCP server over legacy SSE and over stdio,
and ``@modelcontextprotocol/server-everything`` from npm over stdio and over
legacy SSE. Each runs the same scenario: initialize, tools/list, tools/call,
a progress-reporting tool (progress before the result), a sampling round
trip (server -> client request), resources/read, prompts/get, ping, DELETE;
a profile that names an elicitation tool adds an elicitation round trip.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.context import RequestContext

from tests.conftest import (
    GatewayFactory,
    ProcFactory,
    everything_stdio,
    fixture_stdio,
    sse_spec,
    start_everything_sse,
    start_fixture_sse,
)


@dataclass(frozen=True)
class Profile:
    """What to call on one kind of upstream server, and what it must answer."""

    tool: tuple[str, dict[str, Any], str]
    progress_tool: tuple[str, dict[str, Any]]
    sampling_tool: tuple[str, dict[str, Any]]
    resource: tuple[str, str]
    prompt: tuple[str, dict[str, str], str]
    #: (tool, arguments, text its result holds); "" for none: the client then
    #: declares no elicitation capability.
    elicitation_tool: tuple[str, dict[str, Any], str] = ("", {}, "")


FASTMCP = Profile(
    tool=("test_simple_text", {}, "This is a simple text response for testing."),
    progress_tool=("test_tool_with_progress", {}),
    sampling_tool=("test_sampling", {"prompt": "say hi"}),
    resource=("test://static-text", "This is the content of the static text resource."),
    prompt=("test_prompt_with_arguments", {"arg1": "a1", "arg2": "b2"}, "arg1='a1'"),
)
EVERYTHING = Profile(
    tool=("echo", {"message": "hello"}, "Echo: hello"),
    progress_tool=("trigger-long-running-operation", {"duration": 0.3, "steps": 3}),
    sampling_tool=("trigger-sampling-request", {"prompt": "say hi", "maxTokens": 10}),
    resource=("demo://resource/static/document/architecture.md", "#"),
    prompt=("args-prompt", {"city": "Lisbon"}, "Lisbon"),
)
SAMPLED = "sampled through the gateway"
#: What the elicitation callback accepts with (the fixture's test_elicitation asks for these).
ELICITED = {"username": "through-the-gateway", "email": "gateway@example.test"}
#: FASTMCP plus an elicitation round trip; the fixture echoes the accepted content.
FASTMCP_ELICITING = replace(
    FASTMCP,
    elicitation_tool=(
        "test_elicitation",
        {"message": "Who are you?"},
        f"action=accept, content={json.dumps(ELICITED)}",
    ),
)


async def _sampling(
    context: RequestContext[ClientSession, Any], params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=SAMPLED), model="test"
    )


async def _elicitation(
    context: RequestContext[ClientSession, Any], params: types.ElicitRequestParams
) -> types.ElicitResult:
    assert isinstance(params, types.ElicitRequestFormParams), params
    return types.ElicitResult(action="accept", content=dict(ELICITED))


def _text(result: types.CallToolResult) -> str:
    assert not result.isError, result
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def exercise(session: ClientSession, profile: Profile) -> None:
    """After initialize: tools, progress before the result, sampling, elicitation, resources,
    prompts, ping.

    Shared by both front doors' SDK tests; a profile with no sampling (elicitation) tool
    skips sampling (elicitation).
    """
    tools = {t.name for t in (await session.list_tools()).tools}
    expected_tools = {
        profile.tool[0],
        profile.progress_tool[0],
        profile.sampling_tool[0],
        profile.elicitation_tool[0],
    } - {""}
    assert expected_tools <= tools

    name, args, expected = profile.tool
    assert expected in _text(await session.call_tool(name, args))

    order: list[str] = []
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        order.append("progress")
        seen.append(progress)

    name, args = profile.progress_tool
    _text(await session.call_tool(name, args, progress_callback=on_progress))
    order.append("result")
    assert len(seen) >= 3
    assert seen == sorted(seen)
    assert order == ["progress"] * len(seen) + ["result"]

    name, args = profile.sampling_tool
    if name:
        assert SAMPLED in _text(await session.call_tool(name, args))

    name, args, expected = profile.elicitation_tool
    if name:
        assert expected in _text(await session.call_tool(name, args))

    uri, needle = profile.resource
    contents = (await session.read_resource(uri)).contents  # type: ignore[arg-type]
    assert any(needle in getattr(c, "text", "") for c in contents)

    name, pargs, needle = profile.prompt
    prompt = await session.get_prompt(name, pargs)
    texts = [m.content.text for m in prompt.messages if isinstance(m.content, types.TextContent)]
    assert any(needle in t for t in texts)

    assert isinstance(await session.send_ping(), types.EmptyResult)


async def run_scenario(url: str, profile: Profile) -> None:
    async with (
        streamable_http_client(url) as (read, write, get_session_id),
        ClientSession(
            read,
            write,
            sampling_callback=_sampling,
            elicitation_callback=_elicitation if profile.elicitation_tool[0] else None,
        ) as session,
    ):
        init = await session.initialize()
        assert init.protocolVersion == types.LATEST_PROTOCOL_VERSION
        session_id = get_session_id()
        assert session_id

        await exercise(session, profile)
    # Leaving streamable_http_client sends DELETE; the session must be gone now.
    assert await _status_after_delete(url, session_id) == 404


async def _status_after_delete(url: str, session_id: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Accept": "application/json, text/event-stream", "Mcp-Session-Id": session_id},
        ) as response,
    ):
        # Released here: behind a proxy that streams the error body, an
        # unreleased response would leave its connection open (ResourceWarning).
        return response.status


Setup = Callable[[ProcFactory], Awaitable[Any]]


async def _fastmcp_sse(procs: ProcFactory) -> Any:
    return sse_spec(await start_fixture_sse(procs))


async def _fastmcp_stdio(procs: ProcFactory) -> Any:
    return fixture_stdio()


async def _everything_stdio(procs: ProcFactory) -> Any:
    return everything_stdio()


async def _everything_sse(procs: ProcFactory) -> Any:
    return sse_spec(await start_everything_sse(procs))


@pytest.mark.parametrize(
    ("setup", "profile"),
    [
        pytest.param(_fastmcp_sse, FASTMCP_ELICITING, id="fastmcp-legacy-sse"),
        pytest.param(_fastmcp_stdio, FASTMCP_ELICITING, id="fastmcp-stdio"),
        pytest.param(_everything_stdio, EVERYTHING, id="everything-stdio"),
        pytest.param(_everything_sse, EVERYTHING, id="everything-legacy-sse"),
    ],
)
async def test_sdk_client_scenario(
    setup: Setup, profile: Profile, procs: ProcFactory, gateway: GatewayFactory
) -> None:
    spec = await setup(procs)
    base = (await gateway([spec])).url
    await run_scenario(f"{base}/http", profile)


async def test_named_server_urls_and_mcp_alias(procs: ProcFactory, gateway: GatewayFactory) -> None:
    """With two servers each answers at /servers/NAME/http and /servers/NAME/mcp."""
    base = (await gateway([fixture_stdio("one"), everything_stdio("two")])).url
    await run_scenario(f"{base}/servers/one/mcp", FASTMCP)
    await run_scenario(f"{base}/servers/two/http", EVERYTHING)
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{base}/http", json={})
        assert response.status == 404  # no single-server alias with two servers
