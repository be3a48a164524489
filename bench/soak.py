"""Soak: one gateway under mixed load for ``--minutes``; are its resources flat at the end?

One gateway (``mcp-bridge --stdio "PYTHON -m bridge.examples.server"``, default
``--share principal``, ``--store-url sqlite:///TMP/soak.db``, JSON logs) and
``--clients`` concurrent raw aiohttp clients, for ``--minutes`` (default 10).
Each client loops, picking at random (``--seed``):

- a session (2025-11-25): ``initialize`` and ``notifications/initialized``,
  2-8 operations, then ``DELETE``, or, with probability ``--abandon``, nothing:
  the session is left behind. The operations: ``tools/call echo`` (its own text
  must come back), ``tools/list``, ``tools/call add`` (checked), ``tools/call
  slow`` with a progress token, read to its end (3 progress events in order,
  then the result), the same dropped after its first progress event and
  resumed with a ``GET`` and ``Last-Event-ID`` (the rest of the events, once
  each and in order, every one with an id, then the result), and the session's
  ``GET`` stream opened, dropped after its priming event, and resumed with
  ``Last-Event-ID`` (held open until the session ends);
- or 2-6 sessionless requests of revision 2026-07-28 (``MCP-Protocol-Version``,
  ``Mcp-Method``, ``Mcp-Name`` headers, version and capabilities in
  ``params._meta``): echo, list, add, slow with progress read to its end, and
  slow with progress dropped after its first event (which cancels it).

Between operations a client waits a random 0-2x ``--think`` seconds (pacing,
not synchronisation). Every operation is bounded by ``--timeout``.

Every ``--kill-every`` seconds (30; the first at half that), one stdio child of
the gateway (a child process running the example server) gets SIGKILL. The
requests on it then fail with -32030 (-31030 for 2026-07-28), answered 503 or
as an error on the request's stream. Such a failure of an operation during
which a child was killed (or that began at most 1 s after a kill) is
*expected*, counted by kind; so is one during which a stdio child exited by
itself (the gateway's ``upstream_lost`` line "exited with status"; the example
server's SDK, mcp 1.x, can crash on a cancellation that races its answer,
python-sdk#2416), counted apart. Anything else (a 500, a timeout, a wrong
answer, a refused resume, a 404, a dropped connection, -32030 with no kill or
crash meanwhile) is a *problem*, counted and printed with examples.

Every ``--sample-every`` seconds (10, from t=0 to the end) the script samples
the gateway's RSS, its open fds (``/proc/PID/fd``), its descendant processes,
the store's size (the SQLite file plus its ``-wal``); the session records,
SSE events, and events of sessions without a record in it (a read-only SQLite
connection); the live sessions (``/healthz``); the records the gateway evicted
for ``--max-records-per-principal`` (its ``records_evicted`` log lines); the
pool's upstream starts (``/readyz``); the operations ok / failed as expected /
problems in the interval with the p50 and p99 of the ok ones; and the cores
the gateway tree and anything else on the machine kept busy. It prints each
sample as it is taken; at the end, the table again with a row every
``--table-every`` seconds (30; the intervals' counts, latencies and cores
merged), and for each series the least-squares slope over the last half of
the run (per minute), the medians of the first and the last minute, and
whether the series is flat: its slope times half the run within a tolerance
(printed). The verdict line says whether RSS, fds, processes and store are
all flat and there was no problem.

The script starts and stops every process it uses, on free loopback ports,
learns the gateway's port from its ``listening`` log line, and kills every
stdio child it ever saw at exit. Exit status: 0 flat and no problem, 1
otherwise, 2 a child did not start, 3 the ``--max-seconds`` deadline, 130
interrupted. See bench/README.md, "Soak".

    python bench/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
import modern
from load import HOST, Child, RequestFailed

SESSION_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
}
UPSTREAM_MARK = "bridge.examples.server"
UPSTREAM_CMD = f"{sys.executable} -m {UPSTREAM_MARK}"
#: A request lost with its upstream: expected if a child was killed while it ran.
EXPECTED = re.compile(r"-3[12]030\b")
KILL_SLACK = 1.0  # seconds: a request that began this soon after a kill may still meet the child
CRASH_NOTICE = 2.0  # seconds the log line of a server's own exit may trail its requests' errors
SLOW_STEPS, SLOW_DELAY = 3, 0.2  # tools/call slow: 3 progress events, 0.6 s
MiB = 1024 * 1024
EXAMPLES = 2  # problems of each kind printed with their details
UPSTREAM_REQUEST = re.compile(r"Processing request of type")
CRASH_LINES = 10  # stderr lines kept of a stdio server that exited by itself, before and after
SESSION_OPS = {"echo": 30, "list_tools": 15, "add": 10, "slow": 10, "slow_resume": 15,
               "get_resume": 10}  # fmt: skip
MODERN_OPS = {"echo": 40, "list_tools": 25, "add": 15, "slow": 10, "slow_drop": 10}
SESSION_SHARE = 0.7  # of the scenarios a client picks: a session; else sessionless requests


# -- counting -----------------------------------------------------------------------


@dataclass
class Stats:
    """Outcomes of operations: all of them, and those since the last sample."""

    ok: Counter[str] = field(default_factory=Counter)  # op -> count
    expected: Counter[str] = field(default_factory=Counter)  # "op: kind" -> count
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> the first few
    notes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # ms, ok ones since the last sample
    kills: list[tuple[float, int]] = field(default_factory=list)  # (t, pid): the Gateway's
    #: when (t) a stdio server exited by itself (upstream_lost "exited with status"): a
    #: crash of the server, not of the gateway (the SDK's cancellation race, see README)
    crashes: list[float] = field(default_factory=list)
    crashed: asyncio.Event = field(default_factory=asyncio.Event)  # set at each crash
    interval: Counter[str] = field(default_factory=Counter)  # ok/expected/problems since then

    def success(self, op: str, seconds: float) -> None:
        self.ok[op] += 1
        self.interval["ok"] += 1
        self.latencies.append(seconds * 1000)

    def failure(self, op: str, exc: BaseException, began: float, t: float) -> None:
        """Count a failed operation that ran from ``began`` to ``t`` (seconds into the load):
        expected if it is an upstream loss and a child was killed meanwhile, else a problem."""
        kind = load.classify(exc)
        key = f"{op}: {kind}"
        lost = EXPECTED.search(kind)
        if lost and any(began - KILL_SLACK <= k <= t for k, _ in self.kills):
            self.expected[key] += 1
            self.interval["expected"] += 1
            return
        if lost and self.crash_near(began, t):
            self.expected[f"{key} (the server crashed by itself)"] += 1
            self.interval["expected"] += 1
            return
        if lost:
            key += " (no kill meanwhile)"
            before = [k for k, _ in self.kills if k < began]
            since = f"{began - before[-1]:.1f} s" if before else "no kill yet"
            self.notes[f"{kind} with no kill meanwhile: began {bucket(began, before)}"] += 1
        else:
            since = ""
        self.problems[key] += 1
        self.interval["problems"] += 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < EXAMPLES:
            detail = exc.detail if isinstance(exc, Problem) else f"{exc.__class__.__name__}: {exc}"
            after = f", {since} after the last kill" if since else ""
            examples.append(f"t={began:.1f}-{t:.1f} s{after}: {detail}"[:400])

    def crash_near(self, began: float, t: float) -> bool:
        """Whether a stdio server exited by itself while the operation ran."""
        return any(began - KILL_SLACK <= c <= t + CRASH_NOTICE for c in self.crashes)

    async def crash_notice(self, began: float, t: float, exc: BaseException) -> None:
        """Before counting an upstream loss with no kill meanwhile, wait up to
        :data:`CRASH_NOTICE` for the gateway's log of a server exiting by itself:
        the client may learn of the loss before this script reads that line."""
        if not EXPECTED.search(load.classify(exc)):
            return
        if any(began - KILL_SLACK <= k <= t for k, _ in self.kills) or self.crash_near(began, t):
            return
        self.crashed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CRASH_NOTICE):
                while not self.crash_near(began, t):
                    await self.crashed.wait()
                    self.crashed.clear()

    def take(self) -> tuple[Counter[str], list[float]]:
        """The interval's counts and latencies, and a fresh interval."""
        counts, latencies = self.interval, self.latencies
        self.interval, self.latencies = Counter(), []
        return counts, latencies


def bucket(began: float, kills: list[float]) -> str:
    """How long after the last kill an operation began, in coarse buckets."""
    if not kills:
        return "before any kill"
    since = began - kills[-1]
    for edge in (2, 5, 10, 20):
        if since < edge:
            return f"< {edge} s after a kill"
    return ">= 20 s after a kill"


class Problem(RequestFailed):
    """A failure counted under ``kind``, with details for the examples printed."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind)
        self.detail = detail


# -- SSE ------------------------------------------------------------------------------


@dataclass
class Event:
    id: str | None
    data: str  # "" for a priming event


async def next_event(resp: aiohttp.ClientResponse) -> Event | None:
    """The next event of an SSE body read line by line (comments and ``retry:`` skipped);
    None at its end."""
    event_id: str | None = None
    data: list[str] = []
    seen = False
    while True:
        raw = await resp.content.readline()
        line = raw.decode().rstrip("\r\n")
        if not line:
            if seen:
                return Event(event_id, "\n".join(data))
            if not raw:
                return None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id, seen = value, True
        elif name == "data":
            data.append(value)
            seen = True


def result_of(message: dict[str, Any]) -> dict[str, Any]:
    """A response's result; a JSON-RPC error as a Problem whose detail is its message."""
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        code = error.get("code", "?")
        raise Problem(f"jsonrpc error {code}", f"{code} {str(error.get('message'))[:300]!r}")
    result = message.get("result")
    if not isinstance(result, dict):
        raise RequestFailed("reply without a result object")
    return result


def progress_of(message: dict[str, Any], token: str) -> float | None:
    """The progress value of a notification for ``token``, None for other messages."""
    if message.get("method") != "notifications/progress":
        return None
    params = message.get("params") or {}
    if params.get("progressToken") != token:
        raise RequestFailed("progress for another token")
    return float(params.get("progress", 0))


def check_slow(result: dict[str, Any]) -> None:
    content = result.get("content") or [{}]
    if content[0].get("text") != f"done after {SLOW_STEPS} steps":
        raise RequestFailed("wrong slow result")


def check_echo(result: dict[str, Any], text: str) -> None:
    content = result.get("content")
    first = content[0] if isinstance(content, list) and content else {}
    if result.get("isError") or not isinstance(first, dict) or first.get("text") != text:
        raise RequestFailed("wrong echo text")


def check_add(result: dict[str, Any], total: int) -> None:
    content = result.get("content")
    first = content[0] if isinstance(content, list) and content else {}
    try:
        right = float(first.get("text", "nan")) == total
    except (TypeError, ValueError):
        right = False
    if result.get("isError") or not right:
        raise RequestFailed("wrong add result")


def check_tools(result: dict[str, Any]) -> None:
    tools = result.get("tools")
    if not isinstance(tools, list) or {t.get("name") for t in tools} != load.EXPECTED_TOOLS:
        raise RequestFailed("wrong tools/list result")


async def refused(resp: aiohttp.ClientResponse, what: str) -> RequestFailed:
    """An answer that is not the event stream asked for, as a RequestFailed with its code."""
    code = text = None
    with contextlib.suppress(Exception):
        error = modern.parse_json(await resp.read()).get("error")
        if isinstance(error, dict):
            code, text = error.get("code"), error.get("message")
    kind = f"{what} http {resp.status}" + (f" jsonrpc {code}" if code else "")
    return Problem(kind, f"{kind} {str(text)[:300]!r}")


# -- clients --------------------------------------------------------------------------


class Soaker:
    """What one client does: one session or one burst of sessionless requests at a time."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        args: argparse.Namespace,
        stats: Stats,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.http = http
        self.base = base
        self.args = args
        self.stats = stats
        self.rng = rng
        self.clock = clock  # seconds since the load began

    async def op(self, name: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Run one operation within --timeout and count its outcome; whether it succeeded."""
        t0, began = time.perf_counter(), self.clock()
        try:
            async with asyncio.timeout(self.args.timeout):
                await work()
        except Exception as exc:
            t = self.clock()
            await self.stats.crash_notice(began, t, exc)
            self.stats.failure(name, exc, began, t)
            return False
        self.stats.success(name, time.perf_counter() - t0)
        return True

    async def think(self) -> None:
        if self.args.think > 0:
            await asyncio.sleep(self.rng.uniform(0, 2 * self.args.think))

    def pick(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), list(weights.values()))[0]

    async def session(self) -> None:
        client = SessionClient(self.http, self.base, self.args.timeout, self.stats)
        if not await self.op("initialize", client.open):
            return
        try:
            for _ in range(self.rng.randint(2, 8)):
                await self.think()
                name = self.pick(SESSION_OPS)
                if name == "get_resume" and client.listening is not None:
                    name = "list_tools"  # one GET stream per session
                ok = await self.op(name, getattr(client, name))
                if not ok and client.gone:
                    return
            if self.rng.random() < self.args.abandon:
                self.stats.notes["sessions abandoned"] += 1
            else:
                await self.think()
                await self.op("delete", client.close)
        finally:
            client.drop_listening()

    async def sessionless(self) -> None:
        client = SessionlessClient(self.http, self.base, self.args.timeout)
        for _ in range(self.rng.randint(2, 6)):
            await self.think()
            name = self.pick(MODERN_OPS)
            await self.op(f"2026 {name}", getattr(client, name))

    async def run(self, until: float) -> None:
        while self.clock() < until:
            if self.rng.random() < SESSION_SHARE:
                await self.session()
            else:
                await self.sessionless()


class SessionClient(modern.SessionClient):
    """A 2025-11-25 session (initialize, requests, DELETE), checked at every step."""

    def __init__(
        self, http: aiohttp.ClientSession, base: str, timeout: float, stats: Stats
    ) -> None:
        super().__init__(http, base, timeout, "mix")
        self.stats = stats
        self.listening: aiohttp.ClientResponse | None = None  # the resumed GET stream, held
        self.gone = False  # the session answered 404

    async def open(self) -> None:
        rid = next(self._ids)
        headers, message = await self._post(load.rpc("initialize", rid, modern.SESSION_INIT), rid)
        result = result_of(message)
        if result.get("protocolVersion") != SESSION_VERSION:
            raise RequestFailed(f"initialize: version {result.get('protocolVersion')}")
        session_id = headers.get("Mcp-Session-Id")
        if not session_id:
            raise RequestFailed("initialize: no Mcp-Session-Id")
        self._headers["Mcp-Session-Id"] = session_id
        self._headers["MCP-Protocol-Version"] = SESSION_VERSION
        await self._post(load.rpc("notifications/initialized"), None)

    async def call(
        self, method: str, params: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        rid = next(self._ids)
        try:
            _, message = await self._post(load.rpc(method, rid, params or None), rid)
        except RequestFailed as exc:
            self.gone = self.gone or exc.kind.startswith("http 404")
            raise
        return result_of(message)

    async def echo(self) -> None:
        text = f"{self.tag}.{secrets.token_hex(6)}"
        result = await self.call("tools/call", {"name": "echo", "arguments": {"text": text}})
        check_echo(result, text)

    async def list_tools(self) -> None:
        check_tools(await self.call("tools/list", {}))

    async def add(self) -> None:
        a, b = secrets.randbelow(1000), secrets.randbelow(1000)
        params = {"name": "add", "arguments": {"a": a, "b": b}}
        check_add(await self.call("tools/call", params), a + b)

    def _get_headers(self, last_event_id: str | None = None) -> dict[str, str]:
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        return headers

    async def _open_slow(self) -> tuple[aiohttp.ClientResponse, int, str]:
        rid = next(self._ids)
        token = f"{self.tag}.{rid}"
        params = {"name": "slow", "arguments": {"steps": SLOW_STEPS, "delay": SLOW_DELAY},
                  "_meta": {"progressToken": token}}  # fmt: skip
        resp = await self._http.post(
            self._url, data=load.rpc("tools/call", rid, params), headers=self._headers
        )
        if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
            try:
                failed = await refused(resp, "slow")
            finally:
                resp.close()
            self.gone = self.gone or resp.status == 404
            raise failed
        return resp, rid, token

    async def _read_slow(
        self,
        resp: aiohttp.ClientResponse,
        rid: int,
        token: str,
        last: float,
        seen: set[str],
        stop_at_progress: bool = False,
    ) -> tuple[float, str | None]:
        """Read a slow call's stream: progress past ``last`` in order, every event with a new
        id, then the result. Returns (last progress, last event id); with
        ``stop_at_progress``, returns at the first progress event instead (id given).
        The result ends the read: (last progress, None)."""
        while True:
            event = await next_event(resp)
            if event is None:
                raise RequestFailed("stream ended without the response")
            if event.id is None:
                raise RequestFailed("SSE event without an id")
            if event.id in seen:
                raise Problem("SSE event id repeated", f"{event.id} after {sorted(seen)}: "
                              f"{event.data[:120]!r}")  # fmt: skip
            seen.add(event.id)
            if not event.data:
                continue  # the priming event
            message = modern.parse_json(event.data)
            progress = progress_of(message, token)
            if progress is not None:
                if progress <= last:
                    raise Problem("progress repeated or out of order",
                                  f"{progress:g} after {last:g}, id {event.id}")  # fmt: skip
                last = progress
                if stop_at_progress:
                    return last, event.id
                continue
            if message.get("id") == rid and ("result" in message or "error" in message):
                check_slow(result_of(message))
                if last != SLOW_STEPS:
                    raise RequestFailed(f"result after progress {last:g} of {SLOW_STEPS}")
                return last, None
            raise RequestFailed("unexpected message on the stream")

    async def slow(self) -> None:
        resp, rid, token = await self._open_slow()
        with contextlib.closing(resp):
            await self._read_slow(resp, rid, token, 0.0, set())

    async def slow_resume(self) -> None:
        """The slow call's stream dropped after its first progress event, then resumed."""
        seen: set[str] = set()
        resp, rid, token = await self._open_slow()
        with contextlib.closing(resp):
            last, event_id = await self._read_slow(resp, rid, token, 0.0, seen, True)
        if event_id is None:  # no progress before the result: nothing to resume
            self.stats.notes["slow_resume: finished before the drop"] += 1
            return
        resp = await self._http.get(self._url, headers=self._get_headers(event_id))
        with contextlib.closing(resp):
            if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                self.gone = self.gone or resp.status == 404
                raise await refused(resp, "resume GET")
            before = len(seen)
            await self._read_slow(resp, rid, token, last, seen)
            self.stats.notes["events received on resumed POST streams"] += len(seen) - before

    async def get_resume(self) -> None:
        """The GET stream: opened, dropped after its priming event, resumed, held open."""
        resp = await self._http.get(self._url, headers=self._get_headers())
        with contextlib.closing(resp):
            if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                self.gone = self.gone or resp.status == 404
                raise await refused(resp, "GET")
            event = await next_event(resp)
        if event is None or event.id is None:
            raise RequestFailed("GET stream without a priming event id")
        await self.list_tools()  # the client does something else meanwhile
        resp = await self._http.get(self._url, headers=self._get_headers(event.id))
        if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
            try:
                raise await refused(resp, "GET resume")
            finally:
                resp.close()
        self.listening = resp

    def drop_listening(self) -> None:
        if self.listening is not None:
            self.listening.close()
            self.listening = None

    async def close(self, graceful: bool = True) -> None:
        try:
            await super().close(graceful)
        finally:
            self.drop_listening()


class SessionlessClient(modern.Client):
    """Revision 2026-07-28: every request a POST of its own, checked."""

    def __init__(self, http: aiohttp.ClientSession, base: str, timeout: float) -> None:
        super().__init__(http, base, timeout, "mix")
        self._headers["MCP-Protocol-Version"] = MODERN_VERSION

    def _request(
        self, method: str, params: dict[str, Any], name: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        rid = next(self._ids)
        headers = {**self._headers, "Mcp-Method": method}
        if name is not None:
            headers["Mcp-Name"] = name
        meta = {**params.get("_meta", {}), **MODERN_META}
        return rid, load.rpc(method, rid, {**params, "_meta": meta}), headers

    async def call(
        self, method: str, params: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        rid, body, headers = self._request(method, params, name)
        answer, message = await self._post(body, rid, headers)
        if "Mcp-Session-Id" in answer:
            raise RequestFailed("2026: answer has Mcp-Session-Id")
        result = result_of(message)
        if result.get("resultType") != "complete":
            raise RequestFailed("2026: resultType not complete")
        return result

    async def echo(self) -> None:
        text = f"{self.tag}.{secrets.token_hex(6)}"
        params = {"name": "echo", "arguments": {"text": text}}
        check_echo(await self.call("tools/call", params, "echo"), text)

    async def list_tools(self) -> None:
        check_tools(await self.call("tools/list", {}))

    async def add(self) -> None:
        a, b = secrets.randbelow(1000), secrets.randbelow(1000)
        params = {"name": "add", "arguments": {"a": a, "b": b}}
        check_add(await self.call("tools/call", params, "add"), a + b)

    async def _slow(self, drop: bool) -> None:
        token = f"{self.tag}.{secrets.token_hex(4)}"
        params = {"name": "slow", "arguments": {"steps": SLOW_STEPS, "delay": SLOW_DELAY},
                  "_meta": {"progressToken": token}}  # fmt: skip
        rid, body, headers = self._request("tools/call", params, "slow")
        async with self._http.post(self._url, data=body, headers=headers) as resp:
            if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                raise await refused(resp, "2026 slow")
            last = 0.0
            while (event := await next_event(resp)) is not None:
                if not event.data:
                    continue
                message = modern.parse_json(event.data)
                progress = progress_of(message, token)
                if progress is not None:
                    if progress <= last:
                        raise RequestFailed("progress repeated or out of order")
                    if drop:
                        return  # closing the connection cancels the call
                    last = progress
                elif message.get("id") == rid:
                    result = result_of(message)
                    if result.get("resultType") != "complete":
                        raise RequestFailed("2026: resultType not complete")
                    check_slow(result)
                    if last != SLOW_STEPS:
                        raise RequestFailed(f"result after progress {last:g} of {SLOW_STEPS}")
                    return
            raise RequestFailed("stream ended without the response")

    async def slow(self) -> None:
        await self._slow(drop=False)

    async def slow_drop(self) -> None:
        await self._slow(drop=True)


# -- the gateway and what is sampled ---------------------------------------------------


@dataclass
class Sample:
    t: float
    rss: float  # MiB
    fds: int
    procs: int  # descendants of the gateway
    store: int  # bytes: the SQLite file and its -wal
    records: int | None  # session records in the store
    events: int | None  # SSE events in the store
    orphans: int | None  # ... of sessions without a record
    live: int | None  # live sessions (/healthz)
    starts: int | None  # upstream sessions the pool started so far (/readyz)
    kills: int
    evicted: int  # records the gateway evicted for the per-principal cap, so far
    counts: Counter[str]  # operations ok / expected / problems in the interval
    latencies: list[float]  # ms, of the interval's ok operations, sorted
    gw_cores: float  # the gateway and its children
    other: float  # cores busy with anything but the gateway tree and this script

    def pct(self, q: float) -> float:
        """Nearest-rank percentile of the interval's latencies (nan if none)."""
        ordered = self.latencies
        return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)] if ordered else float("nan")


def mean(values: Sequence[float]) -> float:
    """The mean of the values that are not nan (nan if none)."""
    known = [v for v in values if v == v]
    return statistics.fmean(known) if known else float("nan")


def merged(group: Sequence[Sample]) -> Sample:
    """Consecutive samples as one row: the last one's readings, the intervals' counts and
    latencies together, their cores on average."""
    last = group[-1]
    return dataclasses.replace(
        last,
        counts=sum((s.counts for s in group), Counter()),
        latencies=sorted(x for s in group for x in s.latencies),
        gw_cores=mean([s.gw_cores for s in group]),
        other=mean([s.other for s in group]),
    )


SERIES: dict[str, tuple[str, Callable[[Sample], float | None], float, float]] = {
    # name -> (unit, value, absolute tolerance, relative tolerance) over the last half
    "RSS": ("MiB", lambda s: s.rss, 2.0, 0.03),
    "fds": ("", lambda s: s.fds, 5.0, 0.10),
    "procs": ("", lambda s: s.procs, 1.0, 0.0),
    "store": ("KiB", lambda s: s.store / 1024, 256.0, 0.05),
    "records": ("", lambda s: s.records, 25.0, 0.05),
    "events": ("", lambda s: s.events, 100.0, 0.05),
    "orphans": ("", lambda s: s.orphans, 100.0, 0.05),
    "live": ("", lambda s: s.live, 10.0, 0.10),
}
VERDICT_SERIES = ("RSS", "fds", "procs", "store")
LEGEND = """\
RSS, fds (/proc/PID/fd), procs (descendants) of the gateway; store = the SQLite file and
its -wal; records, events = session and SSE event rows in it; orphan = events of sessions
without a record; live = /healthz sessions; evicted = records the gateway evicted for the
per-principal cap so far (its records_evicted log lines); starts = the pool's upstream
starts (/readyz); kills so far; ok / expect(ed failures) / probl(ems) since the row
before, p50 / p99 of those ok; gw cpu, other = cores busy with the gateway and its
children, and with anything else but this script (other programs)."""


ROW_COUNTS = (
    "SELECT COUNT(*) FROM bridge_sessions",
    "SELECT COUNT(*) FROM bridge_events",
    "SELECT COUNT(*) FROM bridge_events e JOIN bridge_streams s ON e.stream_id = s.id"
    " WHERE s.session_id NOT IN (SELECT session_id FROM bridge_sessions)",
)


class GatewayChild(Child):
    """The gateway's process; counts the session records it evicted for the per-principal
    cap (its ``records_evicted`` log lines, at info level)."""

    def __init__(self, name: str, argv: Sequence[str], **kwargs: Any) -> None:
        super().__init__(name, argv, **kwargs)
        self.evicted = 0
        self.stderr: deque[str] = deque(maxlen=CRASH_LINES)  # the stdio servers' last lines
        #: (how, its stderr's last lines logged before, and the first ones logged after)
        self.crashes: list[tuple[str, list[str]]] = []
        self.on_crash: Callable[[], None] | None = None  # told of each, when it happens

    def _notable(self, line: str) -> bool:
        if '"child_stderr"' in line:
            with contextlib.suppress(ValueError, TypeError):
                text = str(json.loads(line).get("line"))
                if not UPSTREAM_REQUEST.search(text):  # FastMCP's line per request
                    self.stderr.append(text)
                    if self.crashes and len(self.crashes[-1][1]) < 2 * CRASH_LINES:
                        self.crashes[-1][1].append(text)  # logged after the exit was seen
        elif '"records_evicted"' in line:
            with contextlib.suppress(ValueError, TypeError):
                self.evicted += int(json.loads(line).get("count", 0))
        elif '"upstream_lost"' in line and "exited with status" in line:
            with contextlib.suppress(ValueError, TypeError):
                reason = str(json.loads(line).get("reason"))
                self.crashes.append((reason, list(self.stderr)))
                if self.on_crash is not None:
                    self.on_crash()
        return super()._notable(line)


class Gateway:
    """The gateway process, its stdio children, and the readings of a sample."""

    def __init__(self, child: GatewayChild, base: str, db: Path) -> None:
        assert child.pid is not None
        self.child = child
        self.pid = child.pid
        self.proc = psutil.Process(child.pid)
        self.base = base
        self.db = db
        self.seen: set[int] = set()  # every stdio child ever seen, killed at exit
        self.kills: list[tuple[float, int]] = []
        self.cpu_mark: tuple[float, float, float, float] | None = None

    def upstream_children(self) -> list[psutil.Process]:
        out = []
        with contextlib.suppress(psutil.Error):
            for proc in self.proc.children():
                with contextlib.suppress(psutil.Error):
                    if any(UPSTREAM_MARK in a for a in proc.cmdline()):
                        out.append(proc)
                        self.seen.add(proc.pid)
        return out

    def kill_one(self, rng: random.Random, t: float) -> str:
        children = self.upstream_children()
        if not children:
            return "no stdio child to kill"
        victim = rng.choice(children)
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.Error as exc:
            return f"kill {victim.pid}: {exc.__class__.__name__}"
        self.kills.append((t, victim.pid))
        return ""

    def tree_cpu(self) -> float:
        """CPU seconds of the gateway, its reaped children and its live descendants."""
        total = 0.0
        with contextlib.suppress(psutil.Error):
            t = self.proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            for proc in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = proc.cpu_times()
                    total += c.user + c.system
        return total

    def read(
        self,
    ) -> tuple[float, int, int, int, tuple[int | None, int | None, int | None], float, float]:
        """(RSS MiB, fds, descendants, store bytes, (records, events, orphan events), gateway
        cores, other cores); blocking, run in a thread."""
        rss, fds, procs = float("nan"), -1, -1
        with contextlib.suppress(psutil.Error, OSError):
            rss = self.proc.memory_info().rss / MiB
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            procs = len(self.proc.children(recursive=True))
        self.upstream_children()  # remember every child seen
        store = 0
        for path in (self.db, self.db.with_name(self.db.name + "-wal")):
            with contextlib.suppress(OSError):
                store += path.stat().st_size
        now = time.perf_counter()
        mark = (now, load.machine_busy_seconds(), self.tree_cpu(), sum(os.times()[:2]))
        gw = other = float("nan")
        if self.cpu_mark is not None:
            t0, m0, g0, b0 = self.cpu_mark
            dt = max(now - t0, 1e-3)
            gw = (mark[2] - g0) / dt
            other = max(0.0, (mark[1] - m0) - (mark[2] - g0) - (mark[3] - b0)) / dt
        self.cpu_mark = mark
        return rss, fds, procs, store, self.rows(), gw, other

    def rows(self) -> tuple[int | None, int | None, int | None]:
        """(session records, SSE events, events of sessions without a record) in the store,
        read in one transaction of a read-only connection."""
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error:
            return None, None, None
        try:
            conn.execute("BEGIN")
            counts = [conn.execute(query).fetchone()[0] for query in ROW_COUNTS]
            return int(counts[0]), int(counts[1]), int(counts[2])
        except sqlite3.Error:
            return None, None, None
        finally:
            conn.close()

    async def endpoints(
        self, http: aiohttp.ClientSession, seconds: float
    ) -> tuple[int | None, int | None]:
        """(live sessions from /healthz, the pool's upstream starts from /readyz)."""
        live = starts = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(seconds), http.get(f"{self.base}/healthz") as resp:
                live = int((await resp.json())["sessions"])
        with contextlib.suppress(Exception):
            async with asyncio.timeout(seconds), http.get(f"{self.base}/readyz") as resp:
                starts = int((await resp.json())["upstreams"]["default"]["pool"]["starts"])
        return live, starts


async def sample(
    gw: Gateway, http: aiohttp.ClientSession, stats: Stats, t: float, seconds: float
) -> Sample:
    counts, latencies = stats.take()
    rss, fds, procs, store, rows, gw_cores, other = await asyncio.to_thread(gw.read)
    records, events, orphans = rows
    live, starts = await gw.endpoints(http, seconds)
    return Sample(t, rss, fds, procs, store, records, events, orphans, live, starts,
                  len(gw.kills), gw.child.evicted, counts, sorted(latencies), gw_cores,
                  other)  # fmt: skip


# -- the run --------------------------------------------------------------------------


async def soak(
    args: argparse.Namespace, children: list[Child], tmp: Path, reports: list[Report]
) -> None:
    """Start the gateway, run the load, sample; ``reports`` gets the report at once, so a
    deadline still leaves the samples taken so far."""
    db = tmp / "soak.db"
    store_url = f"sqlite://{db}"  # tmp is absolute: sqlite:///tmp/...
    argv = load.gateway_argv(UPSTREAM_CMD, args.gateway_log_level, store_url, "--stdio")
    argv += args.gateway_arg
    child = GatewayChild("gateway", argv, stage=0)
    children.append(child)
    port = await load.start_gateway_child(child)
    gw = Gateway(child, f"http://{HOST}:{port}", db)
    report = Report(args, gw)
    reports.append(report)
    extra = f"  {' '.join(args.gateway_arg)}" if args.gateway_arg else ""
    print(f"gateway {gw.base}/mcp  --stdio {UPSTREAM_CMD!r}  --store-url {store_url}{extra}",
          flush=True)  # fmt: skip
    print(f"{args.clients} clients for {args.minutes:g} min; a stdio child killed every "
          f"{args.kill_every:g} s; samples every {args.sample_every:g} s", flush=True)  # fmt: skip

    loop = asyncio.get_running_loop()
    stats = report.stats
    duration = args.minutes * 60
    rng = random.Random(args.seed)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        t0 = loop.time()

        def clock() -> float:
            return loop.time() - t0

        def crashed() -> None:
            stats.crashes.append(clock())
            stats.crashed.set()

        gw.child.on_crash = crashed

        async def killer() -> None:
            k = 0
            while (at := args.kill_every * (k + 0.5)) < duration:
                await asyncio.sleep(max(0.0, at - clock()))
                note = await asyncio.to_thread(gw.kill_one, rng, clock())
                if note:
                    stats.notes[note] += 1
                k += 1

        soakers = [
            Soaker(http, gw.base, args, stats, random.Random(rng.random()), clock)
            for _ in range(args.clients)
        ]
        tasks = [loop.create_task(s.run(duration), name=f"client {i}")
                 for i, s in enumerate(soakers)]  # fmt: skip
        tasks.append(loop.create_task(killer(), name="killer"))
        try:
            k = 0
            while (at := args.sample_every * k) <= duration + 1e-6:
                await asyncio.sleep(max(0.0, at - clock()))
                s = await sample(gw, http, stats, at, min(args.timeout, args.sample_every))
                report.samples.append(s)
                print(report.row(s), flush=True)
                k += 1
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception):  # a bug in this script: say so
                    stats.problems[f"bench: {load.classify(outcome)}"] += 1


class Report:
    """The samples, the outcomes, and the summary printed at the end."""

    HEAD = (
        f"{'t s':>5} | {'RSS MiB':>7} {'fds':>5} {'procs':>5} {'store KiB':>9} {'records':>7} "
        f"{'events':>6} {'orphan':>6} "
        f"{'live':>5} {'evicted':>7} {'starts':>6} {'kills':>5} | "
        f"{'ok':>5} {'expect':>6} {'probl':>5} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'gw cpu':>6} {'other':>5}"
    )

    def __init__(self, args: argparse.Namespace, gw: Gateway) -> None:
        self.args = args
        self.gw = gw
        self.stats = Stats(kills=gw.kills)
        self.samples: list[Sample] = []

    @staticmethod
    def row(s: Sample) -> str:
        def opt(v: int | None, w: int) -> str:
            return f"{'-':>{w}}" if v is None else f"{v:>{w}d}"

        return (
            f"{s.t:>5.0f} | {s.rss:>7.1f} {s.fds:>5d} {s.procs:>5d} {s.store / 1024:>9.0f} "
            f"{opt(s.records, 7)} {opt(s.events, 6)} {opt(s.orphans, 6)} {opt(s.live, 5)} "
            f"{s.evicted:>7d} {opt(s.starts, 6)} {s.kills:>5d} | "
            f"{s.counts['ok']:>5d} {s.counts['expected']:>6d} {s.counts['problems']:>5d} "
            f"{load.num(s.pct(50), 7)} {load.num(s.pct(99), 7)} | {load.num(s.gw_cores, 6)} "
            f"{load.num(s.other, 5)}"
        )

    def series(self) -> tuple[list[str], bool]:
        """Lines for each series (medians, slope, flat?) and whether the verdict's are flat."""
        samples = self.samples
        end = samples[-1].t if samples else 0.0
        half = end / 2
        lines = [
            f"{'series':<8} {'first min':>10} {'last min':>10} {'slope/min':>10} "
            f"{'x half run':>10} {'tolerance':>10}  flat?",
        ]
        flat_all = True
        for name, (unit, value, absolute, relative) in SERIES.items():
            points = [(s.t, v) for s in samples if (v := value(s)) is not None and v == v]
            first = load.med([v for t, v in points if t <= 60])
            last = load.med([v for t, v in points if t >= end - 60])
            tail = [(t, v) for t, v in points if t >= half]
            slope = slope_per_min(tail)
            change = abs(slope) * half / 60
            tolerance = max(absolute, relative * abs(last)) if last == last else absolute
            flat = change <= tolerance if slope == slope else False
            if name in VERDICT_SERIES:
                flat_all = flat_all and flat
            label = f"{name} {unit}".strip()
            lines.append(
                f"{label:<8} {load.num(first, 10)} {load.num(last, 10)} {slope:>+10.3f} "
                f"{change:>10.2f} {tolerance:>10.2f}  {'yes' if flat else 'NO'}"
                + ("" if name in VERDICT_SERIES else "  (not in the verdict)")
            )
        return lines, flat_all

    def print(self, status: int) -> int:
        stats, samples = self.stats, self.samples
        every = self.args.table_every
        print(f"\nsamples every {self.args.sample_every:g} s, a row every {every:g} s (the "
              f"counts, p50, p99 and cores of the\n{every:g} s before it)\n{self.HEAD}\n"
              f"{'-' * len(self.HEAD)}")  # fmt: skip
        group: list[Sample] = []
        for i, s in enumerate(samples):
            group.append(s)
            if abs(s.t / every - round(s.t / every)) < 1e-6 or i == len(samples) - 1:
                print(self.row(merged(group)))
                group = []
        print(LEGEND)
        if not samples:
            return status or 1
        lines, flat = self.series()
        end = samples[-1].t
        print(f"\nslope = least squares over the last half (t >= {end / 2:.0f} s), per minute; "
              "x half run = |slope| x the last half's minutes;\nflat = that within the "
              "tolerance (absolute, or relative to the last minute's median)")  # fmt: skip
        print("\n".join(lines))
        ok, expected, problems = (sum(c.values()) for c in (stats.ok, stats.expected,
                                                             stats.problems))  # fmt: skip
        print(f"\noperations: {ok + expected + problems} = ok {ok} + failed as expected "
              f"{expected} + problems {problems}")  # fmt: skip
        print("  ok by op: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.ok.items())))
        kills = self.gw.kills
        print(f"  stdio children killed: {len(kills)} (pids {', '.join(str(p) for _, p in kills)})")
        for title, counter in (("expected failures (-32030 / -31030 while a child was killed)",
                                stats.expected), ("PROBLEMS", stats.problems),
                               ("notes", stats.notes)):  # fmt: skip
            if counter:
                print(f"  {title}:")
                for key, count in counter.most_common():
                    print(f"    {count:6d}  {key}")
        if stats.examples:
            print(f"  problem examples (the first {EXAMPLES} of each kind):")
            for key, lines in stats.examples.items():
                print(f"    {key}")
                for line in lines:
                    print(f"      {line}")
        crashes = self.gw.child.crashes
        if crashes:
            print(
                f"  stdio servers that exited by themselves: {len(crashes)}; the first: "
                f"{crashes[0][0]}\n  its stderr around its exit, as logged (rate-limited):"
            )
            for line in crashes[0][1]:
                print(f"    {line[:200]}")
        others = [s.other for s in samples if s.other == s.other]
        if others:
            print(f"other load: median {statistics.median(others):.2f} cores, max "
                  f"{max(others):.2f} (of {os.cpu_count()})")  # fmt: skip
        verdict = "FLAT" if flat else "NOT FLAT"
        print(
            f"verdict: {verdict} ({', '.join(VERDICT_SERIES)} over the last half), "
            f"{problems} problem(s), {expected} expected failure(s) around {len(kills)} kill(s), "
            f"{end / 60:.1f} min"
        )
        return status or (0 if flat and not problems else 1)


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute (nan under 2 points)."""
    if len(points) < 2:
        return float("nan")
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den * 60 if den else float("nan")


async def amain(args: argparse.Namespace) -> int:
    children: list[Child] = []
    loop = asyncio.get_running_loop()
    hard_stop = loop.time() + args.max_seconds
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    tmp = Path(tempfile.mkdtemp(prefix="mcp-bridge-soak-"))
    reports: list[Report] = []
    status = 0
    gw_seen: set[int] = set()
    try:
        async with asyncio.timeout_at(hard_stop - load.RESERVE - load.STOP_GRACE):
            await soak(args, children, tmp, reports)
    except TimeoutError:
        print(f"\nGLOBAL DEADLINE: --max-seconds {args.max_seconds:g} reached; results are partial")
        status = 3
    finally:
        if reports:
            gw_seen = reports[0].gw.seen
        elif children and children[0].pid is not None:
            with contextlib.suppress(psutil.Error):
                gw_seen = {p.pid for p in psutil.Process(children[0].pid).children(True)}
        try:
            grace = max(1.0, min(load.STOP_GRACE, (hard_stop - loop.time()) / 2))
            await asyncio.gather(*(c.stop(grace) for c in children))
        finally:
            for child in children:
                child.kill_now()
            for pid in gw_seen:  # a stdio child the gateway left behind
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            shutil.rmtree(tmp, ignore_errors=True)
        for child in children:
            load.report_stderr(child)
    if not reports:
        return status or 1
    return reports[0].print(status)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument(
        "--think",
        type=float,
        default=0.05,
        help="mean seconds a client waits between operations (uniform 0-2x)",
    )
    p.add_argument(
        "--abandon",
        type=float,
        default=0.3,
        help="share of sessions left without a DELETE (default 0.3)",
    )
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds between child kills")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    p.add_argument(
        "--table-every", type=float, default=30.0,
        help="seconds between the rows of the table printed at the end (a multiple of "
        "--sample-every; default 30)",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per operation")
    p.add_argument("--seed", type=int, default=15, help="random seed of the load")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="global deadline (default: the load + 120 s)",
    )
    p.add_argument(
        "--gateway-log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="the gateway's --log-level (default info, as deployed: one log line per request)",
    )  # fmt: skip
    p.add_argument(
        "--gateway-arg", action="append", default=[],
        help="extra gateway argument (repeat), e.g. --gateway-arg=--max-records-per-principal=200",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.sample_every <= 0 or args.kill_every <= 0:
        p.error("--minutes, --clients, --sample-every and --kill-every must be positive")
    ratio = args.table_every / args.sample_every
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
        p.error("--table-every must be a multiple of --sample-every")
    if not 0 <= args.abandon <= 1:
        p.error("--abandon is a share, 0 to 1")
    if args.max_seconds is None:
        args.max_seconds = args.minutes * 60 + 120
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return load.run_main(amain, parse_args(argv), "soak.py")


if __name__ == "__main__":
    raise SystemExit(main())
