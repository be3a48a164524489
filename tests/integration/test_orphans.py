"""Nothing a stdio child starts outlives its session, nor the gateway (issue #15 "Orphans").

The fixture server (``tests/fixtures/stdio_server.py --orphans``) starts two
grandchildren that call ``setsid()`` (so they leave the child's process group,
which is what the gateway signals) and ignore SIGTERM: one is its own child,
the other an orphan from the start (its parent exits at once; the gateway,
as subreaper, adopts it). A DELETE of the session, and a SIGTERM of the
gateway, end both, and the gateway reaps them (no zombie either).

``--ignore-eof``: a child that ignores SIGTERM and stdin's end of file. After a
SIGKILL of the gateway, which cannot close anything, the kernel kills it
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil

from tests.conftest import REPO, Proc, ProcFactory, start_gateway
from tests.integration.test_stdio_lifecycle import assert_gone
from tests.rawclient import RawClient

STDIO_SERVER = REPO / "tests" / "fixtures" / "stdio_server.py"
BOUND = 15.0  # seconds any single step may take


def write_config(path: Path, *args: str) -> Path:
    server = {"command": sys.executable, "args": [str(STDIO_SERVER), *args]}
    path.write_text(json.dumps({"mcpServers": {"kids": server}}))
    return path


@contextlib.contextmanager
def killed_at_end(pids: list[int]) -> Iterator[None]:
    """SIGKILL what a failing test would leave running."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def session_with_orphans(
    procs: ProcFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> tuple[Proc, RawClient, int, list[int]]:
    config = write_config(tmp_path / "servers.json", "--orphans")
    gateway, base = await start_gateway(
        procs, "--config", str(config), "--share", "none", "--stdio-shutdown-grace", "0.5"
    )
    client = RawClient(http, f"{base}/mcp")
    await client.initialize()
    reply = await client.post(client.request("tools/call", {"name": "pid", "arguments": {}}))
    answer = json.loads(reply.messages[-1]["result"]["content"][0]["text"])
    child, orphans = answer["pid"], answer["orphans"]
    assert len(orphans) == 2
    for pid in orphans:
        assert os.getsid(pid) == pid  # it left the child's session and group
    # The second one's parent has exited: the gateway adopted it.
    assert psutil.Process(orphans[1]).ppid() == gateway.pid
    assert psutil.Process(orphans[0]).ppid() == child
    return gateway, client, child, orphans


async def test_delete_ends_what_the_child_started(procs: ProcFactory, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        gateway, client, child, orphans = await session_with_orphans(procs, tmp_path, http)
        with killed_at_end(orphans):
            assert await client.delete() == 200
            await gateway.wait_for(r'"event": "child_stopped"', BOUND)
            for pid in [child, *orphans]:
                assert_gone(pid)  # not even a zombie: the gateway reaped its adoptee
            assert not gateway.json_events("child_descendants_left")
            assert gateway.process.returncode is None


async def test_sigterm_ends_what_the_children_started(procs: ProcFactory, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        gateway, _client, child, orphans = await session_with_orphans(procs, tmp_path, http)
        with killed_at_end(orphans):
            gateway.process.send_signal(signal.SIGTERM)
            assert await gateway.exited(BOUND) == 0
            for pid in [child, *orphans]:
                assert_gone(pid)


async def exited(pid: int, within: float) -> None:
    """Wait (bounded) until ``pid`` has exited: its pidfd becomes readable."""
    fd = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(fd, done.set)
    try:
        async with asyncio.timeout(within):
            await done.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_sigkill_of_the_gateway_ends_a_child_that_ignores_eof(
    procs: ProcFactory, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "servers.json", "--ignore-eof")
    gateway, base = await start_gateway(procs, "--config", str(config), "--share", "none")
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/mcp")
        await client.initialize()
        reply = await client.post(client.request("tools/call", {"name": "pid", "arguments": {}}))
        child = json.loads(reply.messages[-1]["result"]["content"][0]["text"])["pid"]
    with killed_at_end([child]):
        gateway.process.send_signal(signal.SIGKILL)
        await exited(child, BOUND)  # the kernel killed it with its parent
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE  # left to init
