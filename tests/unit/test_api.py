"""The worker's HTTP API on an embedded runtime: parsing, every status code, draining."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from resonate.error import ServerError

from service.api import (
    DEFAULT_WAIT_SECONDS,
    MAX_BODY_BYTES,
    MAX_ID_CHARS,
    MAX_WAIT_SECONDS,
    ApiError,
    Invocation,
    InvocationApi,
    location_of,
    openapi_document,
    parse_invocation,
    parse_timeout,
)
from service.api import routes as api_routes
from service.errors import AuthRefusedError
from service.patterns.registry import PATTERNS
from service.runtime import build_runtime
from service.telemetry.http import health_app
from service.telemetry.metrics import WorkerMetrics
from tests.conftest import make_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from service.runtime import Runtime

# -- parsing (pure) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, DEFAULT_WAIT_SECONDS), ("5", 5.0), ("0.25", 0.25), (".5", 0.5), ("300", 300.0)],
)
def test_parse_timeout__decimal_seconds_in_range__accepted(raw: str | None, seconds: float) -> None:
    assert parse_timeout(raw) == seconds


@pytest.mark.parametrize(
    "raw", ["", "0", "0.0", "-1", "301", "1e9", "abc", "nan", "inf", "1_0", " 5", "5s", "0x10"]
)
def test_parse_timeout__anything_else__400(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_timeout(raw)
    assert caught.value.status == 400
    assert f"<= {MAX_WAIT_SECONDS:g}" in caught.value.message


def test_parse_invocation__args_and_optional_id() -> None:
    assert parse_invocation(b'{"args": [20]}').args == (20,)
    assert parse_invocation(b'{"args": [20]}').id is None
    call = parse_invocation('{"args": [[1, "a"]], "id": "mine-€"}'.encode())
    assert call.args == ([1, "a"],)
    assert call.id == "mine-€"


#: Every malformed body shape, with a piece of the one-line error it gets.
BAD_BODIES = [
    (b"", "request body is empty"),
    (b"   \n", "request body is empty"),
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b"args=20", "not valid JSON"),
    (b'{"args": [NaN]}', "NaN is not valid JSON"),
    (b'{"args": [Infinity]}', "Infinity is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"args": [' + b"9" * 5000 + b"]}", "not valid JSON"),
    (b"[20]", "request body is a JSON array"),
    (b"20", "request body is a JSON number"),
    (b'"x"', "request body is a JSON string"),
    (b"null", "request body is a JSON null"),
    (b"true", "request body is a JSON boolean"),
    (b"{}", "missing key 'args'"),
    (b'{"id": "x"}', "missing key 'args'"),
    (b'{"args": [1], "kwargs": {}}', "unknown key(s) 'kwargs'"),
    (b'{"args": 20}', "args must be a JSON array, got a JSON number"),
    (b'{"args": {"n": 20}}', "args must be a JSON array, got a JSON object"),
    (b'{"args": null}', "args must be a JSON array, got a JSON null"),
    (b'{"args": "20"}', "args must be a JSON array, got a JSON string"),
    (b'{"args": [1], "id": 7}', "id must be a string, got int"),
    (b'{"args": [1], "id": null}', "id must be a string, got NoneType"),
    (b'{"args": [1], "id": ""}', "id must not be empty"),
    (b'{"args": [1], "id": "a:b"}', "invalid id 'a:b'"),
    (b'{"args": [1], "id": "a\\u0000b"}', "null bytes"),
    (b'{"args": [1], "id": "\\ud800"}', "no lone surrogates"),
    (b'{"args": [1], "id": "' + b"x" * (MAX_ID_CHARS + 1) + b'"}', "at most 256 characters"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_parse_invocation__bad_shape__400_one_line(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_invocation(body)
    assert caught.value.status == 400
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def _parse_or_error(body: bytes) -> Invocation | ApiError:
    try:
        return parse_invocation(body)
    except ApiError as exc:
        return exc


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_parse_invocation__any_bytes__invocation_or_400(body: bytes) -> None:
    outcome = _parse_or_error(body)
    if isinstance(outcome, ApiError):
        assert outcome.status == 400
    else:
        assert isinstance(outcome.args, tuple)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(_json_values)
def test_parse_invocation__any_json_document__accepted_only_as_args_object(value: Any) -> None:
    body = json.dumps(value).encode()
    outcome = _parse_or_error(body)
    if isinstance(outcome, ApiError):
        assert outcome.status == 400
    else:
        assert isinstance(value, dict)
        assert set(value) <= {"args", "id"}
        assert list(outcome.args) == value["args"]


def test_location__id_percent_encoded_as_one_segment() -> None:
    assert location_of("factorial-20") == "/v1/promises/factorial-20"
    assert location_of("a/b c") == "/v1/promises/a%2Fb%20c"


# -- the OpenAPI document ------------------------------------------------------------------------


def test_openapi__every_route_status_and_pattern_documented() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/v1/patterns/{name}"]["post"]
    assert set(post["responses"]) == {"200", "202", "400", "404", "413", "422", "502", "503"}
    (name,) = [p for p in post["parameters"] if p["name"] == "name"]
    assert name["schema"]["enum"] == [p.name for p in PATTERNS]
    assert "Location" in post["responses"]["202"]["headers"]
    get = doc["paths"]["/v1/promises/{id}"]["get"]
    assert set(get["responses"]) == {"200", "404", "502", "503"}
    result = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert result["required"] == ["id", "pattern", "result", "cached", "elapsed_ms"]


# -- the routes on an embedded runtime -----------------------------------------------------------


@dataclass
class Served:
    client: TestClient[Any, Any]
    api: InvocationApi
    runtime: Runtime

    async def post(
        self, name: str, body: Any, query: str = "", **kwargs: Any
    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = await self.client.post(f"/v1/patterns/{name}{query}", data=data, **kwargs)
        return resp.status, await resp.json(), resp

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get(path)
        assert resp.content_type == "application/json", path
        return resp.status, await resp.json()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Factory: an embedded worker runtime with the health routes and the API on a test server."""
    made: list[Served] = []

    async def make(describe: Any = None, **env: str) -> Served:
        s = make_settings(**env)
        metrics = WorkerMetrics(s.group)
        runtime = build_runtime(s, role="worker", metrics=metrics)
        runtime.start()
        api = InvocationApi(runtime, describe=describe)
        app = health_app(metrics.registry, lambda: True)
        api.install(app)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        served = Served(client, api, runtime)
        made.append(served)
        return served

    yield make
    for served in made:
        await served.client.close()
        await served.runtime.stop()


async def test_post__cold_then_again__200_computed_then_cached(serve: Any) -> None:
    served = await serve()
    first = await served.post("factorial", {"args": [20]})
    second = await served.post("factorial", {"args": [20]})
    for status, body, _ in (first, second):
        assert status == 200
        assert set(body) == {"id", "pattern", "result", "cached", "elapsed_ms"}
        assert (body["id"], body["pattern"], body["result"]) == (
            "factorial-20",
            "factorial",
            math.factorial(20),
        )
    assert (first[1]["cached"], second[1]["cached"]) == (False, True)


async def test_post__curl_form_content_type_and_explicit_id__json_body_read(serve: Any) -> None:
    served = await serve()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body, _ = await served.post(
        "process_bounded", {"args": [[2, 3, 4], 2], "id": "squares/1"}, headers=headers
    )
    assert status == 200, body
    assert (body["id"], body["result"], body["cached"]) == ("squares/1", [4, 9, 16], False)
    status, found = await served.get(location_of("squares/1"))
    assert status == 200
    assert (found["state"], found["value"], found["children"]["created"]) == (
        "resolved",
        [4, 9, 16],
        3,
    )


#: Well-formed bodies whose arguments the pattern rejects, and the keyed id that must stay absent.
BAD_ARGS = [
    ("factorial", [-1], "n must be >= 0, got -1"),
    ("factorial", [1001], "n must be <= 1000 (the configured limit), got 1001"),
    ("factorial", ["20"], "n must be an integer, got str '20'"),
    ("factorial", [True], "n must be an integer, got bool True"),
    ("factorial", [20.0], "n must be an integer, got float 20.0"),
    ("factorial", [], "takes 1 argument(s), got 0"),
    ("factorial", [1, 2], "takes 1 argument(s), got 2"),
    ("enrich_batch", [[]], "ids must not be empty"),
    ("enrich_batch", [[None]], "record ids must be integers or strings"),
    ("enrich_batch", [["\ud800"]], "no lone surrogates"),
    ("process_bounded", [[1, 2], 0], "k must be >= 1, got 0"),
    ("process_bounded", [[2**63], 1], "items[0] must be <="),
    ("crawl", [{"url": "ftp://x", "depth": 1}], "url must start with http:// or https://"),
    ("crawl", [{"url": "https://synthetic.local/p/0", "depth": 9}], "depth must be <= 5"),
    ("crawl", [{"url": "https://synthetic.local/p/0", "extra": 1}], "unknown crawl fields"),
]


@pytest.mark.parametrize(("name", "args", "message"), BAD_ARGS)
async def test_post__arguments_the_pattern_rejects__400_and_nothing_stored(
    serve: Any, name: str, args: list[Any], message: str
) -> None:
    served = await serve()
    status, body, _ = await served.post(name, {"args": args, "id": "must-not-exist"})
    assert status == 400
    assert message in body["error"]
    assert set(body) == {"error"}
    assert (await served.get("/v1/promises/must-not-exist"))[0] == 404


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
async def test_post__malformed_body__400_before_anything_is_stored(
    serve: Any, body: bytes, message: str
) -> None:
    served = await serve()
    status, answer, _ = await served.post("factorial", body)
    assert status == 400
    assert message in answer["error"]
    # The keyed id of the only well-formed argument in the table.
    assert (await served.get("/v1/promises/factorial-1"))[0] == 404


@pytest.mark.parametrize("query", ["?timeout=0", "?timeout=-3", "?timeout=301", "?timeout=x"])
async def test_post__bad_timeout__400(serve: Any, query: str) -> None:
    served = await serve()
    status, body, _ = await served.post("factorial", {"args": [3]}, query)
    assert status == 400
    assert "timeout must be a number of seconds > 0 and <= 300" in body["error"]
    assert (await served.get("/v1/promises/factorial-3"))[0] == 404


async def test_post__timeout_given_twice__400(serve: Any) -> None:
    served = await serve()
    status, body, _ = await served.post("factorial", {"args": [3]}, "?timeout=1&timeout=2")
    assert (status, body["error"]) == (400, "timeout given 2 times; give it once")


async def test_post__unknown_pattern__404_listing_known(serve: Any) -> None:
    served = await serve()
    status, body, _ = await served.post("nope", {"args": [1]})
    assert status == 404
    assert body["error"].startswith("unknown pattern 'nope'; known patterns: crawl, enrich_batch")


async def test_post__oversized_body__413_with_or_without_content_length(serve: Any) -> None:
    served = await serve()
    big = b'{"args": [[' + b"1," * (MAX_BODY_BYTES // 2) + b"1]]}"
    status, body, _ = await served.post("enrich_batch", big)
    assert (status, body["error"]) == (413, f"request body is larger than {MAX_BODY_BYTES} bytes")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    resp = await served.client.post("/v1/patterns/enrich_batch", data=chunks())
    assert resp.status == 413


async def test_post__rejected_promise__422_with_message_and_id(serve: Any) -> None:
    served = await serve()
    status, body, _ = await served.post("enrich_batch", {"args": [[1, "missing-2"]], "id": "rej"})
    assert status == 422
    assert body == {
        "error": "rej was rejected: cannot enrich 'missing-2': no such record",
        "id": "rej",
    }
    status, found = await served.get("/v1/promises/rej")
    assert (status, found["state"]) == (200, "rejected")
    assert "missing-2" in found["error"]


async def test_post__longer_than_timeout__202_location_then_poll_to_result(serve: Any) -> None:
    served = await serve(RESONATE_PATTERNS_STEP_DELAY_MS="400")
    status, body, resp = await served.post(
        "process_one", {"args": [7], "id": "slow"}, "?timeout=0.05"
    )
    assert status == 202
    assert body == {"id": "slow", "location": "/v1/promises/slow"}
    assert resp.headers["Location"] == "/v1/promises/slow"
    status, found = await served.get(body["location"])
    assert (status, found["state"], found["value"]) == (200, "pending", None)
    for _ in range(100):
        status, found = await served.get(body["location"])
        if found["state"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert (found["state"], found["value"]) == ("resolved", 49)
    # Called again, it answers from the store.
    status, again, _ = await served.post("process_one", {"args": [7], "id": "slow"})
    assert (status, again["result"], again["cached"]) == (200, 49, True)


async def test_close__waiting_caller_gets_202_new_caller_503(serve: Any) -> None:
    served = await serve(RESONATE_PATTERNS_STEP_DELAY_MS="2000")
    waiting = asyncio.ensure_future(served.post("process_one", {"args": [5], "id": "drained"}))
    while served.api.in_flight == 0:  # noqa: ASYNC110 - the API offers no event for this
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await served.api.close()
    status, body, resp = await waiting
    assert loop.time() - started < 1.0
    assert (status, body["id"], resp.headers["Location"]) == (
        202,
        "drained",
        "/v1/promises/drained",
    )
    assert served.api.in_flight == 0
    status, body, resp = await served.post("factorial", {"args": [3]})
    assert status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "shutting down" in body["error"]


async def test_post__server_refuses_token__502(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(*_: Any, **__: Any) -> Any:
        raise AuthRefusedError(401, "Unauthorized", "factorial-3")

    monkeypatch.setattr(api_routes, "submit", refused)
    served = await serve()
    status, body, _ = await served.post("factorial", {"args": [3]})
    assert status == 502
    assert body["error"].startswith("the Resonate server refused the request (401 Unauthorized)")


@pytest.mark.parametrize(
    "error",
    [aiohttp.ClientConnectionError("connection refused"), ServerError(500, "database is down")],
)
async def test_server_unreachable__503_retry_after(
    serve: Any, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    async def failing(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(api_routes, "submit", failing)
    served = await serve(describe=failing)
    status, body, resp = await served.post("factorial", {"args": [3]})
    assert (status, resp.headers["Retry-After"]) == (503, "1")
    assert body["error"].startswith("the Resonate server is unavailable")
    status, body = await served.get("/v1/promises/factorial-3")
    assert status == 503


async def test_get__refused_token__502_server_400__404(serve: Any) -> None:
    async def describe(_: Runtime, promise_id: str) -> dict[str, Any] | None:
        if promise_id == "refused":
            raise AuthRefusedError(403, "Forbidden", promise_id)
        if promise_id == "unauthorized":
            raise ServerError(401, "Unauthorized")
        raise ServerError(400, "bad id")

    served = await serve(describe=describe)
    assert (await served.get("/v1/promises/refused"))[0] == 502
    status, body = await served.get("/v1/promises/unauthorized")
    assert status == 502
    assert body["error"].startswith("the Resonate server refused the request (401 Unauthorized)")
    assert (await served.get("/v1/promises/weird"))[0] == 404


async def test_post__server_refuses_the_input__400_not_5xx(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def too_large(*_: Any, **__: Any) -> Any:
        raise ServerError(400, "param too large")

    monkeypatch.setattr(api_routes, "submit", too_large)
    served = await serve()
    status, body, _ = await served.post("factorial", {"args": [3]})
    assert status == 400
    assert body["error"] == (
        "the Resonate server refused the call: server error (code=400): param too large"
    )


async def test_get__unknown_and_impossible_ids__404(serve: Any) -> None:
    served = await serve()
    for path in ("/v1/promises/nope", "/v1/promises/a%00b", "/v1/promises/" + "x" * 2000):
        status, body = await served.get(path)
        assert status == 404
        assert body["error"].startswith("no promise")


async def test_get__child_id_with_colon_and_slash_ids__found(serve: Any) -> None:
    served = await serve()
    await served.post("factorial", {"args": [3]})
    status, found = await served.get("/v1/promises/factorial-3:1")
    assert (status, found["kind"], found["root"]) == (200, "child", "factorial-3")


async def test_unexpected_crash__500_json_without_traceback(serve: Any) -> None:
    async def broken(_: Runtime, __: str) -> dict[str, Any] | None:
        raise RuntimeError("boom\nTraceback (most recent call last)")

    served = await serve(describe=broken)
    resp = await served.client.get("/v1/promises/x")
    assert resp.status == 500
    assert await resp.json() == {"error": "internal error (logged by the worker)"}


async def test_routing_errors_on_api_paths__json_404_405(serve: Any) -> None:
    served = await serve()
    resp = await served.client.get("/v1/patterns/factorial")
    assert (resp.status, resp.headers["Allow"]) == (405, "POST")
    assert (await resp.json())["error"] == "Method Not Allowed"
    resp = await served.client.get("/v1/nothing")
    assert (resp.status, await resp.json()) == (404, {"error": "Not Found"})


async def test_openapi_route__serves_the_document_with_this_workers_limits(serve: Any) -> None:
    served = await serve(RESONATE_PATTERNS_MAX_N="77")
    status, doc = await served.get("/openapi.json")
    assert status == 200
    assert set(doc["paths"]) == {"/v1/patterns/{name}", "/v1/promises/{id}", "/openapi.json"}
    assert "n <= 77" in doc["info"]["description"]


async def test_health_routes__still_served_beside_the_api(serve: Any) -> None:
    served = await serve()
    assert (await served.client.get("/healthz")).status == 200
    assert (await served.client.get("/readyz")).status == 200
    resp = await served.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"


async def test_get__server_never_answers__503_within_the_describe_timeout(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hanging(*_: Any, **__: Any) -> Any:
        await asyncio.sleep(3600)

    monkeypatch.setattr(api_routes, "DESCRIBE_TIMEOUT_SECONDS", 0.2)
    served = await serve(describe=hanging)
    started = time.monotonic()
    status, body = await served.get("/v1/promises/factorial-3")
    assert status == 503
    assert body["error"] == "the Resonate server is unavailable: no answer within 0.2 s"
    assert time.monotonic() - started < 2


async def test_post__timeout_shorter_than_the_create__202_location_always_exists(
    serve: Any,
) -> None:
    served = await serve(RESONATE_PATTERNS_STEP_DELAY_MS="300")
    status, body, resp = await served.post(
        "enrich_batch", {"args": [[1, 2]], "id": "tiny-wait"}, "?timeout=0.000001"
    )
    assert (status, body["id"], resp.headers["Location"]) == (202, "tiny-wait", body["location"])
    status, found = await served.get(body["location"])
    assert status == 200  # the call was stored before the 202, never a dangling Location
    assert found["id"] == "tiny-wait"


async def test_post__input_checked_once_by_the_client_side(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.patterns import registry

    checked: list[tuple[Any, ...]] = []
    target = registry.pattern("factorial")

    def counting(settings: Any, *args: Any) -> object:
        checked.append(args)
        return target.check(settings, *args)

    monkeypatch.setitem(registry.BY_NAME, "factorial", replace(target, check=counting))
    served = await serve()
    status, body, _ = await served.post("factorial", {"args": [5]})
    assert (status, body["result"]) == (200, 120)
    # The durable function runs the same check itself, not through the registry.
    assert checked == [(5,)]
