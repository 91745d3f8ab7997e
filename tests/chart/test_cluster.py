"""Opt-in end to end on a real cluster: install, `helm test`, uninstall.

Runs only with the `cluster` marker's prerequisites: KUBECONFIG pointing to
a reachable cluster, and CHART_TEST_IMAGE naming a resonate-patterns image
the cluster can pull (e.g. pushed by `skaffold build`). Skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.chart.conftest import CHART
from tests.conftest import require_tool

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _reachable(kubectl: str) -> bool:
    done = subprocess.run(
        [kubectl, "version", "--request-timeout=5s"], capture_output=True, text=True, check=False
    )
    return done.returncode == 0


@pytest.fixture
def cluster() -> str:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no KUBECONFIG: needs a real cluster")
    kubectl = require_tool("kubectl")
    if not _reachable(kubectl):
        pytest.skip(f"KUBECONFIG={os.environ['KUBECONFIG']} but the cluster is unreachable")
    image = os.environ.get("CHART_TEST_IMAGE")
    if not image:
        pytest.skip(
            "CHART_TEST_IMAGE not set: the cluster needs a pullable resonate-patterns image"
        )
    return image


def test_install__helm_test_passes__uninstall(cluster: str) -> None:
    helm = require_tool("helm")
    repository, _, tag = cluster.rpartition(":")
    release = f"rp-{uuid.uuid4().hex[:6]}"
    namespace = release
    base = [helm, "--namespace", namespace]
    install = subprocess.run(
        [
            *base,
            "install",
            release,
            str(CHART),
            "--create-namespace",
            "--wait",
            "--timeout",
            "10m",
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        assert install.returncode == 0, install.stderr
        test = subprocess.run(
            [*base, "test", release, "--logs", "--timeout", "5m"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert test.returncode == 0, test.stdout + test.stderr
        assert "PASS: factorial(10) = 3628800" in test.stdout
    finally:
        subprocess.run([*base, "uninstall", release, "--wait"], capture_output=True, check=False)
        subprocess.run(
            [require_tool("kubectl"), "delete", "namespace", namespace, "--wait=false"],
            capture_output=True,
            check=False,
        )
