"""Look at a call that is running or finished: its promise and the promises under it.

Two halves: :mod:`service.inspect.store` reads the facts from the store
through the SDK's public promises client (a description of one promise,
children counts, progress, the list of invocations), as JSON-ready dicts;
:mod:`service.inspect.render` turns those dicts into lines for people
(``get``, ``ls``, the progress line of ``call``, ``call --summary``). This
package exports the interface both offer to the CLI and the HTTP API.
"""

from __future__ import annotations

from service.inspect.render import (
    LS_HEADER,
    NOT_KEPT_HINT,
    call_text,
    describe_lines,
    format_ms,
    full_result_command,
    full_result_hint,
    invocation_line,
    progress_text,
    shorten,
    summarize,
    summary_lines,
)
from service.inspect.store import (
    Children,
    PromiseNotFoundError,
    describe,
    error_of,
    list_invocations,
    poll_interval,
    progress,
    reader,
    root_of,
)

__all__ = [
    "LS_HEADER",
    "NOT_KEPT_HINT",
    "Children",
    "PromiseNotFoundError",
    "call_text",
    "describe",
    "describe_lines",
    "error_of",
    "format_ms",
    "full_result_command",
    "full_result_hint",
    "invocation_line",
    "list_invocations",
    "poll_interval",
    "progress",
    "progress_text",
    "reader",
    "root_of",
    "shorten",
    "summarize",
    "summary_lines",
]
