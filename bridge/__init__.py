"""mcp-bridge: a Streamable HTTP front door for legacy HTTP+SSE and stdio MCP servers."""

__version__ = "0.1.0"
