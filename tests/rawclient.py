"""A raw Streamable HTTP client for tests that need to see the wire.

Unlike the SDK client it sends exactly the headers a test gives, and returns
the status, headers and decoded JSON-RPC messages of each answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from bridge.sse import Decoder, Event

ACCEPT_BOTH = "application/json, text/event-stream"
LATEST = "2025-11-25"


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error_code(self) -> int | None:
        return self.messages[0]["error"]["code"] if self.messages else None


async def read_reply(response: aiohttp.ClientResponse) -> Reply:
    """Read a whole answer: a JSON body, or an SSE stream until the server ends it."""
    reply = Reply(response.status, response.headers)
    if response.content_type == "text/event-stream":
        decoder = Decoder(16 * 1024 * 1024)
        async for chunk in response.content.iter_any():
            # Priming events (an id, empty data) carry no message.
            reply.messages += [json.loads(e.data) for e in decoder.feed(chunk) if e.data]
    elif response.content_type == "application/json":
        body = await response.json()
        reply.messages = body if isinstance(body, list) else [body]
    else:
        await response.read()
    return reply


async def read_events(response: aiohttp.ClientResponse) -> tuple[list[Event], bytes]:
    """Every SSE event until the server closes ``response``, and the raw bytes."""
    raw = await response.content.read()
    return Decoder(16 * 1024 * 1024).feed(raw), raw


async def next_event(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The fields of the next SSE event on ``response`` (comments skipped)."""
    while True:
        block = (await response.content.readuntil(b"\r\n\r\n")).decode()
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if fields:
            return fields


async def next_message(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next JSON-RPC message on an SSE ``response`` (priming events skipped)."""
    while True:
        fields = await next_event(response)
        if fields.get("data"):
            return json.loads(fields["data"])  # type: ignore[no-any-return]


class RawClient:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.session_id: str | None = None
        self._next_id = 0

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        headers.update(extra)
        return headers

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        return message

    async def post(self, body: Any, raw: bytes | None = None, /, **headers: str) -> Reply:
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.http.post(self.url, data=data, headers=self.headers(**headers)) as resp:
            return await read_reply(resp)

    async def initialize(self, version: str = LATEST) -> Reply:
        params = {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "raw-test-client", "version": "0"},
        }
        reply = await self.post(self.request("initialize", params))
        assert reply.status == 200, reply
        self.session_id = reply.headers["Mcp-Session-Id"]
        assert (
            await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        ).status == 202
        return reply

    async def delete(self) -> int:
        async with self.http.delete(self.url, headers=self.headers()) as resp:
            return resp.status


def keyed(http: aiohttp.ClientSession, url: str, token: str) -> RawClient:
    """A raw client that sends ``Authorization: Bearer TOKEN`` with every request."""
    client = RawClient(http, url)
    plain = client.headers
    client.headers = lambda **extra: plain(Authorization=f"Bearer {token}", **extra)  # type: ignore[method-assign]
    return client
