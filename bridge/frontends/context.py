"""Typed per-request facts the front doors record for the request log line."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from bridge.jsonrpc import RequestId

RPC_METHOD: Final = web.RequestKey("rpc_method", str)
#: A tools/call's tool name, a resources/read's URI scheme (:func:`bridge.jsonrpc.target`).
RPC_TARGET: Final = web.RequestKey("rpc_target", str)
RPC_ID: Final[web.RequestKey[RequestId]] = web.RequestKey("rpc_id")
SESSION_ID: Final = web.RequestKey("session_id", str)
SERVER: Final = web.RequestKey("server", str)  # the configured server the request is for
DOOR: Final = web.RequestKey("front_door", str)  # "streamable_http" (default) or "legacy_sse"
PRINCIPAL: Final = web.RequestKey("principal", str)  # who sent it, when auth is on
MODERN: Final = web.RequestKey("modern", bool)  # served in the 2026-07-28 (sessionless) era
