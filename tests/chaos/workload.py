"""The chaos workload, its plain-Python oracle and the Jepsen-style checks.

Shared by the local chaos suite (``tests/chaos/test_local_chaos.py``) and the
cluster script (``scripts/chaos_cluster.py``). Everything here except
:func:`run_clients` and :class:`StoreSampler` is pure: the calls a seed
produces, the value each call must return, and :func:`summarize`, which turns
what was observed (call outcomes, execution log lines, store samples, kills,
outages) into the one summary line.

Definitions used by :func:`summarize`:

* **lost**: a submitted call that did not return (error or timeout), plus
  every promise that went from settled back to pending or vanished from the
  store between two samples (its settlement was lost).
* **wrong**: a call that returned something other than the oracle's value.
* **re_executed_resolved**: an ``execution_started`` line of a leaf function
  logged after the store had recorded that leaf's promise as settled
  (``settledAt``); at-least-once execution allows a leaf to run again while
  its promise is pending, never once it is settled.
* **recovery** of one kill: for every promise the killed process had started
  and not finished at the kill (and the store had not settled), the time from
  the kill to the next progress of that promise (its next
  ``execution_started`` anywhere, its settle in the store, or, for a
  draining worker, its own ``execution_finished``); the kill's recovery is
  the slowest of them. A promise with no progress at all counts from the
  kill to the end of the run.
* **stalls_over_5s**: kills whose recovery exceeded 5 s, plus gaps of more
  than 5 s between two execution events of one outstanding call (its root)
  that do not overlap a server outage: work the killed process had been sent
  but not started shows up here, since its log never names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from service.patterns.bounded import process_value
from service.patterns.enrich import enrich_record, record_exists
from service.patterns.links import SyntheticGraph

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from service.runtime import Runtime

#: Functions whose bodies are leaves (no durable children): the ones that must
#: never run again once their promise is settled.
LEAF_FUNCTIONS = frozenset({"enrich_one", "process_one", "fetch_links"})
#: A kill recovery or a call's progress gap longer than this is a stall.
STALL_SECONDS = 5.0
#: Largest factorial the workload asks for.
MAX_FACTORIAL = 150
#: Environment of the synthetic crawl graph the oracle assumes (the defaults).
CRAWL_PAGES, CRAWL_LINKS, CRAWL_MAX_PAGES = 100, 3, 1000


@dataclass(frozen=True)
class CallSpec:
    """One invocation the workload submits: pattern, arguments and its root id."""

    id: str
    pattern: str
    args: tuple[Any, ...]


def make_calls(seed: int, client: int, count: int) -> list[CallSpec]:
    """The first ``count`` calls of client ``client`` for ``seed`` (same seed, same calls).

    Ids embed seed and client, so every call is fresh work in a fresh store
    (only the factorial cache, ``factorial-{k}``, is shared between calls).
    """
    rng = random.Random(f"{seed}:{client}")
    calls = []
    kinds = ["factorial"] * 3 + ["parallel_enrich"] * 2 + ["enrich_batch", "enrich_tolerant"]
    kinds += ["process_bounded", "crawl"]
    for i in range(count):
        kind = rng.choice(kinds)
        base = rng.randrange(0, 10**6)
        args: tuple[Any, ...]
        if kind == "factorial":
            args = (rng.randint(1, MAX_FACTORIAL),)
        elif kind in ("parallel_enrich", "enrich_batch"):
            args = (list(range(base, base + rng.randint(100, 300))),)
        elif kind == "enrich_tolerant":
            ids: list[int | str] = list(range(base, base + rng.randint(50, 200)))
            for j in rng.sample(range(len(ids)), k=max(1, len(ids) // 20)):
                ids[j] = f"missing-{base}-{j}"
            args = (ids,)
        elif kind == "process_bounded":
            size = rng.randint(50, 200)
            args = ([rng.randint(-1000, 1000) for _ in range(size)], rng.randint(5, 25))
        else:
            args = ({"url": SyntheticGraph.url(rng.randrange(CRAWL_PAGES)), "depth": 2},)
        calls.append(CallSpec(f"chaos{seed}-c{client}-{i}-{kind}", kind, args))
    return calls


def synthetic_crawl(url: str, depth: int) -> dict[str, Any]:
    """What ``crawl`` returns on the default synthetic graph, computed in plain Python."""
    graph = SyntheticGraph(CRAWL_PAGES, CRAWL_LINKS)
    frontier, known = [url], {url}
    pages: list[dict[str, Any]] = []
    for level in range(depth + 1):
        following: list[str] = []
        for page_url in frontier:
            page = graph.page_of(page_url)
            links = graph.out_links(page) if page is not None else []
            pages.append({"url": page_url, "depth": level, "links": links})
            for link in links:
                if link not in known and len(known) < CRAWL_MAX_PAGES:
                    known.add(link)
                    following.append(link)
        if not following:
            break
        frontier = following
    return {"url": url, "depth": depth, "visited": len(pages), "pages": pages}


def oracle(call: CallSpec) -> Any:
    """The value ``call`` must return, computed without Resonate."""
    if call.pattern == "factorial":
        return math.factorial(call.args[0])
    if call.pattern in ("parallel_enrich", "enrich_batch"):
        return [enrich_record(i) for i in call.args[0]]
    if call.pattern == "enrich_tolerant":
        return [
            {"id": i, "ok": True, "value": enrich_record(i)} if record_exists(i) else {"id": i}
            for i in call.args[0]
        ]
    if call.pattern == "process_bounded":
        return [process_value(x) for x in call.args[0]]
    if call.pattern == "crawl":
        return synthetic_crawl(call.args[0]["url"], call.args[0]["depth"])
    msg = f"no oracle for {call.pattern}"
    raise ValueError(msg)


def matches(call: CallSpec, result: Any) -> bool:
    """Whether ``result`` is the oracle's value.

    A failed ``enrich_tolerant`` child matches on id, ``ok=False`` and any reason.
    """
    expected = oracle(call)
    if call.pattern != "enrich_tolerant":
        return bool(result == expected)
    if not isinstance(result, list) or len(result) != len(expected):
        return False
    for want, got in zip(expected, result, strict=True):
        if "ok" in want:
            if got != want:
                return False
        elif not (
            isinstance(got, dict)
            and got.get("id") == want["id"]
            and got.get("ok") is False
            and isinstance(got.get("error"), str)
            and got["error"]
        ):
            return False
    return True


@dataclass
class CallOutcome:
    """What happened to one submitted call (wall-clock seconds)."""

    spec: CallSpec
    submitted: float
    finished: float | None = None
    result: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Kill:
    """One injected failure of a worker: when, how, and which log lines are that process's.

    ``events`` are the execution events of the killed process (its log from
    its start to its exit), so what it held at ``at`` can be read from them.
    """

    at: float
    signal: str
    target: str
    events: tuple[dict[str, Any], ...] = ()


@dataclass
class StoreView:
    """What the store samples showed: regressions, vanished promises, settle times."""

    samples: int = 0
    #: Last state seen per promise id.
    states: dict[str, str] = field(default_factory=dict)
    #: ``settledAt`` (epoch seconds) per settled promise id.
    settled_at: dict[str, float] = field(default_factory=dict)
    #: Ids seen settled, then pending: each is a lost settlement.
    regressions: set[str] = field(default_factory=set)
    #: Ids seen once, then missing from a later complete scan.
    vanished: set[str] = field(default_factory=set)

    def observe(self, records: Iterable[dict[str, Any]]) -> None:
        """Fold one complete scan of the store into the view."""
        seen: set[str] = set()
        for rec in records:
            pid, state = rec["id"], rec["state"]
            seen.add(pid)
            before = self.states.get(pid)
            if before is not None and before != "pending" and state == "pending":
                self.regressions.add(pid)
            self.states[pid] = state
            settled = rec.get("settledAt", rec.get("completedOn"))
            if state != "pending" and isinstance(settled, int | float):
                self.settled_at.setdefault(pid, settled / 1000)
        self.vanished |= set(self.states) - seen
        self.samples += 1


def parse_log_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The execution events of a worker log (JSON lines), each with ``ts`` in epoch seconds."""
    events = []
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if event.get("event") not in ("execution_started", "execution_finished"):
            continue
        stamp = event.get("timestamp")
        if not isinstance(stamp, str):
            continue
        event["ts"] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        events.append(event)
    return events


def held_at(events: Iterable[dict[str, Any]], at: float) -> set[str]:
    """Promise ids a process had started and not finished at ``at``."""
    running: dict[str, int] = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        if e["ts"] > at:
            break
        pid = e["promise_id"]
        running[pid] = running.get(pid, 0) + (1 if e["event"] == "execution_started" else -1)
    return {pid for pid, n in running.items() if n > 0}


def _key(event: dict[str, Any]) -> tuple[str, str, float]:
    """Identity of one log line across separate parses of the same log."""
    return event["event"], event["promise_id"], event["ts"]


def kill_recovery(
    kill: Kill, all_events: list[dict[str, Any]], end: float, settled_at: dict[str, float]
) -> tuple[float | None, list[str]]:
    """Seconds from ``kill`` to the next progress of the slowest promise it held, and those ids.

    None when the process held nothing at the kill. A promise the store had
    settled by the kill was not held: its ``execution_finished`` line can be
    lost with the process (log lines are flushed once per loop tick), and its
    settle time counts as progress for the same reason.
    """
    held = {pid for pid in held_at(kill.events, kill.at) if settled_at.get(pid, math.inf) > kill.at}
    if not held:
        return None, []
    own = {_key(e) for e in kill.events}
    progress: dict[str, float] = {pid: settled_at[pid] for pid in held if pid in settled_at}
    for e in all_events:
        pid = e["promise_id"]
        if pid not in held or e["ts"] <= kill.at:
            continue
        moved = e["event"] == "execution_started" or _key(e) in own
        if moved and e["ts"] < progress.get(pid, math.inf):
            progress[pid] = e["ts"]
    waits = {pid: progress.get(pid, end) - kill.at for pid in held}
    worst = max(waits.values())
    return worst, sorted(pid for pid, w in waits.items() if w > STALL_SECONDS)


def call_gaps(
    outcome: CallOutcome,
    events: list[dict[str, Any]],
    outages: list[tuple[float, float]],
    end: float,
) -> list[tuple[float, float]]:
    """Gaps over 5 s between progress events of one call's root that no outage explains."""
    stamps = sorted([outcome.submitted, *(e["ts"] for e in events), outcome.finished or end])
    gaps = []
    for a, b in itertools.pairwise(stamps):
        if b - a <= STALL_SECONDS:
            continue
        if any(a < up and b > down for down, up in outages):
            continue
        gaps.append((a, b))
    return gaps


@dataclass(frozen=True)
class Summary:
    """The figures of one chaos run."""

    kills: int
    calls: int
    promises: int
    lost: int
    wrong: int
    re_executed_resolved: int
    recovery_max: float
    stalls_over_5s: int
    #: Ids behind the counts, for the failure message.
    details: dict[str, list[str]] = field(default_factory=dict, compare=False)
    #: Recovery of every kill whose process held work, seconds, in kill order.
    recoveries: tuple[float, ...] = field(default=(), compare=False)

    def recovery_line(self) -> str:
        """Median and slowest kill recovery (a diagnostic beside the summary line)."""
        if not self.recoveries:
            return "recovery: no kill found work in flight"
        return (
            f"recovery: p50={statistics.median(self.recoveries):.2f}s "
            f"max={max(self.recoveries):.2f}s over {len(self.recoveries)} kills with work in flight"
        )

    def line(self) -> str:
        """The one summary line."""
        return (
            f"kills={self.kills} calls={self.calls} promises={self.promises} "
            f"lost={self.lost} wrong={self.wrong} "
            f"re_executed_resolved={self.re_executed_resolved} "
            f"recovery_max={self.recovery_max:.2f}s stalls_over_5s={self.stalls_over_5s}"
        )


def summarize(
    outcomes: list[CallOutcome],
    events: list[dict[str, Any]],
    store: StoreView,
    kills: list[Kill],
    outages: list[tuple[float, float]],
    end: float,
) -> Summary:
    """Check everything observed in one run against the oracle and the store."""
    lost = [o.spec.id for o in outcomes if o.finished is None or o.error is not None]
    wrong = [
        o.spec.id
        for o in outcomes
        if o.finished is not None and o.error is None and not matches(o.spec, o.result)
    ]
    lost_settled = sorted(store.regressions | store.vanished)
    re_run = sorted(
        {
            e["promise_id"]
            for e in events
            if e["event"] == "execution_started"
            and e.get("function") in LEAF_FUNCTIONS
            and e["promise_id"] in store.settled_at
            and e["ts"] > store.settled_at[e["promise_id"]] + 0.001
        }
    )
    recoveries: list[float] = []
    stalled: list[str] = []
    for kill in kills:
        worst, slow = kill_recovery(kill, events, end, store.settled_at)
        if worst is not None:
            recoveries.append(worst)
            if worst > STALL_SECONDS:
                stalled.append(f"{kill.target}@{kill.at:.1f}: {slow[:5]}")
    by_root: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_root.setdefault(e.get("root_id", ""), []).append(e)
    for o in outcomes:
        for a, b in call_gaps(o, by_root.get(o.spec.id, []), outages, end):
            stalled.append(f"{o.spec.id}: no progress for {b - a:.1f}s from {a:.1f}")
    return Summary(
        kills=len(kills),
        calls=len(outcomes),
        promises=len(store.states),
        lost=len(lost) + len(lost_settled),
        wrong=len(wrong),
        re_executed_resolved=len(re_run),
        recovery_max=max(recoveries, default=0.0),
        recoveries=tuple(recoveries),
        stalls_over_5s=len(stalled),
        details={
            "lost_calls": lost,
            "lost_settlements": lost_settled,
            "wrong": wrong,
            "re_executed_resolved": re_run,
            "stalls": stalled,
            "errors": [f"{o.spec.id}: {o.error}" for o in outcomes if o.error][:20],
        },
    )


class StoreSampler:
    """Scans every promise of a server through ``promise.search`` at intervals.

    A scan that fails (the server is down) is skipped, not counted.
    """

    def __init__(
        self, url: str, view: StoreView, *, interval: float = 2.0, token: str | None = None
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.view = view
        self.interval = interval
        #: Bearer JWT for a server with auth on (sent as ``head.auth``).
        self.token = token

    async def scan(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Every promise record, page by page."""
        from resonate_base import PROTOCOL_VERSION

        records: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            data: dict[str, Any] = {"limit": 1000}
            if cursor is not None:
                data["cursor"] = cursor
            head = {"corrId": "chaos", "version": PROTOCOL_VERSION}
            if self.token:
                head["auth"] = self.token
            envelope = {"kind": "promise.search", "head": head, "data": data}
            async with session.post(self.url, json=envelope) as resp:
                body = await resp.json(content_type=None)
            if resp.status != 200:
                msg = f"promise.search answered {resp.status}: {body}"
                raise RuntimeError(msg)
            records.extend(body["data"]["promises"])
            cursor = body["data"].get("cursor")
            if cursor is None:
                return records

    async def sample_once(self, session: aiohttp.ClientSession) -> bool:
        """One complete scan folded into the view; False if the server could not answer."""
        try:
            records = await asyncio.wait_for(self.scan(session), 30)
        except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError, ValueError):
            return False
        self.view.observe(records)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set, then once more."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                await self.sample_once(session)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
            for _ in range(20):
                if await self.sample_once(session):
                    return
                await asyncio.sleep(1)


async def run_client(
    runtime: Runtime,
    calls: list[CallSpec],
    outcomes: list[CallOutcome],
    submitting: Callable[[], bool],
    *,
    call_timeout: float,
) -> None:
    """Submit ``calls`` one after another while ``submitting()``; record each outcome."""
    from service.client import invoke
    from service.patterns.registry import pattern

    for spec in calls:
        if not submitting():
            return
        outcome = CallOutcome(spec, time.time())
        outcomes.append(outcome)
        try:
            result = await asyncio.wait_for(
                invoke(runtime, pattern(spec.pattern), spec.args, promise_id=spec.id),
                call_timeout,
            )
        except TimeoutError:
            outcome.error = f"no result within {call_timeout:g}s"
            continue
        except Exception as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            continue
        outcome.result = result.result
        outcome.finished = time.time()
