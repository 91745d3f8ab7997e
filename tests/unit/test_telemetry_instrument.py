"""The execution wrapper: one count per durable call, lookups by result, lost leases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from resonate.error import PlatformError, ServerError

from service.telemetry.instrument import Telemetry, instrumented, lease_gone
from service.telemetry.metrics import WorkerMetrics

MISSES = "resonate_patterns_promise_cache_misses_total"
HITS = "resonate_patterns_promise_cache_hits_total"


@dataclass
class _Info:
    id: str
    parent_id: str
    origin_id: str


class _Ctx:
    """The two things the wrapper reads from a Context."""

    def __init__(self, telemetry: Telemetry, promise_id: str, parent_id: str) -> None:
        self.info = _Info(promise_id, parent_id, promise_id.split(":")[0])
        self._telemetry = telemetry

    def get_dependency(self, _: type[Any]) -> Telemetry:
        return self._telemetry


def _value(telemetry: Telemetry, name: str, **labels: str) -> float:
    value = telemetry.metrics.registry.get_sample_value(name, {"group": "workers", **labels})
    return 0.0 if value is None else value


@instrumented("leaf")
async def leaf(ctx: Any, x: int) -> int:
    return x * 2


async def test_child__first_run_counts_one_miss__replays_count_nothing() -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    ctx = _Ctx(telemetry, "r:1", "r")
    telemetry.expect_first_run("r:1")
    assert await leaf(ctx, 2) == 4
    assert await leaf(ctx, 2) == 4  # the same call's body again (a replay or resume)
    assert _value(telemetry, MISSES, function="leaf", kind="child") == 1
    assert _value(telemetry, HITS, function="leaf", kind="child") == 0


async def test_child__no_first_run_noted__counts_nothing() -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    await leaf(_Ctx(telemetry, "r:1", "r"), 1)
    assert _value(telemetry, MISSES, function="leaf", kind="child") == 0


def test_lookup__counted_once_per_call_by_result() -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    telemetry.lookup_done("cached_fn", "r:1", hit=False)
    # The same call's body again (a suspend-redirect re-run under the same
    # lease) reads the cache again, and finds it filled: counted nothing.
    telemetry.lookup_done("cached_fn", "r:1", hit=True)
    telemetry.lookup_done("cached_fn", "r:2", hit=True)
    assert _value(telemetry, MISSES, function="cached_fn", kind="lookup") == 1
    assert _value(telemetry, HITS, function="cached_fn", kind="lookup") == 1


def _refused(code: int) -> PlatformError:
    return PlatformError([ServerError(code, "Version mismatch")])


def test_lease_gone__409_cause_only() -> None:
    assert lease_gone(_refused(409))
    assert not lease_gone(_refused(500))
    assert not lease_gone(RuntimeError("409"))


@instrumented("root_fn")
async def raising(ctx: Any, exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("promise_id", "parent_id", "code", "lost"),
    [("r", "r", 409, 1), ("r:2", "r:2", 409, 1), ("r:1", "r", 409, 0), ("r", "r", 500, 0)],
)
async def test_lease_lost__counted_once_where_it_reaches_the_task_root(
    promise_id: str, parent_id: str, code: int, lost: int
) -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    with pytest.raises(PlatformError):
        await raising(_Ctx(telemetry, promise_id, parent_id), _refused(code))
    assert _value(telemetry, "resonate_patterns_leases_lost_total") == lost
    assert (
        _value(
            telemetry, "resonate_patterns_executions_total", function="root_fn", outcome="retried"
        )
        == 1
    )


@instrumented("context_probe")
async def context_probe(ctx: Any, seen: list[dict[str, Any]], fail: bool) -> None:
    seen.append(structlog.contextvars.get_contextvars())
    if fail:
        msg = "boom"
        raise RuntimeError(msg)


@pytest.mark.parametrize("fail", [False, True])
async def test_execution_context__bound_while_the_body_runs__outer_context_restored(
    fail: bool,
) -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    seen: list[dict[str, Any]] = []
    with structlog.contextvars.bound_contextvars(pid="w-1"):
        if fail:
            with pytest.raises(RuntimeError, match="boom"):
                await context_probe(_Ctx(telemetry, "r:1.2", "r:1"), seen, fail)
        else:
            await context_probe(_Ctx(telemetry, "r:1.2", "r:1"), seen, fail)
        after = structlog.contextvars.get_contextvars()
    assert seen == [
        {
            "pid": "w-1",
            "promise_id": "r:1.2",
            "root_id": "r",
            "function": "context_probe",
            "depth": 2,
            "attempt": 1,
        }
    ]
    assert after == {"pid": "w-1"}


async def test_execution_lines__content_and_key_order_as_captured() -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    with structlog.testing.capture_logs() as logs:
        await leaf(_Ctx(telemetry, "r:1.1", "r:1"), 3)
        with pytest.raises(RuntimeError, match="boom"):
            await context_probe(_Ctx(telemetry, "r:1.2", "r:1"), [], True)
    context = {"promise_id": "r:1.1", "root_id": "r", "function": "leaf", "depth": 2}
    started, finished, _, failed = logs
    assert list(started.items()) == [
        ("logger", "service.execution"),
        ("args", "3"),
        *context.items(),
        ("attempt", 1),
        ("event", "execution_started"),
        ("log_level", "info"),
    ]
    duration = finished["duration_ms"]
    assert isinstance(duration, float)
    assert list(finished.items()) == [
        ("logger", "service.execution"),
        *context.items(),
        ("attempt", 1),
        ("outcome", "resolved"),
        ("duration_ms", duration),
        ("event", "execution_finished"),
        ("log_level", "info"),
    ]
    assert (failed["outcome"], failed["error"], failed["function"]) == (
        "rejected",
        "boom",
        "context_probe",
    )
    assert list(failed)[-3:] == ["error", "event", "log_level"]


async def test_execution_context__each_execution_binds_its_own__nested_restored() -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    seen: list[dict[str, Any]] = []
    for promise_id in ("a:1", "b:1.1"):  # the first bind may learn the variables
        await context_probe(_Ctx(telemetry, promise_id, promise_id), seen, False)
    assert [(s["promise_id"], s["root_id"], s["depth"]) for s in seen] == [
        ("a:1", "a", 1),
        ("b:1.1", "b", 2),
    ]

    @instrumented("outer")
    async def outer(ctx: Any) -> dict[str, Any]:
        await context_probe(_Ctx(telemetry, "c:1.1", "c:1"), seen, False)
        return structlog.contextvars.get_contextvars()

    after = await outer(_Ctx(telemetry, "c:1", "c"))
    assert seen[-1]["promise_id"] == "c:1.1"
    assert (after["promise_id"], after["function"], after["depth"]) == ("c:1", "outer", 1)
    assert structlog.contextvars.get_contextvars() == {}


async def test_execution_metrics__series_created_when_first_updated() -> None:
    telemetry = Telemetry(WorkerMetrics("workers"))
    registry = telemetry.metrics.registry
    in_flight = telemetry.metrics.in_flight_for("leaf")
    assert in_flight is telemetry.metrics.in_flight_for("leaf")
    labels = {"function": "leaf", "group": "workers"}
    assert registry.get_sample_value("resonate_patterns_executions_in_flight", labels) == 0
    assert registry.get_sample_value("resonate_patterns_execution_depth_count", labels) is None
    await leaf(_Ctx(telemetry, "r:1.1.1", "r:1.1"), 1)
    await leaf(_Ctx(telemetry, "r:1", "r"), 1)
    assert registry.get_sample_value("resonate_patterns_execution_depth_count", labels) == 2
    assert registry.get_sample_value("resonate_patterns_execution_depth_sum", labels) == 4
    assert registry.get_sample_value("resonate_patterns_execution_depth_max", labels) == 3
    assert (
        registry.get_sample_value("resonate_patterns_execution_duration_seconds_count", labels) == 2
    )
    assert (
        _value(telemetry, "resonate_patterns_executions_total", function="leaf", outcome="resolved")
        == 2
    )
    assert registry.get_sample_value("resonate_patterns_executions_in_flight", labels) == 0
