"""scripts/chaos_cluster.py without a cluster: arguments, deletions, exit codes, no-cluster line."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.chaos.workload import Summary
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "chaos_cluster.py"


@pytest.fixture(scope="module")
def chaos_cluster() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_cluster", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_cluster"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def test_parse_args__defaults__k8s_install_and_60s(chaos_cluster: ModuleType) -> None:
    opts = chaos_cluster.parse_args([], env={"CHAOS_SEED": "5"})
    assert (opts.namespace, opts.release, opts.seconds, opts.seed) == (
        "resonate-patterns",
        "resonate-patterns",
        60.0,
        5,
    )
    assert "app.kubernetes.io/instance=resonate-patterns" in opts.selector
    assert "app.kubernetes.io/component=worker" in opts.selector
    assert opts.server_url is None
    assert opts.interval == (1.0, 3.0)


def test_parse_args__environment_and_flags__override(chaos_cluster: ModuleType) -> None:
    env = {"RESONATE_URL": "http://s:8001", "CHAOS_SECONDS": "300", "RESONATE_GROUP": "g"}
    opts = chaos_cluster.parse_args(["--release", "rp", "--seed", "9", "--force-ratio", "1"], env)
    assert (opts.server_url, opts.seconds, opts.group, opts.seed) == ("http://s:8001", 300, "g", 9)
    assert "app.kubernetes.io/instance=rp" in opts.selector
    assert opts.force_ratio == 1


@pytest.mark.parametrize(
    "argv",
    [["--seconds", "0"], ["--clients", "0"], ["--force-ratio", "2"], ["--interval", "3", "1"]],
)
def test_parse_args__bad_values__usage_error(chaos_cluster: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        chaos_cluster.parse_args(argv, env={})
    assert exc.value.code == 2


def test_delete_command__graceful_and_forced(chaos_cluster: ModuleType) -> None:
    opts = chaos_cluster.parse_args(["--namespace", "ns"], env={})
    graceful = chaos_cluster.delete_command(opts, "w-1", force=False)
    assert graceful == ["kubectl", "-n", "ns", "delete", "pod", "w-1", "--wait=false"]
    forced = chaos_cluster.delete_command(opts, "w-1", force=True)
    assert forced[-2:] == ["--grace-period=0", "--force"]


def test_exit_code__stalls_reported_only__lost_wrong_rerun_fail(chaos_cluster: ModuleType) -> None:
    clean = Summary(3, 10, 100, 0, 0, 0, 9.0, 2)
    assert chaos_cluster.exit_code(clean) == 0
    for bad in (
        Summary(3, 10, 100, 1, 0, 0, 0.1, 0),
        Summary(3, 10, 100, 0, 1, 0, 0.1, 0),
        Summary(3, 10, 100, 0, 0, 1, 0.1, 0),
    ):
        assert chaos_cluster.exit_code(bad) == 1


def test_no_cluster__one_line_and_exit_2(tmp_path: Path) -> None:
    fake = tmp_path / "kubectl"
    fake.write_text(
        "#!/bin/sh\necho 'The connection to the server localhost:8080 was refused' >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "KUBECTL": str(fake)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: kubectl cannot reach namespace 'resonate-patterns'")
    assert "connection to the server" in lines[0]


def test_no_kubectl__one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECTL": str(tmp_path / "nope")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "not found" in proc.stderr


def _fake_kubectl(tmp_path: Path, stdout: str) -> Path:
    fake = tmp_path / "kubectl"
    (tmp_path / "out.txt").write_text(stdout)
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'out.txt'}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_no_worker_pods__one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECTL": str(_fake_kubectl(tmp_path, ""))}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--namespace", "rp"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: no worker pods match "
        "app.kubernetes.io/name=resonate-patterns,app.kubernetes.io/instance=resonate-patterns,"
        "app.kubernetes.io/component=worker in namespace 'rp'"
    ]


def test_running_pods__only_running_and_not_terminating(
    chaos_cluster: ModuleType, tmp_path: Path
) -> None:
    items = [
        {"metadata": {"name": "a"}, "status": {"phase": "Running"}},
        {"metadata": {"name": "b", "deletionTimestamp": "x"}, "status": {"phase": "Running"}},
        {"metadata": {"name": "c"}, "status": {"phase": "Pending"}},
    ]
    fake = _fake_kubectl(tmp_path, json.dumps({"items": items}))
    opts = chaos_cluster.parse_args(["--kubectl", str(fake)], env={})
    assert chaos_cluster.running_pods(opts) == ["a"]
    (tmp_path / "out.txt").write_text("not json")
    assert chaos_cluster.running_pods(opts) == []


def test_parse_args__worker_logs__a_directory_or_usage_error(
    chaos_cluster: ModuleType, tmp_path: Path
) -> None:
    opts = chaos_cluster.parse_args(["--worker-logs", str(tmp_path)], env={})
    assert opts.worker_logs == tmp_path
    assert chaos_cluster.parse_args([], env={}).worker_logs is None
    with pytest.raises(SystemExit) as exc:
        chaos_cluster.parse_args(["--worker-logs", str(tmp_path / "nope")], env={})
    assert exc.value.code == 2


def test_log_source__worker_logs__reads_pod_files_and_follows_nothing(
    chaos_cluster: ModuleType, tmp_path: Path
) -> None:
    line = json.dumps(
        {"event": "execution_started", "promise_id": "p", "timestamp": "2026-01-01T00:00:00Z"}
    )
    (tmp_path / "w-1.log").write_text(f"starting\n{line}\n")
    (tmp_path / "operator.log").write_text('{"event": "operator_started"}\n')
    opts = chaos_cluster.parse_args(["--worker-logs", str(tmp_path)], env={})
    source = chaos_cluster.log_source(opts, tmp_path / "scratch")
    run = chaos_cluster.ClusterRun(opts, source)
    run.deleted = {"w-1": (1.0e9, "SIGKILL"), "w-2": (1.0e9, "SIGTERM")}

    source.follow(["w-1", "w-2"])  # nothing to start: the files are written elsewhere

    assert isinstance(source, chaos_cluster.DirectoryLogs)
    assert source.path("w-1") == tmp_path / "w-1.log"
    assert [e["promise_id"] for e in run.events()] == ["p"]
    kills = {k.target: k for k in run.kills()}
    assert [e["promise_id"] for e in kills["w-1"].events] == ["p"]
    assert kills["w-2"].events == ()


def test_log_source__default__follows_with_kubectl_logs(
    chaos_cluster: ModuleType, tmp_path: Path
) -> None:
    opts = chaos_cluster.parse_args(["--namespace", "ns"], env={})
    source = chaos_cluster.log_source(opts, tmp_path)
    assert isinstance(source, chaos_cluster.KubectlLogs)
    assert source.path("w-1") == tmp_path / "w-1.log"


def test_server_service__found_by_labels__else_release_server(
    chaos_cluster: ModuleType, tmp_path: Path
) -> None:
    fake = _fake_kubectl(tmp_path, "service/rp-resonate-patterns-server\n")
    opts = chaos_cluster.parse_args(["--kubectl", str(fake), "--release", "rp"], env={})
    assert chaos_cluster.server_service(opts) == "svc/rp-resonate-patterns-server"
    (tmp_path / "out.txt").write_text("")
    assert chaos_cluster.server_service(opts) == "svc/rp-server"
