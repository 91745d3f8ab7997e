"""Extension points: extra env, volumes, init and sidecar containers, probes, annotations, images.

One values file turns every extension point on for every component (two
worker groups, one overriding the defaults); the render is validated
strictly against the Kubernetes API schemas and linted, and each point is
asserted on the rendered objects. The backlog API, which runs only with the KEDA
engine, gets its own values over ci/keda-values.yaml, asserted on its exact pod
spec. Refusals (an extraEnv entry repeating a
variable the chart sets, a numeric image tag) are checked with helm 4 and
helm 3 on their exact messages.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    Rendered,
    helm_run,
    load_yaml,
    render,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

DIGEST = "sha256:" + "0123456789abcdef" * 4
HELPERS = (CHART / "templates" / "_helpers.tpl").read_text()

#: Every extension point of every component at once.
EXTENDED = """
commonAnnotations:
  example.com/owner: team-a
  example.com/note: common
extraObjects:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: "{{ .Release.Name }}-extra"
    data:
      namespace: "{{ .Release.Namespace }}"
  - |
    apiVersion: v1
    kind: Secret
    metadata:
      name: {{ include "resonate-patterns.fullname" . }}-extra
    stringData:
      key: value
workerDefaults:
  extraEnv:
    - name: EXTRA_WORKER
      value: "1"
    - name: EXTRA_FROM_FIELD
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
  extraEnvFrom:
    - configMapRef:
        name: worker-env
  extraVolumes:
    - name: certs
      secret:
        secretName: "{{ .Release.Name }}-certs"
  extraVolumeMounts:
    - name: certs
      mountPath: /etc/certs
      readOnly: true
  initContainers:
    - name: wait
      image: busybox:1.36
      command: [sh, -c, "echo {{ .Release.Name }}"]
  sidecars:
    - name: proxy
      image: envoyproxy/envoy:v1.30.0
  readinessProbe:
    failureThreshold: 4
  livenessProbe:
    exec:
      command: [cat, /tmp/alive]
workerGroups:
  - name: workers
  - name: math
    extraEnv:
      - name: EXTRA_MATH
        value: "2"
    readinessProbe:
      periodSeconds: 7
operator:
  extraEnv:
    - name: EXTRA_OPERATOR
      value: "3"
  extraEnvFrom:
    - secretRef:
        name: operator-env
  extraVolumes:
    - name: scratch
      emptyDir: {}
  extraVolumeMounts:
    - name: scratch
      mountPath: /scratch
  initContainers:
    - name: init-operator
      image: busybox:1.36
  sidecars:
    - name: operator-sidecar
      image: busybox:1.36
  startupProbe:
    failureThreshold: 90
server:
  extraEnv:
    - name: RESONATE_MESSAGES__BATCH_SIZE
      value: "50"
  extraEnvFrom:
    - secretRef:
        name: server-env
  extraVolumes:
    - name: backup
      emptyDir: {}
  extraVolumeMounts:
    - name: backup
      mountPath: /backup
  initContainers:
    - name: init-server
      image: busybox:1.36
  sidecars:
    - name: litestream
      image: litestream/litestream:0.3.13
  readinessProbe:
    timeoutSeconds: 5
  livenessProbe:
    tcpSocket:
      port: http
tests:
  extraEnv:
    - name: EXTRA_TEST
      value: "4"
  extraEnvFrom:
    - configMapRef:
        name: test-env
  extraVolumes:
    - name: fixtures
      configMap:
        name: fixtures
  extraVolumeMounts:
    - name: fixtures
      mountPath: /fixtures
"""


@pytest.fixture(scope="module")
def extended_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "extended.yaml"
    path.write_text(EXTENDED)
    return path


@pytest.fixture(scope="module")
def extended(extended_values: Path) -> Rendered:
    return render(extended_values)


def deployment(rendered: Rendered, component: str, group: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in rendered.component("Deployment", component)
        if group is None or d["metadata"]["labels"]["resonate-patterns.io/group"] == group
    ]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"])


def main_container(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(pod_spec(obj)["containers"][0])


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def helm_test_pod(rendered: Rendered) -> dict[str, Any]:
    (pod,) = rendered.kind("Pod")
    return pod


def _template(values_yaml: str, tmp_path: Path, binary: str = "helm") -> tuple[int, str]:
    values = tmp_path / "values.yaml"
    values.write_text(values_yaml)
    done = helm_run("template", RELEASE, str(CHART), "-f", str(values), binary=binary)
    return done.returncode, done.stderr


# -- the whole render is valid --------------------------------------------------------------------


@pytest.mark.parametrize("kube", ["1.29", "1.34"])
def test_extended__every_builtin_object_validates_strictly(extended: Rendered, kube: str) -> None:
    checked = 0
    for doc in extended.docs:
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            continue
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    assert checked >= 15


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_extended__lints_strictly(extended_values: Path, binary: str) -> None:
    done = helm_run("lint", "--strict", str(CHART), "-f", str(extended_values), binary=binary)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "[WARNING]" not in output


def test_extended__helm3_and_helm4_render_the_same(extended_values: Path) -> None:
    args = ["template", RELEASE, str(CHART), "-f", str(extended_values), "--namespace", NAMESPACE]
    v4 = helm_run(*args)
    v3 = helm_run(*args, binary="helm3")
    assert v4.returncode == 0, v4.stderr
    assert v3.returncode == 0, v3.stderr
    assert [d for d in yaml.safe_load_all(v3.stdout) if d] == [
        d for d in yaml.safe_load_all(v4.stdout) if d
    ]


# -- env, volumes, containers ---------------------------------------------------------------------


def test_workers__extra_env_after_the_chart_env_per_group(extended: Rendered) -> None:
    workers = main_container(deployment(extended, "worker", "workers"))
    math = main_container(deployment(extended, "worker", "math"))
    assert env_names(workers)[-2:] == ["EXTRA_WORKER", "EXTRA_FROM_FIELD"]
    assert env_names(workers)[:2] == ["RESONATE_URL", "RESONATE_GROUP"]
    assert workers["env"][-1] == {
        "name": "EXTRA_FROM_FIELD",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    # A group's list replaces the default list.
    assert env_names(math)[-1] == "EXTRA_MATH"
    assert "EXTRA_WORKER" not in env_names(math)
    assert workers["envFrom"] == [{"configMapRef": {"name": "worker-env"}}]
    assert math["envFrom"] == workers["envFrom"]


def test_workers__volumes_init_containers_and_sidecars_rendered_with_tpl(
    extended: Rendered,
) -> None:
    spec = pod_spec(deployment(extended, "worker", "workers"))
    assert spec["volumes"] == [
        {"name": "tmp", "emptyDir": {}},
        {"name": "certs", "secret": {"secretName": f"{RELEASE}-certs"}},
    ]
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "certs", "mountPath": "/etc/certs", "readOnly": True},
    ]
    assert spec["initContainers"] == [
        {"name": "wait", "image": "busybox:1.36", "command": ["sh", "-c", f"echo {RELEASE}"]}
    ]
    assert [c["name"] for c in spec["containers"]] == ["worker", "proxy"]
    assert spec["containers"][1] == {"name": "proxy", "image": "envoyproxy/envoy:v1.30.0"}


def test_operator__extension_points(extended: Rendered) -> None:
    spec = pod_spec(deployment(extended, "operator"))
    container = spec["containers"][0]
    assert env_names(container)[-1] == "EXTRA_OPERATOR"
    assert container["envFrom"] == [{"secretRef": {"name": "operator-env"}}]
    assert {"name": "scratch", "emptyDir": {}} in spec["volumes"]
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert [c["name"] for c in spec["initContainers"]] == ["init-operator"]
    assert [c["name"] for c in spec["containers"]] == ["operator", "operator-sidecar"]


def test_server__extension_points(extended: Rendered) -> None:
    spec = pod_spec(deployment(extended, "server"))
    container = spec["containers"][0]
    assert env_names(container)[-1] == "RESONATE_MESSAGES__BATCH_SIZE"
    assert container["envFrom"] == [{"secretRef": {"name": "server-env"}}]
    assert spec["volumes"][-1] == {"name": "backup", "emptyDir": {}}
    assert container["volumeMounts"][-1] == {"name": "backup", "mountPath": "/backup"}
    assert [c["name"] for c in spec["initContainers"]] == ["init-server"]
    assert [c["name"] for c in spec["containers"]] == ["server", "litestream"]


def test_test_pod__extra_env_and_volumes(extended: Rendered) -> None:
    pod = helm_test_pod(extended)
    container = main_container(pod)
    assert env_names(container)[-1] == "EXTRA_TEST"
    assert container["envFrom"] == [{"configMapRef": {"name": "test-env"}}]
    assert pod["spec"]["volumes"][-1] == {"name": "fixtures", "configMap": {"name": "fixtures"}}
    assert container["volumeMounts"][-1] == {"name": "fixtures", "mountPath": "/fixtures"}


def test_defaults__no_extension_fields_rendered() -> None:
    for obj, spec in render().pod_specs():
        where = obj["metadata"]["name"]
        assert "initContainers" not in spec, where
        assert len(spec["containers"]) == 1, where
        assert "envFrom" not in spec["containers"][0], where
        assert spec["volumes"][0]["name"] == "tmp", where


# -- probes ---------------------------------------------------------------------------------------


def test_probes__defaults_and_readiness_tolerates_a_miss() -> None:
    rendered = render()
    worker = main_container(deployment(rendered, "worker"))
    assert worker["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 2,
    }
    assert worker["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 2,
        "failureThreshold": 30,
    }
    assert worker["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    for obj in rendered.kind("Deployment"):
        probe = main_container(obj)["readinessProbe"]
        assert probe["failureThreshold"] >= 2, obj["metadata"]["name"]


def test_probes__user_keys_merge_over_the_defaults_per_group(extended: Rendered) -> None:
    workers = main_container(deployment(extended, "worker", "workers"))
    math = main_container(deployment(extended, "worker", "math"))
    assert workers["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 4,
    }
    # The group's keys merge over workerDefaults', which merge over the chart's.
    assert math["readinessProbe"] == {**workers["readinessProbe"], "periodSeconds": 7}


def test_probes__an_own_handler_replaces_the_charts(extended: Rendered) -> None:
    worker = main_container(deployment(extended, "worker", "workers"))
    assert worker["livenessProbe"] == {
        "exec": {"command": ["cat", "/tmp/alive"]},
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    server = main_container(deployment(extended, "server"))
    assert server["livenessProbe"] == {
        "tcpSocket": {"port": "http"},
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    assert server["readinessProbe"]["timeoutSeconds"] == 5
    assert server["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    operator = main_container(deployment(extended, "operator"))
    assert operator["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http-metrics"},
        "periodSeconds": 2,
        "failureThreshold": 90,
    }


# -- extraEnv refusals ----------------------------------------------------------------------------

#: (case id, values YAML, the exact one-line message).
ENV_REFUSALS: list[tuple[str, str, str]] = [
    (
        "worker-default",
        "workerDefaults:\n  extraEnv:\n    - name: RESONATE_GROUP\n      value: x\n",
        "workerGroups[0] (workers): extraEnv sets RESONATE_GROUP, which the chart sets itself; "
        "use the chart's value for it (see values.yaml)",
    ),
    (
        "worker-group",
        "workerGroups:\n  - name: workers\n  - name: math\n    extraEnv:\n"
        "      - name: RESONATE_PATTERNS_DRAIN_SECONDS\n        value: '5'\n",
        "workerGroups[1] (math): extraEnv sets RESONATE_PATTERNS_DRAIN_SECONDS, which the chart "
        "sets itself",
    ),
    (
        "worker-token",
        "workerDefaults:\n  extraEnv:\n    - name: RESONATE_TOKEN\n      value: x\n",
        "workerGroups[0] (workers): extraEnv sets RESONATE_TOKEN, which the chart sets itself",
    ),
    (
        "worker-extra-settings",
        "workerDefaults:\n  extraSettings:\n    RESONATE_PATTERNS_STEP_DELAY_MS: 5\n"
        "  extraEnv:\n    - name: RESONATE_PATTERNS_STEP_DELAY_MS\n      value: '6'\n",
        "workerGroups[0] (workers): extraEnv sets RESONATE_PATTERNS_STEP_DELAY_MS, which "
        "extraSettings sets too; set it in one place",
    ),
    (
        "worker-twice",
        "workerDefaults:\n  extraEnv:\n    - name: A\n      value: '1'\n"
        "    - name: A\n      value: '2'\n",
        "workerGroups[0] (workers): extraEnv sets A twice",
    ),
    (
        "operator",
        "operator:\n  extraEnv:\n    - name: RESONATE_PATTERNS_OPERATOR_PEERING\n      value: x\n",
        "operator.extraEnv sets RESONATE_PATTERNS_OPERATOR_PEERING, which the chart sets itself",
    ),
    (
        "server",
        "server:\n  extraEnv:\n    - name: RESONATE_STORAGE__TYPE\n      value: postgres\n",
        "server.extraEnv sets RESONATE_STORAGE__TYPE, which the chart sets itself",
    ),
    (
        "server-twice",
        "server:\n  extraEnv:\n    - name: RUST_LOG\n      value: a\n"
        "    - name: RUST_LOG\n      value: b\n",
        "server.extraEnv sets RUST_LOG twice",
    ),
    (
        "tests",
        "tests:\n  extraEnv:\n    - name: RESONATE_URL\n      value: http://elsewhere\n",
        "tests.extraEnv sets RESONATE_URL, which the chart sets itself",
    ),
    (
        "backlog-api-keda",
        "workerDefaults:\n  autoscaling:\n    engine: keda\nbacklogApi:\n  extraEnv:\n"
        "    - name: RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS\n      value: '9'\n",
        "backlogApi.extraEnv sets RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS, which the chart sets "
        "itself; use the chart's value for it (see values.yaml)",
    ),
    (
        "backlog-api-twice",
        "backlogApi:\n  enabled: true\n  extraEnv:\n    - name: A\n      value: '1'\n"
        "    - name: A\n      value: '2'\n",
        "backlogApi.extraEnv sets A twice",
    ),
]


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize(
    ("values_yaml", "message"), [pytest.param(v, m, id=i) for i, v, m in ENV_REFUSALS]
)
def test_extra_env__a_name_the_chart_sets_fails_with_one_line(
    values_yaml: str, message: str, binary: str, tmp_path: Path
) -> None:
    code, stderr = _template(values_yaml, tmp_path, binary)
    assert code != 0
    assert message in stderr, stderr


def test_extra_env__off_components_are_not_checked(tmp_path: Path) -> None:
    values = (
        "operator:\n  enabled: false\n  extraEnv:\n    - name: RESONATE_PATTERNS_HTTP_PORT\n"
        "      value: '1'\ntests:\n  enabled: false\n  extraEnv:\n    - name: RESONATE_URL\n"
        "      value: x\nbacklogApi:\n  extraEnv:\n    - name: RESONATE_URL\n      value: x\n"
    )
    code, stderr = _template(values, tmp_path)
    assert code == 0, stderr


def _reserved(define: str) -> set[str]:
    match = re.search(r'\{\{- define "' + re.escape(define) + r'" -\}\}\n(.*?)\n', HELPERS)
    assert match, define
    return set(match.group(1).split())


def _everything_on() -> Rendered:
    return render(
        CHART / "ci" / "auth-values.yaml",
        sets=(
            "workerDefaults.factorialTarget=workers",
            "workerDefaults.enrichTarget=workers",
            "operator.clusterWide=true",
            "backlogApi.enabled=true",
        ),
    )


@pytest.mark.parametrize(
    ("component", "define"),
    [
        ("worker", "resonate-patterns.worker.envNames"),
        ("operator", "resonate-patterns.operator.envNames"),
        ("test", "resonate-patterns.tests.envNames"),
        ("server", "resonate-patterns.server.envNames"),
        ("backlog-api", "resonate-patterns.backlogApi.envNames"),
    ],
)
def test_extra_env__reserved_names_cover_every_name_the_chart_sets(
    component: str, define: str
) -> None:
    rendered = _everything_on()
    objs = (
        rendered.kind("Pod") if component == "test" else rendered.component("Deployment", component)
    )
    assert objs
    for obj in objs:
        assert set(env_names(main_container(obj))) <= _reserved(define)


# -- images ---------------------------------------------------------------------------------------


def all_images(rendered: Rendered) -> Iterator[tuple[str, str]]:
    for obj, spec in rendered.pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield obj["metadata"]["name"], container["image"]


def test_global_image_registry__prefixes_every_image_of_the_chart() -> None:
    rendered = render(sets=("global.imageRegistry=mirror.example.com:5000",))
    images = dict(all_images(rendered))
    ours = "mirror.example.com:5000/resonate-patterns:0.1.0"
    server = "mirror.example.com:5000/resonatehqio/resonate:v0.9.8"
    assert images == {
        f"{RELEASE}-resonate-patterns-worker-workers": ours,
        f"{RELEASE}-resonate-patterns-operator": ours,
        f"{RELEASE}-resonate-patterns-test-factorial": ours,
        f"{RELEASE}-resonate-patterns-server": server,
    }


def test_image_digest__wins_over_the_tag() -> None:
    rendered = render(sets=(f"image.digest={DIGEST}", "image.tag=9.9.9"))
    images = {name: image for name, image in all_images(rendered) if "server" not in name}
    assert len(images) == 3
    assert set(images.values()) == {f"resonate-patterns@{DIGEST}"}


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize("key", ["image", "server.image"])
def test_image_tag__a_yaml_number_is_refused_by_the_schema(
    key: str, binary: str, tmp_path: Path
) -> None:
    nested = "image:\n  tag: 0.10\n"
    if key == "server.image":
        nested = "server:\n  image:\n    tag: 0.10\n"
    code, stderr = _template(nested, tmp_path, binary)
    assert code != 0
    text = re.sub(r"'/([^']*)'", lambda m: m.group(1).replace("/", "."), stderr).lower()
    assert f"{key}.tag".lower() in text, stderr
    assert "string" in text, stderr
    assert ':0.1"' not in stderr


def test_image_tag__a_quoted_number_keeps_its_digits(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text('image:\n  tag: "0.10"\n')
    images = {image for name, image in all_images(render(values)) if "server" not in name}
    assert images == {"resonate-patterns:0.10"}


# -- security context ids -------------------------------------------------------------------------


def test_security_context__null_ids_are_left_out(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "podSecurityContext:\n  runAsUser: null\n  runAsGroup: null\n  fsGroup: null\n"
        "server:\n  podSecurityContext:\n    runAsUser: null\n    runAsGroup: null\n"
        "    fsGroup: null\n"
    )
    rendered = render(values)
    specs = list(rendered.pod_specs())
    assert len(specs) == 4
    for obj, spec in specs:
        context = spec["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context), obj["metadata"]["name"]
        assert context["runAsNonRoot"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    server = pod_spec(deployment(rendered, "server"))
    assert server["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    for doc in rendered.docs:
        try:
            kubernetes_validate.validate(doc, "1.34", strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            continue


def test_security_context__schema_still_refuses_a_negative_id(tmp_path: Path) -> None:
    code, stderr = _template("podSecurityContext:\n  runAsUser: -1\n", tmp_path)
    assert code != 0
    assert "runAsUser" in stderr


# -- annotations and extra objects ----------------------------------------------------------------


def test_common_annotations__on_every_object_own_ones_win(extended: Rendered) -> None:
    full = render(
        CHART / "ci" / "monitoring-on-values.yaml",
        sets=(
            "commonAnnotations.example\\.com/owner=team-a",
            "server.service.annotations.example\\.com/owner=server-team",
            "auth.enabled=true",
            "auth.publicKey.pem=-----BEGIN PUBLIC KEY-----",
            "auth.token.value=a.b.c",
            "operator.replicas=2",
            "server.storage.persistence.keepOnUninstall=true",
        ),
    )
    templated = [d for d in full.docs if d["kind"] != "CustomResourceDefinition"]
    assert len(templated) >= 20
    for doc in templated:
        annotations = doc["metadata"].get("annotations", {})
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        expected = (
            "server-team" if where == f"Service/{RELEASE}-resonate-patterns-server" else "team-a"
        )
        assert annotations.get("example.com/owner") == expected, where
    pvc = full.get("PersistentVolumeClaim", f"{RELEASE}-resonate-patterns-server-data")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (pod,) = full.kind("Pod")
    assert pod["metadata"]["annotations"] == {
        "example.com/owner": "team-a",
        "helm.sh/hook": "test",
        "helm.sh/hook-delete-policy": "before-hook-creation",
    }
    # Pod templates are left alone (an annotation change there restarts pods).
    for deployment_ in full.kind("Deployment"):
        template = deployment_["spec"]["template"]["metadata"].get("annotations", {})
        assert "example.com/owner" not in template


def test_common_annotations__none_by_default() -> None:
    for doc in render().docs:
        annotations = doc["metadata"].get("annotations", {})
        assert not {k for k in annotations if k.startswith("example.com/")}
    service = render().get("Service", f"{RELEASE}-resonate-patterns-server")
    assert "annotations" not in service["metadata"]


def test_extra_objects__rendered_with_tpl(extended: Rendered) -> None:
    config = extended.get("ConfigMap", f"{RELEASE}-extra")
    assert config["data"] == {"namespace": NAMESPACE}
    secret = extended.get("Secret", f"{RELEASE}-resonate-patterns-extra")
    assert secret["stringData"] == {"key": "value"}
    assert not render().kind("Secret")


# -- pod template labels (no chart or project version) --------------------------------------------

STABLE_POD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "resonate-patterns.io/group",
}


def test_pod_templates__only_stable_labels() -> None:
    rendered = render(sets=("workerDefaults.podLabels.team=a", "server.podLabels.team=b"))
    for obj in rendered.kind("Deployment"):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        component = labels["app.kubernetes.io/component"]
        allowed = STABLE_POD_LABELS | {"team"}
        if component == "server":
            allowed = allowed | {"app.kubernetes.io/version"}
            assert labels["app.kubernetes.io/version"] == "v0.9.8"
        assert set(labels) <= allowed, obj["metadata"]["name"]
        assert "helm.sh/chart" not in labels
        assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_server__deployment_version_label_is_the_server_tag() -> None:
    rendered = render(sets=("server.image.tag=v0.10.1", "server.allowUntestedImage=true"))
    server = deployment(rendered, "server")
    assert server["metadata"]["labels"]["app.kubernetes.io/version"] == "v0.10.1"
    assert (
        server["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v0.10.1"
    )
    worker = deployment(rendered, "worker")
    assert worker["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0"


def test_pod_templates__a_chart_bump_changes_no_pod_template(tmp_path: Path) -> None:
    bumped = tmp_path / "resonate-patterns"
    shutil.copytree(CHART, bumped)
    chart = load_yaml(bumped / "Chart.yaml")
    text = (bumped / "Chart.yaml").read_text()
    text = text.replace(f"version: {chart['version']}", "version: 99.0.0", 1)
    (bumped / "Chart.yaml").write_text(text)
    done = helm_run("template", RELEASE, str(bumped), "--namespace", NAMESPACE)
    assert done.returncode == 0, done.stderr
    after = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Deployment"]
    before = render().kind("Deployment")
    assert len(after) == len(before) == 3
    for old, new in zip(before, after, strict=True):
        assert old["spec"]["template"] == new["spec"]["template"], old["metadata"]["name"]
        assert (
            old["metadata"]["labels"]["helm.sh/chart"] != new["metadata"]["labels"]["helm.sh/chart"]
        )


# -- the backlog API (autoscaling.engine keda) ----------------------------------------------------

BACKLOG_API = f"{RELEASE}-resonate-patterns-backlog-api"

#: Every extension point of the backlog API, over ci/keda-values.yaml (which runs it).
BACKLOG_API_EXTENDED = """
commonAnnotations:
  example.com/owner: team-a
backlogApi:
  extraEnv:
    - name: EXTRA_BACKLOG
      value: "5"
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
  extraEnvFrom:
    - secretRef:
        name: backlog-env
  extraVolumes:
    - name: ca
      configMap:
        name: "{{ .Release.Name }}-ca"
  extraVolumeMounts:
    - name: ca
      mountPath: /etc/ca
      readOnly: true
  initContainers:
    - name: init-backlog
      image: busybox:1.36
      command: [sh, -c, "echo {{ .Release.Name }}"]
  sidecars:
    - name: backlog-sidecar
      image: busybox:1.36
      args: ["{{ .Release.Namespace }}"]
  startupProbe:
    failureThreshold: 60
  livenessProbe:
    tcpSocket:
      port: http
  readinessProbe:
    periodSeconds: 7
"""

#: The chart's own part of the backlog API container, as rendered from ci/keda-values.yaml.
BACKLOG_API_ENV = [
    {
        "name": "RESONATE_URL",
        "value": f"http://{RELEASE}-resonate-patterns-server.{NAMESPACE}.svc:8001",
    },
    {"name": "RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS", "value": "2"},
    {"name": "RESONATE_PATTERNS_HTTP_PORT", "value": "9400"},
    {"name": "RESONATE_PATTERNS_LOG_LEVEL", "value": "info"},
    {"name": "RESONATE_PATTERNS_LOG_FORMAT", "value": "json"},
]
BACKLOG_API_RESOURCES = {
    "requests": {"cpu": "20m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _keda_values(path: Path, extra_yaml: str) -> Path:
    """ci/keda-values.yaml with ``extra_yaml``'s top-level keys added (none may repeat one)."""
    keda, extra = load_yaml(CI_VALUES["keda"]), yaml.safe_load(extra_yaml)
    assert not keda.keys() & extra.keys()
    path.write_text(yaml.safe_dump({**keda, **extra}, sort_keys=False))
    return path


def backlog_api(rendered: Rendered) -> dict[str, Any]:
    return rendered.get("Deployment", BACKLOG_API)


@pytest.fixture(scope="module")
def backlog_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _keda_values(tmp_path_factory.mktemp("values") / "backlog.yaml", BACKLOG_API_EXTENDED)


@pytest.fixture(scope="module")
def backlog_extended(backlog_values: Path) -> Rendered:
    return render(backlog_values)


def test_backlog_api__keda_defaults__exact_pod_spec_without_extensions() -> None:
    assert pod_spec(backlog_api(render(CI_VALUES["keda"]))) == {
        "serviceAccountName": f"{RELEASE}-resonate-patterns-worker",
        "automountServiceAccountToken": False,
        "securityContext": POD_SECURITY_CONTEXT,
        "containers": [
            {
                "name": "backlog-api",
                "image": "resonate-patterns:0.1.0",
                "imagePullPolicy": "IfNotPresent",
                "args": ["backlog-api"],
                "env": BACKLOG_API_ENV,
                "ports": [{"name": "http", "containerPort": 9400, "protocol": "TCP"}],
                "startupProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 2,
                    "failureThreshold": 30,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 10,
                    "timeoutSeconds": 3,
                    "failureThreshold": 3,
                },
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "http"},
                    "periodSeconds": 5,
                    "timeoutSeconds": 3,
                    "failureThreshold": 2,
                },
                "resources": BACKLOG_API_RESOURCES,
                "securityContext": CONTAINER_SECURITY_CONTEXT,
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def test_backlog_api__every_extension_point__exact_pod_spec(backlog_extended: Rendered) -> None:
    assert pod_spec(backlog_api(backlog_extended)) == {
        "serviceAccountName": f"{RELEASE}-resonate-patterns-worker",
        "automountServiceAccountToken": False,
        "securityContext": POD_SECURITY_CONTEXT,
        "initContainers": [
            {
                "name": "init-backlog",
                "image": "busybox:1.36",
                "command": ["sh", "-c", f"echo {RELEASE}"],
            }
        ],
        "containers": [
            {
                "name": "backlog-api",
                "image": "resonate-patterns:0.1.0",
                "imagePullPolicy": "IfNotPresent",
                "args": ["backlog-api"],
                # The chart's variables first, then extraEnv in its order.
                "env": [
                    *BACKLOG_API_ENV,
                    {"name": "EXTRA_BACKLOG", "value": "5"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "envFrom": [{"secretRef": {"name": "backlog-env"}}],
                "ports": [{"name": "http", "containerPort": 9400, "protocol": "TCP"}],
                "startupProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 2,
                    "failureThreshold": 60,
                },
                # An own handler replaces the chart's httpGet; the timings stay.
                "livenessProbe": {
                    "tcpSocket": {"port": "http"},
                    "periodSeconds": 10,
                    "timeoutSeconds": 3,
                    "failureThreshold": 3,
                },
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "http"},
                    "periodSeconds": 7,
                    "timeoutSeconds": 3,
                    "failureThreshold": 2,
                },
                "resources": BACKLOG_API_RESOURCES,
                "securityContext": CONTAINER_SECURITY_CONTEXT,
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "ca", "mountPath": "/etc/ca", "readOnly": True},
                ],
            },
            {"name": "backlog-sidecar", "image": "busybox:1.36", "args": [NAMESPACE]},
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "ca", "configMap": {"name": f"{RELEASE}-ca"}},
        ],
    }


def test_backlog_api__common_annotations_on_its_objects_not_its_pod_template(
    backlog_extended: Rendered,
) -> None:
    deployment_ = backlog_api(backlog_extended)
    assert deployment_["metadata"]["annotations"] == {"example.com/owner": "team-a"}
    service = backlog_extended.get("Service", BACKLOG_API)
    assert service["metadata"]["annotations"] == {"example.com/owner": "team-a"}
    assert "annotations" not in deployment_["spec"]["template"]["metadata"]


@pytest.mark.parametrize("kube", ["1.29", "1.34"])
def test_backlog_api__extended_validates_strictly(backlog_extended: Rendered, kube: str) -> None:
    for doc in (backlog_api(backlog_extended), backlog_extended.get("Service", BACKLOG_API)):
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_backlog_api__extended_lints_strictly(backlog_values: Path, binary: str) -> None:
    done = helm_run("lint", "--strict", str(CHART), "-f", str(backlog_values), binary=binary)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "[WARNING]" not in output


def test_backlog_api__extended_helm3_and_helm4_render_the_same(backlog_values: Path) -> None:
    args = ["template", RELEASE, str(CHART), "-f", str(backlog_values), "--namespace", NAMESPACE]
    v4 = helm_run(*args, "--show-only", "templates/backlog-api/deployment.yaml")
    v3 = helm_run(*args, "--show-only", "templates/backlog-api/deployment.yaml", binary="helm3")
    assert v4.returncode == 0, v4.stderr
    assert v3.returncode == 0, v3.stderr
    assert yaml.safe_load(v3.stdout) == yaml.safe_load(v4.stdout)


def test_backlog_api__registry_digest_and_null_ids(tmp_path: Path) -> None:
    values = _keda_values(
        tmp_path / "values.yaml",
        f"global:\n  imageRegistry: mirror.example.com:5000\nimage:\n  digest: {DIGEST}\n"
        "podSecurityContext:\n  runAsUser: null\n  runAsGroup: null\n  fsGroup: null\n",
    )
    spec = pod_spec(backlog_api(render(values)))
    assert spec["containers"][0]["image"] == f"mirror.example.com:5000/resonate-patterns@{DIGEST}"
    # Null ids are left out (OpenShift's restricted SCC assigns them).
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_backlog_api__a_quoted_numeric_tag_keeps_its_digits(tmp_path: Path) -> None:
    values = _keda_values(tmp_path / "values.yaml", 'image:\n  tag: "0.10"\n')
    container = main_container(backlog_api(render(values)))
    assert container["image"] == "resonate-patterns:0.10"


#: (case id, backlogApi values YAML, substrings every helm's stderr must contain after
#: normalising "/a/0/b" paths to "a.0.b" and lower-casing).
BACKLOG_API_SCHEMA_REFUSALS: list[tuple[str, str, list[str]]] = [
    ("unknown-key", "backlogApi:\n  sidecar: []\n", ["backlogapi", "sidecar"]),
    (
        "env-number",
        "backlogApi:\n  extraEnv:\n    - name: A\n      value: 1\n",
        ["backlogapi.extraenv.0.value", "string"],
    ),
    (
        "env-unknown-field",
        "backlogApi:\n  extraEnv:\n    - name: A\n      valu: x\n",
        ["backlogapi.extraenv.0", "valu"],
    ),
    (
        "env-from-unknown-field",
        "backlogApi:\n  extraEnvFrom:\n    - secret: {name: x}\n",
        ["backlogapi.extraenvfrom.0", "secret"],
    ),
    (
        "mount-without-path",
        "backlogApi:\n  extraVolumeMounts:\n    - name: ca\n",
        ["backlogapi.extravolumemounts.0", "mountpath"],
    ),
    (
        "volume-without-name",
        "backlogApi:\n  extraVolumes:\n    - emptyDir: {}\n",
        ["backlogapi.extravolumes.0", "name"],
    ),
    (
        "sidecar-without-name",
        "backlogApi:\n  sidecars:\n    - image: busybox:1.36\n",
        ["backlogapi.sidecars.0", "name"],
    ),
    (
        "init-container-without-name",
        "backlogApi:\n  initContainers:\n    - image: busybox:1.36\n",
        ["backlogapi.initcontainers.0", "name"],
    ),
    (
        "probe-unknown-key",
        "backlogApi:\n  readinessProbe:\n    periodSecond: 3\n",
        ["backlogapi.readinessprobe", "periodsecond"],
    ),
    (
        "probe-zero-period",
        "backlogApi:\n  startupProbe:\n    periodSeconds: 0\n",
        ["backlogapi.startupprobe.periodseconds"],
    ),
]


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize(
    ("values_yaml", "expected"),
    [pytest.param(v, e, id=i) for i, v, e in BACKLOG_API_SCHEMA_REFUSALS],
)
def test_backlog_api__schema_refuses_bad_extension_values(
    values_yaml: str, expected: list[str], binary: str, tmp_path: Path
) -> None:
    values = _keda_values(tmp_path / "values.yaml", values_yaml)
    done = helm_run("template", RELEASE, str(CHART), "-f", str(values), binary=binary)
    assert done.returncode != 0
    text = re.sub(r"'/([^']*)'", lambda m: m.group(1).replace("/", "."), done.stderr).lower()
    for part in expected:
        assert part in text, done.stderr
    assert "values don't meet the specifications of the schema" in done.stderr
