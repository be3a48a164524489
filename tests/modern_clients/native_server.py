"""A native MCP 2026-07-28 server (SDK 2.x ``MCPServer``) mirroring the conformance fixture.

Not used by the test suite: it is the reference the client scripts beside it
were checked against before the gateway spoke 2026-07-28, and stays useful to
tell a client-script fault from a gateway fault. It serves both eras on one
Streamable HTTP endpoint, like any SDK 2.x server.

Offers the names the client scripts call, with the fixture's answers:
``test_simple_text``, ``test_tool_with_progress``, ``test_elicitation`` (asks for
``username`` and ``email``: an ``InputRequiredResult`` round trip at 2026-07-28),
resource ``test://static-text`` and prompt ``test_simple_prompt``.

Run with the SDK 2.x venv:
    .venv-sdk2/bin/python tests/modern_clients/native_server.py --port 8931
and point a client at http://127.0.0.1:8931/mcp.
"""

from __future__ import annotations

import argparse
import json
from typing import Annotated

# The main venv's mypy sees SDK 1.x, which has no mcp.server.mcpserver; the ignores
# are for that run only. test_modern_clients.py type-checks this file strictly
# against .venv-sdk2, where they are unused (hence ``unused-ignore``).
from mcp.server.mcpserver import (  # type: ignore[import-not-found, unused-ignore]
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Message,
    Resolve,
    UserMessage,
)
from pydantic import BaseModel, Field


def test_simple_text() -> str:
    """Returns a simple text content block"""
    return "This is a simple text response for testing."


async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0/100, 50/100 and 100/100 when given a progressToken"""
    for progress in (0, 50, 100):
        await ctx.report_progress(
            progress=progress, total=100, message=f"Completed step {progress} of 100"
        )
    return "Tool with progress executed successfully"


class Contact(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


def ask_contact(message: str) -> Elicit[Contact]:
    """The elicitation: an input request at 2026-07-28, elicitation/create before."""
    return Elicit(message, Contact)


async def test_elicitation(
    message: Annotated[str, Field(description="The message to show the user")],
    answer: Annotated[ElicitationResult[Contact], Resolve(ask_contact)],
) -> str:
    """Requests user input from the client"""
    content = answer.data.model_dump() if isinstance(answer, AcceptedElicitation) else {}
    return f"User response: action={answer.action}, content={json.dumps(content)}"


def static_text() -> str:
    return "This is the content of the static text resource."


def test_simple_prompt() -> list[Message]:
    """A simple prompt without arguments"""
    return [UserMessage("This is a simple prompt for testing.")]


# Registered by call rather than by decorator: under the main venv's mypy (SDK 1.x)
# MCPServer is Any, and an Any decorator would make each function untyped.
mcp: MCPServer = MCPServer("mcp-native-2026-fixture")
for tool in (test_simple_text, test_tool_with_progress, test_elicitation):
    mcp.add_tool(tool, structured_output=False)
mcp.resource(
    "test://static-text",
    name="static-text",
    description="A static text resource",
    mime_type="text/plain",
)(static_text)
mcp.prompt()(test_simple_prompt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    mcp.run(transport="streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
