"""Custom resources: the chart's CRDs, and the objects rendered from them.

kubernetes-validate knows no custom kinds, so WorkerAutoscalers and kopf
peering objects are validated here against the openAPIV3Schema of the CRDs
the chart ships (jsonschema; defaults are not applied), and the CEL rules of
the WorkerAutoscaler CRD are checked by hand.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
import pytest

from tests.chart.conftest import CHART, CI_VALUES, Rendered, load_yaml, render

CRDS = CHART / "crds"
#: kopf's peering CRDs: rendered by a template, only when the operator uses peering.
KOPF_CRDS = CHART / "files" / "kopf"


@cache
def crd(name: str) -> dict[str, Any]:
    for path in sorted([*CRDS.glob("*.yaml"), *KOPF_CRDS.glob("*.yaml")]):
        doc = load_yaml(path)
        if doc["metadata"]["name"] == name:
            return dict(doc)
    raise AssertionError(f"no CRD {name} in {CRDS} or {KOPF_CRDS}")


def crd_schema(name: str) -> dict[str, Any]:
    versions = crd(name)["spec"]["versions"]
    (storage,) = [v for v in versions if v["storage"]]
    return dict(storage["schema"]["openAPIV3Schema"])


def validate(obj: dict[str, Any], crd_name: str) -> None:
    validator = jsonschema.Draft7Validator(crd_schema(crd_name))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_crds__only_the_workerautoscaler_one_in_crds__rendered_with_include_crds() -> None:
    names = {load_yaml(p)["metadata"]["name"] for p in CRDS.glob("*.yaml")}
    assert names == {"workerautoscalers.resonate-patterns.io"}
    rendered = {d["metadata"]["name"] for d in render().kind("CustomResourceDefinition")}
    assert rendered == names


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("default", set()),
        ("autoscaling-off", set()),
        ("operator-ha", {"kopfpeerings.kopf.dev"}),
        ("cluster-wide-operator", {"clusterkopfpeerings.kopf.dev"}),
    ],
)
def test_kopf_peering_crds__rendered_only_with_peering__the_one_its_scope_needs(
    values: str, expected: set[str]
) -> None:
    crds = [
        d
        for d in render(CI_VALUES[values]).kind("CustomResourceDefinition")
        if d["spec"]["group"] == "kopf.dev"
    ]
    assert {d["metadata"]["name"] for d in crds} == expected
    for rendered in crds:
        # Shared by every kopf operator of the cluster: never deleted with one release.
        assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert rendered["spec"] == crd(rendered["metadata"]["name"])["spec"]


def test_kopf_peering_crd__common_annotations_kept_but_keep_policy_wins() -> None:
    (peering_crd,) = [
        d
        for d in render(
            CI_VALUES["operator-ha"],
            sets=("commonAnnotations.team=a", "commonAnnotations.helm\\.sh/resource-policy=delete"),
        ).kind("CustomResourceDefinition")
        if d["spec"]["group"] == "kopf.dev"
    ]
    assert peering_crd["metadata"]["annotations"] == {
        "team": "a",
        "helm.sh/resource-policy": "keep",
    }


@pytest.mark.parametrize(
    ("name", "kind", "scope"),
    [
        ("kopfpeerings.kopf.dev", "KopfPeering", "Namespaced"),
        ("clusterkopfpeerings.kopf.dev", "ClusterKopfPeering", "Cluster"),
    ],
)
def test_kopf_peering_crds__group_version_scope_and_free_status(
    name: str, kind: str, scope: str
) -> None:
    spec = crd(name)["spec"]
    assert spec["group"] == "kopf.dev"
    assert spec["scope"] == scope
    assert spec["names"]["kind"] == kind
    assert [v["name"] for v in spec["versions"]] == ["v1"]
    status = crd_schema(name)["properties"]["status"]
    assert status["type"] == "object"
    assert status["x-kubernetes-preserve-unknown-fields"] is True


def _check_cel_rules(spec: dict[str, Any]) -> None:
    """The WorkerAutoscaler CRD's x-kubernetes-validations, evaluated with its defaults."""
    lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 10)
    assert lo <= hi, "minReplicas must not exceed maxReplicas"
    if "fallbackReplicas" in spec:
        assert lo <= spec["fallbackReplicas"] <= hi


def test_worker_autoscalers__match_the_crd_schema(ci_render: tuple[str, Rendered]) -> None:
    _, rendered = ci_render
    for wa in rendered.kind("WorkerAutoscaler"):
        assert wa["apiVersion"] == "resonate-patterns.io/v1alpha1"
        validate(wa, "workerautoscalers.resonate-patterns.io")
        _check_cel_rules(wa["spec"])


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_worker_autoscalers__one_per_autoscaled_group_targeting_its_deployment() -> None:
    rendered = render(CI_VALUES["two-groups"])
    deployments = {d["metadata"]["name"]: d for d in rendered.component("Deployment", "worker")}
    autoscalers = {w["spec"]["group"]: w for w in rendered.kind("WorkerAutoscaler")}
    assert set(autoscalers) == {"workers", "math"}  # "enrich" has autoscaling off
    for group, wa in autoscalers.items():
        target = wa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        deployment = deployments[target["name"]]
        env = _env(deployment)
        assert env["RESONATE_GROUP"] == group
        assert wa["spec"]["resonateUrl"] == env["RESONATE_URL"]
        assert wa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    math = autoscalers["math"]["spec"]
    assert (math["minReplicas"], math["maxReplicas"], math["fallbackReplicas"]) == (0, 20, 2)
    assert math["scaleUp"] == {"maxStep": 10, "maxPercent": 100}
    assert "fallbackReplicas" not in autoscalers["workers"]["spec"]


def test_worker_autoscaler__carries_every_policy_field_of_the_values() -> None:
    spec = render().kind("WorkerAutoscaler")[0]["spec"]
    defaults = load_yaml(CHART / "values.yaml")["workerDefaults"]["autoscaling"]
    for key in (
        "minReplicas",
        "maxReplicas",
        "targetTasksPerReplica",
        "activationTasks",
        "pollingIntervalSeconds",
        "failureThreshold",
        "paused",
    ):
        assert spec[key] == defaults[key], key
    assert spec["scaleUp"]["maxStep"] == defaults["scaleUp"]["maxStep"]
    assert spec["scaleDown"] == defaults["scaleDown"]
    crd_props = crd_schema("workerautoscalers.resonate-patterns.io")["properties"]["spec"]
    assert set(spec) <= set(crd_props["properties"])


@pytest.mark.parametrize("values", ["default", "operator-ha", "cluster-wide-operator"])
def test_kopf_peering_object__never_rendered__the_operator_creates_it(values: str) -> None:
    # A custom object beside its CRD in one release fails Helm's first install.
    rendered = render(CI_VALUES[values])
    assert not rendered.kind("KopfPeering")
    assert not rendered.kind("ClusterKopfPeering")
