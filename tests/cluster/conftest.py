"""A real Kubernetes control plane on loopback, started once per test session.

``control_plane`` runs etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake kubelets) from ``.tools/bin`` (built by
``python scripts/install_control_plane.py``; ``make test`` builds them) in a
temporary directory, on free loopback ports, and registers three fake nodes.
The API server enforces what a real cluster does: client-certificate and
service-account token authentication, RBAC (and the Node authorizer), the
default admission plugins; the controller manager runs every default
controller (deployments, replica sets, garbage collection, namespaces,
service accounts and their tokens); kwok moves pods on its nodes to Running
and Ready and finishes their deletion, as kubelets would.

Without the binaries the tests skip, naming the command that builds them; in
CI (``CI=true``) they fail instead. A component that dies or does not become
ready fails the session setup with the tail of its log; all logs stay in the
session's temporary directory, which the terminal shows once the cluster is up
(``control plane: kube-apiserver v1.37.2 on https://127.0.0.1:PORT, ...``).
Teardown stops the processes newest first (SIGTERM, SIGKILL after
``STOP_GRACE``); should pytest itself be killed, the kernel kills them
(``PR_SET_PDEATHSIG``), so nothing outlives the session.

The API server keeps an audit log (``ControlPlane.audit_log``, JSON lines) of
the writes that tell which identity acted on a release's objects: to
WorkerAutoscalers and their status, Deployments' ``/scale``, kopf peerings
(metadata only) and Events (with the request body, which names the object an
Event is about); the control plane's own components are left out.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from resonate.codec import Codec, NoopEncryptor
from resonate.types import TaskData
from resonate_base import PROTOCOL_VERSION

from service.client import root_tags
from tests.cluster.bridge import Bridge, release_selector
from tests.cluster.procs import start_logged
from tests.conftest import ROOT, require_tool
from tests.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TOOLS_BIN = ROOT / ".tools" / "bin"
# The Makefile runs pytest with .tools/bin first on PATH; do the same when run directly.
if str(TOOLS_BIN) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = str(TOOLS_BIN) + os.pathsep + os.environ.get("PATH", "")

#: Binaries the control plane needs, and the command that provides them.
BINARIES: dict[str, str] = {
    **dict.fromkeys(
        ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"),
        "python scripts/install_control_plane.py builds it",
    ),
    "kubectl": "python scripts/install_tools.py installs it",
}
#: kwok's options and Stages (how the fake kubelet moves nodes and pods along).
KWOK_CONFIG = Path(__file__).with_name("kwok.yaml")
#: Annotation that marks the nodes kwok plays the kubelet for.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: The fake nodes (enough for spreading and for losing one).
NODES = ("kwok-node-0", "kwok-node-1", "kwok-node-2")
#: Service IP range; the API server takes its first address for `kubernetes.default`.
SERVICE_CIDR = "10.96.0.0/16"
#: Address published as the `kubernetes` Service's endpoint (TEST-NET-1: never routed).
ADVERTISE_IP = "192.0.2.10"
#: Issuer of service-account tokens (the usual in-cluster name).
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: Seconds a component may take to become ready (a loaded 2-core host needs ~10).
READY_WITHIN = 90.0
#: Seconds between SIGTERM and SIGKILL at teardown.
STOP_GRACE = 10.0
#: Lines of a component's log quoted when it fails.
LOG_TAIL = 40
#: What the API server audits (see the module docstring); anything else is not logged.
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "None",
            "users": ["system:kube-controller-manager", "system:kube-scheduler", "kwok"],
        },
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {
            "level": "Request",
            "verbs": ["create", "update", "patch"],
            "resources": [
                {"group": "", "resources": ["events"]},
                {"group": "events.k8s.io", "resources": ["events"]},
            ],
        },
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete"],
            "resources": [
                {
                    "group": "resonate-patterns.io",
                    "resources": ["workerautoscalers", "workerautoscalers/status"],
                },
                {"group": "apps", "resources": ["deployments/scale"]},
                {"group": "kopf.dev", "resources": ["kopfpeerings", "clusterkopfpeerings"]},
            ],
        },
        {"level": "None"},
    ],
}


def eventually[T](probe: Callable[[], T | None], what: str, within: float = 90.0) -> T:
    """Poll ``probe`` until it returns something other than None (the tests' one wait loop)."""
    deadline = time.monotonic() + within
    while (value := probe()) is None:
        assert time.monotonic() < deadline, f"{what} did not happen within {within:g} s"
        time.sleep(0.2)
    return value


class ControlPlaneError(Exception):
    """A component failed to start; the message carries its log's tail."""


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane; everything it needs lives under ``root``."""

    #: admin kubeconfig (client certificate in group system:masters)
    kubeconfig: Path
    #: API server URL, https://127.0.0.1:PORT
    server: str
    #: the API server's version, e.g. "v1.37.2"
    version: str
    #: the session's directory: certificates, kubeconfigs, etcd data, logs (*.log)
    root: Path
    #: CA that signed the API server's certificate and the client certificates
    ca_file: Path
    #: names of the fake nodes kwok manages
    nodes: tuple[str, ...]
    #: seconds from the first process start to a ready cluster (nodes Ready)
    started_in: float
    #: the API server's audit log, one JSON event a line (:data:`AUDIT_POLICY`)
    audit_log: Path

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        token: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin, or with only ``token`` as its credential.

        With ``check`` a non-zero exit fails the test, quoting kubectl's output.
        """
        if token is None:
            auth = [f"--kubeconfig={self.kubeconfig}"]
        else:
            # A kubeconfig without a client certificate: with one, the API server
            # would authenticate the certificate (admin) and never look at the token.
            auth = [
                f"--kubeconfig={self.root / 'anonymous.kubeconfig'}",
                f"--token={token}",
            ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        proc = subprocess.run(
            ["kubectl", *auth, f"--cache-dir={self.root / 'kubectl-cache'}", *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            msg = f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            raise AssertionError(msg)
        return proc

    def apply(self, manifest: dict[str, Any] | str) -> None:
        """``kubectl apply`` one object (a dict) or a YAML text."""
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        self.kubectl("apply", "-f", "-", stdin=text)

    def get(self, *args: str) -> dict[str, Any]:
        """``kubectl get ARGS -o json``, parsed."""
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return out


# --- certificates ------------------------------------------------------------


@dataclass(frozen=True)
class _Authority:
    """A CA for the session: it signs the API server's and every client's certificate."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls) -> _Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control-plane-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(
        self,
        directory: Path,
        stem: str,
        common_name: str,
        groups: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        """Write ``stem``.crt/.key: a client certificate, or a server one if ``hosts``.

        Kubernetes reads a client certificate's CN as the user name and its O
        entries as the groups.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        crt, pem = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pem, key)
        return crt, pem


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_kubeconfig(
    path: Path, server: str, ca: Path, client: tuple[Path, Path] | None = None
) -> Path:
    """A kubeconfig for ``server``; as the client certificate's user, or with no credential."""
    user: dict[str, str] = {}
    if client is not None:
        user = {"client-certificate": str(client[0]), "client-key": str(client[1])}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# --- processes ---------------------------------------------------------------


@dataclass
class _Process:
    """One started component and its log file."""

    name: str
    log: Path
    proc: subprocess.Popen[bytes]

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-LOG_TAIL:])

    def failure(self, what: str) -> ControlPlaneError:
        msg = f"{self.name} {what}; last lines of {self.log}:\n{self.tail()}"
        return ControlPlaneError(msg)


@dataclass
class _Supervisor:
    """Starts components, waits for them, and stops them all (newest first)."""

    root: Path
    started: list[_Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> _Process:
        log = self.root / f"{name}.log"
        proc = start_logged([name, *args], log, {**os.environ, **(env or {})}, cwd=self.root)
        process = _Process(name, log, proc)
        self.started.append(process)
        return process

    def wait_for(self, what: str, ready: Callable[[], bool], owner: _Process) -> None:
        """Poll ``ready`` until true; fail fast, with logs, if any component exits."""
        deadline = time.monotonic() + READY_WITHIN
        while True:
            for process in self.started:
                code = process.proc.poll()
                if code is not None:
                    raise process.failure(f"exited with code {code} (waiting for {what})")
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise owner.failure(f"did not get {what} within {READY_WITHIN:g} s")
            time.sleep(0.1)

    def stop(self) -> list[str]:
        """Stop components newest first; names of those SIGKILLed after the grace period.

        One at a time: the API server drains its requests into etcd, so etcd
        must outlive it (stopped together, the API server hangs on etcd).
        """
        killed: list[str] = []
        for process in reversed(self.started):
            if process.proc.poll() is None:
                process.proc.terminate()
            try:
                process.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.proc.kill()
                process.proc.wait()
                killed.append(process.name)
        return killed


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2, context=context) as resp:
        return int(resp.status), bytes(resp.read())


def _answers_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    return _get(url, context)[0] == 200


# --- the control plane -------------------------------------------------------


def _require_binaries() -> None:
    for name, install in BINARIES.items():
        require_tool(name, install=install)


@dataclass(frozen=True)
class _Pki:
    """The session's key material, written under ``root/pki``."""

    authority: _Authority
    directory: Path
    ca_file: Path
    ca_key: Path
    #: the API server's serving certificate and key
    serving: tuple[Path, Path]
    #: service-account token signing key (RSA) and its public half
    sa_private: Path
    sa_public: Path

    @classmethod
    def create(cls, directory: Path) -> _Pki:
        directory.mkdir()
        ca = _Authority.create()
        ca_file, ca_key = directory / "ca.crt", directory / "ca.key"
        ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        _write_key(ca_key, ca.key)
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        in_cluster = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
        hosts = (
            "127.0.0.1",
            "localhost",
            service_ip,
            *in_cluster,
            f"{in_cluster[-1]}.cluster.local",
        )
        serving = ca.issue(directory, "apiserver", "kube-apiserver", hosts=hosts)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_private, sa_public = directory / "sa.key", directory / "sa.pub"
        _write_key(sa_private, sa_key)
        sa_public.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return cls(ca, directory, ca_file, ca_key, serving, sa_private, sa_public)

    def kubeconfig(self, path: Path, server: str, user: str, groups: tuple[str, ...]) -> Path:
        """A kubeconfig that authenticates as ``user`` in ``groups`` (client certificate)."""
        client = self.authority.issue(self.directory, path.stem, user, groups)
        return _write_kubeconfig(path, server, self.ca_file, client)


def _start_etcd(sup: _Supervisor, root: Path) -> str:
    """Start etcd; its client URL once it is healthy."""
    url, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    etcd = sup.start(
        "etcd",
        [
            "--name=test",
            f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            # Throwaway data: skip fsync, which dominates etcd's latency on a busy disk.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    sup.wait_for(
        "healthy", lambda: json.loads(_get(f"{url}/health")[1]).get("health") == "true", etcd
    )
    return url


def _start_apiserver(sup: _Supervisor, root: Path, pki: _Pki, etcd: str) -> tuple[str, str]:
    """Start kube-apiserver; (its URL, its version) once /readyz answers."""
    server = f"https://127.0.0.1:{free_port()}"
    audit_policy = root / "audit-policy.yaml"
    audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    apiserver = sup.start(
        "kube-apiserver",
        [
            f"--etcd-servers={etcd}",
            "--bind-address=127.0.0.1",
            f"--secure-port={server.rsplit(':', 1)[1]}",
            # The `kubernetes` Service's endpoint may not be loopback; nothing in
            # the cluster dials it (kwok runs no containers), so a documentation IP.
            f"--advertise-address={ADVERTISE_IP}",
            f"--cert-dir={root / 'apiserver'}",
            f"--tls-cert-file={pki.serving[0]}",
            f"--tls-private-key-file={pki.serving[1]}",
            f"--client-ca-file={pki.ca_file}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={root / 'audit.log'}",
            "--profiling=false",
        ],
    )
    # /readyz and /version are open to anyone (system:public-info-viewer).
    tls = ssl.create_default_context(cafile=str(pki.ca_file))
    sup.wait_for(
        "ready (/readyz)", functools.partial(_answers_ok, f"{server}/readyz", tls), apiserver
    )
    version = str(json.loads(_get(f"{server}/version", tls)[1])["gitVersion"])
    return server, version


def _start_controllers(
    sup: _Supervisor, root: Path, pki: _Pki, server: str
) -> tuple[_Process, _Process]:
    """Start the controller manager, the scheduler and kwok; (controller manager, kwok)."""
    kcm_config = pki.kubeconfig(
        root / "controller-manager.kubeconfig", server, "system:kube-controller-manager", ()
    )
    kcm_port = free_port()
    controller_manager = sup.start(
        "kube-controller-manager",
        [
            f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}",
            f"--authorization-kubeconfig={kcm_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            "--controllers=*",
            f"--service-account-private-key-file={pki.sa_private}",
            f"--root-ca-file={pki.ca_file}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca_file}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # One instance: no leader election, so controllers start at once.
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    scheduler_config = pki.kubeconfig(
        root / "scheduler.kubeconfig", server, "system:kube-scheduler", ()
    )
    scheduler_port = free_port()
    scheduler = sup.start(
        "kube-scheduler",
        [
            f"--kubeconfig={scheduler_config}",
            f"--authentication-kubeconfig={scheduler_config}",
            f"--authorization-kubeconfig={scheduler_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={scheduler_port}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    # kwok stands in for every kubelet and patches any pod's status: give it all rights.
    kwok_config = pki.kubeconfig(root / "kwok.kubeconfig", server, "kwok", ("system:masters",))
    kwok = sup.start(
        "kwok",
        [
            f"--kubeconfig={kwok_config}",
            f"--config={KWOK_CONFIG}",
            "--manage-nodes-with-annotation-selector={}={}".format(*KWOK_ANNOTATION),
        ],
        # kwok also reads $KWOK_WORKDIR/kwok.yaml (default ~/.kwok): keep it in the session.
        env={"KWOK_WORKDIR": str(root / "kwok")},
    )
    # Their serving certificates are self-signed in memory: nothing to verify against.
    insecure = ssl._create_unverified_context()
    for process, port in ((controller_manager, kcm_port), (scheduler, scheduler_port)):
        healthz = functools.partial(_answers_ok, f"https://127.0.0.1:{port}/healthz", insecure)
        sup.wait_for("healthy (/healthz)", healthz, process)
    return controller_manager, kwok


def _start(sup: _Supervisor, root: Path) -> ControlPlane:
    """Start every component under ``sup``; return once the nodes are Ready."""
    began = time.monotonic()
    pki = _Pki.create(root / "pki")
    etcd = _start_etcd(sup, root)
    server, version = _start_apiserver(sup, root, pki, etcd)
    admin = pki.kubeconfig(root / "admin.kubeconfig", server, "admin", ("system:masters",))
    _write_kubeconfig(root / "anonymous.kubeconfig", server, pki.ca_file)
    controller_manager, kwok = _start_controllers(sup, root, pki, server)
    plane = ControlPlane(
        kubeconfig=admin,
        server=server,
        version=version,
        root=root,
        ca_file=pki.ca_file,
        nodes=NODES,
        started_in=0.0,
        audit_log=root / "audit.log",
    )
    plane.apply(yaml.safe_dump_all([_node(name) for name in NODES]))

    def nodes_schedulable() -> bool:
        # Ready, and the node lifecycle controller has lifted its not-ready taint.
        listed = plane.kubectl("get", "nodes", "-o", "json", check=False)
        ready = {
            n["metadata"]["name"]
            for n in json.loads(listed.stdout)["items"]
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True" and not n["spec"].get("taints")
        }
        return ready >= set(NODES)

    sup.wait_for("the fake nodes Ready and untainted", nodes_schedulable, kwok)
    # Pods need their namespace's default ServiceAccount (made by the controller manager).
    sup.wait_for(
        "the default ServiceAccount",
        lambda: plane.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        controller_manager,
    )
    return replace(plane, started_in=time.monotonic() - began)


def _node(name: str) -> dict[str, Any]:
    """A fake Node for kwok: kwok fills in its status (capacity, conditions, addresses)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
    }


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    """A running control plane with three fake Ready nodes (see the module docstring)."""
    _require_binaries()
    root = tmp_path_factory.mktemp("control-plane")
    sup = _Supervisor(root)
    try:
        plane = _start(sup, root)
    except BaseException:
        sup.stop()
        raise
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (
        f"control plane: kube-apiserver {plane.version} on {plane.server}, "
        f"{len(plane.nodes)} kwok nodes, up in {plane.started_in:.1f} s (logs: {root})"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        # Shown on the terminal even when output is captured (the default).
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    yield plane
    killed = sup.stop()
    assert not killed, f"did not stop within {STOP_GRACE:g} s of SIGTERM: {killed}"


# --- releases of the chart, run by the bridge --------------------------------

#: The chart the release fixtures install.
CHART = ROOT / "charts" / "resonate-patterns"
#: Seconds the local server may take to answer /readyz.
SERVER_READY_WITHIN = 30.0
#: Seconds ``helm uninstall --wait`` may take (workers drain on the way out).
UNINSTALL_WITHIN = 120.0
#: Values every test release starts from: the server pod needs no volume (the
#: bridge ignores it; the local server stands in for it), JSON logs (the
#: chaos checks read them).
BASE_VALUES: dict[str, Any] = {
    "server": {"storage": {"persistence": {"enabled": False}}},
    "logFormat": "json",
}


@dataclass
class LocalServer:
    """A ``resonate-patterns server`` process standing in for the chart's server pod."""

    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, directory: Path) -> LocalServer:
        """Start it on a free loopback port with an in-memory store; wait for /readyz.

        ``--retry-ms 1000`` re-sends unacquired work as the chart configures the
        official server to (``server.tasks.retryTimeoutMs``).
        """
        port = free_port()
        log = directory / f"local-server-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        argv = [sys.executable, "-m", "service", "server", "--host", "127.0.0.1",
                "--port", str(port), "--data", ":memory:", "--retry-ms", "1000"]  # fmt: skip
        proc = start_logged(argv, log, {**env, "RESONATE_PATTERNS_LOG_FORMAT": "json"})
        server = cls(f"http://127.0.0.1:{port}", log, proc)
        deadline = time.monotonic() + SERVER_READY_WITHIN
        while True:
            if proc.poll() is not None:
                msg = f"local server exited {proc.returncode}:\n{log.read_text(errors='replace')}"
                raise AssertionError(msg)
            with contextlib.suppress(OSError, ValueError):
                if _answers_ok(f"{server.url}/readyz"):
                    return server
            if time.monotonic() > deadline:
                server.stop()
                msg = f"local server not ready within {SERVER_READY_WITHIN:g} s"
                raise AssertionError(msg)
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Release:
    """A Helm release of the chart, its pods run by a :class:`Bridge`."""

    plane: ControlPlane
    name: str
    namespace: str
    server: LocalServer
    bridge: Bridge
    #: the values the release was installed with
    values_file: Path
    #: set by :meth:`uninstall` (the fixture's teardown leaves the release alone then)
    uninstalled: bool = False

    @property
    def fullname(self) -> str:
        """The chart's ``resonate-patterns.fullname`` for this release."""
        return self.name if "resonate-patterns" in self.name else f"{self.name}-resonate-patterns"

    def worker_deployment(self, group: str = "workers") -> str:
        return f"{self.fullname}-worker-{group}"

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        """Run helm against the control plane as the admin; its stdout."""
        proc = subprocess.run(
            ["helm", *args, "-n", self.namespace, f"--kubeconfig={self.plane.kubeconfig}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"},
        )
        if check and proc.returncode != 0:
            msg = f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
            raise AssertionError(msg)
        return proc.stdout

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl as the admin, in the release's namespace."""
        return self.plane.kubectl(*args, "-n", self.namespace, check=check)

    def replicas(self, deployment: str) -> int:
        """``spec.replicas`` of a Deployment, read through its /scale subresource."""
        scale = self.kubectl(
            "get", "--raw",
            f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{deployment}/scale",
        )  # fmt: skip
        return int(json.loads(scale.stdout)["spec"].get("replicas") or 0)

    def uninstall(self, *, autoscalers_first: bool = False) -> list[str]:
        """``helm uninstall --wait``; once its pods are gone, stop the bridge and the local server.

        With ``autoscalers_first`` the release's WorkerAutoscalers are deleted
        first, while the operator still runs (see the ``install`` fixture).
        Returns what went wrong, one line each: helm's error, processes the
        bridge had to SIGKILL at shutdown, bridge errors.
        """
        self.uninstalled = True
        selector = release_selector(self.name)
        if autoscalers_first:
            self.kubectl(
                "delete", "workerautoscalers", "-l", selector, "--timeout=60s", check=False
            )
        uninstall = self.helm(
            "uninstall", self.name, "--wait", f"--timeout={UNINSTALL_WITHIN:g}s", check=False
        )
        self.kubectl("wait", "--for=delete", "pods", "-l", selector, "--timeout=60s", check=False)
        killed = self.bridge.close()
        self.server.stop()
        problems: list[str] = []
        if "uninstalled" not in uninstall:
            problems.append(f"helm uninstall {self.name}: {uninstall}")
        if killed:
            problems.append(f"bridge had to SIGKILL at shutdown: {killed}")
        if self.bridge.errors:
            problems.append(f"bridge errors: {self.bridge.errors}")
        return problems


def submit(url: str, group: str, count: int, prefix: str, function: str | None = None) -> None:
    """``count`` top-level calls for ``group`` on the server at ``url`` (its backlog).

    Promises ``{prefix}-0`` ... tagged as a top-level call routed to the group.
    With ``function``, promise ``i`` calls that pattern with argument ``i``
    (``process_one(i)``), as ``resonate-patterns call`` would; without, it
    names no function: only where no worker of the group runs (one would fail
    on it and get it again at once, over and over).
    """
    codec = Codec(NoopEncryptor())
    for i in range(count):
        promise_id = f"{prefix}-{i}"
        data: dict[str, Any] = {
            "id": promise_id,
            "timeoutAt": 1 << 60,
            "tags": root_tags(promise_id, group),
        }
        if function is not None:
            data["param"] = msgspec.to_builtins(codec.encode(TaskData(func=function, args=(i,))))
        envelope = {
            "kind": "promise.create",
            "head": {"corrId": promise_id, "version": PROTOCOL_VERSION},
            "data": data,
        }
        request = urllib.request.Request(
            url,
            data=json.dumps(envelope).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = json.loads(resp.read())
        assert answer["head"]["status"] == 200, answer


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` deep-merged over a copy of ``base``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Write ``line`` to the terminal past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        sys.stdout.write(line + "\n")


@pytest.fixture
def install(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Callable[..., Release]]:
    """Install the chart (``BASE_VALUES`` plus the given values) as release ``rp``.

    ``install(values, name=..., namespace=...)`` names the release otherwise
    and puts it in the namespace of an earlier release (several releases in
    one namespace). Each release gets a namespace of its own unless given one,
    a local server standing in for the chart's server pod, and a
    :class:`~tests.cluster.bridge.Bridge` that runs its worker and operator
    pods as processes (logs under ``tmp_path/pods``). Teardown, for each
    release a test has not uninstalled (:meth:`Release.uninstall`): its
    WorkerAutoscalers are deleted while the operator still runs, then ``helm
    uninstall --wait`` (the workers drain); once its pods are gone the bridge
    stops whatever is left and must have had to SIGKILL nothing. Then the
    namespaces are deleted.
    """
    releases: list[Release] = []

    def make(values: dict[str, Any], *, name: str = "rp", namespace: str | None = None) -> Release:
        if namespace is None:
            namespace = f"t-{uuid.uuid4().hex[:8]}"
            control_plane.kubectl("create", "namespace", namespace)
        server = LocalServer.start(tmp_path)
        bridge = Bridge(
            control_plane, namespace=namespace, release=name, server=server.url,
            logs=tmp_path / "pods",
        ).start()  # fmt: skip
        values_file = tmp_path / f"values-{namespace}-{name}.yaml"
        values_file.write_text(yaml.safe_dump(_merge(BASE_VALUES, values)))
        release = Release(control_plane, name, namespace, server, bridge, values_file)
        releases.append(release)
        release.helm("install", release.name, str(CHART), "-f", str(values_file))
        return release

    yield make
    problems: list[str] = []
    for release in releases:
        if not release.uninstalled:
            # The WorkerAutoscalers go first, while the operator still runs: helm deletes
            # custom resources after Deployments, so a finalizer the operator put on them
            # (kopf's default for daemons) would keep them, and the namespace, Terminating.
            # The lifecycle tests (test_chart_lifecycle.py) check uninstalling alone.
            problems += release.uninstall(autoscalers_first=True)
    for namespace in dict.fromkeys(r.namespace for r in releases):
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    assert not problems, "\n".join(problems)
