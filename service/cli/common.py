"""What every subcommand shares: exit codes, output, the event loop, usage errors.

Results go to stdout; logs and errors go to stderr, an error as one line
(``resonate-patterns: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

from service.errors import UsageError
from service.telemetry.logging import setup_logging

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from service.config import Settings

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def run_loop[T](main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (faster I/O), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return asyncio.run(main, loop_factory=uvloop.new_event_loop)


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(f"resonate-patterns: error: {text}\n")
    sys.stderr.flush()


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def client_logging(settings: Settings) -> None:
    """Logging for a one-shot command: quiet on stderr unless the user asked for a level."""
    level = settings.log_level if "RESONATE_PATTERNS_LOG_LEVEL" in os.environ else "warning"
    setup_logging(level, settings.log_format)


async def json_or_none(resp: Any) -> Any:
    """An HTTP response's JSON body, or None if it is not JSON."""
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None


def forgets(settings: Settings) -> bool:
    """Whether the store ends with this process (embedded mode, in-memory store)."""
    from service.devserver.store import MEMORY

    return settings.resonate_url is None and settings.embedded_store == MEMORY
