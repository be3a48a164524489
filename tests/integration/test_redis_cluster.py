"""The stores and the gateway on a real three-node Redis Cluster (issue #12).

- A session's keys (record, streams, names) share one slot, so they live on
  one node; sessions spread over the nodes, and ``list`` finds them on all.
- The commands the replica bus will send through ``Stores.redis`` work on the
  cluster client: XADD MAXLEN ~ with PEXPIRE in one non-transactional
  pipeline, XREAD BLOCK woken by another client's XADD, SET NX PX, and a
  registered Lua compare-and-set of one key.
- A gateway on ``redis+cluster://`` serves a session, is killed, and a new
  gateway (another process and port) serves it on and replays its stream.
- The whole cluster going down is :class:`StoreUnavailable` within a bound,
  and the same client works again once the cluster is back; one primary
  down fails the readiness probe.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest
from redis.asyncio import Redis, RedisCluster

from bridge.sessions import redis as redis_sessions
from bridge.sessions.store import SessionRecord, StoreUnavailable
from bridge.stores import Stores, open_stores
from tests.conftest import ProcFactory, start_gateway
from tests.rawclient import RawClient, next_event, read_reply
from tests.redis_server import CLUSTER_NODES
from tests.redis_server import RedisCluster as ClusterServers

TIMEOUT: Final = 2.0  # seconds per store call
BOUND: Final = 20.0  # seconds for a gateway step
BLOCK_MS: Final = 1500  # XREAD BLOCK, below TIMEOUT: the client's socket timeout bounds it
WOKEN_WITHIN: Final = 1.0  # seconds from an XADD to the blocked XREAD's return
TTL: Final = 60.0
EXAMPLE: Final = f"{sys.executable} -m bridge.examples.server"
SESSIONS: Final = [f"s-{n}" for n in range(12)]
OUTAGE_TIMEOUT: Final = 0.3  # seconds per store call in the outage test
# Every attempt may wait one timeout per node while rediscovering the cluster,
# plus the backoff between attempts.
OUTAGE_BOUND: Final = (
    (redis_sessions.RETRIES + 1) * OUTAGE_TIMEOUT * CLUSTER_NODES
    + redis_sessions.RETRIES * redis_sessions.RETRY_CAP
    + 1.0  # scheduling slack
)


@pytest.fixture
def prefix() -> str:
    """This test's own key prefix: the cluster serves the whole test session."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stores(redis_cluster: ClusterServers, prefix: str) -> AsyncIterator[Stores]:
    opened = await open_stores(
        redis_cluster.url,
        prefix=prefix,
        max_events=100,
        max_age=3600,
        timeout=TIMEOUT,
    )
    yield opened
    await opened.aclose()


def cluster_client(stores: Stores) -> RedisCluster:
    assert isinstance(stores.redis, RedisCluster)
    return stores.redis


async def keys_per_node(cluster: ClusterServers, prefix: str) -> dict[int, set[str]]:
    """Each node's own keys under ``prefix`` (SCAN on a node sees only its slots)."""
    found = {}
    for port in cluster.ports:
        async with Redis(host="127.0.0.1", port=port, decode_responses=True) as node:
            found[port] = {key async for key in node.scan_iter(match=f"{prefix}:*")}
    return found


async def test_a_sessions_keys_share_a_node_and_sessions_spread_over_all(
    redis_cluster: ClusterServers, stores: Stores, prefix: str
) -> None:
    for session_id in SESSIONS:
        await stores.sessions.create(SessionRecord(session_id, "srv", "2025-11-25", {}), TTL)
        await stores.events.append(session_id, "get", None, TTL)
        await stores.events.append(session_id, "req:1", None, TTL)

    per_node = await keys_per_node(redis_cluster, prefix)

    holders = {}
    for session_id in SESSIONS:
        own = {
            port for port, keys in per_node.items() if any(f"{{{session_id}}}" in k for k in keys)
        }
        assert len(own) == 1, (session_id, own)  # record, two streams and names: one node
        [holders[session_id]] = own
        mine = {k for k in per_node[holders[session_id]] if f"{{{session_id}}}" in k}
        assert len(mine) == 4, mine
        assert len({await cluster_client(stores).cluster_keyslot(k) for k in mine}) == 1
    assert set(holders.values()) == set(redis_cluster.ports)  # every node holds some
    listed = await stores.sessions.list(100)  # SCAN on every primary
    assert sorted(r.session_id for r in listed) == sorted(SESSIONS)
    assert len(await stores.sessions.list(5)) == 5


async def test_the_principal_cap_works_across_slots(stores: Stores) -> None:
    # The owner index is in a slot of its own; the records it lists in others.
    for session_id in SESSIONS[:4]:
        record = SessionRecord(session_id, "srv", "2025-11-25", {}, principal="alice")
        evicted = await stores.sessions.create(record, TTL, max_per_principal=2)
        assert len(evicted) == (0 if session_id in SESSIONS[:2] else 1)
    alive = [s for s in SESSIONS[:4] if await stores.sessions.get(s) is not None]
    assert alive == SESSIONS[2:4]


async def test_the_replica_bus_primitives_run_on_the_cluster_client(
    stores: Stores, prefix: str
) -> None:
    client = cluster_client(stores)
    key = f"{prefix}:bus:{{replicas}}"

    async with client.pipeline(transaction=False) as pipe:
        _ = pipe.xadd(key, {"m": "hello"}, maxlen=10, approximate=True)
        _ = pipe.pexpire(key, 60_000)
        first, expiring = await pipe.execute()
    assert expiring is True
    assert 0 < await client.pttl(key) <= 60_000

    async def read_after(last: str) -> tuple[float, object]:
        reply = await client.xread({key: last}, count=1, block=BLOCK_MS)
        return time.monotonic(), reply

    reader = asyncio.ensure_future(read_after(first))
    async with RedisCluster.from_url(
        stores_node_url(stores), decode_responses=True
    ) as other:  # another client, as another replica would be
        added_at = time.monotonic()
        added = await other.xadd(key, {"m": "wake"})
    woken_at, reply = await asyncio.wait_for(reader, BLOCK_MS / 1000 + TIMEOUT)
    assert reply == [[key, [(added, {"m": "wake"})]]]
    assert woken_at - added_at < WOKEN_WITHIN

    lease = f"{key}:lease"
    assert await client.set(lease, "a", nx=True, px=5000) is True
    assert await client.set(lease, "b", nx=True, px=5000) is None
    assert 0 < await client.pttl(lease) <= 5000

    cas = client.register_script(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then "
        "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end return 0"
    )
    assert await cas(keys=[lease], args=["a", "c", 5000]) == 1
    assert await cas(keys=[lease], args=["a", "d", 5000]) == 0
    assert await client.get(lease) == "c"


def stores_node_url(stores: Stores) -> str:
    node = cluster_client(stores).get_default_node()
    assert node is not None
    return f"redis://{node.host}:{node.port}/0"


async def test_a_gateway_on_the_cluster_restarts_and_the_session_resumes(
    redis_cluster: ClusterServers, procs: ProcFactory, prefix: str
) -> None:
    options = ("--stdio", EXAMPLE, "--store-url", redis_cluster.url, "--store-prefix", prefix)
    first, base = await start_gateway(procs, *options)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/http")
        await client.initialize()
        slow = client.request("tools/call", {"name": "slow", "arguments": {"steps": 3, "delay": 0}})
        slow["params"]["_meta"] = {"progressToken": "p"}
        async with asyncio.timeout(BOUND):
            response = await http.post(client.url, json=slow, headers=client.headers())
            priming = await next_event(response)
            done = await read_reply(response)
        assert done.messages[-1]["id"] == slow["id"]
        first.process.send_signal(signal.SIGKILL)
        await first.exited(BOUND)

        _, base2 = await start_gateway(procs, *options)
        client.url = f"{base2}/http"  # same session id, another process and port
        async with asyncio.timeout(BOUND):
            add = client.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})
            reply = await client.post(add)
            headers = client.headers(Accept="text/event-stream", **{"Last-Event-ID": priming["id"]})
            replayed = await read_reply(await http.get(client.url, headers=headers))
        assert reply.status == 200
        assert reply.messages[-1]["result"]["content"][0]["text"] == "5.0"
        assert replayed.status == 200
        assert replayed.messages == done.messages  # progress, then the result, from the cluster


async def test_a_cluster_outage_fails_within_a_bound_and_heals(tmp_path: Path) -> None:
    with ClusterServers(tmp_path / "cluster") as cluster:
        stores = await open_stores(
            cluster.url, prefix="t", max_events=10, max_age=60, timeout=OUTAGE_TIMEOUT
        )
        try:
            for session_id in SESSIONS:  # on every node, so the client knows them all
                await stores.sessions.create(SessionRecord(session_id, "s", "2025-11-25", {}), TTL)
            cluster.kill()

            for session_id in SESSIONS[:4]:
                for call in (
                    stores.sessions.get(session_id),
                    stores.events.append(session_id, "get", None, TTL),
                    stores.sessions.list(10),
                    stores.sessions.ping(),
                ):
                    started = time.monotonic()
                    with pytest.raises(StoreUnavailable):
                        await call
                    assert time.monotonic() - started < OUTAGE_BOUND

            cluster.restart()
            assert await stores.sessions.get(SESSIONS[0]) is None  # nothing was persisted
            for session_id in SESSIONS:
                await stores.sessions.create(SessionRecord(session_id, "s", "2025-11-25", {}), TTL)
                await stores.events.append(session_id, "get", None, TTL)
            assert len(await stores.sessions.list(100)) == len(SESSIONS)
            await stores.sessions.ping()

            cluster.nodes[1].kill()  # one primary of three: /readyz must say so
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await stores.sessions.ping()
            assert time.monotonic() - started < OUTAGE_BOUND
            cluster.nodes[1].start()
            cluster.wait_ok()
            await stores.sessions.ping()
        finally:
            await stores.aclose()
