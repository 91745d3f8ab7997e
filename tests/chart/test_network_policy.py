"""``networkPolicy.enabled``: ingress policies around every component of the release.

The server API only from this release's workers, operator, backlog API and
test pod (plus ``apiClients``); metrics ports only from ``metrics.from``;
the backlog API only from KEDA. Egress stays open unless ``extraEgress``.
"""

from __future__ import annotations

from typing import Any

from tests.chart.conftest import CI_VALUES, Rendered, render
from tests.chart.test_docs import _notes as notes

RELEASE_LABELS = {"app.kubernetes.io/instance": "rp", "app.kubernetes.io/name": "resonate-patterns"}
GATEWAY = {"podSelector": {"matchLabels": {"app": "api-gateway"}}}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
KEDA = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}


def policies() -> Rendered:
    return render(CI_VALUES["network-policy"])


def policy(component: str) -> dict[str, Any]:
    return policies().get("NetworkPolicy", f"rp-resonate-patterns-{component}")["spec"]


def test_off_by_default() -> None:
    assert render().kind("NetworkPolicy") == []


def test_one_policy_per_component__selecting_its_pods__ingress_only() -> None:
    names = [p["metadata"]["name"] for p in policies().kind("NetworkPolicy")]
    assert names == [
        f"rp-resonate-patterns-{c}" for c in ("server", "worker", "operator", "backlog-api")
    ]
    for component in ("server", "worker", "operator", "backlog-api"):
        spec = policy(component)
        assert spec["podSelector"]["matchLabels"] == {
            **RELEASE_LABELS,
            "app.kubernetes.io/component": component,
        }
        assert spec["policyTypes"] == ["Ingress"]
        assert "egress" not in spec


def test_server_api__only_this_releases_pods_and_named_clients__metrics_from_monitoring() -> None:
    api, metrics = policy("server")["ingress"]
    assert api["ports"] == [{"port": "http"}]
    assert api["from"] == [
        {
            "podSelector": {
                "matchLabels": RELEASE_LABELS,
                "matchExpressions": [
                    {
                        "key": "app.kubernetes.io/component",
                        "operator": "In",
                        "values": ["worker", "operator", "backlog-api", "test"],
                    }
                ],
            }
        },
        GATEWAY,
    ]
    assert metrics == {"ports": [{"port": "http-metrics"}], "from": [MONITORING]}


def test_workers_operator_backlog_api__who_may_reach_them() -> None:
    (worker,) = policy("worker")["ingress"]
    test_pod = {
        "podSelector": {"matchLabels": {**RELEASE_LABELS, "app.kubernetes.io/component": "test"}}
    }
    assert worker == {"ports": [{"port": "http"}], "from": [test_pod, GATEWAY, MONITORING]}
    assert policy("operator")["ingress"] == [
        {"ports": [{"port": "http-metrics"}], "from": [MONITORING]}
    ]
    assert policy("backlog-api")["ingress"] == [
        {"ports": [{"port": "http"}], "from": [KEDA, MONITORING]}
    ]


def test_every_named_port_exists_on_the_pods_it_guards() -> None:
    rendered = policies()
    for deployment in rendered.kind("Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        name = "worker" if component == "worker" else component
        spec = policy(name)
        ports = {
            p["name"]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for rule in spec["ingress"]:
            for port in rule["ports"]:
                assert port["port"] in ports, (deployment["metadata"]["name"], port)


def test_extra_egress__restricts_egress_to_it() -> None:
    dns = {"ports": [{"port": 53, "protocol": "UDP"}]}
    spec = render(
        CI_VALUES["network-policy"],
        sets=(
            "networkPolicy.extraEgress[0].ports[0].port=53",
            "networkPolicy.extraEgress[0].ports[0].protocol=UDP",
        ),
    ).get("NetworkPolicy", "rp-resonate-patterns-worker")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == [dns]


def test_notes__warn_about_a_loadbalancer_without_auth() -> None:
    warning = "WARNING: the server's Service is a LoadBalancer and auth is off"
    assert warning in notes("--set", "server.service.type=LoadBalancer")
    assert warning not in notes()
