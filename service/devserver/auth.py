"""JWT auth for the local server, with the official Resonate server's rules.

The official server (resonatehq/resonate ``src/auth.rs``, identical in tag
v0.9.8 and on main at PR #1119) verifies a JWT when it is started with a
public key (``--auth-publickey`` / ``RESONATE_AUTH__PUBLICKEY``, optional
``ISS`` and ``AUD``). This module does the same with PyJWT; every rule below
was read from that source and checked against a v0.9.8 binary:

* **Where the token travels.** ``head.auth`` of the envelope on ``POST /``;
  ``Authorization: Bearer <token>`` (exactly that prefix) on
  ``GET /poll/{group}/{id}``. Health and metrics need none.
* **Authentication (401 ``"Unauthorized"``).** A missing, empty or malformed
  token; a signature that does not verify; an algorithm outside the key's
  family (RSA: RS256/384/512 and PS256/384/512; EC: ES256/ES384; Ed25519:
  EdDSA); a missing or past ``exp`` (60 s of leeway, jsonwebtoken's default);
  with ``iss``/``aud`` configured, a missing or different ``iss``/``aud``.
  ``nbf`` and ``iat`` are not checked. Claims the server deserializes with a
  fixed type fail as 401 when they have another one: ``role`` and ``iss``
  must be strings, ``aud`` a *list* of strings (a single-string ``aud`` is
  refused even when no audience is configured), ``exp`` a number.
* **Authorization (403 ``"Forbidden"``), ``POST /`` only.** ``role: "admin"``
  (any case) may do anything. Otherwise the ``prefix`` claim must be a
  string: absent, null or another type is 403; ``""`` covers every id; any
  other prefix must start the request's resource id (:func:`resource_id`),
  and every task id of a ``task.heartbeat``. Searches and unknown kinds have
  no single id and are refused to any non-empty prefix.
* **Unsigned mode.** A public key of ``none`` verifies no signature but still
  requires a well-formed token with a known algorithm and a valid ``exp``.

The stream (``/poll``) is authenticated only, never authorized: any valid
token may listen on any group, as on the official server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from service.errors import ConfigError, ResonatePatternsError, UsageError
from service.telemetry.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

    #: The key types the official server loads (``DecodingKey::from_{rsa,ec,ed}_pem``).
    type VerificationKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

#: The official server's environment variables for its auth settings.
ENV_PUBLIC_KEY = "RESONATE_AUTH__PUBLICKEY"
ENV_ISS = "RESONATE_AUTH__ISS"
ENV_AUD = "RESONATE_AUTH__AUD"
#: The public-key value that turns on unsigned mode (signatures not checked).
UNSIGNED = "none"
#: Seconds of clock skew allowed on ``exp`` (jsonwebtoken's ``Validation`` default).
LEEWAY_SECONDS = 60
#: Reply messages, worded as the official server words them.
UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden"
#: The ``Authorization`` header prefix the official server strips (case-sensitive).
BEARER = "Bearer "

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = ("ES256", "ES384")
_ED_ALGORITHMS = ("EdDSA",)
#: Header algorithms jsonwebtoken can parse at all (what unsigned mode accepts).
_KNOWN_ALGORITHMS = frozenset(
    ("HS256", "HS384", "HS512", *_RSA_ALGORITHMS, *_EC_ALGORITHMS, *_ED_ALGORITHMS)
)
#: Request kinds with no single resource id: refused to a non-empty prefix.
_SEARCHES = frozenset(("promise.search", "task.search", "schedule.search"))
#: Request kinds whose resource id is ``data.id``.
_BY_ID = frozenset(
    (
        "promise.get",
        "promise.create",
        "promise.settle",
        "task.get",
        "task.acquire",
        "task.release",
        "task.fulfill",
        "task.suspend",
        "task.fence",
        "task.halt",
        "task.continue",
        "schedule.get",
        "schedule.delete",
    )
)

#: A refusal: (status, message) for the reply envelope.
type Refusal = tuple[int, str]


class TokenRejected(ResonatePatternsError):
    """A token failed authentication; ``reason`` says why (for the log only)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AuthOptions:
    """Auth settings as given on the command line or in the environment."""

    #: Path of a PEM public key (RSA, EC P-256/P-384 or Ed25519), or ``none``.
    public_key: str
    #: Required ``iss`` claim, if any.
    iss: str | None = None
    #: Required ``aud`` claim (one element of the token's ``aud`` list), if any.
    aud: str | None = None


def auth_options(
    public_key: str | None, iss: str | None, aud: str | None, env: Mapping[str, str]
) -> AuthOptions | None:
    """Auth settings from flags, falling back to the official server's variables.

    Returns None when no public key is given anywhere (auth off). Flags win
    over the environment, as on the official server. Raises
    :class:`~service.errors.ConfigError` for an empty variable and
    :class:`~service.errors.UsageError` for an issuer or audience without a
    key (the official server ignores such flags silently; here it is a mistake
    worth a line).
    """

    def pick(flag: str | None, variable: str) -> str | None:
        if flag is not None:
            return flag
        value = env.get(variable)
        if value is not None and not value.strip():
            raise ConfigError(variable, value, "a non-empty value")
        return value.strip() if value is not None else None

    key = pick(public_key, ENV_PUBLIC_KEY)
    issuer = pick(iss, ENV_ISS)
    audience = pick(aud, ENV_AUD)
    if key is None:
        if issuer is not None or audience is not None:
            raise UsageError(
                f"--auth-iss/--auth-aud ({ENV_ISS}/{ENV_AUD}) need --auth-public-key "
                f"({ENV_PUBLIC_KEY})"
            )
        return None
    if not key:
        raise UsageError("--auth-public-key must be a PEM file path or 'none'")
    return AuthOptions(key, issuer, audience)


def _algorithms_for(key: PublicKeyTypes | None) -> tuple[str, ...] | None:
    """The algorithms the official server accepts for ``key``'s family (None: unsupported)."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC_ALGORITHMS
    if isinstance(key, ed25519.Ed25519PublicKey):
        return _ED_ALGORITHMS
    return None


def resource_id(kind: str, data: dict[str, Any]) -> str | None:
    """The id a request touches, for the prefix check (None: nothing to check).

    Mirrors ``extract_resource_id`` in the official ``src/auth.rs``: searches
    and unknown kinds return ``""``, which no non-empty prefix covers; a
    missing or non-string id returns None (the request then fails validation).
    """
    if kind in _SEARCHES:
        return ""
    if kind in _BY_ID:
        value = data.get("id")
    elif kind in ("promise.register_callback", "promise.register_listener"):
        value = data.get("awaited")
    elif kind == "schedule.create":
        value = data.get("promiseId")
    elif kind == "task.create":
        action = data.get("action")
        inner = action.get("data") if isinstance(action, dict) else None
        value = inner.get("id") if isinstance(inner, dict) else None
    elif kind == "task.heartbeat":
        return None
    else:
        return ""
    return value if isinstance(value, str) else None


def authorize(claims: dict[str, Any], kind: str, data: dict[str, Any]) -> bool:
    """Whether verified ``claims`` allow request ``kind`` on ``data`` (the 403 rule)."""
    role = claims.get("role")
    if isinstance(role, str) and role.lower() == "admin":
        return True
    prefix = claims.get("prefix")
    if not isinstance(prefix, str):
        return False
    if prefix == "":
        return True
    if kind == "task.heartbeat":
        tasks = data.get("tasks")
        if isinstance(tasks, list):
            for task in tasks:
                task_id = task.get("id") if isinstance(task, dict) else None
                if isinstance(task_id, str) and not task_id.startswith(prefix):
                    return False
        return True
    rid = resource_id(kind, data)
    return rid is None or rid.startswith(prefix)


class Verifier:
    """Verifies tokens against one public key (or none) and decides 401/403."""

    def __init__(
        self,
        key: VerificationKey | None,
        algorithms: tuple[str, ...],
        iss: str | None = None,
        aud: str | None = None,
    ) -> None:
        self._key = key
        self._algorithms = list(algorithms)
        self.iss = iss
        self.aud = aud
        self._log = get_logger("service.devserver.auth")

    @classmethod
    def load(cls, options: AuthOptions) -> Verifier:
        """Read the public key; raise UsageError naming the file if it is unusable."""
        if options.public_key == UNSIGNED:
            return cls(None, (), options.iss, options.aud)
        path = Path(options.public_key)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            msg = f"cannot read the auth public key {path}: {exc.strerror or exc}"
            raise UsageError(msg) from None
        try:
            loaded: PublicKeyTypes | None = load_pem_public_key(pem)
        except (ValueError, TypeError):
            loaded = None
        algorithms = _algorithms_for(loaded)
        if algorithms is None or not isinstance(
            loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
        ):
            msg = (
                f"unsupported or invalid public key in {path}: "
                "expected a PEM RSA, EC (P-256/P-384) or Ed25519 public key"
            )
            raise UsageError(msg)
        return cls(loaded, algorithms, options.iss, options.aud)

    @property
    def unsigned(self) -> bool:
        """True in unsigned mode (public key ``none``)."""
        return self._key is None

    def verify(self, token: str | None) -> dict[str, Any]:
        """The claims of a valid token; raise :class:`TokenRejected` otherwise (401)."""
        if not token:
            raise TokenRejected("no token")
        try:
            if self._key is None:
                alg = jwt.get_unverified_header(token).get("alg")
                if alg not in _KNOWN_ALGORITHMS:
                    raise TokenRejected(f"unknown algorithm {alg!r}")
            claims: dict[str, Any] = jwt.decode(
                token,
                # Unsigned mode: no key, and the signature is not checked.
                self._key if self._key is not None else "",
                algorithms=self._algorithms or None,
                audience=self.aud,
                issuer=self.iss,
                leeway=LEEWAY_SECONDS,
                options={
                    "verify_signature": self._key is not None,
                    "require": [
                        "exp",
                        *(["iss"] if self.iss is not None else []),
                        *(["aud"] if self.aud is not None else []),
                    ],
                    "verify_exp": True,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_iss": self.iss is not None,
                    "verify_aud": self.aud is not None,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(str(exc) or type(exc).__name__) from None
        _check_claim_types(claims)
        return claims

    def check_request(
        self, kind: str, head: dict[str, Any], data: dict[str, Any]
    ) -> Refusal | None:
        """The ``POST /`` gate: None to go on, else (401|403, message) for the reply."""
        token = head.get("auth")
        try:
            claims = self.verify(token if isinstance(token, str) else None)
        except TokenRejected as exc:
            self._log.warning("auth_rejected", status=401, kind=kind, reason=exc.reason)
            return 401, UNAUTHORIZED
        if not authorize(claims, kind, data):
            self._log.warning(
                "auth_rejected", status=403, kind=kind, reason="prefix does not cover the id"
            )
            return 403, FORBIDDEN
        return None

    def check_stream(self, authorization: str | None) -> bool:
        """Whether a ``GET /poll`` ``Authorization`` header carries a valid token."""
        token = None
        if authorization is not None and authorization.startswith(BEARER):
            token = authorization[len(BEARER) :]
        try:
            self.verify(token)
        except TokenRejected as exc:
            self._log.warning("auth_rejected", status=401, kind="poll", reason=exc.reason)
            return False
        return True


def _check_claim_types(claims: dict[str, Any]) -> None:
    """Refuse claims the official server cannot deserialize into its ``Claims`` struct."""
    for name in ("role", "iss"):
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise TokenRejected(f"claim '{name}' must be a string")
    aud = claims.get("aud")
    if aud is not None and not (isinstance(aud, list) and all(isinstance(a, str) for a in aud)):
        raise TokenRejected("claim 'aud' must be a list of strings")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise TokenRejected("claim 'exp' must be a number")
