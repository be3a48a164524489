"""``GET /servers`` and a browser's ``GET /``: the servers and their URLs (issue #14).

Unknown paths stay 404; with auth on, the listing needs the same credentials
as the MCP endpoints.
"""

from __future__ import annotations

import aiohttp
from pydantic import SecretStr

from tests.conftest import GatewayFactory, example_stdio, sse_spec

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_servers_lists_names_and_urls(gateway: GatewayFactory) -> None:
    running = await gateway([example_stdio("files"), sse_spec("http://127.0.0.1:9/sse", "old")])
    async with aiohttp.ClientSession() as http:
        listing = await http.get(f"{running.url}/servers")
        assert listing.status == 200
        body = await listing.json()
    assert body == {
        "servers": [
            {
                "name": "files",
                "transport": "stdio",
                "url": f"{running.url}/servers/files/mcp",
                "sse_url": f"{running.url}/servers/files/sse",
            },
            {
                "name": "old",
                "transport": "sse",
                "url": f"{running.url}/servers/old/mcp",
                "sse_url": f"{running.url}/servers/old/sse",
            },
        ]
    }


async def test_a_single_server_also_gets_the_short_urls(gateway: GatewayFactory) -> None:
    running = await gateway([example_stdio("files")])
    async with aiohttp.ClientSession() as http:
        body = await (await http.get(f"{running.url}/servers")).json()
    assert body["default"] == {"url": f"{running.url}/mcp", "sse_url": f"{running.url}/sse"}


async def test_browser_gets_a_page_at_root_and_everything_else_a_404(
    gateway: GatewayFactory,
) -> None:
    running = await gateway([example_stdio("files"), example_stdio("notes")])
    async with aiohttp.ClientSession() as http:
        page = await http.get(f"{running.url}/", headers={"Accept": BROWSER_ACCEPT})
        assert page.status == 200
        assert page.content_type == "text/html"
        text = await page.text()
        assert f"{running.url}/servers/files/mcp" in text
        assert f"{running.url}/servers/notes/mcp" in text
        servers_page = await http.get(f"{running.url}/servers", headers={"Accept": BROWSER_ACCEPT})
        assert servers_page.content_type == "text/html"
        assert (
            await http.get(f"{running.url}/", headers={"Accept": "application/json"})
        ).status == 404
        assert (await http.get(f"{running.url}/nothing-here")).status == 404
        assert (await http.get(f"{running.url}/servers/files")).status == 404


async def test_public_url_names_the_urls(gateway: GatewayFactory) -> None:
    running = await gateway([example_stdio("files")], public_url="https://mcp.example.com/gw")
    async with aiohttp.ClientSession() as http:
        body = await (await http.get(f"{running.url}/servers")).json()
    assert body["servers"][0]["url"] == "https://mcp.example.com/gw/servers/files/mcp"


async def test_with_auth_on_the_listing_needs_credentials(gateway: GatewayFactory) -> None:
    running = await gateway([example_stdio("files")], api_keys=SecretStr("ci:tok3n"))
    async with aiohttp.ClientSession() as http:
        anonymous = await http.get(f"{running.url}/servers")
        assert anonymous.status == 401
        assert "files" not in await anonymous.text()
        allowed = await http.get(
            f"{running.url}/servers", headers={"Authorization": "Bearer tok3n"}
        )
        assert allowed.status == 200
        assert (await allowed.json())["servers"][0]["name"] == "files"
