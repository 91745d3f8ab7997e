"""Regenerate the generated sections of the docs from their one definition.

Sections sit between ``<!-- BEGIN name -->`` and ``<!-- END name -->``
markers. Run ``python scripts/docs.py`` after changing settings, metrics or
patterns; tests fail if a section is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import settings_table
from service.patterns.registry import PATTERNS
from service.telemetry.names import (
    backlog_metrics_table,
    metrics_table,
    operator_metrics_table,
)

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent


def patterns_table() -> str:
    rows = ["| Pattern | Arguments (CLI) | What it does |", "|---|---|---|"]
    for p in PATTERNS:
        rows.append(f"| `{p.name}` | `{p.usage}` | {p.summary} |")
    return "\n".join(rows)


SECTIONS: dict[str, Callable[[], str]] = {
    "config": settings_table,
    "metrics": metrics_table,
    "operator-metrics": operator_metrics_table,
    "backlog-metrics": backlog_metrics_table,
    "patterns": patterns_table,
}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n)(?:.*?\n)?(<!-- END {name} -->)", re.S)
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    for path in (ROOT / "README.md", ROOT / "docs" / "metrics.md"):
        if path.exists():
            old = path.read_text()
            new = render(old)
            if new != old:
                path.write_text(new)
                sys.stdout.write(f"updated {path.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
