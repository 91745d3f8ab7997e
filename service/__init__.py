"""resonate-patterns: durable recursive workloads on Resonate.

The package is laid out by role: ``patterns`` holds the durable functions,
``worker``/``client`` are the two kinds of process, ``telemetry`` owns every
metric and log definition, ``devserver`` is the local Resonate server for
development and tests, and ``operator`` scales worker groups by backlog.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    #: The installed distribution's version, reported in worker info metrics.
    __version__ = version("resonate-patterns")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
