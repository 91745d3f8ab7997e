"""Recursive crawl over a link graph with a depth counter.

``crawl({"url": u, "depth": d})`` fetches the root page, then recurses one
level at a time through ``crawl_level``: every page of the current frontier
is fetched by its own durable ``fetch_links`` child (in parallel), links not
seen before form the next frontier, and ``crawl_level`` calls itself with
the depth counter decremented until it reaches zero. The set of seen URLs
travels down the recursion, so every URL is fetched at most once per crawl
even when the graph has cycles, and the result is the same on every replay:
the pages in breadth-first order, each with the depth it was found at.
A hard cap on depth (RESONATE_PATTERNS_MAX_CRAWL_DEPTH) and on pages
(RESONATE_PATTERNS_MAX_CRAWL_PAGES) bounds the work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resonate.retry import Exponential

from service.errors import InputError
from service.patterns.deps import PatternDeps
from service.patterns.links import SyntheticGraph
from service.patterns.steps import spawn_local
from service.patterns.validation import require_crawl_spec, require_url
from service.telemetry.instrument import Telemetry, instrumented

if TYPE_CHECKING:
    from resonate.context import Context

    from service.config import Settings
    from service.patterns.links import LinkSource

#: Registered name of :func:`crawl`.
CRAWL = "crawl"
#: Registered name of :func:`fetch_links`, the leaf.
FETCH_LINKS = "fetch_links"
#: Name of the :func:`crawl_level` step (a metrics label).
CRAWL_LEVEL = "crawl_level"

#: A fetch can fail transiently (network); retry a few times before giving up on the page.
FETCH_RETRY = Exponential(delay=1, max_retries=3, factor=2, max_delay=8)


def check_fetch_links(_settings: Settings, url: object) -> str:
    """``url`` if ``fetch_links`` accepts it: an http(s) URL (else InputError)."""
    return require_url(FETCH_LINKS, url)


def check_crawl(
    settings: Settings, spec: object, links: LinkSource | None = None
) -> tuple[str, int]:
    """``(url, depth)`` if ``crawl`` accepts ``spec`` (else InputError).

    ``spec`` is ``{"url": ..., "depth": ...}`` with depth at most the
    configured limit, and the link source must be able to start at ``url``.
    ``links`` is the process's link source; a client has none and checks
    against the configured synthetic graph (an HTTP source takes any root).
    """
    url, depth = require_crawl_spec(CRAWL, spec, settings.max_crawl_depth)
    if links is None and settings.link_source == "synthetic":
        links = SyntheticGraph(settings.synthetic_pages, settings.synthetic_links)
    problem = links.check_root(url) if links is not None else None
    if problem is not None:
        raise InputError(CRAWL, problem)
    return url, depth


@instrumented(FETCH_LINKS)
async def fetch_links(ctx: Context, url: object) -> list[str]:
    """The outgoing links of one page, from the configured link source."""
    deps = ctx.get_dependency(PatternDeps)
    page = check_fetch_links(deps.settings, url)
    await deps.simulated_io()
    return await deps.links.links(page)


@instrumented(CRAWL_LEVEL)
async def crawl_level(
    ctx: Context, frontier: list[str], seen: list[str], level: int, remaining: int
) -> list[dict[str, Any]]:
    """Fetch one frontier in parallel, then recurse into the next with ``remaining - 1``."""
    deps = ctx.get_dependency(PatternDeps)
    children = [spawn_local(ctx, fetch_links, url, retry_policy=FETCH_RETRY) for url in frontier]
    ctx.get_dependency(Telemetry).metrics.fanout(CRAWL, len(children))
    known = set(seen)
    pages: list[dict[str, Any]] = []
    next_frontier: list[str] = []
    for url, child in zip(frontier, children, strict=True):
        page: dict[str, Any] = {"url": url, "depth": level}
        try:
            links: list[str] = await child
        except Exception as exc:
            page["links"] = []
            page["error"] = str(exc)
            pages.append(page)
            continue
        page["links"] = links
        pages.append(page)
        for link in links:
            if link not in known and len(known) < deps.settings.max_crawl_pages:
                known.add(link)
                next_frontier.append(link)
    if remaining > 0 and next_frontier:
        deeper = await spawn_local(
            ctx, crawl_level, next_frontier, seen + next_frontier, level + 1, remaining - 1
        )
        pages.extend(deeper)
    return pages


@instrumented(CRAWL)
async def crawl(ctx: Context, spec: object) -> dict[str, Any]:
    """Crawl from ``spec["url"]`` down to ``spec["depth"]`` link hops."""
    deps = ctx.get_dependency(PatternDeps)
    url, depth = check_crawl(deps.settings, spec, deps.links)
    pages: list[dict[str, Any]] = await spawn_local(ctx, crawl_level, [url], [url], 0, depth)
    return {"url": url, "depth": depth, "visited": len(pages), "pages": pages}
