"""``GET /servers`` (and ``GET /`` from a browser): the configured servers and their URLs.

So that a person who knows only the gateway's address finds each server's
endpoint (issue #14). JSON by default; an HTML page when the request's
``Accept`` names ``text/html`` (a browser). ``/`` answers only a browser: any
other ``GET /`` stays a 404, as every unknown path. The same Host/Origin guard
and credentials as the MCP endpoints apply: with auth on, names are not
shown to strangers.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from bridge.auth import Authenticator
from bridge.frontends.guard import Guard
from bridge.servers import ServerSpec, SseServer, StdioServer, StreamableHttpServer


def _transport(spec: ServerSpec) -> str:
    if isinstance(spec, StdioServer):
        return "stdio"
    if isinstance(spec, SseServer):
        return "sse"
    if isinstance(spec, StreamableHttpServer):
        return "streamable-http"
    return "http (detected on first connect)"


def wants_html(request: web.Request) -> bool:
    """Whether the client is a browser (its ``Accept`` names ``text/html``)."""
    return "text/html" in request.headers.get("Accept", "").lower()


class ServerIndex:
    """The listing's routes, for ``servers`` behind ``guard`` and ``authenticator``.

    Args:
        servers: the servers in force, asked at each request (a reload may change them).
        public_url: the gateway's external base URL (``BRIDGE_PUBLIC_URL``), or None
            to build URLs from the request's scheme and Host.
        path_prefix: ``BRIDGE_PUBLIC_PATH_PREFIX``, put before every path.
    """

    def __init__(
        self,
        servers: Callable[[], Sequence[ServerSpec]],
        guard: Guard,
        authenticator: Authenticator,
        public_url: str | None,
        path_prefix: str,
    ) -> None:
        self._servers = servers
        self._guard = guard
        self._auth = authenticator
        self._public_url = public_url.rstrip("/") if public_url else None
        self._prefix = path_prefix.rstrip("/")

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/servers", self.listing), web.get("/", self.root)]

    def _base(self, request: web.Request) -> str:
        if self._public_url is not None:
            return self._public_url
        return f"{request.scheme}://{request.host}{self._prefix}"

    def describe(self, base: str) -> dict[str, Any]:
        """The listing: ``{"servers": [{"name", "transport", "url", "sse_url"}], ...}``."""
        specs = list(self._servers())
        servers = [
            {
                "name": spec.name,
                "transport": _transport(spec),
                "url": f"{base}/servers/{spec.name}/mcp",
                "sse_url": f"{base}/servers/{spec.name}/sse",
            }
            for spec in specs
        ]
        body: dict[str, Any] = {"servers": servers}
        if len(specs) == 1:  # README "URLs": the short paths of a single server
            body["default"] = {"url": f"{base}/mcp", "sse_url": f"{base}/sse"}
        return body

    async def listing(self, request: web.Request) -> web.Response:
        """``GET /servers``: JSON, or HTML for a browser.

        Raises:
            MisdirectedHost, ForbiddenOrigin: the Host/Origin guard (421, 403).
            Unauthorized: auth is on and the request has no valid credentials (401).
        """
        self._guard.check(request)
        await self._auth.authenticate(request)
        body = self.describe(self._base(request))
        if wants_html(request):
            return web.Response(text=_page(body), content_type="text/html")
        return web.json_response(body)

    async def root(self, request: web.Request) -> web.Response:
        """``GET /``: the HTML listing for a browser; a 404 for anything else."""
        if not wants_html(request):
            raise web.HTTPNotFound()
        return await self.listing(request)


def _page(body: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['transport'])}</td>"
        f"<td><code>{html.escape(s['url'])}</code></td>"
        f"<td><code>{html.escape(s['sse_url'])}</code></td></tr>"
        for s in body["servers"]
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mcp-bridge</title></head>"
        "<body><h1>mcp-bridge</h1><p>MCP servers behind this gateway. Point a client at the "
        "Streamable HTTP URL (or, for an old client, the legacy SSE one).</p><table>"
        "<tr><th>server</th><th>upstream transport</th><th>Streamable HTTP</th>"
        f"<th>legacy SSE</th></tr>{rows}</table></body></html>"
    )
