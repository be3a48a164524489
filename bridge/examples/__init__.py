"""A small MCP server to put behind the gateway (needs the ``example`` extra)."""
