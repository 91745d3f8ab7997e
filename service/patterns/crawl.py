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
from service.patterns.steps import spawn_local
from service.patterns.validation import require_crawl_spec, require_url
from service.telemetry.instrument import Telemetry, instrumented

if TYPE_CHECKING:
    from resonate.context import Context

#: A fetch can fail transiently (network); retry a few times before giving up on the page.
FETCH_RETRY = Exponential(delay=1, max_retries=3, factor=2, max_delay=8)


@instrumented("fetch_links")
async def fetch_links(ctx: Context, url: object) -> list[str]:
    """The outgoing links of one page, from the configured link source."""
    deps = ctx.get_dependency(PatternDeps)
    page = require_url("fetch_links", url)
    await deps.simulated_io()
    return await deps.links.links(page)


@instrumented("crawl_level")
async def crawl_level(
    ctx: Context, frontier: list[str], seen: list[str], level: int, remaining: int
) -> list[dict[str, Any]]:
    """Fetch one frontier in parallel, then recurse into the next with ``remaining - 1``."""
    deps = ctx.get_dependency(PatternDeps)
    children = [spawn_local(ctx, fetch_links, url, retry_policy=FETCH_RETRY) for url in frontier]
    ctx.get_dependency(Telemetry).metrics.fanout("crawl", len(children))
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


@instrumented("crawl")
async def crawl(ctx: Context, spec: object) -> dict[str, Any]:
    """Crawl from ``spec["url"]`` down to ``spec["depth"]`` link hops."""
    deps = ctx.get_dependency(PatternDeps)
    url, depth = require_crawl_spec("crawl", spec, deps.settings.max_crawl_depth)
    problem = deps.links.check_root(url)
    if problem is not None:
        raise InputError("crawl", problem)
    pages: list[dict[str, Any]] = await spawn_local(ctx, crawl_level, [url], [url], 0, depth)
    return {"url": url, "depth": depth, "visited": len(pages), "pages": pages}
