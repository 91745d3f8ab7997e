"""The pods the chart runs: configuration, ports, probes, replicas and security.

The service defines every setting once (service.config); these tests hold
the chart to it: every env var on a worker, operator or test pod is a name
config reads, and the values the chart puts there pass config's own parser.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.config import ConfigError, env_names, load_settings, specs
from tests.chart.conftest import CI_VALUES, NAMESPACE, RELEASE, Rendered, load_yaml, render

WORKER_PORT = 9400
SERVER_PORT = 8001
SERVER_URL = f"http://{RELEASE}-resonate-patterns-server.{NAMESPACE}.svc:{SERVER_PORT}"
#: Settings fields that name worker groups.
GROUP_FIELDS = ("group", "factorial_target", "enrich_target")
#: Labels that change on upgrades and must never be in a selector.
VOLATILE_LABELS = {"helm.sh/chart", "app.kubernetes.io/version"}


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def literal_env(container: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    """The container's env as the process would see it (downward-API namespaces resolved)."""
    out: dict[str, str] = {}
    for name, entry in env_of(container).items():
        if "value" in entry:
            out[name] = entry["value"]
        elif (
            entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
        ):
            out[name] = namespace
    return out


def app_pods(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(component, object, pod spec) of every pod running the resonate-patterns image."""
    found = []
    for obj, spec in rendered.pod_specs():
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in ("worker", "operator", "test"):
            found.append((component, obj, spec))
    return found


def workers(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """Worker Deployments by group name."""
    return {
        d["metadata"]["labels"]["resonate-patterns.io/group"]: d
        for d in rendered.component("Deployment", "worker")
    }


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


# -- configuration -----------------------------------------------------------------------------


def test_env_names__every_app_pod_sets_only_names_config_reads(
    ci_render: tuple[str, Rendered],
) -> None:
    name, rendered = ci_render
    known = set(env_names())
    pods = app_pods(rendered)
    assert pods, name
    for component, obj, spec in pods:
        for container in containers(spec):
            unknown = set(env_of(container)) - known
            assert not unknown, f"{name}: {component} {obj['metadata']['name']} sets {unknown}"


def test_env_values__pass_the_service_config_parser(ci_render: tuple[str, Rendered]) -> None:
    name, rendered = ci_render
    for component, obj, spec in app_pods(rendered):
        for container in containers(spec):
            try:
                settings = load_settings(literal_env(container))
            except ConfigError as exc:
                pytest.fail(f"{name}: {component} {obj['metadata']['name']}: {exc}")
            assert settings.http_port == WORKER_PORT
            assert settings.log_format == "json"
            if component in ("worker", "test"):
                assert settings.resonate_url is not None


def test_group_env__exactly_the_names_config_reads_for_groups() -> None:
    group_envs = {specs()[f].env for f in GROUP_FIELDS}
    rendered = render(CI_VALUES["two-groups"])
    by_group = workers(rendered)
    routed = set(env_of(container_of(by_group["workers"])))
    assert {n for n in routed if "GROUP" in n or n.endswith("_TARGET")} == group_envs
    settings = load_settings(literal_env(container_of(by_group["workers"])))
    assert (settings.group, settings.factorial_group, settings.enrich_group) == (
        "workers",
        "math",
        "enrich",
    )
    for group, deployment in by_group.items():
        env = literal_env(container_of(deployment))
        assert env["RESONATE_GROUP"] == group
        assert {n for n in env if "GROUP" in n or n.endswith("_TARGET")} <= group_envs


def test_worker_env__server_url_group_and_settings_from_values() -> None:
    rendered = render(CI_VALUES["two-groups"])
    enrich = load_settings(literal_env(container_of(workers(rendered)["enrich"])))
    assert enrich.resonate_url == SERVER_URL
    assert (enrich.task_ttl_seconds, enrich.drain_seconds) == (30, 45)
    assert enrich.step_delay_ms == 25
    assert enrich.max_concurrent_tasks == 64
    math = load_settings(literal_env(container_of(workers(rendered)["math"])))
    assert math.max_concurrent_tasks == 128


def test_worker_env__large_numbers_are_written_as_plain_integers(tmp_path: Any) -> None:
    values = tmp_path / "big.yaml"
    values.write_text(
        "workerDefaults:\n  taskTtlSeconds: 86400\n  maxConcurrentTasks: 10000\n"
        "  extraSettings:\n    RESONATE_PATTERNS_SYNTHETIC_PAGES: 1000000\n"
    )
    env = literal_env(container_of(workers(render(values))["workers"]))
    assert env["RESONATE_PATTERNS_TASK_TTL_SECONDS"] == "86400"
    assert env["RESONATE_PATTERNS_SYNTHETIC_PAGES"] == "1000000"
    load_settings(env)


def test_operator_env__namespaced_watch_from_the_downward_api_and_standalone() -> None:
    (operator,) = render().component("Deployment", "operator")
    container = container_of(operator)
    env = env_of(container)
    field = env["RESONATE_PATTERNS_WATCH_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.namespace"
    assert env["RESONATE_PATTERNS_OPERATOR_PEERING"]["value"] == "standalone"
    assert container["args"] == ["operator"]
    assert operator["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_strategy__with_peering__rolling_update_spelled_out_for_helm_to_own() -> None:
    # Server-side apply drops only fields Helm owns: spelled out, rollingUpdate goes when
    # the operator returns to one replica (Recreate refuses it; tests/cluster checks that).
    (operator,) = render(CI_VALUES["operator-ha"]).component("Deployment", "operator")
    assert operator["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }


def test_operator_env__cluster_wide_watches_every_namespace_with_peering() -> None:
    (operator,) = render(CI_VALUES["cluster-wide-operator"]).component("Deployment", "operator")
    settings = load_settings(literal_env(container_of(operator)))
    assert settings.watch_namespace == "*"
    assert settings.operator_peering == "rp-ns-rp-resonate-patterns-operator"
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"


def test_operator_env__two_replicas_turn_peering_on() -> None:
    (operator,) = render(CI_VALUES["operator-ha"]).component("Deployment", "operator")
    settings = load_settings(literal_env(container_of(operator)))
    assert settings.operator_peering == "rp-resonate-patterns-operator"
    assert settings.watch_namespace == NAMESPACE


def test_test_pod__calls_factorial_10_on_the_first_group_and_checks_3628800() -> None:
    (pod,) = render(CI_VALUES["two-groups"]).kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    env = literal_env(container)
    assert env == {
        "RESONATE_URL": SERVER_URL,
        "RESONATE_GROUP": "workers",
        "RESONATE_PATTERNS_LOG_FORMAT": "json",
    }
    script = container["args"][0]
    assert '"call", "factorial", "10", "--json"' in script
    assert "3628800" in script
    # Then the same call through the first group's worker Service (the HTTP API).
    (service,) = [
        s
        for s in render(CI_VALUES["two-groups"]).component("Service", "worker")
        if s["metadata"]["labels"]["resonate-patterns.io/group"] == "workers"
    ]
    api = f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{WORKER_PORT}"
    assert f'url = "{api}/v1/patterns/factorial"' in script
    assert 'answer.get("cached") is not True' in script
    assert "sys.exit(" in script
    assert container["command"] == ["python", "-c"]
    assert pod["spec"]["restartPolicy"] == "Never"
    compile(script, "helm-test", "exec")


# -- ports and probes ---------------------------------------------------------------------------


def _probe(container: dict[str, Any], kind: str) -> tuple[str, Any]:
    get = container[kind]["httpGet"]
    return get["path"], get["port"]


def _port_number(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize(
    ("component", "port_name"),
    # A worker's one port also serves the HTTP API, so it is plain "http".
    [("worker", "http"), ("operator", "http-metrics")],
)
def test_app_ports_and_probes__9400_healthz_readyz(component: str, port_name: str) -> None:
    rendered = render(CI_VALUES["two-groups"])
    for deployment in rendered.component("Deployment", component):
        container = container_of(deployment)
        assert _port_number(container, port_name) == WORKER_PORT
        assert _probe(container, "livenessProbe") == ("/healthz", port_name)
        assert _probe(container, "readinessProbe") == ("/readyz", port_name)
        assert literal_env(container)["RESONATE_PATTERNS_HTTP_PORT"] == str(WORKER_PORT)
    for service in rendered.component("Service", component):
        (port,) = service["spec"]["ports"]
        assert (port["name"], port["port"], port["targetPort"]) == (
            port_name,
            WORKER_PORT,
            port_name,
        )


def test_worker_service__exposes_the_api_port_of_each_groups_pods() -> None:
    rendered = render(CI_VALUES["two-groups"])
    services = rendered.component("Service", "worker")
    deployments = {d["metadata"]["name"]: d for d in rendered.component("Deployment", "worker")}
    assert {s["metadata"]["name"] for s in services} == set(deployments)
    for service in services:
        deployment = deployments[service["metadata"]["name"]]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["selector"].items() <= pod_labels.items()
        (port,) = service["spec"]["ports"]
        container_ports = {p["name"]: p["containerPort"] for p in container_of(deployment)["ports"]}
        assert container_ports[port["targetPort"]] == port["port"] == WORKER_PORT


# -- replicas, draining, disruption and spreading -----------------------------------------------


def test_replicas__absent_when_autoscaled_present_when_not() -> None:
    # Offline (no live Deployment to look up); an upgrade writes back the live count,
    # which tests/cluster/test_chart_lifecycle.py checks on a real API server.
    by_group = workers(render(CI_VALUES["two-groups"]))
    assert "replicas" not in by_group["workers"]["spec"]
    assert "replicas" not in by_group["math"]["spec"]
    assert by_group["enrich"]["spec"]["replicas"] == 4
    fixed = render(CI_VALUES["autoscaling-off"])
    assert workers(fixed)["workers"]["spec"]["replicas"] == 3
    assert not fixed.kind("WorkerAutoscaler")
    assert not fixed.component("Deployment", "operator")


def test_termination_grace__exceeds_the_drain_time(ci_render: tuple[str, Rendered]) -> None:
    name, rendered = ci_render
    for deployment in rendered.component("Deployment", "worker"):
        spec = deployment["spec"]["template"]["spec"]
        drain = float(literal_env(container_of(deployment))["RESONATE_PATTERNS_DRAIN_SECONDS"])
        assert spec["terminationGracePeriodSeconds"] > drain, name


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_disruption_budget_and_spread__per_group_selecting_its_pods() -> None:
    rendered = render(CI_VALUES["two-groups"])
    budgets = {p["metadata"]["name"]: p for p in rendered.kind("PodDisruptionBudget")}
    for group, deployment in workers(rendered).items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = budgets[deployment["metadata"]["name"]]
        assert _selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
        others = [d for g, d in workers(rendered).items() if g != group]
        for other in others:
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not _selects(budget["spec"]["selector"]["matchLabels"], other_labels)
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
        }
        for constraint in spread:
            assert _selects(constraint["labelSelector"]["matchLabels"], pod_labels)
    assert budgets[f"{RELEASE}-resonate-patterns-worker-workers"]["spec"] == {
        "maxUnavailable": 1,
        "selector": budgets[f"{RELEASE}-resonate-patterns-worker-workers"]["spec"]["selector"],
    }
    assert budgets[f"{RELEASE}-resonate-patterns-worker-math"]["spec"]["minAvailable"] == "50%"


def test_selectors__stable_and_matching_their_pods(ci_render: tuple[str, Rendered]) -> None:
    name, rendered = ci_render
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in rendered.kind("Deployment")]
    for deployment in rendered.kind("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert not VOLATILE_LABELS & set(selector), name
        assert _selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
        assert sum(_selects(selector, labels) for labels in pod_labels) == 1, name
    for service in rendered.kind("Service"):
        selector = service["spec"]["selector"]
        assert not VOLATILE_LABELS & set(selector)
        assert any(_selects(selector, labels) for labels in pod_labels), service["metadata"]


def test_names__at_most_63_characters_even_for_long_group_names(tmp_path: Any) -> None:
    values = tmp_path / "long.yaml"
    group = "g" * 63
    values.write_text(f"workerGroups:\n  - name: {group}\n")
    everything_on = (
        "monitoring.scrape.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.dashboard.enabled=true",
        "operator.replicas=2",
    )
    rendered = render(values, everything_on, release="a-rather-long-release-name-for-testing")
    postgres = render(
        values,
        ("server.storage.type=postgres", "server.storage.postgres.url=postgres://db/r"),
        release="a-rather-long-release-name-for-testing",
    )
    assert postgres.kind("Secret")
    for doc in postgres.docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
    for doc in rendered.docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert not doc["metadata"]["name"].endswith("-")
    (deployment,) = rendered.component("Deployment", "worker")
    assert literal_env(container_of(deployment))["RESONATE_GROUP"] == group


# -- external server ------------------------------------------------------------------------


def test_external_server__no_server_objects_and_everyone_uses_the_external_url() -> None:
    rendered = render(CI_VALUES["external-server"])
    url = load_yaml(CI_VALUES["external-server"])["server"]["externalUrl"]
    assert not rendered.component("Deployment", "server")
    assert not rendered.component("Service", "server")
    assert not rendered.kind("PersistentVolumeClaim")
    for component, _, spec in app_pods(rendered):
        if component != "operator":
            assert literal_env(spec["containers"][0])["RESONATE_URL"] == url
    assert {w["spec"]["resonateUrl"] for w in rendered.kind("WorkerAutoscaler")} == {url}


# -- security -------------------------------------------------------------------------------


def test_security_context__hardened_on_every_pod_and_container(
    ci_render: tuple[str, Rendered],
) -> None:
    name, rendered = ci_render
    pods = list(rendered.pod_specs())
    assert pods
    for obj, spec in pods:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            assert isinstance(pod[key], int), where
            assert pod[key] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in containers(spec):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in ctx["capabilities"], where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is not an emptyDir"


def test_service_account_tokens__mounted_only_for_the_operator(
    ci_render: tuple[str, Rendered],
) -> None:
    name, rendered = ci_render
    for obj, spec in rendered.pod_specs():
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        mounted = spec.get("automountServiceAccountToken", True)
        assert mounted is (component == "operator"), f"{name}: {obj['metadata']['name']}"


# -- several releases per namespace and cluster --------------------------------------------------


def test_operator_selector__own_release_label__which_every_worker_autoscaler_carries() -> None:
    rendered = render(CI_VALUES["two-groups"], release="team-x")
    (operator,) = rendered.component("Deployment", "operator")
    settings = load_settings(literal_env(container_of(operator)))
    assert settings.operator_selector == (("app.kubernetes.io/instance", "team-x"),)
    autoscalers = rendered.kind("WorkerAutoscaler")
    assert autoscalers
    for autoscaler in autoscalers:
        assert autoscaler["metadata"]["labels"]["app.kubernetes.io/instance"] == "team-x"


def test_operator_selector__match_labels_added_sorted__own_release_can_be_turned_off() -> None:
    sets = ("operator.selector.matchLabels.tier=batch", "operator.selector.matchLabels.a/b=c")
    (operator,) = render(sets=sets).component("Deployment", "operator")
    env = literal_env(container_of(operator))
    assert env["RESONATE_PATTERNS_OPERATOR_SELECTOR"] == (
        f"a/b=c,app.kubernetes.io/instance={RELEASE},tier=batch"
    )
    (operator,) = render(sets=("operator.selector.ownRelease=false",)).component(
        "Deployment", "operator"
    )
    assert "RESONATE_PATTERNS_OPERATOR_SELECTOR" not in env_of(container_of(operator))


@pytest.mark.parametrize("values", ["operator-ha", "cluster-wide-operator"])
def test_peering_name__differs_between_releases_and_namespaces(values: str) -> None:
    """Operators of two releases never share a peering object (they would pause each other)."""
    names = set()
    for release, namespace in (("rp", "team-a"), ("rp", "team-b"), ("other", "team-a")):
        rendered = render(CI_VALUES[values], release=release, namespace=namespace)
        (operator,) = rendered.component("Deployment", "operator")
        names.add(load_settings(literal_env(container_of(operator), namespace)).operator_peering)
    assert (
        names
        == {
            "rp-resonate-patterns-operator",
            "other-resonate-patterns-operator",
        }
        if values == "operator-ha"
        else {
            "team-a-rp-resonate-patterns-operator",
            "team-b-rp-resonate-patterns-operator",
            "team-a-other-resonate-patterns-operator",
        }
    )
