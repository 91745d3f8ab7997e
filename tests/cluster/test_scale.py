"""``kubectl scale`` of a worker Deployment runs that many workers; the operator keeps out.

Two ways a release leaves the replica count to people: autoscaling off (the
Deployment carries ``replicas`` and no WorkerAutoscaler exists) and a paused
WorkerAutoscaler. Either way ``kubectl scale --replicas=3`` ends with three
real worker processes (the bridge runs one per Ready pod), each serving its
metrics and each taking work, and the operator leaves the count alone for
several poll intervals; the paused autoscaler keeps reporting, and once
unpaused it scales the idle group back down, so the operator was able to act
all along.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from service.client import invoke
from service.config import load_settings
from service.patterns.registry import pattern
from service.runtime import build_runtime
from tests.chaos.workload import parse_log_lines

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cluster.conftest import Release

pytestmark = [pytest.mark.cluster_e2e, pytest.mark.slow]

#: Poll interval of the paused autoscaler, seconds; the test watches several.
POLL_SECONDS = 1
#: Poll intervals the operator is given to (wrongly) touch the replicas.
POLLS_WATCHED = 5
#: Generous bound for a loaded 2-core machine.
WITHIN = 120.0


def scaled_to_three(release: Release) -> dict[str, str]:
    """``kubectl scale`` the worker Deployment to 3; wait for 3 ready workers; their metrics."""
    deployment = release.worker_deployment()
    release.kubectl("scale", f"deployment/{deployment}", "--replicas=3")
    workers = release.bridge.wait_ready(3, WITHIN)
    assert len({p.port for p in workers.values()}) == 3
    metrics = {}
    for pod, process in workers.items():
        with urllib.request.urlopen(process.metrics_url, timeout=10) as resp:
            metrics[pod] = resp.read().decode()
    return metrics


async def every_worker_takes_work(release: Release, pods: set[str]) -> None:
    """Submit process_bounded calls until every pod's worker has executed one."""
    runtime = build_runtime(load_settings({"RESONATE_URL": release.server.url}), role="client")
    runtime.start()

    def worked() -> set[str]:
        return {
            pod
            for pod in pods
            if any(
                e.get("function") == "process_bounded"
                for e in parse_log_lines(
                    release.bridge.log_path(pod).read_text(errors="replace").splitlines()
                )
            )
        }

    try:
        deadline = time.monotonic() + WITHIN
        batch = 0
        while worked() != pods:
            assert time.monotonic() < deadline, f"only {worked()} of {pods} took work"
            calls = [
                invoke(
                    runtime,
                    pattern("process_bounded"),
                    ([batch, i, 7], 3),
                    promise_id=f"s{batch}-{i}",
                )
                for i in range(6)
            ]
            results = await asyncio.wait_for(asyncio.gather(*calls), WITHIN)
            assert [r.result for r in results] == [[batch * batch, i * i, 49] for i in range(6)]
            batch += 1
    finally:
        await runtime.stop()


def replicas_stay(release: Release, replicas: int, seconds: float) -> None:
    """The worker Deployment keeps ``replicas`` for ``seconds`` (sampled every 0.5 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert release.replicas(release.worker_deployment()) == replicas
        time.sleep(0.5)


async def test_kubectl_scale__autoscaling_off__three_workers_run_and_stay(
    install: Callable[[dict[str, Any]], Release],
) -> None:
    values = {"workerDefaults": {"replicas": 2, "autoscaling": {"enabled": False}}}
    release = await asyncio.to_thread(install, values)
    await asyncio.to_thread(release.bridge.wait_ready, 2, WITHIN)
    await asyncio.to_thread(
        release.bridge.wait, lambda: release.bridge.ready("operator"), "the operator ready", WITHIN
    )
    assert release.kubectl("get", "workerautoscalers", "-o", "name").stdout == ""

    metrics = await asyncio.to_thread(scaled_to_three, release)
    await every_worker_takes_work(release, set(metrics))
    await asyncio.to_thread(replicas_stay, release, 3, POLLS_WATCHED * POLL_SECONDS)

    assert all('resonate_patterns_worker_ready{group="workers"} 1.0' in m for m in metrics.values())
    assert set(release.bridge.ready()) == set(metrics)
    assert not release.bridge.events("exit")


async def test_kubectl_scale__autoscaler_paused__operator_leaves_replicas_until_resumed(
    install: Callable[[dict[str, Any]], Release],
) -> None:
    values = {
        "workerDefaults": {
            "autoscaling": {
                "enabled": True,
                "paused": True,
                "minReplicas": 1,
                "pollingIntervalSeconds": POLL_SECONDS,
                "scaleDown": {"stabilizationWindowSeconds": 2},
            }
        }
    }
    release = await asyncio.to_thread(install, values)
    bridge, name = release.bridge, release.worker_deployment()
    await asyncio.to_thread(bridge.wait_ready, 1, WITHIN)
    await asyncio.to_thread(
        bridge.wait, lambda: bridge.ready("operator"), "the operator ready", WITHIN
    )

    metrics = await asyncio.to_thread(scaled_to_three, release)
    # An idle group at 3 replicas with minReplicas 1: unpaused, the operator would scale down.
    await asyncio.to_thread(replicas_stay, release, 3, POLLS_WATCHED * POLL_SECONDS)
    status = json.loads(release.kubectl("get", "workerautoscaler", name, "-o", "json").stdout)[
        "status"
    ]
    assert len(metrics) == 3
    assert {c["type"]: c["status"] for c in status["conditions"]}["Paused"] == "True"
    assert status["currentReplicas"] == 3

    release.kubectl(
        "patch", "workerautoscaler", name, "--type=merge", "-p", '{"spec":{"paused":false}}'
    )
    await asyncio.to_thread(bridge.wait_ready, 1, WITHIN)
    await asyncio.to_thread(
        bridge.wait, lambda: len(bridge.processes()) == 1, "the removed workers exited", WITHIN
    )

    assert release.replicas(name) == 1
    exits = bridge.events("exit")
    assert len(exits) == 2
    assert all(e.detail == "code=0 after SIGTERM" for e in exits), exits
