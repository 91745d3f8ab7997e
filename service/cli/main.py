"""``main``: parse the command line, load the settings once, run one command.

Settings come from the environment through :func:`~service.config.load_settings`;
a flag that overrides a setting (``up --group``) is passed to the same loader
as a :class:`~service.config.Flag`, so it is validated exactly like its
variable. Every error a user can cause ends here as one line on stderr and
an exit code (see :mod:`service.cli`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

from service.cli import servers
from service.cli.call import check_call_options, probe_server, run_call
from service.cli.common import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, client_logging, err, out
from service.cli.parser import build_parser
from service.cli.query import run_get, run_ls
from service.config import Flag, load_settings, settings_table, specs
from service.errors import ConfigError, InputError, ResonatePatternsError, UsageError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from service.config import Settings


def _setting_flags(ns: argparse.Namespace) -> dict[str, str | Flag | None]:
    """The flags that override a setting, as raw values for the loader."""
    if ns.command == "up" and ns.group is not None:
        return {"group": Flag("--group", ns.group)}
    return {}


def _config(settings: Settings) -> int:
    out(settings_table())
    out("")
    secrets = {name for name, s in specs().items() if s.secret}
    for name, value in vars(settings).items():
        shown = ("(set)" if value is not None else None) if name in secrets else value
        out(f"{name} = {shown!r}")
    return EXIT_OK


def _demo(settings: Settings) -> int:
    from service.local.demo import run_demo

    client_logging(settings)
    if settings.resonate_url is not None:
        asyncio.run(probe_server(settings.resonate_url, settings.token))
    return asyncio.run(run_demo(settings, out))


def _dispatch(ns: argparse.Namespace, settings: Settings) -> int:
    command = ns.command
    if command in ("call", "get", "ls"):
        client_logging(settings)
    if command == "call":
        check_call_options(ns)
        if settings.resonate_url is not None and ns.api is None:
            asyncio.run(probe_server(settings.resonate_url, settings.token))
        return asyncio.run(run_call(settings, ns))
    if command == "get":
        return asyncio.run(run_get(settings, ns))
    if command == "ls":
        return asyncio.run(run_ls(settings, ns))
    if command == "demo":
        return _demo(settings)
    if command == "config":
        return _config(settings)
    if command == "worker":
        return servers.run_worker_command(settings)
    if command == "server":
        return servers.run_server_command(settings, ns)
    if command == "up":
        return servers.run_up_command(settings, ns)
    if command == "operator":
        return servers.run_operator_command(settings, ns)
    if command == "backlog-api":
        return servers.run_backlog_api_command(settings)
    raise UsageError(f"unknown command {command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from service.client import RejectedError, WaitTimeoutError

    try:
        ns = build_parser().parse_args(argv)
        settings = load_settings(os.environ, **_setting_flags(ns))
        return _dispatch(ns, settings)
    except (UsageError, ConfigError, InputError) as exc:
        err(str(exc))
        return EXIT_USAGE
    except (RejectedError, WaitTimeoutError) as exc:
        err(str(exc))
        return EXIT_REJECTED
    except ResonatePatternsError as exc:
        err(str(exc))
        return EXIT_REJECTED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout was closed early (`ls | head`): stop quietly, as `git log | head` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
