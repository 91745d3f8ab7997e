"""The local server's JWT rules, as the official server (src/auth.rs, v0.9.8) applies them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from service.devserver.auth import (
    ENV_AUD,
    ENV_ISS,
    ENV_PUBLIC_KEY,
    FORBIDDEN,
    UNAUTHORIZED,
    AuthOptions,
    TokenRejected,
    Verifier,
    auth_options,
    authorize,
    resource_id,
)
from service.errors import ConfigError, UsageError

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def write_public(key: Any, path: Path) -> str:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def token(claims: dict[str, Any], key: Any = RSA_KEY, alg: str = "RS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, key, algorithm=alg)


@pytest.fixture
def rsa_verifier(tmp_path: Path) -> Verifier:
    return Verifier.load(AuthOptions(write_public(RSA_KEY, tmp_path / "rsa.pem"), "iss1", "aud1"))


def ok_claims(**extra: Any) -> dict[str, Any]:
    return {"iss": "iss1", "aud": ["aud1"], **extra}


# -- configuration -------------------------------------------------------------------------


def test_auth_options__nothing_set__auth_off() -> None:
    assert auth_options(None, None, None, {}) is None


def test_auth_options__environment_like_the_official_server__flags_win() -> None:
    env = {ENV_PUBLIC_KEY: "/env.pem", ENV_ISS: "env-iss", ENV_AUD: "env-aud"}
    assert auth_options(None, None, None, env) == AuthOptions("/env.pem", "env-iss", "env-aud")
    assert auth_options("/flag.pem", "i", None, env) == AuthOptions("/flag.pem", "i", "env-aud")


def test_auth_options__issuer_without_key__usage_error() -> None:
    with pytest.raises(UsageError, match="need --auth-public-key"):
        auth_options(None, "iss", None, {})


def test_auth_options__empty_variable__config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=ENV_PUBLIC_KEY):
        auth_options(None, None, None, {ENV_PUBLIC_KEY: " "})


def test_load__missing_or_unsupported_key__one_line_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the auth public key"):
        Verifier.load(AuthOptions(str(tmp_path / "absent.pem")))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(UsageError, match="unsupported or invalid public key"):
        Verifier.load(AuthOptions(str(tmp_path / "junk.pem")))


@pytest.mark.parametrize(
    ("key", "alg"),
    [(RSA_KEY, "RS256"), (RSA_KEY, "PS512"), (EC_KEY, "ES256"), (ED_KEY, "EdDSA")],
)
def test_verify__each_key_family_and_its_algorithms(tmp_path: Path, key: Any, alg: str) -> None:
    verifier = Verifier.load(AuthOptions(write_public(key, tmp_path / "k.pem")))
    assert verifier.verify(token({"prefix": "a"}, key, alg))["prefix"] == "a"


# -- authentication (401) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("missing", lambda: None),
        ("empty", lambda: ""),
        ("garbage", lambda: "a.b.c"),
        ("no exp", lambda: jwt.encode(ok_claims(prefix=""), RSA_KEY, algorithm="RS256")),
        ("expired past leeway", lambda: token(ok_claims(exp=int(time.time()) - 120))),
        ("wrong iss", lambda: token(ok_claims(iss="other"))),
        ("no iss", lambda: token({"aud": ["aud1"]})),
        ("wrong aud", lambda: token(ok_claims(aud=["other"]))),
        ("aud as a string", lambda: token(ok_claims(aud="aud1"))),
        ("no aud", lambda: token({"iss": "iss1"})),
        ("role not a string", lambda: token(ok_claims(role=1))),
        ("exp a string", lambda: token(ok_claims(exp=str(int(time.time()) + 600)))),
        ("other key family", lambda: token(ok_claims(), EC_KEY, "ES256")),
        ("hmac", lambda: jwt.encode(ok_claims(exp=int(time.time()) + 60), "k" * 32)),
        ("unsigned", lambda: jwt.encode(ok_claims(exp=int(time.time()) + 60), None, "none")),
    ],
)
def test_verify__bad_tokens__rejected(rsa_verifier: Verifier, case: str, make: Any) -> None:
    with pytest.raises(TokenRejected):
        rsa_verifier.verify(make())


def test_verify__leeway_nbf_iat_sub_as_on_the_official_server(rsa_verifier: Verifier) -> None:
    now = int(time.time())
    # 60 s of leeway on exp; nbf, iat and sub are not checked.
    rsa_verifier.verify(token(ok_claims(exp=now - 30)))
    rsa_verifier.verify(token(ok_claims(nbf=now + 600, iat=now + 600, sub=5)))


def test_unsigned_mode__signature_not_checked_but_exp_and_algorithm_are() -> None:
    verifier = Verifier.load(AuthOptions("none"))
    assert verifier.unsigned
    signed = token({"prefix": "a"})
    assert verifier.verify(signed[:-4] + "AAAA")["prefix"] == "a"
    with pytest.raises(TokenRejected):
        verifier.verify(token({"exp": int(time.time()) - 600}))
    with pytest.raises(TokenRejected, match="algorithm"):
        verifier.verify(jwt.encode({"exp": int(time.time()) + 60}, None, "none"))


# -- authorization (403) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        ("promise.get", {"id": "p1"}, "p1"),
        ("task.fence", {"id": "t1"}, "t1"),
        ("promise.register_callback", {"awaited": "a", "awaiter": "b"}, "a"),
        ("promise.register_listener", {"awaited": "a"}, "a"),
        ("schedule.create", {"id": "s", "promiseId": "p"}, "p"),
        ("task.create", {"action": {"data": {"id": "x"}}}, "x"),
        ("task.create", {"action": 5}, None),
        ("promise.search", {}, ""),
        ("task.search", {}, ""),
        ("no.such.kind", {"id": "p1"}, ""),
        ("promise.get", {"id": 5}, None),
        ("task.heartbeat", {"tasks": []}, None),
    ],
)
def test_resource_id__per_kind(kind: str, data: dict[str, Any], expected: str | None) -> None:
    assert resource_id(kind, data) == expected


@pytest.mark.parametrize(
    ("claims", "kind", "data", "allowed"),
    [
        ({"prefix": "foo"}, "promise.get", {"id": "foo-1"}, True),
        ({"prefix": "foo"}, "promise.get", {"id": "bar-1"}, False),
        ({"prefix": ""}, "promise.get", {"id": "bar-1"}, True),
        ({}, "promise.get", {"id": "foo-1"}, False),
        ({"prefix": None}, "promise.get", {"id": "foo-1"}, False),
        ({"prefix": 5}, "promise.get", {"id": "foo-1"}, False),
        ({"role": "Admin", "prefix": "x"}, "task.search", {}, True),
        ({"admin": True}, "promise.get", {"id": "foo-1"}, False),
        ({"prefix": "foo"}, "task.search", {}, False),
        ({"prefix": ""}, "task.search", {}, True),
        ({"prefix": "foo"}, "task.heartbeat", {"tasks": [{"id": "foo"}, {"id": "foo:1"}]}, True),
        ({"prefix": "foo"}, "task.heartbeat", {"tasks": [{"id": "foo"}, {"id": "bar"}]}, False),
    ],
)
def test_authorize__prefix_and_role_rules(
    claims: dict[str, Any], kind: str, data: dict[str, Any], allowed: bool
) -> None:
    assert authorize(claims, kind, data) is allowed


def test_check_request__401_then_403_with_the_official_messages(rsa_verifier: Verifier) -> None:
    data = {"id": "foo-1"}
    assert rsa_verifier.check_request("promise.get", {}, data) == (401, UNAUTHORIZED)
    bar = token(ok_claims(prefix="bar"))
    assert rsa_verifier.check_request("promise.get", {"auth": bar}, data) == (403, FORBIDDEN)
    foo = token(ok_claims(prefix="foo"))
    assert rsa_verifier.check_request("promise.get", {"auth": foo}, data) is None


def test_check_stream__bearer_prefix_exactly_and_no_prefix_check(rsa_verifier: Verifier) -> None:
    other_scope = token(ok_claims(prefix="somewhere-else"))
    assert rsa_verifier.check_stream(f"Bearer {other_scope}")
    assert not rsa_verifier.check_stream(f"bearer {other_scope}")
    assert not rsa_verifier.check_stream(other_scope)
    assert not rsa_verifier.check_stream(None)
