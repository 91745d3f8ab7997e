"""Structured logging for every entry point.

One :func:`setup_logging` call per process. The project's own events go
through structlog's fast path (a level-filtering logger that renders JSON
with msgspec into :class:`LineSink` on stderr), and the standard library's
records (the Resonate SDK, aiohttp, kopf) are rendered by the same processors
through ``ProcessorFormatter`` into the same sink, so every line on stderr
has one shape: JSON by default, a console rendering when stderr is a terminal
and the format is ``auto`` (or ``console`` is asked for).

Context is bound with :mod:`structlog.contextvars` only: process-wide fields
(worker pid, group) once at start-up, and the execution being run (promise
id, root id, function, depth, attempt) by the instrumentation for the length
of each execution, so they appear on every line logged inside it, the
standard library's included.

Why not structlog's stdlib integration (``structlog.stdlib.BoundLogger`` into
a ``logging.StreamHandler`` with ``ProcessorFormatter``)? A worker logs two
lines per execution, and ``bench/log_pipeline.py`` (median of 7 interleaved
runs of 40,000 lines, 2 shared cores) measured, in an event loop as the
worker logs, 6.1 µs per line with this sink against 26.8 µs for the best
stdlib configuration (4.4x; 4.7x in a second, busier run) and 11.4 µs (1.9x;
2.8x) for structlog's own ``BytesLogger``, which writes each line at once.
What earns the difference is :class:`LineSink`: while an event loop runs,
the lines of one loop iteration go out in one write at the end of that
iteration; with no loop running (threads, start-up, exit) each line is
written at once, and whatever is buffered is written at exit. (From threads,
where nothing is batched, the sink and ``BytesLogger`` were within noise of
each other, 0.8-1.2x across runs; the worker does not log from threads.) Run
the benchmark again before changing this.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
from typing import IO, Any

import msgspec
import structlog

#: Third-party loggers that are chatty at INFO; kept at WARNING unless the
#: configured level is DEBUG.
_NOISY = ("aiohttp.access", "resonate", "resonate.validation", "kopf.objects")


class LineSink:
    """Writes log lines to a binary stream, one write per event-loop iteration.

    Safe to use from several threads and loops: lines are appended under a
    lock and written in the order they were appended; a flush is scheduled on
    the loop of the thread that logs, and a thread with no running loop
    writes at once.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def write(self, line: bytes) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append(line)
            if loop is not None and self._scheduled_on is loop:
                return  # this loop's flush is already due
            if loop is not None:
                self._scheduled_on = loop
        if loop is None:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            self._scheduled_on = None
            if not self._pending:
                return
            data = b"".join(self._pending)
            self._pending = []
            try:
                self.stream.write(data)
                self.stream.flush()
            except Exception:
                pass


class _SinkLogger:
    """structlog's logger end: every level method appends one rendered line."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def msg(self, message: bytes | str) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        self._sink.write(data + b"\n")

    log = debug = info = warn = warning = msg
    err = error = critical = exception = fatal = failure = msg


class _SinkHandler(logging.Handler):
    """The standard library's records, formatted, into the same sink (keeps order)."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink.write(self.format(record).encode() + b"\n")
        except Exception:
            self.handleError(record)


_SINK: LineSink | None = None


def _sink() -> LineSink:
    global _SINK
    stream = sys.stderr.buffer
    if _SINK is None or _SINK.stream is not stream:
        if _SINK is not None:
            _SINK.flush()
        _SINK = LineSink(stream)
    return _SINK


def _console(fmt: str) -> bool:
    return fmt == "console" or (fmt == "auto" and sys.stderr.isatty())


def _json_bytes(event: Any, **_: Any) -> bytes:
    return msgspec.json.encode(event, enc_hook=repr)


def _json_text(event: Any, **_: Any) -> str:
    return msgspec.json.encode(event, enc_hook=repr).decode()


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and stdlib logging to write one event per line to stderr."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    console = _console(fmt)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    sink = _sink()
    if console:
        renderer: Any = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_bytes)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: _SinkLogger(sink),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer if console else structlog.processors.JSONRenderer(serializer=_json_text),
        ],
    )
    handler = _SinkHandler(sink)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    quiet = logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(quiet, numeric))


def get_logger(name: str) -> Any:
    """A structlog logger whose lines carry ``logger=name`` (not cached: tests capture)."""
    return structlog.get_logger().bind(logger=name)
