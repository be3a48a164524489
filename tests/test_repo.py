"""Repository checks: lint, types, and docs that must not drift from the code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["ruff", "check", "."], id="ruff-check"),
        pytest.param(["ruff", "format", "--check", "."], id="ruff-format"),
        pytest.param(["mypy"], id="mypy-strict"),
    ],
)
def test_static_checks(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_lists_every_setting() -> None:
    for name in Settings.model_fields:
        assert f"`BRIDGE_{name.upper()}`" in README, name
        assert f"`--{name.replace('_', '-')}`" in README, name


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    test_command = "python -m pytest"
    assert f"\n{test_command}\n" in README
    assert ci.rstrip().endswith(test_command)
