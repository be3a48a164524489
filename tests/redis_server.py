"""A real ``redis-server`` for tests: own port, own directory, nothing persisted;
and a real three-node Redis Cluster made of such servers (:class:`RedisCluster`).

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
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

START_TIMEOUT: Final = 10.0  # seconds for redis-server to say it is ready
CLUSTER_CREATE_TIMEOUT: Final = 30.0  # seconds for `redis-cli --cluster create` to finish
CLUSTER_OK_TIMEOUT: Final = 15.0  # seconds for every node to report cluster_state:ok
CLUSTER_POLL: Final = 0.05  # seconds between two CLUSTER INFO polls while it converges
CLUSTER_NODES: Final = 3
CLUSTER_BUS_OFFSET: Final = 10000  # a cluster node also listens on its port + this
PORT_TRIES: Final = 200  # free ports drawn before giving up on one fit for a cluster node
STOP_TIMEOUT: Final = 5.0  # seconds for redis-server to exit
READY: Final = "Ready to accept connections"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000, at most 65535) is free too."""
    for _ in range(PORT_TRIES):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port fit for a cluster node in {PORT_TRIES} tries")


class RedisServer:
    """One ``redis-server`` process at a time, always on :attr:`port`."""

    def __init__(
        self, directory: Path, port: int | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not on PATH (CI installs it with apt)")
        self.executable = executable
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.extra = extra  # further redis-server arguments
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
                *self.extra,
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


class RedisCluster:
    """Three cluster-enabled ``redis-server`` primaries, no replicas, slots spread by redis-cli.

    :meth:`start` starts each node (in ``directory/node-N``, own free port,
    ``nodes-N.conf`` there) and waits for its "Ready" line, runs
    ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``
    (bounded by :data:`CLUSTER_CREATE_TIMEOUT`), then polls ``CLUSTER INFO``
    on every node until each says ``cluster_state:ok`` (bounded by
    :data:`CLUSTER_OK_TIMEOUT`, every :data:`CLUSTER_POLL` seconds: the nodes
    agree through gossip, which logs nothing a test could wait on per node).
    Raises RuntimeError if any step fails or runs out of time; :meth:`close`
    kills every node.
    """

    def __init__(self, directory: Path) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (CI installs it with redis-server)")
        self.cli = cli
        self.nodes = [
            RedisServer(
                directory / f"node-{n}",
                free_cluster_port(),
                extra=(
                    *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{n}.conf"),
                    *("--cluster-node-timeout", "5000"),
                ),
            )
            for n in range(CLUSTER_NODES)
        ]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming one node; clients discover the rest."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            self._create()
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    def kill(self) -> None:
        """Kill every node at once (SIGKILL): the whole cluster is out."""
        for node in self.nodes:
            node.kill()

    def restart(self) -> None:
        """Start every node again on its port; they rejoin from their nodes-N.conf.

        Their data is gone (nothing is persisted), their slots are not.
        """
        for node in self.nodes:
            node.start()
        self.wait_ok()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

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

    def _create(self) -> None:
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        done = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *addresses,
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            capture_output=True,
            text=True,
            timeout=CLUSTER_CREATE_TIMEOUT,
            check=False,
        )
        if done.returncode != 0 or "All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")

    def wait_ok(self) -> None:
        """Return once every node reports cluster_state:ok; RuntimeError after CLUSTER_OK_TIMEOUT."""
        deadline = time.monotonic() + CLUSTER_OK_TIMEOUT
        waiting = list(self.ports)
        while waiting:
            waiting = [port for port in waiting if "cluster_state:ok" not in self._info(port)]
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok within {CLUSTER_OK_TIMEOUT}s on {waiting}")
            if waiting:
                time.sleep(CLUSTER_POLL)  # a bounded poll: gossip converges silently

    def _info(self, port: int) -> str:
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        return done.stdout
