"""``resonate-patterns up``: the local stack, supervised like a tiny Deployment.

Starts the local Resonate server and N worker processes, each its own OS
process with its own log file, prints where everything is, restarts any
process that dies (with backoff, as a ReplicaSet would), and on Ctrl-C or
SIGTERM stops the workers first (they drain) and the server last; if the
supervisor itself is killed outright, Linux delivers SIGTERM to every child
(``PR_SET_PDEATHSIG``), so no orphan keeps the port and the store. The same
supervisor can change the number of workers while running (:meth:`Stack.scale`),
which is what ``up --autoscale`` drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import aiohttp

from service.errors import StackRefusedError, StackStartError
from service.signals import stop_on_signals
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Collection
    from typing import TextIO

    from service.config import Settings
    from service.operator.policy import PolicySpec

#: Restart backoff for a process that keeps dying: 0.5 s doubling to 10 s.
RESTART_BACKOFF = (0.5, 10.0)
#: A process that ran this long before dying restarts without backoff.
STABLE_SECONDS = 10.0


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", *, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct TCP ports nothing listens on right now, none in ``avoid``.

    All are held open until every one is chosen: a port released by one
    call can come straight back from the next, and two processes of one
    stack would then race for it.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (``None``: it can), probed by a bind.

    Binds with ``SO_REUSEADDR`` as aiohttp does, so a port in TIME_WAIT counts
    as free and only a live listener (or a bad address) counts as taken.
    """
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"{host}:{port} is already in use by another process"
                return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


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


def claim_stack(plan: StackPlan, *, start_server: bool = True) -> TextIO:
    """Refuse what would break this or another stack; return the held data-dir lock.

    Checked before anything starts, each a :class:`StackRefusedError` (one
    line, exit 2): another ``up`` in the same data directory (it would
    overwrite ``stack.json`` and append to the other stack's logs), a server
    port in use (the workers would silently join whatever listens there), the
    store locked by another process, a worker metrics port in use. The lock
    is held as long as the returned file is open.
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


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF[0]
    retired: bool = False
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - owned by the child
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


@dataclass(frozen=True)
class StackPlan:
    """Where everything of one local stack lives."""

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
    """Choose ports and paths; ``port=0`` picks free ports for everything."""
    data_dir = Path(settings.data_dir).resolve()
    host = "127.0.0.1"
    base = settings.http_port
    picked = free_ports(workers + 1, host, avoid=[port] if port else ())
    server_port = port or picked[0]
    worker_ports = [picked[1 + i] if port == 0 or base == 0 else base + i for i in range(workers)]
    server_data = data if data is not None else str(data_dir / "server.db")
    return StackPlan(
        host, server_port, worker_ports, data_dir, server_data, group or settings.group
    )


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
        self.plan = plan
        #: False to attach this stack's workers to a server started elsewhere.
        self.start_server = start_server
        #: The server's readiness path (the official server's is ``/ready``).
        self.server_ready_path = server_ready_path
        self._out = out
        self._env = {**os.environ, **(extra_env or {})}
        self._server_args = server_args or []
        self.server = self._server_child()
        self.workers: list[Child] = []
        self._next_worker = 1
        self._stopping = False
        self._log = get_logger("service.stack")
        self._spare_ports = list(plan.worker_ports)

    @property
    def logs_dir(self) -> Path:
        return self.plan.data_dir / "logs"

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "service", *args]

    def _server_child(self) -> Child:
        p = self.plan
        argv = self._cli(
            "server",
            "--host",
            p.host,
            "--port",
            str(p.server_port),
            "--data",
            p.server_data,
            *self._server_args,
        )
        env = {**self._env, "RESONATE_PATTERNS_LOG_FORMAT": "json"}
        return Child("server", argv, env, self.logs_dir / "server.log", p.server_port)

    def _worker_child(self) -> Child:
        index = self._next_worker
        self._next_worker += 1
        if self._spare_ports:
            port = self._spare_ports.pop(0)
        else:
            taken = [self.plan.server_port, *(w.port for w in self.workers)]
            port = free_ports(1, self.plan.host, avoid=taken)[0]
        env = {
            **self._env,
            "RESONATE_URL": self.plan.url,
            "RESONATE_GROUP": self.plan.group,
            "RESONATE_PATTERNS_HTTP_HOST": self.plan.host,
            "RESONATE_PATTERNS_HTTP_PORT": str(port),
            "RESONATE_PATTERNS_LOG_FORMAT": "json",
        }
        name = f"worker-{index}"
        return Child(name, self._cli("worker"), env, self.logs_dir / f"{name}.log", port)

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
        try:
            await self._wait_ready(f"{self.plan.url}{self.server_ready_path}")
        except StackStartError:
            await self.server.terminate(2)
            raise StackStartError(
                f"the local server did not start; see {self.server.log_path}"
            ) from None
        for _ in self.plan.worker_ports:
            await self._add_worker()
        await asyncio.gather(
            *(self._wait_ready(f"http://{self.plan.host}:{w.port}/readyz") for w in self.workers)
        )
        self._write_manifest()

    async def _add_worker(self) -> Child:
        child = self._worker_child()
        await child.spawn()
        self.workers.append(child)
        return child

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
        while len(self.workers) < replicas:
            child = await self._add_worker()
            self._out(f"scaled up: started {child.name} (pid {child.pid})")
        while len(self.workers) > replicas:
            child = self.workers.pop()
            child.retired = True
            code = await child.terminate(grace=30)
            self._out(f"scaled down: stopped {child.name} (exit {code})")
        self._write_manifest()

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart dead processes until ``stop`` is set."""
        while not stop.is_set():
            children = [self.server, *self.workers] if self.start_server else self.workers
            for child in children:
                proc = child.proc
                if proc is None or proc.returncode is None or child.retired:
                    continue
                await self._restart(child, proc.returncode)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def _restart(self, child: Child, code: int) -> None:
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
        await asyncio.sleep(delay)
        await child.spawn()
        self._write_manifest()

    async def stop_quietly(self) -> None:
        """Stop whatever :meth:`start` got running before it failed (no output)."""
        self._stopping = True
        await asyncio.gather(*(w.terminate(grace=5) for w in self.workers))
        await self.server.terminate(grace=5)

    async def stop(self) -> None:
        """Stop workers (they drain), then the server."""
        self._stopping = True
        codes = await asyncio.gather(*(w.terminate(grace=30) for w in self.workers))
        for w, code in zip(self.workers, codes, strict=True):
            self._out(f"stopped {w.name} (exit {code})")
        code = await self.server.terminate(grace=10)
        self._out(f"stopped server (exit {code})")


async def run_stack(
    settings: Settings,
    out: Callable[[str], None],
    *,
    workers: int,
    port: int,
    data: str | None,
    group: str | None,
    server_args: list[str] | None = None,
    autoscale: PolicySpec | None = None,
    poll_seconds: float = 2.0,
    metrics_port: int | None = 0,
) -> int:
    """``up``: run the stack in the foreground until SIGINT/SIGTERM.

    With ``autoscale``, the operator's policy grows and shrinks the worker
    processes by the local server's backlog for the group.
    """
    plan = plan_stack(settings, workers=workers, port=port, data=data, group=group)
    with claim_stack(plan):
        return await _run_claimed(
            plan, settings, out, server_args, autoscale, poll_seconds, metrics_port, workers
        )


async def _run_claimed(
    plan: StackPlan,
    settings: Settings,
    out: Callable[[str], None],
    server_args: list[str] | None,
    autoscale: PolicySpec | None,
    poll_seconds: float,
    metrics_port: int | None,
    workers: int,
) -> int:
    """``run_stack`` once :func:`claim_stack` holds the data directory."""
    stack = Stack(plan, out=out, server_args=server_args)
    stop = stop_on_signals()
    try:
        await stack.start()
    except BaseException:
        await stack.stop_quietly()
        raise
    out(f"resonate-patterns local stack: group {plan.group!r}, {workers} worker(s)")
    for line in stack.describe():
        out(line)
    out("press Ctrl-C to stop")
    scaler: asyncio.Task[None] | None = None
    if autoscale is not None:
        from service.operator.local import autoscale_local

        scaler = asyncio.create_task(
            autoscale_local(
                stack,
                autoscale,
                stop,
                out,
                interval=poll_seconds,
                metrics_port=metrics_port,
                token=settings.token,
            )
        )
    try:
        await stack.supervise(stop)
    finally:
        if scaler is not None:
            stop.set()
            await scaler
        await stack.stop()
    return 0
