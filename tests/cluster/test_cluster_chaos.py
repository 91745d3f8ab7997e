"""``make chaos`` against a release on the test control plane: worker pods deleted under load.

The release runs 3 worker replicas (autoscaling off) whose pods the bridge
turns into real workers. ``scripts/chaos_cluster.py``, the script ``make
chaos`` runs against a real cluster, submits the seeded mixed workload to the
local server and deletes a random Running worker pod every 2-5 s, half of
them gracefully (``kubectl delete pod``: the bridge sends SIGTERM and the
worker drains) and half forced (``--grace-period=0 --force``: SIGKILL at
once); the ReplicaSet replaces each, kwok runs the replacement and the bridge
starts its worker. The script reads the execution logs from the bridge's
files (``--worker-logs``: kwok pods have no containers for ``kubectl logs``),
prints its summary line and exits 0 only with lost=0 wrong=0
re_executed_resolved=0; stalls are reported, not failed on.

``CHAOS_SEED`` repeats a run's workload and choices; ``CLUSTER_CHAOS_SECONDS``
sets the deletion phase (default 45).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from tests.cluster.conftest import say
from tests.conftest import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cluster.conftest import Release

pytestmark = [pytest.mark.cluster_e2e, pytest.mark.slow]

SCRIPT = ROOT / "scripts" / "chaos_cluster.py"
#: Worker replicas the deletions pick from.
REPLICAS = 3
VALUES: dict[str, Any] = {
    "workerDefaults": {
        "replicas": REPLICAS,
        "autoscaling": {"enabled": False},
        # Per-step latency, so that a deletion finds work in flight (as in tests/chaos).
        "extraSettings": {"RESONATE_PATTERNS_STEP_DELAY_MS": 20},
    },
    "operator": {"enabled": False},
}
#: The summary line's figures.
SUMMARY = re.compile(
    r"kills=(?P<kills>\d+) calls=(?P<calls>\d+) promises=(?P<promises>\d+) lost=(?P<lost>\d+) "
    r"wrong=(?P<wrong>\d+) re_executed_resolved=(?P<rerun>\d+) "
    r"recovery_max=(?P<recovery>[\d.]+)s stalls_over_5s=(?P<stalls>\d+)"
)


def chaos_seconds() -> float:
    return float(os.environ.get("CLUSTER_CHAOS_SECONDS", "45"))


def test_chaos_script__worker_pods_deleted_under_load__nothing_lost_wrong_or_rerun(
    install: Callable[[dict[str, Any]], Release], request: pytest.FixtureRequest
) -> None:
    release = install(VALUES)
    bridge = release.bridge
    bridge.wait_ready(REPLICAS)
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    seconds = chaos_seconds()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    env["KUBECONFIG"] = str(release.plane.kubeconfig)

    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--namespace", release.namespace,
         "--release", release.name, "--server-url", release.server.url,
         "--worker-logs", str(bridge.logs), "--seconds", f"{seconds:g}",
         "--interval", "2", "5", "--seed", str(seed)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=seconds + 900,
        check=False,
    )  # fmt: skip

    found = SUMMARY.search(run.stdout)
    detail = f"seed={seed} exit={run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
    assert found is not None, detail
    line = found.group(0)
    graceful = [e for e in bridge.events("sigterm") if e.detail.startswith("grace=")]
    forced = [e for e in bridge.events("sigkill") if e.detail == "forced deletion"]
    say(
        request,
        f"cluster chaos (seed={seed}, {seconds:g}s): {line} "
        f"[bridge: {len(graceful)} SIGTERM, {len(forced)} SIGKILL]",
    )
    assert int(found["calls"]) > 0, detail
    assert int(found["kills"]) >= seconds / 5 - 2, detail
    assert (found["lost"], found["wrong"], found["rerun"]) == ("0", "0", "0"), detail
    assert run.returncode == 0, detail
    # The deletions reached real processes: drained on SIGTERM, killed when forced,
    # none crashed on its own, none outlived its grace period.
    assert graceful or forced, bridge.describe()
    exits = bridge.events("exit")
    assert not [e for e in exits if "unexpected" in e.detail], exits
    assert not [e for e in bridge.events("sigkill") if e.detail == "grace period over"]
    # A worker that was serving when its pod was deleted drains and exits 0 (one
    # still starting up dies of the SIGTERM, as it would in a container).
    drained = [
        (p.pod, p.exit_code)
        for p in bridge.all_processes()
        if p.signalled == "SIGTERM"
        and p.ready_at is not None
        and p.signalled_at is not None
        and p.ready_at < p.signalled_at
    ]
    assert all(code == 0 for _, code in drained), drained
    # The ReplicaSet replaced every deleted pod, and the bridge runs a worker in each.
    bridge.wait_ready(REPLICAS)
