"""Issue #12's proof: 2 and 3 replicas behind a round-robin balancer, on Redis and on a
Redis Cluster, serve the official conformance suite and the SDK client scenario.

The balancer (tests/balancer.py) sends every request to the next replica in
turn, with no affinity, so most of a session's requests land on a replica
that does not hold it and are forwarded over the Redis bus to the one that
does (bridge/replicas/). Each test asserts that every replica answered
requests and that the bus carried some.

- The 2025-11-25 requirement set (tests/integration/test_conformance.py:
  :func:`run_suite`, held to :data:`EXPECTED_2025`), the conformance fixture
  behind the replicas over stdio and over legacy SSE.
- The SDK 1.x client scenario (tests/integration/test_sdk_clients.py:
  :func:`run_scenario`), with its sampling and elicitation round trips.

On the cluster, which the whole test session shares, each test keeps to a
key prefix of its own. Each test prints its tables and its wall time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from tests.conftest import ProcFactory
from tests.integration.test_conformance import (
    EXPECTED_2025,
    SUITE_TIMEOUT,
    fixture_args,
    run_suite,
    suite_url,
    table,
    unmet,
)
from tests.integration.test_sdk_clients import FASTMCP_ELICITING, run_scenario
from tests.redis_server import RedisServer
from tests.replicas import Replicas, replica_set

#: Seconds for one replica's /readyz answer, read after the run.
READYZ_TIMEOUT: Final = 5.0
#: Seconds for a whole SDK scenario test (replicas' start included).
SDK_TIMEOUT: Final = 120.0


@dataclass(frozen=True)
class SharedStore:
    """The store the replicas share: its URL and the other gateway options it needs."""

    url: str
    options: tuple[str, ...] = ()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedStore]:
    """The replicas' store, by the test's ``store`` parameter.

    ``redis``: a redis-server of the test's own. ``cluster``: the session's Redis
    Cluster (``redis_cluster``), under a key prefix of the test's own.
    """
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        yield SharedStore(cluster.url, ("--store-prefix", f"t{uuid.uuid4().hex[:12]}"))
        return
    with RedisServer(tmp_path / "redis") as server:
        yield SharedStore(server.url)


async def replica_states(replicas: Replicas) -> list[dict[str, Any]]:
    """Each replica's ``replica`` section of /readyz (id, lease, bus, forwarded, ...)."""
    states = []
    timeout = aiohttp.ClientTimeout(total=READYZ_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for replica in replicas.replicas:
            async with http.get(f"{replica.url}/readyz") as response:
                states.append((await response.json())["replica"])
    return states


async def assert_spread(replicas: Replicas) -> None:
    """Every replica answered requests through the balancer, which produced no error of its
    own, and the bus carried requests from replicas to the owners of their sessions."""
    counts = replicas.balancer.counts
    states = await replica_states(replicas)
    for replica, state in zip(replicas.replicas, states, strict=True):
        print(
            f"replica {replica.index} ({state['id']}): {counts.requests[replica.url]} requests, "
            f"forwarded {state['forwarded']}, served for others {state['served_for_others']}, "
            f"cut {state['cut']}"
        )
    assert all(counts.requests[r.url] > 0 for r in replicas.replicas), counts
    assert counts.own_5xx == 0, counts
    assert sum(s["forwarded"] for s in states) > 0, states
    assert sum(s["served_for_others"] for s in states) > 0, states


def log_lines(replicas: Replicas, *levels: str) -> list[str]:
    """The replicas' log lines at ``levels`` (``warning``, ``error``), prefixed by replica."""
    marks = tuple(f'"level": "{level}"' for level in levels)
    return [
        f"[{replica.index}] {line}"
        for replica in replicas.replicas
        for run in replica.runs
        for line in run.lines
        if any(mark in line for mark in marks)
    ]


@pytest.mark.timeout(SUITE_TIMEOUT + 60)
@pytest.mark.parametrize(
    ("store", "count", "upstream"),
    [
        pytest.param("redis", 2, "stdio", id="redis-2-stdio"),
        pytest.param("redis", 2, "legacy-sse", id="redis-2-legacy-sse"),
        pytest.param("redis", 3, "stdio", id="redis-3-stdio"),
        pytest.param("redis", 3, "legacy-sse", id="redis-3-legacy-sse"),
        pytest.param("cluster", 3, "stdio", id="cluster-3-stdio"),
    ],
    indirect=["store"],
)
async def test_conformance_suite_through_the_balancer(
    store: SharedStore, count: int, upstream: str, procs: ProcFactory, tmp_path: Path
) -> None:
    """2025-11-25: every scenario passes as on one gateway, its requests spread over
    ``count`` replicas."""
    started = time.monotonic()
    args = await fixture_args(upstream, procs, tmp_path)
    async with replica_set(
        procs, *args, *store.options, store_url=store.url, count=count
    ) as replicas:
        code, results = await run_suite(procs, suite_url(replicas.url), "2025-11-25", tmp_path)
        print(table(results, EXPECTED_2025))
        problems = unmet(results, EXPECTED_2025)
        if problems:
            print("\n".join(log_lines(replicas, "warning", "error")[-80:]))
        assert not problems, "\n".join(problems)
        assert code == 0
        await assert_spread(replicas)
        assert not log_lines(replicas, "error")
    print(f"wall time: {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(SDK_TIMEOUT)
@pytest.mark.parametrize("store", ["redis", "cluster"], indirect=True)
async def test_sdk_client_scenario_through_the_balancer(
    store: SharedStore, procs: ProcFactory, tmp_path: Path
) -> None:
    """The SDK client's whole scenario, sampling and elicitation included, on 2 replicas."""
    started = time.monotonic()
    args = await fixture_args("stdio", procs, tmp_path)
    async with replica_set(procs, *args, *store.options, store_url=store.url, count=2) as replicas:
        try:
            await run_scenario(f"{replicas.url}/mcp", FASTMCP_ELICITING)
        except BaseException:
            print("\n".join(log_lines(replicas, "warning", "error")[-80:]))
            raise
        await assert_spread(replicas)
        assert not log_lines(replicas, "error")
    print(f"wall time: {time.monotonic() - started:.1f} s")
