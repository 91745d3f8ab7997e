"""Fixtures for the Helm chart tests: tools on PATH and a per-session render cache.

Every values set is rendered once per session (``helm template`` with
``--include-crds``) and shared by all tests that read it. Renders use the
real helm v4 binary from ``.tools/bin`` (``make tools``); without it the
tests skip locally and fail in CI (``require_tool``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.conftest import ROOT, require_tool

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import ModuleType

CHART = ROOT / "charts" / "resonate-patterns"
CI_DIR = CHART / "ci"
#: Every ci/<feature>-values.yaml, by feature name ("default", "two-groups", ...).
CI_VALUES: dict[str, Path] = {
    p.name.removesuffix("-values.yaml"): p for p in sorted(CI_DIR.glob("*-values.yaml"))
}
RELEASE = "rp"
NAMESPACE = "rp-ns"

# The Makefile runs pytest with .tools/bin first on PATH; do the same when run directly.
_TOOLS = str(ROOT / ".tools" / "bin")
if _TOOLS not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _TOOLS + os.pathsep + os.environ.get("PATH", "")

#: Kinds that run pods, and where their pod spec lives.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "Pod": ("spec",),
}


@dataclass
class Rendered:
    """The objects of one ``helm template`` run."""

    docs: list[dict[str, Any]]
    text: str = field(repr=False)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        assert found, f"no {kind} named {name}; have {[d['metadata']['name'] for d in self.docs]}"
        return found[0]

    def component(self, kind: str, component: str) -> list[dict[str, Any]]:
        return [
            d
            for d in self.kind(kind)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]

    def pod_specs(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(object, pod spec) for every object that runs pods."""
        for doc in self.docs:
            path = POD_SPEC_PATHS.get(doc["kind"])
            if path is None:
                continue
            spec: Any = doc
            for key in path:
                spec = spec[key]
            yield doc, spec


def helm_run(*args: str, binary: str = "helm") -> subprocess.CompletedProcess[str]:
    """Run helm (or helm3) with ``args``; never raises on a non-zero exit."""
    return subprocess.run(
        [require_tool(binary), *args], capture_output=True, text=True, check=False, timeout=120
    )


def template_args(
    values: Path | None = None,
    sets: tuple[str, ...] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--include-crds"]
    if values is not None:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set", s]
    return args


_cache: dict[tuple[Any, ...], Rendered] = {}


def render(
    values: Path | None = None,
    sets: tuple[str, ...] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """``helm template`` of the chart (cached per session); fails the test on a helm error."""
    key = (values, sets, release, namespace)
    if key not in _cache:
        done = helm_run(*template_args(values, sets, release, namespace))
        assert done.returncode == 0, done.stderr
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        _cache[key] = Rendered(docs, done.stdout)
    return _cache[key]


@pytest.fixture(scope="session")
def rendered() -> Callable[..., Rendered]:
    """The cached renderer: ``rendered(values_path=None, sets=(), release=..., namespace=...)``."""
    return render


@pytest.fixture(params=sorted(CI_VALUES), scope="session")
def ci_render(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    """(feature name, render) for each ci/*-values.yaml."""
    name = str(request.param)
    return name, render(CI_VALUES[name])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def render_manifests() -> ModuleType:
    """scripts/render_manifests.py (the k8s/ and values-table generator) as a module."""
    path = ROOT / "scripts" / "render_manifests.py"
    spec = importlib.util.spec_from_file_location("render_manifests", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
