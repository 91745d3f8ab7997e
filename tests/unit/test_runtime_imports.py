"""A worker against a server never loads the development server (service.devserver)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

_PROBE = """
import sys
from service.cli import main  # the entry point, as `resonate-patterns worker` runs it
from service.config import load_settings
from service.runtime import build_runtime
from service.worker import Worker

settings = load_settings({"RESONATE_URL": "http://127.0.0.1:9", "RESONATE_PATTERNS_HTTP_PORT": "0"})
Worker(settings)  # wires the runtime (remote mode) without connecting
build_runtime(settings, role="client")
print(",".join(sorted(m for m in sys.modules if m.startswith("service.devserver"))))
"""


def devserver_modules_loaded(probe: str) -> list[str]:
    """The ``service.devserver`` modules a fresh interpreter running ``probe`` has imported."""
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [m for m in proc.stdout.strip().split(",") if m]


def test_worker_and_client__remote_mode__do_not_import_the_devserver() -> None:
    loaded = devserver_modules_loaded(_PROBE)
    assert loaded == [], f"imported in remote mode: {loaded}"


def test_embedded_mode__imports_the_engine_when_used() -> None:
    probe = _PROBE.replace('"RESONATE_URL": "http://127.0.0.1:9", ', "")
    assert "service.devserver.embedded" in devserver_modules_loaded(probe)
