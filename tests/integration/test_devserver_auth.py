"""Auth on the local server, over real sockets and processes, as the official server does it.

In-process server: 401/403 with the official bodies on ``POST /`` and
``/poll``, health and metrics open. Real processes: every pattern runs
through a local stack whose server has auth on (configured through the
official server's environment variables, the way ``up`` passes them on) with
workers and a client given ``RESONATE_TOKEN``; without a token a ``call``
fails with one line naming the cause.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from resonate_base import PROTOCOL_VERSION

from service.client import invoke
from service.devserver.auth import AuthOptions, Verifier
from service.devserver.server import DevServer, ServerOptions
from service.patterns.links import SyntheticGraph
from service.patterns.registry import pattern
from tests.conftest import run_cli
from tests.integration.conftest import scrape, total

pytestmark = pytest.mark.slow

ISS, AUD = "resonate-patterns-tests", "resonate"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Any, path: Path) -> str:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def token(key: Any = RSA_KEY, alg: str = "RS256", **claims: Any) -> str:
    base: dict[str, Any] = {"exp": int(time.time()) + 3600, "iss": ISS, "aud": [AUD]}
    return jwt.encode({**base, **claims}, key, algorithm=alg)


def env(kind: str, data: dict[str, Any], auth: str | None = None) -> dict[str, Any]:
    head: dict[str, Any] = {"corrId": "c1", "version": PROTOCOL_VERSION}
    if auth is not None:
        head["auth"] = auth
    return {"kind": kind, "head": head, "data": data}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[DevServer, str, aiohttp.ClientSession]]:
    verifier = Verifier.load(AuthOptions(public_pem(RSA_KEY, tmp_path / "pub.pem"), ISS, AUD))
    srv = DevServer(ServerOptions(auth=verifier))
    port = await srv.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        yield srv, f"http://127.0.0.1:{port}", session
    await srv.stop()


async def post(session: aiohttp.ClientSession, base: str, body: Any) -> tuple[int, Any]:
    async with session.post(base + "/", data=json.dumps(body).encode()) as resp:
        return resp.status, json.loads(await resp.text())


@pytest.mark.parametrize(
    ("case", "auth"),
    [
        ("missing", None),
        ("empty", ""),
        ("not a jwt", "not-a-jwt"),
        ("expired", token(prefix="", exp=int(time.time()) - 3600)),
        ("wrong iss", token(prefix="", iss="someone-else")),
        ("wrong aud", token(prefix="", aud=["someone-else"])),
        ("aud as a string", token(prefix="", aud=AUD)),
        ("other key", token(ed25519.Ed25519PrivateKey.generate(), "EdDSA", prefix="")),
    ],
)
async def test_post__bad_token__401_unauthorized_envelope(
    server: tuple[DevServer, str, aiohttp.ClientSession], case: str, auth: str | None
) -> None:
    _, base, session = server
    status, out = await post(session, base, env("promise.get", {"id": "p"}, auth))
    assert status == 401
    assert out == {
        "kind": "promise.get",
        "head": {"corrId": "c1", "status": 401, "version": PROTOCOL_VERSION},
        "data": "Unauthorized",
    }


async def test_post__prefix_rules__403_forbidden_admin_and_wildcard_allowed(
    server: tuple[DevServer, str, aiohttp.ClientSession],
) -> None:
    srv, base, session = server
    later = int(time.time() * 1000) + 3_600_000
    create = env("promise.create", {"id": "team-a:job", "timeoutAt": later})
    scoped = token(prefix="team-a")
    # In scope: applied.
    create["head"]["auth"] = scoped
    status, out = await post(session, base, create)
    assert (status, out["data"]["promise"]["id"]) == (200, "team-a:job")
    # Out of scope, no prefix, a search: 403 and nothing touched.
    for auth, kind, data in [
        (scoped, "promise.create", {"id": "team-b:job", "timeoutAt": later}),
        (token(), "promise.get", {"id": "team-a:job"}),
        (scoped, "promise.search", {"state": "pending"}),
        (token(admin=True), "promise.get", {"id": "team-a:job"}),
    ]:
        status, out = await post(session, base, env(kind, data, auth))
        assert (status, out["data"]) == (403, "Forbidden"), (kind, data)
    assert "team-b:job" not in srv.engine.state.promises
    # role admin and the empty prefix cover everything.
    for auth in (token(role="admin"), token(prefix="")):
        status, out = await post(session, base, env("promise.search", {"state": "pending"}, auth))
        assert status == 200
        assert [p["id"] for p in out["data"]["promises"]] == ["team-a:job"]
    samples = await scrape(base + "/metrics")
    assert total(samples, "resonate_devserver_requests_total", status="403") == 4


async def test_poll__bearer_required_any_valid_token_may_listen(
    server: tuple[DevServer, str, aiohttp.ClientSession],
) -> None:
    _, base, session = server
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Token x"}):
        async with session.get(base + "/poll/workers/w1", headers=headers) as resp:
            assert resp.status == 401
            assert resp.content_type == "text/plain"
            assert await resp.text() == "Unauthorized"
    # Streams are authenticated, never authorized by prefix.
    bearer = {"Authorization": f"Bearer {token(prefix='elsewhere')}"}
    async with session.get(base + "/poll/workers/w1", headers=bearer) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"


async def test_health_and_metrics__open_without_a_token(
    server: tuple[DevServer, str, aiohttp.ClientSession],
) -> None:
    _, base, session = server
    for path in ("/healthz", "/readyz", "/health", "/ready", "/metrics"):
        async with session.get(base + path) as resp:
            assert resp.status == 200, path


def test_cli__unreadable_key__one_line_error_exit_2(tmp_path: Path) -> None:
    done = run_cli("server", "--port", "0", "--auth-public-key", str(tmp_path / "absent.pem"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cannot read the auth public key" in lines[0]


# -- every pattern through a local stack with auth on ---------------------------------------------

WORKLOADS: list[tuple[str, tuple[Any, ...]]] = [
    ("factorial", (12,)),
    ("enrich_batch", ([1, 2, 3],)),
    ("parallel_enrich", ([4, 5, 6, 7],)),
    ("enrich_tolerant", ([8, -1, "missing-9"],)),
    ("process_bounded", ([1, 2, 3, 4, 5], 2)),
    ("crawl", ({"url": SyntheticGraph(100, 3).url(0), "depth": 2},)),
]


async def test_all_patterns__auth_on_with_token__same_results_as_embedded(
    stacks: Any, clients: Any, embedded: Any, tmp_path: Path
) -> None:
    pem = public_pem(RSA_KEY, tmp_path / "server.pem")
    good = token(prefix="")
    # The official server's variables reach the server through the stack's
    # environment, as they would through `up`; workers get RESONATE_TOKEN.
    stack = await stacks(
        2,
        env={
            "RESONATE_AUTH__PUBLICKEY": pem,
            "RESONATE_AUTH__ISS": ISS,
            "RESONATE_AUTH__AUD": AUD,
            "RESONATE_TOKEN": good,
        },
    )
    client = clients(stack.plan.url, RESONATE_TOKEN=good)
    oracle = await embedded()
    for name, args in WORKLOADS:
        got = await asyncio.wait_for(invoke(client, pattern(name), args), 60)
        expected = await invoke(oracle, pattern(name), args)
        assert got.result == expected.result, name
    samples = await scrape(stack.plan.url + "/metrics")
    assert total(samples, "resonate_devserver_requests_total", status="401") == 0
    assert total(samples, "resonate_devserver_requests_total", status="403") == 0
    # Without a token, or with one scoped elsewhere, a call fails fast with one line.
    url = stack.plan.url
    for extra, status in [({}, "401"), ({"RESONATE_TOKEN": token(prefix="elsewhere")}, "403")]:
        started = time.monotonic()
        done = await asyncio.to_thread(
            run_cli,
            "call",
            "factorial",
            "5",
            "--timeout",
            "20",
            env={"RESONATE_URL": url, **extra},
            timeout=60,
        )
        assert done.returncode != 0
        assert time.monotonic() - started < 15, "refused, not left to time out"
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert status in lines[0], lines[0]
