"""The connection gate's choice of whom to close at the cap (issue #15, slowloris).

Seams only: a stand-in for aiohttp's request handler and for the transport.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from bridge.frontends.acceptor import AcceptServer, listening_sockets
from bridge.frontends.connections import ConnectionGate, _Guarded


class Handler:
    def __init__(self) -> None:
        self.received = b""
        self.forced = False

    def connection_made(self, transport: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.received += data

    def force_close(self) -> None:
        self.forced = True

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.aborted = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


def connect(gate: ConnectionGate) -> tuple[_Guarded, Handler, Transport]:
    handler, transport = Handler(), Transport()
    conn = _Guarded(handler, gate)  # type: ignore[arg-type]
    conn.connection_made(transport)
    return conn, handler, transport


async def test_a_keepalive_client_sending_its_next_request_outlasts_a_slow_head() -> None:
    gate = ConnectionGate(cap=2, header_timeout=60)
    control, control_handler, control_transport = connect(gate)
    gate.begin(control_handler)  # its first request, served and done
    gate.end(control_handler)
    slow, _, slow_transport = connect(gate)  # a slowloris, waiting for headers since now
    slow.data_received(b"P")
    control.data_received(b"POST /mcp HTTP/1.1\r\n\r\n")  # its next request, not yet served
    assert control.armed
    assert slow.armed
    _newcomer, _, newcomer_transport = connect(gate)
    assert not newcomer_transport.aborted
    assert slow_transport.closed  # waited longest for its headers
    assert not control_transport.closed
    assert gate.evicted == 1
    assert len(gate) == 2


async def test_idle_connections_go_least_recently_used_first() -> None:
    gate = ConnectionGate(cap=2, header_timeout=60)
    _first, first_handler, first_transport = connect(gate)
    _second, second_handler, second_transport = connect(gate)
    for handler in (second_handler, first_handler):  # the older connection was used last
        gate.begin(handler)
        gate.end(handler)
    _, _, third_transport = connect(gate)
    assert second_transport.closed
    assert not first_transport.closed
    assert not third_transport.aborted


async def test_a_connection_serving_a_request_is_never_closed() -> None:
    gate = ConnectionGate(cap=1, header_timeout=60)
    _, handler, transport = connect(gate)
    gate.begin(handler)  # a stream
    _, _, refused = connect(gate)
    assert refused.aborted
    assert not transport.closed
    assert gate.refused == 1


async def test_settle_waits_for_an_accepted_connection_to_begin_its_request() -> None:
    """Shutdown: aiohttp closes connections not serving a request; one just accepted
    must first get its request in (a rolling restart's 502s)."""
    gate = ConnectionGate(cap=10, header_timeout=60)
    _, idle_handler, _ = connect(gate)
    gate.begin(idle_handler)
    gate.end(idle_handler)  # keep-alive, between requests: nothing to wait for
    _, arriving_handler, _ = connect(gate)  # accepted, its request not begun
    settling = asyncio.ensure_future(gate.settle(within=30))
    await asyncio.sleep(0)
    assert not settling.done()
    gate.begin(arriving_handler)
    async with asyncio.timeout(5):
        await settling


async def test_settle_gives_up_on_a_silent_connection_within_its_bound() -> None:
    gate = ConnectionGate(cap=10, header_timeout=60)
    connect(gate)  # accepted, never sends a byte
    async with asyncio.timeout(5):
        await gate.settle(within=0.05)


async def test_closing_the_listener_serves_what_the_kernel_had_queued() -> None:
    """Connections queued in the backlog are accepted, not reset, when the server closes."""
    made: list[asyncio.Transport] = []
    all_made = asyncio.Event()

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)  # type: ignore[arg-type]
            if len(made) == 3:
                all_made.set()

    sockets = await listening_sockets("127.0.0.1", 0, 16)
    server = AcceptServer(sockets, Recorder, 16)
    await server.start_serving()
    port = sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:  # connected in the kernel; the loop has not run the accept yet
        server.close()
        async with asyncio.timeout(5):
            await all_made.wait()
        assert len(made) == 3
    finally:
        for client in clients:
            client.close()
        for transport in made:
            transport.close()


async def test_a_drain_waits_for_requests_begun_but_not_for_streams() -> None:
    """Drain: sessions are left to other replicas only once the requests this process
    took are served (one on its way to a session just handed over had nowhere to go:
    503 -32038 in a rolling restart); a GET (a stream) is not waited for."""
    gate = ConnectionGate(cap=4, header_timeout=60)
    _, post_handler, _ = connect(gate)
    _, get_handler, _ = connect(gate)
    gate.begin(get_handler, "GET")
    gate.begin(post_handler, "POST")
    assert gate.requests == 1
    waiting = asyncio.ensure_future(gate.requests_served(30.0))
    with pytest.raises(TimeoutError):  # one request is being served: it waits
        await asyncio.wait_for(asyncio.shield(waiting), 0.05)
    gate.end(post_handler, "POST")
    await asyncio.wait_for(waiting, 5.0)
    assert gate.requests == 0


async def test_a_closed_connection_leaves_no_request_to_wait_for() -> None:
    gate = ConnectionGate(cap=2, header_timeout=60)
    conn, handler, _ = connect(gate)
    gate.begin(handler, "POST")
    conn.connection_lost(None)  # the client went away; end() will find no connection
    await asyncio.wait_for(gate.requests_served(30.0), 5.0)
