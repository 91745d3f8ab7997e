"""Structured logging for every entry point.

One :func:`setup_logging` call per process routes structlog *and* the
standard library (the Resonate SDK, aiohttp, kopf) through the same
processor chain, so every line on stderr has one shape: JSON by default, a
console rendering when stderr is a terminal and the format is ``auto`` (or
``console`` is asked for). Context such as group, promise id and depth is
bound with :mod:`structlog.contextvars` and appears on every line logged
inside that context.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

#: Third-party loggers that are chatty at INFO; kept at WARNING unless the
#: configured level is DEBUG.
_NOISY = ("aiohttp.access", "resonate", "resonate.validation", "kopf.objects")


def _renderer(fmt: str) -> Any:
    if fmt == "console" or (fmt == "auto" and sys.stderr.isatty()):
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.processors.JSONRenderer()


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and stdlib logging to write one event per line to stderr."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _renderer(fmt),
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


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger named ``name`` (not cached, so tests can capture)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
