"""Dockerfile, .dockerignore and skaffold.yaml agree with each other and with the chart.

There is no Docker engine or skaffold binary here, so these are static
checks: the image is multi-stage on a pinned python:3.12 slim base, runs as
the numeric user the chart runs it as, and starts the console script
pyproject.toml defines; skaffold builds that Dockerfile under the image name
the chart uses and deploys the chart, and each profile renders.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from functools import cache
from typing import Any

import pytest

from tests.chart.conftest import CHART, Rendered, load_yaml, render
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
SKAFFOLD = ROOT / "skaffold.yaml"


@cache
def skaffold() -> dict[str, Any]:
    return dict(load_yaml(SKAFFOLD))


@cache
def values() -> dict[str, Any]:
    return dict(load_yaml(CHART / "values.yaml"))


def dockerfile_lines() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def final_stage() -> list[str]:
    lines = dockerfile_lines()
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last_from:]


def dockerignore() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder holding it) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in dockerignore():
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile__multi_stage_on_a_pinned_python_3_12_slim_base() -> None:
    lines = dockerfile_lines()
    (arg,) = [line for line in lines if line.startswith("ARG PYTHON_IMAGE=")]
    base = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.12\.\d+-slim-(bookworm|trixie)", base), base
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2
    assert froms[0].endswith(" AS builder")
    assert all(f.split()[1] == "${PYTHON_IMAGE}" for f in froms)


def test_dockerfile__final_stage_has_no_compilers_caches_or_copied_sources() -> None:
    final = "\n".join(final_stage())
    assert "build-essential" not in final
    assert "gcc" not in final
    assert "COPY " not in final  # wheels come in through a bind mount, nothing else
    assert "--mount=type=bind,from=builder" in final
    assert "--no-index" in final
    assert "PIP_NO_CACHE_DIR=1" in final


def test_dockerfile__runs_the_console_script_as_the_charts_numeric_user() -> None:
    final = final_stage()
    args = dict(
        line.removeprefix("ARG ").split("=", 1) for line in final if line.startswith("ARG ")
    )
    (user,) = [line.split()[1] for line in final if line.startswith("USER ")]
    uid, gid = (args.get(part.strip("${}"), part) for part in user.split(":"))
    pod = values()["podSecurityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])
    (entrypoint,) = [line for line in final if line.startswith("ENTRYPOINT ")]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == f'ENTRYPOINT ["{next(iter(scripts))}"]'
    assert "resonate-patterns" in scripts


def test_dockerfile__copies_only_what_exists_and_is_not_ignored() -> None:
    for line in dockerfile_lines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not ignored(source), f"{source} is in .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".git",
        ".venv",
        ".tools",
        "tests",
        "bench/out",
        ".resonate-patterns",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "service/__pycache__",
        ".hypothesis",
    ],
)
def test_dockerignore__keeps_out(path: str) -> None:
    assert ignored(path), path


# -- skaffold.yaml -----------------------------------------------------------------------------


def _release() -> dict[str, Any]:
    (release,) = skaffold()["deploy"]["helm"]["releases"]
    return dict(release)


def test_skaffold__builds_the_dockerfile_under_the_charts_image_name() -> None:
    config = skaffold()
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    assert config["kind"] == "Config"
    (artifact,) = config["build"]["artifacts"]
    assert artifact["image"] == values()["image"]["repository"]
    assert (ROOT / artifact.get("context", ".") / artifact["docker"]["dockerfile"]) == DOCKERFILE


def test_skaffold__deploys_the_chart_with_the_built_image() -> None:
    release = _release()
    chart = ROOT / release["chartPath"]
    assert chart.resolve() == CHART.resolve()
    assert load_yaml(chart / "Chart.yaml")["name"] == "resonate-patterns"
    (artifact,) = skaffold()["build"]["artifacts"]
    suffix = re.sub(r"[^A-Za-z0-9]", "_", artifact["image"])
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == "{{.IMAGE_REPO_" + suffix + "}}"
    assert templates["image.tag"].startswith("{{.IMAGE_TAG_" + suffix + "}}")
    assert set(templates) <= {"image.repository", "image.tag"}
    assert "repository" in values()["image"]
    assert "tag" in values()["image"]


def _skaffold_render(profile: str | None = None) -> Rendered:
    release = _release()
    sets = [f"{k}={v}" for k, v in release.get("setValues", {}).items()]
    files = list(release.get("valuesFiles", []))
    if profile is not None:
        (entry,) = [p for p in skaffold()["profiles"] if p["name"] == profile]
        for patch in entry.get("patches", []):
            assert patch["op"] == "add"
            field = patch["path"].rsplit("/", 1)[1]
            if field == "setValues":
                sets += [f"{k}={v}" for k, v in patch["value"].items()]
            elif field == "valuesFiles":
                files += patch["value"]
            else:
                pytest.fail(f"unexpected patch {patch['path']}")
    assert len(files) <= 1
    sets += ["image.repository=registry.local/resonate-patterns", "image.tag=abc123"]
    return render(
        ROOT / files[0] if files else None,
        tuple(sets),
        release=release["name"],
        namespace=release["namespace"],
    )


def test_skaffold__port_forwards_the_server_api_and_a_worker_metrics_port() -> None:
    rendered = _skaffold_render()
    services = {s["metadata"]["name"]: s for s in rendered.kind("Service")}
    forwards = {(f["resourceName"], f["port"]) for f in skaffold()["portForward"]}
    for forward in skaffold()["portForward"]:
        assert forward["resourceType"] == "service"
        assert forward["namespace"] == _release()["namespace"]
        service = services[forward["resourceName"]]
        assert forward["port"] in {p["port"] for p in service["spec"]["ports"]}
    components = {
        services[name]["metadata"]["labels"]["app.kubernetes.io/component"]: port
        for name, port in forwards
    }
    assert components == {"server": 8001, "worker": 9400}


def test_skaffold__profiles_dev_and_monitoring_render() -> None:
    assert {p["name"] for p in skaffold()["profiles"]} == {"dev", "monitoring"}
    dev = _skaffold_render("dev")
    (worker,) = dev.component("Deployment", "worker")
    assert worker["spec"]["replicas"] == 2
    assert not dev.kind("WorkerAutoscaler")
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.local/resonate-patterns:abc123"
    )
    monitoring = _skaffold_render("monitoring")
    kinds = {d["kind"] for d in monitoring.docs}
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds
