"""The ``resonate-patterns`` command line (also ``python -m service``).

Subcommands: ``worker`` (join a group and run every pattern), ``call``
(invoke one pattern and print its result; on a terminal, a progress line
while it waits), ``get`` (one promise: state, value or error, timing,
children), ``ls`` (recent invocations), ``demo`` (the README's first
command), ``server`` (the local development Resonate server), ``up`` (the
local stack: server plus a worker group) and ``operator`` (the autoscaler).

Exit codes: 0 success; 1 the invocation was rejected or timed out; 2 bad
usage, bad input or bad configuration. Errors are one line on stderr, never
a traceback. Results go to stdout; logs go to stderr.

Modules: :mod:`~service.cli.parser` (the grammar), :mod:`~service.cli.main`
(settings and dispatch), :mod:`~service.cli.call`, :mod:`~service.cli.query`
and :mod:`~service.cli.servers` (one per command family),
:mod:`~service.cli.options` (flag-only options, validated like settings) and
:mod:`~service.cli.common` (output, exit codes, the event loop).
"""

from __future__ import annotations

from service.cli.common import EXIT_OK, EXIT_REJECTED, EXIT_USAGE
from service.cli.main import main
from service.cli.parser import build_parser

__all__ = ["EXIT_OK", "EXIT_REJECTED", "EXIT_USAGE", "build_parser", "main"]
