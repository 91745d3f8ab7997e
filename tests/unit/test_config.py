"""Configuration: defaults, validation messages, and the README table."""

from __future__ import annotations

import pytest

from service.config import Flag, env_names, load_settings, settings_table
from service.errors import ConfigError
from tests.conftest import ROOT


def test_defaults__empty_environment__embedded_with_own_group_as_targets() -> None:
    s = load_settings({})
    assert s.embedded
    assert s.group == "workers"
    assert s.factorial_group == "workers"
    assert s.enrich_group == "workers"
    assert s.task_ttl_seconds == 60
    assert s.max_concurrent_tasks == 64


def test_targets__set__route_to_other_groups() -> None:
    s = load_settings(
        {
            "RESONATE_GROUP": "api",
            "RESONATE_PATTERNS_FACTORIAL_TARGET": "math",
            "RESONATE_PATTERNS_ENRICH_TARGET": "enrich",
        }
    )
    assert (s.group, s.factorial_group, s.enrich_group) == ("api", "math", "enrich")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RESONATE_PATTERNS_MAX_N", "abc", "an integer in [0, 1558]"),
        ("RESONATE_PATTERNS_MAX_N", "-1", "an integer in [0, 1558]"),
        ("RESONATE_PATTERNS_TASK_TTL_SECONDS", "0", "a number in [1, 86400]"),
        ("RESONATE_PATTERNS_TASK_TTL_SECONDS", "nan", "a number in [1, 86400]"),
        ("RESONATE_PATTERNS_MAX_CONCURRENT_TASKS", "0", "an integer in [1, 10000]"),
        ("RESONATE_PATTERNS_HTTP_PORT", "70000", "an integer in [0, 65535]"),
        ("RESONATE_PATTERNS_LOG_LEVEL", "loud", "one of debug, info, warning, error"),
        ("RESONATE_PATTERNS_LINK_SOURCE", "ftp", "one of synthetic, http"),
        ("RESONATE_GROUP", "Workers", "a lowercase DNS label"),
        ("RESONATE_GROUP", "a_b", "a lowercase DNS label"),
        ("RESONATE_URL", "localhost:8001", "an http(s) URL"),
    ],
)
def test_bad_value__any_setting__error_names_variable_and_range(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({variable: value})
    message = str(err.value)
    assert message.startswith(f"{variable}={value!r} is invalid: expected ")
    assert expected in message


def test_flag_override__wins_over_the_variable__bad_one_named_like_a_variable() -> None:
    s = load_settings({"RESONATE_GROUP": "from-env"}, group=Flag("--group", "from-flag"))
    assert s.group == "from-flag"
    for raw in ("Bad_Group", ""):  # an empty flag is a value given, not "unset"
        with pytest.raises(ConfigError) as err:
            load_settings({"RESONATE_GROUP": "ok"}, group=Flag("--group", raw))
        assert str(err.value) == (
            f"--group={raw!r} is invalid: expected a lowercase DNS label "
            "(a-z, 0-9, '-', at most 63 characters)"
        )


def test_replace__raw_values_validated_like_the_environment() -> None:
    s = load_settings({})
    changed = s.replace(data_dir="/tmp/elsewhere", max_n="12", resonate_url="http://h:1/")
    assert (changed.data_dir, changed.max_n, changed.resonate_url) == (
        "/tmp/elsewhere",
        12,
        "http://h:1",
    )
    assert s.max_n == 1000, "a copy: the original is unchanged"
    with pytest.raises(ConfigError) as err:
        s.replace(max_n="99999")
    assert str(err.value).startswith("RESONATE_PATTERNS_MAX_N='99999' is invalid: expected ")
    with pytest.raises(KeyError, match="nope"):
        s.replace(nope="1")


def test_empty_value__treated_as_unset() -> None:
    assert load_settings({"RESONATE_URL": "", "RESONATE_GROUP": " "}).embedded


def test_readme__configuration_table__matches_definitions() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "regenerate the README table: python scripts/docs.py"


def test_env_names__unique_and_prefixed() -> None:
    names = env_names()
    assert len(names) == len(set(names))
    for name in names:
        assert name.startswith("RESONATE_")


def test_operator_selector__label_pairs_in_order__unset_means_every_autoscaler() -> None:
    env = {"RESONATE_PATTERNS_OPERATOR_SELECTOR": " app.kubernetes.io/instance=rp , tier= "}
    assert load_settings(env).operator_selector == (
        ("app.kubernetes.io/instance", "rp"),
        ("tier", ""),
    )
    assert load_settings({}).operator_selector is None


@pytest.mark.parametrize(
    "raw", ["instance", "a=b,a=c", "a==b", "a!=b", "a=b,", "-a=b", "a=b c", "x/y/z=1", "a=-b"]
)
def test_operator_selector__not_equality_label_pairs__error_names_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"RESONATE_PATTERNS_OPERATOR_SELECTOR": raw})
    assert "RESONATE_PATTERNS_OPERATOR_SELECTOR" in str(caught.value)
