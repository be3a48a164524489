"""A round-robin HTTP/1.1 reverse proxy for tests and benches (issue #12).

It stands in for the load balancer in front of several gateway replicas, with
**no affinity of any kind**: every request goes to the next backend in turn,
even the second request on one keep-alive client connection.

What it does with each request:

* method, path + query, body and headers go to the backend as they arrive
  (nothing is buffered whole), minus the hop-by-hop headers
  (:data:`HOP_BY_HOP`); ``Host`` stays what the client sent, so the gateway's
  Host/Origin checks see the client's Host; ``X-Forwarded-For`` gets the
  client's address appended;
* the backend's status, headers (minus hop-by-hop) and body come back, each
  body chunk written to the client as it arrives (SSE streams of minutes
  work: there is no total timeout, only :data:`CONNECT_TIMEOUT`);
* a backend that refuses the connection (down, restarting) is skipped and
  the next one tried, since nothing was sent to it; when all refuse, the
  client gets a ``502`` with a plain-text body (counted in
  :attr:`Counts.own_5xx`);
* any other failure before the backend's response started is a ``502`` too;
  once it started, a backend that dies mid-body ends the client's response
  by closing its connection (no terminating chunk), as a real balancer does;
* a client that disconnects cancels its handler (``handler_cancellation``),
  which closes the backend request and response at once, so the gateway
  sees the client go.

In process::

    async with Balancer(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as lb:
        ... lb.url, lb.counts.requests, lb.set_backends([...])

As a process (prints one line once it accepts connections)::

    python -m tests.balancer --port 0 --backend http://127.0.0.1:P1 --backend ...
    balancer listening on http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

#: Seconds to open a TCP connection to one backend before trying the next.
CONNECT_TIMEOUT: Final = 5.0
#: Seconds the balancer waits for its open requests when it stops.
SHUTDOWN_TIMEOUT: Final = 2.0
#: Headers of one connection, never forwarded (RFC 9110 §7.6.1), compared lower-case;
#: every ``Proxy-*`` header is dropped too.
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)
#: Headers aiohttp's client would add on its own; the backend gets only the client's.
NO_AUTO_HEADERS: Final = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE)
READY_LINE: Final = "balancer listening on {url}"


@dataclass
class Counts:
    """What the balancer did, for tests to assert on.

    ``requests``: per backend URL, requests it answered (a status came back).
    ``refused``: per backend URL, connections it refused (the request moved on).
    ``own_5xx``: responses the balancer produced itself (all backends refused,
    or a backend failed before its response started).
    """

    requests: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    own_5xx: int = 0


class AllRefused(Exception):
    """No backend accepted the connection."""


def forwarded_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The client's headers as the backend gets them: hop-by-hop out, X-Forwarded-For added."""
    out: CIMultiDict[str] = CIMultiDict()
    named_by_connection = {  # Connection: close, X-Foo names X-Foo as hop-by-hop too
        token.strip().lower()
        for value in request.headers.getall(hdrs.CONNECTION, [])
        for token in value.split(",")
    }
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower.startswith("proxy-") or lower in named_by_connection:
            continue
        out.add(name, value)
    client = request.remote or "unknown"
    previous = out.popall(hdrs.X_FORWARDED_FOR, [])
    out[hdrs.X_FORWARDED_FOR] = ", ".join([*previous, client])
    return out


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    """The backend's response headers as the client gets them: hop-by-hop out."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and not lower.startswith("proxy-"):
            out.add(name, value)
    return out


class Balancer:
    """A strict round-robin reverse proxy on ``host:port`` (``0``: a free port).

    Args:
        backends: base URLs (``http://127.0.0.1:PORT``), tried in this order in turn.
        host, port: where to listen.
        connect_timeout: seconds for each backend's TCP connect.
        keepalive: reuse backend connections; off by default, so that a
            restarted backend is never reached through a connection to its
            previous process (only a refused connect is then "down").
    """

    def __init__(
        self,
        backends: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = CONNECT_TIMEOUT,
        keepalive: bool = False,
    ) -> None:
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends: tuple[str, ...] = tuple(b.rstrip("/") for b in backends)
        self.counts = Counts()
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._turn = 0
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.ServerRunner | None = None
        self.url = ""

    def set_backends(self, backends: Sequence[str]) -> None:
        """Replace the backends; requests already forwarded carry on where they are."""
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends = tuple(b.rstrip("/") for b in backends)

    async def start(self) -> str:
        """Listen; return the balancer's base URL (no path)."""
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=not self._keepalive),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
            auto_decompress=False,  # bytes pass through; Content-Encoding stays as sent
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        port = runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def aclose(self) -> None:
        """Stop listening, end open requests (bounded by :data:`SHUTDOWN_TIMEOUT`)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _order(self) -> list[str]:
        """This request's backends: the next in turn first, then the others in order."""
        backends = self.backends
        start = self._turn % len(backends)
        self._turn += 1
        return [*backends[start:], *backends[:start]]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._client is not None
        body = _Body(request) if request.can_read_body else None
        headers = forwarded_headers(request)
        try:
            upstream, backend = await self._connect(request, headers, body)
        except AllRefused:
            return self._own_502(request, "no backend accepted the connection")
        except aiohttp.ClientError as exc:
            return self._own_502(request, f"backend failed before responding: {exc!r}")
        self.counts.requests[backend] += 1
        try:
            response = await self._relay(request, upstream)
        except BaseException:
            # At once, whatever ended the relay (a client gone cancels this
            # handler): the backend sees its connection close.
            upstream.close()
            raise
        upstream.release()
        return response

    async def _connect(
        self, request: web.BaseRequest, headers: CIMultiDict[str], body: _Body | None
    ) -> tuple[aiohttp.ClientResponse, str]:
        """The first backend in turn that accepts the connection, and its response.

        Raises:
            AllRefused: every backend refused (or did not accept within the connect timeout).
            aiohttp.ClientError: the backend that accepted failed before its response.
        """
        assert self._client is not None
        for backend in self._order():
            try:
                upstream = await self._client.request(
                    request.method,
                    backend + request.rel_url.raw_path_qs,
                    headers=headers,
                    data=None if body is None else body.chunks(),
                    skip_auto_headers=NO_AUTO_HEADERS,
                    allow_redirects=False,
                    compress=None,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                if body is not None and body.started:
                    raise  # part of the body went to this backend: not safe to retry
                self.counts.refused[backend] += 1
                continue
            return upstream, backend
        raise AllRefused

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=response_headers(upstream)
        )
        try:
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)  # one write per chunk: SSE events go out at once
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                # The backend died mid-body: end the client's response the way a real
                # balancer does, by closing its connection without a last chunk.
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
        except ConnectionResetError:
            # The client went away (often right after its last chunk, before the
            # handler is cancelled): the backend sees its connection close too.
            upstream.close()
        return response

    def _own_502(self, request: web.BaseRequest, why: str) -> web.Response:
        self.counts.own_5xx += 1
        return web.Response(status=502, text=f"balancer: {why}\n")


class _Body:
    """The client's request body as an async iterator of chunks, noting once it starts."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self._request.content.iter_any():
            yield chunk


async def _serve(port: int, backends: Sequence[str], host: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Balancer(backends, host=host, port=port) as balancer:
        print(READY_LINE.format(url=balancer.url), flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.balancer --port 0 --backend URL [--backend URL ...]``."""
    parser = argparse.ArgumentParser(prog="python -m tests.balancer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--backend", action="append", required=True, help="a base URL; repeat")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.backend, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
