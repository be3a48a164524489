"""OpenTelemetry tracing (issue #14 "Run": traces).

In process: the gateway built with a tracer provider whose spans go to the
SDK's InMemorySpanExporter; one proxied ``tools/call`` must give the tree
server span (aiohttp server instrumentation) -> upstream call span -> (for an
HTTP upstream) the aiohttp client span, with no raw session id anywhere.
Out of process: ``mcp-bridge`` with ``BRIDGE_OTLP_ENDPOINT`` exports over
OTLP/HTTP to a collector stand-in on 127.0.0.1. Off (no endpoint): nothing of
OpenTelemetry is even imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pytest_aiohttp import AiohttpServer

from bridge import tracing
from bridge.app import build_app
from bridge.frontends.observe import observe
from bridge.otel import Tracing, url_filter
from bridge.settings import ServerSpec, Settings, StreamableHttpServer
from tests.conftest import (
    ProcFactory,
    fixture_stdio,
    start_fixture_http,
    start_gateway,
)
from tests.rawclient import RawClient

TOOL: Final = "test_simple_text"
BOUND: Final = 20.0  # seconds for spans to reach the collector stand-in


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    yield found
    found.shutdown()


def provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def _stdio(procs: ProcFactory) -> ServerSpec:
    return fixture_stdio()


async def _http(procs: ProcFactory) -> ServerSpec:
    _, url = await start_fixture_http(procs)
    return StreamableHttpServer(name="fixture", url=url, type="http")


def all_strings(span: ReadableSpan) -> Iterator[str]:
    yield span.name
    for value in (span.attributes or {}).values():
        if isinstance(value, str):
            yield value
    for event in span.events:
        for value in (event.attributes or {}).values():
            yield str(value)


@pytest.mark.parametrize(
    ("setup", "http_upstream"),
    [pytest.param(_stdio, False, id="stdio"), pytest.param(_http, True, id="streamable-http")],
)
async def test_a_tools_call_gives_server_then_upstream_spans(
    setup: Callable[[ProcFactory], Awaitable[ServerSpec]],
    http_upstream: bool,
    procs: ProcFactory,
    aiohttp_server: AiohttpServer,
    exporter: InMemorySpanExporter,
) -> None:
    spec = await setup(procs)
    app = await build_app(
        Settings(store_url="memory://"), [spec], tracing=Tracing(provider_for(exporter))
    )
    server: TestServer = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"http://127.0.0.1:{server.port}/mcp")
        await client.initialize()
        exporter.clear()
        reply = await client.post(client.request("tools/call", {"name": TOOL, "arguments": {}}))
    assert reply.status == 200
    assert "simple text" in json.dumps(reply.messages[-1]["result"])
    session_id = client.session_id
    assert session_id

    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.kind is SpanKind.SERVER]
    assert root.parent is None
    assert root.name == "POST /mcp"
    assert root.attributes is not None
    assert root.attributes["mcp.method.name"] == "tools/call"
    assert root.attributes["mcp_bridge.session.hash"] == tracing.id_hash(session_id)

    [call] = [s for s in spans if s.name == f"tools/call {TOOL}"]
    assert call.kind is SpanKind.CLIENT
    assert call.parent is not None
    assert call.parent.span_id == root.context.span_id
    assert call.context.trace_id == root.context.trace_id
    assert call.attributes is not None
    assert call.attributes["gen_ai.tool.name"] == TOOL
    assert call.attributes["mcp_bridge.server"] == spec.name
    assert call.attributes["mcp_bridge.session.hash"] == tracing.id_hash(session_id)
    assert call.status.status_code is StatusCode.UNSET
    times = [root.start_time, call.start_time, call.end_time, root.end_time]
    assert None not in times
    assert times == sorted(times)  # type: ignore[type-var]  # None ruled out above

    http_spans = [s for s in spans if s.parent and s.parent.span_id == call.context.span_id]
    if http_upstream:  # the upstream POST, by the aiohttp client instrumentation
        assert [s.kind for s in http_spans] == [SpanKind.CLIENT]
        assert http_spans[0].name == "POST"
    else:
        assert http_spans == []
    for span in spans:
        for text in all_strings(span):
            assert session_id not in text, (span.name, text)


async def test_legacy_session_ids_in_urls_are_hashed(
    aiohttp_server: AiohttpServer, exporter: InMemorySpanExporter
) -> None:
    app = await build_app(
        Settings(store_url="memory://"), [fixture_stdio()], tracing=Tracing(provider_for(exporter))
    )
    server: TestServer = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http, http.get(f"{base}/sse") as stream:
        line = b""
        while not line.startswith(b"data:"):
            line = await stream.content.readline()
        endpoint = line.decode().removeprefix("data:").strip()
        connection_id = endpoint.partition("session_id=")[2]
        assert connection_id
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        async with http.post(base + endpoint, json=ping) as posted:
            assert posted.status == 400  # ping before initialize; the span is the point
    [post] = [s for s in exporter.get_finished_spans() if s.name == "POST /messages/"]
    texts = list(all_strings(post))
    assert any(tracing.id_hash(connection_id) in t for t in texts), texts
    assert not any(connection_id in t for t in texts)


def test_upstream_urls_lose_credentials_and_query_values() -> None:
    from yarl import URL

    url = URL("http://user:pw@up:8000/messages/?session_id=abc&token=s3cret")
    assert url_filter(url) == (
        f"http://up:8000/messages/?session_id={tracing.id_hash('abc')}&token=REDACTED"
    )
    assert url_filter(URL("http://up:8000/mcp")) == "http://up:8000/mcp"


@pytest.mark.parametrize(
    ("settings", "environ", "on"),
    [
        pytest.param({}, {}, False, id="nothing"),
        pytest.param({"otlp_endpoint": "http://c:4318"}, {}, True, id="bridge-setting"),
        pytest.param({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True, id="otel-env"),
        pytest.param({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c"}, True, id="traces"),
        pytest.param(
            {"otlp_endpoint": "http://c:4318"}, {"OTEL_SDK_DISABLED": "true"}, False, id="disabled"
        ),
    ],
)
def test_tracing_is_off_unless_an_endpoint_is_set(
    settings: dict[str, Any], environ: dict[str, str], on: bool
) -> None:
    assert tracing.wanted(Settings(**settings), environ) is on


@pytest.mark.parametrize("endpoint", ["collector:4318", "grpc://c:4317", "http://c:4318?x=1"])
def test_a_bad_endpoint_is_a_clear_error(endpoint: str) -> None:
    code = "from bridge.cli import main; import sys; sys.exit(main())"
    out = subprocess.run(
        [sys.executable, "-c", code, "--stdio", "true", "--otlp-endpoint", endpoint],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "--otlp-endpoint" in out.stderr  # the value is named as it was given
    assert endpoint in out.stderr
    assert "Traceback" not in out.stderr


async def test_off_builds_no_middleware(aiohttp_server: AiohttpServer) -> None:
    app = await build_app(Settings(store_url="memory://"), [fixture_stdio()])
    await aiohttp_server(app)  # started, so that its cleanup closes what it opened
    assert list(app.middlewares) == [observe]


#: Run first in a child Python: OpenTelemetry cannot be imported there, as
#: where the otel extra is not installed (redis-py tries it and does without).
WITHOUT_OTEL: Final = "import sys; sys.modules['opentelemetry'] = None; "


def test_off_needs_no_opentelemetry() -> None:
    # Tracing off: the app builds and serves a request without OpenTelemetry.
    code = WITHOUT_OTEL + (
        "import asyncio\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from bridge.app import build_app\n"
        "from bridge.settings import Settings, StdioServer\n"
        "async def main():\n"
        "    spec = StdioServer(name='s', command=sys.executable)\n"
        "    app = await build_app(Settings(store_url='memory://'), [spec])\n"
        "    async with TestClient(TestServer(app)) as client:\n"
        "        status = (await client.get('/healthz')).status\n"
        "    print('RESULT', status, 'bridge.otel' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "RESULT 200 False" in out.stdout.splitlines(), out.stdout + out.stderr


def test_an_endpoint_without_the_extra_exits_2_with_a_hint() -> None:
    code = WITHOUT_OTEL + "from bridge.cli import main; sys.exit(main())"
    out = subprocess.run(
        [sys.executable, "-c", code, "--stdio", "true", "--store-url", "memory://", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BRIDGE_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert out.returncode == 2, out.stderr
    assert "pip install 'mcp-bridge-gateway[otel]'" in out.stderr
    assert "Traceback" not in out.stderr


async def test_the_gateway_exports_over_otlp_http(
    procs: ProcFactory, aiohttp_server: AiohttpServer
) -> None:
    """``mcp-bridge`` with BRIDGE_OTLP_ENDPOINT posts protobuf spans to ENDPOINT/v1/traces."""
    names: list[str] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert attrs["service.name"] == "mcp-bridge"
            for scope in resource_spans.scope_spans:
                names.extend(span.name for span in scope.spans)
        if f"tools/call {TOOL}" in names:
            arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", receive)
    server: TestServer = await aiohttp_server(collector)
    spec = fixture_stdio()
    _, url = await start_gateway(
        procs,
        "--stdio",
        " ".join([spec.command, *spec.args]),
        env={
            "BRIDGE_OTLP_ENDPOINT": f"http://127.0.0.1:{server.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms between batches (default 5 s)
        },
    )
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{url}/mcp")
        await client.initialize()
        reply = await client.post(client.request("tools/call", {"name": TOOL, "arguments": {}}))
        assert reply.status == 200
    async with asyncio.timeout(BOUND):
        await arrived.wait()
    assert "POST /mcp" in names
