"""Chart documentation: every value documented, the README table fresh, NOTES.txt useful.

The values table in the chart README is generated from the "# --" comments
of values.yaml (scripts/render_manifests.py); NOTES.txt is rendered with
`helm install --dry-run=client`, which needs no cluster.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from tests.chart.conftest import CHART, helm_run, load_yaml, render_manifests
from tests.chart.test_server import DRIVER_ENV, V098_SETTINGS

README = CHART / "README.md"


@cache
def documented() -> tuple[set[str], list[str]]:
    docs, keys = render_manifests().documented_keys((CHART / "values.yaml").read_text())
    return {d.path for d in docs}, keys


def test_values__every_key_documented_by_itself_or_an_ancestor() -> None:
    docs, keys = documented()
    assert keys
    undocumented = [
        key
        for key in keys
        if not any(key == d or key.startswith(d + ".") for d in docs)
        and not any(d.startswith(key + ".") for d in docs)
    ]
    assert not undocumented, undocumented


def test_values__every_leaf_setting_has_its_own_description() -> None:
    docs, keys = documented()
    leaves = [k for k in keys if not any(other.startswith(k + ".") for other in keys)]
    covered = [k for k in leaves if any(k == d or k.startswith(d + ".") for d in docs)]
    assert covered == leaves


def test_values__every_top_level_key_is_in_the_schema_and_the_readme() -> None:
    schema_keys = set(load_yaml(CHART / "values.schema.json")["properties"])
    values = load_yaml(CHART / "values.yaml")
    assert set(values) <= schema_keys
    docs, _ = documented()
    text = README.read_text()
    for path in docs:
        assert f"| `{path}` |" in text, path


def test_readme__values_table_is_fresh() -> None:
    assert README.read_text() == render_manifests().render_readme(), "run `make manifests`"


def test_readme__states_the_server_image_tag_and_the_sdk_pairing() -> None:
    tag = load_yaml(CHART / "values.yaml")["server"]["image"]["tag"]
    assert tag == "v0.9.8"
    text = README.read_text()
    assert f"resonatehqio/resonate:{tag}" in text
    for evidence in (
        "8c7c09a8",
        "resonate-sdk 0.8.1",
        "2026-04-01",
        "root:1.2",
        "v0.10.0",
        "RESONATE_SERVERS__ACTIVE",
        "RESONATE_SERVERS__SERVER_POSTGRES__URL",
        "RESONATE_GATEWAYS__GATEWAY_HTTP__BIND",
        "GET /health",
        "server.allowUntestedImage",
    ):
        assert evidence in text, evidence
    # The old, wrong reason for skipping v0.9.8.
    assert "origin_mismatch" not in text
    assert "splitting at\n  `.`" not in text
    chart = load_yaml(CHART / "Chart.yaml")
    assert (
        chart["annotations"]["resonate-patterns.io/server-image"] == f"resonatehqio/resonate:{tag}"
    )


def test_readme__maps_every_server_setting_to_the_v098_source() -> None:
    text = README.read_text()
    for name in [*V098_SETTINGS, *DRIVER_ENV]:
        assert f"| `{name}` |" in text, name


def _notes(*args: str) -> str:
    done = helm_run("install", "rp", str(CHART), "--dry-run=client", "--namespace", "demo", *args)
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)
    assert len(notes) == 2, done.stdout[-2000:]
    return notes[1]


def test_notes__how_to_call_factorial_and_open_the_dashboard(monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBECONFIG", os.devnull)
    notes = _notes()
    assert (
        "kubectl -n demo exec deploy/rp-resonate-patterns-worker-workers -- \\\n"
        "     resonate-patterns call factorial 20 --json"
    ) in notes
    assert "--env=RESONATE_URL=http://rp-resonate-patterns-server.demo.svc:8001" in notes
    assert "helm test rp -n demo" in notes
    assert "monitoring.dashboard.enabled=true" in notes
    dashboard = _notes("--set", "monitoring.dashboard.enabled=true")
    assert "ConfigMap\n   rp-resonate-patterns-dashboard" in dashboard
    assert "/d/resonate-patterns" in dashboard
    assert "WARNING" not in notes
    no_operator = _notes("--set", "operator.enabled=false")
    assert "WARNING: group(s) workers are autoscaled but this release runs no" in no_operator
    assert "Auth:            off" in notes


def test_notes__port_forward_and_curl_factorial_20_through_the_worker_api(monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBECONFIG", os.devnull)
    notes = _notes()
    assert "kubectl -n demo port-forward svc/rp-resonate-patterns-worker-workers 9400\n" in notes
    curl = "curl -s -XPOST localhost:9400/v1/patterns/factorial -d '{\"args\":[20]}'"
    assert notes.count(curl) == 2
    assert '"cached": false' in notes
    assert '"cached": true' in notes


def test_readme__shows_the_api_through_the_worker_service() -> None:
    text = README.read_text()
    assert "kubectl -n resonate port-forward svc/rp-resonate-patterns-worker-workers 9400" in text
    assert "curl -s -XPOST localhost:9400/v1/patterns/factorial -d '{\"args\":[20]}'" in text
    for status in ("200", "202", "400", "404", "413", "422", "502", "503"):
        assert f"| {status} |" in text, status


def test_notes__auth_names_the_key_and_the_token_secret(monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBECONFIG", os.devnull)
    notes = _notes("-f", str(CHART / "ci" / "auth-values.yaml"))
    assert "Auth:            on" in notes
    assert "Secret resonate-auth-public-key (key public.pem)" in notes
    assert "RESONATE_TOKEN from\n                 Secret resonate-token (key token)" in notes
    assert "--env=RESONATE_TOKEN=" in notes
    untested = _notes(
        "--set", "server.image.tag=v0.10.1", "--set", "server.allowUntestedImage=true"
    )
    assert "WARNING: server image resonatehqio/resonate:v0.10.1 is not the release" in untested
