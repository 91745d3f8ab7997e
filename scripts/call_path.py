"""Which project modules one CLI command passes through, in the order first entered.

    python scripts/call_path.py call factorial 20

runs ``resonate-patterns <args>`` in this process (embedded mode unless
``RESONATE_URL`` is set, a fresh SQLite store in a temporary directory) with a
profile hook that records the first call into each ``service.*`` module, and
prints them, one per line. It is how docs/architecture.md shows one request's
path through the packages; rerun it after moving code to refresh that list.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trace(argv: list[str]) -> tuple[int, list[str]]:
    """Run the CLI with ``argv``; its exit code and the service modules entered, in order."""
    sys.path.insert(0, ROOT)
    entered: dict[str, None] = {}

    def hook(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if isinstance(name, str) and name.startswith("service") and name not in entered:
                entered[name] = None

    from service.cli import main

    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        code = main(argv)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return code, list(entered)


def run() -> int:
    argv = sys.argv[1:] or ["call", "factorial", "20"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("RESONATE_PATTERNS_EMBEDDED_STORE", os.path.join(tmp, "store.db"))
        os.environ.setdefault("RESONATE_PATTERNS_LOG_LEVEL", "warning")
        code, modules = trace(argv)
    sys.stderr.write(f"exit {code}: {len(modules)} modules entered\n")
    for module in modules:
        sys.stdout.write(module + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(run())
