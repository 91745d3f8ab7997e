"""The worker's HTTP API in real processes: a local server and worker subprocesses.

Covers what only a real deployment shows: a worker invoking on its own group
through the server, the serving worker counting the invocation's hit or miss
on its /metrics, a drain answering a waiting caller, and a schemathesis run
from the worker's own OpenAPI document (no 5xx, every response as documented).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api import openapi_document
from tests.conftest import ROOT
from tests.integration.conftest import scrape, total
from tests.integration.test_devserver_auth import AUD, ISS, RSA_KEY, public_pem, token
from tests.ports import free_ports

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from service.local.supervisor import Stack

pytestmark = pytest.mark.slow

FACTORIAL_20 = math.factorial(20)
HITS = "resonate_patterns_promise_cache_hits_total"
MISSES = "resonate_patterns_promise_cache_misses_total"


def api_url(stack: Stack, index: int = 0) -> str:
    return f"http://{stack.plan.host}:{stack.workers[index].port}"


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, query: str = ""
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.post(url + query, json=body) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def test_factorial_20__computed_then_from_cache__counted_by_the_serving_worker(
    stacks: Callable[..., Any],
) -> None:
    stack = await stacks(workers=1)
    base = api_url(stack)
    metrics = base + "/metrics"
    invocation = {"kind": "invocation", "function": "factorial"}
    async with aiohttp.ClientSession() as session:
        status, cold, _ = await post(session, base + "/v1/patterns/factorial", {"args": [20]})
        assert status == 200
        assert cold["result"] == FACTORIAL_20
        assert (cold["id"], cold["cached"]) == ("factorial-20", False)
        after_cold = await scrape(metrics)
        assert total(after_cold, MISSES, **invocation) == 1
        assert total(after_cold, HITS, **invocation) == 0

        status, warm, _ = await post(session, base + "/v1/patterns/factorial", {"args": [20]})
        assert (status, warm["result"], warm["cached"]) == (200, FACTORIAL_20, True)
        after_warm = await scrape(metrics)
        assert total(after_warm, MISSES, **invocation) == 1
        assert total(after_warm, HITS, **invocation) == 1

        status, found = await get(session, base + "/v1/promises/factorial-20")
        assert (status, found["state"], found["value"]) == (200, "resolved", FACTORIAL_20)
        assert found["children"]["pending"] == 0
        assert found["children"]["created"] == found["children"]["settled"] > 0


async def test_statuses__through_a_worker_against_the_server(stacks: Callable[..., Any]) -> None:
    stack = await stacks(workers=2, env={"RESONATE_PATTERNS_STEP_DELAY_MS": "300"})
    first, second = api_url(stack, 0), api_url(stack, 1)
    async with aiohttp.ClientSession() as session:
        # 400: rejected before anything is stored.
        status, body, _ = await post(session, first + "/v1/patterns/factorial", {"args": [-1]})
        assert (status, body) == (400, {"error": "factorial: n must be >= 0, got -1"})
        status, body, _ = await post(
            session, first + "/v1/patterns/factorial", {"args": [3], "id": "a:b"}
        )
        assert status == 400
        assert (await get(session, first + "/v1/promises/a:b"))[0] == 404
        # 404: unknown pattern, unknown promise.
        status, body, _ = await post(session, first + "/v1/patterns/nope", {"args": []})
        assert status == 404
        assert (await get(session, first + "/v1/promises/never-made"))[0] == 404
        # 422: the promise is rejected.
        status, body, _ = await post(
            session, first + "/v1/patterns/enrich_batch", {"args": [[1, "missing-2"]], "id": "r1"}
        )
        assert status == 422
        assert body["id"] == "r1"
        assert "cannot enrich 'missing-2'" in body["error"]
        # 202: longer than the timeout; poll another worker of the group for the result.
        status, body, headers = await post(
            session, first + "/v1/patterns/process_one", {"args": [12]}, "?timeout=0.05"
        )
        assert status == 202
        assert headers["Location"] == body["location"] == f"/v1/promises/{body['id']}"
        deadline = time.monotonic() + 20
        found: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, found = await get(session, second + body["location"])
            if found["state"] != "pending":
                break
            await asyncio.sleep(0.05)
        assert (found["state"], found["value"]) == ("resolved", 144)


async def test_auth__token_scoped_elsewhere__502_naming_the_cause_in_scope__200(
    stacks: Callable[..., Any], tmp_path: Path
) -> None:
    pem = public_pem(RSA_KEY, tmp_path / "server.pem")
    stack = await stacks(
        workers=1,
        env={
            "RESONATE_AUTH__PUBLICKEY": pem,
            "RESONATE_AUTH__ISS": ISS,
            "RESONATE_AUTH__AUD": AUD,
            # Streams are authenticated, not authorized by prefix: the worker is ready.
            "RESONATE_TOKEN": token(prefix="team-a"),
        },
    )
    base = api_url(stack) + "/v1/patterns/process_one"
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        status, body, _ = await post(session, base, {"args": [6]})
        assert time.monotonic() - started < 10, "refused, not left to time out"
        assert status == 502
        assert body["error"].startswith("the Resonate server refused the request (403")
        assert "RESONATE_TOKEN" in body["error"]
        status, body, _ = await post(session, base, {"args": [6], "id": "team-a-6"})
        assert (status, body["result"], body["cached"]) == (200, 36, False)


async def test_drain__waiting_caller_answered_202_then_worker_exits(
    stacks: Callable[..., Any],
) -> None:
    stack = await stacks(
        workers=1,
        env={"RESONATE_PATTERNS_STEP_DELAY_MS": "5000", "RESONATE_PATTERNS_DRAIN_SECONDS": "1"},
    )
    base = api_url(stack)
    worker = stack.workers[0]
    assert worker.proc is not None
    async with aiohttp.ClientSession() as session:
        waiting = asyncio.ensure_future(
            post(session, base + "/v1/patterns/process_one", {"args": [9], "id": "drain-1"})
        )
        await asyncio.sleep(0.5)
        started = time.monotonic()
        worker.retired = True  # not restarted by the supervisor
        worker.proc.send_signal(signal.SIGTERM)
        status, body, headers = await waiting
    assert (status, body["id"], headers["Location"]) == (202, "drain-1", "/v1/promises/drain-1")
    # Answered at the drain deadline (1 s), not after the call's 5 s step or 30 s wait.
    assert time.monotonic() - started < 4
    assert await asyncio.wait_for(worker.proc.wait(), 15) == 0


# -- schemathesis: fuzz the API from its own OpenAPI document ------------------------------------

#: Small limits, so that schema-valid requests that pass validation compute quickly.
FUZZ_ENV = {
    "RESONATE_PATTERNS_MAX_N": "25",
    "RESONATE_PATTERNS_MAX_FANOUT": "4",
    "RESONATE_PATTERNS_MAX_CRAWL_DEPTH": "1",
    "RESONATE_PATTERNS_SYNTHETIC_PAGES": "5",
}

schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=150
)

#: positive_data_acceptance is left out on purpose: the document states the body's shape,
#: and each pattern checks its own arguments (a schema-valid body can still be a 400).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} was ready")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready within {within:g}s")


@pytest.fixture(scope="module")
def live_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local server and one worker against it (subprocesses); yields the worker's base URL."""
    logs: Path = tmp_path_factory.mktemp("fuzz")
    server_port, worker_port = free_ports(2)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    env = {
        **base,
        **FUZZ_ENV,
        "RESONATE_URL": f"http://127.0.0.1:{server_port}",
        "RESONATE_PATTERNS_HTTP_HOST": "127.0.0.1",
        "RESONATE_PATTERNS_HTTP_PORT": str(worker_port),
        "RESONATE_PATTERNS_LOG_FORMAT": "json",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in (
            ("server", ["server", "--port", str(server_port), "--data", ":memory:"]),
            ("worker", ["worker"]),
        ):
            with open(logs / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "service", *args],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=log,
                    )
                )
            ready = f"http://127.0.0.1:{server_port if name == 'server' else worker_port}"
            _wait_ready(ready + ("/ready" if name == "server" else "/readyz"), procs[-1])
        yield f"http://127.0.0.1:{worker_port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    worker_log = (logs / "worker.log").read_text()
    assert "Traceback" not in worker_log, worker_log[-4000:]


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_fuzz__no_5xx_and_every_response_as_documented(case: Any, live_worker: str) -> None:
    case.call_and_validate(base_url=live_worker, checks=CHECKS, timeout=60)
