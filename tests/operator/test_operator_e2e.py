"""The operator end to end: kopf in-process against kmock, and a real local Resonate server.

Every test runs the operator's own handlers (``build_registry``) with its own
loop, reading backlogs from a live local server over HTTP and scaling a
Deployment through kmock's emulated ``/scale`` subresource. The capability
tests read from :class:`~tests.operator.search_server.SearchServer` instead,
which refuses searches over HTTP exactly as the official server v0.9.8 does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
from kubernetes_asyncio import client as k8s
from resonate_base import PROTOCOL_VERSION

from service.operator.handlers import FINALIZER, REPORTING_COMPONENT, build_registry, make_memo
from service.operator.loop import OperatorContext
from service.operator.peering import Peering
from service.telemetry.metrics import OperatorMetrics
from tests.conftest import wait_until_ok
from tests.operator.kmock_shim import (
    ALL_VERBS,
    DEPLOYMENTS,
    EVENTS,
    GROUP,
    NS,
    PLURAL,
    VERSION,
    WA,
    Emulator,
    declare_resources,
)
from tests.operator.search_server import SearchServer
from tests.ports import free_port

pytestmark = pytest.mark.kmock(cls=Emulator)

POLL = 0.2


def fast(settings: kopf.OperatorSettings) -> None:
    settings.scanning.disabled = True
    settings.watching.reconnect_backoff = 0.05
    settings.networking.error_backoffs = [0.1, 0.2]
    settings.background.cancellation_polling = 0.1
    settings.queueing.exit_timeout = 0.5


class Resonate:
    """A local Resonate server process (real HTTP) the operator reads backlogs from.

    A separate process, not a server in the test's loop: kopf treats every task
    created in its loop while it runs as its own and cancels them on exit.
    """

    def __init__(self, data: Path) -> None:
        self.data = str(data)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "server",
                "--port",
                str(self.port),
                "--data",
                self.data,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_until_ok(f"{self.url}/readyz")

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 10)
            self.proc = None

    async def send(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        envelope = {
            "kind": kind,
            "head": {"corrId": "t", "version": PROTOCOL_VERSION},
            "data": data,
        }
        async with aiohttp.ClientSession() as session, session.post(self.url, json=envelope) as r:
            return await r.json()

    async def submit(self, group: str, ids: list[str]) -> None:
        """Work for ``group`` (nobody runs it: these tests control the backlog)."""
        for pid in ids:
            out = await self.send(
                "promise.create",
                {
                    "id": pid,
                    "timeoutAt": 1 << 60,
                    "tags": {"resonate:target": f"poll://any@{group}"},
                },
            )
            assert out["head"]["status"] == 200

    async def finish(self, ids: list[str]) -> None:
        for pid in ids:
            await self.send("promise.settle", {"id": pid, "state": "resolved"})


class Cluster:
    """The emulated Kubernetes API plus helpers to seed and read objects."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.config = k8s.Configuration(host=str(emulator.url).rstrip("/"))

    async def create_deployment(self, name: str, replicas: int) -> None:
        labels = {"app": name}
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "worker", "image": "rp:dev"}]},
                },
            },
            "status": {"replicas": replicas},
        }
        resp = await self.emulator.post(f"/apis/apps/v1/namespaces/{NS}/deployments", json=body)
        assert resp.status == 200, await resp.text()

    async def create_autoscaler(
        self,
        name: str,
        spec: dict[str, Any],
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        full = {
            "minReplicas": 1,
            "maxReplicas": 6,
            "targetTasksPerReplica": 2,
            "activationTasks": 1,
            "pollingIntervalSeconds": 1,
            "scaleUp": {"maxStep": 10},
            "scaleDown": {"stabilizationWindowSeconds": 1, "cooldownSeconds": 0},
            "failureThreshold": 3,
            "paused": False,
            **spec,
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkerAutoscaler",
            "metadata": {
                "name": name,
                "namespace": NS,
                "annotations": annotations or {},
                "labels": labels or {},
            },
            "spec": full,
        }
        resp = await self.emulator.post(
            f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}", json=body
        )
        assert resp.status == 200, await resp.text()

    async def create_group(self, name: str, replicas: int, url: str, **spec: Any) -> None:
        """A worker Deployment and its WorkerAutoscaler, both named after the group."""
        await self.create_deployment(name, replicas)
        await self.create_autoscaler(
            name, {"scaleTargetRef": {"name": name}, "resonateUrl": url, "group": name, **spec}
        )

    def replicas(self, deployment: str) -> int:
        return int(self.emulator.objects[DEPLOYMENTS, NS, deployment]["spec"]["replicas"])

    def status(self, autoscaler: str) -> dict[str, Any]:
        return dict(self.emulator.objects[WA, NS, autoscaler].get("status") or {})

    def events(self, reason: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Events in the namespace, by ``reason`` and ``kind`` (``Normal``/``Warning``)."""
        return [
            dict(obj)
            for (res, ns, _), obj in self.emulator.objects.items()
            if res == EVENTS
            and ns == NS
            and (reason is None or obj.get("reason") == reason)
            and (kind is None or obj.get("type") == kind)
        ]

    def condition(self, autoscaler: str, kind: str) -> dict[str, Any]:
        conds = self.status(autoscaler).get("conditions") or []
        return dict(next((c for c in conds if c.get("type") == kind), {}))

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        resp = await self.emulator.patch(
            path, json=body, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert resp.status == 200, await resp.text()

    async def user_scale(self, deployment: str, replicas: int) -> None:
        """What `kubectl scale deploy/NAME --replicas=N` does."""
        async with k8s.ApiClient(self.config) as api:
            await k8s.AppsV1Api(api).patch_namespaced_deployment_scale(
                deployment, NS, {"spec": {"replicas": replicas}}
            )


async def until(check: Callable[[], bool], within: float = 10, what: str = "") -> float:
    """Wait until ``check()``; return how long it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def resonate(tmp_path: Path) -> AsyncIterator[Resonate]:
    server = Resonate(tmp_path / "resonate.db")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def cluster(kmock: Emulator) -> Cluster:
    declare_resources(kmock)
    return Cluster(kmock)


def operator_main(
    cluster: Cluster,
    context: OperatorContext,
    peering: str | None,
    priority: int,
    *,
    stop: asyncio.Event | threading.Event,
    ready: asyncio.Event | threading.Event,
    selector: dict[str, str] | None = None,
) -> Coroutine[Any, Any, None]:
    """The operator's own handlers as kopf runs them, logged in to the emulator."""
    server = str(cluster.emulator.url)
    registry = build_registry(
        peering=None if peering is None else Peering(peering, (NS,)),
        selector=None if selector is None else selector.items(),
        login=lambda **_: kopf.ConnectionInfo(server=server, insecure=True),
        tweak=fast,
    )
    return kopf.operator(
        registry=registry,
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        namespaces=[NS],
        memo=make_memo(context),
        stop_flag=stop,
        ready_flag=ready,
    )


@contextlib.asynccontextmanager
async def running_operator(
    cluster: Cluster,
    *,
    peering: str | None = None,
    priority: int = 0,
    token: str | None = None,
    selector: dict[str, str] | None = None,
) -> AsyncIterator[OperatorContext]:
    """The operator's handlers running in this loop against the emulator.

    Entered and left in the test's own task: kopf cancels, as hung, every
    task created while it ran that is still alive when it stops, and a
    fixture's teardown runs in such a task.
    """
    context = OperatorContext(
        api_config=cluster.config, metrics=OperatorMetrics(), poll_seconds=POLL, token=token
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        operator_main(
            cluster, context, peering, priority, stop=stop, ready=ready, selector=selector
        )
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield context
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert task.exception() is None
    assert all(
        isinstance(e, kmock.KubernetesError) and e.status < 500 for e in cluster.emulator.errors
    ), cluster.emulator.errors


def sample(ctx: OperatorContext, name: str, **labels: str) -> float:
    value = ctx.metrics.registry.get_sample_value(name, {"namespace": NS, **labels})
    return 0.0 if value is None else value


async def test_backlog_grows__replicas_rise_with_event_and_status_then_fall_after_window(
    cluster: Cluster, resonate: Resonate, record_property: Any
) -> None:
    async with running_operator(cluster) as operator:
        await cluster.create_group(
            "workers",
            1,
            resonate.url,
            scaleDown={"stabilizationWindowSeconds": 2, "cooldownSeconds": 0},
        )
        await until(
            lambda: cluster.status("workers").get("observedPending") == 0, what="first poll"
        )
        ids = [f"job-{i}" for i in range(8)]
        await resonate.submit("workers", ids)
        reacted_up = await until(lambda: cluster.replicas("workers") == 4, what="scale up to 4")
        await until(
            lambda: cluster.status("workers").get("currentReplicas") == 4, what="status after scale"
        )
        status = cluster.status("workers")
        assert (
            status["observedPending"],
            status["desiredReplicas"],
            status["currentReplicas"],
        ) == (8, 4, 4)
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions == {
            "Ready": "True",
            "BacklogReadable": "True",
            "Active": "True",
            "Fallback": "False",
            "Paused": "False",
        }
        assert "backlog 8 needs 4 replicas" in status["lastScaleReason"]
        await until(lambda: bool(cluster.events("ScaledUp")), what="ScaledUp event")
        [event] = cluster.events("ScaledUp")
        assert event["involvedObject"]["kind"] == "WorkerAutoscaler"
        assert "workers: 1 -> 4 replicas" in event["message"]
        # Which operator wrote it: this one's component and pod (host) name, not kopf's "dev".
        assert (event["reportingComponent"], event["source"]) == (
            REPORTING_COMPONENT,
            {"component": REPORTING_COMPONENT},
        )
        assert event["reportingInstance"] == socket.gethostname()
        labels = {"autoscaler": "workers", "group": "workers"}
        assert (
            sample(
                operator, "resonate_patterns_autoscaler_backlog_tasks", state="pending", **labels
            )
            == 8
        )
        assert sample(operator, "resonate_patterns_autoscaler_desired_replicas", **labels) == 4
        assert sample(operator, "resonate_patterns_autoscaler_current_replicas", **labels) == 4
        assert (
            sample(
                operator,
                "resonate_patterns_autoscaler_scale_events_total",
                direction="up",
                **labels,
            )
            == 1
        )

        # The backlog drains: replicas hold for the 2 s stabilization window, then fall.
        await resonate.finish(ids)
        drained = time.monotonic()
        await until(lambda: cluster.status("workers").get("observedPending") == 0, what="drained")
        reacted_down = await until(
            lambda: cluster.replicas("workers") == 1, within=15, what="scale down to 1"
        )
        held = time.monotonic() - drained
        assert held >= 2.0 - POLL, f"scaled down after {held:.2f}s, inside the 2 s window"
        await until(lambda: bool(cluster.events("ScaledDown")), what="ScaledDown event")
        assert (
            sample(
                operator,
                "resonate_patterns_autoscaler_scale_events_total",
                direction="down",
                **labels,
            )
            == 1
        )
        record_property("scale_up_reaction_seconds", round(reacted_up, 3))
        record_property("scale_down_after_drain_seconds", round(held, 3))
        assert reacted_up < 2
        assert reacted_down < 15


async def test_paused__user_scale_left_alone(cluster: Cluster, resonate: Resonate) -> None:
    async with running_operator(cluster):
        await cluster.create_deployment("paused", 1)
        await cluster.create_autoscaler(
            "paused",
            {"scaleTargetRef": {"name": "paused"}, "resonateUrl": resonate.url, "group": "quiet"},
            annotations={"resonate-patterns.io/paused": "true"},
        )
        await resonate.submit("quiet", [f"q-{i}" for i in range(10)])
        await until(lambda: cluster.status("paused").get("observedPending") == 10, what="observed")
        await cluster.user_scale("paused", 3)
        await asyncio.sleep(6 * POLL)
        assert cluster.replicas("paused") == 3, "a paused autoscaler never touches the Deployment"
        status = cluster.status("paused")
        assert status["desiredReplicas"] == 5
        assert {c["type"]: c["status"] for c in status["conditions"]}["Paused"] == "True"
        assert cluster.events("ScaledUp") == []
        # Unpausing hands the Deployment back to the policy.
        await cluster.patch(
            f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/paused",
            {"metadata": {"annotations": {"resonate-patterns.io/paused": "false"}}},
        )
        await until(lambda: cluster.replicas("paused") == 5, what="scaled after unpause")


async def test_server_down__failures_then_fallback_then_recovery(
    cluster: Cluster, resonate: Resonate
) -> None:
    async with running_operator(cluster) as operator:
        await cluster.create_group(
            "fragile",
            4,
            resonate.url,
            fallbackReplicas=2,
            failureThreshold=3,
            scaleDown={"stabilizationWindowSeconds": 0, "cooldownSeconds": 0},
        )
        await resonate.submit("fragile", [f"f-{i}" for i in range(8)])
        await until(lambda: cluster.status("fragile").get("observedPending") == 8, what="observed")
        assert cluster.replicas("fragile") == 4
        await resonate.stop()
        await until(
            lambda: cluster.status("fragile").get("consecutiveFailures", 0) >= 1,
            what="a failed read",
        )
        status = cluster.status("fragile")
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert ready["reason"] == "BacklogUnreadable"
        assert cluster.replicas("fragile") == 4, "held below the failure threshold"
        await until(lambda: cluster.replicas("fragile") == 2, what="fallback replicas")
        assert cluster.replicas("fragile") > 0
        await until(lambda: bool(cluster.events("Fallback")), what="Fallback event")
        assert (
            sample(
                operator,
                "resonate_patterns_autoscaler_backlog_read_failures_total",
                autoscaler="fragile",
                group="fragile",
            )
            >= 3
        )
        # The server comes back (same store): reads succeed and the policy takes over again.
        await resonate.start()
        await until(
            lambda: cluster.status("fragile").get("consecutiveFailures") == 0, what="recovered"
        )
        await until(lambda: cluster.replicas("fragile") == 4, what="back to the backlog's 4")
        conditions = {c["type"]: c["status"] for c in cluster.status("fragile")["conditions"]}
        assert (conditions["Ready"], conditions["Fallback"]) == ("True", "False")


async def test_two_autoscalers__independent_groups(cluster: Cluster, resonate: Resonate) -> None:
    async with running_operator(cluster):
        for name in ("alpha", "beta"):
            await cluster.create_group(name, 1, resonate.url)
        await resonate.submit("alpha", [f"a-{i}" for i in range(6)])
        await resonate.submit("beta", [f"b-{i}" for i in range(11)])
        await until(lambda: cluster.replicas("alpha") == 3, what="alpha at 3")
        await until(lambda: cluster.replicas("beta") == 6, what="beta at 6 (max)")
        # The status is written right after the scale, so wait for it too.
        await until(lambda: cluster.status("beta").get("observedPending") == 11, what="status")


async def test_bad_spec_and_missing_target__reported_not_crashing(
    cluster: Cluster, resonate: Resonate
) -> None:
    async with running_operator(cluster):
        await cluster.create_autoscaler(
            "nodeploy",
            {
                "scaleTargetRef": {"name": "absent"},
                "resonateUrl": resonate.url,
                "group": "g1",
            },
        )
        await cluster.create_autoscaler(
            "inverted",
            {
                "scaleTargetRef": {"name": "absent"},
                "resonateUrl": resonate.url,
                "group": "g2",
                "minReplicas": 5,
                "maxReplicas": 2,
            },
        )

        def ready(name: str) -> dict[str, Any]:
            conds = cluster.status(name).get("conditions") or []
            return next((c for c in conds if c["type"] == "Ready"), {})

        await until(lambda: ready("nodeploy").get("reason") == "TargetMissing", what="missing")
        assert "deployment ns1/absent not found" in ready("nodeploy")["message"]
        await until(lambda: ready("inverted").get("reason") == "InvalidSpec", what="invalid")
        assert "minReplicas (5) must not exceed maxReplicas (2)" in ready("inverted")["message"]
        # Creating the Deployment later is picked up without restarting anything.
        await cluster.create_deployment("absent", 1)
        await until(lambda: ready("nodeploy").get("reason") == "BacklogRead", what="recovered")


def test_registry__daemons__require_no_finalizer() -> None:
    registry = build_registry(peering=None)

    daemons = registry._spawning.get_all_handlers()

    assert [h.id for h in daemons] == ["build_registry.<locals>.autoscale"]
    assert not any(h.requires_finalizer for h in daemons)


def wa_meta(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.emulator.objects[WA, NS, name].get("metadata") or {})


async def test_deleted_autoscaler__no_finalizer__loop_stops_and_leaves_deployment_alone(
    cluster: Cluster, resonate: Resonate
) -> None:
    async with running_operator(cluster) as operator:
        await cluster.create_group("doomed", 1, resonate.url)
        await resonate.submit("doomed", [f"d-{i}" for i in range(4)])
        await until(lambda: cluster.replicas("doomed") == 2, what="scaled to the backlog")
        assert FINALIZER not in (wa_meta(cluster, "doomed").get("finalizers") or [])

        resp = await cluster.emulator.delete(
            f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/doomed"
        )
        assert resp.status == 200, await resp.text()
        # Gone at once (nothing holds it), and its loop stops: no metrics, no more scaling.
        assert cluster.emulator.objects[WA, NS, "doomed"].deleted
        await until(lambda: not operator.gone, what="the loop stopped")
        assert (
            sample(
                operator,
                "resonate_patterns_autoscaler_current_replicas",
                autoscaler="doomed",
                group="doomed",
            )
            == 0
        )
        await resonate.submit("doomed", [f"e-{i}" for i in range(6)])
        await asyncio.sleep(6 * POLL)
        assert cluster.replicas("doomed") == 2


async def test_old_finalizer__left_by_an_earlier_operator__removed(
    cluster: Cluster, resonate: Resonate
) -> None:
    await cluster.create_deployment("legacy", 1)
    await cluster.create_autoscaler(
        "legacy",
        {"scaleTargetRef": {"name": "legacy"}, "resonateUrl": resonate.url, "group": "legacy"},
    )
    await cluster.patch(
        f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/legacy",
        {"metadata": {"finalizers": [FINALIZER]}},
    )

    async with running_operator(cluster):
        await until(lambda: not wa_meta(cluster, "legacy").get("finalizers"), what="released")
        await until(lambda: "observedPending" in cluster.status("legacy"), what="still managed")


def _operator_in_thread(
    cluster: Cluster,
    context: OperatorContext,
    peering: str | None,
    priority: int,
    selector: dict[str, str] | None = None,
) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A second operator replica, in its own thread and event loop (as another pod would)."""
    stop, ready = threading.Event(), threading.Event()

    def main() -> None:
        asyncio.run(
            operator_main(
                cluster, context, peering, priority, stop=stop, ready=ready, selector=selector
            )
        )

    thread = threading.Thread(target=main, name=f"operator-{priority}", daemon=True)
    thread.start()
    return thread, stop, ready


async def test_two_replicas_with_peering__one_acts_then_the_other_takes_over(
    cluster: Cluster, resonate: Resonate
) -> None:
    cluster.emulator.resources["kopf.dev/v1/kopfpeerings"] = kmock.ResourceInfo(
        kind="KopfPeering", namespaced=True, verbs=ALL_VERBS
    )
    await cluster.create_group("shared", 1, resonate.url)
    standby_context = OperatorContext(
        api_config=cluster.config, metrics=OperatorMetrics(), poll_seconds=POLL
    )

    def observed(ctx: OperatorContext) -> float:
        return sample(
            ctx,
            "resonate_patterns_autoscaler_current_replicas",
            autoscaler="shared",
            group="shared",
        )

    async with running_operator(cluster, peering="rp", priority=100) as leader:
        # No peering object before: the operator created it at startup.
        peering = await cluster.emulator.get(f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/rp")
        assert peering.status == 200, await peering.text()
        await until(lambda: cluster.status("shared").get("observedPending") == 0, what="leader")
        thread, stop_standby, standby_ready = _operator_in_thread(
            cluster, standby_context, "rp", priority=10
        )
        await until(standby_ready.is_set, what="standby ready")
        await resonate.submit("shared", [f"s-{i}" for i in range(6)])
        await until(lambda: cluster.replicas("shared") == 3, what="leader scales")
        await asyncio.sleep(5 * POLL)
        assert observed(leader) == 3
        assert (
            standby_context.metrics.registry.get_sample_value(
                "resonate_patterns_autoscaler_current_replicas",
                {"namespace": NS, "autoscaler": "shared", "group": "shared"},
            )
            is None
        ), "the lower-priority replica stays paused while the leader runs"
    # The leader is gone: the standby takes over and follows the backlog.
    try:
        await resonate.submit("shared", [f"t-{i}" for i in range(4)])
        await until(lambda: cluster.replicas("shared") == 5, within=20, what="standby scales")
        await until(lambda: observed(standby_context) == 5, what="standby's metrics")
    finally:
        stop_standby.set()
        await asyncio.to_thread(thread.join, 15)


#: The label the chart sets on every object of a release, and passes to its operator as
#: RESONATE_PATTERNS_OPERATOR_SELECTOR.
INSTANCE = "app.kubernetes.io/instance"


async def test_two_releases_in_one_namespace__each_operator_acts_only_on_its_own(
    cluster: Cluster, resonate: Resonate
) -> None:
    """Two namespaced operators (releases a and b) in one namespace, each with its selector."""
    for release, group in (("a", "alpha"), ("b", "beta")):
        name = f"{release}-worker-{group}"
        await cluster.create_deployment(name, 1)
        spec = {"scaleTargetRef": {"name": name}, "resonateUrl": resonate.url, "group": group}
        await cluster.create_autoscaler(name, spec, labels={INSTANCE: release})
    # A WorkerAutoscaler of neither release (say, of a release without an operator).
    await cluster.create_deployment("stray", 1)
    stray = {"scaleTargetRef": {"name": "stray"}, "resonateUrl": resonate.url, "group": "gamma"}
    await cluster.create_autoscaler("stray", stray, labels={INSTANCE: "c"})
    await resonate.submit("alpha", [f"a-{i}" for i in range(6)])
    await resonate.submit("beta", [f"b-{i}" for i in range(10)])
    await resonate.submit("gamma", [f"c-{i}" for i in range(8)])
    b_context = OperatorContext(
        api_config=cluster.config, metrics=OperatorMetrics(), poll_seconds=POLL
    )

    def current(ctx: OperatorContext, autoscaler: str, group: str) -> float | None:
        return ctx.metrics.registry.get_sample_value(
            "resonate_patterns_autoscaler_current_replicas",
            {"namespace": NS, "autoscaler": autoscaler, "group": group},
        )

    async with running_operator(cluster, selector={INSTANCE: "a"}) as a_context:
        thread, stop_b, b_ready = _operator_in_thread(
            cluster, b_context, None, 0, selector={INSTANCE: "b"}
        )
        try:
            await until(b_ready.is_set, what="operator b ready")
            await until(lambda: cluster.replicas("a-worker-alpha") == 3, what="a scales alpha")
            await until(lambda: cluster.replicas("b-worker-beta") == 5, what="b scales beta")
            await until(lambda: current(a_context, "a-worker-alpha", "alpha") == 3, what="a")
            await until(lambda: current(b_context, "b-worker-beta", "beta") == 5, what="b")
            await asyncio.sleep(5 * POLL)
            # Each operator reads, scales and reports its own release's autoscaler only
            # (checked while they run: a stopping operator forgets its series).
            assert current(a_context, "b-worker-beta", "beta") is None
            assert current(b_context, "a-worker-alpha", "alpha") is None
            for ctx in (a_context, b_context):
                assert current(ctx, "stray", "gamma") is None
        finally:
            stop_b.set()
            await asyncio.to_thread(thread.join, 15)
    assert not thread.is_alive()
    assert cluster.replicas("stray") == 1
    assert cluster.status("stray") == {}
    assert "observedPending" in cluster.status("a-worker-alpha")
    assert "observedPending" in cluster.status("b-worker-beta")
    scaled = {e["involvedObject"]["name"] for e in cluster.events("ScaledUp")}
    assert scaled == {"a-worker-alpha", "b-worker-beta"}


@pytest.fixture
def search_server() -> Iterator[SearchServer]:
    server = SearchServer().start()
    yield server
    server.stop()


async def test_server_refuses_task_search__condition_one_warning_metric_held_then_recovers(
    cluster: Cluster, search_server: SearchServer
) -> None:
    search_server.task_search = False  # answered 400 "Unknown operation: task.search"
    search_server.promises = {f"r-{i}": "refused" for i in range(2)}
    async with running_operator(cluster) as operator:
        # minReplicas 0 and a small backlog: only the refusal stands between 3 and fewer.
        await cluster.create_group("refused", 3, search_server.url, minReplicas=0)
        await until(
            lambda: cluster.status("refused").get("consecutiveFailures", 0) >= 5,
            what="five refused polls",
        )
        readable = cluster.condition("refused", "BacklogReadable")
        assert (readable["status"], readable["reason"]) == ("False", "Unsupported")
        assert readable["message"] == (
            f"the server does not support task.search: task.search on {search_server.url} "
            "answered 400 'Unknown operation: task.search' "
            "(backlog-based scaling needs promise.search and task.search)"
        )
        ready = cluster.condition("refused", "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "Unsupported")
        assert cluster.replicas("refused") == 3, "held, never scaled toward zero"
        assert cluster.status("refused")["currentReplicas"] == 3
        await until(lambda: bool(cluster.events("BacklogUnsupported")), what="Warning event")
        [warning] = cluster.events("BacklogUnsupported")
        assert warning["type"] == "Warning"
        assert warning["involvedObject"]["name"] == "refused"
        assert "Unknown operation: task.search" in warning["message"]
        labels = {"autoscaler": "refused", "group": "refused"}
        refused = sample(
            operator,
            "resonate_patterns_autoscaler_backlog_capability_errors_total",
            reason="unsupported",
            **labels,
        )
        assert refused >= 5
        assert (
            sample(
                operator,
                "resonate_patterns_autoscaler_backlog_read_failures_total",
                **labels,
            )
            == refused
        ), "a refusal is also a failed read"
        for other in ("unauthorized", "forbidden"):
            assert (
                sample(
                    operator,
                    "resonate_patterns_autoscaler_backlog_capability_errors_total",
                    reason=other,
                    **labels,
                )
                == 0
            )
        assert len(search_server.requests("task.search")) >= 5

        # The server learns task.search: reads work, the condition flips, the policy scales.
        search_server.promises = {f"r-{i}": "refused" for i in range(8)}
        search_server.task_search = True
        await until(
            lambda: cluster.condition("refused", "BacklogReadable").get("status") == "True",
            what="readable again",
        )
        await until(lambda: cluster.replicas("refused") == 4, what="backlog 8 -> 4 replicas")
        await until(lambda: bool(cluster.events("BacklogReadable")), what="recovery event")
        [recovered] = cluster.events("BacklogReadable")
        assert recovered["type"] == "Normal"
        assert len(cluster.events("BacklogUnsupported")) == 1, "one Warning per change"
        assert cluster.status("refused")["consecutiveFailures"] == 0
        assert cluster.condition("refused", "Ready")["reason"] == "BacklogRead"
        assert (
            sample(
                operator,
                "resonate_patterns_autoscaler_backlog_capability_errors_total",
                reason="unsupported",
                **labels,
            )
            >= refused
        )


async def test_server_refuses_the_token__fallback_at_once_not_after_threshold(
    cluster: Cluster,
) -> None:
    server = SearchServer(token="the-right-token").start()
    server.promises = {f"t-{i}": "tokened" for i in range(10)}
    try:
        async with running_operator(cluster, token="a-wrong-token") as operator:
            await cluster.create_group(
                "tokened", 4, server.url, fallbackReplicas=2, failureThreshold=10
            )
            await until(lambda: cluster.replicas("tokened") == 2, what="fallback replicas")
            assert cluster.status("tokened").get("consecutiveFailures", 0) < 10, (
                "a refusal falls back at once; it does not wait for failureThreshold"
            )
            await until(
                lambda: (
                    cluster.condition("tokened", "BacklogReadable").get("reason") == "Unauthorized"
                ),
                what="condition",
            )
            message = cluster.condition("tokened", "BacklogReadable")["message"]
            assert message.startswith("the server refused the token: task.search on ")
            assert "answered 401 'Unauthorized'" in message
            await until(lambda: bool(cluster.events("BacklogUnauthorized")), what="Warning")
            await until(
                lambda: cluster.status("tokened").get("consecutiveFailures", 0) >= 4,
                what="more refused polls",
            )
            assert len(cluster.events("BacklogUnauthorized", kind="Warning")) == 1
            assert cluster.replicas("tokened") == 2
            assert (
                sample(
                    operator,
                    "resonate_patterns_autoscaler_backlog_capability_errors_total",
                    reason="unauthorized",
                    autoscaler="tokened",
                    group="tokened",
                )
                >= 4
            )
            seen = server.requests("task.search")
            assert {(s.head_auth, s.authorization) for s in seen} == {
                ("a-wrong-token", "Bearer a-wrong-token")
            }
    finally:
        server.stop()
