"""Accepting client connections the same way on asyncio's loop and on uvloop (issue #13).

uvloop (libuv) handles ``accept()`` running out of descriptors its own way:
it accepts and closes what waits in the backlog, and on any error it cannot
absorb so, it closes the listening socket for good, without a word. asyncio's
selector loop instead reports "socket.accept() out of system resource" to
the loop's exception handler and stops accepting for a second, then tries
again. The gateway relies on the latter (issue #15: a slowloris must not make
it deaf; :class:`~bridge.frontends.connections.AcceptErrors` counts and logs
the failures), so :class:`AcceptServer` does the accepting itself, as asyncio
does, on whichever loop runs: a reader callback on the non-blocking
listening socket, up to ``backlog`` ``accept()`` calls a turn, and each
accepted socket handed to ``loop.connect_accepted_socket`` (where uvloop's
fast transports take over).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any, Final

from bridge import tasks

#: The message the loop's exception handler gets (asyncio's own wording).
ACCEPT_FAILED: Final = "socket.accept() out of system resource"
#: Seconds accepting pauses after running out of resources (asyncio's ACCEPT_RETRY_DELAY).
ACCEPT_RETRY_DELAY: Final = 1.0
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


async def listening_sockets(
    host: str | None, port: int, backlog: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Non-blocking sockets listening on every address ``host`` resolves to (as asyncio's
    ``create_server`` binds them: ``SO_REUSEADDR``, IPv6 sockets IPv6 only).

    Raises:
        OSError: the name does not resolve, or an address cannot be bound (the port is taken).
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )  # fmt: skip
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: "
                    f"{(exc.strerror or '').lower()}",
                ) from None  # fmt: skip
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class AcceptServer(asyncio.AbstractServer):
    """What ``loop.create_server`` returns, accepting as asyncio's selector loop does."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        backlog: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._factory = factory
        self._backlog = backlog
        self._serving = False
        self._paused: dict[int, asyncio.TimerHandle] = {}

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if not self._serving:
            self._serving = True
            for sock in self._sockets:
                self._listen(sock)

    async def serve_forever(self) -> None:
        raise NotImplementedError("the gateway serves until its runner stops")

    def _listen(self, sock: socket.socket) -> None:
        self._paused.pop(sock.fileno(), None)
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing more waiting, or a client gave up before we got to it
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                context: dict[str, Any] = {"message": ACCEPT_FAILED, "exception": exc}
                self._loop.call_exception_handler(context)
                self._loop.remove_reader(sock.fileno())
                self._paused[sock.fileno()] = self._loop.call_later(
                    ACCEPT_RETRY_DELAY, self._listen, sock
                )
                return
            conn.setblocking(False)
            _ = tasks.spawn(self._connect(conn), name="accept-connection")

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:  # the client is gone already
            conn.close()

    def close(self) -> None:
        # Connections the kernel has queued are taken first: closing the socket
        # would reset them, requests their clients believe sent (a rolling
        # restart behind a load balancer). What they carry is then served.
        if self._serving:
            for sock in self._sockets:
                if sock.fileno() != -1 and sock.fileno() not in self._paused:
                    self._accept(sock)
        self._serving = False
        for timer in self._paused.values():
            timer.cancel()
        self._paused.clear()
        for sock in self._sockets:
            if sock.fileno() != -1:
                self._loop.remove_reader(sock.fileno())
                sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: the runner closes the connections themselves."""
