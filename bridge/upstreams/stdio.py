"""stdio upstream: a child process speaking newline-delimited JSON-RPC.

Contract (spec 2025-11-25 transports §stdio, lifecycle §Shutdown; spec-notes §3):

- The child starts in its own session and process group, so that shutdown
  reaches what a wrapper such as ``npx`` starts under it.
- It gets only a small safe environment plus the ``env`` its config names:
  the gateway's own secrets stay with the gateway.
- One JSON message per line, compact (no embedded newline); lines over
  ``max_message_bytes`` are a protocol error.
- stderr is logged line by line and is never an error signal.
- :meth:`StdioConnection.aclose` closes stdin, waits ``shutdown_grace``,
  sends SIGTERM to the group, waits ``shutdown_grace`` again, then SIGKILLs
  the group, and always reaps the child: no zombie and no orphan on any path.
  It runs shielded, so a cancelled caller cannot leave a child behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import structlog

from bridge import jsonrpc, tasks
from bridge.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from bridge.jsonrpc import Message
from bridge.settings import StdioServer
from bridge.upstreams.base import UpstreamTimeouts, decode_frames

log = structlog.get_logger("bridge.upstream.stdio")

#: Passed through from the gateway's environment (the SDKs pass a similar set).
SAFE_ENV: Final = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR")
STDERR_TAIL: Final = 20  # last stderr lines kept for error messages
STDERR_LINE_MAX: Final = 2000  # characters of one stderr line that reach the log


class StdioUpstream:
    def __init__(self, spec: StdioServer, timeouts: UpstreamTimeouts) -> None:
        self.name = spec.name
        self._spec = spec
        self._timeouts = timeouts

    def child_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in SAFE_ENV if k in os.environ}
        env.update(self._spec.env)
        return env

    async def connect(self) -> StdioConnection:
        spec = self._spec
        try:
            async with asyncio.timeout(self._timeouts.connect):
                process = await asyncio.create_subprocess_exec(
                    spec.command,
                    *spec.args,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=self.child_env(),
                    cwd=spec.cwd,
                    start_new_session=True,
                    limit=self._timeouts.max_message_bytes,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self.name!r}: spawn timed out") from exc
        except OSError as exc:
            raise UpstreamUnavailable(
                f"server {self.name!r}: cannot start {spec.command!r}: {exc.strerror}"
            ) from exc
        log.info("child_started", server=self.name, pid=process.pid)
        return StdioConnection(self.name, process, self._timeouts)


class StdioConnection:
    def __init__(
        self, name: str, process: asyncio.subprocess.Process, timeouts: UpstreamTimeouts
    ) -> None:
        self._name = name
        self._process = process
        self._timeouts = timeouts
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._stderr_task = tasks.spawn(self._pump_stderr(), name=f"stdio-stderr:{name}")
        self._close_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self._process.pid

    def _exited(self) -> str:
        # Goes to clients: the status only. The stderr tail goes to the log.
        code = self._process.returncode
        status = "exited" if code is None else f"exited with status {code}"
        return f"server {self._name!r}: child {status}"

    async def send(self, message: Message) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        if stdin.is_closing():
            raise UpstreamUnavailable(self._exited())
        try:
            stdin.write(jsonrpc.encode(message).encode() + b"\n")
            async with asyncio.timeout(self._timeouts.send):
                await stdin.drain()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self._name!r}: child is not reading stdin") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise UpstreamUnavailable(self._exited()) from exc

    async def messages(self) -> AsyncIterator[Message]:
        stdout = self._process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except ValueError as exc:  # LimitOverrunError surfaces as ValueError
                raise UpstreamProtocolError(
                    f"server {self._name!r}: a stdout line exceeds "
                    f"{self._timeouts.max_message_bytes} bytes"
                ) from exc
            if not line:
                # stdout closed: the child is gone or going. Say how it ended.
                await self._wait(self._timeouts.shutdown_grace)
                raise UpstreamUnavailable(self._exited())
            if line.strip():
                for message in decode_frames(line, self._name):
                    yield message

    async def aclose(self) -> None:
        if self._close_task is None:
            self._close_task = tasks.spawn(self._terminate(), name=f"stdio-close:{self._name}")
        await asyncio.shield(self._close_task)

    async def _terminate(self) -> None:
        process, grace = self._process, self._timeouts.shutdown_grace
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()
            if not await self._wait(grace):
                self._signal_group(signal.SIGTERM)
                if not await self._wait(grace):
                    self._signal_group(signal.SIGKILL)
                    await self._wait(grace)
        # Whatever the leader left in its group is orphaned now: end it too.
        self._signal_group(signal.SIGKILL)
        await self._wait(grace)
        await tasks.cancel_and_wait(self._stderr_task, grace, "stdio connection closed")
        log.info(
            "child_stopped",
            server=self._name,
            pid=process.pid,
            status=process.returncode,
            stderr_tail=list(self._stderr_tail),
        )

    async def _wait(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._process.wait()
        except TimeoutError:
            return False
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    async def _pump_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # an over-long line: skip what is buffered
                continue
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip()[:STDERR_LINE_MAX]
            self._stderr_tail.append(text)
            log.info("child_stderr", server=self._name, line=text)
