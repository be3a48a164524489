"""stdio supervision (issue #5 "Hardening"): crashes, restart backoff, crash loops, child env.

- The restart policy itself (:class:`Supervisor`) is checked with a fake clock.
- A child's environment holds its config's ``env`` and the safe set, none of
  the gateway's secrets.
- A command that always crashes: requests during the backoff get 503 with
  ``Retry-After`` at once, the delays grow, ``/readyz`` and the log show the
  crash loop with the child's stderr; once the command is fixed the next
  request after the backoff works and ``/readyz`` says ``up`` again.
- Chaos: clients hammer a gateway while children are SIGKILLed at random. No
  request hangs, every answer is a result or a documented error, sessions go
  on after kills, and no process is left at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from bridge import errors
from bridge.settings import StdioServer
from bridge.upstreams.base import RestartPolicy
from bridge.upstreams.descendants import TAG_ENV
from bridge.upstreams.stdio import SAFE_ENV
from bridge.upstreams.supervisor import CRASH_LOOP_AFTER, READYZ_LINE_MAX, Supervisor
from tests.conftest import REPO, GatewayFactory, Proc, ProcFactory, start_gateway
from tests.fixtures.stdio_server import LEAKY
from tests.integration.test_stdio_lifecycle import assert_gone
from tests.rawclient import RawClient, Reply

STDIO_SERVER = REPO / "tests" / "fixtures" / "stdio_server.py"
ADMIN_TOKEN = "admin-token-for-readyz"
LEAKY_HEX = "5ec2e7a1b2c3d4e5f60718293a4b5c6d7e8f9012"
#: The fixture's LEAKY stderr lines as /readyz and the log show them.
REDACTED_LEAKY = [
    "GET /api failed: Authorization: Bearer [redacted]",
    "config: api_key=[redacted]&token=[redacted] password: [redacted], client_secret='[redacted]'",
    "db postgres://[redacted]@db.internal:5432/app unreachable",
    "hex [redacted] b64 [redacted]",
]
BOUND = 15.0  # seconds any single step may take
REQUEST_BOUND = 10.0  # seconds one request may take under chaos: more is a hang


def write_config(path: Path, *args: str, env: dict[str, str] | None = None) -> Path:
    server = {"command": sys.executable, "args": [str(STDIO_SERVER), *args], "env": env or {}}
    path.write_text(json.dumps({"mcpServers": {"flaky": server}}))
    return path


def child_pids(gateway: Proc) -> list[int]:
    return [e["pid"] for e in gateway.json_events("child_started")]


async def stop_and_check_no_child(gateway: Proc) -> None:
    """SIGTERM the gateway: it exits 0, and no child it ever started is left, nor its group."""
    gateway.process.send_signal(signal.SIGTERM)
    assert await gateway.exited(BOUND) == 0
    for pid in child_pids(gateway):
        assert_gone(pid)


async def readyz(
    http: aiohttp.ClientSession, base: str, authorization: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": authorization} if authorization else {}
    async with http.get(f"{base}/readyz", headers=headers) as response:
        assert response.status == 200
        body: dict[str, Any] = (await response.json())["upstreams"]["flaky"]
        return body


# -- the policy, with a fake clock ---------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = RestartPolicy(backoff_base=1.0, backoff_max=8.0, wait=0.5, healthy_after=10.0)


def crash(supervisor: Supervisor, clock: FakeClock, ran_for: float = 0.1) -> None:
    """Start a child and have it exit by itself after ``ran_for`` seconds."""
    round_ = supervisor.started()
    clock.now += ran_for
    supervisor.exited(round_, status="exited with status 3", ran_for=ran_for, by_itself=True,
                      stderr=["boom"])  # fmt: skip


def test_delays_double_with_jitter_up_to_the_cap_and_reset_once_healthy() -> None:
    clock = FakeClock()
    supervisor = Supervisor("s", POLICY, clock)
    delays = []
    for _ in range(6):
        crash(supervisor, clock)
        delays.append(supervisor.retry_in())
        clock.now += supervisor.retry_in()  # the next start is allowed
    # Equal jitter: the n-th delay is in [d/2, d], d = min(8, 2**(n-1)).
    for n, delay in enumerate(delays, start=1):
        full = min(8.0, 2.0 ** (n - 1))
        assert full / 2 <= delay <= full, (n, delays)
    assert delays[:4] == sorted(delays[:4])  # growing until the cap
    assert supervisor.consecutive == 6
    assert supervisor.health()["status"] == "crash_loop"
    # A child of the current round that lives healthy_after resets everything.
    round_ = supervisor.started()
    assert "status" not in supervisor.health()  # a child is running: not a loop now
    supervisor.healthy(round_)
    assert supervisor.consecutive == 0
    assert supervisor.retry_in() == 0
    crash(supervisor, clock)
    assert 0.5 <= supervisor.retry_in() <= 1.0  # back to the base


def test_children_dying_together_count_once() -> None:
    """Twelve sessions whose children all die at once are one crash, not twelve."""
    clock = FakeClock()
    supervisor = Supervisor("s", POLICY, clock)
    rounds = [supervisor.started() for _ in range(12)]
    for round_ in rounds:
        supervisor.exited(round_, status="was killed by SIGKILL", ran_for=0.5, by_itself=True,
                          stderr=[])  # fmt: skip
    assert supervisor.crashes == 12
    assert supervisor.consecutive == 1
    assert 0.5 <= supervisor.retry_in() <= 1.0


def test_what_is_not_a_crash() -> None:
    clock = FakeClock()
    supervisor = Supervisor("s", POLICY, clock)
    closed = supervisor.started()  # the gateway closed it (DELETE, idle): never a crash
    supervisor.exited(closed, status="was killed by SIGTERM", ran_for=0.1, by_itself=False,
                      stderr=[])  # fmt: skip
    old = supervisor.started()  # ran longer than healthy_after, then exited
    supervisor.exited(old, status="exited with status 1", ran_for=60.0, by_itself=True,
                      stderr=[])  # fmt: skip
    assert supervisor.health() == {}  # /readyz shows the hub's view only
    assert supervisor.retry_in() == 0


def test_a_crash_loop_needs_three_in_a_row_and_no_child_running() -> None:
    clock = FakeClock()
    supervisor = Supervisor("s", POLICY, clock)
    supervisor.failed_to_start("No such file or directory")  # a start that fails counts
    clock.now += supervisor.retry_in()
    crash(supervisor, clock)
    assert supervisor.consecutive == CRASH_LOOP_AFTER - 1
    assert "status" not in supervisor.health()
    clock.now += supervisor.retry_in()
    crash(supervisor, clock)
    health = supervisor.health()
    assert health["status"] == "crash_loop"
    assert health["last_crash"] == "exited with status 3 after 0.1 s"
    assert health["stderr_tail"] == ["boom"]
    assert 2.0 <= supervisor.retry_in() <= 4.0
    assert health["retry_in_s"] == round(supervisor.retry_in(), 3)


# -- the child's environment ---------------------------------------------------


async def test_child_gets_config_env_and_safe_set_not_gateway_secrets(
    procs: ProcFactory, tmp_path: Path
) -> None:
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-that-stays-with-the-gateway",
        "BRIDGE_ADMIN_TOKEN": "admin-token-that-stays-with-the-gateway",
        "GITHUB_TOKEN": "ghp-token-that-stays-with-the-gateway",
    }
    config = write_config(
        tmp_path / "servers.json",
        env={"CONFIGURED": "yes", "API_TOKEN": "${TOKEN_FOR_CHILD}"},
    )
    gateway, base = await start_gateway(
        procs, "--config", str(config), env={**secrets, "TOKEN_FOR_CHILD": "meant-for-the-child"}
    )
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/mcp")
        await client.initialize()
        reply = await client.post(client.request("tools/call", {"name": "env", "arguments": {}}))
        text = reply.messages[-1]["result"]["content"][0]["text"]
        child_env: dict[str, str] = json.loads(text)
        assert await client.delete() == 200
    assert child_env["CONFIGURED"] == "yes"
    assert child_env["API_TOKEN"] == "meant-for-the-child"  # named by the config: passed
    assert child_env["PATH"] == os.environ["PATH"]  # procs() passes ours to the gateway
    for name, value in secrets.items():
        assert name not in child_env
        assert value not in text
    # Nothing else at all: the safe set, the config's names, what Python
    # itself may add at startup (PEP 538 locale coercion), and the gateway's
    # tag that finds what the child starts (a random hex string, no secret).
    allowed = {*SAFE_ENV, "CONFIGURED", "API_TOKEN", "LC_CTYPE", TAG_ENV}
    assert set(child_env) <= allowed, child_env
    assert re.fullmatch("[0-9a-f]{16}", child_env[TAG_ENV])
    await stop_and_check_no_child(gateway)


# -- a crash loop --------------------------------------------------------------


@dataclass
class Attempts:
    """What a client trying to initialize during a crash loop saw."""

    crashed: list[Reply] = field(default_factory=list)  # a child started, and died
    refused: list[Reply] = field(default_factory=list)  # 503 during the backoff


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "t", "version": "0"}},
}  # fmt: skip


async def initialize_until(client: RawClient, attempts: Attempts, crashes: int) -> Reply:
    """POST initialize until ``crashes`` children have died, or one answers (bounded).

    A busy loop of real HTTP requests: every 503 comes back at once, which is
    what is being tested; nothing here waits for the backoff.
    """
    async with asyncio.timeout(BOUND):
        while True:
            reply = await client.post(INITIALIZE)
            if reply.status == 503:
                attempts.refused.append(reply)
            elif "error" in reply.messages[-1]:
                attempts.crashed.append(reply)
                if len(attempts.crashed) == crashes:
                    return reply
            else:
                return reply


async def start_flaky(
    procs: ProcFactory, tmp_path: Path, flag: Path, *options: str
) -> tuple[Proc, str]:
    """A gateway whose one server crash-loops until ``flag`` exists, with short backoffs."""
    config = write_config(tmp_path / "servers.json", "--crash-unless", str(flag))
    return await start_gateway(
        procs,
        "--config", str(config),
        "--stdio-restart-backoff-base", "0.2",
        "--stdio-restart-backoff-max", "5",
        "--stdio-restart-wait", "0",  # fail fast: every request in the backoff gets 503
        "--stdio-healthy-after", "0.5",
        *options,
    )  # fmt: skip


async def test_crash_loop_backs_off_shows_in_readyz_and_recovers(
    procs: ProcFactory, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    # A child per client, so that each crash meets the client's own initialize;
    # shared, the gateway's handshake meets it (test_a_shared_crash_loop_answers_...).
    gateway, base = await start_flaky(
        procs, tmp_path, flag, "--share", "none", "--admin-token", ADMIN_TOKEN
    )
    attempts = Attempts()
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/mcp")
        await initialize_until(client, attempts, crashes=CRASH_LOOP_AFTER)

        # Each crash answered the initialize at once: server, exit status, no stderr.
        for reply in attempts.crashed:
            assert reply.status == 200
            error = reply.messages[-1]["error"]
            assert error["code"] == errors.UPSTREAM_UNAVAILABLE
            assert error["message"].startswith("server 'flaky': child exited with status 3 after")
            assert "fatal" not in error["message"]
        # Between crashes: 503 at once, Retry-After, a JSON-RPC error saying why.
        assert len(attempts.refused) >= CRASH_LOOP_AFTER - 1
        for reply in attempts.refused:
            assert int(reply.headers["Retry-After"]) >= 1
            [message] = reply.messages
            assert message["id"] == 1
            assert message["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
            assert "server 'flaky' is restarting after" in message["error"]["message"]
            assert "fatal" not in message["error"]["message"]
        # The client may hear of a crash before the gateway has reaped the child
        # and logged it: the crash loop's line comes after the third crash's.
        await gateway.wait_for(r'"event": "upstream_crash_loop"')
        # The delays grew: equal jitter keeps each in [d/2, d] with d doubling.
        delays = [e["backoff_s"] for e in gateway.json_events("upstream_crashed")]
        assert len(delays) == CRASH_LOOP_AFTER
        assert 0.09 <= delays[0] <= 0.2
        assert delays[0] < delays[1] < delays[2] <= 0.8
        print(f"\ncrash loop: backoff {delays} s, {len(attempts.refused)} requests got 503")

        # /readyz and the log show the loop, with the child's last stderr lines:
        # credentials redacted everywhere, and in /readyz for the admin token only.
        state = await readyz(http, base)
        assert state["status"] == "crash_loop"
        assert state["crashes"] == state["consecutive_crashes"] == CRASH_LOOP_AFTER
        assert state["last_crash"].startswith("exited with status 3 after")
        assert "stderr_tail" not in state
        assert "stderr_tail" not in await readyz(http, base, "Bearer wrong-token")
        state = await readyz(http, base, f"Bearer {ADMIN_TOKEN}")
        long_line = "x" * 500
        assert state["stderr_tail"] == [
            "starting up",
            long_line[:READYZ_LINE_MAX],
            *REDACTED_LEAKY,
            f"fatal: {flag} is missing",
        ]
        [loop_line] = gateway.json_events("upstream_crash_loop")
        assert loop_line["level"] == "warning"
        assert loop_line["stderr_tail"] == [
            "starting up",
            long_line,
            *REDACTED_LEAKY,
            f"fatal: {flag} is missing",
        ]
        assert len(gateway.json_events("child_stderr")) >= len(LEAKY)
        assert LEAKY_HEX in LEAKY[3]
        for line in gateway.lines:
            assert "SECRET" not in line
            assert LEAKY_HEX not in line

        # Fix the command: the first request after the backoff starts a child that works.
        flag.touch()
        reply = await initialize_until(client, attempts, crashes=CRASH_LOOP_AFTER + 1)
        assert reply.status == 200
        assert reply.messages[-1]["result"]["serverInfo"]["name"] == "stdio-fixture"
        assert len(attempts.crashed) == CRASH_LOOP_AFTER  # no further crash
        client.session_id = reply.headers["Mcp-Session-Id"]
        echo = client.request("tools/call", {"name": "echo", "arguments": {"text": "back"}})
        assert (await client.post(echo)).messages[-1]["result"]["content"][0]["text"] == "back"
        state = await readyz(http, base)
        assert state["status"] == "up"  # a child runs; the count waits for healthy_after
        await gateway.wait_for(r'"event": "upstream_recovered"', BOUND)
        state = await readyz(http, base)
        assert state["status"] == "up"
        assert state["consecutive_crashes"] == 0
        assert state["crashes"] == CRASH_LOOP_AFTER  # history stays
        assert "retry_in_s" not in state
        assert await client.delete() == 200
    await stop_and_check_no_child(gateway)


# -- chaos ---------------------------------------------------------------------

SEED = 5
SESSIONS = 12
CHAOS_SECONDS = 10.0
KILL_EVERY = (10, 40)  # completed requests between two kills (uniform, seeded)


@dataclass
class Chaos:
    """The shared tally of a chaos run; kills are paced by completed requests."""

    gateway: psutil.Process
    rng: random.Random
    done: int = 0
    kills: int = 0
    max_latency: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    next_kill: int = 0
    victims: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.next_kill = self.rng.randint(*KILL_EVERY)

    def completed(self, latency: float) -> None:
        self.done += 1
        self.max_latency = max(self.max_latency, latency)
        if self.done >= self.next_kill:
            self.next_kill = self.done + self.rng.randint(*KILL_EVERY)
            self.kill_one()

    def kill_one(self) -> None:
        """SIGKILL one of the gateway's children, picked by the seeded RNG."""
        children = sorted(
            (p for p in self.gateway.children() if "stdio_server.py" in " ".join(_cmdline(p))),
            key=lambda p: p.pid,
        )
        if not children:
            return
        victim = self.rng.choice(children)
        try:
            victim.kill()  # psutil checks the pid was not reused
        except psutil.NoSuchProcess:
            return
        self.kills += 1
        self.victims.append(victim.pid)

    def classify(self, reply: Reply) -> str:
        """One answer: a result, or one of the documented errors; anything else is noted."""
        if reply.status == 200 and "result" in reply.messages[-1]:
            return "ok"
        if reply.status in (200, 503) and reply.messages:
            error = reply.messages[-1].get("error", {})
            if error.get("code") == errors.UPSTREAM_UNAVAILABLE:
                assert "server 'flaky'" in error["message"], error
                killed = "killed by SIGKILL" in error["message"]
                return f"{reply.status} upstream unavailable" + (" (SIGKILL)" if killed else "")
        self.unexpected.append(f"{reply.status} {reply.messages}")
        return "unexpected"


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


async def hammer(client: RawClient, chaos: Chaos, until: float) -> list[str]:
    """Requests in a loop until ``until``; the outcome of each, in order."""
    outcomes = []
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        for message in (
            client.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
            client.request("ping"),
        ):
            started = loop.time()
            async with asyncio.timeout(REQUEST_BOUND):
                reply = await client.post(message)
            outcome = chaos.classify(reply)
            chaos.outcomes[outcome] += 1
            outcomes.append(outcome)
            chaos.completed(loop.time() - started)
    return outcomes


async def test_a_shared_crash_loop_answers_503_at_once_and_recovers(
    procs: ProcFactory, tmp_path: Path
) -> None:
    """Shared (share principal): the gateway's own handshake meets each crash, so every
    initialize in the loop gets 503 with -32030 naming the server, never a hang."""
    flag = tmp_path / "fixed"
    gateway, base = await start_flaky(procs, tmp_path, flag)
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{base}/mcp")
        refused = []
        async with asyncio.timeout(BOUND):
            while len(gateway.json_events("child_started")) < CRASH_LOOP_AFTER:
                reply = await client.post(INITIALIZE)
                refused.append(reply)
            await gateway.wait_for(r'"event": "upstream_crash_loop"')
        for reply in refused:
            assert reply.status == 503
            [message] = reply.messages
            assert message["error"]["code"] == errors.UPSTREAM_UNAVAILABLE
            assert "server 'flaky'" in message["error"]["message"]
            assert "fatal" not in message["error"]["message"]  # stderr stays in the log
        ready = await (await http.get(f"{base}/readyz")).json()
        assert ready["upstreams"]["flaky"]["status"] == "crash_loop"
        assert ready["upstreams"]["flaky"]["pool"]["size"] == 0

        flag.touch()  # the command is fixed: the next start after the backoff holds
        async with asyncio.timeout(BOUND):
            while (reply := await client.post(INITIALIZE)).status == 503:
                pass
        assert "result" in reply.messages[-1]
    await stop_and_check_no_child(gateway)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("share", ["none", "principal"])
async def test_random_kills_under_load_no_hang_no_leak(
    procs: ProcFactory, tmp_path: Path, share: str
) -> None:
    config = write_config(tmp_path / "servers.json")
    gateway, base = await start_gateway(
        procs,
        "--config", str(config),
        "--share", share,
        "--stdio-restart-backoff-base", "0.05",
        "--stdio-restart-backoff-max", "0.5",
        "--stdio-restart-wait", "1",  # the backoff is always waited out: no 503 from it
        "--stdio-healthy-after", "1",
    )  # fmt: skip
    chaos = Chaos(psutil.Process(gateway.pid), random.Random(SEED))
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients = [RawClient(http, f"{base}/mcp") for _ in range(SESSIONS)]
        await asyncio.gather(*(c.initialize() for c in clients))
        ids = [c.session_id for c in clients]
        until = asyncio.get_running_loop().time() + CHAOS_SECONDS
        runs = await asyncio.gather(*(hammer(c, chaos, until) for c in clients))
        chaos_kills = chaos.kills
        # The last kill may be a moment old: wait until the gateway has reaped it.
        for pid in chaos.victims[-1:]:
            await gateway.wait_for(rf'(?=.*"event": "child_stopped")(?=.*"pid": {pid}\b)', BOUND)

        # Kills have stopped: every session goes on, same id, no re-initialize.
        for client in clients:
            final = client.request("tools/call", {"name": "echo", "arguments": {"text": "end"}})
            async with asyncio.timeout(REQUEST_BOUND):
                reply = await client.post(final)
            assert reply.messages[-1]["result"]["content"][0]["text"] == "end", reply
        assert [c.session_id for c in clients] == ids
        for client in clients:
            assert await client.delete() == 200
        leftover = psutil.Process(gateway.pid).children(recursive=True)
        # Shared, the pool keeps one child warm for the next client.
        assert len(leftover) == (0 if share == "none" else 1), leftover
    elapsed = time.monotonic() - started

    # Each client session resumed on a new child (none), or the pool started a
    # replacement that every client session went on with (shared).
    replaced = "session_resumed" if share == "none" else "pool_session_started"
    resumed = len(gateway.json_events(replaced))
    print(
        f"\nchaos: {chaos.done} requests by {SESSIONS} sessions in {CHAOS_SECONDS:g} s, "
        f"{chaos_kills} children SIGKILLed, {len(child_pids(gateway))} started, "
        f"{resumed} resumes, max latency {chaos.max_latency * 1000:.0f} ms, "
        f"outcomes {dict(chaos.outcomes)}, whole test {elapsed:.1f} s"
    )
    assert chaos.unexpected == []
    assert chaos_kills >= 10
    assert chaos.outcomes["ok"] > chaos.done / 2
    # Kills hit requests in flight, which got the error naming how the child died.
    assert chaos.outcomes["200 upstream unavailable (SIGKILL)"] >= 1
    assert resumed >= chaos_kills // 2
    # Sessions went on after errors during the chaos too, not only at the end.
    recoveries = sum(
        1 for outcomes in runs for a, b in itertools.pairwise(outcomes) if a != "ok" and b == "ok"
    )
    assert recoveries >= 1
    assert gateway.json_events("request_failed") == []  # no 500, no traceback
    assert gateway.json_events("task_failed") == []
    await stop_and_check_no_child(gateway)


async def test_a_session_whose_child_dies_in_initialize_leaves_no_record(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    flag = tmp_path / "never-created"
    spec = StdioServer(
        name="dies", command=sys.executable, args=(str(STDIO_SERVER), "--crash-unless", str(flag))
    )
    gw = await gateway([spec], stdio_restart_wait=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        client = RawClient(http, f"{gw.url}/mcp")
        message = client.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}},
        )
        reply = await client.post(message)
    assert reply.error_code == errors.UPSTREAM_UNAVAILABLE
    for session in [*gw.hub.live(), *gw.hub._closing]:
        await session.wait_closed()
    assert await gw.hub.stores.sessions.list(10) == []
