"""stdio upstream: a child process speaking newline-delimited JSON-RPC.

Contract (spec 2025-11-25 transports §stdio, lifecycle §Shutdown; spec-notes §3):

- The child starts in its own session and process group, so that shutdown
  reaches what a wrapper such as ``npx`` starts under it.
- It gets only a small safe environment plus the ``env`` its config names:
  the gateway's own secrets stay with the gateway.
- One JSON message per line, compact (no embedded newline); lines over
  ``max_message_bytes`` are a protocol error.
- stderr is logged line by line, credentials redacted
  (:func:`bridge.log.redact`), at most ``stderr_log_lines`` per
  ``stderr_log_interval`` per child (:class:`StderrLimiter`: the rest are
  counted and the count logged once per interval), and is never an error signal.
- :meth:`StdioConnection.aclose` closes stdin, waits ``shutdown_grace``,
  sends SIGTERM to the group (and to what the child started outside it),
  waits ``shutdown_grace`` again, then SIGKILLs the group, always reaps the
  child, SIGKILLs and reaps every descendant it left (a grandchild that
  called ``setsid()`` too: :mod:`bridge.upstreams.descendants`), and closes
  its pipes' transport: no zombie, no orphan and no transport left for the
  garbage collector on any path. It runs shielded, so a cancelled caller
  cannot leave a child behind.
- The kernel SIGKILLs a child whose gateway died (``PR_SET_PDEATHSIG``),
  even by SIGKILL, so a child that ignores stdin's end does not live on.

Supervision (issue #5): a child that dies ends its connection at once, and
the session answers every pending request with a -32030 error naming the
server and how the child ended (exit status or signal, and after how long).
Its stderr goes to the log only: it may hold anything, a token included, and
clients are not the operator. Each server's :class:`Supervisor` decides when
the next child may start (see :mod:`bridge.upstreams.supervisor`); a request
that needs a child during the restart delay waits if the delay ends within
``restart.wait`` seconds, and otherwise fails fast with 503, ``Retry-After``
and -32030: it never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final

import structlog

from bridge import jsonrpc, tasks
from bridge.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from bridge.jsonrpc import Message
from bridge.log import redact
from bridge.metrics import Metrics
from bridge.settings import StdioServer
from bridge.upstreams import descendants
from bridge.upstreams.base import Health, UpstreamTimeouts, decode_frames
from bridge.upstreams.supervisor import Supervisor, describe_exit

log = structlog.get_logger("bridge.upstream.stdio")

#: Passed through from the gateway's environment (the SDKs pass a similar set).
SAFE_ENV: Final = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR")
STDERR_TAIL: Final = 20  # last stderr lines kept for the log and /readyz
#: Bytes a child's pipe reader asks for at a time; it buffers at most twice this.
READ_CHUNK: Final = 64 * 1024
STDERR_LINE_MAX: Final = 2000  # characters of one stderr line that reach the log


class StderrLimiter:
    """Which of one child's stderr lines are logged: a token bucket (issue #15).

    The bucket holds ``lines`` tokens and refills at ``lines`` per
    ``interval`` seconds; a line is logged if it takes a token, else it is
    counted (``dropped``, and ``mcp_bridge_stderr_dropped_total{server}``).
    What was dropped is logged as ``child_stderr_dropped`` with its count
    once per interval while lines drop (a timer, so a burst is reported
    within the interval even if the child then falls silent), and once more
    by :meth:`flush` when stderr ends.
    """

    def __init__(
        self,
        server: str,
        lines: int,
        interval: float,
        counter: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self._capacity = float(lines)
        self._rate = lines / interval  # tokens per second
        self._interval = interval
        self._counter = counter
        self._clock = clock
        self._tokens = float(lines)
        self._refilled = self._reported = clock()
        self._report: asyncio.TimerHandle | None = None  # the next report, once lines drop
        self.dropped = 0  # since the last report

    def admit(self) -> bool:
        """Whether the next line may be logged; reports the dropped count when due."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            admitted = True
        else:
            admitted = False
            self.dropped += 1
            if self._counter is not None:
                self._counter()
            if self._report is None:  # the count goes out within the interval
                delay = max(0.0, self._reported + self._interval - now)
                self._report = asyncio.get_running_loop().call_later(delay, self.flush)
        return admitted

    def flush(self) -> None:
        """Log the count dropped since the last report, if any."""
        if self._report is not None:
            self._report.cancel()
            self._report = None
        if self.dropped:
            log.warning(
                "child_stderr_dropped",
                server=self.server,
                dropped=self.dropped,
                interval_s=self._interval,
            )
        self.dropped = 0
        self._reported = self._clock()


class StdioUpstream:
    def __init__(
        self, spec: StdioServer, timeouts: UpstreamTimeouts, metrics: Metrics | None = None
    ) -> None:
        self.name = spec.name
        self._spec = spec
        self._timeouts = timeouts
        self._metrics = metrics
        self.supervisor = Supervisor(spec.name, timeouts.restart)

    def stderr_limiter(self) -> StderrLimiter:
        """A fresh token bucket for one child's stderr (settings ``stderr_log_*``)."""
        counter = None
        if self._metrics is not None:
            counter = self._metrics.stderr_dropped.labels(self.name).inc
        timeouts = self._timeouts
        return StderrLimiter(
            self.name, timeouts.stderr_log_lines, timeouts.stderr_log_interval, counter
        )

    def child_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in SAFE_ENV if k in os.environ}
        env.update(self._spec.env)
        return env

    def health(self) -> Health:
        return self.supervisor.health()

    async def connect(self, client_headers: Mapping[str, str] | None = None) -> StdioConnection:
        """Start a child, once the restart delay allows (``client_headers`` play no part).

        Raises:
            UpstreamUnavailable: the restart delay has more than ``restart.wait``
                seconds to run (503 with ``Retry-After``), or the command cannot start.
            UpstreamTimeout: the spawn took longer than ``connect``.
        """
        await self._admit()
        spec = self._spec
        loop = asyncio.get_running_loop()
        tag = secrets.token_hex(8)  # marks what this child starts (descendants.find)
        try:
            async with asyncio.timeout(self._timeouts.connect):
                # asyncio.create_subprocess_exec, keeping the transport: the
                # connection closes it itself (see StdioConnection._terminate).
                transport, protocol = await loop.subprocess_exec(
                    lambda: asyncio.subprocess.SubprocessStreamProtocol(READ_CHUNK, loop),
                    spec.command,
                    *spec.args,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env={**self.child_env(), descendants.TAG_ENV: tag},
                    cwd=spec.cwd,
                    start_new_session=True,
                    preexec_fn=descendants.die_with_gateway(),
                )
                process = asyncio.subprocess.Process(transport, protocol, loop)
        except TimeoutError as exc:
            self.supervisor.failed_to_start("spawn timed out")
            raise UpstreamTimeout(f"server {self.name!r}: spawn timed out") from exc
        except OSError as exc:
            self.supervisor.failed_to_start(str(exc.strerror))
            raise UpstreamUnavailable(
                f"server {self.name!r}: cannot start {spec.command!r}: {exc.strerror}"
            ) from exc
        descendants.DIRECT.add(process.pid)
        log.info("child_started", server=self.name, pid=process.pid)
        return StdioConnection(
            self.name,
            process,
            self._timeouts,
            self.supervisor,
            self.stderr_limiter(),
            transport,
            tag,
        )

    async def _admit(self) -> None:
        """Wait out the restart delay if it ends within ``restart.wait``; else fail fast."""
        deadline = time.monotonic() + self._timeouts.restart.wait
        while (delay := self.supervisor.retry_in()) > 0:
            if time.monotonic() + delay > deadline:
                retry_after = str(max(1, math.ceil(delay)))
                raise UpstreamUnavailable(
                    self.supervisor.refusal(), headers={"Retry-After": retry_after}
                )
            await asyncio.sleep(delay)


async def read_line(reader: asyncio.StreamReader, max_bytes: int, server: str) -> bytes:
    """One line of up to ``max_bytes`` (b"" at end of file), read ``READ_CHUNK`` at a time.

    The reader itself buffers at most twice its limit (``READ_CHUNK``) before
    it stops reading the pipe, so a session whose client reads nothing holds
    back its child after about that much, not after ``max_bytes`` (issue #5
    "Limits and backpressure"); only a message actually that long costs more.

    Raises:
        UpstreamProtocolError: the line exceeds ``max_bytes``.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            parts.append(await reader.readuntil(b"\n"))
        except asyncio.IncompleteReadError as exc:  # end of file, maybe mid-line
            parts.append(exc.partial)
        except asyncio.LimitOverrunError as exc:  # no newline in the buffer yet
            parts.append(await reader.readexactly(exc.consumed))
            size += exc.consumed
            if size <= max_bytes:
                continue
            raise UpstreamProtocolError(
                f"server {server!r}: a stdout line exceeds {max_bytes} bytes"
            ) from None
        line = b"".join(parts)
        if len(line) > max_bytes + 1:  # + the newline
            raise UpstreamProtocolError(
                f"server {server!r}: a stdout line exceeds {max_bytes} bytes"
            )
        return line


class StdioConnection:
    def __init__(
        self,
        name: str,
        process: asyncio.subprocess.Process,
        timeouts: UpstreamTimeouts,
        supervisor: Supervisor,
        stderr_limiter: StderrLimiter | None = None,
        transport: asyncio.SubprocessTransport | None = None,
        tag: str = "",
    ) -> None:
        self._name = name
        self._tag = tag
        self._process = process
        self._transport = transport
        self._timeouts = timeouts
        self._supervisor = supervisor
        self._round = supervisor.started()
        self._started = time.monotonic()
        self._ended_at: float | None = None  # when its end was recorded
        self._healthy_timer = asyncio.get_running_loop().call_later(
            timeouts.restart.healthy_after, supervisor.healthy, self._round
        )
        # Raw (cut, not yet redacted): redaction costs only the lines shown.
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._stderr_limiter = stderr_limiter or StderrLimiter(
            name, timeouts.stderr_log_lines, timeouts.stderr_log_interval
        )
        self._stderr_task = tasks.spawn(self._pump_stderr(), name=f"stdio-stderr:{name}")
        self._close_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self._process.pid

    def _exited(self) -> str:
        # Goes to clients: how it ended, not what it said (stderr may hold secrets).
        ran_for = (self._ended_at or time.monotonic()) - self._started
        text = f"server {self._name!r}: child {describe_exit(self._process.returncode)}"
        text += f" after {ran_for:.1f} s"
        if self._stderr_tail:
            text += "; its stderr is in the gateway log"
        return text

    def _note_end(self, *, by_itself: bool) -> None:
        """Tell the supervisor how the child ended; once, whichever path sees it first."""
        if self._ended_at is not None:
            return
        self._ended_at = time.monotonic()
        self._healthy_timer.cancel()
        self._supervisor.exited(
            self._round,
            status=describe_exit(self._process.returncode),
            ran_for=self._ended_at - self._started,
            by_itself=by_itself,
            stderr=self._tail(),
        )

    def _tail(self) -> list[str]:
        """The last stderr lines, redacted and cut to ``STDERR_LINE_MAX``."""
        return [redact(line)[:STDERR_LINE_MAX] for line in self._stderr_tail]

    async def send(self, message: Message) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        if self._close_task is not None:
            raise UpstreamUnavailable(f"server {self._name!r}: connection closed")
        if stdin.is_closing():  # an earlier write found the pipe broken
            raise await self._gone()
        try:
            stdin.write(jsonrpc.encode_bytes(message) + b"\n")
            async with asyncio.timeout(self._timeouts.send):
                await stdin.drain()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"server {self._name!r}: child is not reading stdin") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise await self._gone() from exc

    async def _gone(self) -> UpstreamUnavailable:
        """The error for a child that stopped reading: with its exit status once reaped."""
        await self._wait(self._timeouts.shutdown_grace)
        return UpstreamUnavailable(self._exited())

    async def messages(self) -> AsyncIterator[Message]:
        stdout = self._process.stdout
        assert stdout is not None
        while True:
            line = await read_line(stdout, self._timeouts.max_message_bytes, self._name)
            if not line:
                # stdout closed: the child is gone or going. Say how it ended,
                # with its last stderr lines (they follow the exit closely).
                grace = self._timeouts.shutdown_grace
                if await self._wait(grace):
                    await asyncio.wait([self._stderr_task], timeout=grace)
                    self._note_end(by_itself=self._close_task is None)
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
        by_itself = process.returncode is not None  # it was gone before we asked
        # What it started, while the tree under it is whole (setsid() leaves the group).
        started = await self._descendants()
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()
            if not await self._wait(grace):
                self._signal_group(signal.SIGTERM)
                descendants.signal_all(started, signal.SIGTERM)
                if not await self._wait(grace):
                    self._signal_group(signal.SIGKILL)
                    await self._wait(grace)
        # Whatever the leader left in its group is orphaned now: end it too.
        self._signal_group(signal.SIGKILL)
        await self._wait(grace)
        # And whatever it started elsewhere, found again now that its orphans are ours.
        if left := await descendants.end(started | await self._descendants(), grace):
            log.warning(
                "child_descendants_left", server=self._name, pid=process.pid, pids=sorted(left)
            )
        if process.returncode is not None:
            descendants.DIRECT.discard(process.pid)
        await tasks.cancel_and_wait(self._stderr_task, grace, "stdio connection closed")
        if self._transport is not None:
            # Close the pipes now, while the loop runs. A pipe whose reading was
            # paused (a client that reads nothing held the child back) never
            # sees its end of file, so asyncio would leave the transport open
            # until it is collected after the loop has closed: "Exception
            # ignored ... BaseSubprocessTransport.__del__ ... Event loop is
            # closed" at exit (issue #15).
            self._transport.close()
        self._note_end(by_itself=by_itself)
        log.info(
            "child_stopped",
            server=self._name,
            pid=process.pid,
            status=process.returncode,
            stderr_tail=self._tail(),
        )

    async def _descendants(self) -> set[int]:
        pid = self._process.pid
        alive = pid if self._process.returncode is None else None  # else its pid may be reused
        return await asyncio.to_thread(descendants.find, alive, pid, self._tag)

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
        limiter = self._stderr_limiter
        try:
            while True:
                try:
                    line = await stderr.readline()
                except ValueError:  # an over-long line: skip what is buffered
                    continue
                if not line:
                    return
                # Cut a little long, so that a token across the cut is seen whole
                # by redact(), which runs before a line is logged or shown.
                text = line.decode("utf-8", errors="replace").rstrip()[: STDERR_LINE_MAX + 64]
                self._stderr_tail.append(text)
                if limiter.admit():
                    log.info("child_stderr", server=self._name, line=redact(text)[:STDERR_LINE_MAX])
        finally:
            limiter.flush()
