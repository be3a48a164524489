"""The distribution as PyPI would get it: name, licence, metadata, commands (issue #14).

Builds the wheel (``pip wheel``, as a release would) and reads what is in it.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIST = PYPROJECT["project"]["name"]
README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [path] = out.glob("*.whl")
    return zipfile.ZipFile(path)


def _member(wheel: zipfile.ZipFile, suffix: str) -> str:
    [name] = [n for n in wheel.namelist() if n.endswith(suffix)]
    return wheel.read(name).decode()


def test_the_distribution_is_not_the_other_mcp_bridge() -> None:
    # PyPI's "mcp-bridge" is an unrelated project: `pipx install mcp-bridge` gets it.
    assert DIST not in ("mcp-bridge", "mcp_bridge")


def test_wheel_carries_the_licence(wheel: zipfile.ZipFile) -> None:
    licence = _member(wheel, ".dist-info/licenses/LICENSE")
    assert licence.startswith("MIT License")
    assert licence == (REPO / "LICENSE").read_text()


def test_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    meta = email.parser.Parser().parsestr(_member(wheel, ".dist-info/METADATA"))
    assert meta["Name"] == DIST
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    from bridge import __version__

    assert meta["Version"] == __version__


def test_wheel_commands(wheel: zipfile.ZipFile) -> None:
    scripts = _member(wheel, ".dist-info/entry_points.txt")
    assert "mcp-bridge = bridge.cli:main" in scripts
    # `uvx NAME` runs the command named like the distribution.
    assert f"{DIST} = bridge.cli:main" in scripts


def test_readme_install_lines_name_the_distribution() -> None:
    assert f"pipx install {DIST}" in README
    assert f"uvx {DIST}" in README


def test_every_dependency_has_a_floor_and_ci_installs_the_floors() -> None:
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        assert any(spec.operator == ">=" for spec in requirement.specifier), line
    ci = (REPO / ".ci" / "run").read_text()
    assert "--resolution lowest-direct" in ci


def test_license_file_is_in_the_repository() -> None:
    assert Path(REPO / "LICENSE").is_file()
