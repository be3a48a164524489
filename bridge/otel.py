"""OpenTelemetry tracing, through the official packages (the ``otel`` extra).

Imported only when :func:`bridge.tracing.wanted` says tracing is on. Spans:

- ``SERVER``, one per HTTP request (:func:`server_middleware`; W3C
  ``traceparent`` from the client is honoured), with ``mcp.method.name``,
  ``mcp_bridge.session.hash`` and ``url.path`` with any session id in it
  (``/admin/sessions/ID``) hashed (:func:`bridge.tracing.id_hash`); no query.
- ``CLIENT``, one per request a client session sends upstream (its frame goes
  out until its response comes back), a child of the server span of the HTTP
  request that carried it: :class:`TracedConnection`, named after the MCP
  semantic conventions (``tools/call NAME``, ``resources/read``, ...).
- ``CLIENT``, one per HTTP request to an HTTP upstream:
  opentelemetry-instrumentation-aiohttp-client, children of the above; query
  values hidden (:func:`url_filter`).

Export: OTLP over HTTP/protobuf in batches (a background thread). With
``BRIDGE_OTLP_ENDPOINT`` the traces go to ``ENDPOINT/v1/traces``; otherwise
the exporter reads ``OTEL_EXPORTER_OTLP_*`` itself. ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` name the service (default ``mcp-bridge``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from yarl import URL

from bridge import __version__
from bridge.frontends.context import RPC_METHOD, SESSION_ID
from bridge.jsonrpc import Message
from bridge.settings import Settings
from bridge.tracing import hide, id_hash
from bridge.upstreams.base import UpstreamConnection

SERVICE_NAME: Final = "mcp-bridge"
#: The path OTLP/HTTP collectors take traces on (OTLP specification).
TRACES_PATH: Final = "/v1/traces"
Handler = Callable[[web.Request], Any]


def start(settings: Settings) -> Tracing:
    """A tracer provider exporting over OTLP/HTTP in batches; see the module docstring."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = None
    if settings.otlp_endpoint:
        endpoint = settings.otlp_endpoint.rstrip("/") + TRACES_PATH
    resource = Resource.create({"service.name": SERVICE_NAME, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Tracing(provider)


class Tracing:
    """What the app installs when tracing is on; built on any ``TracerProvider``."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._upstream = provider.get_tracer("bridge.upstream", __version__)

    def middlewares(self) -> list[Any]:
        """The server-span middleware, to go before the others."""
        return [server_middleware(self.provider)]

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For the upstream HTTP client: one span per request."""
        return [create_trace_config(url_filter=url_filter, tracer_provider=self.provider)]

    def wrap(
        self, connection: UpstreamConnection, server: str, session_id: str
    ) -> UpstreamConnection:
        """``connection`` with a span per request sent through it."""
        return TracedConnection(connection, self._upstream, server, id_hash(session_id))

    def shutdown(self) -> None:
        """Export what is pending (bounded by the processor's export timeout)."""
        self.provider.shutdown()


def server_middleware(provider: TracerProvider) -> Any:
    """A SERVER span per request (HTTP semantic conventions), around the handler.

    Ours rather than opentelemetry-instrumentation-aiohttp-server's: that one
    swaps ``web.Application`` for a subclass process-wide (aiohttp deprecates
    subclassing it) and records the query string, where the legacy door's
    session ids are. The W3C ``traceparent`` of the client is honoured.
    """
    tracer = provider.get_tracer("bridge.http", __version__)

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        template = route.canonical if route is not None else None
        with tracer.start_as_current_span(
            f"{request.method} {template}" if template else request.method,
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "url.scheme": request.scheme,
                "network.protocol.version": f"{request.version.major}.{request.version.minor}",
                **({"http.route": template} if template else {}),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            status = 500
            try:
                response: web.StreamResponse = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                status = 499  # the client left (as the access log says)
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                _annotate(span, request)

    return trace_request


def url_filter(url: URL) -> str:
    """An upstream URL for a span: no credentials, query values hidden or hashed."""
    url = url.with_user(None).with_password(None)
    if not url.query_string:
        return str(url)
    query = [
        (k, id_hash(v) if k == "session_id" else "REDACTED")
        for k, v in parse_qsl(url.query_string, keep_blank_values=True)
    ]
    return str(url.with_query(None)) + "?" + urlencode(query)


def _annotate(span: Span, request: web.Request) -> None:
    """The MCP method and session (hashed); the path with any session id in it hashed."""
    if (method := request.get(RPC_METHOD)) is not None:
        span.set_attribute("mcp.method.name", method)
    secrets = [request.query.get("session_id", ""), request.match_info.get("session_id", "")]
    if (session_id := request.get(SESSION_ID)) is not None:
        span.set_attribute("mcp_bridge.session.hash", id_hash(session_id))
        secrets.append(session_id)
    span.set_attribute("url.path", hide(request.path, secrets))


def span_name(message: Message) -> tuple[str, dict[str, AttributeValue]]:
    """A request's span name and attributes (OpenTelemetry's MCP semantic conventions)."""
    method = str(message.get("method"))
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    attributes: dict[str, AttributeValue] = {"mcp.method.name": method}
    target = None
    if method in ("tools/call", "prompts/get") and isinstance(params.get("name"), str):
        target = params["name"]
        key = "gen_ai.tool.name" if method == "tools/call" else "gen_ai.prompt.name"
        attributes[key] = target
    elif method == "resources/read" and isinstance(params.get("uri"), str):
        # The scheme only: a URI can carry a user's path or a token.
        attributes["mcp.resource.scheme"] = params["uri"].partition(":")[0]
    return (f"{method} {target}" if target else method), attributes


class TracedConnection:
    """An :class:`UpstreamConnection` that times each request to its response.

    Each request sent opens a ``CLIENT`` span in the sender's context (the HTTP
    request's server span); its response, read from :meth:`messages`, ends it,
    with an error status for a JSON-RPC error. Spans still open when the
    connection ends get an error status and end then.
    """

    def __init__(
        self, inner: UpstreamConnection, tracer: trace.Tracer, server: str, session_hash: str
    ) -> None:
        self._inner = inner
        self._tracer = tracer
        self._common: dict[str, AttributeValue] = {
            "mcp_bridge.server": server,
            "mcp_bridge.session.hash": session_hash,
            "rpc.system": "jsonrpc",
        }
        self._open: dict[object, Span] = {}  # upstream request id -> its span

    async def send(self, message: Message) -> None:
        if "method" not in message or "id" not in message:  # notification or response
            await self._inner.send(message)
            return
        name, attributes = span_name(message)
        span = self._tracer.start_span(
            name, kind=SpanKind.CLIENT, attributes={**self._common, **attributes}
        )
        self._open[message["id"]] = span
        try:
            with trace.use_span(span, end_on_exit=False):
                await self._inner.send(message)
        except BaseException as exc:
            self._open.pop(message["id"], None)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise

    async def messages(self) -> AsyncIterator[Message]:
        try:
            async for message in self._inner.messages():
                if "method" not in message and (span := self._open.pop(message.get("id"), None)):
                    self._finish(span, message)
                yield message
        finally:
            self._end_all("upstream connection ended")

    async def aclose(self) -> None:
        self._end_all("connection released")
        await self._inner.aclose()

    @staticmethod
    def _finish(span: Span, response: Message) -> None:
        error = response.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            if isinstance(code, int):
                span.set_attribute("rpc.jsonrpc.error_code", code)
            span.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))[:200]))
        span.end()

    def _end_all(self, reason: str) -> None:
        for span in self._open.values():
            span.set_status(Status(StatusCode.ERROR, reason))
            span.end()
        self._open.clear()
