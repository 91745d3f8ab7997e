"""Log lines: batched writes that keep order, and execution context on every line."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading

from service.telemetry.logging import LineSink
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


async def test_sink_in_a_loop_writes_each_iteration_once_in_order() -> None:
    stream = CountingStream()
    sink = LineSink(stream)
    for line in (b"a\n", b"b\n", b"c\n"):
        sink.write(line)
    assert stream.getvalue() == b""
    await asyncio.sleep(0)
    assert stream.getvalue() == b"a\nb\nc\n"
    assert stream.writes == 1
    sink.write(b"d\n")
    await asyncio.sleep(0)
    assert stream.getvalue().endswith(b"c\nd\n")


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
