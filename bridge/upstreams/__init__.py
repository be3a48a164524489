"""Upstream transports: how the gateway talks to the MCP server behind it."""
