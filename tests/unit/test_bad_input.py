"""Bad input: a clear rejection naming the problem, and no retry loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.errors import InputError
from service.patterns.registry import pattern

SYNTH = "https://synthetic.local/p/1"

# (pattern, args, expected message fragment); limits are the defaults.
BAD: list[tuple[str, tuple[Any, ...], str]] = [
    ("factorial", (-1,), "factorial: n must be >= 0, got -1"),
    ("factorial", (1001,), "factorial: n must be <= 1000 (the configured limit), got 1001"),
    ("factorial", ("7",), "factorial: n must be an integer, got str '7'"),
    ("factorial", (2.5,), "factorial: n must be an integer, got float 2.5"),
    ("factorial", (True,), "factorial: n must be an integer, got bool True"),
    ("enrich_batch", ([],), "enrich_batch: ids must not be empty"),
    ("enrich_batch", ("1,2",), "enrich_batch: ids must be a list, got str '1,2'"),
    (
        "enrich_batch",
        (list(range(10001)),),
        "ids has 10001 items, more than the fan-out limit of 10000",
    ),
    ("parallel_enrich", ([1, 2.0],), "record ids must be integers or strings, got float 2.0"),
    ("enrich_tolerant", ([{"id": 1}],), "record ids must be integers or strings, got dict"),
    ("process_bounded", ([1, 2], 0), "process_bounded: k must be >= 1, got 0"),
    ("process_bounded", ([1, "2"], 1), "items[1] must be an integer, got str '2'"),
    ("process_bounded", ([], 2), "process_bounded: items must not be empty"),
    (
        "crawl",
        ({"url": SYNTH, "depth": 6},),
        "crawl: depth must be <= 5 (the configured limit), got 6",
    ),
    ("crawl", ({"url": "ftp://x", "depth": 1},), "url must start with http:// or https://"),
    ("crawl", ({"depth": 1},), "crawl: missing field: url"),
    ("crawl", ({"url": SYNTH, "deep": 1},), "crawl: unknown crawl fields: deep"),
    ("crawl", ("https://x",), 'crawl: expected an object {"url": ..., "depth": ...}'),
    ("crawl", ({"url": "https://example.com", "depth": 1},), "is not in the synthetic graph"),
]


@pytest.mark.parametrize(("name", "args", "message"), BAD)
async def test_durable_function__bad_input__rejected_once_with_clear_message(
    embedded: Any, executions: Any, name: str, args: tuple[Any, ...], message: str
) -> None:
    runtime = await embedded()
    # Bypass the client's own check: this is what any other client would hit.
    handle = runtime.resonate.options(target="workers").rpc(
        f"bad-{name}-{time.time_ns()}", name, *args
    )
    started = time.monotonic()
    with pytest.raises(Exception, match=r".") as err:
        await asyncio.wait_for(handle.result(), 5)
    assert message in str(err.value)
    assert time.monotonic() - started < 2, "a permanent input error must not be retried"
    assert len(executions.started(name)) == 1


@pytest.mark.parametrize(("name", "args", "message"), BAD)
def test_client_check__bad_input__same_message_before_anything_is_stored(
    name: str, args: tuple[Any, ...], message: str
) -> None:
    from tests.conftest import make_settings

    with pytest.raises(InputError) as err:
        pattern(name).validate(make_settings(), args)
    assert message in str(err.value)


async def test_wrong_arity__rejected_not_retried(embedded: Any) -> None:
    runtime = await embedded()
    handle = runtime.resonate.options(target="workers").rpc("bad-arity", "factorial", 1, 2)
    with pytest.raises(Exception, match="too many positional arguments"):
        await asyncio.wait_for(handle.result(), 5)
