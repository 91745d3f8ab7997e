"""What the pattern functions reach through ``ctx.get_dependency``.

The SDK keys dependencies by concrete type, so everything a pattern needs
besides telemetry travels in one :class:`PatternDeps` value registered once
per process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.telemetry.instrument import Lru

if TYPE_CHECKING:
    from resonate.promises import Promises

    from service.config import Settings
    from service.patterns.links import LinkSource


#: Roots whose factorial cache floor a process remembers (oldest forgotten
#: first): far above the chains one worker runs at once; a forgotten root only
#: reads the store again.
FLOOR_MEMO_ROOTS = 10_000


@dataclass
class FloorMemo:
    """The cache floor found for each root in this process (bounded, oldest forgotten first).

    ``floor(root)`` is the largest ``j`` whose ``factorial-{j}`` was resolved
    when a level of ``root`` last searched (-1: none), or None if no level of
    ``root`` searched here.
    """

    limit: int = FLOOR_MEMO_ROOTS
    _floors: Lru[int] = field(init=False)

    def __post_init__(self) -> None:
        self._floors = Lru(self.limit)

    def floor(self, root: str) -> int | None:
        return self._floors.get(root)

    def remember(self, root: str, floor: int) -> None:
        self._floors.put(root, floor)


@dataclass(frozen=True)
class PatternDeps:
    """Settings, the promise store client and the link source of this process."""

    settings: Settings
    promises: Promises
    links: LinkSource
    #: Factorial's cache floor per root (see :mod:`service.patterns.factorial`).
    floors: FloorMemo = field(default_factory=FloorMemo)

    async def simulated_io(self) -> None:
        """Wait the configured per-step latency (RESONATE_PATTERNS_STEP_DELAY_MS)."""
        if self.settings.step_delay_ms:
            await asyncio.sleep(self.settings.step_delay_ms / 1000)
