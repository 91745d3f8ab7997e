"""Lease heartbeats: one request per origin, every reply checked, failures counted."""

from __future__ import annotations

import json
from typing import Any

from service.connector.heartbeat import LeaseHeartbeat, by_origin
from service.connector.sdk import make_sender, origin_of
from service.telemetry.metrics import HEARTBEAT_FAILURES_NAME, WorkerMetrics

SAME_ORIGIN = "All tasks must belong to the same origin"


class OfficialRule:
    """A network that answers heartbeats as the official server does after PR #1119."""

    def __init__(self, *, down_for: frozenset[str] = frozenset()) -> None:
        self.requests: list[dict[str, Any]] = []
        self.down_for = down_for  # origins whose request fails to arrive

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        env = json.loads(req)
        self.requests.append(env)
        origins = {origin_of(t["id"]) for t in env["data"]["tasks"]}
        if origins & self.down_for:
            raise ConnectionResetError("connection reset by peer")
        head = {"corrId": env["head"]["corrId"], "version": env["head"]["version"]}
        if len(origins) > 1:
            return json.dumps(
                {"kind": env["kind"], "head": {**head, "status": 400}, "data": SAME_ORIGIN}
            )
        return json.dumps({"kind": env["kind"], "head": {**head, "status": 200}, "data": {}})


def _failures(metrics: WorkerMetrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        HEARTBEAT_FAILURES_NAME, {"group": "workers", "reason": reason}
    )


def test_by_origin__groups_task_ids_by_the_part_before_the_first_colon() -> None:
    active = {"factorial-8:1.1": 3, "factorial-8": 1, "enrich-x:4": 2, "solo": 7}
    assert by_origin(active) == {
        "enrich-x": [("enrich-x:4", 2)],
        "factorial-8": [("factorial-8", 1), ("factorial-8:1.1", 3)],
        "solo": [("solo", 7)],
    }


async def test_beat__tasks_of_three_origins__three_requests_each_of_one_origin_all_accepted() -> (
    None
):
    net = OfficialRule()
    metrics = WorkerMetrics("workers")
    hb = LeaseHeartbeat("w1", 30, make_sender(net, "tok"), metrics)
    hb.active = {"a:1": 1, "a:2": 2, "b": 1, "c:1.1": 5}
    assert await hb.beat() == 3
    sent = sorted(
        (r["data"]["pid"], tuple(t["id"] for t in r["data"]["tasks"])) for r in net.requests
    )
    assert sent == [("w1", ("a:1", "a:2")), ("w1", ("b",)), ("w1", ("c:1.1",))]
    assert all(r["kind"] == "task.heartbeat" for r in net.requests)
    assert all(r["head"]["auth"] == "tok" for r in net.requests)
    assert {t["version"] for r in net.requests for t in r["data"]["tasks"]} == {1, 2, 5}
    assert _failures(metrics, "rejected") == 0.0
    assert _failures(metrics, "unreachable") == 0.0


async def test_beat__one_origin_unreachable__others_still_extended_and_failure_counted() -> None:
    net = OfficialRule(down_for=frozenset({"b"}))
    metrics = WorkerMetrics("workers")
    hb = LeaseHeartbeat("w1", 30, make_sender(net, None), metrics)
    hb.active = {"a": 1, "b": 1}
    assert await hb.beat() == 1
    assert _failures(metrics, "unreachable") == 1.0
    assert all("auth" not in r["head"] for r in net.requests)


async def test_beat__server_refuses__counted_as_rejected() -> None:
    class Refusing(OfficialRule):
        async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
            env = json.loads(req)
            head = {"corrId": env["head"]["corrId"], "status": 401}
            return json.dumps({"kind": env["kind"], "head": head, "data": "Unauthorized"})

    metrics = WorkerMetrics("workers")
    hb = LeaseHeartbeat("w1", 30, make_sender(Refusing(), "bad"), metrics)
    hb.active = {"a": 1}
    assert await hb.beat() == 0
    assert _failures(metrics, "rejected") == 1.0
