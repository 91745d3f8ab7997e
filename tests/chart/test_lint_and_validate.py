"""`helm lint --strict` (helm 4 and helm 3) and API-schema validation of every values set.

Every rendered object of a built-in kind is validated with kubernetes-validate
in strict mode (unknown fields are errors) against the Kubernetes 1.29 and
1.34 schemas. Custom resources have no schema there; they are checked in
test_custom_resources.py (against the chart's own CRDs) and
test_monitoring.py.
"""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import CHART, CI_VALUES, Rendered, helm_run, render

KUBE_VERSIONS = ("1.29", "1.34")
#: API groups of custom resources the chart renders (validated elsewhere).
CUSTOM_GROUPS = {"resonate-patterns.io", "kopf.dev", "monitoring.coreos.com", "keda.sh"}
#: One values set per toggle, as the house style asks.
REQUIRED_CI_SETS = {
    "default",
    "external-postgres",
    "external-server",
    "autoscaling-off",
    "monitoring-on",
    "podmonitor",
    "two-groups",
    "cluster-wide-operator",
    "operator-ha",
    "auth",
    "keda",
}


def test_ci_values__one_file_per_feature() -> None:
    assert set(CI_VALUES) >= REQUIRED_CI_SETS


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize("values", sorted(CI_VALUES))
def test_helm_lint_strict__ci_values__passes(binary: str, values: str) -> None:
    done = helm_run("lint", "--strict", str(CHART), "-f", str(CI_VALUES[values]), binary=binary)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "[WARNING]" not in output
    assert "[ERROR]" not in output


def _validate(doc: dict[str, object], kube: str) -> bool:
    """Validate one object strictly; False when kubernetes-validate has no schema for it."""
    try:
        kubernetes_validate.validate(doc, kube, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    return True


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_rendered_objects__validate_strictly_against_kubernetes(
    ci_render: tuple[str, Rendered], kube: str
) -> None:
    name, rendered = ci_render
    checked = 0
    for doc in rendered.docs:
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']} on {kube}"
        try:
            if _validate(doc, kube):
                checked += 1
                continue
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: {path}: {exc.message}")
        group = str(doc["apiVersion"]).split("/")[0]
        assert group in CUSTOM_GROUPS, f"{where}: no schema for a built-in kind"
    assert checked >= 10, f"{name}: only {checked} objects validated"


def test_strict_validation__rejects_an_unknown_field() -> None:
    """Guard for the test above: strict mode does catch a misplaced field."""
    deployment = copy.deepcopy(render().component("Deployment", "worker")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.34", strict=True)


def test_helm3_and_helm4__render_the_same_objects() -> None:
    args = ["template", "rp", str(CHART), "--namespace", "rp-ns", "--include-crds"]
    v4 = helm_run(*args)
    v3 = helm_run(*args, binary="helm3")
    assert v4.returncode == 0, v4.stderr
    assert v3.returncode == 0, v3.stderr
    assert [d for d in yaml.safe_load_all(v3.stdout) if d] == [
        d for d in yaml.safe_load_all(v4.stdout) if d
    ]


def test_helm_package__ships_crds_dashboard_and_rules_but_not_ci_values(tmp_path: Path) -> None:
    done = helm_run("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("resonate-patterns-*.tgz")
    with tarfile.open(archive) as tar:
        names = {n.removeprefix("resonate-patterns/") for n in tar.getnames()}
    assert {
        "crds/workerautoscalers.yaml",
        "files/kopf/kopfpeerings.yaml",
        "files/kopf/clusterkopfpeerings.yaml",
        "dashboards/resonate-patterns.json",
        "rules/alerts.yaml",
        "values.schema.json",
        "templates/tests/test-factorial.yaml",
        "README.md",
    } <= names
    assert not any(n.startswith("ci/") for n in names)
    packaged = helm_run(
        "template", "rp", str(archive), "--set", "monitoring.dashboard.enabled=true"
    )
    assert packaged.returncode == 0, packaged.stderr
    assert "resonate-patterns.json" in packaged.stdout
