"""Log lines: batched writes that keep order, rendered at the flush as at the call, with context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from service.telemetry.logging import (
    LineSink,
    _iso_utc,
    _json_bytes,
    _PendingLine,
    _RenderLater,
    eager_processors,
    get_logger,
    setup_logging,
)
from tests.conftest import ROOT


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def test_sink_without_a_running_loop_writes_at_once() -> None:
    stream = CountingStream()
    sink = LineSink(stream)
    sink.write(b"one\n")
    assert stream.getvalue() == b"one\n"


async def _iterations(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_sink_in_a_loop_writes_each_iteration_once_in_order() -> None:
    stream = CountingStream()
    sink = LineSink(stream)
    for line in (b"a\n", b"b\n", b"c\n"):
        sink.write(line)
    assert stream.getvalue() == b""
    # The flush waits one more iteration than the one after the logging one,
    # so what the logging iteration scheduled (the next request) goes first.
    await _iterations(1)
    assert stream.getvalue() == b""
    sink.write(b"d\n")  # logged before the flush: joins the same write
    await _iterations(1)
    assert stream.getvalue() == b"a\nb\nc\nd\n"
    assert stream.writes == 1
    sink.write(b"e\n")
    await _iterations(2)
    assert stream.getvalue().endswith(b"d\ne\n")
    assert stream.writes == 2


SCRIPT = """
import asyncio, logging, sys
import structlog
from service.telemetry.logging import get_logger, setup_logging

setup_logging("info", "json")

async def main():
    log = get_logger("test")
    tokens = structlog.contextvars.bind_contextvars(
        promise_id="root:1", function="enrich_one", depth=1
    )
    log.info("inside_structlog")
    logging.getLogger("resonate.sdk").warning("inside_stdlib")
    structlog.contextvars.reset_contextvars(**tokens)
    logging.getLogger("resonate.sdk").warning("outside_stdlib")
    log.info("last_line")
    sys.exit(0)  # leaves the loop with the lines still buffered

asyncio.run(main())
"""


def test_context_on_every_line_order_kept_and_flushed_at_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["event"] for e in events] == [
        "inside_structlog",
        "inside_stdlib",
        "outside_stdlib",
        "last_line",
    ]
    for inside in events[:2]:
        assert inside["promise_id"] == "root:1"
        assert inside["function"] == "enrich_one"
        assert inside["depth"] == 1
    assert all("promise_id" not in e for e in events[2:])
    assert events[1]["logger"] == "resonate.sdk"
    assert events[1]["level"] == "warning"


def test_sink_from_many_threads__every_line_exactly_once() -> None:
    stream = CountingStream()
    sink = LineSink(stream)

    def emit(thread: int) -> None:
        for i in range(5_000):
            sink.write(b"%d-%d\n" % (thread, i))

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20_000
    assert len(set(lines)) == 20_000
    for t in range(4):  # each thread's lines stay in its order
        mine = [int(line.split(b"-")[1]) for line in lines if line.startswith(b"%d-" % t)]
        assert mine == list(range(5_000))


def test_sink_when_a_loop_stops_before_its_flush__later_lines_still_go_out() -> None:
    stream = CountingStream()
    sink = LineSink(stream)
    loop = asyncio.new_event_loop()

    async def log_and_stop() -> None:
        sink.write(b"in-loop\n")
        loop.stop()

    task = loop.create_task(log_and_stop())
    loop.run_forever()  # stops before the scheduled flush runs
    assert task.done()
    sink.write(b"after, no loop\n")
    assert stream.getvalue() == b"in-loop\nafter, no loop\n"

    async def again() -> None:
        sink.write(b"another loop\n")
        await asyncio.sleep(0)

    asyncio.run(again())
    assert stream.getvalue().endswith(b"another loop\n")
    loop.close()


# The processors every structlog line ran at its call before deferral.
_OLD_CHAIN = eager_processors(structlog.processors.JSONRenderer(serializer=_json_bytes))


def _run_chain(event: dict[str, Any]) -> bytes:
    result: Any = event
    for processor in _OLD_CHAIN:
        result = processor(None, "warning", result)
    assert isinstance(result, bytes)
    return result + b"\n"


def _without_timestamp(line: bytes) -> list[tuple[str, Any]]:
    items = list(json.loads(line).items())
    assert items[-1][0] == "timestamp"
    return items[:-1]


def test_deferred_line__same_keys_order_and_values_as_rendered_at_the_call() -> None:
    defer = _RenderLater(structlog.processors.JSONRenderer(serializer=_json_bytes))
    event = {"logger": "t", "args": "5", "promise_id": "r:1.1", "depth": 2, "event": "e"}
    with structlog.contextvars.bound_contextvars(worker_pid="w-1", group="g", depth=9):
        expected = _run_chain(dict(event))
        (pending,), kwargs = defer(None, "warning", dict(event))
    assert kwargs == {}
    assert isinstance(pending, _PendingLine)
    # Rendered after the context is gone: it is the call's context that counts.
    line = pending.render()
    assert line.endswith(b"}\n")
    assert _without_timestamp(line) == _without_timestamp(expected)
    assert json.loads(line)["depth"] == 2  # the explicit value wins, as before


def test_deferred_line__timestamp_is_the_time_of_the_call() -> None:
    defer = _RenderLater(structlog.processors.JSONRenderer(serializer=_json_bytes))
    before = datetime.now(UTC)
    (pending,), _ = defer(None, "info", {"event": "e"})
    after = datetime.now(UTC)
    time.sleep(0.02)
    stamp = json.loads(pending.render())["timestamp"]
    assert before <= datetime.fromisoformat(stamp) <= after


def test_iso_utc__text_of_structlogs_iso_utc_timestamper() -> None:
    assert _iso_utc(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert _iso_utc(1_700_000_000_000_000_999) == "2023-11-14T22:13:20Z"  # isoformat's
    stamped = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})
    shape = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
    assert shape.fullmatch(stamped["timestamp"])
    assert shape.fullmatch(_iso_utc(time.time_ns()))
    # TimeStamper's own formula (datetime.now(tz=UTC).isoformat()) on the same instants,
    # within one second and across seconds (the per-second text is kept).
    rng = random.Random(12)
    base = 1_764_000_000 * 10**9
    instants = [base + rng.randrange(0, 10**9) for _ in range(200)]
    instants += [rng.randrange(0, 4 * 10**18) for _ in range(200)] + [base, base + 999]
    for ns in instants:
        seconds, micros = divmod(ns // 1000, 1_000_000)
        at = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
        assert _iso_utc(ns) == at.isoformat().replace("+00:00", "Z"), ns


@pytest.mark.parametrize(
    "extra",
    [{"items": ["a"]}, {"exc_info": True}, {"stack_info": True}, {"obj": object()}],
    ids=["mutable", "exc_info", "stack_info", "object"],
)
def test_event_that_must_be_read_now__rendered_at_the_call(extra: dict[str, Any]) -> None:
    defer = _RenderLater(structlog.processors.JSONRenderer(serializer=_json_bytes))
    try:
        msg = "boom"
        raise ValueError(msg)
    except ValueError:
        line = defer(None, "error", {"event": "e", **extra})
    assert isinstance(line, bytes)
    assert json.loads(line)["event"] == "e"


async def test_unrenderable_deferred_line__reported_and_the_batch_still_written() -> None:
    stream = CountingStream()
    sink = LineSink(stream)
    defer = _RenderLater(structlog.processors.JSONRenderer(serializer=_json_bytes))
    (bad,), _ = defer(None, "info", {"event": "e", "text": "\udc80"})  # a lone surrogate
    (good,), _ = defer(None, "info", {"event": "after"})
    sink.write(bad)
    sink.write(good)
    await _iterations(2)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "log_render_failed"
    assert second["event"] == "after"
    assert stream.writes == 1


async def test_context_value_whose_repr_logs__rendered_at_the_flush_without_deadlock() -> None:
    stream = CountingStream()
    sink = LineSink(stream)
    defer = _RenderLater(structlog.processors.JSONRenderer(serializer=_json_bytes))

    class Loud:
        def __repr__(self) -> str:
            sink.write(b'{"event":"from_repr"}\n')  # logs while the flush renders
            return "loud"

    with structlog.contextvars.bound_contextvars(thing=Loud()):
        (pending,), _ = defer(None, "info", {"event": "e"})
    sink.write(pending)
    await _iterations(4)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["e", "from_repr"]
    assert lines[0]["thing"] == "loud"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog's and the root logger's configuration back after the test."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_get_logger__kept_per_configuration__captured_and_reconfigured() -> None:
    setup_logging("info", "json")
    log = get_logger("service.test")
    assert get_logger("service.test") is log
    with structlog.testing.capture_logs() as logs:
        get_logger("service.test").info("captured", n=1)
    assert logs == [{"logger": "service.test", "n": 1, "event": "captured", "log_level": "info"}]
    setup_logging("warning", "json")
    quiet = get_logger("service.test")
    assert quiet is not log
    with structlog.testing.capture_logs() as logs:
        quiet.info("filtered")
        quiet.warning("kept")
    assert [e["event"] for e in logs] == ["kept"]
