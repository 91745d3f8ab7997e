"""``get`` (one promise: state, value or error, timing, children) and ``ls`` (recent invocations).

Both read the server at RESONATE_URL, or the embedded store
(RESONATE_PATTERNS_EMBEDDED_STORE); an unknown id is one line, exit 1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from service.cli.common import EXIT_OK, forgets, out
from service.cli.parser import LS_MAX
from service.errors import UsageError
from service.patterns.registry import pattern

if TYPE_CHECKING:
    import argparse

    from service.config import Settings


def _where(settings: Settings) -> str:
    """Where get/ls read, for a not-found message."""
    if settings.resonate_url is not None:
        return f"on the Resonate server at {settings.resonate_url}"
    if forgets(settings):
        return (
            "(embedded mode with an in-memory store keeps nothing between commands: "
            "set RESONATE_URL or RESONATE_PATTERNS_EMBEDDED_STORE)"
        )
    return f"in the embedded store {settings.embedded_store}"


async def run_get(settings: Settings, ns: argparse.Namespace) -> int:
    from service.inspect import PromiseNotFoundError, describe, describe_lines, reader

    if not ns.promise_id:
        raise UsageError("ID must not be empty")
    async with reader(settings) as runtime:
        found = await describe(runtime, ns.promise_id)
    if found is None:
        raise PromiseNotFoundError(ns.promise_id, _where(settings))
    if ns.json:
        out(json.dumps(found))
    else:
        for line in describe_lines(found):
            out(line)
    return EXIT_OK


async def run_ls(settings: Settings, ns: argparse.Namespace) -> int:
    from service.inspect import LS_HEADER, invocation_line, list_invocations, reader

    if not 1 <= ns.limit <= LS_MAX:
        raise UsageError(f"--limit must be between 1 and {LS_MAX}")
    if ns.pattern is not None:
        pattern(ns.pattern)  # an unknown name is a usage error, not an empty list
    async with reader(settings) as runtime:
        found = await list_invocations(
            runtime, pending_only=ns.pending, pattern=ns.pattern, limit=ns.limit
        )
    if ns.json:
        out(json.dumps(found))
    elif not found:
        out(
            "no invocations"
            + (" pending" if ns.pending else "")
            + (f" {_where(settings)}" if forgets(settings) else "")
        )
    else:
        out(LS_HEADER)
        for entry in found:
            out(invocation_line(entry))
    return EXIT_OK
