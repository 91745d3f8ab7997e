"""``resonate-patterns server`` options: auth, retry timer and resend flags, bad values."""

from __future__ import annotations

import pytest

from service.cli import EXIT_USAGE, build_parser, main
from service.devserver.server import ENV_RETRY_TIMEOUT, retry_ms_from_env
from service.errors import ConfigError


def test_server_flags__official_spelling_accepted_and_defaults_off() -> None:
    ns = build_parser().parse_args(["server", "--auth-publickey", "k.pem", "--auth-aud", "a"])
    assert (ns.auth_public_key, ns.auth_iss, ns.auth_aud) == ("k.pem", None, "a")
    plain = build_parser().parse_args(["server"])
    assert plain.auth_public_key is None
    assert plain.retry_ms is None
    assert plain.no_resend_on_close is False


def test_retry_ms_from_env__official_variable_or_none() -> None:
    assert retry_ms_from_env({}) is None
    assert retry_ms_from_env({ENV_RETRY_TIMEOUT: "500"}) == 500
    for bad in ("0", "-5", "1.5", "soon"):
        with pytest.raises(ConfigError, match=ENV_RETRY_TIMEOUT):
            retry_ms_from_env({ENV_RETRY_TIMEOUT: bad})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server", "--retry-ms", "0"], "--retry-ms='0' is invalid: expected an integer in [1, "),
        (
            ["server", "--keepalive-seconds", "0"],
            "--keepalive-seconds='0' is invalid: expected a number in (0, 3600]",
        ),
        (["server", "--auth-iss", "me"], "need --auth-public-key"),
        (["server", "--auth-public-key", "/no/such.pem"], "cannot read the auth public key"),
    ],
)
def test_server_bad_options__one_line_exit_2(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RESONATE_AUTH__PUBLICKEY", "RESONATE_AUTH__ISS", "RESONATE_AUTH__AUD"):
        monkeypatch.delenv(name, raising=False)
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_server_bad_retry_variable__names_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_RETRY_TIMEOUT, "soon")
    assert main(["server"]) == EXIT_USAGE
    assert ENV_RETRY_TIMEOUT in capsys.readouterr().err
