"""The CLI: results, --json, exit codes and one-line errors (real subprocesses)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ROOT, run_cli

if TYPE_CHECKING:
    from pathlib import Path


def test_call_json__embedded_store__cached_reported_across_processes(tmp_path: Path) -> None:
    env = {"RESONATE_PATTERNS_EMBEDDED_STORE": str(tmp_path / "store.db")}
    outputs = []
    for n in (20, 20, 12, 25):
        proc = run_cli("call", "factorial", str(n), "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, "--json prints exactly one object"
        outputs.append(json.loads(lines[0]))
    assert [o["cached"] for o in outputs] == [False, True, True, False]
    assert [o["result"] for o in outputs] == [math.factorial(n) for n in (20, 20, 12, 25)]
    assert [o["id"] for o in outputs] == [
        "factorial-20",
        "factorial-20",
        "factorial-12",
        "factorial-25",
    ]
    assert all(o["pattern"] == "factorial" and o["elapsed_ms"] >= 0 for o in outputs)
    assert set(outputs[0]) == {"id", "pattern", "result", "cached", "elapsed_ms"}


def test_call_human__prints_result_and_how() -> None:
    proc = run_cli("call", "process_bounded", "2", "3", "4")
    assert proc.returncode == 0, proc.stderr
    assert "= [9, 16]" in proc.stdout
    assert "(computed in" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["call", "nope", "1"], 2, "unknown pattern 'nope'; known patterns: crawl, enrich_batch"),
        (["call", "factorial", "abc"], 2, "N must be an integer, got 'abc'"),
        (["call", "factorial", "-3"], 2, "factorial: n must be >= 0, got -3"),
        (["call", "factorial", "1", "2"], 2, "factorial takes N, got 2 argument(s)"),
        (["call", "factorial"], 2, "factorial takes N, got 0 argument(s)"),
        (["call", "factorial", "5000"], 2, "n must be <= 1000 (the configured limit), got 5000"),
        (["call", "factorial", "--args-json", "[1"], 2, "--args-json is not valid JSON"),
        (["call", "factorial", "3", "--id", "a:b"], 2, "invalid --id 'a:b'"),
        (["call", "crawl", "https://synthetic.local/p/0", "9"], 2, "depth must be <= 5"),
        (["call", "enrich_batch", "1", "missing-2"], 1, "was rejected: cannot enrich 'missing-2'"),
        (["bogus"], 2, "invalid choice: 'bogus'"),
    ],
)
def test_errors__one_line_no_traceback_and_exit_code(
    args: list[str], code: int, message: str
) -> None:
    proc = run_cli(*args)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("resonate-patterns: error: ")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_config__stops_at_startup_naming_variable() -> None:
    proc = run_cli("call", "factorial", "3", env={"RESONATE_PATTERNS_MAX_FANOUT": "0"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "resonate-patterns: error: RESONATE_PATTERNS_MAX_FANOUT='0' is invalid: "
        "expected an integer in [1, 1000000]"
    )


def test_python_m_service__same_cli() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert re.match(r"resonate-patterns \d", proc.stdout)


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)
    return [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme__opens_with_the_two_commands() -> None:
    assert _readme_commands() == ["make demo", "make test"]


@pytest.mark.slow
def test_readme_first_command__runs_the_demo_and_prints_results() -> None:
    proc = subprocess.run(
        ["bash", "-c", _readme_commands()[0]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"computed .* factorial +2432902008176640000", out)
    assert re.search(r"cached .* factorial +2432902008176640000", out)
    assert re.search(r"cached .* factorial +479001600", out)
    assert "3 enriched, 1 failed (cannot enrich 'missing-3': no such record)" in out
    assert "[1, 4, 9, 16, 25, 36, 49, 64]" in out
    assert re.search(r"crawl +\d+ pages visited down to depth 2", out)
    assert re.search(r"worker-3 +metrics http://127\.0\.0\.1:\d+/metrics", out)
    assert "stopped server (exit 0)" in out
