"""Front-proxy authentication: identity headers believed only from the requestheader CA's allowed CNs."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509

from payloadtags import identity
from payloadtags.access.authconfig import DynamicAuthentication, FlagConfig
from payloadtags.access.authn import AUTHENTICATED, Credentials, CredentialsRefused, UserInfo
from payloadtags.access.requestheader import RequestHeaderAuthenticator, RequestHeaderConfig
from tests.support.pki import Authority


@pytest.fixture
def front_ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "front", "front-proxy-ca")


@pytest.fixture
def proxy_cert(front_ca: Authority) -> x509.Certificate:
    return front_ca.client("front-proxy-client").cert


def credentials(cert: x509.Certificate | None, headers: dict[str, list[str]]) -> Credentials:
    # As the HTTP layer builds them: header names lower-cased, every value of a repeated header kept.
    return Credentials(peer_certificate=cert, headers={k.lower(): v for k, v in headers.items()})


IDENTITY = {"X-Remote-User": ["alice"], "X-Remote-Group": ["devs"]}


def authenticator(front_ca: Authority, **config: object) -> RequestHeaderAuthenticator:
    config.setdefault("authorities", (front_ca.cert,))
    config.setdefault("allowed_names", ("front-proxy-client",))
    return RequestHeaderAuthenticator(RequestHeaderConfig(**config))  # type: ignore[arg-type]


async def authenticate(auth: RequestHeaderAuthenticator, creds: Credentials) -> UserInfo | None:
    return await auth.authenticate(creds)


# --- whom to believe ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_proxy_with_allowed_name_is_believed(front_ca: Authority, proxy_cert: x509.Certificate) -> None:
    auth = authenticator(front_ca)
    creds = credentials(proxy_cert, IDENTITY)
    assert auth.trusted(creds)
    assert await auth.authenticate(creds) == UserInfo(name="alice", groups=("devs",))


@pytest_twisted.ensureDeferred
async def test_other_common_name_from_the_same_ca_is_not(front_ca: Authority) -> None:
    auth = authenticator(front_ca, allowed_names=("front-proxy-client", "aggregator"))
    for cn in ("alice", "front-proxy-client-2", "Front-Proxy-Client", "aggregator-x"):
        creds = credentials(front_ca.client(cn).cert, IDENTITY)
        assert not auth.trusted(creds), cn
        assert await auth.authenticate(creds) is None, cn
    # Every name of the list is allowed.
    assert await auth.authenticate(credentials(front_ca.client("aggregator").cert, IDENTITY)) is not None


@pytest_twisted.ensureDeferred
async def test_empty_allowed_names_accept_any_common_name_from_the_ca(front_ca: Authority) -> None:
    auth = authenticator(front_ca, allowed_names=())
    user = await auth.authenticate(credentials(front_ca.client("whatever").cert, IDENTITY))
    assert user is not None and user.name == "alice"


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_not_believed(front_ca: Authority, tmp_path: Path) -> None:
    auth = authenticator(front_ca, allowed_names=())
    other = Authority.create(tmp_path / "other", "client-ca")
    # Same subject as the real front-proxy CA, different key: the name alone must not be enough.
    impostor = Authority.create(tmp_path / "impostor", "front-proxy-ca")
    assert impostor.cert.subject == front_ca.cert.subject
    for ca in (other, impostor):
        creds = credentials(ca.client("front-proxy-client").cert, IDENTITY)
        assert not auth.trusted(creds)
        assert await auth.authenticate(creds) is None


@pytest_twisted.ensureDeferred
async def test_no_certificate_is_not_believed(front_ca: Authority) -> None:
    for allowed in ((), ("front-proxy-client",)):
        auth = authenticator(front_ca, allowed_names=allowed)
        creds = credentials(None, IDENTITY)
        assert not auth.trusted(creds)
        assert await auth.authenticate(creds) is None


@pytest_twisted.ensureDeferred
async def test_no_requestheader_ca_believes_nobody(front_ca: Authority, proxy_cert: x509.Certificate) -> None:
    auth = authenticator(front_ca, authorities=(), allowed_names=())
    assert await auth.authenticate(credentials(proxy_cert, IDENTITY)) is None


@pytest_twisted.ensureDeferred
async def test_one_of_several_cas(front_ca: Authority, proxy_cert: x509.Certificate, tmp_path: Path) -> None:
    other = Authority.create(tmp_path / "other", "other-ca")
    auth = authenticator(front_ca, authorities=(other.cert, front_ca.cert))
    assert await auth.authenticate(credentials(proxy_cert, IDENTITY)) is not None
    # CA rotation: the old and the new CA share a subject; a certificate of the new one is checked
    # against the old one first.
    rotated = Authority.create(tmp_path / "rotated", "front-proxy-ca")
    auth = authenticator(front_ca, authorities=(front_ca.cert, rotated.cert))
    new_cert = rotated.client("front-proxy-client").cert
    assert await auth.authenticate(credentials(new_cert, IDENTITY)) is not None


def test_the_allowed_name_is_the_last_common_name_as_in_go(front_ca: Authority) -> None:
    """Go's pkix.Name keeps the last CN attribute as the subject's CommonName, and k8s.io/apiserver
    checks that one against the allowed names (review r1authn L4): an allowed name before it does
    not make the front proxy."""
    auth = authenticator(front_ca)
    for names, trusted in (
        (("front-proxy-client", "someone-else"), False),
        (("someone-else", "front-proxy-client"), True),
    ):
        cert = front_ca.client_with_subject(*names, stem="-".join(names)).cert
        assert auth.trusted(credentials(cert, IDENTITY)) is trusted, names


# --- what the headers say -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_user_name_from_the_first_non_empty_configured_header(
    front_ca: Authority, proxy_cert: x509.Certificate
) -> None:
    auth = authenticator(front_ca, username_headers=("X-Remote-User", "X-Other-User"))

    both = await auth.authenticate(credentials(proxy_cert, {"X-Remote-User": ["a"], "X-Other-User": ["b"]}))
    assert both is not None and both.name == "a"
    first_empty = await auth.authenticate(
        credentials(proxy_cert, {"X-Remote-User": [""], "X-Other-User": ["b"]})
    )
    assert first_empty is not None and first_empty.name == "b"
    second_only = await auth.authenticate(credentials(proxy_cert, {"X-Other-User": ["b"]}))
    assert second_only is not None and second_only.name == "b"
    # Without a user name this authenticator does not apply, whatever else is sent.
    assert await auth.authenticate(credentials(proxy_cert, {"X-Remote-Group": ["g"]})) is None
    assert await auth.authenticate(credentials(proxy_cert, {"X-Remote-User": [""]})) is None
    # Only configured headers count.
    auth = authenticator(front_ca, username_headers=("X-Proxy-User",))
    assert await auth.authenticate(credentials(proxy_cert, {"X-Remote-User": ["a"]})) is None
    named = await auth.authenticate(credentials(proxy_cert, {"X-Proxy-User": ["p"]}))
    assert named is not None and named.name == "p"


@pytest_twisted.ensureDeferred
async def test_every_value_of_every_group_header_but_empty_ones(
    front_ca: Authority, proxy_cert: x509.Certificate
) -> None:
    auth = authenticator(front_ca, group_headers=("X-Remote-Group", "X-More-Groups"))
    user = await auth.authenticate(
        credentials(
            proxy_cert,
            {
                "X-Remote-User": ["alice"],
                "X-Remote-Group": ["devs", "system:serviceaccounts", "ops"],
                "X-More-Groups": ["extra"],
                "X-Unrelated-Group": ["nope"],
            },
        )
    )
    assert user is not None
    assert user.groups == ("devs", "system:serviceaccounts", "ops", "extra")
    no_groups = await auth.authenticate(credentials(proxy_cert, {"X-Remote-User": ["alice"]}))
    assert no_groups is not None and no_groups.groups == ()
    # As k8s.io/apiserver's allHeaderValues: an empty value (`X-Remote-Group:`) names no group.
    empties = await auth.authenticate(
        credentials(
            proxy_cert,
            {"X-Remote-User": ["alice"], "X-Remote-Group": ["devs", ""], "X-More-Groups": ["", "ops", ""]},
        )
    )
    assert empties is not None and empties.groups == ("devs", "ops")


@pytest_twisted.ensureDeferred
async def test_extra_keys_are_lower_cased_and_percent_decoded(
    front_ca: Authority, proxy_cert: x509.Certificate
) -> None:
    auth = authenticator(front_ca)
    user = await auth.authenticate(
        credentials(
            proxy_cert,
            {
                "X-Remote-User": ["alice"],
                "X-Remote-Extra-Authentication.kubernetes.io%2fcredential-Id": ["JTI=abc"],
                "X-Remote-Extra-Scopes": ["view", "edit"],
                "X-Remote-Extra-": ["the empty key"],
                "X-Remote-Extras": ["not the prefix"],
            },
        )
    )
    assert user is not None
    assert dict(user.extra) == {
        "authentication.kubernetes.io/credential-id": ("JTI=abc",),
        "scopes": ("view", "edit"),
        "": ("the empty key",),
    }


@pytest_twisted.ensureDeferred
async def test_extra_with_several_prefixes(front_ca: Authority, proxy_cert: x509.Certificate) -> None:
    auth = authenticator(front_ca, extra_prefixes=("X-Remote-Extra-", "X-Proxy-Extra-"))
    user = await auth.authenticate(
        credentials(
            proxy_cert,
            {"X-Remote-User": ["alice"], "X-Remote-Extra-Team": ["a"], "X-Proxy-Extra-team": ["b"]},
        )
    )
    assert user is not None and dict(user.extra) == {"team": ("a", "b")}


@pytest.mark.parametrize(
    ("header", "key"),
    [
        # As Go's url.PathUnescape gives them (k8s.io/apiserver's unescapeExtraKey): a key with any
        # escape that is not `%` and two hex digits is kept whole as sent (lower-cased), never half
        # decoded, and is then no UTF-8 question, whatever its other escapes encode.
        ("X-Remote-Extra-%zz%41", "%zz%41"),
        ("X-Remote-Extra-%ZZ%41", "%zz%41"),
        ("X-Remote-Extra-%zz%c3", "%zz%c3"),
        ("X-Remote-Extra-A%4", "a%4"),
        ("X-Remote-Extra-%", "%"),
        ("X-Remote-Extra-%%41", "%%41"),
        ("X-Remote-Extra-%4g%2f", "%4g%2f"),
        # Well formed: decoded, `+` is no space.
        ("X-Remote-Extra-%41b", "Ab"),
        ("X-Remote-Extra-+%2B", "++"),
        ("X-Remote-Extra-%25zz", "%zz"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_extra_key_with_a_broken_escape_is_kept_as_sent(
    front_ca: Authority, proxy_cert: x509.Certificate, header: str, key: str
) -> None:
    auth = authenticator(front_ca)
    user = await auth.authenticate(credentials(proxy_cert, {"X-Remote-User": ["alice"], header: ["v"]}))
    assert user is not None and dict(user.extra) == {key: ("v",)}


@pytest_twisted.ensureDeferred
async def test_uid_headers(front_ca: Authority, proxy_cert: x509.Certificate) -> None:
    headers = {"X-Remote-User": ["alice"], "X-Remote-Uid": ["1234-abcd"]}
    configured = authenticator(front_ca, uid_headers=("X-Remote-Uid",))
    user = await configured.authenticate(credentials(proxy_cert, headers))
    assert user is not None and user.uid == "1234-abcd"
    unconfigured = authenticator(front_ca)
    user = await unconfigured.authenticate(credentials(proxy_cert, headers))
    assert user is not None and user.uid == ""
    two = authenticator(front_ca, uid_headers=("X-Remote-Uid", "X-Other-Uid"))
    user = await two.authenticate(
        credentials(proxy_cert, {"X-Remote-User": ["a"], "X-Remote-Uid": [""], "X-Other-Uid": ["u2"]})
    )
    assert user is not None and user.uid == "u2"


def wire(value: bytes) -> str:
    """A header value as the HTTP layer decodes it (`Credentials.headers`)."""
    return value.decode("utf-8", "surrogateescape")


@pytest_twisted.ensureDeferred
async def test_identities_are_utf8(front_ca: Authority, proxy_cert: x509.Certificate) -> None:
    auth = authenticator(front_ca, uid_headers=("X-Remote-Uid",))
    headers = {
        "X-Remote-User": [wire("josé".encode())],
        "X-Remote-Group": [wire("équipe".encode()), "devs"],
        "X-Remote-Uid": [wire("ü-1".encode())],
        # Keys come percent-encoded: "rôle".
        "X-Remote-Extra-R%C3%B4le": [wire("chef d'équipe".encode())],
    }
    assert await auth.authenticate(credentials(proxy_cert, headers)) == UserInfo(
        name="josé", uid="ü-1", groups=("équipe", "devs"), extra=(("rôle", ("chef d'équipe",)),)
    )


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"X-Remote-User": [wire(b"jos\xe9")]}, "X-Remote-User"),
        ({"X-Remote-User": [wire(b"\xed\xa0\x80")]}, "X-Remote-User"),  # an encoded surrogate
        ({"X-Remote-User": ["a"], "X-Remote-Group": ["devs", wire(b"\xff")]}, "X-Remote-Group"),
        ({"X-Remote-User": ["a"], "X-Remote-Uid": [wire(b"\xc3")]}, "X-Remote-Uid"),
        ({"X-Remote-User": ["a"], "X-Remote-Extra-Scopes": [wire(b"vi\xe9w")]}, "x-remote-extra-scopes"),
        ({"X-Remote-User": ["a"], "X-Remote-Extra-R%F4le": ["chef"]}, "x-remote-extra-r%f4le"),
        ({"X-Remote-User": ["a"], "X-Remote-Extra-R\xf4le": ["chef"]}, "x-remote-extra-r\xf4le"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_identities_that_are_not_utf8_are_refused(
    front_ca: Authority, proxy_cert: x509.Certificate, headers: dict[str, list[str]], named: str
) -> None:
    auth = authenticator(front_ca, uid_headers=("X-Remote-Uid",))
    with pytest.raises(CredentialsRefused, match=f"front proxy's {named} header"):
        await auth.authenticate(credentials(proxy_cert, headers))
    # Only from the front proxy: anyone else's identity headers are not read at all.
    other = Authority.create(front_ca.directory.parent / "other", "other").client("front-proxy-client").cert
    assert await auth.authenticate(credentials(other, headers)) is None


def test_identity_headers_lists_what_must_be_stripped() -> None:
    auth = RequestHeaderAuthenticator(
        RequestHeaderConfig(
            username_headers=("X-Remote-User", "X-Other-User"),
            group_headers=("X-Remote-Group",),
            extra_prefixes=("X-Remote-Extra-",),
            uid_headers=("X-Remote-Uid",),
        )
    )
    names = [
        "host",
        "x-remote-user",
        "x-other-user",
        "x-remote-group",
        "x-remote-uid",
        "x-remote-extra-scopes",
        "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
        "authorization",
        "x-remote-users",
        "accept",
    ]
    assert auth.identity_headers(names) == [
        "x-remote-user",
        "x-other-user",
        "x-remote-group",
        "x-remote-uid",
        "x-remote-extra-scopes",
        "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
    ]
    assert auth.identity_headers(["host", "accept"]) == []
    without_uid = RequestHeaderAuthenticator(RequestHeaderConfig(uid_headers=()))
    assert without_uid.identity_headers(["x-remote-uid", "x-remote-user"]) == ["x-remote-user"]


def test_the_authenticator_strips_what_its_configuration_names_from_names_it_made_once() -> None:
    """Issue #11 (a request's fixed cost): the header names are lower-cased once per configuration,
    not per request; what is stripped is what the configuration names, from any iterable of names and
    through the authentication the server runs."""
    config = RequestHeaderConfig(
        username_headers=("X-Remote-User", "X-Other-User"),
        group_headers=("X-Remote-Group",),
        extra_prefixes=("X-Remote-Extra-", "X-Other-Extra-"),
        uid_headers=("X-Remote-Uid",),
    )
    names = [
        "host",
        "x-remote-user",
        "x-other-user",
        "x-remote-group",
        "x-remote-uid",
        "x-remote-extra-scopes",
        "x-other-extra-a",
        "x-remote-extra-",
        "authorization",
        "x-remote-users",
    ]
    expected = [
        "x-remote-user",
        "x-other-user",
        "x-remote-group",
        "x-remote-uid",
        "x-remote-extra-scopes",
        "x-other-extra-a",
        "x-remote-extra-",
    ]
    auth = RequestHeaderAuthenticator(config)
    assert auth.identity_headers(names) == expected
    assert auth.identity_headers(dict.fromkeys(names)) == expected
    dynamic = DynamicAuthentication(FlagConfig(client_cas=(), requestheader=config))
    assert dynamic.identity_headers(credentials(None, {n: ["x"] for n in names})) == expected


@pytest_twisted.ensureDeferred
async def test_the_first_value_of_the_first_user_header_whose_first_value_is_not_empty_is_the_name(
    front_ca: Authority, proxy_cert: x509.Certificate
) -> None:
    """As k8s.io/apiserver (headerValue: Go's Header.Get, the first value only): a header whose first value
    is empty names nobody, even with a later value, and the next configured header is asked; the same
    for the uid. Each header read is checked as UTF-8 whole, as a header is read."""
    auth = authenticator(
        front_ca,
        username_headers=("X-A", "X-B", "X-C", "X-D"),
        uid_headers=("X-U1", "X-U2"),
        group_headers=("X-G", "X-H"),
    )
    headers = {
        "X-A": ["", ""],
        "X-B": ["", "bob"],
        "X-C": ["carol", "dave"],
        "X-U1": ["", "6"],
        "X-U2": ["7", "8"],
        "X-H": ["h1", ""],
        "X-G": ["g"],
    }
    user = await auth.authenticate(credentials(proxy_cert, headers))
    assert user == UserInfo(name="carol", uid="7", groups=("g", "h1"))
    # A header after the one that named the user is not read; one before it, or the naming one, is.
    after = {**headers, "X-D": ["\udcff"]}
    assert await auth.authenticate(credentials(proxy_cert, after)) == user
    for named in ("X-A", "X-B", "X-C"):
        with pytest.raises(CredentialsRefused, match=f"front proxy's {named} header"):
            await auth.authenticate(credentials(proxy_cert, {**headers, named: [*headers[named], "\udcff"]}))
    assert await auth.authenticate(credentials(proxy_cert, {"X-A": [""], "X-U1": ["1"]})) is None


@pytest_twisted.ensureDeferred
async def test_a_user_header_whose_first_value_is_empty_names_nobody(
    front_ca: Authority, proxy_cert: x509.Certificate
) -> None:
    """Twisted gives `X-Remote-User: ` then `X-Remote-User: bob` as ["", "bob"]; kube-apiserver's
    h.Get reads "" and does not authenticate the request by its headers: neither does payloadtags."""
    auth = authenticator(front_ca, uid_headers=("X-Remote-Uid",))
    assert await auth.authenticate(credentials(proxy_cert, {"X-Remote-User": ["", "bob"]})) is None
    user = await auth.authenticate(
        credentials(proxy_cert, {"X-Remote-User": ["a"], "X-Remote-Uid": ["", "u"]})
    )
    assert user is not None and user.uid == ""


@pytest_twisted.ensureDeferred
async def test_a_header_named_exactly_the_extra_prefix_is_an_extra_with_an_empty_key(
    front_ca: Authority, proxy_cert: x509.Certificate
) -> None:
    """As k8s.io/apiserver (hasPrefixIgnoreCase: len(name) >= len(prefix)); its values, empty ones too,
    are kept as every extra's are."""
    auth = authenticator(front_ca, extra_prefixes=("X-Remote-Extra-", "X-Proxy-Extra-"))
    user = await auth.authenticate(
        credentials(
            proxy_cert,
            {"X-Remote-User": ["alice"], "X-Remote-Extra-": ["v", ""], "X-Proxy-Extra-": ["w"]},
        )
    )
    assert user is not None and user.extra == (("", ("v", "", "w")),)


def test_the_authenticated_group_is_added_without_attrs_evolve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a request (issue #11): attrs.evolve looks the class's fields up on every call."""

    def refused(*args: object, **kwargs: object) -> object:
        raise AssertionError("attrs.evolve")

    monkeypatch.setattr(identity.attrs, "evolve", refused)
    user = UserInfo(name="alice", uid="1", groups=("devs",), extra=(("k", ("v",)),))
    added = user.with_authenticated_group()
    assert added == UserInfo(name="alice", uid="1", groups=("devs", AUTHENTICATED), extra=(("k", ("v",)),))
    assert hash(added) == hash(UserInfo("alice", "1", ("devs", AUTHENTICATED), (("k", ("v",)),)))
    assert added.with_authenticated_group() is added
