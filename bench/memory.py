"""Gateway memory and store size under clients that never read (issue #15 "Hardening II", item 2).

Starts ``mcp-bridge`` with an SQLite store in front of the stdio fixture server
(``tests/fixtures/stdio_server.py``, whose ``echo`` tool sends its text back),
then for ``--rounds`` rounds: ``--sessions`` sessions each POST ``--calls``
``echo`` calls of ``--mb`` MB, on raw connections whose receive buffer is tiny
and that read only the first bytes of each answer (the rest of it waits in the
gateway or the kernel). After ``--hold`` seconds the clients close their
connections without DELETE (they left). Prints the gateway's RSS (with its
children) and the store's size on disk before the attack, during it (after all
calls were answered or refused), and after the clients left (after
``--settle`` seconds), and the answers by status.

    python bench/memory.py                       # 6 sessions x 10 calls x 3.5 MB
    python bench/memory.py --rounds 2 --gateway-args "--max-session-bytes 1000000000"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.rawclient import RawClient  # noqa: E402

STDIO_SERVER = REPO / "tests" / "fixtures" / "stdio_server.py"


def mb(n: float) -> str:
    return f"{n / 1e6:8.1f} MB"


def malloc_env() -> dict[str, str]:
    """glibc tunables from this environment (MALLOC_*), to compare allocator settings."""
    return {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}


def rss(pid: int) -> int:
    process = psutil.Process(pid)
    return int(process.memory_info().rss)


def store_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("sessions.db*"))


async def start_gateway(store: Path, extra: list[str]) -> tuple[asyncio.subprocess.Process, int]:
    with socket.socket() as sock:  # a free port (not 0: nothing at warning level says which)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    argv = [
        sys.executable, "-m", "bridge", "--stdio", f"{sys.executable} {STDIO_SERVER}",
        "--store-url", f"sqlite:///{store}/sessions.db", "--port", str(port),
        "--log-format", "json", "--log-level", "warning", "--share", "none", *extra,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin", **malloc_env()}, cwd=REPO,
    )  # fmt: skip
    assert process.stdout is not None
    # Its `listening` line is at info level: at warning, wait for the port instead.
    async with asyncio.timeout(30):
        while process.returncode is None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return process, port
    raise SystemExit("the gateway did not start")


async def call(port: int, session_id: str, request_id: int, text: str) -> tuple[int, socket.socket]:
    """POST one echo call; read its status line and the first bytes; leave the rest unread."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    body = json.dumps({
        "jsonrpc": "2.0", "id": request_id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text}},
    }).encode()  # fmt: skip
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nMcp-Session-Id: {session_id}\r\n"
        f"MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    async with asyncio.timeout(120):
        status = int((await reader.readline()).split()[1])
        if status == 200:
            await reader.readuntil(b'"result"')
    return status, sock


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--mb", type=float, default=3.5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--gateway-args", default="")
    args = parser.parse_args()
    text = "x" * int(args.mb * 1e6)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        process, port = await start_gateway(store, shlex.split(args.gateway_args))
        base = f"http://127.0.0.1:{port}/mcp"
        try:
            print(f"before        RSS {mb(rss(process.pid))}  store {mb(store_size(store))}")
            for round_ in range(1, args.rounds + 1):
                statuses: Counter[int] = Counter()
                socks: list[socket.socket] = []
                async with aiohttp.ClientSession() as http:
                    clients = [RawClient(http, base) for _ in range(args.sessions)]
                    for client in clients:
                        await client.initialize("2025-06-18")
                    results = await asyncio.gather(
                        *(
                            call(port, str(c.session_id), n, text)
                            for c in clients
                            for n in range(1, args.calls + 1)
                        ),
                        return_exceptions=True,
                    )
                for result in results:
                    if isinstance(result, BaseException):
                        statuses[-1] += 1
                    else:
                        statuses[result[0]] += 1
                        socks.append(result[1])
                await asyncio.sleep(args.hold)  # the attack holds its connections this long
                now = f"RSS {mb(rss(process.pid))}  store {mb(store_size(store))}"
                print(f"round {round_} during {now}  answers {dict(statuses)}")
                for sock in socks:
                    sock.close()
                await asyncio.sleep(args.settle)  # the gateway notices the clients left
                now = f"RSS {mb(rss(process.pid))}  store {mb(store_size(store))}"
                print(f"round {round_} after  {now}")
        finally:
            process.terminate()
            with contextlib.suppress(ProcessLookupError):
                await process.wait()


if __name__ == "__main__":
    asyncio.run(main())
