"""Admin endpoints: list, show and evict stored sessions (issue #6).

Mounted only when ``BRIDGE_ADMIN_TOKEN`` is set, and every call must carry
``Authorization: Bearer <that token>`` (compared in constant time; 401
otherwise). Front-door auth for MCP clients is separate (issue #5). The same
token shows ``/readyz`` the crashed stdio children's stderr tails (issue #15).

- ``GET /admin/sessions?limit=N``: summaries, one per stored session
- ``GET /admin/sessions/{id}``: the stored record
- ``DELETE /admin/sessions/{id}``: evict: release it here if live, forget it
"""

from __future__ import annotations

import hmac

from aiohttp import web

from bridge.errors import SessionNotFound, StoreDown
from bridge.hub import SessionHub
from bridge.sessions.store import StoreUnavailable

MAX_LIST = 10_000


class AdminApi:
    def __init__(self, hub: SessionHub, token: str) -> None:
        self._hub = hub
        self._token = token.encode()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/sessions", self.list_sessions),
            web.get("/admin/sessions/{session_id}", self.show),
            web.delete("/admin/sessions/{session_id}", self.evict),
        ]

    def authorized(self, request: web.Request) -> bool:
        """Whether ``request`` carries ``Authorization: Bearer <admin token>``."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # aiohttp keeps bytes that are not UTF-8 as surrogates: give them back
        # as they came, rather than fail to encode them (a 500; issue #15).
        presented = token.encode("utf-8", "surrogateescape")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented, self._token)

    def _authorize(self, request: web.Request) -> None:
        if not self.authorized(request):
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Bearer realm="mcp-bridge admin"'}
            )

    async def list_sessions(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            limit = min(int(request.query.get("limit", "1000")), MAX_LIST)
        except ValueError:
            raise web.HTTPBadRequest(reason="limit must be a whole number") from None
        try:
            records = await self._hub.stores.sessions.list(max(limit, 0))
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        live = {s.id for s in self._hub.live()}
        return web.json_response(
            {"sessions": [{**r.summary(), "live_here": r.session_id in live} for r in records]}
        )

    async def show(self, request: web.Request) -> web.Response:
        self._authorize(request)
        try:
            record = await self._hub.stores.sessions.get(request.match_info["session_id"])
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        if record is None:
            raise SessionNotFound("session not found")
        return web.Response(text=record.to_json(), content_type="application/json")

    async def evict(self, request: web.Request) -> web.Response:
        self._authorize(request)
        session_id = request.match_info["session_id"]
        try:
            record = await self._hub.stores.sessions.get(session_id)
        except StoreUnavailable as exc:
            raise StoreDown(f"session store unavailable: {exc}") from exc
        if record is None:
            raise SessionNotFound("session not found")
        await self._hub.end(session_id, record.server, record.principal, "evicted by an operator")
        return web.json_response({"session_id": session_id, "evicted": True})
