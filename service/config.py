"""Every setting of resonate-patterns, read from the environment in one place.

Each field of :class:`Settings` carries a :class:`Spec` in its metadata: the
environment variable it is read from, its default, what values it accepts and
what it is for. That one definition drives parsing and validation
(:func:`load_settings`), the configuration table in the README
(:func:`settings_table`) and the env vars the Helm chart sets (a test checks
the chart against :func:`env_names`). A bad value raises :class:`ConfigError`
naming the variable and the accepted range; entry points print that one line
and exit 2 before doing anything else.

Command-line flags go through the same loader: a flag that overrides a
setting is passed as a :class:`Flag` (``load_settings(env, group=Flag("--group",
raw))``), and options that exist only as flags (``up --workers``) are fields
of their own spec'd dataclasses read by :func:`load_fields`; either way the
value is parsed by the same :class:`Spec` and a bad one fails with the same
one-line error, naming the flag instead of a variable.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlparse

from service.errors import ConfigError
from service.patterns.validation import MAX_FACTORIAL_N

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from _typeshed import DataclassInstance

#: A group name becomes the host part of a ``poll://any@{group}`` address, and
#: the server lowercases URL hosts: an uppercase group would never be delivered
#: to. So groups are DNS-label shaped (also valid as Kubernetes names).
GROUP_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

LogFormat = Literal["json", "console", "auto"]
LinkSource = Literal["synthetic", "http"]
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console", "auto")
LINK_SOURCES: tuple[LinkSource, ...] = ("synthetic", "http")


@dataclass(frozen=True)
class Spec:
    """How one setting is read: variable name, default, parser and meaning."""

    #: The environment variable; ``None`` for an option that exists only as a flag.
    env: str | None
    #: Default as it would be written in the environment; ``None`` = unset.
    default: str | None
    #: Human description of accepted values, used in errors and docs.
    accepted: str
    doc: str
    parse: Callable[[str], Any]
    #: A credential: never printed (``config`` shows whether it is set, not its value).
    secret: bool = False
    #: The command-line flag of a flag-only option (named in its errors).
    flag: str | None = None

    @property
    def name(self) -> str:
        """What a user sets: the variable, else the flag."""
        return self.env or self.flag or "?"


@dataclass(frozen=True)
class Flag:
    """A raw value given on the command line for a setting; its errors name ``flag``."""

    flag: str
    raw: str


def int_in(lo: int, hi: int) -> tuple[str, Callable[[str], int]]:
    accepted = f"an integer in [{lo}, {hi}]"

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(accepted) from None
        if not lo <= value <= hi:
            raise ValueError(accepted)
        return value

    return accepted, parse


def float_in(lo: float, hi: float, *, above: bool = False) -> tuple[str, Callable[[str], float]]:
    """A number in ``[lo, hi]`` (``above``: in ``(lo, hi]``, e.g. a positive interval)."""
    accepted = f"a number in {'(' if above else '['}{lo:g}, {hi:g}]"

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(accepted) from None
        low_ok = lo < value if above else lo <= value
        if not (low_ok and value <= hi):  # also rejects NaN
            raise ValueError(accepted)
        return value

    return accepted, parse


def _choice[C: str](options: tuple[C, ...]) -> tuple[str, Callable[[str], C]]:
    accepted = "one of " + ", ".join(options)

    def parse(raw: str) -> C:
        value = raw.strip().lower()
        for option in options:
            if option == value:
                return option
        raise ValueError(accepted)

    return accepted, parse


def _group(raw: str) -> str:
    value = raw.strip()
    if not GROUP_RE.match(value):
        raise ValueError("a group name")
    return value


GROUP_ACCEPTED = "a lowercase DNS label (a-z, 0-9, '-', at most 63 characters)"
#: A worker group's parser, for :func:`spec`.
GROUP_NAME = (GROUP_ACCEPTED, _group)


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("url")
    return value


def _namespace(raw: str) -> str:
    value = raw.strip()
    if value != "*" and not GROUP_RE.match(value):
        raise ValueError("namespace")
    return value


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("text")
    return value


#: A Kubernetes label key: an optional DNS-subdomain prefix and "/", then a name of at most
#: 63 characters (alphanumerics, '-', '_', '.'; alphanumeric at both ends).
LABEL_KEY_RE = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: A Kubernetes label value: empty, or a label name's shape.
LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_SELECTOR_ACCEPTED = "comma-separated key=value label pairs, e.g. app.kubernetes.io/instance=rp"


def _selector(raw: str) -> tuple[tuple[str, str], ...]:
    """Equality terms only (kubectl's ``-l k=v,k2=v2``); each key once."""
    terms: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if sep != "=" or key in terms or value.startswith("="):
            raise ValueError(_SELECTOR_ACCEPTED)
        prefix = key.rpartition("/")[0]
        if len(prefix) > 253 or not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value):
            raise ValueError(_SELECTOR_ACCEPTED)
        terms[key] = value
    return tuple(terms.items())


def _token(raw: str) -> str:
    value = raw.strip()
    # A JWT is three base64url parts; anything with whitespace or control
    # characters would corrupt the header it travels in.
    if not value or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("token")
    return value


def spec[T](
    env: str | None,
    default: str | None,
    doc: str,
    parser: tuple[str, Callable[[str], T]],
    *,
    secret: bool = False,
    flag: str | None = None,
) -> T:
    """Declare a field read from ``env`` (or, with ``env=None``, only from ``flag``).

    Typed as the parser's result so the field's annotation is checked against
    it; the value itself is a :func:`dataclasses.field` carrying the
    :class:`Spec`, filled in by :func:`load_fields`.
    """
    accepted, parse = parser
    made = field(
        metadata={"spec": Spec(env, default, accepted, doc, parse, secret, flag)},
        repr=not secret,
    )
    return cast("T", made)


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process. Build with :func:`load_settings`."""

    # -- connection and identity ------------------------------------------------
    resonate_url: str | None = spec(
        "RESONATE_URL",
        None,
        "Resonate server URL. Unset: run embedded (in-process server and worker).",
        ("an http(s) URL such as http://localhost:8001", _url),
    )
    token: str | None = spec(
        "RESONATE_TOKEN",
        None,
        "JWT sent to the Resonate server when it has auth on (head.auth on requests, "
        "Authorization: Bearer on the event stream); the SDK's own variable name.",
        ("a JWT (no whitespace)", _token),
        secret=True,
    )
    stream_read_timeout_seconds: float = spec(
        "RESONATE_PATTERNS_STREAM_READ_TIMEOUT_SECONDS",
        "60",
        "Silence after which the event stream from the server counts as dead and is "
        "re-opened (the local server pings every 15 s).",
        float_in(5, 3600),
    )
    group: str = spec(
        "RESONATE_GROUP",
        "workers",
        "Worker group this process joins; every pattern is registered under it.",
        GROUP_NAME,
    )
    factorial_target: str | None = spec(
        "RESONATE_PATTERNS_FACTORIAL_TARGET",
        None,
        "Group that factorial's recursive rpc calls are routed to (default: RESONATE_GROUP).",
        GROUP_NAME,
    )
    enrich_target: str | None = spec(
        "RESONATE_PATTERNS_ENRICH_TARGET",
        None,
        "Group that parallel_enrich's rpc children are routed to (default: RESONATE_GROUP).",
        GROUP_NAME,
    )
    # -- task execution -----------------------------------------------------------
    task_ttl_seconds: float = spec(
        "RESONATE_PATTERNS_TASK_TTL_SECONDS",
        "60",
        "Task lease TTL against a server; the worker heartbeats at half of it. "
        "Embedded mode never expires leases (no heartbeats there).",
        float_in(1, 86400),
    )
    max_concurrent_tasks: int = spec(
        "RESONATE_PATTERNS_MAX_CONCURRENT_TASKS",
        "64",
        "Most tasks this process executes (holds leases for) at once.",
        int_in(1, 10000),
    )
    drain_seconds: float = spec(
        "RESONATE_PATTERNS_DRAIN_SECONDS",
        "20",
        "On SIGTERM, how long in-flight executions may take to finish before exit.",
        float_in(0, 3600),
    )
    # -- health and metrics endpoint -------------------------------------------------
    http_host: str = spec(
        "RESONATE_PATTERNS_HTTP_HOST",
        "0.0.0.0",
        "Address the worker's HTTP server binds to (the /v1 API, /healthz, /readyz, /metrics).",
        ("a host name or IP address", _text),
    )
    http_port: int = spec(
        "RESONATE_PATTERNS_HTTP_PORT",
        "9400",
        "Port of the worker's HTTP server: the /v1 API, /healthz, /readyz and /metrics (0 = any).",
        int_in(0, 65535),
    )
    # -- logs ---------------------------------------------------------------------------
    log_level: str = spec(
        "RESONATE_PATTERNS_LOG_LEVEL",
        "info",
        "Least severe log level written.",
        _choice(LOG_LEVELS),
    )
    log_format: LogFormat = spec(
        "RESONATE_PATTERNS_LOG_FORMAT",
        "auto",
        "json, console, or auto (console when stderr is a terminal, JSON otherwise).",
        _choice(LOG_FORMATS),
    )
    # -- input limits ---------------------------------------------------------------------
    max_n: int = spec(
        "RESONATE_PATTERNS_MAX_N",
        "1000",
        "Largest n factorial accepts (each level is one durable rpc); at most the "
        "largest whose n! can be stored (more than 4300 digits cannot cross a JSON codec).",
        int_in(0, MAX_FACTORIAL_N),
    )
    max_fanout: int = spec(
        "RESONATE_PATTERNS_MAX_FANOUT",
        "10000",
        "Most children one fan-out (enrich_*, process_bounded) may spawn.",
        int_in(1, 1000000),
    )
    max_crawl_depth: int = spec(
        "RESONATE_PATTERNS_MAX_CRAWL_DEPTH",
        "5",
        "Hard cap on crawl depth.",
        int_in(0, 50),
    )
    max_crawl_pages: int = spec(
        "RESONATE_PATTERNS_MAX_CRAWL_PAGES",
        "1000",
        "Most pages one crawl fetches; the crawl stops expanding past it.",
        int_in(1, 1000000),
    )
    # -- simulated work and link source -------------------------------------------------------
    step_delay_ms: int = spec(
        "RESONATE_PATTERNS_STEP_DELAY_MS",
        "0",
        "Simulated I/O latency of each leaf step "
        "(enrich_one, process_one, fetch_links; once per factorial level).",
        int_in(0, 600000),
    )
    link_source: LinkSource = spec(
        "RESONATE_PATTERNS_LINK_SOURCE",
        "synthetic",
        "Where fetch_links reads links: a deterministic synthetic graph, or real HTTP.",
        _choice(LINK_SOURCES),
    )
    synthetic_pages: int = spec(
        "RESONATE_PATTERNS_SYNTHETIC_PAGES",
        "100",
        "Number of pages in the synthetic link graph.",
        int_in(1, 1000000),
    )
    synthetic_links: int = spec(
        "RESONATE_PATTERNS_SYNTHETIC_LINKS",
        "3",
        "Links per page in the synthetic link graph.",
        int_in(0, 100),
    )
    http_fetch_timeout_seconds: float = spec(
        "RESONATE_PATTERNS_FETCH_TIMEOUT_SECONDS",
        "10",
        "Timeout of one HTTP page fetch when the link source is http.",
        float_in(0.1, 600),
    )
    # -- storage ------------------------------------------------------------------------------
    embedded_store: str = spec(
        "RESONATE_PATTERNS_EMBEDDED_STORE",
        ":memory:",
        "Embedded mode's promise store: ':memory:' or a SQLite file that keeps "
        "results (the factorial cache) across runs.",
        ("':memory:' or a file path", _text),
    )
    data_dir: str = spec(
        "RESONATE_PATTERNS_DATA_DIR",
        ".resonate-patterns",
        "Where the local stack (`up`) keeps its server database and logs.",
        ("a directory path", _text),
    )

    # -- autoscaling operator ---------------------------------------------------------------
    watch_namespace: str | None = spec(
        "RESONATE_PATTERNS_WATCH_NAMESPACE",
        None,
        "Namespace whose WorkerAutoscalers the operator handles; '*' for all namespaces "
        "(default: the namespace the operator runs in).",
        ("a namespace name or '*'", _namespace),
    )
    backlog_scan_seconds: float = spec(
        "RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS",
        "2",
        "Longest the operator and the backlog API reuse one scan of the server's backlog "
        "(every group at once); 0 scans on every read.",
        float_in(0, 300),
    )
    operator_peering: str | None = spec(
        "RESONATE_PATTERNS_OPERATOR_PEERING",
        "resonate-patterns",
        "kopf peering object shared by operator replicas so only one acts at a time "
        "(empty value: default; 'standalone' turns peering off).",
        ("a peering name, or 'standalone'", _text),
    )

    operator_selector: tuple[tuple[str, str], ...] | None = spec(
        "RESONATE_PATTERNS_OPERATOR_SELECTOR",
        None,
        "Labels a WorkerAutoscaler must carry for the operator to act on it, so that several "
        "operators (releases) share a namespace or cluster without touching each other's "
        "(default: every WorkerAutoscaler it watches).",
        (_SELECTOR_ACCEPTED, _selector),
    )

    @property
    def embedded(self) -> bool:
        """True when no server URL is configured: run server and worker in-process."""
        return self.resonate_url is None

    @property
    def factorial_group(self) -> str:
        """Group factorial recursion is routed to."""
        return self.factorial_target or self.group

    @property
    def enrich_group(self) -> str:
        """Group parallel_enrich children are routed to."""
        return self.enrich_target or self.group

    def replace(self, **changes: str | Flag) -> Settings:
        """A copy with ``changes`` applied: raw values, validated as :func:`load_settings` does.

        Raises :class:`ConfigError` naming the variable (or the flag) of a bad
        value, :class:`KeyError` for a name that is not a setting.
        """
        table = specs()
        return dataclasses.replace(self, **{k: _parse(table[k], v) for k, v in changes.items()})


def specs_of(cls: type[DataclassInstance]) -> dict[str, Spec]:
    """Map each field name of a dataclass of :func:`spec` fields to its :class:`Spec`."""
    return {f.name: cast("Spec", f.metadata["spec"]) for f in dataclasses.fields(cls)}


def specs() -> dict[str, Spec]:
    """Map each :class:`Settings` field name to its :class:`Spec`."""
    return specs_of(Settings)


def env_names() -> list[str]:
    """Every environment variable :func:`load_settings` reads."""
    return [s.env for s in specs().values() if s.env is not None]


def _parse(s: Spec, given: str | Flag | None) -> Any:
    """One field's value: ``given`` (a raw value or a :class:`Flag`), else its default.

    An empty variable counts as unset.
    """
    raw: str | None
    if isinstance(given, Flag):  # typed on purpose, so even an empty one is checked
        name, raw = given.flag, given.raw
    elif given is None or given.strip() == "":
        name, raw = s.name, s.default
    else:
        name, raw = s.name, given
    if raw is None:
        return None
    try:
        return s.parse(raw)
    except ValueError:
        shown = "(hidden)" if s.secret else raw
        raise ConfigError(name, shown, s.accepted) from None


def load_fields[D: DataclassInstance](
    cls: type[D], env: Mapping[str, str], overrides: Mapping[str, str | Flag | None]
) -> D:
    """Build ``cls`` (a dataclass of :func:`spec` fields) from ``overrides``, then ``env``.

    ``overrides`` are raw values keyed by field name: a :class:`Flag` (errors
    name the flag) or a plain string (errors name the variable); ``None``
    means not given. Raises :class:`ConfigError` on the first bad value.
    """
    values: dict[str, Any] = {}
    for name, s in specs_of(cls).items():
        given = overrides.get(name)
        if given is None and s.env is not None:
            given = env.get(s.env)
        values[name] = _parse(s, given)
    return cls(**values)


def load_settings(env: Mapping[str, str], **overrides: str | Flag | None) -> Settings:
    """Parse and validate every setting from ``env``.

    ``overrides`` are raw values keyed by field name that win over ``env``:
    a CLI flag passes a :class:`Flag`, so it is validated the same way and a
    bad value names the flag. An empty variable counts as unset. Raises
    :class:`ConfigError` on the first bad value, naming the variable.
    """
    return load_fields(Settings, env, overrides)


def settings_table() -> str:
    """The configuration reference as a Markdown table (embedded in the README)."""
    rows = [
        "| Variable | Default | Accepted | Meaning |",
        "|---|---|---|---|",
    ]
    for s in specs().values():
        default = "(unset)" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.name}` | {default} | {s.accepted} | {s.doc} |")
    return "\n".join(rows)
