"""Bad input, property-based: whatever arrives, a clear refusal, never a crash.

Four surfaces, each driven by hypothesis with a bounded budget (so the suite
stays fast): CLI arguments, pattern inputs, the local server's request
envelopes and raw bytes on ``POST /``. The properties: no 5xx, no traceback,
no exception other than the documented ones, the documented exit codes, and
nothing already stored is lost or changed.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from resonate_base import PROTOCOL_VERSION

from service.devserver.dispatch import KINDS
from service.devserver.server import DevServer, ServerOptions
from service.errors import InputError, UsageError
from service.patterns.registry import PATTERNS, pattern
from tests.conftest import make_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

NAMES = [p.name for p in PATTERNS]
BOUNDED = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=15,
)
#: Words a user might type: numbers (huge ones too), URLs, ids, and noise.
words = st.one_of(
    st.integers(min_value=-5, max_value=40).map(str),
    st.integers().map(str),
    st.integers(min_value=4290, max_value=6000).map(lambda n: "9" * n),
    st.sampled_from(["https://synthetic.local/p/1", "http://x", "ftp://y", "", "-", "--", "1,2"]),
    st.text(max_size=30),
)


# ------------------------------------------------------------- pattern inputs


@BOUNDED
@given(name=st.sampled_from(NAMES), args=st.lists(json_values, max_size=3).map(tuple))
def test_validate__any_json_arguments__accepted_or_input_error(
    name: str, args: tuple[Any, ...]
) -> None:
    problem = _refusal(lambda: pattern(name).validate(make_settings(), args), InputError)
    assert problem is None or "\n" not in problem


def _refusal(action: Any, error: type[Exception]) -> str | None:
    """Run ``action``; the message of the ``error`` it raised, None if it passed.

    Any other exception propagates and fails the property.
    """
    try:
        action()
    except error as exc:
        return str(exc)
    return None


@BOUNDED
@given(name=st.sampled_from(NAMES), argv=st.lists(words, max_size=4))
def test_parse__any_words__arguments_or_usage_error(name: str, argv: list[str]) -> None:
    parsed: list[tuple[Any, ...]] = []
    problem = _refusal(lambda: parsed.append(pattern(name).parse(argv)), UsageError)
    if problem is not None:
        assert "\n" not in problem
        assert len(problem) < 400, "an error line never echoes a huge input back"
        return
    _refusal(lambda: pattern(name).validate(make_settings(), parsed[0]), InputError)


# ---------------------------------------------------------------- CLI arguments


def _call_argv(draw: Any) -> list[str]:
    argv = ["call", draw(st.sampled_from([*NAMES, "nope"]) | st.text(max_size=10))]
    if draw(st.booleans()):
        argv += [
            "--args-json",
            draw(
                json_values.map(json.dumps)
                | st.text(max_size=40)
                | st.integers(min_value=1, max_value=80_000).map(lambda d: "[" * d + "]" * d)
            ),
        ]
    else:
        argv += draw(st.lists(words, max_size=3))
    if draw(st.booleans()):
        argv += [
            "--id",
            draw(
                st.text(max_size=20) | st.sampled_from(["a:b", "", "x" * 9000, "\udcff", "a\ud800"])
            ),
        ]
    timeout = draw(st.sampled_from(["0", "-1", "nan", "inf", "x", "1e400", "5"]))
    return [*argv, "--timeout", timeout]


@BOUNDED
@given(data=st.data())
def test_cli_call__any_arguments__documented_exit_code_and_one_line(
    data: st.DataObject, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    # Small limits keep any accepted call quick (embedded, in memory).
    for name, value in {
        "RESONATE_PATTERNS_MAX_N": "30",
        "RESONATE_PATTERNS_MAX_FANOUT": "20",
        "RESONATE_PATTERNS_MAX_CRAWL_PAGES": "20",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RESONATE_URL", raising=False)
    argv = data.draw(st.composite(lambda draw: _call_argv(draw))())
    code = main(argv)
    _, err = capsys.readouterr()
    assert code in (0, 1, 2), argv
    assert "Traceback" not in err
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("resonate-patterns: error: ")


# ------------------------------------------------- server envelopes and raw bytes

STORED = [f"kept-{i}" for i in range(4)]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A local server on a file store holding :data:`STORED` (two resolved, two pending)."""
    srv = DevServer(ServerOptions(data=str(tmp_path / "props.db")))
    port = await srv.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}/"
    async with aiohttp.ClientSession() as session:
        for i, pid in enumerate(STORED):
            await _send(session, base, "promise.create", {"id": pid, "timeoutAt": 1 << 60})
            if i % 2 == 0:
                value = {"data": "eQ=="}
                data = {"id": pid, "state": "resolved", "value": value}
                await _send(session, base, "promise.settle", data)
        yield session, base
    await srv.stop()


async def _send(session: aiohttp.ClientSession, base: str, kind: str, data: Any) -> Any:
    body = {"kind": kind, "head": {"corrId": "c", "version": PROTOCOL_VERSION}, "data": data}
    async with session.post(base, data=json.dumps(body).encode()) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def _stored(session: aiohttp.ClientSession, base: str) -> list[tuple[str, Any]]:
    found = []
    for pid in STORED:
        out = await _send(session, base, "promise.get", {"id": pid})
        promise = out["data"]["promise"]
        found.append((promise["state"], promise.get("value")))
    return found


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


#: Bodies that are almost right: valid envelopes with bad bytes spliced in,
#: deep nesting, huge numbers, lone surrogates, and plain random bytes.
raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=120_000).map(_nested),
    st.builds(
        lambda kind, data, junk: (
            (
                json.dumps({"kind": kind, "head": {"corrId": "c", "version": PROTOCOL_VERSION}})[
                    :-1
                ]
                + ', "data": '
            ).encode()
            + junk
            + json.dumps(data).encode()
            + b"}"
        ),
        st.sampled_from([*KINDS, "x"]),
        json_values,
        st.sampled_from([b"", b"\xff", b"\xc3", b'"\\ud800", ', b"1" * 5000 + b", ", b"["]),
    ),
    st.builds(
        lambda kind, data: json.dumps(
            {"kind": kind, "head": {"corrId": "c", "version": PROTOCOL_VERSION}, "data": data}
        ).encode(),
        st.sampled_from(KINDS),
        st.dictionaries(
            st.sampled_from(["id", "timeoutAt", "state", "value", "tags", "param", "pid", "ttl"]),
            json_values | st.sampled_from(STORED) | st.just("x" * 9000),
            max_size=5,
        ),
    ),
)


@BOUNDED
@given(body=raw_bodies)
async def test_server__any_body__never_5xx_and_stored_promises_kept(
    server: tuple[aiohttp.ClientSession, str], body: bytes
) -> None:
    session, base = server
    before = await _stored(session, base)
    async with session.post(base, data=body) as resp:
        status = resp.status
        text = await resp.text()
    assert status < 500, text[:500]
    reply = json.loads(text)
    assert reply["head"]["status"] == status
    after = await _stored(session, base)
    # A settled promise never changes; a pending one may only settle (a valid request).
    for (state_before, value_before), (state_after, value_after) in zip(before, after, strict=True):
        if state_before != "pending":
            assert (state_after, value_after) == (state_before, value_before)
    await asyncio.sleep(0)
