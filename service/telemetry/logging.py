"""Structured logging for every entry point.

One :func:`setup_logging` call per process. The project's own events go
through structlog's fast path (a level-filtering logger whose events
:class:`LineSink` renders, JSON with msgspec, as it writes them to stderr),
and the standard library's records (the Resonate SDK, aiohttp, kopf) are
rendered by the same processors through ``ProcessorFormatter`` into the same
sink, so every line on stderr has one shape: JSON by default, a console
rendering when stderr is a terminal and the format is ``auto`` (or
``console`` is asked for).

Context is bound with :mod:`structlog.contextvars` only: process-wide fields
(worker pid, group) once at start-up, and the execution being run (promise
id, root id, function, depth, attempt) by the instrumentation for the length
of each execution, so they appear on every line logged inside it, the
standard library's included.

Why not structlog's stdlib integration (``structlog.stdlib.BoundLogger`` into
a ``logging.StreamHandler`` with ``ProcessorFormatter``)? A worker logs two
lines per execution, and ``bench/log_pipeline.py`` (3 runs, each the median
of 3 interleaved rounds of 20,000 lines, 2 shared cores, load 0.8-2.4)
measured, in an event loop as the worker logs, 3.6-4.6 µs per line with this
sink against 23-29 µs for the best stdlib configuration (6.3-6.7x) and
5.4-11 µs (1.5-2.4x) for structlog's own ``BytesLogger``, which renders and
writes each line at its call. (This sink when it rendered at the call and
assembled a logger per execution: 6.1-6.2 µs, two runs interleaved with
these.) What earns the difference is :class:`LineSink`: while an event
loop runs, the lines of a loop iteration go out in one write, an iteration
after it; with no loop running (threads, start-up, exit) each line is
written at once, and whatever is buffered is written at exit. (From
threads, where nothing is batched, the sink and ``BytesLogger`` were within
noise of each other, 0.6-1.1x across runs; the worker does not log from
threads.) Run the benchmark again before changing this.

What a worker waits for: an execution's lines are logged between a reply and
the next request (before the body's first request, before the SDK sends the
result), so a structlog event is not rendered at its call. The call keeps
the event (if its values cannot change; else it is rendered at once), a
snapshot of the context variables (``contextvars.copy_context``, constant
time) and the time; the sink's flush renders it with the same processors,
after the next request has gone out. (Context variables hold ids, names and
numbers; one bound to a mutable object would be rendered as it is at the
flush.) ``bench/execution_telemetry.py`` (3 runs, each the median of 3
interleaved rounds of 10,000 executions) measured the ``instrumented``
wrapper at 15.4-15.9 µs per execution between reply and request, against
27.8-28.4 µs with lines rendered at the call (and a logger assembled and the
metric series looked up per execution), and 25.1-25.9 µs against
30.7-31.2 µs of CPU in all.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import msgspec
import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict

#: Third-party loggers that are chatty at INFO; kept at WARNING unless the
#: configured level is DEBUG.
_NOISY = ("aiohttp.access", "resonate", "resonate.validation", "kopf.objects")


class LineSink:
    """Writes log lines to a binary stream, one write per event-loop iteration or so.

    Safe to use from several threads and loops: lines are appended under a
    lock and written in the order they were appended; a flush is scheduled on
    the loop of the thread that logs, and a thread with no running loop
    writes at once. A line is either rendered bytes or a :class:`_PendingLine`,
    rendered when the flush writes it (after the loop iteration that logged
    it, so off the path between a reply and the next request).
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self._pending: list[bytes | _PendingLine] = []
        # Reentrant: rendering runs under it, and a value's repr could log.
        self._lock = threading.RLock()
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        atexit.register(self.flush)

    def write(self, line: bytes | _PendingLine) -> None:
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
            loop.call_soon(self._flush_next, loop)

    def _flush_next(self, loop: asyncio.AbstractEventLoop) -> None:
        # One more iteration: what the logging iteration set going runs first.
        # After an execution's line that is the SDK's next request (a child's
        # ``task.fence`` is two iterations away), so the rendering and the
        # write overlap the wait for the server instead of delaying the request.
        loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            self._scheduled_on = None
            if not self._pending:
                return
            pending = self._pending
            self._pending = []
            # Rendered under the lock, so lines from other threads cannot
            # overtake the ones rendered here.
            data = b"".join(line if isinstance(line, bytes) else line.render() for line in pending)
            try:
                self.stream.write(data)
                self.stream.flush()
            except Exception:
                pass


#: Types whose values cannot change between the log call and the flush.
_IMMUTABLE = frozenset((str, int, float, bool, type(None)))


#: The last second :func:`_iso_utc` formatted, and its text up to the fraction.
_second_text: tuple[int, str] = (-1, "")


def _iso_utc(ns: int) -> str:
    """``ns`` (``time.time_ns()``) as ``TimeStamper(fmt="iso", utc=True)`` writes its time.

    Same rounding (down to the microsecond, as ``datetime.now`` does) and the
    same text (``datetime.isoformat``: no fraction when it is zero; ``Z``).
    The date and time of day are formatted once per second.
    """
    global _second_text
    seconds, micros = divmod(ns // 1000, 1_000_000)
    second, text = _second_text
    if second != seconds:
        text = datetime.fromtimestamp(seconds, UTC).isoformat().removesuffix("+00:00")
        _second_text = (seconds, text)
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"


class _PendingLine:
    """A structlog event captured at its log call, rendered when the sink writes it.

    The call keeps what could change before the flush: the event's own values
    (immutable, or the line is rendered at once), the context variables (an
    immutable snapshot of the context) and the time. The render then runs the
    same processors the line would have run at the call.
    """

    __slots__ = ("context", "event", "method", "ns", "renderer")

    def __init__(
        self,
        event: EventDict,
        method: str,
        context: contextvars.Context,
        ns: int,
        renderer: Any,
    ) -> None:
        self.event = event
        self.method = method
        self.context = context
        self.ns = ns
        self.renderer = renderer

    def render(self) -> bytes:
        event = self.event
        try:
            # merge_contextvars reads the context it runs in: the call's snapshot.
            self.context.run(structlog.contextvars.merge_contextvars, None, self.method, event)
            structlog.processors.add_log_level(None, self.method, event)
            event["timestamp"] = _iso_utc(self.ns)
            line = self.renderer(None, self.method, event)
            return (line if isinstance(line, bytes) else line.encode()) + b"\n"
        except Exception as exc:
            # Rendered inline, the error would have reached the log call; here
            # it must not cost the other lines of the batch.
            return _json_bytes({"event": "log_render_failed", "error": repr(exc)}) + b"\n"


def eager_processors(renderer: Any) -> list[Any]:
    """The processor chain a line runs through, all at once: what :class:`_RenderLater` defers."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]


class _RenderLater:
    """The last structlog processor: defer rendering to the sink's flush when it is safe.

    Stands for ``merge_contextvars``, ``add_log_level``, ``TimeStamper``,
    ``StackInfoRenderer``, ``format_exc_info`` and the renderer, in that
    order: an event with ``exc_info`` or ``stack_info`` (which must be read
    now) or with a value that could change before the flush runs them all at
    once, as before.
    """

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer
        self.inline = eager_processors(renderer)

    def __call__(self, logger: Any, method: str, event: EventDict) -> Any:
        if (
            "exc_info" not in event
            and "stack_info" not in event
            and _IMMUTABLE.issuperset(map(type, event.values()))
        ):
            pending = _PendingLine(
                event, method, contextvars.copy_context(), time.time_ns(), self.renderer
            )
            return (pending,), {}
        result: Any = event
        for processor in self.inline:
            result = processor(logger, method, result)
        return result


class _SinkLogger:
    """structlog's logger end: every level method appends one line, rendered or pending."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def msg(self, message: bytes | str | _PendingLine) -> None:
        if isinstance(message, _PendingLine):
            self._sink.write(message)
        else:
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
        # The shared processors, the exception and stack renderers and the
        # renderer, run at the flush for most events (see _RenderLater).
        processors=[_RenderLater(renderer)],
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


#: Loggers assembled by :func:`get_logger`, with the configuration they were assembled from.
_LOGGERS: dict[str, tuple[tuple[Any, ...], Any]] = {}


def get_logger(name: str) -> Any:
    """A structlog logger whose lines carry ``logger=name``.

    Assembled once per name and configuration: a logger holds the configured
    processor list itself, which structlog's ``capture_logs`` edits in place,
    so a kept logger is captured too; a new ``structlog.configure`` (another
    list, level or sink) assembles it again.
    """
    config = structlog.get_config()
    key = (
        config["processors"],
        config["wrapper_class"],
        config["logger_factory"],
        config["context_class"],
    )
    cached = _LOGGERS.get(name)
    if cached is not None:
        old = cached[0]
        if old[0] is key[0] and old[1] is key[1] and old[2] is key[2] and old[3] is key[3]:
            return cached[1]
    logger = structlog.get_logger().bind(logger=name)
    _LOGGERS[name] = (key, logger)
    return logger
