"""One supervised process of the local stack: spawn it, learn its port, stop it.

A child is asked for a port (0: any) and reports the one it bound in its
structured start line: the server's ``server_started`` event (``port``), a
worker's ``worker_started`` (``http_port``), one JSON object per line in its
log file. The supervisor reads that line from where this run's output begins
in the file, so a child that listens anywhere is never handed a port that
someone else can take first. Each child runs in its own session with its own
log file; on Linux it receives SIGTERM when the supervisor dies
(``PR_SET_PDEATHSIG``), so no orphan keeps a port or the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

#: Restart backoff for a process that keeps dying: 0.5 s doubling to 10 s.
RESTART_BACKOFF = (0.5, 10.0)
#: A process that ran this long before dying restarts without backoff.
STABLE_SECONDS = 10.0
#: How often the log file is re-read while a starting child has not reported its port.
_PORT_READ_SECONDS = 0.02


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def reported_port(line: bytes, event: str, key: str) -> int | None:
    """The port in ``line`` if it is the JSON log line of ``event`` carrying ``key``."""
    if not line.startswith(b"{") or event.encode() not in line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != event:
        return None
    port = record.get(key)
    return port if isinstance(port, int) and 0 < port < 65536 else None


@dataclass
class Child:
    """One supervised process and what it reported."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    #: The port this process listens on: the one asked for, then the one it reported.
    port: int
    #: The start event whose JSON log line reports the bound port, and its port field.
    started_event: str = ""
    port_key: str = "port"
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF[0]
    #: True while nobody should restart it (scaled away, or stopped on purpose).
    retired: bool = False
    #: Called after every spawn, so a supervisor awaits the new process's exit too.
    on_spawn: Callable[[], None] | None = field(default=None, repr=False)
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    #: Where this run's output begins in the (appended) log file.
    _log_offset: int = field(default=0, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - owned by the child
        self._log_offset = self._log_file.tell()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=self._log_file,
            stderr=self._log_file,
            start_new_session=True,
            # Runs between fork and exec: only a prctl call, no locks taken.
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        self.started_at = time.monotonic()
        if self.on_spawn is not None:
            self.on_spawn()

    async def learn_port(
        self, within: float = 20.0, stop: asyncio.Event | None = None
    ) -> int | None:
        """The port this run reported in its start line (also kept in :attr:`port`).

        ``None`` when the process exits, has not reported within ``within``
        seconds (its log file says why) or ``stop`` is set.
        """
        proc = self.proc
        if proc is None:
            return None
        deadline = time.monotonic() + within
        offset, partial = self._log_offset, b""
        while True:
            with contextlib.suppress(OSError), self.log_path.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
                offset += len(chunk)
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    port = reported_port(line, self.started_event, self.port_key)
                    if port is not None:
                        self.port = port
                        return port
            stopping = stop is not None and stop.is_set()
            if proc.returncode is not None or stopping or time.monotonic() > deadline:
                return None
            await asyncio.sleep(_PORT_READ_SECONDS)

    async def terminate(self, grace: float) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode
