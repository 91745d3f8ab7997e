"""Chaos against an installed release: delete random worker pods under the chaos workload.

The same workload, oracle and checks as the local chaos suite
(``tests/chaos/workload.py``), run through a release in a cluster:

* ``kubectl port-forward`` to the Resonate server's Service (or ``--server-url``
  / ``RESONATE_URL`` when it is reachable already); client runtimes on this
  machine submit the calls through it, and the store is sampled through it;
* every 1-3 s one random Running worker pod is deleted, alternately
  gracefully (``kubectl delete pod``: SIGTERM, the worker drains) and
  outright (``--grace-period=0 --force``);
* every worker pod's log is followed (``kubectl logs -f``) from the moment
  it runs, for the execution lines the checks need; or, with ``--worker-logs
  DIR``, read from ``DIR/<pod>.log`` where something else writes it (the
  cluster tests' bridge, whose kwok pods have no containers to take logs from).

Then it prints the same summary line as the local suite and exits 0 if
nothing was lost, wrong or re-executed (1 otherwise; 2 when there is no
cluster to talk to). Stalls are reported, not failed on.

    make chaos                                   # defaults: the k8s/ install
    python scripts/chaos_cluster.py --seconds 300 --namespace rp --release rp
    python scripts/chaos_cluster.py --server-url http://127.0.0.1:8001 --worker-logs logs/

Pod log timestamps come from the nodes' clocks and kill times from this
machine's: on a cluster whose clocks differ from this one by more than a
fraction of a second, read the recovery figures with that in mind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.chaos.workload import (  # noqa: E402 - needs ROOT on sys.path
    CallOutcome,
    Kill,
    StoreSampler,
    StoreView,
    Summary,
    make_calls,
    parse_log_lines,
    run_client,
    summarize,
)
from tests.ports import free_port  # noqa: E402 - needs ROOT on sys.path

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Port of the Resonate server's Service in the chart and k8s/ install.
SERVER_PORT = 8001


@dataclass(frozen=True)
class Options:
    """What one cluster chaos run does (parsed from the command line)."""

    namespace: str
    #: Release name: its pods and server Service carry app.kubernetes.io/instance=release.
    release: str
    #: Label selector of the worker pods to delete.
    selector: str
    #: Server URL to use as is; None to port-forward the server Service.
    server_url: str | None
    #: Directory holding ``<pod>.log`` of every worker pod; None to follow ``kubectl logs``.
    worker_logs: Path | None
    #: Worker group the calls are sent to.
    group: str
    #: Length of the deletion phase, seconds.
    seconds: float
    seed: int
    clients: int
    #: Fraction of deletions done with ``--grace-period=0 --force``.
    force_ratio: float
    #: Seconds between two deletions: uniform in [min, max].
    interval: tuple[float, float]
    kubectl: str


def default_selector(release: str) -> str:
    """The chart's labels of the worker pods of ``release``."""
    return (
        f"app.kubernetes.io/name=resonate-patterns,app.kubernetes.io/instance={release},"
        "app.kubernetes.io/component=worker"
    )


def parse_args(argv: Sequence[str], env: dict[str, str] | None = None) -> Options:
    """Command line (and ``RESONATE_URL``, ``CHAOS_SECONDS``, ``CHAOS_SEED``) into Options."""
    env = dict(os.environ) if env is None else env
    p = argparse.ArgumentParser(prog="chaos_cluster.py", description=__doc__.split("\n")[0])
    p.add_argument("--namespace", default="resonate-patterns", help="namespace of the release")
    p.add_argument(
        "--release",
        default="resonate-patterns",
        help="release name (its server Service is found by the chart's labels)",
    )
    p.add_argument("--selector", help="worker pod label selector (default: the release's)")
    p.add_argument(
        "--server-url",
        default=env.get("RESONATE_URL") or None,
        help="server URL to use instead of a port-forward (default: RESONATE_URL)",
    )
    p.add_argument(
        "--worker-logs",
        type=Path,
        metavar="DIR",
        help="read worker pod POD's log from DIR/POD.log instead of following kubectl logs "
        "(for pods whose logs kubectl cannot read, e.g. kwok pods run by the test bridge)",
    )
    p.add_argument(
        "--group",
        default=env.get("RESONATE_GROUP", "workers"),
        help="worker group the calls go to (default: RESONATE_GROUP or workers)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=float(env.get("CHAOS_SECONDS", "60")),
        help="length of the deletion phase (default: CHAOS_SECONDS or 60)",
    )
    p.add_argument("--seed", type=int, default=None, help="workload seed (default: CHAOS_SEED)")
    p.add_argument("--clients", type=int, default=4, help="client runtimes submitting calls")
    p.add_argument(
        "--force-ratio",
        type=float,
        default=0.5,
        help="fraction of deletions with --grace-period=0 --force (default 0.5)",
    )
    p.add_argument(
        "--interval",
        type=float,
        nargs=2,
        default=(1.0, 3.0),
        metavar=("MIN", "MAX"),
        help="seconds between two deletions, drawn uniformly (default 1 3)",
    )
    p.add_argument(
        "--kubectl", default=env.get("KUBECTL", "kubectl"), help="kubectl binary (or KUBECTL)"
    )
    a = p.parse_args(list(argv))
    if a.seconds <= 0:
        p.error("--seconds must be positive")
    if a.clients < 1:
        p.error("--clients must be at least 1")
    if not 0 <= a.force_ratio <= 1:
        p.error("--force-ratio must be between 0 and 1")
    low, high = a.interval
    if not 0 < low <= high:
        p.error("--interval needs 0 < MIN <= MAX")
    if a.worker_logs is not None and not a.worker_logs.is_dir():
        p.error(f"--worker-logs {a.worker_logs}: not a directory")
    seed = a.seed
    if seed is None:
        seed = int(env.get("CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    return Options(
        namespace=a.namespace,
        release=a.release,
        selector=a.selector or default_selector(a.release),
        server_url=a.server_url,
        worker_logs=a.worker_logs,
        group=a.group,
        seconds=a.seconds,
        seed=seed,
        clients=a.clients,
        force_ratio=a.force_ratio,
        interval=(low, high),
        kubectl=a.kubectl,
    )


def delete_command(opts: Options, pod: str, force: bool) -> list[str]:
    """The ``kubectl delete pod`` of one deletion, graceful or forced."""
    cmd = [opts.kubectl, "-n", opts.namespace, "delete", "pod", pod, "--wait=false"]
    if force:
        cmd += ["--grace-period=0", "--force"]
    return cmd


def exit_code(summary: Summary) -> int:
    """0 when nothing was lost, wrong or re-executed; stalls are reported only."""
    return 0 if summary.lost == summary.wrong == summary.re_executed_resolved == 0 else 1


class ClusterError(Exception):
    """kubectl cannot do what the run needs; the message is one line."""


def check_cluster(opts: Options) -> None:
    """Fail with one line unless kubectl lists worker pods of the release."""
    if shutil.which(opts.kubectl) is None:
        msg = f"{opts.kubectl!r} not found on PATH: install kubectl or pass --kubectl"
        raise ClusterError(msg)
    proc = _get_pods(opts, "name")
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        msg = f"kubectl cannot reach namespace {opts.namespace!r} in a cluster: {why}"
        raise ClusterError(msg)
    if not proc.stdout.strip():
        msg = f"no worker pods match {opts.selector} in namespace {opts.namespace!r}"
        raise ClusterError(msg)


def _get_pods(opts: Options, output: str) -> subprocess.CompletedProcess[str]:
    """``kubectl get pods`` of the release's workers, as ``-o output``."""
    return subprocess.run(
        [opts.kubectl, "-n", opts.namespace, "get", "pods", "-l", opts.selector, "-o", output,
         "--request-timeout=10s"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


def running_pods(opts: Options) -> list[str]:
    """Names of the Running, not terminating, worker pods (none if kubectl failed this time)."""
    proc = _get_pods(opts, "json")
    if proc.returncode != 0:
        return []
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        return []
    return [
        item["metadata"]["name"]
        for item in out.get("items", [])
        if item["status"].get("phase") == "Running"
        and not item["metadata"].get("deletionTimestamp")
    ]


class KubectlLogs:
    """Worker logs followed with ``kubectl logs -f`` into ``directory`` (a real cluster)."""

    def __init__(self, opts: Options, directory: Path) -> None:
        self.opts = opts
        self.directory = directory
        self.followers: dict[str, subprocess.Popen[bytes]] = {}
        #: Seconds the followers get to write the last lines once the calls are done.
        self.settle_seconds = 5.0

    def path(self, pod: str) -> Path:
        return self.directory / f"{pod}.log"

    def paths(self) -> list[Path]:
        return sorted(self.directory.glob("*.log"))

    def follow(self, pods: Sequence[str]) -> None:
        """Start ``kubectl logs -f`` for every pod not followed yet."""
        for pod in pods:
            if pod not in self.followers:
                out = open(self.path(pod), "ab")  # noqa: SIM115 - kept by the child
                self.followers[pod] = subprocess.Popen(
                    [self.opts.kubectl, "-n", self.opts.namespace, "logs", "-f", pod],
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                )

    def close(self) -> None:
        for proc in self.followers.values():
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)


class DirectoryLogs:
    """Worker logs that something else writes to ``directory/<pod>.log`` as the pods run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: The writer is local: a second is plenty for its last lines.
        self.settle_seconds = 1.0

    def path(self, pod: str) -> Path:
        return self.directory / f"{pod}.log"

    def paths(self) -> list[Path]:
        return sorted(self.directory.glob("*.log"))

    def follow(self, pods: Sequence[str]) -> None:
        return None

    def close(self) -> None:
        return None


def log_source(opts: Options, scratch: Path) -> KubectlLogs | DirectoryLogs:
    """Where the run reads worker logs: ``--worker-logs``, else kubectl into ``scratch``."""
    if opts.worker_logs is not None:
        return DirectoryLogs(opts.worker_logs)
    return KubectlLogs(opts, scratch)


def server_service(opts: Options) -> str:
    """The release's server Service (by the chart's labels), as ``svc/NAME``."""
    selector = f"app.kubernetes.io/instance={opts.release},app.kubernetes.io/component=server"
    proc = subprocess.run(
        [opts.kubectl, "-n", opts.namespace, "get", "services", "-l", selector, "-o", "name",
         "--request-timeout=10s"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    names = proc.stdout.split() if proc.returncode == 0 else []
    return names[0].replace("service/", "svc/", 1) if names else f"svc/{opts.release}-server"


class ClusterRun:
    """Port-forward, worker logs, deletions and the workload of one run."""

    def __init__(self, opts: Options, logs: KubectlLogs | DirectoryLogs) -> None:
        self.opts = opts
        self.logs = logs
        self.rng = random.Random(opts.seed)
        self.deleted: dict[str, tuple[float, str]] = {}
        self.forward: subprocess.Popen[bytes] | None = None

    def server_url(self) -> str:
        """The server URL, port-forwarding its Service when none was given."""
        if self.opts.server_url:
            return self.opts.server_url
        port = free_port()
        service = server_service(self.opts)
        self.forward = subprocess.Popen(
            [self.opts.kubectl, "-n", self.opts.namespace, "port-forward", service,
             f"{port}:{SERVER_PORT}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return f"http://127.0.0.1:{port}"
            time.sleep(0.2)
        msg = f"kubectl port-forward {service} did not come up within 20s"
        raise ClusterError(msg)

    def follow_new_pods(self) -> None:
        """Follow the log of every Running worker pod not followed yet."""
        self.logs.follow(running_pods(self.opts))

    def delete_one(self) -> None:
        """Delete one random Running worker pod, forced with probability ``force_ratio``."""
        pods = running_pods(self.opts)
        if not pods:
            return
        pod = self.rng.choice(pods)
        force = self.rng.random() < self.opts.force_ratio
        self.deleted[pod] = (time.time(), "SIGKILL" if force else "SIGTERM")
        subprocess.run(delete_command(self.opts, pod, force), capture_output=True, check=False)

    async def chaos(self) -> None:
        """Delete pods every MIN-MAX s for ``seconds``, following new pods' logs as they start."""
        deadline = time.monotonic() + self.opts.seconds
        next_kill = time.monotonic() + 2
        while time.monotonic() < deadline:
            await asyncio.to_thread(self.follow_new_pods)
            if time.monotonic() >= next_kill:
                await asyncio.to_thread(self.delete_one)
                next_kill = time.monotonic() + self.rng.uniform(*self.opts.interval)
            await asyncio.sleep(0.5)

    def kills(self) -> list[Kill]:
        out = []
        for pod, (at, how) in self.deleted.items():
            path = self.logs.path(pod)
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(Kill(at, how, pod, tuple(parse_log_lines(lines))))
        return out

    def events(self) -> list[dict[str, Any]]:
        return [
            e
            for path in self.logs.paths()
            for e in parse_log_lines(path.read_text(errors="replace").splitlines())
        ]

    def close(self) -> None:
        self.logs.close()
        if self.forward is not None and self.forward.poll() is None:
            self.forward.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.forward.wait(5)


async def run(opts: Options, logs: Path) -> Summary:
    """One cluster chaos run; returns its summary."""
    from service.config import load_settings
    from service.runtime import build_runtime

    cluster = ClusterRun(opts, log_source(opts, logs))
    try:
        url = await asyncio.to_thread(cluster.server_url)
        env = {**os.environ, "RESONATE_URL": url, "RESONATE_GROUP": opts.group}
        runtimes = [build_runtime(load_settings(env), role="client") for _ in range(opts.clients)]
        for rt in runtimes:
            rt.start()
        outcomes: list[CallOutcome] = []
        view = StoreView()
        submitting = [True]
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            StoreSampler(url, view, token=os.environ.get("RESONATE_TOKEN")).run(stop)
        )
        clients = [
            asyncio.create_task(
                run_client(
                    rt, make_calls(opts.seed, i, 5000), outcomes, lambda: submitting[0],
                    call_timeout=300,
                )
            )
            for i, rt in enumerate(runtimes)
        ]  # fmt: skip
        try:
            await cluster.chaos()
            submitting[0] = False
            await asyncio.wait_for(asyncio.gather(*clients), 600)
            await asyncio.sleep(cluster.logs.settle_seconds)  # the last log lines
        finally:
            submitting[0] = False
            for task in clients:
                task.cancel()
            stop.set()
            await sampler
            for rt in runtimes:
                await rt.stop()
        return summarize(outcomes, cluster.events(), view, cluster.kills(), [], time.time())
    finally:
        cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_cluster(opts)
    except ClusterError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(f"chaos seed={opts.seed} namespace={opts.namespace}\n")
    with tempfile.TemporaryDirectory(prefix="chaos-logs-") as logs:
        try:
            summary = asyncio.run(run(opts, Path(logs)))
        except ClusterError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
    sys.stdout.write(summary.line() + "\n")
    sys.stdout.write(summary.recovery_line() + "\n")
    if exit_code(summary) != 0:
        sys.stdout.write(f"details: {json.dumps(summary.details)}\n")
    return exit_code(summary)


if __name__ == "__main__":
    sys.exit(main())
