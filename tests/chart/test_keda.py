"""``autoscaling.engine: keda``: a KEDA ScaledObject per group, fed by the backlog API.

Each ScaledObject is validated against KEDA's own CRD schema (v2.21.0, fetched
from the Go module proxy into ``.tools/crds/keda`` by ``make test``), and
maps the WorkerAutoscaler's fields one for one.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema

from tests.chart.conftest import (
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    Rendered,
    helm_run,
    load_yaml,
    render,
    template_args,
)
from tests.conftest import ROOT, require_file

KEDA_CRDS = ROOT / ".tools" / "crds" / "keda"
KEDA_CRDS_INSTALL = "python scripts/install_control_plane.py fetches it"
WORKERS = f"{RELEASE}-resonate-patterns-worker-workers"
BATCH = f"{RELEASE}-resonate-patterns-worker-batch"
BACKLOG_API = f"{RELEASE}-resonate-patterns-backlog-api"


@cache
def scaledobject_schema() -> dict[str, Any]:
    path = require_file(KEDA_CRDS / "keda.sh_scaledobjects.yaml", KEDA_CRDS_INSTALL)
    (version,) = [v for v in load_yaml(path)["spec"]["versions"] if v["storage"]]
    return dict(version["schema"]["openAPIV3Schema"])


def keda() -> Rendered:
    return render(CI_VALUES["keda"])


def test_keda__scaledobjects_valid_against_kedas_crd_schema() -> None:
    validator = jsonschema.Draft7Validator(scaledobject_schema())
    objects = keda().kind("ScaledObject")
    assert [o["metadata"]["name"] for o in objects] == [WORKERS, BATCH]
    for obj in objects:
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, errors


def test_keda__workerautoscaler_fields_mapped_one_for_one() -> None:
    workers = keda().get("ScaledObject", WORKERS)
    assert workers["metadata"].get("annotations") is None
    spec = workers["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": WORKERS,
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (5, 300)
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 2}
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"] == {"stabilizationWindowSeconds": 60}
    assert behavior["scaleUp"] == {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Min",
        "policies": [
            {"type": "Pods", "value": 10, "periodSeconds": 5},
            {"type": "Percent", "value": 100, "periodSeconds": 5},
        ],
    }
    (trigger,) = spec["triggers"]
    assert trigger == {
        "type": "metrics-api",
        "metricType": "AverageValue",
        "metadata": {
            "url": f"http://{BACKLOG_API}.{NAMESPACE}.svc:9400/backlog/workers",
            "format": "json",
            "valueLocation": "total",
            "targetValue": "10",
            "activationTargetValue": "0",
        },
    }
    batch = keda().get("ScaledObject", BATCH)
    assert batch["metadata"]["annotations"] == {"autoscaling.keda.sh/paused": "true"}
    assert batch["spec"]["minReplicaCount"] == 0
    # activationTasks 5: KEDA activates above its activation value, the operator at 5 or more.
    assert batch["spec"]["triggers"][0]["metadata"]["activationTargetValue"] == "4"


def test_keda__no_operator_no_workerautoscaler__deployments_leave_replicas_to_keda() -> None:
    rendered = keda()
    assert rendered.kind("WorkerAutoscaler") == []
    assert rendered.component("Deployment", "operator") == []
    for name in (WORKERS, BATCH):
        assert "replicas" not in rendered.get("Deployment", name)["spec"]


def test_keda__backlog_api_deployment_and_service__no_kubernetes_api_access() -> None:
    rendered = keda()
    deployment = rendered.get("Deployment", BACKLOG_API)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["args"] == ["backlog-api"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RESONATE_URL"] == f"http://{RELEASE}-resonate-patterns-server.{NAMESPACE}.svc:8001"
    assert env["RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS"] == "2"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = rendered.get("Service", BACKLOG_API)
    assert service["spec"]["ports"][0]["port"] == 9400
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "backlog-api"


def test_operator_engine__default__no_scaledobject_no_backlog_api() -> None:
    rendered = render()
    assert rendered.kind("ScaledObject") == []
    assert [d for d in rendered.kind("Deployment") if "backlog-api" in d["metadata"]["name"]] == []
    assert len(rendered.kind("WorkerAutoscaler")) == 1


def test_mixed_engines__one_group_each() -> None:
    rendered = render(
        sets=(
            "workerGroups[0].name=workers",
            "workerGroups[1].name=batch",
            "workerGroups[1].autoscaling.engine=keda",
        )
    )
    assert [w["spec"]["group"] for w in rendered.kind("WorkerAutoscaler")] == ["workers"]
    assert [s["metadata"]["name"] for s in rendered.kind("ScaledObject")] == [BATCH]


def test_engine_none__no_autoscaler_of_the_chart__deployment_leaves_replicas_to_its_own() -> None:
    rendered = render(
        sets=(
            "workerGroups[0].name=workers",
            "workerGroups[1].name=batch",
            "workerGroups[1].autoscaling.engine=none",
        )
    )
    # batch: no WorkerAutoscaler, no ScaledObject, no backlog API; the user's scaler owns it.
    assert [w["spec"]["group"] for w in rendered.kind("WorkerAutoscaler")] == ["workers"]
    assert rendered.kind("ScaledObject") == []
    assert [d for d in rendered.kind("Deployment") if "backlog-api" in d["metadata"]["name"]] == []
    assert "replicas" not in rendered.get("Deployment", BATCH)["spec"]


def test_engine__unknown_value__refused_naming_the_choices() -> None:
    done = helm_run(*template_args(sets=("workerDefaults.autoscaling.engine=hpa",)))
    assert done.returncode != 0
    assert "/workerDefaults/autoscaling/engine" in done.stderr
    assert "'operator', 'keda', 'none'" in done.stderr
