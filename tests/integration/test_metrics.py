"""/metrics in Prometheus format, with bounded labels (issue #6 "Health and metrics")."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory, example_stdio
from tests.rawclient import RawClient

BOUND = 20.0  # seconds


async def scrape(
    http: aiohttp.ClientSession, base: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get(f"{base}/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.parametrize("share", ["none", "principal"])
async def test_metrics_follow_sessions_requests_and_resumes(
    gateway: GatewayFactory, share: str
) -> None:
    gw = await gateway([example_stdio()], upstream_idle_timeout=0.3, share=share)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()
        assert client.session_id
        for _ in range(3):
            await client.post(client.request("tools/list"))
        await client.post(
            client.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}})
        )
        samples = await scrape(http, gw.url)
        assert value(samples, "mcp_bridge_sessions_active", server="example") == 1
        ok = {"server": "example", "front_door": "streamable_http", "outcome": "ok"}
        assert value(samples, "mcp_bridge_requests_total", method="tools/list", **ok) == 3
        assert value(samples, "mcp_bridge_requests_total", method="tools/call", **ok) == 1
        assert (
            value(samples, "mcp_bridge_upstream_connects_total", server="example", outcome="ok")
            == 1
        )
        assert (
            value(
                samples,
                "mcp_bridge_upstream_response_seconds_count",
                server="example",
                method="tools/call",
            )
            == 1
        )

        session = await gw.hub.get(client.session_id, "example")
        async with asyncio.timeout(BOUND):
            await session.wait_closed()  # idle: upstream released
        await client.post(client.request("ping"))  # resumed
        samples = await scrape(http, gw.url)
        assert (
            value(samples, "mcp_bridge_sessions_ended_total", server="example", reason="idle") == 1
        )
        assert (
            value(samples, "mcp_bridge_session_resumes_total", server="example", outcome="ok") == 1
        )
        # Released and resumed: its own upstream again (none), or the pool's warm one.
        connects = 2 if share == "none" else 1
        assert (
            value(samples, "mcp_bridge_upstream_connects_total", server="example", outcome="ok")
            == connects
        )
        if share != "none":
            assert (
                value(samples, "mcp_bridge_pool_starts_total", server="example", outcome="ok") == 1
            )
            busy = value(
                samples, "mcp_bridge_pool_upstream_sessions", server="example", state="busy"
            )
            idle = value(
                samples, "mcp_bridge_pool_upstream_sessions", server="example", state="idle"
            )
            assert (busy, idle) == (0, 1)
        text = await (await http.get(f"{gw.url}/metrics")).text()
        assert client.session_id not in text
        assert client.session_id[:8] not in text  # not even truncated: labels stay bounded


async def test_process_series_and_no_created_series(gateway: GatewayFactory) -> None:
    """prometheus-client's process_* series are served; no ``_created`` twin of any series."""
    gw = await gateway([example_stdio()])
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{gw.url}/http")
        await client.initialize()  # counters and histograms get children
        await client.post(client.request("tools/list"))
        samples = await scrape(http, gw.url)
        names = {name for name, _ in samples}
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                     "process_open_fds", "process_max_fds", "process_start_time_seconds"):  # fmt: skip
            assert name in names, name
        assert value(samples, "process_resident_memory_bytes") > 0
        assert value(samples, "mcp_bridge_requests_total", server="example",
                     front_door="streamable_http", method="tools/list", outcome="ok") == 1  # fmt: skip
        assert not [name for name in names if name.endswith("_created")]
        await client.delete()
