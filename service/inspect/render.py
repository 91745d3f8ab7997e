"""Render what :mod:`service.inspect.store` reads for people.

``get`` and ``ls`` lines, the progress line of a waiting ``call``, and the
``call --summary`` picture of a large result: pure functions of the
JSON-ready dicts the store module returns, tested without a server.
"""

from __future__ import annotations

import json
import time
from typing import Any

#: Items shown by a summary of a list or an object.
SUMMARY_ITEMS = 3
#: A result whose compact JSON is at most this long is printed whole even with --summary.
SMALL_RESULT_CHARS = 100


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def format_ms(ms: float) -> str:
    """A duration for people: ``12 ms``, ``2.3 s``, ``4m05s``."""
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def format_time(epoch_ms: int) -> str:
    """A server timestamp in this machine's local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_ms / 1000))


def summarize(value: Any, items: int = SUMMARY_ITEMS) -> dict[str, Any]:
    """A compact, JSON-ready picture of a (large) result: its shape, counts, first items.

    A list gives ``count`` and its ``first`` items, plus ``ok``/``failed``
    counts when its items carry an ``ok`` flag (``enrich_tolerant``); an
    object gives its key count and each of its first keys summarized one
    level down; anything else is itself (a long string is cut).
    """
    if isinstance(value, list):
        out: dict[str, Any] = {"type": "list", "count": len(value), "first": value[:items]}
        flags = [v.get("ok") for v in value if isinstance(v, dict)]
        if flags and len(flags) == len(value) and all(isinstance(f, bool) for f in flags):
            out["ok"] = sum(flags)
            out["failed"] = len(flags) - out["ok"]
        return out
    if isinstance(value, dict):
        first = {k: _brief(v) for k, v in list(value.items())[: max(items, 4)]}
        return {"type": "object", "keys": len(value), "first": first}
    if isinstance(value, str):
        return {"type": "string", "length": len(value), "value": shorten(value, 200)}
    return {"type": type(value).__name__, "value": value}


def _brief(value: Any) -> Any:
    if isinstance(value, list):
        return f"list of {len(value)} items"
    if isinstance(value, dict):
        return f"object with {len(value)} keys"
    if isinstance(value, str):
        return shorten(value, 80)
    return value


def summary_lines(value: Any) -> list[str]:
    """:func:`summarize` as text lines (the value itself when it is small)."""
    compact = json.dumps(value)
    if len(compact) <= SMALL_RESULT_CHARS:
        return [compact]
    s = summarize(value)
    if s["type"] == "list":
        head = f"list of {s['count']} items"
        if "ok" in s:
            head += f" ({s['ok']} ok, {s['failed']} failed)"
        lines = [head + (f"; first {len(s['first'])}:" if s["first"] else "")]
        lines += [f"  {shorten(json.dumps(item), 100)}" for item in s["first"]]
        if s["count"] > len(s["first"]):
            lines.append(f"  ... {s['count'] - len(s['first'])} more")
        return lines
    if s["type"] == "object":
        lines = [f"object with {s['keys']} keys:"]
        lines += [f"  {k}: {shorten(json.dumps(v), 100)}" for k, v in s["first"].items()]
        if s["keys"] > len(s["first"]):
            lines.append(f"  ... {s['keys'] - len(s['first'])} more keys")
        return lines
    return [shorten(compact, 200)]


def full_result_command(promise_id: str) -> str:
    """The command that prints a call's whole result."""
    return f"resonate-patterns get {promise_id} --json"


def full_result_hint(promise_id: str) -> str:
    return f"full result: {full_result_command(promise_id)}"


#: Said instead of :func:`full_result_hint` when the store ends with the process.
NOT_KEPT_HINT = (
    "full result: not kept (in-memory embedded store); use --json, "
    "or set RESONATE_PATTERNS_EMBEDDED_STORE or RESONATE_URL"
)


def progress_text(label: str, settled: int, created: int, elapsed_seconds: float) -> str:
    """The progress line of a waiting ``call`` (without the carriage return)."""
    return f"{label}: {settled}/{created} children settled · {elapsed_seconds:.1f} s"


def call_text(function: str | None, args: str | None) -> str:
    """``factorial(20)`` from a function name and its JSON argument list text (maybe cut)."""
    name = function or "-"
    if args is None:
        return name
    inner = args[1:] if args.startswith("[") else args
    inner = inner[:-1] if inner.endswith("]") and args.startswith("[") else inner
    return f"{name}({inner})"


def describe_lines(d: dict[str, Any], *, now_ms: int | None = None) -> list[str]:
    """A description (:func:`service.inspect.store.describe`) as ``get`` prints it."""
    call = call_text(d["pattern"], d["args"])
    lines = [
        f"{d['id']}  {d['state']}",
        f"  kind      {d['kind']}" + (f" (under {d['root']})" if d["kind"] == "child" else ""),
        f"  pattern   {call}",
    ]
    if d["state"] == "resolved":
        value = summary_lines(d["value"])
        lines.append(f"  value     {value[0]}")
        lines += [f"            {line}" for line in value[1:]]
        if len(value) > 1:
            lines.append(f"            ({full_result_hint(d['id'])})")
    elif d["error"] is not None:
        lines.append(f"  error     {d['error']}")
    lines.append(f"  created   {format_time(d['created_at'])}")
    if d["settled_at"] is not None:
        lines.append(
            f"  settled   {format_time(d['settled_at'])} (took {format_ms(d['duration_ms'])})"
        )
    else:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        lines.append(f"  running   for {format_ms(max(0, now - d['created_at']))}")
    c = d["children"]
    lines.append(
        f"  children  {c['created']} created, {c['settled']} settled, {c['pending']} pending"
    )
    return lines


def invocation_line(e: dict[str, Any], *, now_ms: int | None = None) -> str:
    """One ``ls`` line: id, state, pattern and args, start time, duration (or age)."""
    if e["duration_ms"] is not None:
        took = format_ms(e["duration_ms"])
    else:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        took = "running " + format_ms(max(0, now - e["created_at"]))
    call = call_text(e["pattern"], shorten(e["args"], 40) if e["args"] else None)
    return f"{e['id']:<34} {e['state']:<17} {format_time(e['created_at'])}  {took:>14}  {call}"


#: The header over :func:`invocation_line` rows.
LS_HEADER = f"{'ID':<34} {'STATE':<17} {'CREATED':<19}  {'TOOK':>14}  CALL"
