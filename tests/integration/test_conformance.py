"""The official MCP conformance suite against the gateway (spec-notes §5.1-5.2).

``@modelcontextprotocol/conformance`` (pinned in tests/npm/package.json, run on
the Node 22 binary that the ``node`` npm package brings) is pointed at the
gateway's ``/mcp`` on localhost; behind the gateway sits the conformance
fixture server (tests/fixtures/conformance_server.py), once over stdio, once
over legacy HTTP+SSE and once over Streamable HTTP.

Every server scenario of revision 2025-11-25 must run, pass its checks and
fail none; ``server-sse-polling`` must also raise no warning (its priming
event and ``retry`` checks only warn when missing).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import (
    FIXTURE_SERVER,
    NODE22_BIN,
    NPM_BIN,
    ProcFactory,
    start_fixture_http,
    start_fixture_sse,
    start_gateway,
)

SUITE_TIMEOUT = 600.0  # seconds for one whole suite run (about 45 s here)
#: `conformance list`, server scenarios tagged 2025-11-25.
REQUIRED = frozenset(
    {
        "server-initialize", "logging-set-level", "ping", "completion-complete",
        "tools-list", "tools-call-simple-text", "tools-call-image", "tools-call-audio",
        "tools-call-embedded-resource", "tools-call-mixed-content", "tools-call-with-logging",
        "tools-call-error", "tools-call-with-progress", "tools-call-sampling",
        "tools-call-elicitation", "json-schema-2020-12", "elicitation-sep1034-defaults",
        "server-sse-polling", "server-sse-multiple-streams", "elicitation-sep1330-enums",
        "resources-list", "resources-read-text", "resources-read-binary",
        "resources-templates-read", "resources-subscribe", "resources-unsubscribe",
        "prompts-list", "prompts-get-simple", "prompts-get-with-args",
        "prompts-get-embedded-resource", "prompts-get-with-image", "dns-rebinding-protection",
    }
)  # fmt: skip


def collect(results: Path) -> dict[str, Counter[str]]:
    """Scenario name -> count of check statuses (SUCCESS, FAILURE, WARNING, INFO)."""
    by_scenario: dict[str, Counter[str]] = {}
    for checks in results.glob("server-*/checks.json"):
        # Directory names are "server-<scenario>-<ISO timestamp>".
        name = checks.parent.name.removeprefix("server-").rsplit("-", 6)[0]
        by_scenario[name] = Counter(c["status"] for c in json.loads(checks.read_text()))
    return by_scenario


async def run_suite(procs: ProcFactory, url: str, out: Path) -> dict[str, Counter[str]]:
    suite = await procs(
        NPM_BIN / "conformance", "server", "--url", url, "--suite", "all",
        "--spec-version", "2025-11-25", "-o", out,
        env={"PATH": f"{NODE22_BIN}:{NPM_BIN}:/usr/local/bin:/usr/bin:/bin"},
        cwd=out,
    )  # fmt: skip
    code = await suite.exited(SUITE_TIMEOUT)
    results = collect(out)
    summary = "\n".join(
        f"{name}: {c['SUCCESS']} passed, {c['FAILURE']} failed, {c['WARNING']} warnings"
        for name, c in sorted(results.items())
    )
    print(summary)
    assert code == 0, "\n".join(suite.lines[-60:])
    return results


@pytest.mark.parametrize("share", ["none", "principal"])
@pytest.mark.parametrize("upstream", ["stdio", "legacy-sse", "streamable-http"])
async def test_conformance_suite_through_gateway(
    upstream: str, share: str, procs: ProcFactory, tmp_path: Path
) -> None:
    """Each upstream kind, with an upstream per client and shared (issue #10)."""
    if upstream == "stdio":
        args = ["--stdio", f"{sys.executable} {FIXTURE_SERVER}"]
    elif upstream == "legacy-sse":
        args = ["--sse", await start_fixture_sse(procs)]
    else:  # no flag for it: a config file, beside (not among) the suite's results
        _, url = await start_fixture_http(procs)
        config = tmp_path / "servers.json"
        config.write_text(json.dumps({"mcpServers": {"fixture": {"url": url, "type": upstream}}}))
        args = ["--config", str(config)]
    _, base = await start_gateway(procs, *args, "--share", share)
    results = await run_suite(procs, base.replace("127.0.0.1", "localhost") + "/mcp", tmp_path)

    assert set(results) >= REQUIRED, f"not run: {sorted(REQUIRED - set(results))}"
    failed = {name: c["FAILURE"] for name, c in results.items() if c["FAILURE"]}
    assert not failed, failed
    for name in REQUIRED:
        assert results[name]["SUCCESS"] >= 1, name
    assert results["server-sse-polling"]["WARNING"] == 0
