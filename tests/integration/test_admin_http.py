"""Admin HTTP endpoints and upstream states in /readyz (issue #6 "Health and metrics")."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import yarl
from pydantic import SecretStr

from bridge import errors
from tests.conftest import GatewayFactory, example_stdio, free_port, sse_spec
from tests.rawclient import RawClient

TOKEN = "s3cret-admin-token"
BOUND = 10.0  # seconds for one raw request


async def test_admin_endpoints_need_the_token_and_evict(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()], admin_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = await http.get(f"{gw.url}/admin/sessions", headers=headers)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        listed = await (await http.get(f"{gw.url}/admin/sessions", headers=auth)).json()
        [entry] = listed["sessions"]
        assert entry["session_id"] == client.session_id
        assert entry["live_here"] is True
        shown = await http.get(f"{gw.url}/admin/sessions/{client.session_id}", headers=auth)
        assert (await shown.json())["client_params"]["clientInfo"]["name"] == "raw-test-client"
        evicted = await http.delete(f"{gw.url}/admin/sessions/{client.session_id}", headers=auth)
        assert await evicted.json() == {"session_id": client.session_id, "evicted": True}
        reply = await client.post(client.request("ping"))
        assert (reply.status, reply.error_code) == (404, errors.SESSION_NOT_FOUND)
        gone = await http.get(f"{gw.url}/admin/sessions/{client.session_id}", headers=auth)
        assert gone.status == 404


async def test_admin_endpoints_absent_without_a_token(gateway: GatewayFactory) -> None:
    gw = await gateway([example_stdio()])
    async with aiohttp.ClientSession() as http:
        assert (await http.get(f"{gw.url}/admin/sessions")).status == 404


async def test_readyz_reports_each_upstream(gateway: GatewayFactory) -> None:
    dead = sse_spec(f"http://127.0.0.1:{free_port()}/sse", name="dead")
    gw = await gateway([example_stdio(), dead])
    async with aiohttp.ClientSession() as http:
        ready = await (await http.get(f"{gw.url}/readyz")).json()
        assert {name: u["status"] for name, u in ready["upstreams"].items()} == {
            "example": "idle",
            "dead": "idle",
        }
        assert ready["upstreams"]["example"]["pool"]["size"] == 0
        await RawClient(http, f"{gw.url}/servers/example/http").initialize()
        failing = RawClient(http, f"{gw.url}/servers/dead/http")
        assert (await failing.post(failing.request("initialize", {}))).status == 503
        ready = await (await http.get(f"{gw.url}/readyz")).json()
        assert ready["status"] == "degraded"  # one upstream fails (issue #14)
        assert ready["failing"] == ["dead"]
        assert ready["upstreams"]["example"]["status"] == "up"
        pool = ready["upstreams"]["example"]["pool"]
        assert (pool["share"], pool["size"], pool["clients"], pool["starts"]) == (
            "principal",
            1,
            1,
            1,
        )
        assert ready["upstreams"]["dead"]["status"] == "failing"
        assert ready["upstreams"]["dead"]["pool"]["failures"] == 1
        assert "dead" in ready["upstreams"]["dead"]["error"]


async def test_probe_and_admin_routes_carry_no_cors(gateway: GatewayFactory) -> None:
    """A page at another origin cannot read /readyz, /healthz, /metrics or /admin (issue #15)."""
    gw = await gateway([example_stdio()], admin_token=TOKEN)
    evil = {"Origin": "http://evil.example"}
    preflight = {**evil, "Access-Control-Request-Method": "GET"}
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics", "/admin/sessions"):
            auth = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/admin") else {}
            async with http.get(f"{gw.url}{path}", headers={**evil, **auth}) as response:
                assert response.status == 200, path
                assert "Access-Control-Allow-Origin" not in response.headers, path
            async with http.options(f"{gw.url}{path}", headers=preflight) as response:
                assert "Access-Control-Allow-Origin" not in response.headers, path
        # The MCP endpoint still answers preflights for browser clients.
        async with http.options(f"{gw.url}/mcp", headers=preflight) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "http://evil.example"


async def raw_status(url: str, request_line: str, header: bytes) -> int:
    """The status of ``request_line`` sent with ``header`` as raw bytes over a socket."""
    parsed = yarl.URL(url)
    assert parsed.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", parsed.port)
    try:
        head = f"{request_line}\r\nHost: {parsed.raw_authority}\r\nConnection: close\r\n"
        writer.write(head.encode() + header + b"\r\n\r\n")
        async with asyncio.timeout(BOUND):
            status_line = await reader.readline()
            await reader.read()
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer \xff\xfe",
        b"Authorization: Bearer \xc3\xa9t\xc3\xa9",
        b"Authorization: \xe9",
    ],
)
async def test_non_ascii_credentials_get_401_not_500(
    gateway: GatewayFactory, header: bytes
) -> None:
    """Header bytes outside ASCII were a UnicodeEncodeError, a 500 (issue #15)."""
    gw = await gateway([example_stdio()], admin_token=TOKEN, api_keys=SecretStr("ci:tok-ci"))
    for request_line, status in [
        ("GET /admin/sessions HTTP/1.1", 401),
        ("GET /admin/sessions/some-id HTTP/1.1", 401),
        ("DELETE /admin/sessions/some-id HTTP/1.1", 401),
        ("GET /readyz HTTP/1.1", 200),
        ("POST /mcp HTTP/1.1", 401),
        ("GET /sse HTTP/1.1", 401),
    ]:
        assert await raw_status(gw.url, request_line, header) == status, request_line
