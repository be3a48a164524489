"""The request middleware's start line (README "Request log lines")."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import make_mocked_request

from bridge.frontends import observe


class _Lines:
    """Stands in for the module's logger: the lines it was given, and a signal."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []
        self.logged = asyncio.Event()

    def info(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))
        self.logged.set()


async def test_a_start_line_whose_timer_fires_early_waits_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timer's clock running ahead of the one the line measures with (what made
    ``running_ms`` 499.98 for a 0.5 s threshold) re-arms; the line never claims
    less than the threshold."""
    lines = _Lines()
    monkeypatch.setattr(observe, "log", lines)
    request = make_mocked_request("POST", "/mcp")
    armed = time.perf_counter()
    # Measured from 50 ms later than the timer's start: the timer fires 50 ms early.
    observe._StartLine(request, armed + 0.05, 0.1)
    await asyncio.wait_for(lines.logged.wait(), 5.0)
    assert time.perf_counter() - armed >= 0.15
    [(event, fields)] = lines.lines
    assert event == "request_start"
    assert fields["running_ms"] >= 100  # type: ignore[operator]
    assert (fields["method"], fields["path"]) == ("POST", "/mcp")


async def test_a_cancelled_start_line_is_not_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _Lines()
    monkeypatch.setattr(observe, "log", lines)
    request = make_mocked_request("POST", "/mcp")
    start_line = observe._StartLine(request, time.perf_counter() + 0.05, 0.05)
    # Let the first timer fire early and re-arm, then cancel what it re-armed.
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    loop.call_later(0.07, fired.set_result, None)
    await asyncio.wait_for(fired, 5.0)
    start_line.cancel()
    finished = loop.create_future()
    loop.call_later(0.15, finished.set_result, None)
    await asyncio.wait_for(finished, 5.0)
    assert lines.lines == []
