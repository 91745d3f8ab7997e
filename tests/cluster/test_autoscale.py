"""The operator scales a release's workers by backlog, end to end on a real API server.

``helm install`` of the chart with autoscaling on (a 1 s poll, a 10 s
stabilization window, 2 tasks per worker at a time, 1 s steps), then 40 slow
``process_bounded`` calls against the local server: the operator, running
under its own ServiceAccount's token, reads the backlog and raises the
Deployment's replicas through ``/scale``; the ReplicaSet creates pods, kwok
runs them, the bridge starts a worker for each; the backlog drains with every
result right, and once the window has passed the replicas come back down
(the removed workers drain and exit 0). The time of each step is printed as
one line (``autoscale: submit->scale-up ...``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from service.client import invoke
from service.config import load_settings
from service.patterns.registry import pattern
from service.runtime import build_runtime
from tests.chaos.workload import parse_log_lines
from tests.cluster.bridge import ObjectWatch
from tests.cluster.conftest import say

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cluster.conftest import Release

pytestmark = [pytest.mark.cluster_e2e, pytest.mark.slow]

#: Calls submitted at once.
TASKS = 40
#: Each call: process_bounded over ITEMS values, WIDTH at a time (ITEMS / WIDTH steps).
ITEMS, WIDTH = 10, 5
#: Latency of each step: one call takes about ITEMS / WIDTH * STEP_DELAY_MS.
STEP_DELAY_MS = 1000
#: Calls one worker runs at once: one worker alone would need ~TASKS / 2 * 2 s.
MAX_CONCURRENT = 2
TARGET_PER_REPLICA = 10
MIN_REPLICAS, MAX_REPLICAS = 1, 6
WINDOW_SECONDS = 10
VALUES: dict[str, Any] = {
    "workerDefaults": {
        "maxConcurrentTasks": MAX_CONCURRENT,
        "extraSettings": {"RESONATE_PATTERNS_STEP_DELAY_MS": STEP_DELAY_MS},
        "autoscaling": {
            "enabled": True,
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "targetTasksPerReplica": TARGET_PER_REPLICA,
            "pollingIntervalSeconds": 1,
            "scaleDown": {"stabilizationWindowSeconds": WINDOW_SECONDS},
        },
    }
}
#: Printer columns of the WorkerAutoscaler CRD, as `kubectl get` heads them.
COLUMNS = ["NAME", "GROUP", "TARGET", "MIN", "MAX", "PENDING", "IN-FLIGHT", "DESIRED", "CURRENT"]
#: Generous bounds for a loaded 2-core machine: behaviour is asserted, not speed.
SETTLE = 180.0


def replicas_over_time(watch: ObjectWatch) -> list[tuple[float, int]]:
    """(time, spec.replicas) of every version of the Deployment the watch saw."""
    return [(at, int(obj["spec"].get("replicas") or 0)) for at, _, obj in watch.samples()]


def first(samples: list[tuple[float, int]], after: float, test: Callable[[int], bool]) -> float:
    """Time of the first sample after ``after`` whose replicas pass ``test``."""
    found = [at for at, n in samples if at >= after and test(n)]
    assert found, f"no replica count after {after:.1f} passes; seen {samples}"
    return found[0]


async def submit(url: str) -> tuple[float, list[Any]]:
    """Submit TASKS process_bounded calls at once; their results and when the last came."""
    runtime = build_runtime(load_settings({"RESONATE_URL": url}), role="client")
    runtime.start()
    try:
        calls = [
            invoke(
                runtime,
                pattern("process_bounded"),
                (list(range(i * ITEMS, (i + 1) * ITEMS)), WIDTH),
                promise_id=f"autoscale-{i}",
            )
            for i in range(TASKS)
        ]
        results = await asyncio.wait_for(asyncio.gather(*calls), SETTLE)
        return time.time(), [r.result for r in results]
    finally:
        await runtime.stop()


def executions(log: Path) -> list[dict[str, Any]]:
    """The execution_started/finished events of one worker log."""
    return parse_log_lines(log.read_text(errors="replace").splitlines())


def wa_status(release: Release, name: str, path: str) -> str:
    """``kubectl get wa NAME -o jsonpath=PATH`` (the CRD's short name)."""
    return release.kubectl("get", "wa", name, "-o", f"jsonpath={path}").stdout


async def test_backlog__operator_scales_workers_up_then_down__results_right(
    install: Callable[[dict[str, Any]], Release], request: pytest.FixtureRequest
) -> None:
    release = await asyncio.to_thread(install, VALUES)
    bridge, deployment = release.bridge, release.worker_deployment()
    watch = ObjectWatch(
        release.plane, release.namespace, ["deployment", deployment], bridge.logs / "watch.log"
    ).start()
    try:
        await asyncio.to_thread(bridge.wait_ready, MIN_REPLICAS)
        operator = await asyncio.to_thread(
            bridge.wait, lambda: bridge.ready("operator"), "the operator ready", 120
        )

        submitted = time.time()
        drained, results = await submit(release.server.url)

        samples = replicas_over_time(watch)
        peak = max(n for at, n in samples if at >= submitted)
        scaled_up = first(samples, submitted, lambda n: n > MIN_REPLICAS)
        new_running = sorted(e.at for e in bridge.events("running") if e.at >= submitted)
        new_ready = sorted(e.at for e in bridge.events("ready") if e.at >= submitted)
        added = peak - MIN_REPLICAS
        # Down to the floor once the window has passed (drain, not timing, is asserted).
        await asyncio.to_thread(
            bridge.wait,
            lambda: replicas_over_time(watch)[-1][1] == MIN_REPLICAS,
            "replicas back at minReplicas",
            SETTLE,
        )
        scaled_down = first(replicas_over_time(watch), drained, lambda n: n == MIN_REPLICAS)
        await asyncio.to_thread(bridge.wait_ready, MIN_REPLICAS)
        await asyncio.to_thread(
            bridge.wait,
            lambda: len(bridge.processes()) == MIN_REPLICAS,
            "the removed workers exited",
            SETTLE,
        )
    finally:
        watch.close()

    assert results == [[x * x for x in range(i * ITEMS, (i + 1) * ITEMS)] for i in range(TASKS)]
    # Scaled by the backlog (40 tasks, 10 per replica), never beyond what it justifies.
    assert MIN_REPLICAS < peak <= math.ceil(TASKS / TARGET_PER_REPLICA), samples
    # The added pods ran real workers that took part of the backlog.
    assert len(new_running) >= added
    assert len(new_ready) >= added
    executed = {
        pod
        for pod in {e.pod for e in bridge.events("started")}
        if any(e.get("function") == "process_bounded" for e in executions(bridge.log_path(pod)))
    }
    assert len(executed) >= 2, f"only {executed} ran process_bounded"
    # The workers removed by the scale-down (some may go while the backlog drains,
    # once the window no longer holds the peak) drained and exited cleanly on SIGTERM.
    exits = bridge.events("exit")
    assert len(exits) == peak - MIN_REPLICAS, exits
    assert all(e.detail == "code=0 after SIGTERM" for e in exits), exits
    assert not bridge.events("sigkill")

    # The operator acted as its ServiceAccount (a TokenRequest token), not as the admin.
    kubeconfig = yaml.safe_load(bridge.kubeconfig_path(next(iter(operator))).read_text())
    token = kubeconfig["users"][0]["user"]["token"]
    whoami = release.plane.kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", token=token
    )
    assert whoami.stdout == f"system:serviceaccount:{release.namespace}:{release.fullname}-operator"
    may_edit = release.plane.kubectl(
        "auth", "can-i", "patch", "deployments", "-n", release.namespace, token=token, check=False
    )
    assert may_edit.stdout.strip() == "no"

    # kubectl shows the printer columns, the conditions and the scaling Events.
    table = release.kubectl("get", "workerautoscalers").stdout.splitlines()
    assert table[0].split()[: len(COLUMNS)] == COLUMNS
    row = dict(zip(table[0].split(), table[1].split(), strict=False))
    assert (row["GROUP"], row["MIN"], row["DESIRED"], row["CURRENT"]) == ("workers", "1", "1", "1")
    conditions = json.loads(wa_status(release, deployment, "{.status.conditions}"))
    state = {c["type"]: c["status"] for c in conditions}
    assert state["Ready"] == "True"
    assert state["BacklogReadable"] == "True"
    assert state["Paused"] == "False"
    ready_message = wa_status(
        release, deployment, '{.status.conditions[?(@.type=="Ready")].message}'
    )
    assert ready_message
    events = release.kubectl(
        "get", "events", "--field-selector",
        f"involvedObject.kind=WorkerAutoscaler,involvedObject.name={deployment}",
        "-o", "json",
    )  # fmt: skip
    messages: dict[str, list[str]] = {}
    for event in json.loads(events.stdout)["items"]:
        messages.setdefault(event["reason"], []).append(event["message"])
    assert any(f": {MIN_REPLICAS} -> " in m for m in messages.get("ScaledUp", [])), messages
    assert any(f" -> {MIN_REPLICAS} replicas" in m for m in messages.get("ScaledDown", [])), (
        messages
    )
    listed = release.kubectl(
        "get", "events", "--field-selector", "involvedObject.kind=WorkerAutoscaler"
    )
    assert "ScaledUp" in listed.stdout
    assert f"workerautoscaler/{deployment}" in listed.stdout

    say(
        request,
        f"autoscale: submit->scale-up {scaled_up - submitted:.1f}s ({MIN_REPLICAS}->{peak}), "
        f"->pods Running {new_running[added - 1] - scaled_up:.1f}s, "
        f"->workers ready {new_ready[added - 1] - new_running[added - 1]:.1f}s, "
        f"->drained {drained - submitted:.1f}s after submit, "
        f"->scale-down {scaled_down - drained:.1f}s after drain (window {WINDOW_SECONDS}s)",
    )
