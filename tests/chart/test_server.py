"""The official Resonate server as the chart runs it: v0.9.8, one instance, probes, settings, auth.

The chart is written for resonatehq/resonate v0.9.8 (tag commit 8c7c09a8).
That release reads its settings with figment (`Env::prefixed("RESONATE_")
.split("__")`, names lower-cased), so each variable below is the path of a
field of its `Config` struct (src/config.rs); PGPASSWORD is read by its
Postgres driver (sqlx-postgres 0.8.0) when the URL has no password. The
chart README maps each one to the source line that reads it. These tests
hold the rendered server to that list, to the docs' single-instance rule and
probes, and check that auth reaches every pod that calls the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.chart.conftest import CHART, CI_VALUES, Rendered, helm_run, load_yaml, render
from tests.chart.test_workloads import container_of, env_of, literal_env, workers

if TYPE_CHECKING:
    from pathlib import Path

#: The server release the chart is written for.
TESTED_TAG = "v0.9.8"
SERVER_PORT, SERVER_METRICS_PORT = 8001, 9090
#: Every variable the chart may set on the server container -> the v0.9.8 setting it feeds.
V098_SETTINGS: dict[str, str] = {
    "RESONATE_SERVER__BIND": "server.bind",
    "RESONATE_SERVER__PORT": "server.port",
    "RESONATE_SERVER__URL": "server.url",
    "RESONATE_OBSERVABILITY__METRICS_PORT": "observability.metrics_port",
    "RESONATE_LEVEL": "level",
    "RESONATE_TASKS__RETRY_TIMEOUT": "tasks.retry_timeout",
    "RESONATE_MESSAGES__POLL_INTERVAL": "messages.poll_interval",
    "RESONATE_STORAGE__TYPE": "storage.type",
    "RESONATE_STORAGE__SQLITE__PATH": "storage.sqlite.path",
    "RESONATE_STORAGE__POSTGRES__URL": "storage.postgres.url",
    "RESONATE_STORAGE__POSTGRES__POOL_SIZE": "storage.postgres.pool_size",
    "RESONATE_AUTH__PUBLICKEY": "auth.publickey",
    "RESONATE_AUTH__ISS": "auth.iss",
    "RESONATE_AUTH__AUD": "auth.aud",
}
#: Read by sqlx (the server's Postgres driver), not by the server's config.
DRIVER_ENV = {"PGPASSWORD"}
#: A real Ed25519 public key (SubjectPublicKeyInfo PEM) and a JWT-shaped token.
PUBLIC_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEArY9ndiGAjhb4L279NGIv9NfYX93QrOgKu+8hW1J3Ad4=\n"
    "-----END PUBLIC KEY-----\n"
)
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJwcmVmaXgiOiIifQ.c2lnbmF0dXJl"
AUTH_CI = load_yaml(CI_VALUES["auth"])["auth"]
STORAGES = {"sqlite": "default", "postgres": "external-postgres"}


def server_of(rendered: Rendered) -> dict[str, Any]:
    (server,) = rendered.component("Deployment", "server")
    return server


def pod_of(rendered: Rendered) -> dict[str, Any]:
    return dict(server_of(rendered)["spec"]["template"]["spec"])


def server_container(rendered: Rendered) -> dict[str, Any]:
    return container_of(server_of(rendered))


@pytest.fixture(params=sorted(STORAGES))
def storage(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    """(storage type, render) for sqlite (default values) and postgres (ci values)."""
    kind = str(request.param)
    return kind, render(CI_VALUES[STORAGES[kind]])


def _values_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return path


def _template(tmp_path: Path, text: str, *extra: str, binary: str = "helm") -> tuple[int, str]:
    values = _values_file(tmp_path, text)
    done = helm_run("template", "rp", str(CHART), "-f", str(values), *extra, binary=binary)
    return done.returncode, done.stderr


# -- one instance, Recreate, probes, shutdown --------------------------------------------------


def test_server__one_replica_and_recreate_for_every_storage(storage: tuple[str, Rendered]) -> None:
    kind, rendered = storage
    server = server_of(rendered)
    assert literal_env(server_container(rendered))["RESONATE_STORAGE__TYPE"] == kind
    assert server["spec"]["replicas"] == 1, kind
    assert server["spec"]["strategy"] == {"type": "Recreate"}, kind


def test_server__probes_health_and_ready_on_the_api_port(storage: tuple[str, Rendered]) -> None:
    kind, rendered = storage
    container = server_container(rendered)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": SERVER_PORT, "http-metrics": SERVER_METRICS_PORT}, kind
    probes = {
        probe: (container[probe]["httpGet"]["path"], ports[container[probe]["httpGet"]["port"]])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/health", SERVER_PORT),
        "livenessProbe": ("/health", SERVER_PORT),
        "readinessProbe": ("/ready", SERVER_PORT),
    }, kind
    env = literal_env(container)
    assert env["RESONATE_SERVER__PORT"] == str(SERVER_PORT)
    assert env["RESONATE_OBSERVABILITY__METRICS_PORT"] == str(SERVER_METRICS_PORT)
    (service,) = rendered.component("Service", "server")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("http", SERVER_PORT),
        ("http-metrics", SERVER_METRICS_PORT),
    }


def test_server__grace_period_outlasts_the_shutdown_timeout(storage: tuple[str, Rendered]) -> None:
    kind, rendered = storage
    pod = pod_of(rendered)
    assert pod["terminationGracePeriodSeconds"] >= 15, kind
    schema = load_yaml(CHART / "values.schema.json")["properties"]["server"]["properties"]
    assert schema["terminationGracePeriodSeconds"]["minimum"] == 15
    longer = render(sets=("server.terminationGracePeriodSeconds=120",))
    assert pod_of(longer)["terminationGracePeriodSeconds"] == 120


def test_server__no_service_links_in_its_environment(storage: tuple[str, Rendered]) -> None:
    """The server reads every RESONATE_* variable: Service links must not add any."""
    kind, rendered = storage
    assert pod_of(rendered)["enableServiceLinks"] is False, kind


# -- settings ----------------------------------------------------------------------------------


def test_server_settings__v098_names_follow_figment_nesting() -> None:
    for name, path in V098_SETTINGS.items():
        assert name == "RESONATE_" + path.upper().replace(".", "__"), name


@pytest.mark.parametrize("values", [*sorted(CI_VALUES), "postgres-password"])
def test_server_settings__every_env_var_is_a_v098_setting(values: str) -> None:
    if values == "postgres-password":
        rendered = render(
            CI_VALUES["external-postgres"],
            ("server.storage.postgres.password.existingSecret=db-app",),
        )
    else:
        rendered = render(CI_VALUES[values])
    servers = rendered.component("Deployment", "server")
    for server in servers:
        names = set(env_of(container_of(server)))
        assert names <= set(V098_SETTINGS) | DRIVER_ENV, names - set(V098_SETTINGS)


def test_server_settings__the_chart_sets_every_one_it_owns() -> None:
    sqlite = set(env_of(server_container(render())))
    postgres = set(env_of(server_container(render(CI_VALUES["external-postgres"]))))
    auth = set(env_of(server_container(render(CI_VALUES["auth"]))))
    common = {
        "RESONATE_SERVER__BIND",
        "RESONATE_SERVER__PORT",
        "RESONATE_SERVER__URL",
        "RESONATE_OBSERVABILITY__METRICS_PORT",
        "RESONATE_LEVEL",
        "RESONATE_TASKS__RETRY_TIMEOUT",
        "RESONATE_MESSAGES__POLL_INTERVAL",
        "RESONATE_STORAGE__TYPE",
    }
    assert sqlite == common | {"RESONATE_STORAGE__SQLITE__PATH"}
    assert postgres == common | {
        "RESONATE_STORAGE__POSTGRES__URL",
        "RESONATE_STORAGE__POSTGRES__POOL_SIZE",
    }
    assert auth == sqlite | {"RESONATE_AUTH__PUBLICKEY", "RESONATE_AUTH__ISS", "RESONATE_AUTH__AUD"}


def test_server_settings__retry_timeout_from_the_value() -> None:
    default = literal_env(server_container(render()))
    assert default["RESONATE_TASKS__RETRY_TIMEOUT"] == "1000"
    assert load_yaml(CHART / "values.yaml")["server"]["tasks"]["retryTimeoutMs"] == 1000
    postgres = literal_env(server_container(render(CI_VALUES["external-postgres"])))
    assert postgres["RESONATE_TASKS__RETRY_TIMEOUT"] == "500"
    large = literal_env(server_container(render(sets=("server.tasks.retryTimeoutMs=3600000",))))
    assert large["RESONATE_TASKS__RETRY_TIMEOUT"] == "3600000"


def test_server_settings__message_poll_interval_from_the_value(
    storage: tuple[str, Rendered],
) -> None:
    """messages.poll_interval: how long a queued message waits for delivery (server default 100)."""
    kind, rendered = storage
    assert literal_env(server_container(rendered))["RESONATE_MESSAGES__POLL_INTERVAL"] == "10", kind
    assert load_yaml(CHART / "values.yaml")["server"]["messages"]["pollIntervalMs"] == 10
    for ms in ("1", "100", "10000"):
        custom = render(sets=(f"server.messages.pollIntervalMs={ms}",))
        assert literal_env(server_container(custom))["RESONATE_MESSAGES__POLL_INTERVAL"] == ms
    bounds = load_yaml(CHART / "values.schema.json")["properties"]["server"]["properties"]
    poll = bounds["messages"]["properties"]["pollIntervalMs"]
    assert (poll["type"], poll["minimum"], poll["maximum"]) == ("integer", 1, 10000)


def test_server_settings__log_level_url_bind_and_args() -> None:
    container = server_container(render(sets=("server.logLevel=debug",)))
    env = literal_env(container)
    assert env["RESONATE_LEVEL"] == "debug"
    assert env["RESONATE_SERVER__BIND"] == "0.0.0.0"
    assert (
        env["RESONATE_SERVER__URL"] == f"http://rp-resonate-patterns-server.rp-ns.svc:{SERVER_PORT}"
    )
    assert container["args"] == ["serve"]
    custom = literal_env(
        server_container(render(sets=("server.url=http://resonate.example:8001",)))
    )
    assert custom["RESONATE_SERVER__URL"] == "http://resonate.example:8001"


# -- storage -----------------------------------------------------------------------------------


def test_server_sqlite__the_database_on_the_pvc() -> None:
    rendered = render()
    pod = pod_of(rendered)
    container = server_container(rendered)
    env = literal_env(container)
    assert env["RESONATE_STORAGE__TYPE"] == "sqlite"
    (pvc,) = rendered.kind("PersistentVolumeClaim")
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert env["RESONATE_STORAGE__SQLITE__PATH"] == mount["mountPath"] + "/resonate.db"


def _no_plain_postgres_url(rendered: Rendered) -> None:
    for obj, spec in rendered.pod_specs():
        for container in spec["containers"]:
            for entry in container.get("env", []):
                assert "postgres://" not in str(entry.get("value", "")), obj["metadata"]["name"]
                assert "postgresql://" not in str(entry.get("value", "")), obj["metadata"]["name"]


def test_server_postgres__url_only_from_the_existing_secret_and_no_volume() -> None:
    rendered = render(CI_VALUES["external-postgres"])
    env = env_of(server_container(rendered))
    ref = env["RESONATE_STORAGE__POSTGRES__URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "resonate-postgres", "key": "url"}
    assert "value" not in env["RESONATE_STORAGE__POSTGRES__URL"]
    assert env["RESONATE_STORAGE__POSTGRES__POOL_SIZE"]["value"] == "20"
    assert "RESONATE_STORAGE__SQLITE__PATH" not in env
    assert "PGPASSWORD" not in env
    assert not rendered.kind("PersistentVolumeClaim")
    assert not rendered.kind("Secret")
    assert not [v for v in pod_of(rendered)["volumes"] if v["name"] == "data"]
    _no_plain_postgres_url(rendered)


def test_server_postgres__inline_url_goes_into_a_secret() -> None:
    rendered = render(
        sets=("server.storage.type=postgres", "server.storage.postgres.url=postgres://u:p@db/r")
    )
    (secret,) = rendered.kind("Secret")
    assert secret["stringData"] == {"url": "postgres://u:p@db/r"}
    server = server_of(rendered)
    ref = env_of(container_of(server))["RESONATE_STORAGE__POSTGRES__URL"]["valueFrom"]
    assert ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
    annotations = server["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations
    assert server["spec"]["replicas"] == 1
    _no_plain_postgres_url(rendered)


def test_server_postgres__password_alone_from_a_secret_as_pgpassword() -> None:
    rendered = render(
        CI_VALUES["external-postgres"],
        (
            "server.storage.postgres.password.existingSecret=db-app",
            "server.storage.postgres.password.secretKey=pw",
        ),
    )
    env = env_of(server_container(rendered))
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "db-app", "key": "pw"}
    assert "value" not in env["PGPASSWORD"]


# -- image -------------------------------------------------------------------------------------


def test_server_image__default_is_the_tested_release_everywhere() -> None:
    assert server_container(render())["image"] == f"resonatehqio/resonate:{TESTED_TAG}"
    values = load_yaml(CHART / "values.yaml")["server"]
    assert values["image"]["tag"] == TESTED_TAG
    assert values["allowUntestedImage"] is False
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["annotations"]["resonate-patterns.io/server-image"] == (
        f"resonatehqio/resonate:{TESTED_TAG}"
    )


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize("tag", ["v0.10.0", "v0.10.1", "latest", "v0.9.7", "v0.9.8-rc1", "0.9.8"])
def test_server_image__untested_tag_fails_with_one_line(
    tag: str, binary: str, tmp_path: Path
) -> None:
    code, stderr = _template(tmp_path, f"server:\n  image:\n    tag: {tag!r}\n", binary=binary)
    assert code != 0
    assert (
        f'server.image.tag is "{tag}" but this chart is written for the Resonate server '
        f"{TESTED_TAG}"
    ) in stderr
    assert "server.allowUntestedImage=true" in stderr


@pytest.mark.parametrize("binary", ["helm", "helm3"])
def test_server_image__untested_tag_fails_even_with_a_digest(binary: str, tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    values = f"server:\n  image:\n    tag: v0.10.1\n    digest: {digest}\n"
    code, stderr = _template(tmp_path, values, binary=binary)
    assert code != 0
    assert 'server.image.tag is "v0.10.1"' in stderr


def test_server_image__untested_tag_renders_when_allowed() -> None:
    rendered = render(sets=("server.image.tag=v0.10.1", "server.allowUntestedImage=true"))
    assert server_container(rendered)["image"] == "resonatehqio/resonate:v0.10.1"


def test_server_image__a_mirror_and_a_digest_after_the_tested_tag() -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    rendered = render(
        sets=(
            "server.image.repository=registry.example.com/resonatehqio/resonate",
            f"server.image.digest={digest}",
        )
    )
    assert server_container(rendered)["image"] == (
        f"registry.example.com/resonatehqio/resonate:{TESTED_TAG}@{digest}"
    )


@pytest.mark.parametrize(
    ("values_yaml", "fragment"),
    [
        ("server:\n  image:\n    tag: v0.9.8@sha256:abc\n", "server.image.tag"),
        ("server:\n  image:\n    tag: 0.10\n", "server.image.tag"),
        ("server:\n  image:\n    digest: v0.9.8\n", "server.image.digest"),
    ],
    ids=["digest-in-the-tag", "numeric-tag", "tag-as-digest"],
)
def test_server_image__schema_keeps_tag_and_digest_apart(
    values_yaml: str, fragment: str, tmp_path: Path
) -> None:
    for binary in ("helm", "helm3"):
        code, stderr = _template(tmp_path, values_yaml, binary=binary)
        assert code != 0
        assert fragment in stderr.replace("/", "."), stderr


def test_server_replicas__template_refuses_two_even_without_the_schema(tmp_path: Path) -> None:
    for storage_type in ("sqlite", "postgres"):
        values = (
            f"server:\n  replicas: 2\n  storage:\n    type: {storage_type}\n"
            "    postgres:\n      existingSecret: pg\n"
        )
        code, stderr = _template(tmp_path, values, "--skip-schema-validation")
        assert code != 0
        assert "server.replicas is 2 but the Resonate server is single-instance" in stderr


# -- auth --------------------------------------------------------------------------------------


def _token_ref(container: dict[str, Any]) -> dict[str, Any]:
    entry = env_of(container)["RESONATE_TOKEN"]
    assert "value" not in entry
    return dict(entry["valueFrom"]["secretKeyRef"])


def callers(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """(name, container) of every pod that calls the server: workers, operator, helm test."""
    found = []
    for obj, spec in rendered.pod_specs():
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in ("worker", "operator", "test"):
            found.extend((obj["metadata"]["name"], c) for c in spec["containers"])
    return found


def test_auth__public_key_mounted_and_named_by_publickey() -> None:
    rendered = render(CI_VALUES["auth"])
    container = server_container(rendered)
    env = literal_env(container)
    pod = pod_of(rendered)
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == AUTH_CI["publicKey"]["existingSecret"]
    (item,) = volume["secret"]["items"]
    assert item["key"] == AUTH_CI["publicKey"]["key"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert env["RESONATE_AUTH__PUBLICKEY"] == f"{mount['mountPath']}/{item['path']}"
    assert env["RESONATE_AUTH__ISS"] == AUTH_CI["issuer"]
    assert env["RESONATE_AUTH__AUD"] == AUTH_CI["audience"]


def test_auth__iss_and_aud_only_when_set() -> None:
    rendered = render(
        sets=(
            "auth.enabled=true",
            "auth.publicKey.existingConfigMap=resonate-jwt",
            "auth.token.existingSecret=resonate-token",
        )
    )
    container = server_container(rendered)
    env = literal_env(container)
    assert "RESONATE_AUTH__ISS" not in env
    assert "RESONATE_AUTH__AUD" not in env
    (volume,) = [v for v in pod_of(rendered)["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "resonate-jwt"
    assert env["RESONATE_AUTH__PUBLICKEY"] == "/etc/resonate/auth/public.pem"


def test_auth__token_from_the_secret_in_workers_operator_and_helm_test() -> None:
    rendered = render(
        CI_VALUES["auth"], ("workerGroups[0].name=workers", "workerGroups[1].name=math")
    )
    pods = callers(rendered)
    names = {name for name, _ in pods}
    assert {
        "rp-resonate-patterns-worker-workers",
        "rp-resonate-patterns-worker-math",
        "rp-resonate-patterns-operator",
        "rp-resonate-patterns-test-factorial",
    } <= names
    expected = {"name": AUTH_CI["token"]["existingSecret"], "key": AUTH_CI["token"]["secretKey"]}
    for name, container in pods:
        assert _token_ref(container) == expected, name
    assert "RESONATE_TOKEN" not in env_of(server_container(rendered))
    assert set(workers(rendered)) == {"workers", "math"}


def test_auth__inline_key_and_token_become_a_configmap_and_a_secret(tmp_path: Path) -> None:
    values = _values_file(
        tmp_path,
        "auth:\n  enabled: true\n  publicKey:\n    pem: |\n"
        + "".join(f"      {line}\n" for line in PUBLIC_PEM.splitlines())
        + f"  token:\n    value: {TOKEN}\n",
    )
    rendered = render(values)
    (config_map,) = [c for c in rendered.kind("ConfigMap") if "public-key" in c["metadata"]["name"]]
    assert config_map["data"] == {"public.pem": PUBLIC_PEM}
    (secret,) = rendered.kind("Secret")
    assert secret["stringData"] == {"token": TOKEN}
    pod = pod_of(rendered)
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    server_annotations = server_of(rendered)["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/auth-public-key" in server_annotations
    for name, container in callers(rendered):
        assert _token_ref(container) == {"name": secret["metadata"]["name"], "key": "token"}, name
    callers_of_the_server = [
        *rendered.component("Deployment", "worker"),
        *rendered.component("Deployment", "operator"),
    ]
    for deployment in callers_of_the_server:
        assert "checksum/auth-token" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_auth__off_by_default_nothing_rendered() -> None:
    rendered = render()
    assert not any("RESONATE_AUTH" in n for n in env_of(server_container(rendered)))
    assert not [v for v in pod_of(rendered)["volumes"] if v["name"] == "auth-public-key"]
    for name, container in callers(rendered):
        assert "RESONATE_TOKEN" not in env_of(container), name
    assert not rendered.kind("Secret")
    assert not rendered.kind("ConfigMap")


def test_auth__external_server_needs_only_the_token() -> None:
    rendered = render(
        CI_VALUES["external-server"],
        ("auth.enabled=true", "auth.token.existingSecret=resonate-token"),
    )
    assert not rendered.component("Deployment", "server")
    pods = callers(rendered)
    assert pods
    for name, container in pods:
        assert _token_ref(container) == {"name": "resonate-token", "key": "token"}, name


#: (case id, values YAML, the one-line message of the template check).
AUTH_CHECKS: list[tuple[str, str, str]] = [
    (
        "no-public-key",
        "auth:\n  enabled: true\n  token:\n    existingSecret: t\n",
        "auth.enabled is true: set auth.publicKey.existingSecret, "
        "auth.publicKey.existingConfigMap or auth.publicKey.pem",
    ),
    (
        "no-token",
        "auth:\n  enabled: true\n  publicKey:\n    existingSecret: k\n",
        "auth.enabled is true: set auth.token.existingSecret",
    ),
    (
        "two-key-sources",
        "auth:\n  enabled: true\n  publicKey:\n    existingSecret: k\n    existingConfigMap: k\n"
        "  token:\n    existingSecret: t\n",
        "auth.publicKey: set exactly one of existingSecret, existingConfigMap and pem",
    ),
    (
        "two-token-sources",
        f"auth:\n  enabled: true\n  publicKey:\n    existingSecret: k\n"
        f"  token:\n    existingSecret: t\n    value: {TOKEN}\n",
        "auth.token: set either existingSecret or value, not both",
    ),
    (
        "extra-env-repeats-a-chart-setting",
        "server:\n  extraEnv:\n    - name: RESONATE_TASKS__RETRY_TIMEOUT\n      value: '500'\n",
        "server.extraEnv sets RESONATE_TASKS__RETRY_TIMEOUT, which the chart sets itself",
    ),
]


@pytest.mark.parametrize("binary", ["helm", "helm3"])
@pytest.mark.parametrize(
    ("values_yaml", "message"), [pytest.param(v, m, id=i) for i, v, m in AUTH_CHECKS]
)
def test_template_checks__auth_and_server_env_fail_with_one_readable_line(
    values_yaml: str, message: str, binary: str, tmp_path: Path
) -> None:
    code, stderr = _template(tmp_path, values_yaml, binary=binary)
    assert code != 0
    assert message in stderr, stderr


@pytest.mark.parametrize("name", sorted([*V098_SETTINGS, *DRIVER_ENV]))
def test_template_checks__extra_env_never_repeats_a_chart_setting(
    name: str, tmp_path: Path
) -> None:
    code, stderr = _template(
        tmp_path, f"server:\n  extraEnv:\n    - name: {name}\n      value: x\n"
    )
    assert code != 0
    assert f"server.extraEnv sets {name}, which the chart sets itself" in stderr


def test_template_checks__extra_env_takes_other_v098_settings(tmp_path: Path) -> None:
    values = _values_file(
        tmp_path,
        "server:\n  extraEnv:\n    - name: RESONATE_MESSAGES__BATCH_SIZE\n      value: '200'\n",
    )
    assert literal_env(server_container(render(values)))["RESONATE_MESSAGES__BATCH_SIZE"] == "200"
    code, stderr = _template(
        tmp_path,
        "server:\n  extraEnv:\n    - name: RESONATE_MESSAGES__BATCH_SIZE\n      value: 200\n",
    )
    assert code != 0
    assert "extraEnv" in stderr
