"""Cursor pagination over an id index, as the official server pages its searches.

Pages are ordered by id; the cursor is the last id of a page and means
"ids after this one". It is given only when more matches follow, so a
client stops at the first page without one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from sortedcontainers import SortedSet


def page(
    ids: SortedSet, keep: Callable[[str], bool], limit: int, cursor: str | None
) -> tuple[list[str], str | None]:
    """Up to ``limit`` ids after ``cursor`` (all when None or empty) that ``keep`` accepts.

    Returns them and the cursor of the next page (None on the last page).
    """
    start = ids.bisect_right(cursor) if cursor else 0
    found: list[str] = []
    for i in ids.islice(start):
        if not keep(i):
            continue
        if len(found) == limit:
            return found, found[-1]
        found.append(i)
    return found, None
