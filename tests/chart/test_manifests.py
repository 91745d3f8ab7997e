"""k8s/: the plain manifests match a fresh render of the chart, and the chaos kit targets workers.

The generated files are compared with what scripts/render_manifests.py
renders now (so a chart change without `make manifests` fails here), the
kustomization is built with the real kubectl, and the chaos manifests and
the kubectl kill loop are checked against the workers' pod labels; the loop
runs for real against a stub kubectl.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, load_yaml, render_manifests
from tests.conftest import ROOT, require_tool

K8S = ROOT / "k8s"
CHAOS = K8S / "chaos"
KILL_SCRIPT = CHAOS / "kill-random-worker.sh"


@cache
def k8s_objects() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if "chaos" in path.relative_to(K8S).parts or path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def worker_pod_labels() -> dict[str, str]:
    (deployment,) = [
        d
        for d in k8s_objects()
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_k8s__in_sync_with_a_fresh_render_of_the_chart() -> None:
    require_tool("helm")
    module = render_manifests()
    expected = module.render_k8s()
    actual = module.generated_files(K8S)
    assert sorted(actual) == sorted(expected), "run `make manifests`"
    stale = [p for p in expected if expected[p] != actual[p]]
    assert not stale, f"stale files (run `make manifests`): {stale}"


def test_render_manifests_check__exits_zero_when_in_sync() -> None:
    require_tool("helm")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_manifests.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr


def test_k8s__write_removes_stale_generated_files_and_keeps_hand_written_ones(
    tmp_path: Path,
) -> None:
    module = render_manifests()
    (tmp_path / "chaos").mkdir()
    (tmp_path / "chaos" / "mine.yaml").write_text(module.HEADER + "\nkeep: me\n")
    (tmp_path / "old.yaml").write_text(module.HEADER + "\nold: true\n")
    (tmp_path / "notes.txt").write_text("not generated\n")
    module.write_k8s({"kustomization.yaml": module.HEADER + "\n", "crds/a.yaml": "x\n"}, tmp_path)
    assert not (tmp_path / "old.yaml").exists()
    assert (tmp_path / "chaos" / "mine.yaml").exists()
    assert (tmp_path / "notes.txt").exists()
    assert (tmp_path / "crds" / "a.yaml").read_text() == "x\n"


def test_k8s__kustomize_builds_every_object_including_crds_and_namespace() -> None:
    kubectl = require_tool("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(map(key, built)) == sorted(map(key, k8s_objects()))
    kinds = {d["kind"] for d in built}
    assert {"Namespace", "CustomResourceDefinition", "WorkerAutoscaler", "Deployment"} <= kinds
    assert not any(d["kind"] == "Pod" for d in built), "the helm test pod is not a manifest"
    crds = subprocess.run(
        [kubectl, "kustomize", str(K8S / "crds")], capture_output=True, text=True, check=False
    )
    assert crds.returncode == 0, crds.stderr
    crd_kinds = {d["kind"] for d in yaml.safe_load_all(crds.stdout) if d}
    assert crd_kinds == {"CustomResourceDefinition"}


def test_k8s__one_namespace_holds_every_namespaced_object() -> None:
    (namespace,) = [d for d in k8s_objects() if d["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    for doc in k8s_objects():
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == name, doc["metadata"]["name"]
    assert len({p.name for p in (CHART / "crds").glob("*.yaml")}) == len(
        [d for d in k8s_objects() if d["kind"] == "CustomResourceDefinition"]
    )


# -- chaos -------------------------------------------------------------------------------------


def _pod_chaos_specs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(CHAOS.glob("*.yaml")):
        doc = load_yaml(path)
        assert doc["apiVersion"] == "chaos-mesh.org/v1alpha1", path.name
        if doc["kind"] == "PodChaos":
            found.append((path.name, doc["spec"]))
        elif doc["kind"] == "Schedule":
            assert doc["spec"]["type"] == "PodChaos"
            assert doc["spec"]["schedule"]
            assert doc["spec"]["concurrencyPolicy"] in ("Forbid", "Allow")
            found.append((path.name, doc["spec"]["podChaos"]))
        else:
            pytest.fail(f"{path.name}: unexpected kind {doc['kind']}")
    return found


def test_chaos_mesh__pod_kill_one_worker_once_and_on_a_schedule() -> None:
    specs = _pod_chaos_specs()
    kinds = {load_yaml(CHAOS / name)["kind"] for name, _ in specs}
    assert kinds == {"PodChaos", "Schedule"}
    labels = worker_pod_labels()
    (namespace,) = [d["metadata"]["name"] for d in k8s_objects() if d["kind"] == "Namespace"]
    for name, spec in specs:
        assert (spec["action"], spec["mode"]) == ("pod-kill", "one"), name
        selector = spec["selector"]
        assert selector["namespaces"] == [namespace], name
        assert selector["labelSelectors"]["app.kubernetes.io/component"] == "worker", name
        assert all(labels.get(k) == v for k, v in selector["labelSelectors"].items()), name


def _stub_kubectl(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "kubectl.log"
    stub = tmp_path / "kubectl"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{log}"\n'
        'case "$*" in\n'
        '  *" get pods "*) printf "pod/w-1\\npod/w-2\\npod/w-3\\n" ;;\n'
        '  *" delete "*) echo "${@: -4:1} deleted" ;;\n'
        "esac\n"
    )
    stub.chmod(0o755)
    return stub, log


def test_kill_loop__deletes_one_running_worker_per_round(tmp_path: Path) -> None:
    stub, log = _stub_kubectl(tmp_path)
    env = {**os.environ, "KUBECTL": str(stub), "ITERATIONS": "3", "INTERVAL": "0"}
    done = subprocess.run(
        ["bash", str(KILL_SCRIPT)], capture_output=True, text=True, check=False, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    gets = [c for c in calls if " get pods " in c]
    deletes = [c for c in calls if " delete " in c]
    assert len(gets) == len(deletes) == 3
    selector = gets[0].split("-l ")[1].split()[0]
    labels = worker_pod_labels()
    wanted = dict(pair.split("=") for pair in selector.split(","))
    assert all(labels.get(k) == v for k, v in wanted.items())
    assert wanted["app.kubernetes.io/component"] == "worker"
    assert "--field-selector=status.phase=Running" in gets[0]
    for delete in deletes:
        assert delete.startswith("-n resonate-patterns delete pod/w-")
        assert "--grace-period=1" in delete
        assert "--force" not in delete
    assert done.stdout.count("deleting pod/w-") == 3


def test_kill_loop__force_only_with_a_zero_grace_period(tmp_path: Path) -> None:
    stub, log = _stub_kubectl(tmp_path)
    env = {**os.environ, "KUBECTL": str(stub), "ITERATIONS": "1", "GRACE": "0"}
    done = subprocess.run(
        ["bash", str(KILL_SCRIPT)], capture_output=True, text=True, check=False, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    (delete,) = [c for c in log.read_text().splitlines() if " delete " in c]
    assert "--grace-period=0" in delete
    assert "--force" in delete


def test_kill_loop__is_executable_bash() -> None:
    assert os.access(KILL_SCRIPT, os.X_OK)
    assert KILL_SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    done = subprocess.run(["bash", "-n", str(KILL_SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
