"""The operator's RBAC: every API call it makes is allowed, and nothing more.

CALLS lists the calls of the operator (kopf plus the autoscaler). Namespaced
installs get a Role and RoleBinding only; a ClusterRole and
ClusterRoleBinding appear only with operator.clusterWide.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import CI_VALUES, NAMESPACE, Rendered, render

Call = tuple[str, str, str]  # (api group, resource, verb)


def calls(group: str, resource: str, *verbs: str) -> set[Call]:
    return {(group, resource, v) for v in verbs}


#: The API calls the operator makes in every mode.
CALLS: set[Call] = (
    calls("resonate-patterns.io", "workerautoscalers", "get", "list", "watch", "patch")
    | calls("resonate-patterns.io", "workerautoscalers/status", "get", "patch", "update")
    | calls("apps", "deployments/scale", "get", "patch", "update")
    | calls("", "events", "create", "patch")
    | calls("events.k8s.io", "events", "create", "patch")
)
#: Extra calls of kopf peering, by scope.
#: (create: the operator creates its peering object at startup.)
PEERING_NAMESPACED = calls("kopf.dev", "kopfpeerings", "get", "list", "watch", "patch", "create")
PEERING_CLUSTER = calls(
    "kopf.dev", "clusterkopfpeerings", "get", "list", "watch", "patch", "create"
)
#: Extra calls of a cluster-wide kopf operator (namespace discovery).


def granted(role: dict[str, Any]) -> set[Call]:
    out: set[Call] = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule or rule["resourceNames"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    out.add((group, resource, verb))
    return out


def operator_sa(rendered: Rendered) -> str:
    (operator,) = rendered.component("Deployment", "operator")
    return str(operator["spec"]["template"]["spec"]["serviceAccountName"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("default", CALLS),
        ("two-groups", CALLS),
        ("monitoring-on", CALLS),
        ("operator-ha", CALLS | PEERING_NAMESPACED),
    ],
)
def test_namespaced_operator__role_grants_exactly_its_calls(
    values: str, expected: set[Call]
) -> None:
    rendered = render(CI_VALUES[values])
    assert not rendered.kind("ClusterRole")
    assert not rendered.kind("ClusterRoleBinding")
    (role,) = rendered.kind("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert granted(role) == expected
    (binding,) = rendered.kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": operator_sa(rendered), "namespace": NAMESPACE}
    ]
    sa_names = {s["metadata"]["name"] for s in rendered.kind("ServiceAccount")}
    assert operator_sa(rendered) in sa_names


def test_cluster_wide_operator__cluster_role_grants_exactly_its_calls() -> None:
    rendered = render(CI_VALUES["cluster-wide-operator"])
    assert not rendered.kind("Role")
    assert not rendered.kind("RoleBinding")
    (role,) = rendered.kind("ClusterRole")
    assert "namespace" not in role["metadata"]
    assert granted(role) == CALLS | PEERING_CLUSTER
    assert not any(r == "customresourcedefinitions" for _, r, _ in granted(role))
    (binding,) = rendered.kind("ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": operator_sa(rendered), "namespace": NAMESPACE}
    ]


def test_nothing_cluster_scoped__unless_the_operator_is_cluster_wide(
    ci_render: tuple[str, Rendered],
) -> None:
    name, rendered = ci_render
    # (The ClusterKopfPeering is the operator's to create, not the chart's.)
    cluster_kinds = {"ClusterRole", "ClusterRoleBinding"}
    found = {d["kind"] for d in rendered.docs} & cluster_kinds
    if name == "cluster-wide-operator":
        assert found == cluster_kinds
    else:
        assert not found, name
    for doc in rendered.docs:
        if doc["kind"] not in cluster_kinds | {"CustomResourceDefinition"}:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_no_operator__no_rbac() -> None:
    rendered = render(CI_VALUES["autoscaling-off"])
    for kind in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
        assert not rendered.kind(kind)


def test_cluster_wide_operator__cluster_scoped_names_carry_the_namespace() -> None:
    """One release name in two namespaces: two ClusterRoles and bindings, not one overwritten."""
    names: dict[str, set[str]] = {"ClusterRole": set(), "ClusterRoleBinding": set()}
    for namespace in ("team-a", "team-b"):
        rendered = render(CI_VALUES["cluster-wide-operator"], namespace=namespace)
        (role,) = rendered.kind("ClusterRole")
        (binding,) = rendered.kind("ClusterRoleBinding")
        assert role["metadata"]["name"] == f"{namespace}-rp-resonate-patterns-operator"
        assert binding["metadata"]["name"] == role["metadata"]["name"]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"][0]["namespace"] == namespace
        names["ClusterRole"].add(role["metadata"]["name"])
        names["ClusterRoleBinding"].add(binding["metadata"]["name"])
    assert all(len(v) == 2 for v in names.values())
