"""values.schema.json and the template checks reject bad values with a readable message.

Each case renders the chart with one bad values file, with helm 4 and helm 3
(their schema libraries word errors differently), and asserts on stderr.
Comparisons JSON schema cannot make (min > max, auth without a key or a
token, an untested server image) fail in a template helper with one line
naming the values.
The schema is also cross-checked with service.config, which owns the
settings the chart passes to the workers.
"""

from __future__ import annotations

import json
import re
import typing
from functools import cache
from typing import Any

import pytest

from service.config import GROUP_RE, LOG_LEVELS, LogFormat, env_names, specs
from tests.chart.conftest import CHART, helm_run, load_yaml

#: Env vars the chart sets itself on worker pods (not allowed in extraSettings;
#: RESONATE_TOKEN comes only from a Secret, with auth.enabled).
CHART_MANAGED = {
    "RESONATE_URL",
    "RESONATE_GROUP",
    "RESONATE_PATTERNS_FACTORIAL_TARGET",
    "RESONATE_PATTERNS_ENRICH_TARGET",
    "RESONATE_PATTERNS_TASK_TTL_SECONDS",
    "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS",
    "RESONATE_PATTERNS_DRAIN_SECONDS",
    "RESONATE_PATTERNS_HTTP_PORT",
    "RESONATE_PATTERNS_LOG_LEVEL",
    "RESONATE_PATTERNS_LOG_FORMAT",
    "RESONATE_TOKEN",
}
#: Settings that mean nothing on a worker pod (embedded mode, local stack, operator).
NOT_FOR_WORKERS = {
    "RESONATE_PATTERNS_EMBEDDED_STORE",
    "RESONATE_PATTERNS_DATA_DIR",
    "RESONATE_PATTERNS_WATCH_NAMESPACE",
    "RESONATE_PATTERNS_OPERATOR_PEERING",
    "RESONATE_PATTERNS_OPERATOR_SELECTOR",
    "RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS",
}

#: (case id, values YAML, substrings every helm's stderr must contain, after
#: normalising "/a/0/b" paths to "a.0.b" and lower-casing).
SCHEMA_CASES: list[tuple[str, str, list[str]]] = [
    (
        "wrong-type",
        "workerDefaults:\n  replicas: two\n",
        ["workerdefaults.replicas", "integer", "string"],
    ),
    (
        "negative-replicas",
        "workerGroups:\n  - name: workers\n    replicas: -1\n",
        ["workergroups.0.replicas"],
    ),
    (
        "bad-group-name",
        "workerGroups:\n  - name: Workers_1\n",
        ["workergroups.0.name", "pattern"],
    ),
    (
        "missing-group-name",
        "workerGroups:\n  - replicas: 2\n",
        ["workergroups.0", "name"],
    ),
    (
        "no-worker-groups",
        "workerGroups: []\n",
        ["workergroups"],
    ),
    (
        "unknown-key",
        "workerDefaults:\n  replica: 2\n",
        ["additional propert", "replica"],
    ),
    (
        "bad-log-level",
        "logLevel: loud\n",
        ["loglevel", "must be one of"],
    ),
    (
        "server-off-without-url",
        "server:\n  enabled: false\n",
        ["externalurl"],
    ),
    (
        "chart-managed-setting",
        "workerDefaults:\n  extraSettings:\n    RESONATE_GROUP: other\n",
        ["resonate_group"],
    ),
    (
        "negative-min-replicas",
        "workerDefaults:\n  autoscaling:\n    minReplicas: -1\n",
        ["workerdefaults.autoscaling.minreplicas"],
    ),
    (
        "ttl-out-of-range",
        "workerDefaults:\n  taskTtlSeconds: 0\n",
        ["workerdefaults.taskttlseconds"],
    ),
    (
        "two-servers-on-sqlite",
        "server:\n  replicas: 2\n",
        ["server.replicas", "1"],
    ),
    (
        "two-servers-on-postgres",
        "server:\n  replicas: 2\n  storage:\n    type: postgres\n"
        "    postgres:\n      existingSecret: pg\n",
        ["server.replicas", "1"],
    ),
    (
        "short-server-grace",
        "server:\n  terminationGracePeriodSeconds: 10\n",
        ["server.terminationgraceperiodseconds", "15"],
    ),
    (
        "retry-timeout-below-range",
        "server:\n  tasks:\n    retryTimeoutMs: 0\n",
        ["server.tasks.retrytimeoutms"],
    ),
    (
        "message-poll-interval-zero",
        "server:\n  messages:\n    pollIntervalMs: 0\n",
        ["server.messages.pollintervalms"],
    ),
    (
        "message-poll-interval-above-range",
        "server:\n  messages:\n    pollIntervalMs: 60000\n",
        ["server.messages.pollintervalms"],
    ),
    (
        "private-key-as-public-key",
        "auth:\n  publicKey:\n    pem: '-----BEGIN PRIVATE KEY-----'\n",
        ["auth.publickey.pem", "pattern"],
    ),
]
#: (case id, values YAML, the exact message of the template check).
TEMPLATE_CASES: list[tuple[str, str, str]] = [
    (
        "min-above-max",
        "workerDefaults:\n  autoscaling:\n    minReplicas: 5\n    maxReplicas: 2\n",
        "workerGroups[0] (workers): autoscaling.minReplicas (5) must not exceed "
        "autoscaling.maxReplicas (2)",
    ),
    (
        "min-above-max-in-second-group",
        "workerGroups:\n  - name: workers\n  - name: math\n"
        "    autoscaling:\n      minReplicas: 11\n",
        "workerGroups[1] (math): autoscaling.minReplicas (11) must not exceed "
        "autoscaling.maxReplicas (10)",
    ),
    (
        "fallback-outside-range",
        "workerDefaults:\n  autoscaling:\n    fallbackReplicas: 20\n",
        "workerGroups[0] (workers): autoscaling.fallbackReplicas (20) must lie between "
        "autoscaling.minReplicas (1) and autoscaling.maxReplicas (10)",
    ),
    (
        "postgres-without-url",
        "server:\n  storage:\n    type: postgres\n",
        "server.storage.type is postgres: set server.storage.postgres.existingSecret",
    ),
    (
        "duplicate-groups",
        "workerGroups:\n  - name: workers\n  - name: workers\n",
        'workerGroups[1] (workers): the group name "workers" is used twice',
    ),
]


def _template(values_yaml: str, tmp_path: Any, binary: str) -> tuple[int, str]:
    values = tmp_path / "values.yaml"
    values.write_text(values_yaml)
    done = helm_run("template", "rp", str(CHART), "-f", str(values), binary=binary)
    return done.returncode, done.stderr


def _normalised(stderr: str) -> str:
    text = re.sub(r"'/([^']*)'", lambda m: m.group(1).replace("/", "."), stderr)
    return text.lower()


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize(
    ("values_yaml", "expected"),
    [pytest.param(v, e, id=i) for i, v, e in SCHEMA_CASES],
)
def test_schema__rejects_bad_values_naming_the_key(
    values_yaml: str, expected: list[str], binary: str, tmp_path: Any
) -> None:
    code, stderr = _template(values_yaml, tmp_path, binary)
    assert code != 0
    assert "schema" in stderr.lower(), stderr
    text = _normalised(stderr)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{stderr}"


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize(
    ("values_yaml", "message"),
    [pytest.param(v, m, id=i) for i, v, m in TEMPLATE_CASES],
)
def test_template_checks__fail_with_one_readable_line(
    values_yaml: str, message: str, binary: str, tmp_path: Any
) -> None:
    code, stderr = _template(values_yaml, tmp_path, binary)
    assert code != 0
    assert message in stderr, stderr


def test_template_checks__accept_min_equal_max_and_fallback_at_the_bounds(tmp_path: Any) -> None:
    values = (
        "workerDefaults:\n  autoscaling:\n    minReplicas: 3\n    maxReplicas: 3\n"
        "    fallbackReplicas: 3\n"
    )
    code, stderr = _template(values, tmp_path, "helm")
    assert code == 0, stderr


# -- the schema agrees with service.config ------------------------------------------------------


@cache
def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


def worker_schema() -> dict[str, Any]:
    return dict(schema()["definitions"]["workerGroup"]["properties"])


def _range(env: str) -> tuple[float, float]:
    """The [lo, hi] range of a setting, from its 'accepted' text in service.config."""
    (spec,) = [s for s in specs().values() if s.env == env]
    match = re.search(r"\[([-0-9.e+]+), ([-0-9.e+]+)\]", spec.accepted)
    assert match, spec.accepted
    return float(match.group(1)), float(match.group(2))


def test_schema__group_pattern_is_the_service_group_rule() -> None:
    assert worker_schema()["name"]["pattern"] == GROUP_RE.pattern
    assert worker_schema()["factorialTarget"]["pattern"] == "^$|" + GROUP_RE.pattern
    assert worker_schema()["enrichTarget"]["pattern"] == "^$|" + GROUP_RE.pattern


def test_schema__log_enums_are_the_service_choices() -> None:
    props = schema()["properties"]
    assert props["logLevel"]["enum"] == list(LOG_LEVELS)
    assert props["logFormat"]["enum"] == list(typing.get_args(LogFormat))


@pytest.mark.parametrize(
    ("key", "env"),
    [
        ("taskTtlSeconds", "RESONATE_PATTERNS_TASK_TTL_SECONDS"),
        ("maxConcurrentTasks", "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS"),
        ("drainSeconds", "RESONATE_PATTERNS_DRAIN_SECONDS"),
    ],
)
def test_schema__ranges_are_the_service_ranges(key: str, env: str) -> None:
    prop = worker_schema()[key]
    assert (prop["minimum"], prop["maximum"]) == _range(env)


def test_schema__extra_settings_are_exactly_the_other_worker_settings() -> None:
    allowed = worker_schema()["extraSettings"]["propertyNames"]["enum"]
    assert set(allowed) == set(env_names()) - CHART_MANAGED - NOT_FOR_WORKERS
    assert set(env_names()) >= CHART_MANAGED


def test_schema__autoscaling_bounds_follow_the_crd() -> None:
    crd = load_yaml(CHART / "crds" / "workerautoscalers.yaml")
    crd_spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    ours = worker_schema()["autoscaling"]["properties"]
    for key in (
        "minReplicas",
        "maxReplicas",
        "targetTasksPerReplica",
        "activationTasks",
        "pollingIntervalSeconds",
        "failureThreshold",
        "fallbackReplicas",
    ):
        theirs = crd_spec["properties"][key]
        assert ours[key].get("minimum") == theirs.get("minimum"), key
        assert ours[key].get("maximum") == theirs.get("maximum"), key


def test_schema__draft_07_closed_at_the_top_and_every_default_valid() -> None:
    import jsonschema

    assert schema()["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema()["additionalProperties"] is False
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.Draft7Validator(schema()).validate(load_yaml(CHART / "values.yaml"))
