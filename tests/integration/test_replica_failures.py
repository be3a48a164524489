"""Replicas failing under load: kill -9, and a rolling restart (issue #12).

Twenty sessions run tool calls through the round-robin balancer
(:mod:`tests.balancer`) in front of replicas sharing one real Redis
(:mod:`tests.replicas`), while a replica is killed, or every replica in turn
is drained (SIGTERM) and started again on its port. Each session is a raw
client loop (:class:`Load`) of sequential ``tools/call pool_sleep``: a short
sleep, then an echo-like one (``seconds`` tiny and unique, so the answer's
text names the request it answers), over and over. A request whose SSE
stream is cut resumes it the way the SDK does: ``GET`` with
``Last-Event-ID`` (the id of the last event it saw), through the balancer.

What must hold (README, "Replicas"): every session goes on with its own
``Mcp-Session-Id``; every request the gateway accepted (its POST got 200 and
a stream) gets exactly one answer, a result or a JSON-RPC error such as
-32035 for a call a crash cut (never two, never none), within
:data:`REQUEST_BOUND`; a rolling restart shows no client a 5xx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import pytest

from bridge.sse import Decoder
from tests.conftest import FIXTURE_SERVER, ProcFactory
from tests.rawclient import RawClient
from tests.redis_server import RedisServer
from tests.replicas import Replicas, replica_set

FIXTURE: Final = f"{sys.executable} {FIXTURE_SERVER}"
#: Seconds of a replica's lease and of an owner's time to acknowledge a forward.
LEASE: Final = 2.0
FORWARD_TIMEOUT: Final = 1.0
SESSIONS: Final = 20
#: Seconds the sleeping calls sleep.
CALL: Final = 0.2
#: Seconds one request may take, resumes included: its call; if its owner was
#: killed, the forward timeout, the rest of the owner's lease, and the half
#: lease after which an open tunnel checks its owner is alive; plus slack for
#: a 2-core machine running three gateways and their children.
REQUEST_BOUND: Final = CALL + FORWARD_TIMEOUT + LEASE + LEASE / 2 + 3.0
#: Most resumes (GET + Last-Event-ID) of one request's stream.
MAX_RESUMES: Final = 5
#: Requests each session completes after the fault is over.
AFTER: Final = 4
#: Seconds for a whole test's load (each phase is bounded again below).
BOUND: Final = 120.0
#: Seconds for the sessions to have calls in flight once all are initialized.
WARM_BOUND: Final = 30.0
MAX_EVENT_BYTES: Final = 1 << 20


@dataclass
class Outcome:
    """One request: what the client saw of it, over its POST and its resumes."""

    session: int
    id: int
    expected: str  # the result text that answers it
    after_fault: bool  # sent once the fault (kill, restarts) was over
    statuses: list[int] = field(default_factory=list)  # POST first, then each resume
    answers: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # bodies of non-200 answers
    first_event_id: str | None = None  # the POST stream's priming event
    last_event_id: str | None = None  # where a resume starts
    resumes: int = 0
    cut: int = 0  # streams that ended without the answer
    latency: float = 0.0
    hung: bool = False  # past REQUEST_BOUND
    sent_at: str = ""  # UTC wall clock, to match the replicas' log lines

    @property
    def accepted(self) -> bool:
        return bool(self.statuses) and self.statuses[0] == 200

    @property
    def result_ok(self) -> bool:
        return len(self.answers) == 1 and _text(self.answers[0]) == self.expected


def _text(message: dict[str, Any]) -> str | None:
    try:
        return str(message["result"]["content"][0]["text"])
    except (KeyError, IndexError, TypeError):
        return None


class Load:
    """``SESSIONS`` raw client loops through ``url``; see the module docstring.

    :attr:`warm` is set once every session is initialized and half of them
    have a sleeping call in flight (its priming event came). After
    :meth:`fault_over`, each loop sends :data:`AFTER` more requests and ends.
    """

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self._http = http
        self._url = url
        self.outcomes: list[Outcome] = []
        self.session_ids: dict[int, str] = {}
        self.warm = asyncio.Event()
        self._over = asyncio.Event()
        self._initialized = 0
        self._in_flight: set[int] = set()
        self._tags = itertools.count(1)

    def fault_over(self) -> None:
        self._over.set()

    async def run(self) -> None:
        """Run every session to its end (bounded by :data:`BOUND`)."""
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*(self._session(k) for k in range(SESSIONS)))

    async def _session(self, k: int) -> None:
        client = RawClient(self._http, f"{self._url}/mcp")
        await client.initialize()
        assert client.session_id is not None
        self.session_ids[k] = client.session_id
        self._initialized += 1
        after = 0
        for i in itertools.count():
            over = self._over.is_set()
            if over and after >= AFTER:
                return
            sleep = CALL if i % 2 == 0 else 0.0
            seconds = sleep + next(self._tags) * 1e-7  # unique: the answer echoes it
            request = client.request(
                "tools/call", {"name": "pool_sleep", "arguments": {"seconds": seconds}}
            )
            outcome = Outcome(k, request["id"], f"slept {seconds}", after_fault=over)
            self.outcomes.append(outcome)
            await self._exchange(client, request, outcome, sleeping=sleep > 0)
            assert client.session_id == self.session_ids[k]
            after += over

    async def _exchange(
        self, client: RawClient, request: dict[str, Any], outcome: Outcome, *, sleeping: bool
    ) -> None:
        started = time.monotonic()
        outcome.sent_at = datetime.now(UTC).strftime("%H:%M:%S.%f")
        try:
            async with asyncio.timeout(REQUEST_BOUND):
                await self._post(client, request, outcome, sleeping=sleeping)
                while (
                    not outcome.answers
                    and outcome.accepted
                    and outcome.resumes < MAX_RESUMES
                    and (last := outcome.last_event_id) is not None
                ):
                    outcome.resumes += 1
                    await self._resume(client, last, outcome)
        except TimeoutError:
            outcome.hung = True
        finally:
            self._in_flight.discard(outcome.session)
            outcome.latency = time.monotonic() - started

    async def _post(
        self, client: RawClient, request: dict[str, Any], outcome: Outcome, *, sleeping: bool
    ) -> None:
        body = json.dumps(request).encode()
        try:
            async with self._http.post(client.url, data=body, headers=client.headers()) as resp:
                outcome.statuses.append(resp.status)
                if resp.status != 200:
                    outcome.refusals.append((await resp.read()).decode(errors="replace")[:300])
                    return

                def primed(event_id: str) -> None:
                    outcome.first_event_id = outcome.first_event_id or event_id
                    if sleeping:
                        self._note_in_flight(outcome.session)

                await self._read(resp, outcome, primed)
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
        ):  # cut: payload error, server disconnected
            outcome.cut += 1

    async def _resume(self, client: RawClient, last: str, outcome: Outcome) -> None:
        headers = client.headers(**{"Last-Event-ID": last})
        try:
            async with self._http.get(client.url, headers=headers) as resp:
                outcome.statuses.append(resp.status)
                if resp.status == 200:
                    await self._read(resp, outcome, lambda _: None)
                else:
                    outcome.refusals.append((await resp.read()).decode(errors="replace")[:300])
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            outcome.cut += 1

    async def _read(
        self, resp: aiohttp.ClientResponse, outcome: Outcome, primed: Callable[[str], None]
    ) -> None:
        decoder = Decoder(MAX_EVENT_BYTES)
        async for chunk in resp.content.iter_any():
            for event in decoder.feed(chunk):
                if event.id is not None:
                    outcome.last_event_id = event.id
                    primed(event.id)
                if event.data:
                    message = json.loads(event.data)
                    if message.get("id") == outcome.id and (
                        "result" in message or "error" in message
                    ):
                        outcome.answers.append(message)
        if not outcome.answers:
            outcome.cut += 1

    def _note_in_flight(self, session: int) -> None:
        self._in_flight.add(session)
        if self._initialized == SESSIONS and len(self._in_flight) >= SESSIONS // 2:
            self.warm.set()

    # -- what the run showed -------------------------------------------------

    def summary(self) -> dict[str, Any]:
        codes: Counter[int] = Counter()
        for o in self.outcomes:
            for answer in o.answers:
                if "error" in answer:
                    codes[answer["error"]["code"]] += 1
        statuses = Counter(s for o in self.outcomes for s in o.statuses)
        return {
            "requests": len(self.outcomes),
            "accepted": sum(o.accepted for o in self.outcomes),
            "answers": sum(len(o.answers) for o in self.outcomes),
            "results": sum(o.result_ok for o in self.outcomes),
            "errors_by_code": dict(codes),
            "http_statuses": dict(statuses),
            "resumed": sum(o.resumes > 0 for o in self.outcomes),
            "hung": sum(o.hung for o in self.outcomes),
            "max_latency_s": round(max((o.latency for o in self.outcomes), default=0.0), 3),
        }


async def replayed_answers(
    http: aiohttp.ClientSession, url: str, session_id: str, outcome: Outcome
) -> list[dict[str, Any]]:
    """The answers to ``outcome``'s request a replay of its whole stream gives now."""
    assert outcome.first_event_id is not None
    client = RawClient(http, f"{url}/mcp")
    client.session_id = session_id
    headers = client.headers(**{"Last-Event-ID": outcome.first_event_id})
    async with asyncio.timeout(REQUEST_BOUND), http.get(client.url, headers=headers) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        events = Decoder(MAX_EVENT_BYTES).feed(await resp.read())
    messages = [json.loads(e.data) for e in events if e.data]
    return [m for m in messages if m.get("id") == outcome.id and "method" not in m]


def check_exactly_one_answer_each(load: Load) -> None:
    for o in load.outcomes:
        assert not o.hung, o
        assert o.latency <= REQUEST_BOUND, o
        if o.accepted:
            assert len(o.answers) == 1, o
            answer = o.answers[0]
            assert "error" in answer or _text(answer) == o.expected, o


async def check_replays(http: aiohttp.ClientSession, url: str, load: Load) -> int:
    """Every resumed request's stream, replayed whole: still its one answer. How many."""
    resumed = [o for o in load.outcomes if o.resumes and o.first_event_id is not None]
    for o in resumed:
        replayed = await replayed_answers(http, url, load.session_ids[o.session], o)
        assert replayed == o.answers, (o, replayed)
    return len(resumed)


def http_client() -> aiohttp.ClientSession:
    # No total timeout: SSE streams run as long as their calls; each request
    # is bounded by REQUEST_BOUND instead.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))


def gateway_args() -> tuple[str, ...]:
    return (
        *("--stdio", FIXTURE),
        *("--replica-lease", str(LEASE), "--forward-timeout", str(FORWARD_TIMEOUT)),
    )


def report(name: str, load: Load, replicas: Replicas) -> None:
    counts = replicas.balancer.counts
    print(
        f"\n{name}:",
        json.dumps(
            {
                **load.summary(),
                "balancer_requests": {u[-5:]: n for u, n in counts.requests.items()},
                "balancer_refused": {u[-5:]: n for u, n in counts.refused.items()},
                "balancer_own_5xx": counts.own_5xx,
            }
        ),
    )
    odd = [o for o in load.outcomes if o.hung or not o.result_ok]
    for o in odd[:20]:  # what a failure is about: cut calls, refusals, errors
        print("  not a plain result:", o)
    if odd:  # and what the replicas said meanwhile
        for replica in replicas.replicas:
            for run, proc in enumerate(replica.runs):
                for line in proc.lines:
                    if re.search(r'"level": "(warning|error)"|"status": 5|"draining"', line):
                        print(f"  replica {replica.index} run {run}: {line[:300]}")


async def test_kill_9_of_one_replica_under_load(procs: ProcFactory, redis: RedisServer) -> None:
    """Replica 0 is killed while 20 sessions have calls in flight; replica 1 carries on."""
    async with (
        replica_set(procs, *gateway_args(), store_url=redis.url, count=2) as replicas,
        http_client() as http,
    ):
        load = Load(http, replicas.url)
        running = asyncio.ensure_future(load.run())
        try:
            async with asyncio.timeout(WARM_BOUND):
                await asyncio.wait(
                    {running, asyncio.ensure_future(load.warm.wait())},
                    return_when=asyncio.FIRST_COMPLETED,
                )
            assert load.warm.is_set(), running
            await replicas.kill(0)
            load.fault_over()
            await running
        finally:
            running.cancel()
        report("kill -9", load, replicas)
        check_exactly_one_answer_each(load)
        for o in load.outcomes:
            if o.after_fault:  # sent after the crash: served by the survivor
                assert o.result_ok, o
                assert o.statuses == [200], o
        cut = [o for o in load.outcomes if not o.after_fault and o.resumes]
        assert cut, "the crash cut no stream: the kill came too late"
        assert await check_replays(http, replicas.url, load) == len(cut)


@pytest.mark.parametrize("count", [2, 3])
async def test_rolling_restart_under_load(
    procs: ProcFactory, redis: RedisServer, count: int
) -> None:
    """Each replica in turn drains (SIGTERM), exits and starts again on its port: no session
    lost, no 5xx, one answer per request, every request a result."""
    async with (
        replica_set(procs, *gateway_args(), store_url=redis.url, count=count) as replicas,
        http_client() as http,
    ):
        load = Load(http, replicas.url)
        running = asyncio.ensure_future(load.run())
        try:
            async with asyncio.timeout(WARM_BOUND):
                await asyncio.wait(
                    {running, asyncio.ensure_future(load.warm.wait())},
                    return_when=asyncio.FIRST_COMPLETED,
                )
            assert load.warm.is_set(), running
            for index in range(count):
                assert await replicas.stop(index) == 0
                await replicas.start(index)
            load.fault_over()
            await running
        finally:
            running.cancel()
        report(f"rolling restart of {count}", load, replicas)
        check_exactly_one_answer_each(load)
        statuses = Counter(s for o in load.outcomes for s in o.statuses)
        assert not [s for s in statuses if s >= 500], statuses
        assert replicas.balancer.counts.own_5xx == 0
        for o in load.outcomes:
            assert o.result_ok, o
        assert [len(r.runs) for r in replicas.replicas] == [2] * count
