"""The catalogue of patterns: names, CLI argument shapes, keyed ids, registration.

:data:`PATTERNS` is the one list of invocable functions. :func:`register_all`
registers every one of them on a :class:`~resonate.resonate.Resonate` under
its name (so every worker of a group can run every pattern), and the client
uses the same entries to parse command-line arguments, validate them before
anything is stored, and derive the keyed promise id of an invocation.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resonate.retry import Never

from service.errors import InputError, UsageError
from service.patterns import bounded, crawl, enrich, factorial
from service.patterns.validation import (
    MAX_FACTORIAL_N,
    require_crawl_spec,
    require_int,
    require_items,
    require_record_id,
    require_record_ids,
    require_url,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resonate.resonate import Resonate

    from service.config import Settings

_INT_RE = re.compile(r"^-?\d+$")


def _shown(token: str) -> str:
    """``token`` quoted for an error line, cut short when long."""
    text = repr(token)
    return text if len(text) <= 60 else text[:57] + "..."


def _record_id(token: str) -> int | str:
    if not _INT_RE.match(token):
        return token
    try:
        return int(token)
    except ValueError:  # more digits than Python converts (4300): never a valid id
        raise UsageError(f"ID {_shown(token)} has too many digits") from None


def _int(token: str, what: str) -> int:
    if not _INT_RE.match(token.strip()):
        raise UsageError(f"{what} must be an integer, got {_shown(token)}")
    try:
        return int(token)
    except ValueError:  # more digits than Python converts (4300)
        raise UsageError(f"{what} has too many digits ({len(token.strip())})") from None


def _exactly(name: str, argv: list[str], count: int, usage: str) -> None:
    if len(argv) != count:
        raise UsageError(f"{name} takes {usage}, got {len(argv)} argument(s)")


@dataclass(frozen=True)
class Pattern:
    """One invocable durable function and how the CLI talks to it."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    usage: str
    summary: str
    #: Command-line words -> positional call arguments (raises UsageError).
    parse: Callable[[list[str]], tuple[Any, ...]]
    #: Raises InputError if the durable function would reject these arguments.
    check: Callable[[Settings, tuple[Any, ...]], None]

    def keyed_id(self, args: tuple[Any, ...]) -> str:
        """The stable promise id of this invocation: ``factorial-{n}``, else a digest."""
        if self.name == "factorial":
            return factorial.factorial_id(args[0])
        canonical = json.dumps(list(args), sort_keys=True, separators=(",", ":"))
        return f"{self.name}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"

    def validate(self, settings: Settings, args: tuple[Any, ...]) -> None:
        """Check argument count and values exactly as the durable function will."""
        self.check(settings, args)


def _parse_factorial(argv: list[str]) -> tuple[Any, ...]:
    _exactly("factorial", argv, 1, "N")
    return (_int(argv[0], "N"),)


def _parse_ids(name: str) -> Callable[[list[str]], tuple[Any, ...]]:
    def parse(argv: list[str]) -> tuple[Any, ...]:
        if not argv:
            raise UsageError(f"{name} takes ID [ID ...], got no ids")
        return ([_record_id(a) for a in argv],)

    return parse


def _parse_bounded(argv: list[str]) -> tuple[Any, ...]:
    if len(argv) < 2:
        raise UsageError("process_bounded takes K ITEM [ITEM ...]")
    k = _int(argv[0], "K")
    return ([_int(a, "ITEM") for a in argv[1:]], k)


def _parse_crawl(argv: list[str]) -> tuple[Any, ...]:
    if len(argv) not in (1, 2):
        raise UsageError(f"crawl takes URL [DEPTH], got {len(argv)} argument(s)")
    depth = _int(argv[1], "DEPTH") if len(argv) == 2 else 1
    return ({"url": argv[0], "depth": depth},)


def _parse_one(name: str, convert: Callable[[str], Any]) -> Callable[[list[str]], tuple[Any, ...]]:
    def parse(argv: list[str]) -> tuple[Any, ...]:
        _exactly(name, argv, 1, "one argument")
        return (convert(argv[0]),)

    return parse


def _arity(name: str, args: tuple[Any, ...], count: int) -> None:
    if len(args) != count:
        raise InputError(name, f"takes {count} argument(s), got {len(args)}")


def _check_factorial(s: Settings, args: tuple[Any, ...]) -> None:
    _arity("factorial", args, 1)
    require_int("factorial", "n", args[0], 0, min(s.max_n, MAX_FACTORIAL_N))


def _check_ids(name: str) -> Callable[[Settings, tuple[Any, ...]], None]:
    def check(s: Settings, args: tuple[Any, ...]) -> None:
        _arity(name, args, 1)
        require_record_ids(name, args[0], s.max_fanout)

    return check


def _check_bounded(s: Settings, args: tuple[Any, ...]) -> None:
    _arity("process_bounded", args, 2)
    require_items("process_bounded", args[0], s.max_fanout)
    require_int("process_bounded", "k", args[1], 1, s.max_fanout)


def _check_crawl(s: Settings, args: tuple[Any, ...]) -> None:
    _arity("crawl", args, 1)
    url, _ = require_crawl_spec("crawl", args[0], s.max_crawl_depth)
    if s.link_source == "synthetic":
        from service.patterns.links import SyntheticGraph

        problem = SyntheticGraph(s.synthetic_pages, s.synthetic_links).check_root(url)
        if problem is not None:
            raise InputError("crawl", problem)


def _check_enrich_one(s: Settings, args: tuple[Any, ...]) -> None:
    _arity("enrich_one", args, 1)
    require_record_id("enrich_one", args[0])


def _check_process_one(s: Settings, args: tuple[Any, ...]) -> None:
    _arity("process_one", args, 1)
    require_items("process_one", [args[0]], 1)


def _check_fetch_links(s: Settings, args: tuple[Any, ...]) -> None:
    _arity("fetch_links", args, 1)
    require_url("fetch_links", args[0])


PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "factorial",
        factorial.factorial,
        "N",
        "n! by recursive rpc; factorial-{n} promises are a permanent cache",
        _parse_factorial,
        _check_factorial,
    ),
    Pattern(
        "enrich_batch",
        enrich.enrich_batch,
        "ID [ID ...]",
        "enrich every id with a local child each; fails on the first error",
        _parse_ids("enrich_batch"),
        _check_ids("enrich_batch"),
    ),
    Pattern(
        "parallel_enrich",
        enrich.parallel_enrich,
        "ID [ID ...]",
        "enrich every id with an rpc to the enrichment target group",
        _parse_ids("parallel_enrich"),
        _check_ids("parallel_enrich"),
    ),
    Pattern(
        "enrich_tolerant",
        enrich.enrich_tolerant,
        "ID [ID ...]",
        "enrich every id, collecting per-id success or error in input order",
        _parse_ids("enrich_tolerant"),
        _check_ids("enrich_tolerant"),
    ),
    Pattern(
        "process_bounded",
        bounded.process_bounded,
        "K ITEM [ITEM ...]",
        "square every item with at most K children in flight",
        _parse_bounded,
        _check_bounded,
    ),
    Pattern(
        "crawl",
        crawl.crawl,
        "URL [DEPTH]",
        "crawl a link graph breadth-first down to DEPTH hops (default 1)",
        _parse_crawl,
        _check_crawl,
    ),
    Pattern(
        "enrich_one",
        enrich.enrich_one,
        "ID",
        "enrich one record (the fan-out leaf)",
        _parse_one("enrich_one", _record_id),
        _check_enrich_one,
    ),
    Pattern(
        "process_one",
        bounded.process_one,
        "ITEM",
        "square one item (the bounded fan-out leaf)",
        _parse_one("process_one", lambda t: _int(t, "ITEM")),
        _check_process_one,
    ),
    Pattern(
        "fetch_links",
        crawl.fetch_links,
        "URL",
        "the links of one page (the crawl leaf)",
        _parse_one("fetch_links", str),
        _check_fetch_links,
    ),
)

BY_NAME: dict[str, Pattern] = {p.name: p for p in PATTERNS}

#: Functions the patterns call as children (``ctx.run`` or ``ctx.rpc``), each
#: counted as a ``child`` call; a worker creates their series up front.
CHILD_FUNCTIONS = (
    "factorial",
    "factorial_publish",
    "enrich_one",
    "process_one",
    "fetch_links",
    "crawl_level",
)
#: Functions whose keyed cache a lookup leaf reads, counted as ``lookup`` calls.
LOOKUP_FUNCTIONS = ("factorial",)


def pattern(name: str) -> Pattern:
    """Look a pattern up by name; an unknown name is a UsageError listing the known ones."""
    found = BY_NAME.get(name)
    if found is None:
        known = ", ".join(sorted(BY_NAME))
        raise UsageError(f"unknown pattern {name!r}; known patterns: {known}")
    return found


def register_all(resonate: Resonate) -> None:
    """Register every pattern under its name.

    Retries are off for every top-level function: each validates its input
    before any durable step, so a failure there is permanent; transient
    failures are retried per step (see each leaf's retry policy).
    """
    for p in PATTERNS:
        resonate.register(p.fn, name=p.name, retry_policy=Never())
