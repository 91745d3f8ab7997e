"""The test-only kmock shim behaves like a real API server where the operator needs it."""

from __future__ import annotations

import pytest
import yaml
from kubernetes_asyncio import client as k8s

from service.operator.kube import patch_status
from service.operator.status import CONDITION_TYPES
from tests.operator.kmock_shim import (
    CRD_PATH,
    DEPLOYMENTS,
    EVENTS,
    GROUP,
    NS,
    PLURAL,
    VERSION,
    WA,
    Emulator,
    declare_resources,
)

pytestmark = pytest.mark.kmock(cls=Emulator)


@pytest.fixture
def k8s_emulator(kmock: Emulator) -> Emulator:
    declare_resources(kmock)
    return kmock


@pytest.fixture
def api_config(k8s_emulator: Emulator) -> k8s.Configuration:
    return k8s.Configuration(host=str(k8s_emulator.url).rstrip("/"))


async def seed(emulator: Emulator) -> None:
    """Create the objects through the API (so the shim stamps uid/resourceVersion)."""
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "workers", "namespace": NS, "labels": {"app": "workers"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "workers"}},
            "template": {
                "metadata": {"labels": {"app": "workers"}},
                "spec": {"containers": [{"name": "w", "image": "worker:dev"}]},
            },
        },
        "status": {"replicas": 1},
    }
    wa = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkerAutoscaler",
        "metadata": {"name": "wa1", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"name": "workers"},
            "resonateUrl": "http://resonate:8001",
            "group": "workers",
            "minReplicas": 1,
            "maxReplicas": 4,
        },
    }
    for url, obj in [
        (f"/apis/apps/v1/namespaces/{NS}/deployments", dep),
        (f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}", wa),
    ]:
        resp = await emulator.post(url, json=obj)
        assert resp.status == 200, await resp.text()


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


async def test_emulator_basics(k8s_emulator: Emulator, api_config: k8s.Configuration) -> None:
    """Discovery, the /scale view, and a `kubectl scale`-like patch by a "user"."""
    await seed(k8s_emulator)

    resp = await k8s_emulator.get(f"/apis/{GROUP}/{VERSION}")
    names = {r["name"] for r in (await resp.json())["resources"]}
    assert names == {PLURAL, f"{PLURAL}/status"}

    wa = k8s_emulator.objects[WA, NS, "wa1"]
    assert wa >= {"metadata": {"uid": ..., "resourceVersion": ...}}

    async with k8s.ApiClient(api_config) as api:
        apps = k8s.AppsV1Api(api)
        scale = await apps.read_namespaced_deployment_scale("workers", NS)
        assert scale.kind == "Scale"
        assert (scale.spec.replicas, scale.status.selector) == (1, "app=workers")

        # `kubectl scale deploy/workers --replicas=3` == PATCH .../deployments/workers/scale.
        rv_before = k8s_emulator.objects[DEPLOYMENTS, NS, "workers"]["metadata"]["resourceVersion"]
        await apps.patch_namespaced_deployment_scale("workers", NS, {"spec": {"replicas": 3}})
        assert (await apps.read_namespaced_deployment("workers", NS)).spec.replicas == 3
        assert (await apps.read_namespaced_deployment_scale("workers", NS)).spec.replicas == 3
        # Or `kubectl patch deploy/workers -p '{"spec":{"replicas":2}}'`; /scale reflects it.
        await apps.patch_namespaced_deployment("workers", NS, {"spec": {"replicas": 2}})
        assert (await apps.read_namespaced_deployment_scale("workers", NS)).spec.replicas == 2

        # kubernetes_asyncio sends a dict body to CustomObjectsApi.patch_* as json-patch+json
        # unless told otherwise; a real API server rejects that, and so does the shim.
        with pytest.raises(k8s.ApiException) as exc_info:
            await k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                GROUP, VERSION, NS, PLURAL, "wa1", {"status": {"desiredReplicas": 1}}
            )
        assert exc_info.value.status == 415

        # Events posted directly with kubernetes_asyncio (generateName works thanks to the shim).
        for _ in range(2):
            await k8s.CoreV1Api(api).create_namespaced_event(
                NS,
                k8s.CoreV1Event(
                    metadata=k8s.V1ObjectMeta(generate_name="wa1-"),
                    reason="Manual",
                    type="Normal",
                    involved_object=k8s.V1ObjectReference(
                        kind="WorkerAutoscaler", name="wa1", namespace=NS
                    ),
                ),
            )
    manual = [
        key
        for key, obj in k8s_emulator.objects.items()
        if key[0] == EVENTS and obj >= {"reason": "Manual"}
    ]
    assert len(manual) == 2
    assert all(name.startswith("wa1-") for _, _, name in manual)

    dep = k8s_emulator.objects[DEPLOYMENTS, NS, "workers"]
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["resourceVersion"] != rv_before
    assert [v["spec"]["replicas"] for v in dep.history if v is not None] == [1, 3, 2]
    assert dep["kind"] == "Deployment"  # the Scale's kind/apiVersion did not leak into it


async def test_status_write__outside_the_crd_schema__422_like_an_api_server(
    k8s_emulator: Emulator, api_config: k8s.Configuration
) -> None:
    await seed(k8s_emulator)
    async with k8s.ApiClient(api_config) as api:
        custom = k8s.CustomObjectsApi(api)
        good = {
            "desiredReplicas": 2,
            "lastScaleTime": None,  # a merge patch's null deletes: never validated
            "conditions": [{"type": "Ready", "status": "True", "reason": "BacklogRead"}],
        }
        await patch_status(custom, NS, "wa1", good)
        with pytest.raises(k8s.ApiException) as caught:
            await patch_status(
                custom, NS, "wa1", {"conditions": [{"type": "Sleepy", "status": "True"}]}
            )
        assert caught.value.status == 422
        with pytest.raises(k8s.ApiException) as caught:
            await patch_status(custom, NS, "wa1", {"desiredReplicas": "two"})
        assert caught.value.status == 422
    stored = k8s_emulator.objects[WA, NS, "wa1"]["status"]
    assert stored["desiredReplicas"] == 2
    assert [c["type"] for c in stored["conditions"]] == ["Ready"]


def test_condition_types__every_one_the_operator_writes__allowed_by_the_shipped_crd() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    allowed = conditions["items"]["properties"]["type"]["enum"]
    missing = [t for t in CONDITION_TYPES if t not in allowed]
    assert not missing, (
        f"{CRD_PATH.name} must allow condition types {missing}: "
        "a real API server rejects the whole status otherwise"
    )
