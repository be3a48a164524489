"""The middleware every request passes: errors mapped, one log line, metrics.

:func:`observe` turns every :class:`~bridge.errors.BridgeError` into its HTTP
status with a JSON-RPC error body, an ``HTTPException`` into a JSON-RPC error
too, and anything unexpected into a logged 500 with a generic body (never a
traceback). Each request gets one ``request`` log line and its metrics, just
after its answer is sent, and a ``request_start`` line if it runs past
``BRIDGE_LOG_REQUEST_START_AFTER`` (README "Request log lines").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from aiohttp import web

from bridge import errors, jsonrpc
from bridge.frontends.connections import ConnectionGate
from bridge.frontends.context import (
    DOOR,
    MODERN,
    RPC_ID,
    RPC_METHOD,
    RPC_TARGET,
    SERVER,
    SESSION_ID,
)
from bridge.frontends.streamable_http import FRONT_DOOR
from bridge.log import clip, short
from bridge.metrics import Metrics, method_label

log = structlog.get_logger("bridge.access")

#: Seconds after which a request still running is logged (request_start).
START_AFTER: Final = web.AppKey("log_request_start_after", float)
GATE: Final = web.AppKey("gate", ConnectionGate)
#: The metrics a request is counted in; an app without them counts nothing.
METRICS: Final = web.AppKey("metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(
    request: web.Request, status: int, code: int, text: str, data: object = None
) -> web.Response:
    if request.get(MODERN):
        code = errors.for_modern(code)
    body = jsonrpc.error_response(request.get(RPC_ID), code, text)
    if data is not None:
        body["error"]["data"] = data
    return web.json_response(body, status=status)


#: Characters of a client's JSON-RPC method on the ``request`` log line.
LOGGED_METHOD_MAX: Final = 100


def logged_path(request: web.Request) -> str:
    """The request path for the log: a session id in it (``/admin/sessions/ID``) cut short."""
    session_id = request.match_info.get("session_id")
    if not session_id:
        return request.path
    return request.path.replace(session_id, f"{short(session_id)}...")


def _observe(request: web.Request, status: int, seconds: float) -> None:
    metrics = request.app.get(METRICS)
    server = request.get(SERVER)
    if metrics is None or server is None:  # not an MCP endpoint (health, metrics, 404s)
        return
    door = request.get(DOOR, FRONT_DOOR)
    metrics.observe_http(door, request.method, status, seconds)
    if request.method == "POST":
        outcome = "ok" if status < 400 else ("client_error" if status < 500 else "error")
        method = request.get(RPC_METHOD)
        metrics.count_request(server, door, method_label(method), outcome)
        target = request.get(RPC_TARGET)
        if method is not None and target is not None:
            metrics.count_target(server, method, target, outcome)


def _facts(request: web.Request) -> dict[str, object]:
    """The fields of a request's log lines, bounded: what the client asked, of which session."""
    method = request.get(RPC_METHOD)
    facts: dict[str, object] = {
        "method": request.method,
        "path": logged_path(request),
        "session_id": short(request.get(SESSION_ID)),
        "rpc_method": _clip_method(method),
        "front_door": request.get(DOOR, FRONT_DOOR),
    }
    target = request.get(RPC_TARGET)
    if target is not None:
        facts["tool" if method == "tools/call" else "uri_scheme"] = clip(target, LOGGED_METHOD_MAX)
    return facts


class _StartLine:
    """The timer for a request's start line (``BRIDGE_LOG_REQUEST_START_AFTER``, seconds).

    A loop's timer may fire a little before its delay has passed by
    ``time.perf_counter()``: asyncio runs timers due within its clock's
    resolution, libuv reads a millisecond clock cached at the top of each loop
    turn. A line that fires early re-arms for the rest, so ``running_ms`` is
    never below the threshold the operator set.
    """

    __slots__ = ("_after", "_handle", "_request", "_started")

    def __init__(self, request: web.Request, started: float, after: float) -> None:
        self._request = request
        self._started = started
        self._after = after
        self._handle = asyncio.get_running_loop().call_later(after, self._fire)

    def _fire(self) -> None:
        running = time.perf_counter() - self._started
        if running < self._after:
            self._handle = asyncio.get_running_loop().call_later(self._after - running, self._fire)
            return
        log.info("request_start", running_ms=round(running * 1000, 2), **_facts(self._request))

    def cancel(self) -> None:
        self._handle.cancel()


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map errors to responses and log one canonical line per request."""
    started = time.perf_counter()
    status = 500
    gate = request.app.get(GATE)
    after = request.app.get(START_AFTER)
    start_line = None if after is None else _StartLine(request, started, after)
    if gate is not None:  # this connection is serving a request: not one to close for room
        gate.begin(request.protocol, request.method)
    try:
        response = await handler(request)
        status = response.status
        return response
    except errors.BridgeError as exc:
        status = exc.http_status
        response = _error_response(request, status, exc.jsonrpc_code, exc.message, exc.data)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status = exc.status
        response = _error_response(request, status, errors.INVALID_REQUEST, exc.reason)
        for name, value in exc.headers.items():  # Allow, WWW-Authenticate, ...
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response
    except asyncio.CancelledError:
        status = 499  # client closed the connection (nginx's convention)
        raise
    except Exception:
        log.exception("request_failed", method=request.method, path=logged_path(request))
        return _error_response(request, 500, errors.INTERNAL_ERROR, "internal gateway error")
    finally:
        if gate is not None:
            gate.end(request.protocol, request.method)
        if start_line is not None:
            start_line.cancel()
        # The metrics and the line wait for the next loop turn: aiohttp sends
        # a returned response in this one, so they add nothing to its latency.
        asyncio.get_running_loop().call_soon(
            _finish, request, status, time.perf_counter() - started
        )


def _finish(request: web.Request, status: int, seconds: float) -> None:
    """A request's metrics and its one ``request`` line, once its answer is sent."""
    _observe(request, status, seconds)
    log.info("request", status=status, duration_ms=round(seconds * 1000, 2), **_facts(request))


def _clip_method(method: str | None) -> str | None:
    return None if method is None else clip(method, LOGGED_METHOD_MAX)
