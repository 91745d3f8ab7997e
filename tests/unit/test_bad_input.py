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
    ("enrich_one", (2.5,), "enrich_one: record ids must be integers or strings, got float 2.5"),
    ("process_one", ("4",), "process_one: item must be an integer, got str '4'"),
    ("process_one", (2**63,), "process_one: item must be <= 9223372036854775807"),
    ("fetch_links", ("ftp://x",), "fetch_links: url must start with http:// or https://"),
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


@pytest.mark.parametrize(
    ("token", "value"),
    [("20", 20), ("-3", -3), (" 7", " 7"), ("abc", "abc"), ("1,2", "1,2"), ("", "")],
)
def test_word_value__integer_words_become_ints_other_words_stay_text(
    token: str, value: int | str
) -> None:
    from service.patterns.validation import word_value

    assert word_value(token, "N") == value
    assert type(word_value(token, "N")) is type(value)


def test_word_value__more_digits_than_python_converts__usage_error_naming_the_word() -> None:
    from service.errors import UsageError
    from service.patterns.validation import word_value

    with pytest.raises(UsageError, match=r"^ID has too many digits \(5000\)$"):
        word_value("1" * 5000, "ID")


async def test_wrong_arity__rejected_not_retried(embedded: Any) -> None:
    runtime = await embedded()
    handle = runtime.resonate.options(target="workers").rpc("bad-arity", "factorial", 1, 2)
    with pytest.raises(Exception, match="too many positional arguments"):
        await asyncio.wait_for(handle.result(), 5)


# --------------------------------------------------------------- D3: largest n


def test_max_factorial_n__derived_from_the_digit_and_id_limits() -> None:
    import math
    import sys

    from service.devserver.protocol import MAX_ID_CHARS
    from service.patterns.validation import (
        MAX_FACTORIAL_N,
        MAX_ROOT_ID_CHARS,
        MAX_VALUE_DIGITS,
        SERVER_MAX_ID_CHARS,
        deepest_factorial_id_chars,
    )

    assert SERVER_MAX_ID_CHARS == MAX_ID_CHARS, "one id limit, the local server's"
    assert MAX_VALUE_DIGITS == sys.int_info.default_max_str_digits == 4300
    assert MAX_FACTORIAL_N == 1558
    assert len(str(math.factorial(MAX_FACTORIAL_N))) <= MAX_VALUE_DIGITS
    with pytest.raises(ValueError, match="Exceeds the limit"):
        str(math.factorial(MAX_FACTORIAL_N + 1))
    assert deepest_factorial_id_chars(MAX_FACTORIAL_N, MAX_ROOT_ID_CHARS) <= MAX_ID_CHARS


async def test_factorial_at_the_maximum__computed_stored_and_cached_above_it_rejected_at_once(
    embedded: Any,
) -> None:
    import math

    from service.client import invoke
    from service.patterns.validation import MAX_FACTORIAL_N

    runtime = await embedded(RESONATE_PATTERNS_MAX_N=str(MAX_FACTORIAL_N))
    first = await invoke(runtime, pattern("factorial"), (MAX_FACTORIAL_N,), wait_seconds=120)
    assert first.result == math.factorial(MAX_FACTORIAL_N)
    assert not first.cached
    again = await invoke(runtime, pattern("factorial"), (MAX_FACTORIAL_N,), wait_seconds=10)
    assert again.cached
    assert again.result == first.result
    started = time.monotonic()
    with pytest.raises(InputError, match=f"n must be <= {MAX_FACTORIAL_N}"):
        await invoke(runtime, pattern("factorial"), (MAX_FACTORIAL_N + 1,), wait_seconds=10)
    # The durable function refuses it as well, whatever a client sends.
    handle = runtime.resonate.options(target="workers").rpc(
        "factorial-over-max", "factorial", MAX_FACTORIAL_N + 1
    )
    with pytest.raises(Exception, match=f"n must be <= {MAX_FACTORIAL_N}"):
        await asyncio.wait_for(handle.result(), 5)
    assert time.monotonic() - started < 3


def test_settings__max_n_above_the_derived_maximum__config_error_naming_the_variable() -> None:
    from service.errors import ConfigError
    from tests.conftest import make_settings

    with pytest.raises(ConfigError, match="RESONATE_PATTERNS_MAX_N='1559' is invalid"):
        make_settings(RESONATE_PATTERNS_MAX_N="1559")
    assert make_settings(RESONATE_PATTERNS_MAX_N="1558").max_n == 1558
