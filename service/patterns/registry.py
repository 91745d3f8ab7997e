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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resonate.retry import Never

from service.errors import InputError, UsageError
from service.patterns import bounded, crawl, enrich, factorial
from service.patterns.bounded import PROCESS_BOUNDED, PROCESS_ONE
from service.patterns.crawl import CRAWL, CRAWL_LEVEL, FETCH_LINKS
from service.patterns.enrich import ENRICH_BATCH, ENRICH_ONE, ENRICH_TOLERANT, PARALLEL_ENRICH
from service.patterns.factorial import FACTORIAL
from service.patterns.validation import word_value

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resonate.resonate import Resonate

    from service.config import Settings


def _shown(token: str) -> str:
    """``token`` quoted for an error line, cut short when long."""
    text = repr(token)
    return text if len(text) <= 60 else text[:57] + "..."


def _record_id(token: str) -> int | str:
    return word_value(token, "ID")


def _int(token: str, what: str) -> int:
    value = word_value(token.strip(), what)
    if not isinstance(value, int):
        raise UsageError(f"{what} must be an integer, got {_shown(token)}")
    return value


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
    #: The durable function's own input check, ``check(settings, *args)``: the
    #: function runs it first, the client before storing anything (InputError).
    check: Callable[..., object]
    #: How many positional arguments the function takes.
    arity: int = 1
    #: The keyed id of an invocation, when not ``{name}-{digest of the arguments}``.
    key: Callable[[tuple[Any, ...]], str] | None = None

    def keyed_id(self, args: tuple[Any, ...]) -> str:
        """The stable promise id of this invocation: ``factorial-{n}``, else a digest."""
        if self.key is not None:
            return self.key(args)
        canonical = json.dumps(list(args), sort_keys=True, separators=(",", ":"))
        return f"{self.name}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"

    def validate(self, settings: Settings, args: tuple[Any, ...]) -> None:
        """Check argument count and values exactly as the durable function will."""
        if len(args) != self.arity:
            raise InputError(self.name, f"takes {self.arity} argument(s), got {len(args)}")
        self.check(settings, *args)


def _parse_factorial(argv: list[str]) -> tuple[Any, ...]:
    _exactly(FACTORIAL, argv, 1, "N")
    return (_int(argv[0], "N"),)


def _parse_ids(name: str) -> Callable[[list[str]], tuple[Any, ...]]:
    def parse(argv: list[str]) -> tuple[Any, ...]:
        if not argv:
            raise UsageError(f"{name} takes ID [ID ...], got no ids")
        return ([_record_id(a) for a in argv],)

    return parse


def _parse_bounded(argv: list[str]) -> tuple[Any, ...]:
    if len(argv) < 2:
        raise UsageError(f"{PROCESS_BOUNDED} takes K ITEM [ITEM ...]")
    k = _int(argv[0], "K")
    return ([_int(a, "ITEM") for a in argv[1:]], k)


def _parse_crawl(argv: list[str]) -> tuple[Any, ...]:
    if len(argv) not in (1, 2):
        raise UsageError(f"{CRAWL} takes URL [DEPTH], got {len(argv)} argument(s)")
    depth = _int(argv[1], "DEPTH") if len(argv) == 2 else 1
    return ({"url": argv[0], "depth": depth},)


def _parse_one(name: str, convert: Callable[[str], Any]) -> Callable[[list[str]], tuple[Any, ...]]:
    def parse(argv: list[str]) -> tuple[Any, ...]:
        _exactly(name, argv, 1, "one argument")
        return (convert(argv[0]),)

    return parse


PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        FACTORIAL,
        factorial.factorial,
        "N",
        "n! by recursive rpc; factorial-{n} promises are a permanent cache",
        _parse_factorial,
        factorial.check_factorial,
        key=lambda args: factorial.factorial_id(args[0]),
    ),
    Pattern(
        ENRICH_BATCH,
        enrich.enrich_batch,
        "ID [ID ...]",
        "enrich every id with a local child each; fails on the first error",
        _parse_ids(ENRICH_BATCH),
        enrich.check_enrich_batch,
    ),
    Pattern(
        PARALLEL_ENRICH,
        enrich.parallel_enrich,
        "ID [ID ...]",
        "enrich every id with an rpc to the enrichment target group",
        _parse_ids(PARALLEL_ENRICH),
        enrich.check_parallel_enrich,
    ),
    Pattern(
        ENRICH_TOLERANT,
        enrich.enrich_tolerant,
        "ID [ID ...]",
        "enrich every id, collecting per-id success or error in input order",
        _parse_ids(ENRICH_TOLERANT),
        enrich.check_enrich_tolerant,
    ),
    Pattern(
        PROCESS_BOUNDED,
        bounded.process_bounded,
        "K ITEM [ITEM ...]",
        "square every item with at most K children in flight",
        _parse_bounded,
        bounded.check_process_bounded,
        arity=2,
    ),
    Pattern(
        CRAWL,
        crawl.crawl,
        "URL [DEPTH]",
        "crawl a link graph breadth-first down to DEPTH hops (default 1)",
        _parse_crawl,
        crawl.check_crawl,
    ),
    Pattern(
        ENRICH_ONE,
        enrich.enrich_one,
        "ID",
        "enrich one record (the fan-out leaf)",
        _parse_one(ENRICH_ONE, _record_id),
        enrich.check_enrich_one,
    ),
    Pattern(
        PROCESS_ONE,
        bounded.process_one,
        "ITEM",
        "square one item (the bounded fan-out leaf)",
        _parse_one(PROCESS_ONE, lambda t: _int(t, "ITEM")),
        bounded.check_process_one,
    ),
    Pattern(
        FETCH_LINKS,
        crawl.fetch_links,
        "URL",
        "the links of one page (the crawl leaf)",
        _parse_one(FETCH_LINKS, str),
        crawl.check_fetch_links,
    ),
)

BY_NAME: dict[str, Pattern] = {p.name: p for p in PATTERNS}

#: Functions the patterns call as children (``ctx.run`` or ``ctx.rpc``), each
#: counted as a ``child`` call; a worker creates their series up front.
CHILD_FUNCTIONS = (FACTORIAL, ENRICH_ONE, PROCESS_ONE, FETCH_LINKS, CRAWL_LEVEL)
#: Functions whose keyed cache their levels read inline, counted as ``lookup`` calls.
LOOKUP_FUNCTIONS = (FACTORIAL,)


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
