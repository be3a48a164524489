"""Bytes, not only counts, are bounded per session and per principal (issue #15, item 2).

The attack: clients that call ``echo`` with megabytes and never read the
answers. Here a raw client with a tiny receive buffer reads only the head of
each 6 MB answer, so what the kernel does not take of it stays in the gateway
(taken from the stream, its writer blocked). A session holds the bodies of its
requests in flight and its answers not yet written. With a real SQLite store:

- a session whose unread answers hold ``BRIDGE_MAX_SESSION_BYTES`` gets 429
  (-32037, ``Retry-After``) for its next request, never a 500;
- another session of the same principal gets 429 once the principal's
  sessions hold ``BRIDGE_MAX_PRINCIPAL_BYTES``;
- DELETE gives the memory back: the principal holds nothing afterwards;
- what one session stores is bounded by ``BRIDGE_MAX_STORED_BYTES_PER_SESSION``
  (later events go out without an id), and a ``tools/call``'s arguments are
  not stored at all (only its id and method, which is all a resume needs):
  six 1 MB calls leave the store file under 4 MB;
- the gateway's memory comes back after large messages (glibc's mmap
  threshold is fixed: :mod:`bridge.memory`).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bridge import errors
from bridge.settings import StdioServer
from tests.conftest import REPO, GatewayFactory, ProcFactory, start_gateway
from tests.rawclient import RawClient, read_reply

STDIO_SERVER = REPO / "tests" / "fixtures" / "stdio_server.py"
BOUND = 15.0
TEXT = "x" * 1_000_000  # each echo answer is about 1 MB
#: An answer larger than the kernel's socket buffers take (tcp_wmem's 4 MB at most):
#: its writer blocks, and the rest of it stays in the gateway.
BIG = "x" * 6_000_000


def echo_server() -> StdioServer:
    return StdioServer(name="echo", command=sys.executable, args=(str(STDIO_SERVER),))


class NonReader:
    """A raw connection that POSTs one echo call and reads only the head of its answer."""

    def __init__(self, url: str, session_id: str) -> None:
        self.host, rest = url.removeprefix("http://").split(":", 1)
        self.port = int(rest.split("/", 1)[0])
        self.session_id = session_id
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, request_id: int, text: str = BIG) -> tuple[int, bytes]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no room to absorb it
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
        body = json.dumps({
            "jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text}},
        }).encode()  # fmt: skip
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMcp-Session-Id: {self.session_id}"
            f"\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        async with asyncio.timeout(BOUND):
            status = int((await reader.readline()).split()[1])
            if status != 200:
                rest = await reader.readuntil(b"\r\n\r\n")
                length = [
                    ln for ln in rest.split(b"\r\n") if ln.lower().startswith(b"content-length")
                ]
                return status, await reader.readexactly(int(length[0].split(b":")[1]))
            # The answer is being written: its first bytes are here, the rest waits.
            await reader.readuntil(b'"result"')
        return status, b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def new_session(http: aiohttp.ClientSession, url: str) -> RawClient:
    client = RawClient(http, url)
    await client.initialize("2025-06-18")
    return client


async def test_unread_answers_are_bounded_per_session_and_principal(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await gateway(
        [echo_server()],
        store_url=f"sqlite:///{tmp_path}/sessions.db",
        share="none",
        max_body_bytes=16_000_000,
        max_session_bytes=10_000_000,
        max_principal_bytes=15_000_000,
    )
    url = f"{gw.url}/mcp"
    open_calls: list[NonReader] = []
    try:
        async with aiohttp.ClientSession() as http:
            first, second = await new_session(http, url), await new_session(http, url)
            for n in (1, 2):  # 6 MB held, then 12 MB: over the session's 10 MB
                call = NonReader(url, str(first.session_id))
                open_calls.append(call)
                assert (await call.call(n))[0] == 200
            call = NonReader(url, str(first.session_id))
            open_calls.append(call)
            status, body = await call.call(3)
            assert status == 429
            assert json.loads(body)["error"]["code"] == errors.LIMIT_EXCEEDED
            # The same principal (auth off: everyone) holds 12 MB; 6 more is 18 MB > 15 MB.
            call = NonReader(url, str(second.session_id))
            open_calls.append(call)
            assert (await call.call(1))[0] == 200
            call = NonReader(url, str(second.session_id))
            open_calls.append(call)
            status, body = await call.call(2)
            assert status == 429
            assert "this client" in json.loads(body)["error"]["message"]
            assert gw.hub.ledger.held(None) >= 15_000_000
            # Leaving gives the memory back.
            assert await first.delete() == 200
            assert await second.delete() == 200
            assert gw.hub.ledger.held(None) == 0
    finally:
        for call in open_calls:
            call.close()


def stored_bytes(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in tmp_path.glob("sessions.db*"))


async def test_what_a_session_stores_is_bounded(gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await gateway(
        [echo_server()],
        store_url=f"sqlite:///{tmp_path}/sessions.db",
        share="none",
        max_stored_bytes_per_session=2_500_000,
    )
    async with aiohttp.ClientSession() as http:
        client = await new_session(http, f"{gw.url}/mcp")
        ids: list[Any] = []
        for _ in range(6):
            call = client.request("tools/call", {"name": "echo", "arguments": {"text": TEXT}})
            async with http.post(client.url, json=call, headers=client.headers()) as response:
                assert response.status == 200
                text = await response.text()
            answer = next(b for b in text.split("\n\n") if '"result"' in b)
            ids.append("id:" in answer)
    assert ids == [True, True, False, False, False, False]  # stored, then sent without an id
    assert stored_bytes(tmp_path) < 4_000_000  # not 6 answers, nor 6 requests


async def test_memory_returns_after_large_messages(procs: ProcFactory, tmp_path: Path) -> None:
    """Twenty concurrent 3.5 MB echo calls: the gateway does not keep their memory.

    Before issue #15 glibc kept their freed buffers (its mmap threshold had grown
    past their size): RSS stayed hundreds of MB up. ``bench/memory.py`` has figures.
    """
    command = f"{sys.executable} {STDIO_SERVER}"
    gateway, base = await start_gateway(
        procs, "--stdio", command, "--store-url", f"sqlite:///{tmp_path}/sessions.db"
    )
    text = "x" * 3_500_000
    async with aiohttp.ClientSession() as http:
        clients = [await new_session(http, f"{base}/mcp") for _ in range(4)]
        before = psutil.Process(gateway.pid).memory_info().rss

        async def echo(client: RawClient) -> None:
            call = client.request("tools/call", {"name": "echo", "arguments": {"text": text}})
            body = io.BytesIO(json.dumps(call).encode())  # streamed: aiohttp warns of large bytes
            async with http.post(client.url, data=body, headers=client.headers()) as response:
                reply = await read_reply(response)
            assert reply.messages[-1]["result"]["content"][0]["text"] == text

        async with asyncio.timeout(BOUND * 4):
            await asyncio.gather(*(echo(c) for c in clients for _ in range(5)))
        after = psutil.Process(gateway.pid).memory_info().rss
    # About 95 MB here (buffers kept for the next such message, sized by it; the
    # same after more rounds), against 245 MB and growing before the fix.
    assert after - before < 160_000_000, (before, after)
