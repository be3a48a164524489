"""The 2026-07-28 front door: sessionless requests on the Streamable HTTP endpoint.

:class:`bridge.frontends.streamable_http.StreamableHttpFrontDoor` hands a POST
here when it carries no session and is of the modern era
(:func:`bridge.modern.wire.is_modern`; spec-notes §7; 2026-07-28
basic/versioning §Backward Compatibility): both eras are served on one URL.
Per request:

- checks in the spec's order (:func:`bridge.modern.wire.check`), then for
  ``tools/call`` the ``Mcp-Param-*`` headers against the tool's schema;
- ``server/discover`` from the upstream's own handshake result;
- ``subscriptions/listen``: :mod:`bridge.frontends.modern_listen`;
- anything else through an :class:`~bridge.modern.exchange.Exchange` on a
  pool group. The answer is plain JSON unless the request asked for progress
  or log messages, then an SSE stream scoped to it (no event ids: nothing is
  resumable in this revision). A client that closes the connection cancels
  the upstream request (transports/streamable-http §Cancellation).

No answer carries ``Mcp-Session-Id``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog
from aiohttp import web

from bridge import errors, jsonrpc
from bridge.errors import BridgeError, GatewayFull, StoreDown
from bridge.frontends.context import MODERN
from bridge.frontends.modern_listen import ClientGone, event_stream, listen, until_gone
from bridge.hub import SessionHub
from bridge.jsonrpc import Message
from bridge.modern import state, wire
from bridge.modern.exchange import Answered, Exchange, Holds, InputRequired, Notice, Timing
from bridge.modern.wire import ModernRequest
from bridge.pool.group import Group
from bridge.sessions.store import StoreUnavailable

T = TypeVar("T")

log = structlog.get_logger("bridge.frontend")

SPENT: Final = "requestState was already used; retry with the newest one"
STATE_KEY_NAME: Final = "modern-state-key"
HOLD_PREFIX: Final = "modern-hold:"  # store values: a held call's round and answers
STATE_KEY_TTL: Final = 10 * 365 * 86400.0  # seconds: as long as the store keeps anything


@dataclass(frozen=True, slots=True)
class ModernConfig:
    """Seconds, counts; see :class:`bridge.settings.Settings` (``input_*``)."""

    timing: Timing
    max_holds: int
    keepalive_interval: float
    send_timeout: float
    state_secret: bytes | None  # None: one shared through the session store


class ModernFrontDoor:
    def __init__(self, hub: SessionHub, config: ModernConfig) -> None:
        self._hub = hub
        self._config = config
        self.holds = Holds(config.max_holds)
        for pool in hub.pools.values():
            pool.reclaim = self.holds.reclaim
        self._key = config.state_secret
        self._spent: dict[tuple[str, int], float] = {}  # (hold, round) -> expiry: replay guard

    async def aclose(self) -> None:
        await self.holds.aclose()

    async def key(self) -> bytes:
        """The ``requestState`` HMAC key: the configured one, else one every replica shares.

        Raises:
            StoreDown: the store cannot be reached to agree on one.
        """
        if self._key is None:
            proposal = secrets.token_hex(32)
            store = self._hub.stores.sessions
            try:
                shared = await store.put_value(
                    STATE_KEY_NAME, proposal, STATE_KEY_TTL, only_new=True
                )
            except StoreUnavailable as exc:
                raise StoreDown(f"session store unavailable: {exc}") from exc
            self._key = bytes.fromhex(shared)
        return self._key

    # -- POST ----------------------------------------------------------------

    async def post(
        self,
        request: web.Request,
        server: str,
        principal: str | None,
        message: Message,
        kind: jsonrpc.Kind,
    ) -> web.StreamResponse:
        """Serve one modern request (module docstring).

        Raises:
            BridgeError: every refusal, with its status and code (the middleware
                renders it, in this revision's codes).
        """
        request[MODERN] = True
        modern = wire.check(message, kind, request.headers)
        pool = self._hub.pool(server)
        group = pool.group_for(principal, request.headers)
        if modern.method == "subscriptions/listen":
            timing = self._config.keepalive_interval, self._config.send_timeout
            return await listen(request, modern, group, *timing)
        try:
            if modern.method == "server/discover":
                result = pool.init_result if pool.config.share == "none" else {}
                result = result or await group.initialize_result(jsonrpc.LATEST_VERSION)
                body = {"jsonrpc": "2.0", "id": modern.id, "result": wire.discover_result(result)}
                return web.json_response(body, dumps=jsonrpc.encode)
            exchange = await self._exchange(request, group, modern, principal)
        except BaseException:
            pool.release(group)
            raise
        return await self._serve(request, exchange, modern, principal)

    async def _check_param_headers(
        self, request: web.Request, group: Group, modern: ModernRequest
    ) -> None:
        arguments = modern.params.get("arguments")
        if not isinstance(arguments, dict) or not arguments:
            return  # no value in the body: no header is expected
        schema = await group.tool_schema(str(modern.params.get("name")))
        wire.check_param_headers(schema, arguments, request.headers)

    async def _exchange(
        self, request: web.Request, group: Group, modern: ModernRequest, principal: str | None
    ) -> Exchange:
        """The exchange a request continues (its ``requestState``), or a new one, started.

        Raises:
            StateRejected: a bad, spent or foreign ``requestState`` (-32602).
            HeaderMismatch: ``Mcp-Param-*`` headers do not match the arguments.
            PoolBusy, UpstreamError: the request could not be sent upstream.
        """
        token = modern.params.get("requestState")
        claims = None
        record: dict[str, Any] | None = None
        if token is not None:  # checked first: it costs no upstream round trip
            claims = state.unseal(
                token, await self.key(), principal=principal, digest=modern.digest(),
                now=time.time(),
            )  # fmt: skip
        if modern.method == "tools/call":
            await self._check_param_headers(request, group, modern)
        if claims is not None:
            self._forget_spent()
            held = self.holds.get(claims.hold)
            record = await self._take_round(claims)
            spent = (claims.hold, claims.round) in self._spent or record is None
            if spent or (held is not None and (held.round != claims.round or held.busy)):
                raise state.StateRejected(SPENT)
            self._spent[(claims.hold, claims.round)] = claims.expires
            if held is not None:
                self.holds.pop(claims.hold)
                group.pool.release(group)  # the held one has its own
                return held
            # Held by another replica, or by this process before a restart, or
            # expired: the call starts again here, and the answers given in
            # earlier rounds (the store's record) and in this retry are given
            # again as the server asks for them (bridge.modern.exchange).
            log.info("modern_hold_not_here", server=group.server, round=claims.round)
        exchange = Exchange(group, modern, principal, self._config.timing)
        if record:
            exchange.seed(record.get("answers") or {})
        try:
            await exchange.start()
        except BaseException:
            await exchange.aclose()
            raise
        return exchange

    async def _take_round(self, claims: state.Claims) -> dict[str, Any] | None:
        """Mark a round's token used, in the store too; its record, or None if used already.

        Each round's ``requestState`` works once, at any replica sharing the
        store. With the store unreachable, this process's own memory decides
        (a replay at another replica then goes unnoticed until it is back).
        """
        store = self._hub.stores.sessions
        key = f"{HOLD_PREFIX}{claims.hold}"
        try:
            text = await store.get_value(key)
            if text is None:
                return {}  # expired there, or never written (no store then): nothing to seed
            record = json.loads(text)
            if not isinstance(record, dict):
                return {}
            if record.get("round") != claims.round or record.get("spent"):
                return None
            ttl = max(1.0, claims.expires - time.time())
            await store.put_value(key, json.dumps({**record, "spent": True}), ttl)
        except StoreUnavailable as exc:
            log.warning("modern_hold_record_unavailable", error=str(exc))
            return {}
        except ValueError:  # not a record of ours: nothing to seed, nothing spent
            log.warning("modern_hold_record_unreadable", hold=claims.hold[:8])
            return {}
        return dict(record)

    async def _keep_round(self, hold_id: str, exchange: Exchange) -> None:
        """Record a round just asked: its number and every answer given so far."""
        record = {"round": exchange.round, "answers": exchange.given}
        ttl = max(1.0, exchange.expires - time.time())
        try:
            await self._hub.stores.sessions.put_value(
                f"{HOLD_PREFIX}{hold_id}", json.dumps(record), ttl
            )
        except StoreUnavailable as exc:  # the hold still works here
            log.warning("modern_hold_record_unavailable", error=str(exc))

    def _forget_spent(self) -> None:
        now = time.time()
        for key in [k for k, expires in self._spent.items() if expires < now]:
            del self._spent[key]

    async def _serve(
        self, request: web.Request, exchange: Exchange, modern: ModernRequest, principal: str | None
    ) -> web.StreamResponse:
        """Drive the exchange for this HTTP request; JSON, or SSE when it streams notices."""
        streams = jsonrpc.progress_token(modern.message) is not None or modern.log_level is not None
        steps = exchange.drive(modern)
        held = False
        try:
            if streams:
                response = await self._serve_sse(request, steps, modern, exchange, principal)
            else:
                response = await until_gone(request, self._serve_json(steps, exchange, principal))
            held = not exchange.done and self.holds.get(exchange.id) is exchange
            return response
        except ClientGone:
            # transports/streamable-http §Cancellation: closing the stream cancels the
            # request; leaving the group below sends notifications/cancelled upstream.
            log.info("modern_client_gone", server=exchange.group.server, method=modern.method)
            return web.Response(status=499)
        finally:
            if not held:
                await exchange.aclose()
                exchange.group.pool.release(exchange.group)

    async def _serve_json(
        self, steps: AsyncIterator[Any], exchange: Exchange, principal: str | None
    ) -> web.StreamResponse:
        async for step in steps:
            if isinstance(step, Answered):
                return web.json_response(step.message, status=step.status, dumps=jsonrpc.encode)
            if isinstance(step, InputRequired):
                body = await self._input_required(exchange, step, principal)
                return web.json_response(body, dumps=jsonrpc.encode)
        raise errors.BridgeBug("exchange ended without an answer")

    async def _serve_sse(
        self,
        request: web.Request,
        steps: AsyncIterator[Any],
        modern: ModernRequest,
        exchange: Exchange,
        principal: str | None,
    ) -> web.StreamResponse:
        """Notices as they come, then the answer; the head waits for the first step.

        The status must still be free to be 400 (-32021) or 404 when the first
        thing known is an error, so nothing is sent before it.
        """
        first = await until_gone(request, anext(steps))
        response = event_stream(self._config.keepalive_interval, self._config.send_timeout)
        try:
            await response.prepare(request)
            async with response:
                step: Any = first
                while True:
                    try:
                        if isinstance(step, Notice):
                            await response.send(jsonrpc.encode(step.message), event="message")
                            step = await until_gone(request, anext(steps))
                            continue
                        if isinstance(step, InputRequired):
                            body = await self._input_required(exchange, step, principal)
                        else:
                            body = step.message
                    except BridgeError as exc:  # the head is sent: the error as the answer
                        body = jsonrpc.error_response(
                            modern.id, errors.for_modern(exc.jsonrpc_code), exc.message
                        )
                        if exc.data is not None:
                            body["error"]["data"] = exc.data
                    await response.send(jsonrpc.encode(body), event="message")
                    return response
        except ConnectionResetError as exc:
            log.info("stream_client_gone", error=exc.__class__.__name__)
            return response

    async def _input_required(
        self, exchange: Exchange, step: InputRequired, principal: str | None
    ) -> Message:
        """Hold the exchange; the ``InputRequiredResult`` naming it (mrtr §InputRequiredResult).

        Raises:
            GatewayFull: this process holds ``max_holds`` calls already (503).
        """
        hold_id = exchange.id or state.new_hold_id()
        if not self.holds.add(exchange, hold_id):
            raise GatewayFull(
                f"{self._config.max_holds} requests already wait on their clients' input here",
                headers={"Retry-After": "5"},
            )
        await self._keep_round(hold_id, exchange)
        claims = state.Claims(
            hold=hold_id,
            round=exchange.round,
            principal=state.principal_digest(principal),
            digest=exchange.request.digest(),
            expires=exchange.expires,
        )
        result: dict[str, Any] = {
            "resultType": "input_required",
            "inputRequests": step.requests,
            "requestState": state.seal(claims, await self.key()),
        }
        return {"jsonrpc": "2.0", "id": exchange.current_id, "result": result}
