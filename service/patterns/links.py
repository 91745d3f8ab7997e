"""Where ``fetch_links`` reads a page's links from.

The default :class:`SyntheticGraph` is a deterministic, seeded link graph
(with cycles) so tests and demos need no network and always see the same
pages; :class:`HttpLinks` fetches real pages over HTTP and extracts their
``<a href>`` links. Both implement :class:`LinkSource`.
"""

from __future__ import annotations

import hashlib
from html.parser import HTMLParser
from typing import Protocol
from urllib.parse import urldefrag, urljoin, urlparse

import aiohttp

from service.errors import FetchError

#: Base of every page URL in the synthetic graph.
SYNTHETIC_BASE = "https://synthetic.local/p/"


class LinkSource(Protocol):
    """Reads the outgoing links of one page."""

    def check_root(self, url: str) -> str | None:
        """Return why ``url`` cannot start a crawl, or None if it can."""

    async def links(self, url: str) -> list[str]:
        """The page's outgoing links, in page order, without duplicates."""

    async def close(self) -> None:
        """Release any connections."""


class SyntheticGraph:
    """``pages`` pages, each linking to ``links_per_page`` pseudo-random pages.

    Page ``i`` lives at ``https://synthetic.local/p/{i}``; its links are a
    hash of ``(i, j)``, so the graph is the same in every process and run.
    """

    def __init__(self, pages: int, links_per_page: int) -> None:
        self.pages = pages
        self.links_per_page = links_per_page

    @staticmethod
    def url(page: int) -> str:
        return f"{SYNTHETIC_BASE}{page}"

    def page_of(self, url: str) -> int | None:
        if not url.startswith(SYNTHETIC_BASE):
            return None
        tail = url.removeprefix(SYNTHETIC_BASE)
        if not tail.isdigit():
            return None
        page = int(tail)
        return page if page < self.pages else None

    def out_links(self, page: int) -> list[str]:
        seen: list[str] = []
        for j in range(self.links_per_page):
            digest = hashlib.sha256(f"{page}:{j}".encode()).digest()
            link = self.url(int.from_bytes(digest[:8], "big") % self.pages)
            if link not in seen:
                seen.append(link)
        return seen

    def check_root(self, url: str) -> str | None:
        if self.page_of(url) is None:
            return (
                f"url {url!r} is not in the synthetic graph "
                f"(expected {SYNTHETIC_BASE}N with 0 <= N < {self.pages})"
            )
        return None

    async def links(self, url: str) -> list[str]:
        page = self.page_of(url)
        if page is None:
            raise FetchError(f"no such page in the synthetic graph: {url}")
        return self.out_links(page)

    async def close(self) -> None:
        return None


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.hrefs.append(value)


def extract_links(base_url: str, html: str, limit: int) -> list[str]:
    """Absolute http(s) links of an HTML page, fragment-free, deduplicated, in page order."""
    parser = _AnchorParser()
    parser.feed(html)
    out: list[str] = []
    for href in parser.hrefs:
        absolute, _ = urldefrag(urljoin(base_url, href))
        if urlparse(absolute).scheme in ("http", "https") and absolute not in out:
            out.append(absolute)
            if len(out) >= limit:
                break
    return out


class HttpLinks:
    """Fetches pages over HTTP(S); a non-2xx status or timeout is a :class:`FetchError`."""

    def __init__(self, timeout_seconds: float, max_links: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_links = max_links
        self._session: aiohttp.ClientSession | None = None

    def check_root(self, url: str) -> str | None:
        return None

    async def links(self, url: str) -> list[str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url) as resp:
                if resp.status >= 400:
                    raise FetchError(f"GET {url} answered {resp.status}")
                if "html" not in resp.headers.get("Content-Type", "text/html"):
                    return []
                html = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"GET {url} failed: {exc or type(exc).__name__}") from exc
        return extract_links(str(url), html, self._max_links)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
