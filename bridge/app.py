"""build_app: the aiohttp application, its routes and its lifetimes.

URL layout (README "URLs"):

- ``/servers/NAME/http`` and ``/servers/NAME/mcp``: Streamable HTTP per server;
- ``/http`` and ``/mcp``: the same, when exactly one server is configured;
- ``/healthz``: 200 while the process serves.
- ``/servers`` (and ``/`` for a browser): the servers and their URLs.

- ``/servers/NAME/sse`` (GET) and ``/servers/NAME/messages/`` (POST): the
  legacy HTTP+SSE front door (spec 2024-11-05); ``/sse`` and ``/messages/``
  when exactly one server is configured.

Errors never reach a client as a traceback: every request passes
:func:`bridge.frontends.observe.observe`, which maps errors to JSON-RPC error
bodies and writes one log line per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Final

import aiohttp
import aiohttp_cors
import structlog
from aiohttp import web

from bridge import auth, tasks
from bridge.frontends.admin_http import AdminApi
from bridge.frontends.common import StreamCap
from bridge.frontends.connections import ConnectionGate, connection_cap
from bridge.frontends.guard import Guard, is_loopback
from bridge.frontends.index import ServerIndex
from bridge.frontends.legacy_sse import LegacyConfig, LegacySseFrontDoor
from bridge.frontends.modern_http import ModernConfig, ModernFrontDoor
from bridge.frontends.observe import GATE, METRICS, START_AFTER, observe
from bridge.frontends.streamable_http import FRONT_DOOR, FrontDoorConfig, StreamableHttpFrontDoor
from bridge.hub import HubConfig, SessionHub
from bridge.log import redact
from bridge.metrics import CONTENT_TYPE, Metrics
from bridge.modern.exchange import Timing
from bridge.pool import Pool
from bridge.replicas import forward
from bridge.replicas.replica import Replica
from bridge.serverset import Change, ServerSet
from bridge.session import SessionLimits, Stores
from bridge.sessions.store import StoreUnavailable
from bridge.settings import ServerSpec, Settings
from bridge.stores import Stores as OpenStores
from bridge.stores import open_stores
from bridge.upstreams.base import upstream_report

if TYPE_CHECKING:  # bridge.otel imports OpenTelemetry, loaded only when tracing is on
    from bridge.otel import Tracing

log = structlog.get_logger("bridge.access")

HUB: Final = web.AppKey("hub", SessionHub)
ADMIN: Final = web.AppKey("admin", AdminApi)
#: Share of BRIDGE_SHUTDOWN_TIMEOUT given to in-flight requests; the rest
#: releases sessions and reaps children.
DRAIN_SHARE: Final = 0.6
HTTP_CLIENT: Final = web.AppKey("http_client", aiohttp.ClientSession)
PROBE_TIMEOUT: Final = web.AppKey("store_probe_timeout", float)
SERVERS: Final = web.AppKey("servers", ServerSet)
REPLICA: Final = web.AppKey("replica", Replica)
#: CORS for browser clients (spec-notes §1.17): what they may send and read.
CORS_ALLOW_HEADERS: Final = (
    "Accept",
    "Authorization",
    "Content-Type",
    "Last-Event-ID",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
)
CORS_EXPOSE_HEADERS: Final = (
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Last-Event-ID",
    "WWW-Authenticate",
    "Retry-After",
)


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves (liveness)."""
    return web.json_response({"status": "ok", "sessions": len(request.app[HUB])})


#: Upstream states that make ``/readyz`` say ``degraded``.
FAILING: Final = frozenset({"failing", "crash_loop"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: ``ok``, or ``degraded`` while the session store fails its probe
    or an upstream fails (its last connect or handshake failed, or a stdio
    server is in a crash loop).

    The probe writes and reads back a record (:meth:`SessionStore.ping`),
    bounded as a whole by ``BRIDGE_STORE_PROBE_TIMEOUT``.

    Body: ``{"status", "store": {"status", "error"?}, "failing": [NAME...],
    "upstreams": {NAME: {"status", "error"?, "errno"?, "reason"?, "command"
    | "url", "pool", ...}}, "sessions", "replica"?}``; ``replica`` (Redis stores:
    several replicas) gives this one's id, lease, bus and forwarded counts.
    ``errno`` is the symbolic name
    (``ECONNREFUSED``, ``ENOENT``) of the OS error under the failure, if any;
    the URL and the error have credentials redacted.

    Degraded still answers 200: live sessions keep being served during a store
    outage, other servers keep working while one fails, and taking every
    replica out of rotation would help neither. A crashed stdio child's
    ``stderr_tail`` is shown only to a request that carries the admin token
    (``BRIDGE_ADMIN_TOKEN``).
    """
    hub = request.app[HUB]
    try:
        # A write and a read of a probe record (not a bare PING or SELECT 1):
        # a store that answers but refuses writes is down for sessions.
        async with asyncio.timeout(request.app[PROBE_TIMEOUT]):
            await hub.stores.sessions.ping()
    except StoreUnavailable as exc:
        store = {"status": "unavailable", "error": str(exc)}
    except TimeoutError:
        timeout = request.app[PROBE_TIMEOUT]
        store = {"status": "unavailable", "error": f"store probe took over {timeout:g}s"}
    else:
        store = {"status": "ok"}
    upstreams = upstream_report(hub.upstreams, hub.upstream_state)
    failing = sorted(n for n, r in upstreams.items() if r.get("status") in FAILING)
    status = "ok" if store["status"] == "ok" and not failing else "degraded"
    admin = request.app.get(ADMIN)
    if admin is None or not admin.authorized(request):
        # stderr can hold anything, redaction is best effort: operators only.
        for report in upstreams.values():
            report.pop("stderr_tail", None)
    for name, pool in hub.pools.items():
        upstreams[name]["pool"] = pool.health()  # type: ignore[assignment]
    body = {
        "status": status,
        "store": store,
        "failing": failing,
        "upstreams": upstreams,
        "sessions": len(hub),
    }
    if (replica := request.app.get(REPLICA)) is not None:
        body["replica"] = replica.state()
    return web.json_response(body)


async def check_store(hub: SessionHub, url: str, within: float) -> bool:
    """At startup: probe the session store as ``/readyz`` does, and say what was found.

    Logs ``store_ok`` (info) or ``store_unavailable`` (warning, with the URL,
    credentials redacted, and the error): the gateway still starts, but new
    sessions get 503 until the store answers. Bounded by ``within`` seconds
    (``BRIDGE_STORE_PROBE_TIMEOUT``). Returns whether the store answered.
    """
    try:
        async with asyncio.timeout(within):
            await hub.stores.sessions.ping()
    except StoreUnavailable as exc:
        error = str(exc)
    except TimeoutError:
        error = f"store probe took over {within:g}s"
    else:
        log.info("store_ok", store=redact(url))
        return True
    log.warning(
        "store_unavailable",
        store=redact(url),
        error=redact(error),
        hint="new sessions get 503 until it answers; /readyz says degraded meanwhile",
    )
    return False


async def serve_metrics(request: web.Request) -> web.Response:
    """Prometheus text format; gauges are computed from live state at scrape time."""
    hub = request.app[HUB]
    metrics = hub.metrics
    metrics.sessions_active.clear()
    metrics.streams_open.clear()
    metrics.pool_sessions.clear()  # a server a reload removed has no gauges any more
    metrics.pool_waiting.clear()
    for server in hub.upstreams:
        metrics.sessions_active.labels(server).set(0)
    for pool in hub.pools.values():
        pool.observe()
    for session in hub.live():
        server = session.record.server
        metrics.sessions_active.labels(server).inc()
        for kind, count in session.open_streams().items():
            metrics.streams_open.labels(server, FRONT_DOOR, kind).inc(count)
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def replica_for(settings: Settings, metrics: Metrics) -> Replica | None:
    """This process as a replica among others sharing its Redis store; None for other stores."""
    if not settings.store_url.lower().startswith(("redis://", "rediss://", "redis+", "rediss+")):
        return None
    return Replica(
        settings.store_url,
        prefix=settings.store_prefix,
        timeout=settings.store_timeout,
        lease=settings.replica_lease,
        forward_timeout=settings.forward_timeout,
        session_ttl=settings.session_ttl,
        metrics=metrics,
    )


async def stores_for(settings: Settings, *, lock: bool = True) -> OpenStores:
    """The stores ``settings.store_url`` names, with the settings' limits.

    ``lock``: hold an SQLite file for this process (a gateway); False for the
    tools that only look at it while a gateway may run (``sessions``, ``--check``).

    Raises:
        ConfigError: the store URL is not one this gateway knows, or (``lock``)
            another gateway process uses the SQLite file.
    """
    return await open_stores(
        settings.store_url,
        prefix=settings.store_prefix,
        max_events=settings.event_max_events,
        max_age=settings.event_max_age,
        timeout=settings.store_timeout,
        lock=lock,
    )


def allow_cors(app: web.Application, routes: Sequence[web.AbstractRoute]) -> None:
    """CORS on the MCP routes for browser clients (spec-notes §1.17), via aiohttp-cors.

    Preflights are answered for any Origin; the real request then meets the
    Host/Origin guard (403 for a foreign Origin), which is what enforces the
    allowlist. No cookies are used, so credentials are not allowed.
    """
    cors = aiohttp_cors.setup(app)
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]  # untyped library
        allow_credentials=False,
        expose_headers=CORS_EXPOSE_HEADERS,
        allow_headers=CORS_ALLOW_HEADERS,
        allow_methods=["GET", "POST", "DELETE"],
        max_age=600,
    )
    for route in routes:
        cors.add(route, {"*": options})


async def reload_servers(app: web.Application, servers: Sequence[ServerSpec]) -> Change:
    """Make ``servers`` the running ``app``'s servers (:meth:`ServerSet.apply`)."""
    return await app[SERVERS].apply(app[HUB], servers)


async def build_app(
    settings: Settings, servers: Sequence[ServerSpec], *, tracing: Tracing | None = None
) -> web.Application:
    """The gateway application for ``servers``, with the store ``settings.store_url`` names.

    A coroutine because the upstream HTTP client and the stores must be made
    on the running loop; ``web.run_app`` accepts it as is.

    ``tracing``: OpenTelemetry's middlewares, client trace configs and
    upstream spans (:mod:`bridge.otel`); None (tracing off) adds nothing.

    Raises:
        ConfigError: the store URL is not one this gateway knows.
    """
    traced = [] if tracing is None else tracing.middlewares()
    stores = await stores_for(settings)
    metrics = Metrics()
    replica = replica_for(settings, metrics)
    app = web.Application(client_max_size=settings.max_body_bytes)
    # The HTTP client and hub exist before startup so that routes can bind to
    # them; cleanup_ctx owns their lifetimes (aiohttp closes in reverse order).
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        # No cookie jar: one shared jar would carry a cookie an upstream set for
        # one client's upstream session on every other client's requests, across
        # principals too (issue #15). HTTP state never crosses upstream sessions.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.upstream_connect_timeout),
        trace_configs=None if tracing is None else tracing.trace_configs(),
    )
    server_set = ServerSet(servers, settings, client, metrics)
    limits = SessionLimits(
        stream_queue_size=settings.stream_queue_size,
        stream_queue_bytes=settings.stream_queue_bytes,
        standalone_buffer_size=settings.standalone_buffer_size,
        close_timeout=settings.stdio_shutdown_grace * 3 + 1,
        initialize_timeout=settings.initialize_timeout,
        request_timeout=settings.upstream_request_timeout,
        ttl=settings.session_ttl,
        retry_ms=settings.sse_retry_ms,
        max_requests=settings.max_requests_per_session,
        max_subscriptions=settings.max_subscriptions_per_session,
        unused_ttl=settings.session_unused_ttl,
        max_session_bytes=settings.max_session_bytes,
        max_principal_bytes=settings.max_principal_bytes,
        max_stored_bytes=settings.max_stored_bytes_per_session,
        max_stored_bytes_per_principal=settings.max_stored_bytes_per_principal,
    )
    pools = server_set.pools(servers)
    hub = SessionHub(
        pools,
        Stores(stores.sessions, stores.events),
        HubConfig(
            settings.upstream_idle_timeout,
            settings.shutdown_timeout,
            limits,
            max_sessions=settings.max_sessions,
            max_sessions_per_principal=settings.max_sessions_per_principal,
            max_records_per_principal=settings.max_records_per_principal,
            trace=None if tracing is None else tracing.wrap,
        ),
        metrics,
        owners=None if replica is None else replica.ownership,
    )
    app[HUB] = hub
    app[METRICS] = metrics
    forwarding = []
    if replica is not None:
        app[REPLICA] = replica
        forwarding = [forward.middleware(replica.forwarder, hub.forget_elsewhere)]
    app.middlewares.extend([*traced, observe, *forwarding])
    app[HTTP_CLIENT] = client
    app[PROBE_TIMEOUT] = settings.store_probe_timeout
    app[START_AFTER] = settings.log_request_start_after

    guard = Guard.for_bind(settings.host, settings.allowed_hosts, settings.allowed_origins)
    app[SERVERS] = server_set
    authenticator, metadata = auth.from_settings(settings, server_set.is_endpoint)
    if not settings.auth_enabled and not is_loopback(settings.host):
        log.warning(
            "auth_disabled_on_network",
            host=settings.host,
            hint="anyone who reaches this address can use every server; set "
            "BRIDGE_API_KEYS or BRIDGE_OAUTH_ISSUER",
        )
    modern = ModernFrontDoor(
        hub,
        ModernConfig(
            timing=Timing(
                gather=settings.input_gather_window,
                hold=settings.input_hold_timeout,
                request=settings.upstream_request_timeout,
            ),
            max_holds=settings.max_held_requests,
            keepalive_interval=settings.sse_keepalive_interval,
            send_timeout=settings.sse_send_timeout,
            state_secret=(
                None
                if settings.state_secret is None
                else settings.state_secret.get_secret_value().encode()
            ),
        ),
    )
    streams = StreamCap(settings.max_streams_per_principal, metrics)
    app[GATE] = ConnectionGate(
        connection_cap(settings.max_connections, settings.fd_reserve),
        settings.header_timeout,
        metrics,
    )
    front = StreamableHttpFrontDoor(
        hub,
        FrontDoorConfig(
            max_body_bytes=settings.max_body_bytes,
            keepalive_interval=settings.sse_keepalive_interval,
            send_timeout=settings.sse_send_timeout,
            retry_ms=settings.sse_retry_ms,
            poll_after=settings.sse_poll_after,
            body_timeout=settings.body_timeout,
            streams=streams,
        ),
        guard,
        authenticator,
        modern=modern,
    )
    legacy = LegacySseFrontDoor(
        hub,
        LegacyConfig(
            max_body_bytes=settings.max_body_bytes,
            keepalive_interval=settings.sse_keepalive_interval,
            send_timeout=settings.sse_send_timeout,
            queue_size=settings.stream_queue_size,
            queue_bytes=settings.stream_queue_bytes,
            public_path_prefix=settings.public_path_prefix,
            grace=settings.legacy_grace,
            deprecation=settings.legacy_deprecation_header,
            body_timeout=settings.body_timeout,
            streams=streams,
        ),
        guard,
        authenticator,
    )
    # Probes, metrics and admin get no CORS: a page at another origin must not
    # read them through the visitor's browser (issue #15).
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", serve_metrics),
        ]
    )
    routes: list[web.RouteDef] = []
    for suffix in ("http", "mcp"):
        # The short paths are always routed: whether they name a server
        # depends on how many are configured, which a reload can change.
        routes += front.routes(f"/servers/{{server}}/{suffix}") + front.routes(f"/{suffix}")
    routes += legacy.routes("/servers/{server}/sse", "/servers/{server}/messages/")
    routes += legacy.routes("/sse", "/messages/")
    mcp_routes = app.add_routes(routes)
    others: list[web.RouteDef] = []
    if settings.admin_token is not None:
        app[ADMIN] = AdminApi(hub, settings.admin_token.get_secret_value())
        others += app[ADMIN].routes()
    if metadata is not None:
        others += metadata.routes()
    others += ServerIndex(
        lambda: list(server_set.specs.values()),
        guard,
        authenticator,
        settings.public_url,
        settings.public_path_prefix,
    ).routes()
    app.add_routes(others)
    allow_cors(app, mcp_routes)

    def warm(pool: Pool) -> None:
        # Warm sessions serve clients with no principal of their own: only
        # useful with auth off, or for a server every client shares.
        if not settings.auth_enabled or pool.config.share != "principal":
            pool.warm()

    def adopt(pool: Pool) -> None:  # a pool a reload made
        pool.reclaim = modern.holds.reclaim
        warm(pool)

    server_set.on_new_pool = adopt

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await check_store(hub, settings.store_url, settings.store_probe_timeout)
        reaper = tasks.spawn(hub.run_reaper(), name="session-reaper")
        if replica is not None:
            await replica.start(app, hub)
        for pool in hub.pools.values():
            warm(pool)
        yield
        await tasks.cancel_and_wait(reaper, 1.0, "shutting down")
        await legacy.aclose()
        await modern.aclose()
        await hub.aclose()
        if replica is not None:  # after the hand-over: forwarded exchanges served till then
            await replica.aclose(settings.shutdown_timeout * DRAIN_SHARE)
        await client.close()
        await stores.aclose()

    async def on_shutdown(app: web.Application) -> None:
        # Runs once the listening sockets are closed, before aiohttp waits for
        # handlers: GET streams close (clients reconnect elsewhere), requests
        # in flight get up to the drain grace to finish, then what is left is
        # handed over and every stream closes, so handlers return at once.
        gate = app.get(GATE)
        settle = None if gate is None else gate.requests_served
        await hub.drain(settings.shutdown_timeout * DRAIN_SHARE, settle)
        await hub.aclose()

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(on_shutdown)
    return app
