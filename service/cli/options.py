"""Options that exist only as flags (``server --port``, ``up --workers``), declared as settings.

Each is a :func:`~service.config.spec` field with no variable, read by the
same loader as the environment (:func:`~service.config.load_fields`), so a
flag out of range fails with the same one-line message as a bad variable,
naming the flag: ``--workers='99' is invalid: expected an integer in [0, 64]``.
argparse still turns words into numbers (its own message for ``--port x``);
ranges are checked here. Defaults match the parser's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.config import Flag, float_in, int_in, load_fields, spec, specs_of

if TYPE_CHECKING:
    import argparse

    from _typeshed import DataclassInstance

#: Most worker processes ``up`` runs (also the autoscaler's ceiling).
MAX_LOCAL_WORKERS = 64
#: Longest interval a seconds flag of the local server or stack may name: one day.
_DAY = 86400.0


def _port(flag: str, default: str) -> int:
    return spec(None, default, "TCP port (0: any).", int_in(0, 65535), flag=flag)


@dataclass(frozen=True)
class ServerFlags:
    """``server``: the local Resonate server's numeric flags."""

    port: int = _port("--port", "8001")
    #: None: RESONATE_TASKS__RETRY_TIMEOUT, else the server's default.
    retry_ms: int | None = spec(
        None, None, "Execute re-send interval, ms.", int_in(1, 86_400_000), flag="--retry-ms"
    )
    keepalive_seconds: float = spec(
        None,
        "15",
        "Idle stream ping interval.",
        float_in(0, 3600, above=True),
        flag="--keepalive-seconds",
    )
    release_grace_seconds: float = spec(
        None,
        "1.5",
        "Reconnect grace before a closed stream's leases are released.",
        float_in(0, _DAY),
        flag="--release-grace-seconds",
    )


@dataclass(frozen=True)
class UpFlags:
    """``up``: the local stack's size and the local autoscaler's policy."""

    workers: int = spec(
        None, "3", "Worker processes.", int_in(0, MAX_LOCAL_WORKERS), flag="--workers"
    )
    port: int = _port("--port", "8001")
    min_workers: int = spec(
        None, "1", "Fewest workers.", int_in(0, MAX_LOCAL_WORKERS), flag="--min-workers"
    )
    max_workers: int = spec(
        None, "6", "Most workers.", int_in(1, MAX_LOCAL_WORKERS), flag="--max-workers"
    )
    target_tasks: int = spec(
        None, "10", "Backlog per worker.", int_in(1, 1_000_000), flag="--target-tasks"
    )
    scale_down_window: float = spec(
        None, "30", "Stabilization window.", float_in(0, _DAY), flag="--scale-down-window"
    )
    cooldown: float = spec(
        None, "60", "Idle time before zero.", float_in(0, _DAY), flag="--cooldown"
    )
    poll: float = spec(None, "2", "Poll interval.", float_in(0, 3600, above=True), flag="--poll")


def _raw(value: object) -> str:
    """A parsed flag value written back as the user would have typed it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def read_flags[D: DataclassInstance](cls: type[D], ns: argparse.Namespace) -> D:
    """``cls`` from the parsed flags of the same names, validated by their specs."""
    given: dict[str, str | Flag | None] = {}
    for name, s in specs_of(cls).items():
        value = getattr(ns, name)
        if value is not None and s.flag is not None:
            given[name] = Flag(s.flag, _raw(value))
    return load_fields(cls, {}, given)
