"""The local stack's supervisor: one server and a worker group, like a tiny Deployment.

:class:`Stack` starts the local Resonate server and N worker processes (each
a :class:`~service.local.children.Child` with its own log file), restarts any
process that dies (with backoff, as a ReplicaSet would), changes the number
of workers while running (:meth:`Stack.scale`, which ``up --autoscale``
drives) and stops the workers first (they drain) and the server last.

Ports: a port the user named is checked up front (:func:`claim_stack`, one
line, exit 2); otherwise every child binds port 0 and reports what it got,
and the supervisor reads it (:meth:`Child.learn_port`). A restarted server
keeps its port, because the workers are pointed at it; a restarted worker
asked for any port may come back on another one (``stack.json`` follows).
The supervisor sleeps until a process exits, the group changes or it is
told to stop: nothing is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from service.errors import StackRefusedError, StackStartError
from service.local.children import RESTART_BACKOFF, STABLE_SECONDS, Child
from service.ports import port_taken
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TextIO

    from service.config import Settings

#: Log levels at which the children's start lines (and so their ports) are written.
_REPORTING_LEVELS = ("debug", "info")


def _try_lock(path: Path) -> TextIO | None:
    """An exclusive ``flock`` on ``path`` (the open file holds it), or None if held elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _holder(path: Path) -> str:
    """`` (pid N)`` from a lock file's content, if it names one."""
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(path.read_text().strip())})"
    return ""


@dataclass(frozen=True)
class StackPlan:
    """Where everything of one local stack lives; a port of 0 is chosen by its process."""

    host: str
    server_port: int
    worker_ports: list[int]
    data_dir: Path
    server_data: str
    group: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_port}"


def plan_stack(
    settings: Settings, *, workers: int, port: int, data: str | None, group: str | None
) -> StackPlan:
    """Choose paths and the ports the user named.

    ``port=0`` lets every process pick its own port; with a fixed server
    port, workers count up from RESONATE_PATTERNS_HTTP_PORT (0: any).
    """
    data_dir = Path(settings.data_dir).resolve()
    base = settings.http_port
    worker_ports = [0 if port == 0 or base == 0 else base + i for i in range(workers)]
    server_data = data if data is not None else str(data_dir / "server.db")
    return StackPlan(
        "127.0.0.1", port, worker_ports, data_dir, server_data, group or settings.group
    )


def claim_stack(plan: StackPlan, *, start_server: bool = True) -> TextIO:
    """Refuse what would break this or another stack; return the held data-dir lock.

    Checked before anything starts, each a :class:`StackRefusedError` (one
    line, exit 2): another ``up`` in the same data directory (it would
    overwrite ``stack.json`` and append to the other stack's logs), a server
    port the user chose in use (the workers would silently join whatever
    listens there), the store locked by another process, a worker port the
    user chose in use. The lock is held as long as the returned file is open.
    """
    lock_path = plan.data_dir / "stack.lock"
    lock = _try_lock(lock_path)
    if lock is None:
        msg = (
            f"another local stack{_holder(lock_path)} is running in {plan.data_dir}: stop it, "
            "or give this one its own RESONATE_PATTERNS_DATA_DIR"
        )
        raise StackRefusedError(msg)
    try:
        problems: list[str] = []
        if start_server:
            why = port_taken(plan.host, plan.server_port)
            if why is not None:
                problems.append(f"server port: {why} (choose another --port, or 0 for any)")
            if plan.server_data != ":memory:":
                store_lock = Path(f"{plan.server_data}.lock")
                held = _try_lock(store_lock)
                if held is None:
                    problems.append(
                        f"the store {plan.server_data} is in use by another "
                        f"process{_holder(store_lock)} (choose another --data)"
                    )
                else:
                    held.close()
        for port in plan.worker_ports:
            why = port_taken(plan.host, port)
            if why is not None:
                problems.append(
                    f"worker port: {why} (set RESONATE_PATTERNS_HTTP_PORT to a free base "
                    "port, or 0 for any)"
                )
                break
        if problems:
            raise StackRefusedError("; ".join(problems))
    except BaseException:
        lock.close()
        raise
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def child_env(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """A child's environment: JSON logs, at a level that writes its start line."""
    env = {**base, **extra, "RESONATE_PATTERNS_LOG_FORMAT": "json"}
    if env.get("RESONATE_PATTERNS_LOG_LEVEL", "info").strip().lower() not in _REPORTING_LEVELS:
        # The supervisor learns each child's port from its info-level start line.
        env["RESONATE_PATTERNS_LOG_LEVEL"] = "info"
    return env


class Stack:
    """Supervises one server and a group of workers."""

    def __init__(
        self,
        plan: StackPlan,
        *,
        out: Callable[[str], None],
        extra_env: dict[str, str] | None = None,
        server_args: list[str] | None = None,
        start_server: bool = True,
        server_ready_path: str = "/readyz",
    ) -> None:
        #: Updated with the server's port once it has reported it.
        self.plan = plan
        #: False to attach this stack's workers to a server started elsewhere.
        self.start_server = start_server
        #: The server's readiness path (the official server's is ``/ready``).
        self.server_ready_path = server_ready_path
        self._out = out
        self._env = {**os.environ, **(extra_env or {})}
        self._server_args = server_args or []
        #: Set when a process is spawned or the group changes: the supervisor re-reads them.
        self._changed = asyncio.Event()
        self.server = self._server_child(plan.server_port)
        self.workers: list[Child] = []
        self._next_worker = 1
        self._log = get_logger("service.local.supervisor")
        self._spare_ports = list(plan.worker_ports)

    @property
    def logs_dir(self) -> Path:
        return self.plan.data_dir / "logs"

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "service", *args]

    def _server_argv(self, port: int) -> list[str]:
        p = self.plan
        return self._cli(
            "server", "--host", p.host, "--port", str(port), "--data", p.server_data,
            *self._server_args,
        )  # fmt: skip

    def _server_child(self, port: int) -> Child:
        return Child(
            "server",
            self._server_argv(port),
            child_env(self._env),
            self.logs_dir / "server.log",
            port,
            started_event="server_started",
            port_key="port",
            on_spawn=self._changed.set,
        )

    def _worker_child(self) -> Child:
        index = self._next_worker
        self._next_worker += 1
        port = self._spare_ports.pop(0) if self._spare_ports else 0
        env = child_env(
            self._env,
            RESONATE_URL=self.plan.url,
            RESONATE_GROUP=self.plan.group,
            RESONATE_PATTERNS_HTTP_HOST=self.plan.host,
            RESONATE_PATTERNS_HTTP_PORT=str(port),
        )
        name = f"worker-{index}"
        return Child(
            name,
            self._cli("worker"),
            env,
            self.logs_dir / f"{name}.log",
            port,
            started_event="worker_started",
            port_key="http_port",
            on_spawn=self._changed.set,
        )

    async def _wait_ready(self, url: str, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        msg = f"{url} did not become ready within {within:g}s"
        raise StackStartError(msg)

    async def start(self) -> None:
        """Start the server, wait until it is ready, then start the workers."""
        self.plan.data_dir.mkdir(parents=True, exist_ok=True)
        if self.start_server:
            await self.server.spawn()
            port = await self.server.learn_port()
            if port is None:
                await self.server.terminate(2)
                raise StackStartError(f"the local server did not start; see {self.server.log_path}")
            # Pinned: a restarted server must come back where the workers look for it.
            self.server.argv = self._server_argv(port)
            self.plan = dataclasses.replace(self.plan, server_port=port)
        try:
            await self._wait_ready(f"{self.plan.url}{self.server_ready_path}")
        except StackStartError:
            await self.server.terminate(2)
            raise StackStartError(
                f"the local server did not start; see {self.server.log_path}"
            ) from None
        for child, reported in await self._add_workers(len(self.plan.worker_ports)):
            if reported is None:
                raise StackStartError(f"{child.name} did not start; see {child.log_path}")
        await asyncio.gather(
            *(self._wait_ready(f"http://{self.plan.host}:{w.port}/readyz") for w in self.workers)
        )
        self._write_manifest()

    async def _add_workers(self, count: int) -> list[tuple[Child, int | None]]:
        """Spawn ``count`` more workers, then learn their ports (None: none reported).

        All are spawned before any port is awaited, so they start side by side.
        """
        added: list[Child] = []
        for _ in range(count):
            child = self._worker_child()
            await child.spawn()
            self.workers.append(child)
            added.append(child)
        reported = await asyncio.gather(*(child.learn_port() for child in added))
        return list(zip(added, reported, strict=True))

    def describe(self) -> list[str]:
        """Human lines: where the server, each worker's metrics and the logs are."""
        p = self.plan
        lines = [
            f"server     {p.url}  (metrics {p.url}/metrics, data {p.server_data})",
        ]
        for w in self.workers:
            lines.append(f"{w.name:<10} metrics http://{p.host}:{w.port}/metrics  (pid {w.pid})")
        lines.append(f"logs       {self.logs_dir}/")
        lines.append(f"try        RESONATE_URL={p.url} resonate-patterns call factorial 20")
        return lines

    def _write_manifest(self) -> None:
        manifest = {
            "url": self.plan.url,
            "group": self.plan.group,
            "server": {"pid": self.server.pid, "log": str(self.server.log_path)},
            "workers": [
                {
                    "name": w.name,
                    "pid": w.pid,
                    "metrics": f"http://{self.plan.host}:{w.port}/metrics",
                    "log": str(w.log_path),
                }
                for w in self.workers
            ],
        }
        (self.plan.data_dir / "stack.json").write_text(json.dumps(manifest, indent=2))

    async def scale(self, replicas: int) -> None:
        """Grow or shrink the worker group to ``replicas`` processes."""
        for child, _ in await self._add_workers(replicas - len(self.workers)):
            self._out(f"scaled up: started {child.name} (pid {child.pid})")
        while len(self.workers) > replicas:
            child = self.workers.pop()
            child.retired = True
            self._changed.set()
            code = await child.terminate(grace=30)
            self._out(f"scaled down: stopped {child.name} (exit {code})")
        self._write_manifest()

    def _children(self) -> list[Child]:
        return [self.server, *self.workers] if self.start_server else list(self.workers)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart dead processes until ``stop`` is set.

        Sleeps until a running process exits, a process is spawned (a scale,
        or a caller's own :meth:`Child.spawn`) or ``stop`` is set. A retired
        child's exit is seen but not acted on.
        """
        while not stop.is_set():
            self._changed.clear()
            children = self._children()
            dead = [c for c in children if c.proc is not None and c.proc.returncode is not None]
            restart = [c for c in dead if not c.retired]
            for child in restart:
                await self._restart(child, stop)
                if stop.is_set():
                    return
            if restart:
                continue
            running = [c.proc for c in children if c.proc is not None and c not in dead]
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(p.wait()) for p in running]
            waits.append(asyncio.ensure_future(stop.wait()))
            waits.append(asyncio.ensure_future(self._changed.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

    async def _restart(self, child: Child, stop: asyncio.Event) -> None:
        code = child.proc.returncode if child.proc is not None else None
        ran = time.monotonic() - child.started_at
        if ran >= STABLE_SECONDS:
            child.backoff = RESTART_BACKOFF[0]
        delay = child.backoff
        child.backoff = min(child.backoff * 2, RESTART_BACKOFF[1])
        child.restarts += 1
        self._out(
            f"{child.name} exited with code {code} after {ran:.1f}s; "
            f"restarting in {delay:g}s (restart #{child.restarts})"
        )
        self._log.warning("process_exited", name=child.name, code=code, restart=child.restarts)
        await child.terminate(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return  # stopping: the stack's stop() accounts for it
        await child.spawn()
        await child.learn_port(stop=stop)
        self._write_manifest()

    async def stop_quietly(self) -> None:
        """Stop whatever :meth:`start` got running before it failed (no output)."""
        await asyncio.gather(*(w.terminate(grace=5) for w in self.workers))
        await self.server.terminate(grace=5)

    async def stop(self) -> None:
        """Stop workers (they drain), then the server."""
        codes = await asyncio.gather(*(w.terminate(grace=30) for w in self.workers))
        for w, code in zip(self.workers, codes, strict=True):
            self._out(f"stopped {w.name} (exit {code})")
        code = await self.server.terminate(grace=10)
        self._out(f"stopped server (exit {code})")
