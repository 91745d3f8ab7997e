"""The chart's lifecycle on a real API server, with the real helm and kubectl.

Every test installs the chart (``charts/resonate-patterns``) as release ``rp``
in its own namespace of the session's control plane (tests/cluster/conftest.py:
kube-apiserver v1.37 with RBAC and admission, the controller manager, kwok
nodes whose pods turn Ready without running anything) and uninstalls it at
the end. Covered:

* install with the default, autoscaling-off and two-groups values, and with
  auth and the dashboard on (the chart's ConfigMaps and Secret): every object
  accepted (CRDs with their CEL rules, RBAC, PDBs, Services, ConfigMaps, the
  PVC), ``--wait`` until the Deployments are Available, then ``helm upgrade``
  and ``helm uninstall --wait``;
* an invalid WorkerAutoscaler refused with the CRD's own message;
* where charts break on a live cluster, each reproduced before it was fixed:
  (a) uninstall and namespace deletion after the operator ran (as a local
  process, logged in with a token of the chart's ServiceAccount) — its
  finalizer used to outlive it and hold the namespace in Terminating;
  (b) ``operator.replicas`` 2 -> 1 (RollingUpdate -> Recreate) and postgres ->
  sqlite — server-side apply used to keep the defaulted ``rollingUpdate``;
  (c) autoscaling turned on by an upgrade — the group used to drop to 1
  replica; (d) a chart that sets a WorkerAutoscaler field the cluster's
  (older) CRD lacks — Helm never upgrades ``crds/``: refused or dropped
  silently, now a render error naming the fix;
* two operator replicas with peering: exactly one acts, the other takes over.

The upgrade cases run with Helm 4 (server-side apply) and Helm 3 (client-side
three-way merge), whose merges differ exactly where these cases break.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.chart.test_keda import KEDA_CRDS, KEDA_CRDS_INSTALL
from tests.cluster.conftest import ControlPlane, LocalServer, eventually, submit
from tests.cluster.procs import start_logged
from tests.conftest import ROOT, require_file, require_tool

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.cluster_e2e, pytest.mark.slow]

CHART = ROOT / "charts" / "resonate-patterns"
CRDS = CHART / "crds"
CI = CHART / "ci"
#: The WorkerAutoscaler CRD's name and file.
WA_CRD = "workerautoscalers.resonate-patterns.io"
WA_CRD_FILE = CRDS / "workerautoscalers.yaml"
#: The finalizer earlier operator builds put on WorkerAutoscalers.
FINALIZER = "resonate-patterns.io/autoscaler"
#: Seconds a helm operation with --wait, or a rollout, may take.
WITHIN = 90.0
#: An address nothing listens on, for releases whose server is never called.
NOWHERE = "http://127.0.0.1:9"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without KUBECONFIG or any RESONATE_* setting, plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("RESONATE")
    }
    return {**env, **extra}


@dataclass
class Process:
    """A local process (server or operator) with its log file."""

    name: str
    log: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, name: str, argv: list[str], log: Path, env: dict[str, str]) -> Process:
        return cls(name, log, start_logged(argv, log, env, cwd=ROOT))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed."""
        out: list[dict[str, Any]] = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 15 s; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Release:
    """Release ``rp`` of the chart in its own namespace, driven by one helm binary."""

    cp: ControlPlane
    namespace: str
    #: "helm" (v4, server-side apply) or "helm3" (client-side three-way merge)
    helm_binary: str
    tmp: Path
    name: str = "rp"
    volumes: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    servers: list[LocalServer] = field(default_factory=list)

    def fullname(self, suffix: str) -> str:
        """The chart's name of one of its objects, e.g. ``fullname("operator")``."""
        return f"{self.name}-resonate-patterns-{suffix}"

    def helm(
        self, *args: str, check: bool = True, timeout: float = WITHIN + 30
    ) -> subprocess.CompletedProcess[str]:
        """Run helm as the admin in the release's namespace."""
        proc = subprocess.run(
            [self.helm_binary, *args, "-n", self.namespace, f"--kubeconfig={self.cp.kubeconfig}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=_clean_env(),
        )
        if check and proc.returncode != 0:
            msg = f"{self.helm_binary} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
            raise AssertionError(msg)
        return proc

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.helm("install", self.name, str(CHART), *args)

    def upgrade(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.helm("upgrade", self.name, str(CHART), *args, check=check)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, "-n", self.namespace, check=check)

    def get(self, *args: str) -> dict[str, Any]:
        return self.cp.get(*args, "-n", self.namespace)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.helm("status", self.name, "-o", "json").stdout)
        return out

    def data_volume(self) -> None:
        """A PersistentVolume bound in advance to the server's PVC (kwok has no provisioner)."""
        name = f"{self.namespace}-data"
        self.cp.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "hostPath": {"path": f"/tmp/{name}"},
                    "claimRef": {
                        "namespace": self.namespace,
                        "name": self.fullname("server-data"),
                    },
                },
            }
        )
        self.volumes.append(name)

    def server(self) -> str:
        """Start a local ``resonate-patterns server``; its URL once /readyz answers."""
        server = LocalServer.start(self.tmp)
        self.servers.append(server)
        return server.url

    def operator(self, index: int = 0) -> Process:
        """``resonate-patterns operator`` as the chart's operator pod would run it.

        It logs in with a token of the chart's operator ServiceAccount (so only
        the chart's RBAC applies), with the environment of the operator
        Deployment's container (peering name, log settings), on a free port.
        """
        account = self.fullname("operator")
        token = self.kubectl("create", "token", account).stdout.strip()
        kubeconfig = self.tmp / f"operator-{self.namespace}-{index}.kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {
                                "server": self.cp.server,
                                "certificate-authority": str(self.cp.ca_file),
                            },
                        }
                    ],
                    "users": [{"name": account, "user": {"token": token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": account}}],
                    "current-context": "c",
                }
            )
        )
        kubeconfig.chmod(0o600)
        container = self.get("deployment", account)["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env.update(RESONATE_PATTERNS_HTTP_PORT="0", KUBECONFIG=str(kubeconfig))
        argv = [sys.executable, "-m", "service", "operator", "--namespace", self.namespace]
        log = self.tmp / f"operator-{self.namespace}-{index}.log"
        proc = Process.start(f"operator-{index}", argv, log, _clean_env(**env))
        self.processes.append(proc)
        return proc

    def wait_available(self) -> None:
        """Every Deployment of the release has all its replicas Available."""
        for deployment in self.get("deployments")["items"]:
            name = deployment["metadata"]["name"]
            self.kubectl("rollout", "status", f"deployment/{name}", f"--timeout={WITHIN:g}s")

    def replicas(self, deployment: str) -> int:
        return int(self.get("deployment", deployment)["spec"].get("replicas", -1))


@pytest.fixture
def release(
    control_plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Release]:
    """A fresh namespace for release ``rp`` (helm binary: the indirect param, else helm).

    Teardown: stops the local processes, uninstalls the release if a test left
    it, deletes the namespace (without waiting) and the test's PersistentVolumes.
    """
    binary = str(getattr(request, "param", "helm"))
    require_tool(binary)
    namespace = f"c-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    rel = Release(control_plane, namespace, binary, tmp_path)
    yield rel
    for proc in rel.processes:  # SIGTERM to all first: each takes seconds to exit
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
    for proc in rel.processes:
        proc.stop()
    for server in rel.servers:
        server.stop()
    if rel.helm("status", rel.name, check=False).returncode == 0:
        # Bounded: a test that failed may have left objects that never go.
        with contextlib.suppress(subprocess.TimeoutExpired):
            rel.helm("uninstall", rel.name, "--wait", "--timeout=30s", check=False, timeout=60)
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    for volume in rel.volumes:
        control_plane.kubectl("delete", "pv", volume, "--wait=false", check=False)


def crd_spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The openAPIV3Schema of ``spec`` in the CRD's v1alpha1 version."""
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    spec: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def objects_of(manifest: str) -> list[tuple[str, str]]:
    """(kind, name) of every object in a rendered manifest."""
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def live_objects(rel: Release, manifest: str) -> list[tuple[str, str]]:
    """(kind, name) of the manifest's objects that exist in the cluster."""
    proc = rel.cp.kubectl(
        "get", "-f", "-", "-n", rel.namespace, "-o", "json", "--ignore-not-found",
        stdin=manifest, check=False,
    )  # fmt: skip
    if not proc.stdout.strip():
        return []
    data = json.loads(proc.stdout)
    items = data.get("items", [data]) if data.get("kind") == "List" else [data]
    return sorted((o["kind"], o["metadata"]["name"]) for o in items)


# --- install, upgrade, uninstall ----------------------------------------------------------------


def auth_and_dashboard_values() -> dict[str, Any]:
    """Values whose objects include the chart's ConfigMaps and a Secret it creates."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "auth": {"enabled": True, "publicKey": {"pem": pem.decode()}, "token": {"value": "a.b.c"}},
        "monitoring": {"dashboard": {"enabled": True}},
    }


@pytest.mark.parametrize(
    ("values", "groups", "kinds"),
    [
        pytest.param(
            "default",
            1,
            {"WorkerAutoscaler", "PodDisruptionBudget", "Role", "RoleBinding"},
            id="default",
        ),
        pytest.param("autoscaling-off", 0, {"PodDisruptionBudget"}, id="autoscaling-off"),
        pytest.param(
            "two-groups",
            2,
            {"WorkerAutoscaler", "PodDisruptionBudget", "Role", "RoleBinding"},
            id="two-groups",
        ),
        pytest.param(
            "auth-and-dashboard",
            1,
            {"ConfigMap", "Secret", "WorkerAutoscaler"},
            id="auth-and-dashboard",
        ),
    ],
)
def test_install__values__every_object_accepted_available_upgraded_uninstalled(
    release: Release, values: str, groups: int, kinds: set[str]
) -> None:
    rel = release
    rel.data_volume()
    path = CI / f"{values}-values.yaml"
    if not path.exists():
        path = rel.tmp / f"{values}-values.yaml"
        path.write_text(yaml.safe_dump(auth_and_dashboard_values()))

    rel.install("-f", str(path), "--wait", f"--timeout={WITHIN:g}s")

    manifest = rel.helm("get", "manifest", rel.name).stdout
    expected = objects_of(manifest)
    assert kinds | {"Deployment", "Service", "ServiceAccount"} <= {k for k, _ in expected}
    assert live_objects(rel, manifest) == expected, "every rendered object is in the cluster"
    rel.wait_available()
    for deployment in rel.get("deployments")["items"]:
        status = deployment["status"]
        assert status.get("availableReplicas", 0) == deployment["spec"]["replicas"] >= 1
    assert rel.get("pvc", rel.fullname("server-data"))["status"]["phase"] == "Bound"
    assert len(rel.get("workerautoscalers")["items"]) == groups
    # The CRDs (crds/) are in and Established, CEL rules included.
    crd = rel.cp.get("crd", WA_CRD)
    established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
    assert established[0]["status"] == "True"
    shipped = crd_spec_schema(yaml.safe_load(WA_CRD_FILE.read_text()))
    assert crd_spec_schema(crd)["x-kubernetes-validations"] == shipped["x-kubernetes-validations"]

    rel.upgrade("--reuse-values", "--set", "logLevel=debug", "--wait", f"--timeout={WITHIN:g}s")

    assert (rel.status()["info"]["status"], rel.status()["version"]) == ("deployed", 2)
    worker = rel.get("deployment", rel.fullname("worker-workers"))
    env = {
        e["name"]: e.get("value")
        for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RESONATE_PATTERNS_LOG_LEVEL"] == "debug"
    rel.wait_available()

    rel.helm("uninstall", rel.name, "--wait", f"--timeout={WITHIN:g}s")

    # Everything goes but the durable store (helm.sh/resource-policy: keep).
    assert live_objects(rel, manifest) == [("PersistentVolumeClaim", rel.fullname("server-data"))]
    rel.cp.kubectl("delete", "namespace", rel.namespace, f"--timeout={WITHIN:g}s")


@pytest.fixture
def chart_crds(control_plane: ControlPlane) -> dict[str, Any]:
    """The chart's CRDs applied and Established; the WorkerAutoscaler CRD as shipped."""
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=helm", "-f", str(CRDS)
    )
    control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{WA_CRD}", f"--timeout={WITHIN:g}s"
    )
    crd: dict[str, Any] = yaml.safe_load(WA_CRD_FILE.read_text())
    return crd


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            {"minReplicas": 5, "maxReplicas": 2},
            lambda s: f"spec: Invalid value: {s['x-kubernetes-validations'][0]['message']}",
            id="min-above-max",
        ),
        pytest.param(
            {"minReplicas": 1, "maxReplicas": 4, "fallbackReplicas": 9},
            lambda s: f"spec: Invalid value: {s['x-kubernetes-validations'][1]['message']}",
            id="fallback-outside",
        ),
        pytest.param(
            {"group": "Bad_Group"},
            lambda s: (
                'spec.group: Invalid value: "Bad_Group": spec.group in body should match '
                f"'{s['properties']['group']['pattern']}'"
            ),
            id="group-pattern",
        ),
        pytest.param(
            {"minReplicas": -1},
            lambda s: (
                "spec.minReplicas: Invalid value: -1: spec.minReplicas in body should be "
                f"greater than or equal to {s['properties']['minReplicas']['minimum']}"
            ),
            id="min-negative",
        ),
        pytest.param(
            {"resonateUrl": "ftp://server"},
            lambda s: (
                'spec.resonateUrl: Invalid value: "ftp://server": spec.resonateUrl in body should '
                f"match '{s['properties']['resonateUrl']['pattern']}'"
            ),
            id="url-scheme",
        ),
    ],
)
def test_invalid_workerautoscaler__refused_by_the_api_server_with_the_crd_message(
    release: Release,
    chart_crds: dict[str, Any],
    spec: dict[str, Any],
    expected: Callable[[dict[str, Any]], str],
) -> None:
    body = {
        "apiVersion": "resonate-patterns.io/v1alpha1",
        "kind": "WorkerAutoscaler",
        "metadata": {"name": "bad", "namespace": release.namespace},
        "spec": {
            "scaleTargetRef": {"name": "workers"},
            "resonateUrl": "http://server:8001",
            "group": "workers",
            **spec,
        },
    }

    created = release.cp.kubectl("create", "-f", "-", stdin=yaml.safe_dump(body), check=False)

    assert created.returncode != 0
    assert 'The WorkerAutoscaler "bad" is invalid: ' in created.stderr
    assert expected(crd_spec_schema(chart_crds)) in created.stderr, created.stderr
    assert release.get("workerautoscalers")["items"] == []


# --- (a) uninstall and namespace deletion after the operator ran --------------------------------


def test_uninstall__after_the_operator_ran__release_and_namespace_go_away(
    release: Release,
) -> None:
    rel = release
    url = rel.server()
    rel.install(
        "--set", "server.enabled=false", "--set", f"server.externalUrl={url}",
        "--set", "workerDefaults.autoscaling.pollingIntervalSeconds=1",
        "--wait", f"--timeout={WITHIN:g}s",
    )  # fmt: skip
    # The group's Deployment and its WorkerAutoscaler share the name.
    workers = autoscaler = rel.fullname("worker-workers")
    # As an earlier operator build left it: its finalizer on the WorkerAutoscaler.
    rel.kubectl(
        "patch", "workerautoscaler", autoscaler, "--type=merge",
        "-p", json.dumps({"metadata": {"finalizers": [FINALIZER]}}),
    )  # fmt: skip
    operator = rel.operator()
    submit(url, "workers", 25, "a")

    # The operator works with the chart's RBAC only: reads the backlog, scales through
    # /scale, writes the status, posts Events; and lifts the old finalizer.
    eventually(lambda: True if rel.replicas(workers) == 3 else None, "scaled to ceil(25/10)")
    wa = eventually(
        lambda: (
            found
            if (found := rel.get("workerautoscaler", autoscaler))
            .get("status", {})
            .get("observedPending")
            == 25
            else None
        ),
        "the status written",
    )
    assert not wa["metadata"].get("finalizers"), operator.text()[-3000:]
    assert rel.get("events", "--field-selector", "reason=ScaledUp")["items"]
    rel.wait_available()

    # helm uninstall; the operator's pod would go with its Deployment: stop it then.
    uninstall = subprocess.Popen(
        [rel.helm_binary, "uninstall", rel.name, "-n", rel.namespace,
         f"--kubeconfig={rel.cp.kubeconfig}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env(),
    )  # fmt: skip
    eventually(
        lambda: (
            True
            if not rel.kubectl(
                "get", "deployment", rel.fullname("operator"), "--ignore-not-found", "-o", "name"
            ).stdout.strip()
            else None
        ),
        "the operator Deployment deleted",
    )
    assert operator.stop() == 0, operator.text()[-3000:]
    out, err = uninstall.communicate(timeout=WITHIN)

    assert uninstall.returncode == 0, err
    assert f'release "{rel.name}" uninstalled' in out
    assert rel.get("workerautoscalers")["items"] == []
    rel.cp.kubectl("delete", "namespace", rel.namespace, f"--timeout={WITHIN:g}s")
    found = rel.cp.kubectl("get", "namespace", rel.namespace, "--ignore-not-found", "-o", "name")
    assert found.stdout.strip() == ""


# --- (b) operator replicas 2 -> 1, postgres -> sqlite -------------------------------------------


@pytest.mark.parametrize("release", ["helm", "helm3"], indirect=True)
def test_upgrade__two_operators_on_postgres_to_one_on_sqlite__strategies_and_storage_follow(
    release: Release,
) -> None:
    rel = release
    rel.kubectl(
        "create", "secret", "generic", "resonate-postgres",
        "--from-literal=url=postgres://rp:secret@postgres:5432/resonate",
    )  # fmt: skip
    rel.data_volume()
    rel.install(
        "-f", str(CI / "external-postgres-values.yaml"), "--set", "operator.replicas=2",
        "--wait", f"--timeout={WITHIN:g}s",
    )  # fmt: skip
    operator, server = rel.fullname("operator"), rel.fullname("server")
    before = rel.get("deployment", operator)["spec"]
    assert (before["replicas"], before["strategy"]["type"]) == (2, "RollingUpdate")
    # The chart renders no peering object (the operator creates it: see the HA test), only
    # its CRD, kept on uninstall.
    assert "KopfPeering" not in {
        k for k, _ in objects_of(rel.helm("get", "manifest", rel.name).stdout)
    }
    peering_crd = rel.cp.get("crd", "kopfpeerings.kopf.dev")
    assert peering_crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert [
        v["name"] for v in rel.get("deployment", server)["spec"]["template"]["spec"]["volumes"]
    ] == ["tmp"]

    # Back to the defaults: one standalone operator (Recreate), SQLite on a PVC.
    rel.upgrade("--reset-values", "--wait", f"--timeout={WITHIN:g}s")

    after = rel.get("deployment", operator)["spec"]
    assert (after["replicas"], after["strategy"]) == (1, {"type": "Recreate"})
    # Standalone: the Role no longer reaches the peering objects.
    role = rel.get("role", operator)
    assert not [r for r in role["rules"] if "kopf.dev" in r["apiGroups"]]
    pod = rel.get("deployment", server)["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [rel.fullname("server-data")]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["RESONATE_STORAGE__TYPE"] == "sqlite"
    assert "RESONATE_STORAGE__POSTGRES__URL" not in env
    assert rel.get("pvc", rel.fullname("server-data"))["status"]["phase"] == "Bound"
    rel.wait_available()
    assert (rel.status()["info"]["status"], rel.status()["version"]) == ("deployed", 2)


# --- (c) autoscaling turned on by an upgrade ----------------------------------------------------


@pytest.mark.parametrize("release", ["helm", "helm3"], indirect=True)
@pytest.mark.parametrize("scaled_by", ["values", "kubectl scale"])
def test_upgrade__autoscaling_turned_on__group_keeps_its_replicas(
    release: Release, scaled_by: str
) -> None:
    rel = release
    external = ("--set", "server.enabled=false", "--set", f"server.externalUrl={NOWHERE}")
    rel.install("-f", str(CI / "autoscaling-off-values.yaml"), *external, "--wait")
    workers = rel.fullname("worker-workers")
    assert rel.replicas(workers) == 3  # workerDefaults.replicas in ci/autoscaling-off-values
    if scaled_by == "kubectl scale":
        rel.kubectl("scale", f"deployment/{workers}", "--replicas=4")
    running = rel.replicas(workers)

    rel.upgrade("--reset-values", *external)  # autoscaling on: the chart's default

    # Right after the upgrade, before any operator could act.
    assert rel.replicas(workers) == running
    assert [w["metadata"]["name"] for w in rel.get("workerautoscalers")["items"]] == [workers]
    # The operator scales through /scale (this very request); later upgrades keep its count.
    rel.kubectl(
        "patch", "deployment", workers, "--subresource=scale", "--type=merge",
        "-p", '{"spec": {"replicas": 5}}',
    )  # fmt: skip
    rel.upgrade("--reuse-values", "--set", "logLevel=debug", "--wait")
    assert rel.replicas(workers) == 5


# --- (d) a chart that sets a field the cluster's CRD lacks --------------------------------------


def _older_crd(crd: dict[str, Any]) -> dict[str, Any]:
    """The shipped CRD as an earlier chart had it: no spec.fallbackReplicas (nor its rule)."""
    old: dict[str, Any] = json.loads(json.dumps(crd))
    spec = crd_spec_schema(old)
    del spec["properties"]["fallbackReplicas"]
    spec["x-kubernetes-validations"] = [
        r for r in spec["x-kubernetes-validations"] if "fallbackReplicas" not in r["rule"]
    ]
    return old


@pytest.mark.parametrize("release", ["helm", "helm3"], indirect=True)
def test_upgrade__crd_older_than_the_chart__refused_naming_the_crd_step_then_upgrades(
    release: Release, chart_crds: dict[str, Any]
) -> None:
    rel = release
    external = ("--set", "server.enabled=false", "--set", f"server.externalUrl={NOWHERE}")
    autoscaler = rel.fullname("worker-workers")
    rel.cp.kubectl("replace", "-f", "-", stdin=yaml.safe_dump(_older_crd(chart_crds)))
    try:
        # Installed while the CRD was older (Helm 4 would otherwise apply crds/ on install);
        # the defaults set no fallbackReplicas, so the older CRD takes them.
        rel.install(*external, "--skip-crds", "--wait")
        assert "fallbackReplicas" not in rel.get("workerautoscaler", autoscaler)["spec"]

        refused = rel.upgrade(
            "--reuse-values", "--set", "workerDefaults.autoscaling.fallbackReplicas=2", check=False
        )

        assert refused.returncode != 0
        assert (
            f"the {WA_CRD} CRD in the cluster lacks spec.fallbackReplicas, which this chart "
            "sets on WorkerAutoscalers" in refused.stderr
        ), refused.stderr
        assert (
            "kubectl apply --server-side --force-conflicts -f charts/resonate-patterns/crds/"
            in refused.stderr
        )
        assert "fallbackReplicas" not in rel.get("workerautoscaler", autoscaler)["spec"]
        assert (rel.status()["info"]["status"], rel.status()["version"]) == ("deployed", 1)

        # The step the message names, then the same upgrade.
        rel.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        rel.upgrade(
            "--reuse-values", "--set", "workerDefaults.autoscaling.fallbackReplicas=2", "--wait"
        )

        assert rel.get("workerautoscaler", autoscaler)["spec"]["fallbackReplicas"] == 2
    finally:
        rel.cp.kubectl("replace", "-f", str(WA_CRD_FILE))


# --- two operator replicas ----------------------------------------------------------------------


def started(operator: Process) -> dict[str, Any]:
    """An operator process's ``operator_started`` log line (priority, http_port, ...)."""
    lines = [e for e in operator.events() if e.get("event") == "operator_started"]
    assert lines, operator.text()[-2000:]
    return lines[0]


def logged(operator: Process) -> bool | None:
    """True once the operator has written a log line, else None (for :func:`eventually`)."""
    return True if operator.events() else None


def paused(operator: Process) -> bool:
    """Whether kopf holds the operator paused (it starts so, until peering lets it act)."""
    turns = [
        str(e["event"])
        for e in operator.events()
        if str(e.get("event", "")).startswith(("Pausing", "Resuming"))
    ]
    return not turns or turns[-1].startswith("Pausing")


def scaling(operator: Process, autoscaler: str) -> bool:
    """Whether the operator reports replicas for ``autoscaler`` on /metrics (it acts for it)."""
    url = f"http://127.0.0.1:{started(operator)['http_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return any(
        line.startswith("resonate_patterns_autoscaler_current_replicas{")
        and f'autoscaler="{autoscaler}"' in line
        for line in text.splitlines()
    )


def test_operator_ha__two_replicas_with_peering__one_acts_then_the_other_takes_over(
    release: Release,
) -> None:
    rel = release
    url = rel.server()
    rel.install(
        "--set", "server.enabled=false", "--set", f"server.externalUrl={url}",
        "--set", "operator.replicas=2",
        "--set", "workerDefaults.autoscaling.pollingIntervalSeconds=1",
        "--wait", f"--timeout={WITHIN:g}s",
    )  # fmt: skip
    workers = rel.fullname("worker-workers")
    assert rel.get("kopfpeerings")["items"] == []
    operators = [rel.operator(0), rel.operator(1)]
    for proc in operators:
        eventually(partial(logged, proc), f"{proc.name} started")
    # The first replica created the peering object, named after the release (another
    # release's operators never join it), with its ServiceAccount's token.
    peerings = eventually(lambda: rel.get("kopfpeerings")["items"] or None, "the KopfPeering")
    assert [p["metadata"]["name"] for p in peerings] == [rel.fullname("operator")]
    # The replica with the higher (random) priority acts; the other waits, paused.
    leader, standby = sorted(operators, key=lambda o: int(started(o)["priority"]), reverse=True)
    eventually(lambda: True if not paused(leader) else None, "the leader acting")

    submit(url, "workers", 25, "h")

    eventually(lambda: True if rel.replicas(workers) == 3 else None, "scaled to ceil(25/10)")
    assert paused(standby), standby.text()[-2000:]
    assert scaling(leader, workers)
    assert not scaling(standby, workers)
    for proc in operators:
        assert "Pausing all operators" not in proc.text(), "equal priorities pause them all"

    assert leader.stop() == 0, leader.text()[-3000:]
    submit(url, "workers", 20, "k")

    eventually(lambda: True if rel.replicas(workers) == 5 else None, "the standby scaled to 5")
    assert "Resuming operations after the pause" in standby.text()
    assert scaling(standby, workers)


# --- autoscaling.engine keda: KEDA's CRDs, ScaledObjects, one engine per Deployment -------------


def apply_keda_crds(cp: ControlPlane) -> None:
    """Apply KEDA's CRDs and wait until the ScaledObject one is Established."""
    cp.kubectl("apply", "--server-side", "-f", str(KEDA_CRDS))

    def established() -> bool | None:
        crd = cp.get("crd", "scaledobjects.keda.sh")
        conditions = crd.get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions) or None

    eventually(established, "KEDA's ScaledObject CRD Established")


def test_keda_values__refused_without_keda__installed_with_kedas_crds__one_engine_per_deployment(
    release: Release,
) -> None:
    rel = release
    rel.data_volume()
    values = str(CI / "keda-values.yaml")
    require_file(KEDA_CRDS / "keda.sh_scaledobjects.yaml", KEDA_CRDS_INSTALL)
    have_keda = rel.cp.kubectl("get", "crd", "scaledobjects.keda.sh", check=False)
    if have_keda.returncode != 0:
        refused = rel.helm("install", rel.name, str(CHART), "-f", values, check=False)
        assert refused.returncode != 0
        assert (
            "group workers uses autoscaling.engine keda, but KEDA is not installed "
            "(no scaledobjects.keda.sh CRD)" in refused.stderr
        ), refused.stderr
    apply_keda_crds(rel.cp)

    rel.install("-f", values, "--wait", f"--timeout={WITHIN:g}s")

    scaled = rel.get("scaledobjects.keda.sh")["items"]
    assert sorted(s["metadata"]["name"] for s in scaled) == [
        rel.fullname("worker-batch"),
        rel.fullname("worker-workers"),
    ]
    assert rel.get("workerautoscalers")["items"] == []
    names = {d["metadata"]["name"] for d in rel.get("deployments")["items"]}
    assert rel.fullname("backlog-api") in names
    assert rel.fullname("operator") not in names

    # A WorkerAutoscaler made by hand for the same Deployment: the next upgrade refuses.
    rel.cp.apply(
        {
            "apiVersion": "resonate-patterns.io/v1alpha1",
            "kind": "WorkerAutoscaler",
            "metadata": {"name": "by-hand", "namespace": rel.namespace},
            "spec": {
                "scaleTargetRef": {"name": rel.fullname("worker-workers")},
                "resonateUrl": "http://server:8001",
                "group": "workers",
            },
        }
    )
    twice = rel.upgrade("-f", values, check=False)
    assert twice.returncode != 0
    assert (
        f"Deployment {rel.fullname('worker-workers')} would be scaled twice: group workers uses "
        "autoscaling.engine keda, but WorkerAutoscaler by-hand already scales it"
    ) in twice.stderr, twice.stderr
    rel.kubectl("delete", "workerautoscaler", "by-hand")
    rel.upgrade("-f", values, "--set", "logLevel=debug", "--wait", f"--timeout={WITHIN:g}s")
    rel.helm("uninstall", rel.name, "--wait", f"--timeout={WITHIN:g}s")
    assert rel.get("scaledobjects.keda.sh")["items"] == []


def test_network_policy_values__every_policy_accepted_by_the_api_server(release: Release) -> None:
    """The NetworkPolicy set installs (kwok has no CNI: accepted, not enforced)."""
    rel = release
    rel.data_volume()
    require_file(KEDA_CRDS / "keda.sh_scaledobjects.yaml", KEDA_CRDS_INSTALL)
    apply_keda_crds(rel.cp)  # group batch scales with KEDA

    rel.install("-f", str(CI / "network-policy-values.yaml"), "--wait", f"--timeout={WITHIN:g}s")

    live = rel.get("networkpolicies")["items"]
    assert sorted(p["metadata"]["name"] for p in live) == sorted(
        rel.fullname(c) for c in ("server", "worker", "operator", "backlog-api")
    )
    server = next(p for p in live if p["metadata"]["name"] == rel.fullname("server"))
    assert [r["ports"][0]["port"] for r in server["spec"]["ingress"]] == ["http", "http-metrics"]
    rel.helm("uninstall", rel.name, "--wait", f"--timeout={WITHIN:g}s")
    assert rel.get("networkpolicies")["items"] == []
