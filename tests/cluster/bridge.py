"""A kubelet stand-in: the pods of a release on the test control plane, as real processes.

kwok makes pods Running and Ready but runs nothing. :class:`Bridge` watches
the pods of one Helm release in one namespace (``kubectl get pods -w``) and
plays the container runtime for the two components this project ships:

* a **worker** pod that is Running and Ready gets a real ``resonate-patterns
  worker`` process (the image's entrypoint plus the container's ``args``) with
  the container's environment, resolved as the kubelet does (``value``,
  ``fieldRef``, ``secretKeyRef``, ``configMapKeyRef``, ``envFrom``, ``$(VAR)``),
  except that ``RESONATE_URL`` points at the local server standing in for the
  chart's server pod, and the HTTP server listens on a free loopback port (so
  that several workers share this host);
* the **operator** pod gets ``resonate-patterns operator`` with a kubeconfig
  holding a token of the pod's own ServiceAccount from the TokenRequest API
  (``kubectl create token``), never the admin identity, so the chart's RBAC
  is what it runs under. The operator reads each WorkerAutoscaler's
  ``spec.resonateUrl`` (the server Service's in-cluster name); the process
  resolves that Service's name and port to the local server instead, the way
  cluster DNS and kube-proxy would route it (:func:`install_service_routes`).

Any other pod of the release (the chart's server, a ``helm test`` pod) is
ignored. Deletion follows the kubelet: the first sign that a pod is going
decides how its process ends. A deletionTimestamp with a grace period sends
SIGTERM, then SIGKILL once ``deletionGracePeriodSeconds`` have passed (kwok
finishes the deletion at once, but the process keeps its grace period, as
a container would while its pod is Terminating); a pod that disappears without
one (``kubectl delete pod --grace-period=0 --force``) gets SIGKILL at once. A
process that exits while its pod lives is restarted after a back-off, as a
container with ``restartPolicy: Always``.

Every process writes stdout and stderr to ``<logs>/<pod>.log``; every step is
an :class:`Event` with a wall-clock time (also appended to
``<logs>/bridge-events.log``). :meth:`Bridge.close` stops every process it
started (SIGTERM, then SIGKILL) and the watch.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.cluster.procs import die_with_parent, start_logged

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from tests.cluster.conftest import ControlPlane

#: Label value of ``app.kubernetes.io/component`` → the container that pod runs.
RUNNABLE = {"worker": "worker", "operator": "operator"}
#: The image's entrypoint (Dockerfile ``ENTRYPOINT ["resonate-patterns"]``).
ENTRYPOINT = [sys.executable, "-m", "service"]
#: Seconds between two readiness probes of one process (``GET /readyz``).
PROBE_INTERVAL = 0.25
#: Restart back-off of a process that exited while its pod lives: doubling to the cap.
RESTART_BACKOFF = (1.0, 10.0)
#: Seconds :meth:`Bridge.close` gives processes after SIGTERM before SIGKILL.
STOP_GRACE = 20.0
#: Variables of this test process that must not reach a pod's process.
_HOST_ONLY = re.compile(r"^(RESONATE_|KUBECONFIG$|KUBERNETES_|PYTHONPATH$)")
#: Environment variable that carries the Service routes to a process (JSON).
ROUTES_ENV = "BRIDGE_SERVICE_ROUTES"
#: Lines of a worker's log quoted in a failure message.
LOG_TAIL = 30


class BridgeError(Exception):
    """A pod the bridge cannot run (a missing Secret, an unsupported env source)."""


@dataclass(frozen=True)
class Event:
    """One step of a pod's life as the bridge saw or caused it."""

    #: wall-clock seconds (``time.time()``)
    at: float
    pod: str
    #: running (pod seen Running and Ready), started, ready (/readyz 200), sigterm,
    #: sigkill, exit, gone (pod left the API), restart, error
    kind: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.at:.3f} {self.pod} {self.kind} {self.detail}".rstrip()


@dataclass
class Process:
    """One process started for one pod."""

    pod: str
    component: str
    argv: list[str]
    log: Path
    #: loopback port of its HTTP server (/readyz, /metrics)
    port: int
    proc: subprocess.Popen[bytes]
    started: float
    ready_at: float | None = None
    #: "SIGTERM" or "SIGKILL" once the bridge has signalled it, and when (wall clock)
    signalled: str | None = None
    signalled_at: float | None = None
    #: monotonic time at which a SIGTERMed process gets SIGKILL
    kill_at: float | None = None
    exit_code: int | None = None
    next_probe: float = 0.0

    @property
    def running(self) -> bool:
        return self.exit_code is None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class _Pod:
    """What the bridge knows of one pod (by uid)."""

    uid: str
    name: str
    component: str
    obj: dict[str, Any]
    #: "graceful" or "forced", from the first sign of deletion
    terminating: str | None = None
    gone: bool = False
    seen_running: bool = False
    process: Process | None = None
    restarts: int = 0
    restart_at: float | None = None
    history: list[Process] = field(default_factory=list)


def release_selector(release: str) -> str:
    """Label selector of every pod of ``release`` (the chart's selector labels)."""
    return f"app.kubernetes.io/instance={release}"


def _is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return status.get("phase") == "Running" and bool(ready) and ready[0].get("status") == "True"


_FIELD_INDEX = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_value(pod: dict[str, Any], path: str) -> str:
    """The value of a ``fieldRef.fieldPath`` of ``pod`` (the paths the downward API allows)."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs") or []),
        "status.hostIPs": ",".join(p["ip"] for p in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    indexed = _FIELD_INDEX.match(path)
    if indexed:
        return str((meta.get(indexed.group(1)) or {}).get(indexed.group(2), ""))
    msg = f"unsupported fieldRef.fieldPath {path!r}"
    raise BridgeError(msg)


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: earlier variables only; ``$$`` is a literal ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return defined[name] if name in defined else match.group(0)

    return _REFERENCE.sub(one, value)


class _Lookup:
    """Reads Secrets and ConfigMaps of a namespace with kubectl (the kubelet's view)."""

    def __init__(self, kubectl: Callable[..., subprocess.CompletedProcess[str]], ns: str) -> None:
        self._kubectl = kubectl
        self._ns = ns

    def data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        got = self._kubectl("get", kind, name, "-n", self._ns, "-o", "json", check=False)
        if got.returncode != 0:
            if optional:
                return None
            msg = f"{kind} {self._ns}/{name} not readable: {got.stderr.strip()}"
            raise BridgeError(msg)
        obj = json.loads(got.stdout)
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def key(self, kind: str, ref: dict[str, Any]) -> str | None:
        optional = bool(ref.get("optional"))
        data = self.data(kind, str(ref["name"]), optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            msg = f"{kind} {self._ns}/{ref['name']} has no key {ref['key']!r}"
            raise BridgeError(msg)
        return data[str(ref["key"])]


def container_env(
    pod: dict[str, Any], container: dict[str, Any], lookup: _Lookup
) -> dict[str, str]:
    """The environment the kubelet gives ``container`` of ``pod`` (envFrom, then env)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            if key in source:
                ref = source[key]
                data = lookup.data(kind, str(ref["name"]), bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for var in container.get("env") or []:
        name = str(var["name"])
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(pod, str(source["fieldRef"]["fieldPath"]))
        elif "secretKeyRef" in source:
            value = lookup.key("secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = lookup.key("configmap", source["configMapKeyRef"])
        else:
            msg = f"env {name}: unsupported valueFrom {sorted(source)}"
            raise BridgeError(msg)
        if value is not None:
            env[name] = value
    return env


def command_args(container: dict[str, Any]) -> list[str]:
    """The arguments after the image's entrypoint (a ``command`` must name it again)."""
    command = [str(part) for part in container.get("command") or []]
    if command and command[0] != "resonate-patterns":
        msg = f"container command {command} does not run resonate-patterns"
        raise BridgeError(msg)
    return [*command[1:], *(str(arg) for arg in container.get("args") or [])]


def host_env() -> dict[str, str]:
    """This machine's environment without what belongs to the test process only."""
    return {k: v for k, v in os.environ.items() if not _HOST_ONLY.match(k)}


def install_service_routes() -> None:
    """Route Service names to local addresses in this process (cluster DNS plus kube-proxy).

    Reads ``BRIDGE_SERVICE_ROUTES`` (a JSON list of ``[host, port, to_host,
    to_port]``) and wraps name resolution so that resolving one of those
    (host, port) pairs yields the local address; every other name resolves as
    usual. Both resolvers a process may use are wrapped: ``socket.getaddrinfo``
    (asyncio's loop and blocking clients) and uvloop's own (the CLI runs on
    uvloop, whose ``getaddrinfo`` calls libc directly). Run at interpreter start
    by the ``sitecustomize`` the bridge puts on the operator's ``PYTHONPATH``.
    """
    import socket

    routes = {
        (str(host).lower(), int(port)): (str(to_host), int(to_port))
        for host, port, to_host, to_port in json.loads(os.environ.get(ROUTES_ENV) or "[]")
    }
    if not routes:
        return

    def route(host: Any, port: Any) -> tuple[Any, Any]:
        name = host.decode() if isinstance(host, bytes) else host
        try:
            number = int(port)
        except (TypeError, ValueError):
            return host, port
        if isinstance(name, str):
            return routes.get((name.rstrip(".").lower(), number), (host, port))
        return host, port

    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return resolve(*route(host, port), *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        import uvloop
    except ImportError:
        return
    loop_resolve = uvloop.Loop.getaddrinfo

    async def loop_getaddrinfo(self: Any, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return await loop_resolve(self, *route(host, port), *args, **kwargs)

    uvloop.Loop.getaddrinfo = loop_getaddrinfo  # type: ignore[method-assign]


#: The ``sitecustomize`` module that installs the routes in a process the bridge starts.
_SITECUSTOMIZE = """\
# Written by tests/cluster/bridge.py: Service names resolve to the local stand-ins.
from tests.cluster.bridge import install_service_routes

install_service_routes()
"""


def service_routes(services: Iterable[dict[str, Any]], to: str) -> list[list[str | int]]:
    """Every name and port of ``services`` (in-cluster DNS forms) routed to ``to`` (host:port)."""
    to_host, _, to_port = to.rpartition(":")
    routes: list[list[str | int]] = []
    for svc in services:
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        for port in svc["spec"].get("ports") or []:
            for host in (
                name,
                f"{name}.{ns}",
                f"{name}.{ns}.svc",
                f"{name}.{ns}.svc.cluster.local",
            ):
                routes.append([host, int(port["port"]), to_host, int(to_port)])
    return routes


@contextlib.contextmanager
def kubectl_watch(
    plane: ControlPlane, namespace: str, what: list[str], errors: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``kubectl get WHAT --watch -o json --output-watch-events`` as the admin; ends it on exit."""
    argv = [
        "kubectl", f"--kubeconfig={plane.kubeconfig}",
        f"--cache-dir={plane.root / 'kubectl-cache'}", "get", *what, "-n", namespace,
        "--watch", "-o", "json", "--output-watch-events",
    ]  # fmt: skip
    with errors.open("ab") as err:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=host_env(),
            preexec_fn=die_with_parent,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def json_stream(proc: subprocess.Popen[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects ``proc`` writes one after another (kubectl's ``-w -o json``)."""
    stdout = proc.stdout
    assert isinstance(stdout, io.BufferedReader)
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    while chunk := stdout.read1(65536):
        buffer += utf8.decode(chunk)
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                obj, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                break  # the rest of the object is still on its way
            buffer = buffer[end:]
            yield obj


class ObjectWatch:
    """Every version of the objects a kubectl watch reports, with the time it arrived.

    ``ObjectWatch(plane, ns, ["deployment", "web"], log).start()`` follows one
    Deployment; :meth:`samples` returns ``(time.time(), type, object)`` in order.
    """

    def __init__(self, plane: ControlPlane, namespace: str, what: list[str], errors: Path) -> None:
        self._args = (plane, namespace, what, errors)
        self._samples: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="object-watch", daemon=True)
        self._closed = threading.Event()

    def start(self) -> ObjectWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._closed.is_set():
            with kubectl_watch(*self._args) as proc:
                self._proc = proc
                if self._closed.is_set():  # closed while this watch was starting
                    break
                for event in json_stream(proc):
                    with self._lock:
                        self._samples.append((time.time(), str(event["type"]), event["object"]))
            self._closed.wait(0.5)

    def samples(self) -> list[tuple[float, str, dict[str, Any]]]:
        with self._lock:
            return list(self._samples)

    def close(self) -> None:
        self._closed.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._thread.join(timeout=10)


class Bridge:
    """Runs the worker and operator pods of one release as local processes (module docstring).

    The bridge reads the cluster as the admin of ``plane`` (as a kubelet reads
    its pods and their Secrets); ``server`` is the local server's URL
    (``http://127.0.0.1:PORT``); ``logs`` is where the per-pod logs go.
    """

    def __init__(
        self,
        plane: ControlPlane,
        *,
        namespace: str,
        release: str,
        server: str,
        logs: Path,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.namespace = namespace
        self.release = release
        self.server = server.rstrip("/")
        self.logs = logs
        self.errors: list[str] = []
        self._plane = plane
        self._kubectl = plane.kubectl
        self._lookup = _Lookup(plane.kubectl, namespace)
        self._stop_grace = stop_grace
        self._pods: dict[str, _Pod] = {}
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._inbox: queue.Queue[tuple[str, dict[str, Any] | None]] = queue.Queue()
        self._stopping = threading.Event()
        self._watcher: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._used_ports: set[int] = set()
        self._site = logs / ".site"

    # --- life --------------------------------------------------------------------

    def start(self) -> Bridge:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._site.mkdir(exist_ok=True)
        (self._site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        for target, name in ((self._watch, "bridge-watch"), (self._supervise, "bridge")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> list[str]:
        """Stop every process (SIGTERM, SIGKILL after the grace) and the watch.

        Returns the pods whose process needed SIGKILL at this shutdown.
        """
        self._stopping.set()
        watcher = self._watcher
        if watcher is not None and watcher.poll() is None:
            watcher.terminate()
        for thread in self._threads:
            thread.join(timeout=self._stop_grace + 15)
        with self._lock:
            left = [p.pod for p in self._all_processes() if p.proc.poll() is None]
            for pod in self._pods.values():
                for process in pod.history:
                    if process.proc.poll() is None:
                        process.proc.kill()
                        process.proc.wait()
            return [
                e.pod for e in self._events if e.kind == "sigkill" and e.detail == "shutdown"
            ] + left

    # --- what tests read ------------------------------------------------------------

    def events(self, kind: str | None = None, pod: str | None = None) -> list[Event]:
        with self._lock:
            return [
                e
                for e in self._events
                if (kind is None or e.kind == kind) and (pod is None or e.pod == pod)
            ]

    def processes(self, component: str = "worker") -> dict[str, Process]:
        """Running processes by pod name (one per pod at most)."""
        with self._lock:
            return {
                p.name: p.process
                for p in self._pods.values()
                if p.component == component and p.process is not None and p.process.running
            }

    def ready(self, component: str = "worker") -> dict[str, Process]:
        """Running processes that answered ``/readyz``, of pods not being deleted."""
        with self._lock:
            return {
                p.name: p.process
                for p in self._pods.values()
                if p.component == component
                and p.terminating is None
                and p.process is not None
                and p.process.running
                and p.process.ready_at is not None
            }

    def history(self, pod: str) -> list[Process]:
        """Every process started for ``pod``, oldest first."""
        with self._lock:
            return [proc for p in self._pods.values() if p.name == pod for proc in p.history]

    def all_processes(self) -> list[Process]:
        with self._lock:
            return self._all_processes()

    def log_path(self, pod: str) -> Path:
        return self.logs / f"{pod}.log"

    def kubeconfig_path(self, pod: str) -> Path:
        """The kubeconfig (its ServiceAccount's token) an operator pod's process runs with."""
        return self.logs / f"{pod}.kubeconfig"

    def metrics_urls(self) -> dict[str, str]:
        return {pod: p.metrics_url for pod, p in self.ready().items()}

    def wait(self, probe: Callable[[], Any], what: str, within: float) -> Any:
        """Wait (woken by every bridge event, else every 0.5 s) until ``probe()`` is truthy."""
        deadline = time.monotonic() + within
        while True:
            value = probe()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                msg = f"{what}: not within {within:g} s; bridge events:\n{self.describe()}"
                raise AssertionError(msg)
            with self._changed:
                self._changed.wait(min(left, 0.5))

    def wait_ready(self, count: int, within: float = 120.0) -> dict[str, Process]:
        """Wait until exactly ``count`` live worker pods have a ready process."""

        def probe() -> dict[str, Process] | None:
            ready = self.ready()
            live = self._live_pods("worker")
            return ready if len(ready) == count and len(live) == count else None

        result: dict[str, Process] = self.wait(probe, f"{count} ready workers", within)
        return result

    def describe(self, last: int = 60) -> str:
        """The last events and the errors, for failure messages."""
        with self._lock:
            lines = [e.line() for e in self._events[-last:]]
        return "\n".join([*lines, *(f"error: {e}" for e in self.errors)])

    def tail(self, pod: str, lines: int = LOG_TAIL) -> str:
        path = self.log_path(pod)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # --- internals ------------------------------------------------------------------

    def _all_processes(self) -> list[Process]:
        return [proc for p in self._pods.values() for proc in p.history]

    def _live_pods(self, component: str) -> list[str]:
        with self._lock:
            return [
                p.name
                for p in self._pods.values()
                if p.component == component and not p.gone and p.terminating is None
            ]

    def _record(self, pod: str, kind: str, detail: str = "") -> None:
        """Append an event (caller holds the lock) and wake waiters."""
        event = Event(time.time(), pod, kind, detail)
        self._events.append(event)
        with (self.logs / "bridge-events.log").open("a") as out:
            out.write(event.line() + "\n")
        self._changed.notify_all()

    def _watch(self) -> None:
        """Feed pod watch events to the supervisor; restart the watch if kubectl exits."""
        while not self._stopping.is_set():
            what = ["pods", "-l", release_selector(self.release)]
            errors = self.logs / "bridge-watch.log"
            with kubectl_watch(self._plane, self.namespace, what, errors) as proc:
                self._watcher = proc
                if self._stopping.is_set():  # closed while this watch was starting
                    break
                for event in json_stream(proc):
                    self._inbox.put(("watch", event))
            if not self._stopping.is_set():
                # The watch ended (kubectl timed out or lost the server): list once to
                # catch deletions it missed, then watch again.
                self._inbox.put(("relist", None))
                time.sleep(0.5)

    def _supervise(self) -> None:
        """The one thread that starts, signals and reaps processes (see die_with_parent)."""
        try:
            while not self._stopping.is_set():
                try:
                    item: tuple[str, dict[str, Any] | None] | None = self._inbox.get(timeout=0.1)
                except queue.Empty:
                    item = None
                while item is not None:
                    self._handle(*item)
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        item = None
                try:
                    self._tick()
                except Exception as exc:  # keep supervising: report it instead
                    with self._lock:
                        self.errors.append(f"tick: {type(exc).__name__}: {exc}")
                        self._record("-", "error", f"tick: {exc}")
        finally:
            self._shutdown()

    def _handle(self, kind: str, event: dict[str, Any] | None) -> None:
        try:
            if kind == "relist":
                self._relist()
            elif event is not None:
                self._on_pod(str(event.get("type")), event["object"])
        except Exception as exc:  # one bad event must not stop the bridge
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._record("-", "error", str(exc))

    def _relist(self) -> None:
        got = self._kubectl(
            "get", "pods", "-n", self.namespace, "-l", release_selector(self.release),
            "-o", "json", check=False,
        )  # fmt: skip
        if got.returncode != 0:
            return
        present = {item["metadata"]["uid"] for item in json.loads(got.stdout)["items"]}
        for pod in list(self._pods.values()):
            if not pod.gone and pod.uid not in present:
                self._on_pod("DELETED", pod.obj)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        component = (meta.get("labels") or {}).get("app.kubernetes.io/component", "")
        if component not in RUNNABLE:
            return
        with self._lock:
            pod = self._pods.get(meta["uid"])
            if pod is None:
                pod = self._pods[meta["uid"]] = _Pod(meta["uid"], meta["name"], component, obj)
            pod.obj = obj
            deleting = kind == "DELETED" or meta.get("deletionTimestamp") is not None
            if deleting:
                if pod.terminating is None:
                    grace = meta.get("deletionGracePeriodSeconds")
                    if kind != "DELETED" and isinstance(grace, int) and grace > 0:
                        pod.terminating = "graceful"
                        self._terminate(pod, float(grace))
                    else:
                        pod.terminating = "forced"
                        self._kill(pod, "forced deletion")
                if kind == "DELETED" and not pod.gone:
                    pod.gone = True
                    pod.restart_at = None
                    self._record(pod.name, "gone")
                return
            if _is_ready(obj) and not pod.seen_running:
                pod.seen_running = True
                self._record(pod.name, "running", f"node={obj['spec'].get('nodeName')}")
        if pod.seen_running and pod.process is None and pod.restart_at is None:
            self._start(pod)

    def _start(self, pod: _Pod) -> None:
        """Start the pod's container as a process (no lock held: kubectl calls)."""
        obj = pod.obj
        containers = {c["name"]: c for c in obj["spec"]["containers"]}
        container = containers.get(RUNNABLE[pod.component]) or obj["spec"]["containers"][0]
        log = self.log_path(pod.name)
        try:
            argv = [*ENTRYPOINT, *command_args(container)]
            env = {**host_env(), **container_env(obj, container, self._lookup)}
            env.update(self._overrides(pod, env))
            port = int(env["RESONATE_PATTERNS_HTTP_PORT"])
            # A new session: a Ctrl-C of the test run is not a pod deletion.
            proc = start_logged(argv, log, env, cwd=self.logs, append=True, new_session=True)
        except Exception as exc:  # as a kubelet: report, back off, try again
            with self._lock:
                self.errors.append(f"{pod.name}: {type(exc).__name__}: {exc}")
                self._record(pod.name, "error", f"{type(exc).__name__}: {exc}")
                self._schedule_restart(pod)
            return
        with self._lock:
            process = Process(pod.name, pod.component, argv, log, port, proc, time.time())
            pod.process = process
            pod.history.append(process)
            self._record(pod.name, "started", f"pid={proc.pid} port={port}")
            if pod.terminating is not None:  # deleted while it was being started
                if pod.terminating == "forced":
                    self._kill(pod, "forced deletion")
                else:
                    grace = pod.obj["metadata"].get("deletionGracePeriodSeconds") or 30
                    self._terminate(pod, float(grace))

    def _overrides(self, pod: _Pod, env: Mapping[str, str]) -> dict[str, str]:
        """What differs from a pod: the local server, a loopback port, the SA's own kubeconfig."""
        port = self._free_port()
        out = {"RESONATE_PATTERNS_HTTP_HOST": "127.0.0.1", "RESONATE_PATTERNS_HTTP_PORT": str(port)}
        if pod.component == "worker":
            out["RESONATE_URL"] = self.server
            return out
        account = str(pod.obj["spec"].get("serviceAccountName") or "default")
        out["KUBECONFIG"] = str(self._service_account_kubeconfig(pod.name, account))
        services = self._kubectl(
            "get", "services", "-n", self.namespace, "-o", "json",
            "-l", f"{release_selector(self.release)},app.kubernetes.io/component=server",
        )  # fmt: skip
        host_port = self.server.split("://", 1)[1]
        routes = service_routes(json.loads(services.stdout)["items"], host_port)
        out[ROUTES_ENV] = json.dumps(routes)
        root = Path(__file__).resolve().parents[2]
        out["PYTHONPATH"] = os.pathsep.join([str(self._site), str(root)])
        if "RESONATE_URL" in env:
            out["RESONATE_URL"] = self.server
        return out

    def _service_account_kubeconfig(self, pod: str, account: str) -> Path:
        """A kubeconfig for the API server with a TokenRequest token of ``account`` only."""
        token = self._kubectl(
            "create", "token", account, "-n", self.namespace, "--duration=2h"
        ).stdout.strip()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cluster",
                    "cluster": {
                        "server": self._plane.server,
                        "certificate-authority": str(self._plane.ca_file),
                    },
                }
            ],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {"cluster": "cluster", "user": account, "namespace": self.namespace},
                }
            ],
            "current-context": "pod",
        }
        path = self.kubeconfig_path(pod)
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def _free_port(self) -> int:
        from tests.ports import free_ports

        with self._lock:
            port = free_ports(1, avoid=self._used_ports)[0]
            self._used_ports.add(port)
            return port

    def _terminate(self, pod: _Pod, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds (caller holds the lock)."""
        process = pod.process
        if process is None or not process.running or process.signalled is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.proc.send_signal(signal.SIGTERM)
        process.signalled, process.signalled_at = "SIGTERM", time.time()
        process.kill_at = time.monotonic() + grace
        self._record(pod.name, "sigterm", f"grace={grace:g}s")

    def _kill(self, pod: _Pod, why: str) -> None:
        """SIGKILL now (caller holds the lock)."""
        process = pod.process
        if process is None or not process.running or process.signalled == "SIGKILL":
            return
        with contextlib.suppress(ProcessLookupError):
            process.proc.kill()
        process.signalled, process.signalled_at = "SIGKILL", time.time()
        self._record(pod.name, "sigkill", why)

    def _schedule_restart(self, pod: _Pod) -> None:
        low, high = RESTART_BACKOFF
        delay = min(high, low * 2 ** min(pod.restarts, 10))
        pod.restarts += 1
        pod.restart_at = time.monotonic() + delay

    def _tick(self) -> None:
        """Reap exits, escalate expired grace periods, probe readiness, restart crashed ones."""
        now = time.monotonic()
        due: list[_Pod] = []
        probes: list[Process] = []
        with self._lock:
            for pod in self._pods.values():
                process = pod.process
                if process is not None and process.running:
                    code = process.proc.poll()
                    if code is not None:
                        process.exit_code = code
                        how = f"after {process.signalled}" if process.signalled else "unexpected"
                        self._record(pod.name, "exit", f"code={code} {how}")
                        self._used_ports.discard(process.port)
                        pod.process = None
                        if pod.terminating is None and not pod.gone:
                            self._schedule_restart(pod)
                    elif process.kill_at is not None and now >= process.kill_at:
                        self._kill(pod, "grace period over")
                    elif process.ready_at is None and now >= process.next_probe:
                        process.next_probe = now + PROBE_INTERVAL
                        probes.append(process)
                if pod.restart_at is not None and now >= pod.restart_at:
                    pod.restart_at = None
                    if pod.terminating is None and not pod.gone:
                        self._record(pod.name, "restart", f"restart #{pod.restarts}")
                        due.append(pod)
        for process in probes:
            if _answers(f"{process.base_url}/readyz"):
                with self._lock:
                    if process.running and process.ready_at is None:
                        process.ready_at = time.time()
                        self._record(process.pod, "ready", f"port={process.port}")
        for pod in due:
            self._start(pod)

    def _shutdown(self) -> None:
        """SIGTERM every running process, SIGKILL what is left after the grace."""
        with self._lock:
            running = [p for p in self._all_processes() if p.proc.poll() is None]
            for process in running:
                if process.signalled is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.proc.send_signal(signal.SIGTERM)
                    process.signalled, process.signalled_at = "SIGTERM", time.time()
                    self._record(process.pod, "sigterm", "shutdown")
        deadline = time.monotonic() + self._stop_grace
        for process in running:
            try:
                process.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.proc.kill()
                process.proc.wait()
                with self._lock:
                    self._record(process.pod, "sigkill", "shutdown")
        with self._lock:
            for process in running:
                if process.exit_code is None:
                    process.exit_code = process.proc.returncode
                    self._record(process.pod, "exit", f"code={process.exit_code} at shutdown")


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 within half a second."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False
