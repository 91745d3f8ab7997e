"""`resonate-patterns operator`'s entry point against kmock, through a real kubeconfig."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from service.config import load_settings
from service.operator.main import PRIORITIES, run_operator, watch_scope
from tests.conftest import wait_until_ok
from tests.operator.kmock_shim import GROUP, NS, PLURAL, VERSION, Emulator, declare_resources
from tests.operator.search_server import SearchServer
from tests.ports import free_port

pytestmark = pytest.mark.kmock(cls=Emulator)


def test_watch_scope__flags_then_env_then_own_namespace() -> None:
    env = load_settings({"RESONATE_PATTERNS_WATCH_NAMESPACE": "team-a"})
    assert watch_scope(env, None, False) == (False, ["team-a"])
    assert watch_scope(env, "team-b", False) == (False, ["team-b"])
    assert watch_scope(env, None, True) == (True, [])
    assert watch_scope(load_settings({"RESONATE_PATTERNS_WATCH_NAMESPACE": "*"}), None, False) == (
        True,
        [],
    )
    assert watch_scope(load_settings({}), None, False) == (False, ["default"])


def use_kubeconfig(kmock: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the operator's (and kopf's) kubeconfig at the emulator."""
    declare_resources(kmock)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [
            {"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}
        ],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    # kopf's login goes through kubernetes_asyncio, which read KUBECONFIG at import.
    monkeypatch.setattr(
        "kubernetes_asyncio.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(path)
    )


async def test_run_operator__kubeconfig_login_health_ready_and_metrics(
    kmock: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_kubeconfig(kmock, tmp_path, monkeypatch)
    port = free_port()
    settings = load_settings(
        {
            "RESONATE_PATTERNS_HTTP_HOST": "127.0.0.1",
            "RESONATE_PATTERNS_HTTP_PORT": str(port),
            "RESONATE_PATTERNS_OPERATOR_PEERING": "standalone",
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_operator(settings, namespace=NS, stop=stop))
    base = f"http://127.0.0.1:{port}"
    seen: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_ok(f"{base}/readyz")
            for _ in range(200):
                if any("workerautoscalers" in str(r.url) for r in kmock):
                    break
                await asyncio.sleep(0.05)
            async with session.get(f"{base}/healthz") as resp:
                seen["healthz"] = resp.status
            async with session.get(f"{base}/metrics") as resp:
                seen["metrics"] = await resp.text()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert seen["healthz"] == 200
    assert "process_cpu_seconds_total" in seen["metrics"]
    assert "resonate_patterns_autoscaler_desired_replicas" in seen["metrics"]
    # kopf logged in with the kubeconfig's token and listed the namespace's autoscalers.
    listed = [r for r in kmock if "workerautoscalers" in str(r.url)]
    assert listed
    assert all(r.headers.get("Authorization") == "Bearer test-token" for r in listed)


async def test_run_operator__resonate_token_from_settings__in_head_auth_and_bearer(
    kmock: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_kubeconfig(kmock, tmp_path, monkeypatch)
    server = SearchServer(token="jwt-from-settings").start()
    server.promises = {"p-1": "tokened"}
    settings = load_settings(
        {
            "RESONATE_TOKEN": "jwt-from-settings",
            "RESONATE_PATTERNS_HTTP_HOST": "127.0.0.1",
            "RESONATE_PATTERNS_HTTP_PORT": str(free_port()),
            "RESONATE_PATTERNS_OPERATOR_PEERING": "standalone",
        }
    )
    labels = {"app": "tokened"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tokened", "namespace": NS, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {}},
    }
    autoscaler = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkerAutoscaler",
        "metadata": {"name": "tokened", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"name": "tokened"},
            "resonateUrl": server.url,
            "group": "tokened",
            "pollingIntervalSeconds": 1,
        },
    }
    for path, body in (
        (f"/apis/apps/v1/namespaces/{NS}/deployments", deployment),
        (f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}", autoscaler),
    ):
        resp = await kmock.post(path, json=body)
        assert resp.status == 200, await resp.text()
    stop = asyncio.Event()
    task = asyncio.create_task(run_operator(settings, namespace=NS, stop=stop))
    try:
        for _ in range(300):
            if server.requests("promise.search"):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        server.stop()
    searches = server.requests("task.search") + server.requests("promise.search")
    assert server.requests("promise.search"), "the operator never read the backlog"
    assert {(s.head_auth, s.authorization) for s in searches} == {
        ("jwt-from-settings", "Bearer jwt-from-settings")
    }


@pytest.mark.parametrize("peering", ["standalone", "resonate-patterns"])
async def test_run_operator__peering__each_replica_draws_its_own_priority(
    kmock: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peering: str
) -> None:
    # kopf pauses every replica when two share a priority: with peering, each draws one.
    use_kubeconfig(kmock, tmp_path, monkeypatch)
    drawn: list[int] = []

    async def operator(**kwargs: Any) -> None:
        drawn.append(kwargs["priority"])

    monkeypatch.setattr("kopf.operator", operator)
    settings = load_settings(
        {
            "RESONATE_PATTERNS_HTTP_HOST": "127.0.0.1",
            "RESONATE_PATTERNS_HTTP_PORT": "0",
            "RESONATE_PATTERNS_OPERATOR_PEERING": peering,
        }
    )

    for _ in range(3):
        await run_operator(settings, namespace=NS, stop=asyncio.Event())

    if peering == "standalone":
        assert drawn == [0, 0, 0]
    else:
        assert len(set(drawn)) == 3
        assert all(1 <= p <= PRIORITIES for p in drawn)
