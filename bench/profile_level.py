"""On-CPU profile of one cached factorial level: shares by category, worker and server.

What is measured: where the CPU time of the cached factorial chain goes in
the two processes it runs through, one after the other -- one project worker
(``build_runtime(role="worker")``, spawned through ``bench/factorial_level.py``'s
``Child`` exactly as its "cached" variant is) and the local server (``python -m
service server``, SQLite file store, via :mod:`service.local.supervisor`). The
chain is ``factorial_level.py``'s: warm-up ``factorial(5)``, then round r
invokes ``factorial(5 + L r)`` (L = ``--levels``), so each round makes L new
levels with the same values (their size grows with n) as that script's.

Three sessions, each on a fresh stack: the interpreter as it is (CPU ms per
level of each process from ``/proc/<pid>/task/*/schedstat``, ns resolution),
with perf trampolines on but nothing recorded (their cost), and recorded:
``perf record -e cpu-clock -k 1 --call-graph dwarf`` attached to the two
pids and enabled (through its control fifo) only while the rounds run.

How the stacks get their Python frames: CPython >= 3.13 with
``PYTHON_PERF_JIT_SUPPORT=1`` writes ``/tmp/jit-<pid>.dump`` with an unwind
table for each code object's trampoline; ``perf inject --jit`` turns it into
symbols (``py::<qualname>:<file>``) that the DWARF unwinder walks through, so
a sample has its whole Python stack. cpu-clock fires only while a thread is
on a CPU: a sample is on-CPU time, user or kernel (py-spy samples the wall
clock of non-idle threads instead). Each sample has one owner: the innermost
frame of a module that has a category (stdlib helpers such as uuid, copy,
inspect, json, and native code -- interpreter, libsqlite3, kernel -- count
for the Python frame that called them); when none has one, the event loop
(asyncio, selectors, uvloop) or "other". Rows under a category are the
owner's file (project, SDK, asyncio) or package. Named items (uuid4 corr
ids, reply normalisation, Signature.bind, ...) are inclusive: every sample
with that function anywhere on its stack. "Self CPU" is per innermost Python
frame (native code it called, kernel included, counts for it).

Validation (2026-11-26, 2 cores, five runs): on 3.13 every sample had
Python frames (15 per worker sample) and 97-100% of stacks unwound to the
process root (16384 ``--stack-bytes`` left 11-13% of the worker's deeper
stacks short; ``perf script`` also needs ``--max-stack`` above its default
127); samples / frequency came to 93-96% of the recorded session's ``/proc``
CPU; the native split (worker: interpreter 66-70%, kernel 16-22%; server:
interpreter 40-47%, kernel 28-37%, libsqlite3 7-8.5%) and the self-CPU
ranking matched the same profile of the project's 3.12.1 (``--python
.venv/bin/python``, plain ``PYTHONPERFSUPPORT``: its trampolines have no
unwind tables, so its stacks stop at the innermost Python frame -- self CPU
and native split only, and the output says so).

Limits: shares are 3.13's, not 3.12.1's (their self-CPU tables agree within
a few points; plain-session CPU per level was within 10% of
``factorial_level.py``'s on 3.12). Trampolines make every Python call a C
call (+1-16% CPU in those runs) and recording adds 12-44% more, so µs/level
= share x the plain session's CPU ms/level (printed). cpu-clock in a VM
without a PMU has the timer's resolution, and kernel code run with
interrupts off is charged where they are re-enabled
(``_raw_spin_unlock_irqrestore``, ``finish_task_switch``: wake-ups and
context switches of the syscall that blocked). About 2,000-3,000 samples per
process: a 4% share is +-0.4 points, and shares moved by 1-3 points between
runs on this shared VM. Not run in CI.

Needs: ``perf`` on PATH (root, or ``perf_event_paranoid`` <= 1) and an
interpreter (``--python``; default ``.tools/profile-py313/bin/python``, e.g.
``python3.13 -m venv .tools/profile-py313 && .tools/profile-py313/bin/pip
install -e .``) that imports this project's dependencies; when either is
missing it says which in one line and exits 2. It re-executes itself under
that interpreter with ``PYTHONPATH`` = the project root, holds ``--lock``
(``flock``, default ``/tmp/bench.lock``) only while the stacks run (about 15
s), not while perf post-processes, and removes the jit files of the profiled
processes from ``/tmp`` at the end (``--keep DIR`` keeps perf.data and the
symbolised ``perf script`` text).

Usage: python bench/profile_level.py [--rounds 3] [--levels 300] [--freq 2000]
    [--python PATH] [--stack-bytes 32768] [--keep DIR] [--top 25] [--lock PATH]
Prints markdown: the sessions' CPU per level, then per process a table of
categories and their files, the named items, the native split, the top
functions by self CPU and the checks above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
#: Where ``make profile`` puts its 3.13 venv (``.tools`` is git-ignored).
DEFAULT_PYTHON = str(ROOT / ".tools" / "profile-py313" / "bin" / "python")
#: Set in the re-executed driver's environment, so a nested start is not repeated.
REEXEC_MARK = "RESONATE_PATTERNS_PROFILE_LEVEL"
#: The largest factorial n the project accepts (``RESONATE_PATTERNS_MAX_N``).
MAX_N = 1558


def _missing(what: str) -> int:
    print(f"profile_level: {what}", file=sys.stderr)
    return 2


# -- classification -----------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One frame of a sample: a Python function (``file`` set) or a native symbol."""

    sym: str
    dso: str
    file: str = ""
    kernel: bool = False

    @property
    def python(self) -> bool:
        return bool(self.file)

    @property
    def qualname(self) -> str:
        return self.sym if self.python else ""


@dataclass(frozen=True)
class Rule:
    """Python files (path fragments) whose samples count for ``category``."""

    category: str
    fragments: tuple[str, ...]

    def owns(self, frame: Frame) -> bool:
        return frame.python and any(f in frame.file for f in self.fragments)


def _site(pkg: str) -> str:
    return f"/site-packages/{pkg}/"


def _svc(path: str) -> str:
    return f"{ROOT}/service/{path}"


def _stdlib(name: str) -> str:
    return f"/lib/python3.{sys.version_info.minor}/{name}"


def _sdk(*files: str) -> tuple[str, ...]:
    return tuple(_site("resonate") + f for f in files)


# Frames are tried from the leaf; a frame goes to the first rule that owns it, so
# the SDK's protocol files are listed before its catch-all (and, on the server,
# store.py and metrics.py before the rest of devserver/).
WORKER_RULES = (
    Rule(
        "project telemetry (log lines, metrics, `instrumented`, observer)",
        (
            _svc("telemetry/"),
            _svc("connector/observer.py"),
            _site("structlog"),
            _site("prometheus_client"),
            _stdlib("logging/"),
        ),
    ),
    Rule(
        "SDK protocol layer (send, transport, codec, connections)",
        (*_sdk("send.py", "transport.py", "codec.py", "connections/"), _site("resonate_base")),
    ),
    Rule(
        "HTTP client (connector/http.py, httptools)",
        (
            _svc("connector/http.py"),
            _site("httptools"),
        ),
    ),
    Rule(
        "event stream (connector/sse.py, aiohttp)",
        (
            _svc("connector/sse.py"),
            _site("aiohttp"),
            _site("multidict"),
            _site("yarl"),
        ),
    ),
    Rule("SDK execution engine (core, context, effects, ...)", (_site("resonate"),)),
    Rule(
        "project patterns + connector glue",
        (
            _svc("patterns/"),
            _svc("connector/"),
            _svc("runtime.py"),
            _svc("worker.py"),
        ),
    ),
)

_FASTPATH_MODULES = ("fastpath", "server", "decoding", "protocol", "auth", "addresses")
SERVER_RULES = (
    Rule(
        "SQLite (store.py, sqlite3, libsqlite3)",
        (
            _svc("devserver/store.py"),
            _stdlib("sqlite3/"),
        ),
    ),
    Rule(
        "Prometheus (counter + histogram per request)",
        (
            _site("prometheus_client"),
            _svc("devserver/metrics.py"),
        ),
    ),
    Rule("SortedSet indexes (sortedcontainers)", (_site("sortedcontainers"),)),
    Rule("event stream push to workers (aiohttp StreamResponse)", (_site("aiohttp"),)),
    Rule(
        "HTTP fast path (fastpath, server, decoding, protocol)",
        (
            *(_svc(f"devserver/{m}.py") for m in _FASTPATH_MODULES),
            _site("httptools"),
        ),
    ),
    Rule("engine, state, hub", (_svc("devserver/"),)),
    Rule("logging", (_site("structlog"), _svc("telemetry/"), _stdlib("logging/"))),
)

EVENT_LOOP = "event loop (asyncio, uvloop, selectors)"
OTHER = "other (no categorised frame)"
_LOOP_FILES = (_stdlib("asyncio/"), _stdlib("selectors.py"))
_LOOP_DSOS = ("uvloop", "_asyncio")


@dataclass(frozen=True)
class Named:
    """An inclusive sub-item: samples with a frame of ``file`` whose qualname matches."""

    label: str
    file: str
    qualnames: tuple[str, ...]
    #: When set, only frames whose caller chain (rootward) holds a frame of this file.
    under: str = ""

    def hits(self, frames: list[Frame]) -> bool:
        for i, f in enumerate(frames):
            if (
                f.python
                and self.file in f.file
                and f.qualname.endswith(self.qualnames)
                and (not self.under or any(self.under in g.file for g in frames[i + 1 :]))
            ):
                return True
        return False


_DURABLE_HELPERS = (
    "DurableFunction.__init__",
    "DurableFunction.pack_args",
    "DurableFunction.coerce_result",
    "DurableFunction._coerce",
    "DurableFunction._coerce_value",
    "DurableFunction.return_type",
    "_is_passthrough_annotation",
    "_func_globals",
    "_resolve_annotation",
)

WORKER_NAMED = (
    Named("uuid4 correlation ids (`default_corr_id`)", "resonate/send.py", ("default_corr_id",)),
    Named(
        "reply normalisation (`_normalize_record`, `_decode_or_raise`, `_decode_lenient`)",
        "resonate/send.py",
        ("_normalize_record", "_decode_or_raise", "_decode_lenient"),
    ),
    Named(
        "`Signature.bind` (called by the SDK)",
        _stdlib("inspect.py"),
        (
            "Signature.bind",
            "Signature._bind",
        ),
        under=_site("resonate"),
    ),
    Named(
        "`DurableFunction` construction + argument helpers (not `invoke`)",
        "resonate/durable.py",
        _DURABLE_HELPERS,
    ),
    Named("`ctx.options` (all of it)", "resonate/context.py", ("Context.options",)),
    Named(
        "`copy.copy` in `ctx.options`", _stdlib("copy.py"), ("copy",), under="resonate/context.py"
    ),
    Named("structlog (any caller)", _site("structlog"), ("",)),
    Named(
        "log line rendering + write (`service/telemetry/logging.py`)",
        _svc("telemetry/logging.py"),
        ("",),
    ),
    Named("prometheus_client (any caller)", _site("prometheus_client"), ("",)),
    Named(
        "`instrumented` wrapper, inclusive (the body it runs too)",
        _svc("telemetry/instrument.py"),
        ("",),
    ),
    Named(
        "`Codec.encode` + `Codec.decode` (values: int <-> decimal text)",
        "resonate/codec.py",
        ("Codec.encode", "Codec.decode"),
    ),
)

SERVER_NAMED = (
    Named("`Store` (store.py, inclusive)", _svc("devserver/store.py"), ("",)),
    Named("prometheus_client (any caller)", _site("prometheus_client"), ("",)),
    Named("sortedcontainers (any caller)", _site("sortedcontainers"), ("",)),
    Named("structlog (any caller)", _site("structlog"), ("",)),
)


def _native_kind(frame: Frame) -> str:
    """What kind of code a native leaf is in (the native split)."""
    if frame.kernel:
        return "kernel"
    dso = frame.dso
    if "libpython" in dso or re.search(r"/python3(\.\d+)?$", dso):
        return "interpreter (libpython)"
    if frame.python or "jitted-" in dso or "perf-" in dso:
        return "Python trampolines"
    if "libsqlite3" in dso or "_sqlite3" in dso:
        return "libsqlite3 (+ _sqlite3)"
    if "libc.so" in dso or "libm.so" in dso:
        return "libc"
    for lib in ("uvloop", "_asyncio", "msgspec", "httptools", "libcrypto", "_json", "_uuid"):
        if lib in dso:
            return lib
    return "other native"


#: uvloop's C loop, by the innermost libuv function on the stack.
_UV_GROUPS = {
    "uv__read": "uvloop: socket reads (uv__read, before the protocol's Python)",
    "uv__io_poll": "uvloop: epoll_wait + I/O dispatch (uv__io_poll)",
}


#: What the event loop's files do in these processes.
_FILE_NOTES = {
    "selectors.py": "selectors.py (epoll_wait, ready list)",
    "asyncio/selector_events.py": "asyncio/selector_events.py (socket reads: _read_ready)",
    "asyncio/base_events.py": "asyncio/base_events.py (_run_once, call_soon, call_at)",
}


def _group(frame: Frame | None, frames: list[Frame]) -> str:
    """The sub-row of an owner frame: its file (project, SDK, asyncio) or its package."""
    if frame is None:
        return "no Python frame"
    if not frame.python:
        if "uvloop" in frame.dso:
            uv = next((f.sym for f in frames if "uvloop" in f.dso and f.sym.startswith("uv")), "")
            return _UV_GROUPS.get(uv, "uvloop: callbacks, idle handles, timers")
        return f"{Path(frame.dso).name} (native)"
    short = _short(frame.file)
    if short in _FILE_NOTES:
        return _FILE_NOTES[short]
    if short.startswith(("service/", "bench/", "resonate/", "asyncio/")):
        return short
    return short.split("/", 1)[0] if "/" in short else short


@dataclass
class Profile:
    """Classified samples of one process."""

    rules: tuple[Rule, ...]
    named: tuple[Named, ...]
    samples: int = 0
    with_python: int = 0
    #: Samples whose stack ends in uvloop's loop with no Python frame (loop internals).
    loop_internals: int = 0
    rooted: int = 0
    python_frames: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    groups: Counter[tuple[str, str]] = field(default_factory=Counter)
    kernel_by_category: Counter[str] = field(default_factory=Counter)
    kernel_by_group: Counter[tuple[str, str]] = field(default_factory=Counter)
    leaf_by_category: Counter[tuple[str, str]] = field(default_factory=Counter)
    native: Counter[str] = field(default_factory=Counter)
    named_hits: Counter[str] = field(default_factory=Counter)
    self_python: Counter[str] = field(default_factory=Counter)
    self_python_kernel: Counter[str] = field(default_factory=Counter)
    self_native: Counter[str] = field(default_factory=Counter)

    def add(self, frames: list[Frame]) -> None:
        if not frames:
            return
        self.samples += 1
        leaf = frames[0]
        py = next((f for f in frames if f.python), None)
        self.python_frames += sum(f.python for f in frames)
        if py is not None:
            self.with_python += 1
        elif _complete(frames):
            self.loop_internals += 1
        if _complete(frames):
            self.rooted += 1
        kind = _native_kind(leaf)
        self.native[kind] += 1
        category, owner = self._owner(frames)
        self.leaf_by_category[(category, kind)] += 1
        key = (category, _group(owner, frames))
        self.categories[category] += 1
        self.groups[key] += 1
        if leaf.kernel:
            self.kernel_by_category[category] += 1
            self.kernel_by_group[key] += 1
        for item in self.named:
            if item.hits(frames):
                self.named_hits[item.label] += 1
        name = f"{py.qualname} ({_short(py.file)})" if py else "(no Python frame)"
        if py is not None and any(p in py.file for p in _LOOP_FILES):
            # uvloop's C loop, entered from asyncio.run: name its part, not ``Runner.run``.
            inner = frames[: next(i for i, f in enumerate(frames) if f.python)]
            uv = next((f for f in inner if "uvloop" in f.dso), None)
            if uv is not None:
                name = _group(uv, frames)
        self.self_python[name] += 1
        if leaf.kernel:
            self.self_python_kernel[name] += 1
        if not leaf.python:
            self.self_native[f"{leaf.sym} ({Path(leaf.dso).name})"] += 1

    def _owner(self, frames: list[Frame]) -> tuple[str, Frame | None]:
        """The category of a sample and the frame that decided it."""
        for f in frames:
            for rule in self.rules:
                if rule.owns(f):
                    return rule.category, f
        for f in frames:
            if (f.python and any(p in f.file for p in _LOOP_FILES)) or (
                not f.python and not f.kernel and any(d in f.dso for d in _LOOP_DSOS)
            ):
                return EVENT_LOOP, f
        return OTHER, next((f for f in frames if f.python), None)


_ROOTS = ("_start", "__libc_start", "start_thread", "clone3", "__clone")


def _complete(frames: list[Frame]) -> bool:
    """Whether the unwinder reached the process root (or uvloop's C loop, its stand-in).

    With too small a ``--stack-bytes`` the unwind can stop in libuv's
    ``uv__io_poll``; every callback runs above it, so such a stack is complete
    for attribution.
    """
    known = [f for f in frames if f.sym != "[unknown]"]
    if not known:
        return False
    root = known[-1]
    return root.sym.startswith(_ROOTS) or (not root.python and "uvloop" in root.dso)


def _short(path: str) -> str:
    """A path without the interpreter's or the project's prefix."""
    for marker in ("/site-packages/", f"/lib/python3.{sys.version_info.minor}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.removeprefix(f"{ROOT}/")


# -- perf output --------------------------------------------------------------------

_FRAME = re.compile(r"^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")
_HEADER = re.compile(r"^\s*(\d+)\s")


def parse_frame(line: str) -> Frame | None:
    m = _FRAME.match(line)
    if m is None:
        return None
    _, sym, dso = m.groups()
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    # Not by address: an unwinder's give-up frame is 0xffffffffffffffff "[unknown]".
    kernel = dso.startswith("[kernel")
    if sym.startswith("py::"):
        # py::<qualname>:<file>; the file is an absolute path (no ':' on Linux).
        qualname, _, file = sym[4:].rpartition(":")
        return Frame(qualname or sym, dso, file or "<unknown>")
    return Frame(sym, dso, kernel=kernel)


def perf_samples(
    path: Path, env: dict[str, str], save: Path | None = None
) -> Iterator[tuple[int, list[Frame]]]:
    """(pid, frames leaf first) per sample of ``perf script``; its text also to ``save``."""
    cmd = [
        "perf",
        "script",
        "-i",
        str(path),
        "-F",
        "pid,ip,sym,dso",
        "--no-inline",
        "--max-stack",
        "1024",
    ]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        pid, frames = -1, list[Frame]()
        copy = save.open("w") if save is not None else None
        for line in proc.stdout:
            if copy is not None:
                copy.write(line)
            if not line.strip():
                if pid >= 0:
                    yield pid, frames
                pid, frames = -1, list[Frame]()
            elif line.startswith("\t"):
                frame = parse_frame(line)
                if frame is not None:
                    frames.append(frame)
            elif (m := _HEADER.match(line)) is not None:
                pid = int(m.group(1))
        if pid >= 0:
            yield pid, frames
        if copy is not None:
            copy.close()
        if proc.wait() != 0:
            msg = f"perf script failed ({proc.returncode}): {' '.join(cmd)}"
            raise RuntimeError(msg)


# -- the run ------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """On-CPU ns of all threads of ``pid`` so far (schedstat: ns, not 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


@contextlib.contextmanager
def bench_lock(path: str) -> Iterator[None]:
    """Hold the shared benchmark lock (as ``flock PATH``) while timing runs."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class PerfSpec:
    out: Path
    freq: int
    stack_bytes: int
    env: dict[str, str]


class Perf:
    """``perf record`` attached to pids, started disabled and switched by its control fifo."""

    def __init__(self, spec: PerfSpec, pids: list[int]) -> None:
        self.ctl, self.ack = spec.out.with_suffix(".ctl"), spec.out.with_suffix(".ack")
        for fifo in (self.ctl, self.ack):
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo)
        cmd = [
            "perf",
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            str(spec.freq),
            "-k",
            "1",
            "--call-graph",
            f"dwarf,{spec.stack_bytes}",
            "-N",
            "-D",
            "-1",
            "--control",
            f"fifo:{self.ctl},{self.ack}",
            "-o",
            str(spec.out),
            "-p",
            ",".join(map(str, pids)),
        ]
        self.proc = subprocess.Popen(cmd, env=spec.env, stderr=subprocess.PIPE, text=True)
        # O_RDWR: opening a fifo this way never blocks, whether perf has opened it yet or not.
        self._ctl_fd = os.open(self.ctl, os.O_RDWR)
        self._ack_fd = os.open(self.ack, os.O_RDWR)

    def _command(self, word: str) -> None:
        os.write(self._ctl_fd, f"{word}\n".encode())
        ready, _, _ = select.select([self._ack_fd], [], [], 30)
        if not ready or b"ack" not in os.read(self._ack_fd, 64):
            self.proc.kill()
            _, err = self.proc.communicate()
            msg = f"perf did not acknowledge {word!r}: {err.strip()}"
            raise RuntimeError(msg)

    def enable(self) -> None:
        self._command("enable")

    def disable(self) -> None:
        self._command("disable")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=120)
        os.close(self._ctl_fd)
        os.close(self._ack_fd)
        for fifo in (self.ctl, self.ack):
            fifo.unlink(missing_ok=True)
        if self.proc.returncode not in (0, -signal.SIGINT):
            msg = f"perf record failed ({self.proc.returncode}): {err.strip()}"
            raise RuntimeError(msg)


def perf_support_var() -> str:
    """The variable that turns on this interpreter's perf trampolines."""
    # 3.13+: trampolines with DWARF unwind tables (jitdump); 3.12: a perf map only.
    return "PYTHON_PERF_JIT_SUPPORT" if sys.version_info >= (3, 13) else "PYTHONPERFSUPPORT"


@dataclass
class Session:
    """One stack's rounds of the cached chain: per round, wall and CPU ms per level."""

    label: str
    worker_pid: int = 0
    server_pid: int = 0
    ms: list[float] = field(default_factory=list)
    worker_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    kinds: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    started: str = ""


async def session(
    out: Session, levels: int, rounds: int, trampolines: bool, perf: PerfSpec | None
) -> None:
    """A fresh stack, the warm-up and rounds of ``factorial_level.py``'s "cached" variant.

    The n of each round is the one ``bench/factorial_level.py --levels L --rounds R``
    uses (``WARM_N + L r``): the values, whose size grows with n, are the same.
    """
    from common import start_stack
    from factorial_level import WARM_N, Child, requests_by_kind

    out.load = os.getloadavg()
    out.started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    # The stack's server and Child.spawn's worker inherit this process's environment.
    var = perf_support_var()
    if trampolines:
        os.environ[var] = "1"
    else:
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        stack = await start_stack(Path(tmp), workers=0)
        url = stack.plan.url
        worker: Child | None = None
        recorder: Perf | None = None
        try:
            worker = await Child.spawn("project-worker", url, Path(tmp) / "project.log")
            assert stack.server.pid is not None
            out.server_pid, out.worker_pid = stack.server.pid, worker.proc.pid
            await worker.run(variant="cached", id=f"factorial-{WARM_N}", n=WARM_N)
            if perf is not None:
                recorder = Perf(perf, [out.worker_pid, out.server_pid])
            counted = await requests_by_kind(url)
            if recorder is not None:
                await asyncio.to_thread(recorder.enable)
            for r in range(1, rounds + 1):
                n = WARM_N + levels * r
                before = cpu_ns(out.worker_pid), cpu_ns(out.server_pid)
                seconds = await worker.run(variant="cached", id=f"factorial-{n}", n=n)
                after = cpu_ns(out.worker_pid), cpu_ns(out.server_pid)
                out.ms.append(seconds * 1000 / levels)
                out.worker_cpu.append((after[0] - before[0]) / 1e6 / levels)
                out.server_cpu.append((after[1] - before[1]) / 1e6 / levels)
            if recorder is not None:
                await asyncio.to_thread(recorder.disable)
            kinds = await requests_by_kind(url) - counted
            out.kinds = {k: round(v / (levels * rounds), 2) for k, v in sorted(kinds.items())}
        finally:
            if recorder is not None:
                await asyncio.to_thread(recorder.stop)
            if worker is not None:
                await worker.stop()
            await stack.stop()
            os.environ.pop(var, None)


async def sessions(args: argparse.Namespace, spec: PerfSpec, runs: list[Session]) -> None:
    """Unprofiled, with trampolines only, then recorded: each on a fresh stack.

    Appended to ``runs`` as they start, so their pids are known for the clean-up.
    """
    plan = [
        ("plain interpreter", False, None),
        ("perf trampolines on, not recorded", True, None),
        ("recorded", True, spec),
    ]
    for label, trampolines, perf in plan:
        runs.append(Session(label))
        await session(runs[-1], args.levels, args.rounds, trampolines, perf)


# -- the report ---------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _us(part: int, whole: int, cpu_ms: float) -> str:
    return f"{1000 * cpu_ms * part / whole:.0f}" if whole else "-"


def report(title: str, prof: Profile, cpu_ms: float, top: int) -> str:
    n = prof.samples
    lines = [
        f"### {title}: {n} on-CPU samples; CPU {cpu_ms:.3f} ms/level (plain interpreter)",
        "",
        "| category / sub-item | share | µs/level | of which kernel | where (leaf, top 3) |",
        "|---|---:|---:|---:|---|",
    ]
    if prof.rooted < n / 2:
        lines[1:1] = [
            "",
            "**Stacks stop at the innermost Python frame (this interpreter's trampolines have "
            "no unwind tables): categories below go by that frame only, so stdlib helpers "
            "(uuid, inspect, json, ...) land in 'other'. The self-CPU and native tables hold.**",
        ]
    for category, count in prof.categories.most_common():
        kernel = prof.kernel_by_category[category]
        leaves = sorted(
            ((c, kind) for (cat, kind), c in prof.leaf_by_category.items() if cat == category),
            reverse=True,
        )[:3]
        where = ", ".join(f"{kind} {_pct(c, n)}" for c, kind in leaves)
        lines.append(
            f"| **{category}** | **{_pct(count, n)}** | **{_us(count, n, cpu_ms)}** "
            f"| {_pct(kernel, n)} | {where} |"
        )
        for (cat, group), c in prof.groups.most_common():
            if cat == category:
                k = prof.kernel_by_group[(cat, group)]
                lines.append(
                    f"| &nbsp;&nbsp;{group} | {_pct(c, n)} | {_us(c, n, cpu_ms)} | {_pct(k, n)} | |"
                )
    lines += [
        "",
        "Named items (inclusive: samples with the function anywhere on the stack):",
        "",
        "| item | share | µs/level |",
        "|---|---:|---:|",
    ]
    for item in prof.named:
        c = prof.named_hits[item.label]
        lines.append(f"| {item.label} | {_pct(c, n)} | {_us(c, n, cpu_ms)} |")
    lines += [
        "",
        "Native split (where the sampled instruction was, whatever the owner):",
        "",
        "| leaf in | share |",
        "|---|---:|",
    ]
    lines += [f"| {kind} | {_pct(c, n)} |" for kind, c in prof.native.most_common()]
    lines += [
        "",
        f"Top {top} functions by self CPU (innermost Python frame; native code it called, "
        "kernel included, counts for it):",
        "",
        "| # | function (file) | self share | µs/level | of which kernel |",
        "|---:|---|---:|---:|---:|",
    ]
    for i, (name, c) in enumerate(prof.self_python.most_common(top), 1):
        k = prof.self_python_kernel[name]
        lines.append(f"| {i} | `{name}` | {_pct(c, n)} | {_us(c, n, cpu_ms)} | {_pct(k, n)} |")
    lines += [
        "",
        "Top 10 native leaf symbols: "
        + "; ".join(f"{s} {_pct(c, n)}" for s, c in prof.self_native.most_common(10)),
        "",
        f"Check: samples with a Python frame {_pct(prof.with_python, n)} "
        f"({prof.python_frames / max(n, 1):.1f} Python frames per sample); stacks unwound "
        f"to the process root {_pct(prof.rooted, n)}"
        + (
            f"; {_pct(prof.loop_internals, n)} in uvloop's loop with no Python frame "
            "(libuv's unwind stopped below it)"
            if prof.loop_internals
            else ""
        )
        + ".",
    ]
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def analyse(runs: list[Session], spec: PerfSpec, args: argparse.Namespace) -> str:
    recorded = runs[-1]
    data = spec.out
    jit = sys.version_info >= (3, 13)
    if jit:
        injected = data.with_suffix(".jit.data")
        inject = subprocess.run(
            ["perf", "inject", "--jit", "-i", str(data), "-o", str(injected)],
            env=spec.env,
            check=False,
            capture_output=True,
            text=True,
        )
        if inject.returncode != 0:
            msg = f"perf inject --jit failed ({inject.returncode}): {inject.stderr.strip()}"
            raise RuntimeError(msg)
        data = injected
    worker = Profile(WORKER_RULES, WORKER_NAMED)
    server = Profile(SERVER_RULES, SERVER_NAMED)
    by_pid = {recorded.worker_pid: worker, recorded.server_pid: server}
    # The jitted .so files perf inject writes are removed at the end: with --keep,
    # the symbolised text is kept instead.
    save = spec.out.with_suffix(".script.txt") if args.keep else None
    for pid, frames in perf_samples(data, spec.env, save):
        if pid in by_pid:
            by_pid[pid].add(frames)
    levels = args.levels * args.rounds
    plain = runs[0]
    cpu = {"worker": _mean(plain.worker_cpu), "server": _mean(plain.server_cpu)}
    lines = [
        f"## On-CPU profile of the cached factorial level ({recorded.started}, load average "
        f"{recorded.load[0]:.2f} {recorded.load[1]:.2f} {recorded.load[2]:.2f})",
        "",
        f"- chain: `factorial_level.py --rounds {args.rounds} --levels {args.levels}` cached "
        f"variant (round r: factorial({5} + {args.levels} r), warm-up factorial(5)); 1 project "
        f"worker + local server (SQLite file); each session below on a fresh stack",
        f"- perf {_perf_version()}: cpu-clock at {args.freq} Hz, DWARF stacks of "
        f"{args.stack_bytes} bytes, enabled only during the recorded rounds; Python "
        f"{platform.python_version()} with {perf_support_var()}=1"
        f"{' + perf inject --jit' if jit else ''}; resonate-sdk {version('resonate-sdk')}; "
        f"{os.cpu_count()} cores",
        f"- requests per level (server counter, recorded rounds): {recorded.kinds}",
        "",
        "| session | load avg (1 min) | wall ms/level | worker CPU ms/level "
        "| server CPU ms/level |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.label} | {run.load[0]:.2f} | {_mean(run.ms):.2f} "
            f"| {_mean(run.worker_cpu):.3f} | {_mean(run.server_cpu):.3f} |"
        )
    lines += [
        f"| recorded: samples / frequency | | | {worker.samples * 1000 / args.freq / levels:.3f} "
        f"| {server.samples * 1000 / args.freq / levels:.3f} |",
        "",
        "CPU per level is from /proc/<pid>/task/*/schedstat around each round, averaged over "
        "the rounds. Shares are of the recorded session's samples; µs/level = share x the "
        "plain interpreter's CPU ms/level of that process.",
        "",
        report("Worker", worker, cpu["worker"], args.top),
        "",
        report("Server", server, cpu["server"], args.top),
    ]
    return "\n".join(lines)


def _perf_version() -> str:
    out = subprocess.run(["perf", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("perf version ")


def _cleanup_jit_files(pids: list[int]) -> None:
    """Remove the jit dumps, perf maps and the .so files ``perf inject`` wrote for ``pids``."""
    for pid in pids:
        for pattern in (f"jit-{pid}.dump", f"jitted-{pid}-*.so", f"perf-{pid}.map"):
            for path in Path("/tmp").glob(pattern):
                path.unlink(missing_ok=True)


def run_profile(args: argparse.Namespace) -> int:
    """In the re-executed driver: record under the lock, then analyse without it."""
    out_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="profile-level-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    # perf's build-id cache goes with the data, not into ~/.debug.
    env = {**os.environ, "PERF_BUILDID_DIR": str(out_dir / "buildid")}
    spec = PerfSpec(out_dir / "perf.data", args.freq, args.stack_bytes, env)
    runs: list[Session] = []
    try:
        with bench_lock(args.lock):
            asyncio.run(sessions(args, spec, runs))
        print(analyse(runs, spec, args))
    finally:
        _cleanup_jit_files([p for run in runs for p in (run.worker_pid, run.server_pid) if p])
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, default=300)
    parser.add_argument("--freq", type=int, default=2000, help="samples per CPU second")
    parser.add_argument("--stack-bytes", type=int, default=32768, help="DWARF stack copy")
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="interpreter to profile")
    parser.add_argument("--lock", default="/tmp/bench.lock", help="flock while timing ('' none)")
    parser.add_argument("--keep", default="", help="keep perf data in this directory")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if 5 + args.levels * args.rounds > MAX_N:
        parser.error(f"--levels x --rounds must be at most {MAX_N - 5} (the largest n)")
    if os.environ.get(REEXEC_MARK):
        # bench modules import each other (factorial_level), as when run from bench/.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        return run_profile(args)
    if shutil.which("perf") is None:
        return _missing("perf not found on PATH (Debian: apt-get install linux-perf)")
    python = shutil.which(args.python) or args.python
    if not os.access(python, os.X_OK):
        return _missing(
            f"interpreter {args.python} not found: a Python >= 3.13 venv with this project "
            "installed (`make profile` creates it), or pass --python"
        )
    env = {
        **os.environ,
        REEXEC_MARK: "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    probe = subprocess.run(
        [
            python,
            "-c",
            "import sys; assert sys.version_info >= (3, 12), 'needs Python >= 3.12'; "
            "import resonate, structlog, httptools, msgspec, aiohttp, service",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return _missing(f"{python} cannot run this profile ({last}; see the docstring)")
    argv = [python, str(Path(__file__).resolve()), *sys.argv[1:]]
    return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
