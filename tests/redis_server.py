"""A real ``redis-server`` for tests: own port, own directory, nothing persisted.

The server runs with ``--save "" --appendonly no`` on a free 127.0.0.1 port,
in a directory of its own. :meth:`RedisServer.start` returns once the server
has logged "Ready to accept connections" (read from its stdout, bounded by
:data:`START_TIMEOUT`), never after a sleep. The server can be stopped,
killed, paused (SIGSTOP, a hung server) and started again on the same port;
:meth:`close` always kills it.

Plain ``subprocess`` rather than asyncio, so that one server can serve a
whole test session whatever event loop each test runs on. The few blocking
waits here are bounded and happen while no client is waiting on the server.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Final, Self

START_TIMEOUT: Final = 10.0  # seconds for redis-server to say it is ready
STOP_TIMEOUT: Final = 5.0  # seconds for redis-server to exit
READY: Final = "Ready to accept connections"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process at a time, always on :attr:`port`."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not on PATH (CI installs it with apt)")
        self.executable = executable
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.lines: list[str] = []  # everything the server printed, all runs
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        if self._process is not None:
            raise RuntimeError("redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                self.executable,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                *("--dir", str(self.directory), "--daemonize", "no"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._process = process
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(process, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            self.kill()
            tail = "\n".join(self.lines[-20:])
            raise RuntimeError(f"redis-server not ready within {START_TIMEOUT}s:\n{tail}")

    def stop(self) -> None:
        """Shut the server down gracefully (SIGTERM), killing it if it lingers."""
        process = self._take()
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): an outage, not a shutdown."""
        process = self._take()
        if process is not None:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open, nothing answered."""
        self._running().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._running().send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill the server if it runs, then start a fresh one on the same port."""
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _running(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise RuntimeError("redis-server is not running")
        return self._process

    def _take(self) -> subprocess.Popen[str] | None:
        process, self._process = self._process, None
        return process

    def _drain(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        # Reads until the server exits, so its pipe never fills up.
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY in line:
                ready.set()
        process.stdout.close()
