"""Shared fixtures: real subprocesses, real sockets on 127.0.0.1, bounded waits.

Processes are started through :class:`Proc`, which collects their output and
lets a test wait for a line (a server's "listening" message) with a bound,
instead of sleeping. Every process a test starts is killed, with its whole
process group, when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.app import HUB, build_app
from bridge.hub import SessionHub
from bridge.settings import ServerSpec, Settings, SseServer, StdioServer
from tests.redis_server import RedisCluster, RedisServer

REPO = Path(__file__).resolve().parents[1]
NPM_BIN = REPO / "tests" / "npm" / "node_modules" / ".bin"
NODE22_BIN = REPO / "tests" / "npm" / "node_modules" / "node" / "bin"
FIXTURE_SERVER = REPO / "tests" / "fixtures" / "conformance_server.py"
EVERYTHING = NPM_BIN / "mcp-server-everything"
START_TIMEOUT = 30.0  # seconds for a server process to say it listens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Ports for a server that is restarted on the same port: below Linux's default
#: ephemeral range (32768-60999), from which an outgoing connection's source
#: port could take the port while the server is down ("address already in use").
RESTART_PORTS: Final = range(20000, 32768)


def restartable_port() -> int:
    """A free port on 127.0.0.1 outside the ephemeral range (:data:`RESTART_PORTS`)."""
    for _ in range(100):
        port = random.choice(RESTART_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


class Proc:
    """A subprocess in its own process group whose output lines are collected."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.ensure_future(self._read(stream))
            for stream in (process.stdout, process.stderr)
            if stream is not None
        ]
        # Output can end before the exit is seen: wake wait_for at the exit too.
        self._exit = asyncio.ensure_future(self._watch_exit())

    @classmethod
    async def start(
        cls, *argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        process = await asyncio.create_subprocess_exec(
            *map(str, argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        return cls(process, Path(str(argv[0])).name)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _watch_exit(self) -> None:
        await self.process.wait()
        self._changed.set()

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_for(self, pattern: str, within: float = START_TIMEOUT) -> re.Match[str]:
        """The first output line matching ``pattern``; fails after ``within`` seconds."""
        regex = re.compile(pattern)
        seen = 0
        async with asyncio.timeout(within):
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                if self.process.returncode is not None and all(r.done() for r in self._readers):
                    raise AssertionError(f"{self.name} exited: " + "\n".join(self.lines[-20:]))
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_lines(self, pattern: str, count: int, within: float) -> list[str]:
        """The first ``count`` output lines matching ``pattern``; fails after ``within`` seconds."""
        regex = re.compile(pattern)
        async with asyncio.timeout(within):
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found[:count]
                if self.process.returncode is not None and all(r.done() for r in self._readers):
                    raise AssertionError(f"{self.name} exited: " + "\n".join(self.lines[-20:]))
                self._changed.clear()
                await self._changed.wait()

    def json_events(self, event: str) -> list[dict[str, Any]]:
        """The gateway's JSON log lines whose ``event`` is ``event``."""
        found = []
        for line in self.lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == event:
                        found.append(record)
        return found

    async def exited(self, within: float) -> int:
        """Wait (bounded) for the process to exit by itself and its output to end."""
        async with asyncio.timeout(within):
            code = await self.process.wait()
            await asyncio.gather(*self._readers)
        return code

    async def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
        """Signal the process, wait (bounded), then SIGKILL its whole group."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        code = await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, self._exit, return_exceptions=True)
        return code


ProcFactory = Callable[..., Awaitable[Proc]]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own on a free port (``.url``), which a test
    may stop, kill and start again; the session-wide one for the store contract
    tests is ``redis_server`` in tests/contract/conftest.py."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real three-node Redis Cluster for the whole test session (``.url``:
    ``redis+cluster://`` naming one node). Tests keep to keys of their own
    (a key prefix of their own); the single-server fixture, ``redis_server``,
    is in tests/contract/conftest.py."""
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
async def procs() -> AsyncIterator[ProcFactory]:
    """Start processes with ``await procs(*argv, env=..., cwd=...)``; all die at teardown."""
    started: list[Proc] = []

    async def start(
        *argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        proc = await Proc.start(*argv, env=env, cwd=cwd)
        started.append(proc)
        return proc

    yield start
    await asyncio.gather(*(p.stop(signal.SIGKILL, 5.0) for p in started))


async def start_gateway(
    procs: ProcFactory, *args: str, env: dict[str, str] | None = None, port: int = 0
) -> tuple[Proc, str]:
    """Run ``mcp-bridge ARGS --port PORT``; return it and its base URL once it listens.

    The store is ``memory://`` unless ``args`` name one. ``port`` 0 (the
    default) lets the gateway pick a free one; a fixed port lets a test start
    a gateway again where clients (or a balancer) expect it.
    """
    if "--store-url" not in args:
        args = (*args, "--store-url", "memory://")
    proc = await procs(
        sys.executable,
        "-m",
        "bridge",
        *args,
        "--port",
        str(port),
        "--log-format",
        "json",
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
    )
    match = await proc.wait_for(r'"event": "listening"')
    bound = json.loads(match.string)["port"]
    return proc, f"http://127.0.0.1:{bound}"


async def start_fixture_sse(procs: ProcFactory) -> str:
    """The conformance fixture (FastMCP) as a legacy HTTP+SSE server; its /sse URL."""
    port = free_port()
    proc = await procs(sys.executable, FIXTURE_SERVER, "--transport", "sse", "--port", str(port))
    await proc.wait_for("Uvicorn running on")
    return f"http://127.0.0.1:{port}/sse"


async def start_fixture_http(
    procs: ProcFactory, port: int | None = None, *options: str
) -> tuple[Proc, str]:
    """The conformance fixture (FastMCP) over Streamable HTTP; the process and its /mcp URL."""
    port = port or free_port()
    proc = await procs(
        sys.executable, FIXTURE_SERVER, "--transport", "streamable-http", "--port", str(port),
        *options,
    )  # fmt: skip
    await proc.wait_for("Uvicorn running on")
    return proc, f"http://127.0.0.1:{port}/mcp"


async def start_everything_sse(procs: ProcFactory) -> str:
    """@modelcontextprotocol/server-everything in legacy SSE mode; its /sse URL."""
    port = free_port()
    proc = await procs(EVERYTHING, "sse", env={"PORT": str(port)})
    await proc.wait_for(f"running on port {port}")
    return f"http://127.0.0.1:{port}/sse"


def fixture_stdio(name: str = "fixture") -> StdioServer:
    return StdioServer(name=name, command=sys.executable, args=(str(FIXTURE_SERVER),))


def example_stdio(name: str = "example") -> StdioServer:
    return StdioServer(name=name, command=sys.executable, args=("-m", "bridge.examples.server"))


def everything_stdio(name: str = "everything") -> StdioServer:
    return StdioServer(name=name, command=str(EVERYTHING), args=("stdio",))


def sse_spec(url: str, name: str = "legacy") -> SseServer:
    return SseServer(name=name, url=url, type="sse")


@dataclass(frozen=True)
class RunningGateway:
    url: str  # base URL, no path
    hub: SessionHub


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def gateway(aiohttp_server: AiohttpServer) -> GatewayFactory:
    """An in-process gateway on a real socket: ``await gateway([specs], **settings)``."""

    async def make(servers: list[ServerSpec], **overrides: Any) -> RunningGateway:
        settings = Settings(**{"store_url": "memory://", **overrides})
        app: web.Application = await build_app(settings, servers)
        server = await aiohttp_server(app)
        return RunningGateway(f"http://127.0.0.1:{server.port}", app[HUB])

    return make
