"""The CLI: results, --json, --summary, get/ls, exit codes and one-line errors (real subprocesses),
and `call --api` against a stand-in worker API."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from tests.conftest import ROOT, run_cli

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


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


@pytest.fixture
def set_up_venv(tmp_path: Path) -> Path:
    """A ``VENV`` the Makefile finds already set up: this test run's console script, stamped.

    ``make demo`` only rebuilds a venv whose stamp is older than
    pyproject.toml; pointing it here runs the README's command through the
    Makefile's own targets without installing anything into the work tree.
    """
    script = Path(sys.executable).parent / "resonate-patterns"
    assert script.exists(), f"the package is not installed in {sys.prefix}"
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "resonate-patterns").symlink_to(script)
    (venv / ".installed").touch()
    return venv


def test_readme_setup__finds_a_python_of_at_least_3_12() -> None:
    found = subprocess.run(
        [str(ROOT / "scripts" / "find-python.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    version = subprocess.run(
        [found, "-c", "import sys; print(sys.version_info >= (3, 12))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == "True", found


@pytest.mark.slow
def test_readme_first_command__runs_the_demo_and_prints_results(set_up_venv: Path) -> None:
    proc = subprocess.run(
        ["bash", "-c", f"{_readme_commands()[0]} VENV={set_up_venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "installing" not in out, "no venv was built"
    assert re.search(r"computed .* factorial +2432902008176640000", out)
    assert re.search(r"cached .* factorial +2432902008176640000", out)
    assert re.search(r"cached .* factorial +479001600", out)
    assert "3 enriched, 1 failed (cannot enrich 'missing-3': no such record)" in out
    assert "[1, 4, 9, 16, 25, 36, 49, 64]" in out
    assert re.search(r"crawl +\d+ pages visited down to depth 2", out)
    assert re.search(r"worker-3 +metrics http://127\.0\.0\.1:\d+/metrics", out)
    assert "stopped server (exit 0)" in out


# ------------------------------------------------------------------- get and ls


def test_get_and_ls__embedded_store__human_and_json(tmp_path: Path) -> None:
    env = {"RESONATE_PATTERNS_EMBEDDED_STORE": str(tmp_path / "store.db")}
    assert run_cli("call", "factorial", "5", env=env).returncode == 0
    assert run_cli("call", "enrich_batch", "1", "missing-2", env=env).returncode == 1

    got = run_cli("get", "factorial-5", "--json", env=env)
    human = run_cli("get", "factorial-5", env=env)
    listed = run_cli("ls", "--json", env=env)
    lines = run_cli("ls", env=env)

    assert got.returncode == 0, got.stderr
    found = json.loads(got.stdout)
    assert {k: found[k] for k in ("id", "kind", "state", "pattern", "args", "value", "error")} == {
        "id": "factorial-5",
        "kind": "invocation",
        "state": "resolved",
        "pattern": "factorial",
        "args": "[5]",
        "value": 120,
        "error": None,
    }
    assert found["children"]["created"] == found["children"]["settled"] > 0
    assert human.stdout.splitlines()[:4] == [
        "factorial-5  resolved",
        "  kind      invocation",
        "  pattern   factorial(5)",
        "  value     120",
    ]
    entries = json.loads(listed.stdout)
    assert [(e["pattern"], e["state"]) for e in entries] == [
        ("enrich_batch", "rejected"),
        ("factorial", "resolved"),
    ]
    assert lines.stdout.splitlines()[0].split() == ["ID", "STATE", "CREATED", "TOOK", "CALL"]
    assert len(lines.stdout.splitlines()) == 3


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["get", "nothing-1"], 1, "no promise 'nothing-1' in the embedded store"),
        (["get", ""], 2, "ID must not be empty"),
        (["get"], 2, "the following arguments are required: ID"),
        (["ls", "--limit", "0"], 2, "--limit must be between 1 and 1000"),
        (["ls", "--limit", "x"], 2, "argument --limit: invalid int value: 'x'"),
        (["ls", "--pattern", "zzz"], 2, "unknown pattern 'zzz'"),
        (["ls", "--bogus"], 2, "unrecognized arguments: --bogus"),
    ],
)
def test_get_ls_errors__one_line_and_exit_code(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    proc = run_cli(*args, env={"RESONATE_PATTERNS_EMBEDDED_STORE": str(tmp_path / "s.db")})
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("resonate-patterns: error: ")
    assert message in proc.stderr


def test_get__in_memory_embedded_store__says_why_nothing_is_there() -> None:
    proc = run_cli("get", "factorial-5")
    assert proc.returncode == 1
    assert "in-memory store keeps nothing between commands" in proc.stderr


def test_get_ls__server_down__one_line_exit_1() -> None:
    from tests.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    for args in (["get", "factorial-5"], ["ls"]):
        proc = run_cli(*args, env={"RESONATE_URL": url}, timeout=30)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (
            f"resonate-patterns: error: cannot reach the Resonate server at {url}: "
            "Connection refused\n"
        )


def test_call_summary__json_and_human__counts_first_items_and_where_the_rest_is(
    tmp_path: Path,
) -> None:
    ids = [str(i) for i in range(200)]
    env = {"RESONATE_PATTERNS_EMBEDDED_STORE": str(tmp_path / "store.db")}
    as_json = run_cli("call", "enrich_batch", *ids, "--summary", "--json", env=env)
    human = run_cli("call", "enrich_batch", *ids, "--summary", env=env)
    in_memory = run_cli("call", "enrich_batch", *ids, "--summary")

    assert as_json.returncode == 0, as_json.stderr
    out = json.loads(as_json.stdout)
    pid = out["id"]
    assert out["summary"]["count"] == 200
    assert out["summary"]["first"][0] == {
        "id": 0,
        "name": "record-0",
        "score": 32,
        "tier": "silver",
    }
    assert out["full"] == f"resonate-patterns get {pid} --json"
    assert "result" not in out
    lines = human.stdout.splitlines()
    assert lines[0] == f"{pid} = list of 200 items; first 3:"
    assert lines[4] == "  ... 197 more"
    assert lines[5].startswith("(cached in "), "the same call again: answered from the store"
    assert lines[6] == f"full result: resonate-patterns get {pid} --json"
    assert in_memory.stdout.splitlines()[6] == (
        "full result: not kept (in-memory embedded store); use --json, "
        "or set RESONATE_PATTERNS_EMBEDDED_STORE or RESONATE_URL"
    )
    full = json.loads(run_cli("get", pid, "--json", env=env).stdout)
    assert len(full["value"]) == 200


def test_call__on_a_pipe__no_progress_line() -> None:
    proc = run_cli(
        "call",
        "process_bounded",
        "2",
        "1",
        "2",
        "3",
        "4",
        env={"RESONATE_PATTERNS_STEP_DELAY_MS": "300"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\r" not in proc.stdout


# ------------------------------------------------------------------- call --api


class _StandInApi:
    """A worker API stand-in: scripted answers per pattern name, requests recorded."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.polls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/patterns/{name}", self.post)
        app.router.add_get("/v1/promises/{id}", self.get)
        return app

    async def post(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        self.posts.append((name, dict(request.query), body))
        if name == "factorial" and body["args"] == [-1]:
            return web.json_response({"error": "factorial: n must be >= 0, got -1"}, status=400)
        if name == "factorial":
            n = body["args"][0]
            result = {"id": f"factorial-{n}", "pattern": name, "result": math.factorial(n)}
            return web.json_response(result | {"cached": True, "elapsed_ms": 1.5})
        if name == "enrich_batch":
            message = "enrich_batch-1 was rejected: cannot enrich 'missing-2': no such record"
            return web.json_response({"error": message, "id": "enrich_batch-1"}, status=422)
        if name in ("process_bounded", "stuck"):
            pid = f"{name}-1"
            return web.json_response(
                {"id": pid, "location": f"/v1/promises/{pid}"},
                status=202,
                headers={"Location": f"/v1/promises/{pid}"},
            )
        if name == "broken":
            return web.Response(status=500, text="Internal Server Error")
        return web.json_response({"error": f"unknown pattern {name!r}"}, status=404)

    async def get(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        self.polls += 1
        done = pid == "process_bounded-1" and self.polls >= 3
        return web.json_response(
            {
                "id": pid,
                "state": "resolved" if done else "pending",
                "value": [1, 4, 9] if done else None,
                "error": None,
                "children": {"created": 3, "settled": 3 if done else self.polls, "pending": 0},
            }
        )


async def _serve(api: _StandInApi) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _cli(*args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess, awaited, so this test's event loop keeps serving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[_StandInApi, str]]:
    api = _StandInApi()
    runner, url = await _serve(api)
    yield api, url
    await runner.cleanup()


async def test_call_api__200__prints_the_workers_result_as_call_does(stand_in: Any) -> None:
    api, url = stand_in
    code, out, err = await _cli("call", "factorial", "5", "--api", url, "--json")
    human = await _cli("call", "factorial", "5", "--api", url + "/", "--timeout", "7")

    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "id": "factorial-5",
        "pattern": "factorial",
        "result": 120,
        "cached": True,
        "elapsed_ms": 1.5,
    }
    assert human == (0, "factorial-5 = 120\n(cached in 1.5 ms)\n", "")
    # The wait is --timeout, bounded by the API's longest wait (300 s).
    assert api.posts == [
        ("factorial", {"timeout": "300"}, {"args": [5]}),
        ("factorial", {"timeout": "7"}, {"args": [5]}),
    ]


async def test_call_api__id_and_args_json__sent_as_given(stand_in: Any) -> None:
    api, url = stand_in
    code, _, err = await _cli(
        "call", "factorial", "--args-json", "[6]", "--id", "mine", "--api", url
    )
    assert code == 0, err
    assert api.posts[0][2] == {"args": [6], "id": "mine"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["factorial", "--args-json", "[-1]"], 2, "factorial: n must be >= 0, got -1"),
        (["nope", "--args-json", "[1]"], 2, "unknown pattern 'nope'"),
        (["enrich_batch", "1", "missing-2"], 1, "was rejected: cannot enrich 'missing-2'"),
        (["broken", "--args-json", "[]"], 1, "the worker API answered 500"),
        (["stuck", "--args-json", "[]", "--timeout", "1.2"], 1, "no result for stuck-1 after 1.2s"),
    ],
)
async def test_call_api__error_statuses__one_line_and_exit_code(
    stand_in: Any, args: list[str], code: int, message: str
) -> None:
    _, url = stand_in
    got_code, out, err = await _cli("call", *args, "--api", url)
    assert got_code == code, err
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("resonate-patterns: error: ")
    assert message in err


async def test_call_api__202__polls_the_promise_until_settled(stand_in: Any) -> None:
    api, url = stand_in
    code, out, err = await _cli(
        "call", "process_bounded", "1", "1", "2", "3", "--api", url, "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert {k: result[k] for k in ("id", "pattern", "result", "cached")} == {
        "id": "process_bounded-1",
        "pattern": "process_bounded",
        "result": [1, 4, 9],
        "cached": False,
    }
    assert api.polls == 3


async def test_call_api__connection_refused__one_line_exit_1() -> None:
    from tests.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await _cli("call", "factorial", "5", "--api", url)
    assert (code, out) == (1, "")
    assert (
        err
        == f"resonate-patterns: error: cannot reach the worker API at {url}: Connection refused\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api", "localhost:8080"], "--api must be an http:// or https:// URL"),
        (["--api", "http://x", "--timeout", "0"], "--timeout must be positive"),
    ],
)
async def test_call_api__bad_flags__exit_2(args: list[str], message: str) -> None:
    code, _, err = await _cli("call", "factorial", "5", *args)
    assert code == 2
    assert message in err


# ------------------------------------------------------- D5, D6, point 6: one line


def _unused_url() -> str:
    from tests.ports import free_port

    return f"http://127.0.0.1:{free_port()}"


def _assert_one_line(proc: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "never retrieved" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("resonate-patterns: error: ")
    assert message in lines[0], lines[0]
    assert len(lines[0]) < 400, "the line never echoes a huge input back"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "factorial", "9" * 5000], "N has too many digits (5000)"),
        (["call", "enrich_batch", "1" * 5000], "has too many digits"),
        (
            ["call", "factorial", "--args-json", "[" * 60_000 + "]" * 60_000],
            "--args-json is nested too deeply",
        ),
        (["call", "factorial", "--args-json", f"[{'9' * 5000}]"], "--args-json cannot be read"),
        (["call", "factorial", "5", "--id", "a:b"], "invalid --id 'a:b'"),
        (["call", "factorial", "5", "--id", ""], "--id must not be empty"),
        (["call", "factorial", "5", "--timeout", "0"], "--timeout must be positive"),
        (["call", "factorial", "5", "--timeout", "-1"], "--timeout must be positive"),
        (["call", "factorial", "5", "--timeout", "nan"], "--timeout must be positive"),
        (["call", "factorial", "5", "--timeout", "inf"], "--timeout must be positive"),
        # A lone surrogate: the byte 0xff on the command line (surrogateescape).
        (["call", "factorial", "5", "--id", "f\udcff"], "--id must be valid UTF-8"),
        (["call", "factorial", "5", "--id", "x" * 9000], "--id must have at most 1024"),
        (
            ["up", "--group", "Bad_Group", "--port", "0"],
            "--group='Bad_Group' is invalid: expected a lowercase DNS label",
        ),
        (["up", "--workers", "65"], "--workers='65' is invalid: expected an integer in [0, 64]"),
        (["up", "--port", "70000"], "--port='70000' is invalid: expected an integer in [0, 65535]"),
        (["up", "--autoscale", "--poll", "0"], "--poll='0' is invalid: expected a number in (0,"),
        (
            ["up", "--autoscale", "--min-workers", "3", "--max-workers", "2"],
            "autoscale: minReplicas (3) must not exceed maxReplicas (2)",
        ),
        (["server", "--port", "-1"], "--port='-1' is invalid: expected an integer in [0, 65535]"),
    ],
)
def test_bad_call_input__one_line_exit_2_at_once(args: list[str], message: str) -> None:
    started = time.monotonic()
    proc = run_cli(*args, env={"RESONATE_PATTERNS_DATA_DIR": "/nonexistent-never-created"})
    _assert_one_line(proc, 2, message)
    assert time.monotonic() - started < 10, "refused up front, not after a wait"


@pytest.mark.parametrize("url", ["server", "none"])
def test_call_id_longer_than_the_server_takes__fails_at_once(url: str) -> None:
    # D6: the server refuses ids over 8192 characters; the call must not wait --timeout.
    env: dict[str, str] = {}
    if url == "server":
        env["RESONATE_URL"] = _unused_url()  # refused before any connection is tried
    started = time.monotonic()
    proc = run_cli("call", "factorial", "5", "--id", "y" * 8193, "--timeout", "60", env=env)
    _assert_one_line(proc, 2, "--id must have at most 1024 characters, got 8193")
    assert time.monotonic() - started < 10


def test_call__unreachable_server__says_so_within_seconds() -> None:
    url = _unused_url()
    started = time.monotonic()
    proc = run_cli("call", "factorial", "5", "--timeout", "60", env={"RESONATE_URL": url})
    _assert_one_line(proc, 1, f"cannot reach the Resonate server at {url} (RESONATE_URL)")
    assert time.monotonic() - started < 10


def test_demo__unreachable_server__stops_with_one_line() -> None:
    url = _unused_url()
    started = time.monotonic()
    proc = run_cli("demo", env={"RESONATE_URL": url}, timeout=60)
    _assert_one_line(proc, 1, f"cannot reach the Resonate server at {url}")
    assert time.monotonic() - started < 10


def test_worker__http_port_taken__one_line_exit_2() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = run_cli(
            "worker",
            env={
                "RESONATE_PATTERNS_HTTP_HOST": "127.0.0.1",
                "RESONATE_PATTERNS_HTTP_PORT": str(port),
                "RESONATE_URL": _unused_url(),
            },
            timeout=60,
        )
    _assert_one_line(proc, 2, f"RESONATE_PATTERNS_HTTP_PORT: 127.0.0.1:{port} is already in use")
    assert time.monotonic() - started < 10


def test_operator__no_kubeconfig__one_line_exit_2(tmp_path: Path) -> None:
    proc = run_cli(
        "operator",
        env={"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")},
        timeout=60,
    )
    _assert_one_line(proc, 2, "no Kubernetes credentials")


def test_max_n_above_what_can_be_stored__config_error_naming_the_variable() -> None:
    proc = run_cli("call", "factorial", "3", env={"RESONATE_PATTERNS_MAX_N": "1559"})
    _assert_one_line(
        proc, 2, "RESONATE_PATTERNS_MAX_N='1559' is invalid: expected an integer in [0, 1558]"
    )


def test_factorial_above_the_maximum__rejected_at_once() -> None:
    started = time.monotonic()
    proc = run_cli("call", "factorial", "1559", env={"RESONATE_PATTERNS_MAX_N": "1558"})
    _assert_one_line(proc, 2, "factorial: n must be <= 1558")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("command", [["call", "factorial", "5"], ["demo"]])
def test_call_and_demo__url_of_some_other_http_server__one_line_exit_1(
    command: list[str],
) -> None:
    import http.server
    import threading

    class Html(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html><body>not resonate</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        started = time.monotonic()
        proc = run_cli(*command, env={"RESONATE_URL": url}, timeout=60)
    finally:
        httpd.shutdown()
        httpd.server_close()
    _assert_one_line(proc, 1, "it answers HTTP 200 but not as a Resonate server")
    assert time.monotonic() - started < 10
