"""Example MCP server: tools ``echo``, ``add`` and ``slow``, one resource, one prompt.

Run it behind the gateway over stdio (``config/example.json``) or on its own as
a legacy HTTP+SSE server::

    python -m bridge.examples.server                      # stdio
    python -m bridge.examples.server --transport sse --port 8000   # GET /sse

Written with the official ``mcp`` SDK (``pip install 'mcp-bridge-gateway[example]'``).
"""

from __future__ import annotations

import argparse
import asyncio

from mcp.server.fastmcp import Context, FastMCP


def build(host: str = "127.0.0.1", port: int = 8000) -> FastMCP:
    server = FastMCP("mcp-bridge-example", host=host, port=port)

    @server.tool()
    def echo(text: str) -> str:
        """Return ``text`` unchanged."""
        return text

    @server.tool()
    def add(a: float, b: float) -> float:
        """Return ``a + b``."""
        return a + b

    @server.tool()
    async def slow(steps: int = 3, delay: float = 0.2, ctx: Context | None = None) -> str:  # type: ignore[type-arg]
        """Work for ``steps`` x ``delay`` seconds, reporting progress after each step."""
        for step in range(1, steps + 1):
            await asyncio.sleep(delay)
            if ctx is not None:
                await ctx.report_progress(step, steps, f"step {step} of {steps}")
        return f"done after {steps} steps"

    @server.resource("example://greeting", mime_type="text/plain")
    def greeting() -> str:
        """A fixed greeting."""
        return "Hello from the mcp-bridge example server."

    @server.prompt()
    def summarize(topic: str) -> str:
        """Ask for a one-paragraph summary of ``topic``."""
        return f"Write a one-paragraph summary of {topic}."

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["stdio", "sse"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    build(args.host, args.port).run(transport=args.transport)


if __name__ == "__main__":
    main()
