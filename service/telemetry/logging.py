"""Structured logging for every entry point.

One :func:`setup_logging` call per process. The project's own events go
through structlog's fast path (a level-filtering logger that renders JSON
with msgspec straight to stderr: workers log two lines per execution, so the
cost matters), and the standard library's records (the Resonate SDK,
aiohttp, kopf) are rendered by the same processors through
``ProcessorFormatter``, so every line on stderr has one shape: JSON by
default, a console rendering when stderr is a terminal and the format is
``auto`` (or ``console`` is asked for). Context such as group, promise id and
depth is bound with :mod:`structlog.contextvars` and appears on every line
logged inside that context.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

#: Third-party loggers that are chatty at INFO; kept at WARNING unless the
#: configured level is DEBUG.
_NOISY = ("aiohttp.access", "resonate", "resonate.validation", "kopf.objects")


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
    if console:
        renderer: Any = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_bytes)
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
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
    handler = logging.StreamHandler(sys.stderr)
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
