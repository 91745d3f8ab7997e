"""The SDK hooks: observer events and heartbeat starts, turned into first runs, counts and logs."""

from __future__ import annotations

import pytest
import structlog

from service.connector.observer import CountingHeartbeat, SdkObserver
from service.connector.sdk import BackgroundTaskFailed, Dropped, PromiseCreateReturned
from service.telemetry.instrument import Telemetry
from service.telemetry.metrics import WorkerMetrics


def _value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"group": "workers", **labels})
    return 0.0 if value is None else value


def _telemetry() -> Telemetry:
    return Telemetry(WorkerMetrics("workers"))


def test_observer__run_child_created_pending__its_next_body_run_is_the_first() -> None:
    telemetry = _telemetry()
    observe = SdkObserver(telemetry)
    observe(PromiseCreateReturned(id="r:1", invocation="run", state="pending"))
    assert telemetry.take_first_run("r:1")
    assert not telemetry.take_first_run("r:1"), "true once: a retry or replay is not a first run"


def test_observer__settled_or_rpc_creates__no_first_run() -> None:
    telemetry = _telemetry()
    observe = SdkObserver(telemetry)
    # A settled reply is a replay of a call already made; an rpc child's first
    # run is known from its task version instead (it may run elsewhere).
    observe(PromiseCreateReturned(id="r:1", invocation="run", state="resolved"))
    observe(PromiseCreateReturned(id="r:2", invocation="rpc", state="pending"))
    observe(PromiseCreateReturned(id="r:3", invocation="run", state="rejected"))
    assert not any(telemetry.take_first_run(i) for i in ("r:1", "r:2", "r:3"))


def test_observer__background_failure__logged_and_counted() -> None:
    telemetry = _telemetry()
    with structlog.testing.capture_logs() as logs:
        SdkObserver(telemetry)(BackgroundTaskFailed(cause="server error (code=409): gone"))
    assert logs == [
        {
            "event": "sdk_background_task_failed",
            "error": "server error (code=409): gone",
            "log_level": "warning",
            "logger": "service.sdk",
        }
    ]
    assert _value(telemetry.metrics, "resonate_patterns_sdk_background_failures_total") == 1


def test_observer__dropped__logged_with_promise_id_and_counted_by_reason() -> None:
    telemetry = _telemetry()
    observe = SdkObserver(telemetry)
    with structlog.testing.capture_logs() as logs:
        observe(Dropped(what="preload-record", id="r:7", cause="bad base64"))
        observe(Dropped(what="incoming-message", id="", cause="not JSON"))
        observe(Dropped(what="something-new", id="", cause="?"))
    assert [(e["reason"], e["promise_id"]) for e in logs] == [
        ("preload-record", "r:7"),
        ("incoming-message", None),
        ("something-new", None),
    ]
    dropped = "resonate_patterns_sdk_dropped_total"
    assert _value(telemetry.metrics, dropped, reason="preload-record") == 1
    assert _value(telemetry.metrics, dropped, reason="incoming-message") == 1
    assert _value(telemetry.metrics, dropped, reason="other") == 1, "unbounded values fold"
    assert _value(telemetry.metrics, dropped, reason="search-record") == 0


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def start(self, task_id: str, task_version: int) -> None:
        self.calls.append(("start", task_id, str(task_version)))

    def stop(self, task_id: str) -> None:
        self.calls.append(("stop", task_id))

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))


def test_heartbeat__child_task_first_acquired__first_run_and_calls_forwarded() -> None:
    telemetry = _telemetry()
    inner = _Recorder()
    beat = CountingHeartbeat(inner, telemetry)
    beat.start("root:2", 1)
    beat.stop("root:2")
    beat.shutdown()
    assert inner.calls == [("start", "root:2", "1"), ("stop", "root:2"), ("shutdown",)]
    assert telemetry.take_first_run("root:2")
    assert _value(telemetry.metrics, "resonate_patterns_tasks_redelivered_total") == 0


def test_heartbeat__root_task__not_a_child_call() -> None:
    telemetry = _telemetry()
    CountingHeartbeat(_Recorder(), telemetry).start("root", 1)
    assert not telemetry.take_first_run("root"), "an invocation is counted where it is invoked"


def test_heartbeat__version_above_1__resume_or_redelivery_counted_no_first_run() -> None:
    telemetry = _telemetry()
    beat = CountingHeartbeat(_Recorder(), telemetry)
    beat.start("root:2", 2)
    beat.start("root", 3)
    assert not telemetry.take_first_run("root:2")
    assert _value(telemetry.metrics, "resonate_patterns_tasks_redelivered_total") == 2


def test_first_runs__bounded__oldest_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.telemetry.instrument as instrument

    monkeypatch.setattr(instrument, "_TRACK_LIMIT", 3)
    telemetry = _telemetry()
    for i in range(5):
        telemetry.expect_first_run(f"r:{i}")
    assert [telemetry.take_first_run(f"r:{i}") for i in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
