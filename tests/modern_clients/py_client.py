"""The official Python SDK 2.x ``mcp.Client`` in auto mode, run as a script by the tests.

Runs under the SDK 2.x virtualenv (``.venv-sdk2``; the main venv holds SDK 1.x):

    .venv-sdk2/bin/python tests/modern_clients/py_client.py URL [--token TOKEN]

``mode="auto"`` (the SDK's default, spelled out here) first POSTs ``server/discover``
at 2026-07-28 and adopts that era when the answer is a DiscoverResult naming it;
anything else (an error, a 4xx, a result with no modern version) falls back to the
``initialize`` handshake at 2025-11-25. The negotiated version is read back from
``Client.protocol_version``.

It then exercises tools, progress, resources, prompts and an elicitation round
trip (at 2026-07-28 an ``InputRequiredResult`` the SDK answers through
``elicitation_callback`` and retries; on the session era an
``elicitation/create`` request to the same callback), and prints ONE JSON line:

    {"client", "protocol_version", "era", "tools", "simple_text", "progress",
     "progress_result", "resources", "resource_text", "prompts", "prompt_text",
     "elicitation_message", "elicited_content", "elicitations", "elicitation_result"}

``elicitation_message`` is what the elicitation tool was called with and
``elicited_content`` what the handler answered; ``elicitations`` lists the
requests the handler saw (message, field names) and ``elicitation_result`` is
the tool's final text, which on the fixture echoes the content.

Any failure exits non-zero with a traceback on stderr and prints nothing on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from contextlib import AsyncExitStack
from importlib.metadata import version
from typing import Any

# The main venv's mypy sees SDK 1.x, where these names do not exist; the ignores
# are for that run only. test_modern_clients.py type-checks this file strictly
# against .venv-sdk2, where they are unused (hence ``unused-ignore``).
import httpx2  # type: ignore[import-not-found, unused-ignore]
import mcp_types as types  # type: ignore[import-not-found, unused-ignore]
from mcp import Client  # type: ignore[attr-defined, unused-ignore]
from mcp.client import ClientRequestContext  # type: ignore[attr-defined, unused-ignore]
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import (  # type: ignore[import-not-found, unused-ignore]
    MODERN_PROTOCOL_VERSIONS,
)

# What the scripts call on the conformance fixture (and on native_server.py).
SIMPLE_TOOL = "test_simple_text"
PROGRESS_TOOL = "test_tool_with_progress"
ELICITATION_TOOL = "test_elicitation"
ELICITATION_MESSAGE = "Who are you? (python sdk 2.x)"
RESOURCE_URI = "test://static-text"
PROMPT = "test_simple_prompt"
# The elicitation handler accepts with exactly this content.
ELICITED = {"username": "modern-python", "email": "python@example.test"}
READ_TIMEOUT = 30.0  # seconds for any one response


def _texts(content: list[types.ContentBlock]) -> str:
    return "".join(c.text for c in content if isinstance(c, types.TextContent))


async def run(url: str, token: str | None) -> dict[str, Any]:
    elicitations: list[dict[str, Any]] = []

    async def on_elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        if not isinstance(params, types.ElicitRequestFormParams):
            return types.ErrorData(code=types.INVALID_PARAMS, message="form mode only")
        elicitations.append(
            {"message": params.message, "fields": sorted(params.requested_schema["properties"])}
        )
        return types.ElicitResult(action="accept", content=dict(ELICITED))

    progress_seen: list[dict[str, Any]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progress_seen.append({"progress": progress, "total": total, "message": message})

    async with AsyncExitStack() as stack:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(READ_TIMEOUT))
        )
        client = await stack.enter_async_context(
            Client(
                streamable_http_client(url, http_client=http),
                mode="auto",
                elicitation_callback=on_elicit,
                read_timeout_seconds=READ_TIMEOUT,
            )
        )
        negotiated = client.protocol_version
        tools = sorted(t.name for t in (await client.list_tools()).tools)

        simple = await client.call_tool(SIMPLE_TOOL, {})
        assert not simple.is_error, simple

        with_progress = await client.call_tool(PROGRESS_TOOL, {}, progress_callback=on_progress)
        assert not with_progress.is_error, with_progress
        progress_before_result = list(progress_seen)

        resources = sorted(str(r.uri) for r in (await client.list_resources()).resources)
        read = await client.read_resource(RESOURCE_URI)
        resource_text = "".join(
            c.text for c in read.contents if isinstance(c, types.TextResourceContents)
        )

        prompts = sorted(p.name for p in (await client.list_prompts()).prompts)
        prompt = await client.get_prompt(PROMPT)
        prompt_text = "".join(
            m.content.text for m in prompt.messages if isinstance(m.content, types.TextContent)
        )

        elicited = await client.call_tool(ELICITATION_TOOL, {"message": ELICITATION_MESSAGE})
        assert not elicited.is_error, elicited

    return {
        "client": f"python-sdk-{version('mcp')}",
        "protocol_version": negotiated,
        "era": "modern" if negotiated in MODERN_PROTOCOL_VERSIONS else "legacy",
        "tools": tools,
        "simple_text": _texts(simple.content),
        "progress": progress_before_result,
        "progress_result": _texts(with_progress.content),
        "resources": resources,
        "resource_text": resource_text,
        "prompts": prompts,
        "prompt_text": prompt_text,
        "elicitation_message": ELICITATION_MESSAGE,
        "elicited_content": ELICITED,
        "elicitations": elicitations,
        "elicitation_result": _texts(elicited.content),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="the MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
    parser.add_argument("--token", help="bearer token sent on every request")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.token))), flush=True)


if __name__ == "__main__":
    main()
