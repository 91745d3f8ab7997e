"""What the pattern functions reach through ``ctx.get_dependency``.

The SDK keys dependencies by concrete type, so everything a pattern needs
besides telemetry travels in one :class:`PatternDeps` value registered once
per process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resonate.promises import Promises

    from service.config import Settings
    from service.patterns.links import LinkSource


@dataclass(frozen=True)
class PatternDeps:
    """Settings, the promise store client and the link source of this process."""

    settings: Settings
    promises: Promises
    links: LinkSource

    async def simulated_io(self) -> None:
        """Wait the configured per-step latency (RESONATE_PATTERNS_STEP_DELAY_MS)."""
        if self.settings.step_delay_ms:
            await asyncio.sleep(self.settings.step_delay_ms / 1000)
