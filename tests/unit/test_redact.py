"""What :func:`bridge.log.redact` hides in a stdio child's stderr, and what it keeps."""

from __future__ import annotations

import time

import pytest

from bridge.log import redact


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("Authorization: Bearer abc.DEF-123", "Authorization: Bearer [redacted]"),
        ("basic dXNlcjpwYXNz", "basic [redacted]"),
        ("api_key=k1&x=1", "api_key=[redacted]&x=1"),
        ('{"password": "hunter2"}', '{"password": "[redacted]"}'),
        ("SECRET=s TOKEN: t", "SECRET=[redacted] TOKEN: [redacted]"),
        ("https://u:p@example.com/x", "https://[redacted]@example.com/x"),
        ("redis://:pw@cache:6379/0", "redis://[redacted]@cache:6379/0"),
        ("id " + "ab12" * 8, "id [redacted]"),
        ("tok ghp_" + "aB3" * 12, "tok [redacted]"),
        ("jwt eyJhbGciOiJ.eyJzdWIiOiJ4In0.c2ln", "jwt [redacted]"),
    ],
)
def test_credentials_are_redacted(line: str, shown: str) -> None:
    assert redact(line) == shown


@pytest.mark.parametrize(
    "line",
    [
        "fatal: /tmp/pytest-of-ci/pytest-12/test_crash_loop_backs_off_sho0/fixed is missing",
        "x" * 500,
        "Traceback (most recent call last):",
        "the token is invalid; keyboard interrupt",
        "listening on http://127.0.0.1:8000/sse",
    ],
)
def test_ordinary_lines_are_kept(line: str) -> None:
    assert redact(line) == line


@pytest.mark.parametrize("unit", ["a", "a.", "key", "eyJ", "://", "0", "ke", "Bearer ", "key "])
def test_hostile_lines_cost_little(unit: str) -> None:
    line = unit * (20_000 // len(unit))  # ten times the longest line the gateway keeps
    started = time.perf_counter()
    redact(line)
    # Seconds: linear patterns take milliseconds here, quadratic ones took 4 s.
    assert time.perf_counter() - started < 0.5
