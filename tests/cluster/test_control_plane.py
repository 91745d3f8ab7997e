"""The test control plane behaves like a real cluster (tests/cluster/conftest.py).

Each test drives it with kubectl, as the chart and operator tests will: a
Deployment's pods get scheduled onto the kwok nodes and become Ready, the
ReplicaSet replaces deleted pods (graceful and forced), Jobs complete,
service-account tokens from the TokenRequest API authenticate and RBAC limits
them, and a namespace's deletion finishes.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.cluster.conftest import ControlPlane, eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.cluster_e2e, pytest.mark.slow]

#: An image reference only: kwok runs no containers, so nothing is ever pulled.
IMAGE = "registry.invalid/app:1"
#: Seconds a rollout or a replacement may take.
WITHIN = 30.0


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": IMAGE,
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def live_pods(cp: ControlPlane, namespace: str, app: str) -> list[dict[str, Any]]:
    """The app's pods that are not being deleted."""
    pods = cp.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [p for p in pods if "deletionTimestamp" not in p["metadata"]]


def condition(obj: dict[str, Any], kind: str) -> str | None:
    """The status ("True", "False", ...) of an object's condition of type ``kind``."""
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind]
    return found[0]["status"] if found else None


def is_ready(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and condition(pod, "Ready") == "True"


def roll_out(cp: ControlPlane, namespace: str, name: str, replicas: int) -> list[dict[str, Any]]:
    """Apply a Deployment and wait until exactly ``replicas`` pods are Ready."""
    cp.apply(deployment(name, namespace, replicas))
    cp.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, f"--timeout={WITHIN:g}s")
    return ready_pods(cp, namespace, name, replicas)


def ready_pods(cp: ControlPlane, namespace: str, app: str, count: int) -> list[dict[str, Any]]:
    """Wait until the app has exactly ``count`` live pods, all Ready; return them."""

    def probe() -> list[dict[str, Any]] | None:
        pods = live_pods(cp, namespace, app)
        return pods if len(pods) == count and all(map(is_ready, pods)) else None

    return eventually(probe, f"{count} ready pods of {app}", WITHIN)


def pod_gone(cp: ControlPlane, namespace: str, pod: str) -> bool:
    found = cp.kubectl("get", "pod", pod, "-n", namespace, "--ignore-not-found", "-o", "name")
    return found.stdout.strip() == ""


def test_control_plane__version__is_a_real_release_from_1_34(control_plane: ControlPlane) -> None:
    reported = json.loads(control_plane.kubectl("get", "--raw", "/version").stdout)["gitVersion"]
    kubectl = control_plane.kubectl("version", "-o", "json").stdout
    sys.stdout.write(f"kube-apiserver {reported} on {control_plane.server}\n")

    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", reported)
    assert match is not None, reported
    assert int(match.group(1)) >= 34
    assert reported == control_plane.version
    assert f'"gitVersion": "{reported}"' in kubectl


def test_nodes__registered_with_kwok__are_ready_and_schedulable(
    control_plane: ControlPlane,
) -> None:
    nodes = {n["metadata"]["name"]: n for n in control_plane.get("nodes")["items"]}
    leases = control_plane.get("leases", "-n", "kube-node-lease")["items"]

    assert set(nodes) == set(control_plane.nodes)
    for node in nodes.values():
        assert condition(node, "Ready") == "True"
        assert not node["spec"].get("unschedulable")
        assert not node["spec"].get("taints")
        assert node["status"]["allocatable"]["cpu"] == "8"
    # kwok's heartbeat: without it the node lifecycle controller would mark them NotReady.
    assert {lease["metadata"]["name"] for lease in leases} == set(control_plane.nodes)


def test_deployment__two_replicas__run_ready_on_kwok_nodes(
    control_plane: ControlPlane, namespace: str
) -> None:
    pods = roll_out(control_plane, namespace, "web", replicas=2)

    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in control_plane.nodes
        assert pod["status"]["podIP"]
        assert pod["status"]["containerStatuses"][0]["state"]["running"]
    # The token controller's root CA reached the namespace, as pods mount it.
    assert control_plane.get("configmap", "kube-root-ca.crt", "-n", namespace)["data"]["ca.crt"]


def test_deleted_pod__replica_set__creates_a_replacement(
    control_plane: ControlPlane, namespace: str
) -> None:
    before = roll_out(control_plane, namespace, "web", replicas=2)
    victim = before[0]["metadata"]["name"]

    control_plane.kubectl("delete", "pod", victim, "-n", namespace, f"--timeout={WITHIN:g}s")

    assert pod_gone(control_plane, namespace, victim)
    after = ready_pods(control_plane, namespace, "web", 2)
    names = {p["metadata"]["name"] for p in after}
    assert victim not in names
    assert before[1]["metadata"]["name"] in names


def test_force_deleted_pod__is_gone_at_once_and_replaced(
    control_plane: ControlPlane, namespace: str
) -> None:
    before = roll_out(control_plane, namespace, "web", replicas=2)
    victim = before[1]["metadata"]["name"]

    out = control_plane.kubectl(
        "delete", "pod", victim, "-n", namespace, "--grace-period=0", "--force"
    )

    assert "force deleted" in out.stdout
    assert pod_gone(control_plane, namespace, victim)
    after = ready_pods(control_plane, namespace, "web", 2)
    assert victim not in {p["metadata"]["name"] for p in after}


def test_job__pod_exits__job_completes(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "job", "once", "-n", namespace, f"--image={IMAGE}")

    control_plane.kubectl(
        "wait", "job/once", "-n", namespace, "--for=condition=Complete", f"--timeout={WITHIN:g}s"
    )

    assert control_plane.get("job", "once", "-n", namespace)["status"]["succeeded"] == 1


def test_service_account_token__authenticates__rbac_allows_only_what_is_bound(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "probe", "-n", namespace)
    cp.kubectl(
        "create", "role", "pod-reader", "-n", namespace, "--verb=get,list", "--resource=pods"
    )
    cp.kubectl(
        "create", "rolebinding", "probe-reads-pods", "-n", namespace,
        "--role=pod-reader", f"--serviceaccount={namespace}:probe",
    )  # fmt: skip
    token = cp.kubectl("create", "token", "probe", "-n", namespace).stdout.strip()

    whoami = cp.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", token=token)
    can_list_pods = cp.kubectl("auth", "can-i", "list", "pods", "-n", namespace, token=token)
    can_list_secrets = cp.kubectl(
        "auth", "can-i", "list", "secrets", "-n", namespace, token=token, check=False
    )
    get_secrets = cp.kubectl("get", "secrets", "-n", namespace, token=token, check=False)
    forged = cp.kubectl("get", "pods", "-n", namespace, token=token[:-4] + "AAAA", check=False)

    assert whoami.stdout == f"system:serviceaccount:{namespace}:probe"
    assert can_list_pods.stdout.strip() == "yes"
    assert (can_list_secrets.returncode, can_list_secrets.stdout.strip()) == (1, "no")
    assert get_secrets.returncode != 0
    assert "Forbidden" in get_secrets.stderr
    assert forged.returncode != 0
    assert "Unauthorized" in forged.stderr


def test_namespace_deletion__with_running_pods__completes(control_plane: ControlPlane) -> None:
    cp = control_plane
    name = f"t-{uuid.uuid4().hex[:8]}"
    cp.kubectl("create", "namespace", name)
    roll_out(cp, name, "web", replicas=2)
    cp.kubectl("create", "configmap", "settings", "-n", name, "--from-literal=a=b")

    cp.kubectl("delete", "namespace", name, f"--timeout={2 * WITHIN:g}s")

    found = cp.kubectl("get", "namespace", name, "--ignore-not-found", "-o", "name")
    assert found.stdout.strip() == ""
