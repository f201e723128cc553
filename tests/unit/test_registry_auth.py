"""Challenge parsing, token lifetimes and the registry's name grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payloadtags.registry import is_valid_digest, is_valid_repository, is_valid_tag
from payloadtags.registry.auth import parse_challenge, token_lifetime


def test_bearer_challenge_as_distribution_sends_it() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/app:pull,push",error="insufficient_scope"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.example/token"
    assert challenge.service == "registry.example"
    assert challenge.scope == "repository:team/app:pull,push"  # the comma stays inside the quotes
    assert challenge.error == "insufficient_scope"


def test_other_challenges() -> None:
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic" and basic.realm == "Registry Realm"
    bare = parse_challenge('Bearer realm=https://a/t, service = svc , scope="x\\"y"')
    assert bare is not None and bare.params == {"realm": "https://a/t", "service": "svc", "scope": 'x"y'}
    assert parse_challenge(None) is None
    assert parse_challenge("  ") is None


@pytest.mark.property
@given(st.text(max_size=200))
def test_parse_challenge_never_raises(header: str) -> None:
    parse_challenge(header)


@pytest.mark.parametrize(
    ("expires_in", "kept"),
    [
        (60, 48.0),
        (300, 270.0),
        (3600, 3570.0),
        (10, 8.0),
        (None, 48.0),
        ("x", 48.0),
        (0, 48.0),
        (True, 48.0),
        pytest.param(10**400, 48.0, id="beyond-any-float"),
        (float("inf"), 48.0),
        (float("nan"), 48.0),
    ],
)
def test_token_lifetime(expires_in: object, kept: float) -> None:
    assert token_lifetime(expires_in) == kept


def test_names() -> None:
    assert is_valid_repository("team/app")
    assert is_valid_repository("a/b.c/d_e/f__g/h--i")
    for bad in ("", "Team/app", "team//app", "/team", "team/", "../x", "a/b?c", "a/%2e", "a_/b", "a" * 256):
        assert not is_valid_repository(bad), bad
    assert is_valid_tag("v1.2.3-rc_1") and is_valid_tag("_x") and is_valid_tag("A" * 128)
    for bad in ("", "-x", ".x", "a/b", "a:b", "A" * 129):
        assert not is_valid_tag(bad), bad
    assert is_valid_digest("sha256:" + "a" * 64)
    assert not is_valid_digest("sha256:" + "A" * 64)
    assert not is_valid_digest("sha256:" + "a" * 63)
    assert is_valid_digest("sha512:" + "0" * 128)
    assert is_valid_digest("blake3+x:" + "z" * 40)  # unknown algorithms keep the general grammar
