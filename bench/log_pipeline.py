"""Per-line cost of the log pipeline: the project's sink against structlog's stdlib integration.

A worker logs two lines per execution (``execution_started`` and
``execution_finished``, with the execution's context bound through
:mod:`structlog.contextvars`), so the cost of one line is a share of the cost
of one execution. This measures that share for:

* ``sink``: the project's pipeline (:func:`service.telemetry.logging.setup_logging`):
  structlog's level-filtering logger hands each event to
  :class:`~service.telemetry.logging.LineSink`, which renders the lines
  (JSON with msgspec) logged in a loop iteration and writes them in one write,
  an iteration later;
* ``bytes``: structlog's own fast path without the project's sink: the same
  processors, run at the call, into ``structlog.BytesLogger`` on stderr (one
  locked write and flush per line), the standard library's records through
  the same ``ProcessorFormatter`` on a ``logging.StreamHandler``;
* ``stdlib``: structlog's documented stdlib integration: ``structlog.stdlib.BoundLogger``
  on stdlib loggers, ``ProcessorFormatter.wrap_for_formatter``, and a
  ``logging.StreamHandler`` on stderr whose ``ProcessorFormatter`` renders the
  same JSON (msgspec);
* ``stdlib-filtering``: the same, with structlog's faster level-filtering
  wrapper (``make_filtering_bound_logger``) in front of the stdlib loggers,
  as structlog's performance notes advise;
* ``none``: the same workload with logging disabled, subtracted from the others
  so the table shows what a line costs, not what the workload around it costs.

Each run is a fresh process (logging is process-wide state) whose stderr is a
pipe that this process drains, as a container runtime drains a pod's; runs of
the variants are interleaved round by round and the median is reported.
Scenarios: ``loop`` (executions as asyncio tasks on uvloop when installed, like
the worker: bind the context, log, yield, log) and ``threads`` (the same from
several threads with no event loop; the worker does not log from threads today,
shown for completeness). Before measuring, every variant's lines are parsed and
checked to carry the same keys.

Prints a table and draws it (``bench/out/log_pipeline.png``).

Usage: python bench/log_pipeline.py [--lines 40000] [--rounds 7] [--threads 4] [--out bench/out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("none", "sink", "bytes", "stdlib", "stdlib-filtering")
#: Executions in flight at once in the loop scenario (a fan-out's children).
BATCH = 100


def _json_text(event: Any, **_: Any) -> str:
    return msgspec.json.encode(event, enc_hook=repr).decode()


def _stdlib(filtering: bool) -> None:
    """structlog's stdlib integration with the project's processors and JSON shape."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *([] if filtering else [structlog.stdlib.filter_by_level]),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=(
            structlog.make_filtering_bound_logger(logging.INFO)
            if filtering
            else structlog.stdlib.BoundLogger
        ),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_text),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _bytes() -> None:
    """structlog's fast path into its own ``BytesLogger``; stdlib records via a handler."""
    from service.telemetry.logging import _json_bytes, eager_processors, setup_logging

    setup_logging("info", "json")  # the project's level filter and stdlib handler ...
    handler = logging.StreamHandler(sys.stderr)  # ... with the sink's handler swapped out
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().handlers[:] = [handler]
    structlog.configure(
        # The project's processors, all run at the call (BytesLogger writes bytes at once).
        processors=eager_processors(structlog.processors.JSONRenderer(serializer=_json_bytes)),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
    )


def configure(variant: str) -> Any:
    """Set ``variant`` up; the ``get_logger(name)`` the instrumentation would call."""
    if variant == "sink":
        from service.telemetry.logging import get_logger, setup_logging

        setup_logging("info", "json")
        return get_logger
    if variant == "bytes":
        from service.telemetry.logging import get_logger

        _bytes()
        return get_logger
    if variant in ("stdlib", "stdlib-filtering"):
        _stdlib(filtering=variant == "stdlib-filtering")
        return structlog.stdlib.get_logger
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger


def _execute(get_logger: Any, i: int) -> tuple[Any, Any]:
    """The first of one execution's two log calls, as ``instrumented`` makes them."""
    log = get_logger("service.execution")
    tokens = structlog.contextvars.bind_contextvars(
        promise_id=f"bench-{i // 1000}:{i % 1000}",
        root_id=f"bench-{i // 1000}",
        function="enrich_one",
        depth=1,
        attempt=1,
    )
    log.info("execution_started", args="['id-17']")
    return log, tokens


def _finish(log: Any, tokens: Any) -> None:
    log.info("execution_finished", outcome="resolved", duration_ms=0.042)
    structlog.contextvars.reset_contextvars(**tokens)


async def _loop_workload(get_logger: Any, executions: int) -> None:
    async def one(i: int) -> None:
        log, tokens = _execute(get_logger, i)
        await asyncio.sleep(0)  # the body awaits: other executions log in between
        _finish(log, tokens)

    for start in range(0, executions, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(start + BATCH, executions))))
    for _ in range(2):  # let a pending flush (two iterations on) run inside the measured time
        await asyncio.sleep(0)


def _thread_workload(get_logger: Any, executions: int, threads: int) -> None:
    def work(first: int, count: int) -> None:
        for i in range(first, first + count):
            _finish(*_execute(get_logger, i))

    share = executions // threads
    workers = [threading.Thread(target=work, args=(t * share, share)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def child(variant: str, scenario: str, lines: int, threads: int) -> None:
    """Measure one run in this process; print its seconds on stdout."""
    get_logger = configure(variant)
    executions = lines // 2
    warmup = min(1000, executions)
    if scenario == "loop":
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(_loop_workload(get_logger, warmup))
            started = time.perf_counter()
            runner.run(_loop_workload(get_logger, executions))
            seconds = time.perf_counter() - started
    else:
        _thread_workload(get_logger, warmup, threads)
        started = time.perf_counter()
        _thread_workload(get_logger, executions, threads)
        seconds = time.perf_counter() - started
    sys.stderr.flush()
    sys.stdout.write(json.dumps({"seconds": seconds}) + "\n")


def _run(variant: str, scenario: str, lines: int, threads: int) -> tuple[float, bytes]:
    """One child run: (seconds, its stderr). stderr is drained as it is written."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", variant, scenario, str(lines), str(threads)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}/{scenario} failed:\n{err.decode()[-2000:]}")
    return float(json.loads(out)["seconds"]), err


def check_shapes(threads: int) -> dict[str, list[str]]:
    """Every variant writes the same keys on every line (fails loudly if not)."""
    shapes: dict[str, dict[str, list[str]]] = {}
    for variant in VARIANTS[1:]:
        _, err = _run(variant, "loop", 4, threads)
        lines = [json.loads(line) for line in err.splitlines()]
        # warm-up (4 lines) + run (4 lines): two executions each time
        events = sorted(e["event"] for e in lines)
        assert events == ["execution_finished"] * 4 + ["execution_started"] * 4, lines
        shapes[variant] = {e["event"]: sorted(e) for e in lines}
    first, *others = shapes.values()
    for variant, shape in zip(VARIANTS[2:], others, strict=True):
        assert shape == first, f"{variant} writes {shape}, sink writes {first}"
    return first


def plot(per_line: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(per_line)
    variants = VARIANTS[1:]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, variant in enumerate(variants):
        values = [per_line[s][variant] for s in scenarios]
        ax.bar([x + i * width for x in range(len(scenarios))], values, width, label=variant)
    ax.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(scenarios))])
    ax.set_xticklabels(scenarios)
    ax.set_ylabel("µs per log line (lower is better)")
    ax.set_title("resonate-patterns log pipeline (2 cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=40_000, help="lines per measured run")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved runs per variant")
    parser.add_argument("--threads", type=int, default=4, help="threads in the threads scenario")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "SCENARIO", "LINES", "THREADS"))
    args = parser.parse_args()
    if args.child:
        variant, scenario, lines, threads = args.child
        child(variant, scenario, int(lines), int(threads))
        return 0

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    for event, keys in check_shapes(args.threads).items():
        say(f"{event}: {', '.join(keys)}")
    say("")
    say(
        f"{'scenario':<8} {'variant':<17} {'µs/line':>8} {'vs sink':>8} {'lines/s':>10}"
        f"  runs, ms (min-max)"
    )
    per_line: dict[str, dict[str, float]] = {}
    for scenario in ("loop", "threads"):
        runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:  # rotated so no variant always runs first
                seconds, err = _run(variant, scenario, args.lines, args.threads)
                expected = 0 if variant == "none" else args.lines + 2 * min(1000, args.lines // 2)
                assert err.count(b"\n") == expected, (variant, err.count(b"\n"), expected)
                runs[variant].append(seconds)
        base = statistics.median(runs["none"])
        sink = (statistics.median(runs["sink"]) - base) / args.lines
        for variant in VARIANTS:
            median = statistics.median(runs[variant])
            cost = (median - base) / args.lines
            per_line.setdefault(scenario, {})[variant] = cost * 1e6
            ratio = f"{cost / sink:>7.2f}x" if variant != "none" else f"{'-':>8}"
            spread = f"{min(runs[variant]) * 1e3:.0f}-{max(runs[variant]) * 1e3:.0f}"
            say(
                f"{scenario:<8} {variant:<17} {cost * 1e6:>8.2f} {ratio} "
                f"{args.lines / median:>10.0f}  {spread}"
            )
    say("")
    say("µs/line: median run minus the median `none` run, per line; lines/s: whole workload.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(per_line, out / "log_pipeline.png")
    say(f"wrote {out / 'log_pipeline.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
