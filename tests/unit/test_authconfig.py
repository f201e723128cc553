"""Authentication configuration from flags and from ConfigMap extension-apiserver-authentication."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.logger import Logger, formatEvent

from payloadtags.access import authconfig
from payloadtags.access.authconfig import (
    AuthenticationConfig,
    ConfigMapError,
    DynamicAuthentication,
    FlagConfig,
    from_configmap,
)
from payloadtags.access.authn import ChainDecisions, Credentials, TrustAnchors, UserInfo, Verdicts
from payloadtags.access.requestheader import RequestHeaderConfig
from payloadtags.cluster import _ConfigMapFeed
from tests.support.logcapture import Collect
from tests.support.pki import Authority


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def configmap(
    *,
    client: tuple[Authority, ...] = (),
    front: tuple[Authority, ...] = (),
    allowed: list[str] | None = None,
    **more: str,
) -> dict[str, str]:
    """ConfigMap data as kube-apiserver writes it: PEM bundles (a bundle without CAs is left out) and
    JSON-encoded string arrays."""
    data = {
        "requestheader-allowed-names": json.dumps(["front-proxy-client"] if allowed is None else allowed),
        "requestheader-username-headers": '["X-Remote-User"]',
        "requestheader-group-headers": '["X-Remote-Group"]',
        "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
    }
    if client:
        data["client-ca-file"] = pem(*(a.cert for a in client))
    if front:
        data["requestheader-client-ca-file"] = pem(*(a.cert for a in front))
    data.update(more)
    return data


@attrs.frozen
class Cas:
    client: Authority
    front: Authority
    front2: Authority


@pytest.fixture
def cas(tmp_path: Path) -> Cas:
    return Cas(
        Authority.create(tmp_path / "client", "kubernetes"),
        Authority.create(tmp_path / "front", "front-proxy-ca"),
        Authority.create(tmp_path / "front2", "front-proxy-ca-2"),
    )


def proxied(cert: x509.Certificate | None, user: str = "alice") -> Credentials:
    return Credentials(
        peer_certificate=cert,
        headers={"x-remote-user": [user], "x-remote-group": ["devs"], "accept": ["*/*"]},
    )


# --- from_configmap -------------------------------------------------------------------------------


def test_from_configmap_reads_every_key(cas: Cas) -> None:
    config = from_configmap(
        configmap(
            client=(cas.client,),
            front=(cas.front, cas.front2),
            allowed=["front-proxy-client", "aggregator"],
            **{
                "requestheader-username-headers": '["X-Remote-User", "X-Proxy-User"]',
                "requestheader-group-headers": '["X-Remote-Group"]',
                "requestheader-extra-headers-prefix": '["X-Remote-Extra-", "X-Proxy-Extra-"]',
                "requestheader-uid-headers": '["X-Remote-Uid"]',
            },
        )
    )
    assert config.client_cas == (cas.client.cert,)
    assert config.requestheader == RequestHeaderConfig(
        authorities=(cas.front.cert, cas.front2.cert),
        allowed_names=("front-proxy-client", "aggregator"),
        username_headers=("X-Remote-User", "X-Proxy-User"),
        group_headers=("X-Remote-Group",),
        extra_prefixes=("X-Remote-Extra-", "X-Proxy-Extra-"),
        uid_headers=("X-Remote-Uid",),
    )


@pytest.mark.parametrize("unset", ["", None])
def test_unset_values_take_the_defaults(unset: str | None) -> None:
    """Absent keys, and empty string arrays; an empty CA bundle is not "unset" (below)."""
    keys = [
        "requestheader-allowed-names",
        "requestheader-username-headers",
        "requestheader-group-headers",
        "requestheader-extra-headers-prefix",
        "requestheader-uid-headers",
    ]
    data = {} if unset is None else dict.fromkeys(keys, unset)
    config = from_configmap(data)
    assert config.client_cas == ()
    assert config.requestheader.authorities == ()
    assert config.requestheader.allowed_names == ()  # any CN
    assert config.requestheader.username_headers == ("X-Remote-User",)
    assert config.requestheader.group_headers == ("X-Remote-Group",)
    assert config.requestheader.extra_prefixes == ("X-Remote-Extra-",)
    assert config.requestheader.uid_headers == ()


@pytest_twisted.ensureDeferred
async def test_an_empty_allowed_name_is_kept_as_kube_apiserver_keeps_it(cas: Cas) -> None:
    """k8s.io/apiserver keeps "" in the ConfigMap's allowed names: `[""]` is the set {""}, which only a
    certificate without CN matches, never "any CN" as `[]` (review r1authn N2). An empty header name
    is skipped, as there."""
    config = from_configmap(
        {"requestheader-allowed-names": '[""]', "requestheader-username-headers": '["", "X-U"]'}
    )
    assert config.requestheader.allowed_names == ("",)
    assert config.requestheader.username_headers == ("X-U",)
    dynamic = DynamicAuthentication(FlagConfig())
    dynamic.update_from_configmap(configmap(front=(cas.front,), allowed=[""]))
    assert await dynamic.authenticate(proxied(cas.front.client("front-proxy-client").cert)) is None
    without_cn = cas.front.client_with_subject(stem="without-cn").cert
    assert await dynamic.authenticate(proxied(without_cn)) is not None


@pytest.mark.parametrize(
    "key",
    [
        "requestheader-allowed-names",
        "requestheader-username-headers",
        "requestheader-group-headers",
        "requestheader-extra-headers-prefix",
        "requestheader-uid-headers",
    ],
)
@pytest.mark.parametrize(
    "value",
    [
        "X-Remote-User",
        '"X-Remote-User"',
        '["X-Remote-User"',
        '{"a": "b"}',
        "[1]",
        '["a", null]',
        "null",
        "42",
    ],
)
def test_malformed_string_arrays_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigMapError):
        from_configmap({key: value})


@pytest.mark.parametrize("key", ["client-ca-file", "requestheader-client-ca-file"])
def test_malformed_ca_bundles_are_refused(key: str) -> None:
    with pytest.raises(ConfigMapError):
        from_configmap({key: "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"})


@pytest.mark.parametrize("key", ["client-ca-file", "requestheader-client-ca-file"])
@pytest.mark.parametrize("value", ["", "\n", " \n\t\n"])
def test_empty_ca_bundles_are_refused(key: str, value: str) -> None:
    """As k8s.io/apiserver ("missing content for CA bundle"): a key that is there holds a CA at least.
    An absent key is a section that is not configured."""
    with pytest.raises(ConfigMapError, match=f"{key} is empty"):
        from_configmap({key: value})


# --- flags over the ConfigMap ---------------------------------------------------------------------


def test_flags_fix_each_section_separately(cas: Cas) -> None:
    base = AuthenticationConfig(
        client_cas=(cas.client.cert,),
        requestheader=RequestHeaderConfig(
            authorities=(cas.front.cert,), allowed_names=("front-proxy-client",)
        ),
    )
    flag_requestheader = RequestHeaderConfig(authorities=(cas.front2.cert,), allowed_names=("proxy",))

    assert FlagConfig().over(base) == base
    assert not FlagConfig().complete

    only_clients = FlagConfig(client_cas=(cas.front2.cert,))
    assert only_clients.over(base) == AuthenticationConfig((cas.front2.cert,), base.requestheader)
    assert not only_clients.complete

    only_proxy = FlagConfig(requestheader=flag_requestheader)
    assert only_proxy.over(base) == AuthenticationConfig(base.client_cas, flag_requestheader)
    assert not only_proxy.complete

    # An explicitly empty client CA list is a choice, not "unset".
    both = FlagConfig(client_cas=(), requestheader=flag_requestheader)
    assert both.over(base) == AuthenticationConfig((), flag_requestheader)
    assert both.complete


# --- the dynamic chain ----------------------------------------------------------------------------


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(authconfig, "log", Logger(namespace="test.authconfig", observer=Collect(events)))
    return events


@pytest_twisted.ensureDeferred
async def test_update_swaps_the_requestheader_ca(cas: Cas, logged: list[dict[str, Any]]) -> None:
    seen: list[AuthenticationConfig] = []
    dynamic = DynamicAuthentication(FlagConfig(), listeners=[seen.append])
    old_proxy = cas.front.client("front-proxy-client").cert
    new_proxy = cas.front2.client("front-proxy-client").cert

    # Nothing configured yet: nobody is believed.
    assert await dynamic.authenticate(proxied(old_proxy)) is None

    dynamic.update_from_configmap(configmap(front=(cas.front,)))
    assert len(seen) == 1
    assert await dynamic.authenticate(proxied(old_proxy)) == UserInfo(
        name="alice", groups=("devs", "system:authenticated")
    )
    assert await dynamic.authenticate(proxied(new_proxy)) is None

    dynamic.update_from_configmap(configmap(front=(cas.front2,)))
    assert len(seen) == 2 and seen[-1] is dynamic.config
    assert seen[-1].requestheader.authorities == (cas.front2.cert,)
    user = await dynamic.authenticate(proxied(new_proxy, user="bob"))
    assert user is not None and user.name == "bob"
    assert await dynamic.authenticate(proxied(old_proxy)) is None

    # The allowed names apply too.
    dynamic.update_from_configmap(configmap(front=(cas.front2,), allowed=["aggregator"]))
    assert len(seen) == 3
    assert await dynamic.authenticate(proxied(new_proxy)) is None
    assert await dynamic.authenticate(proxied(cas.front2.client("aggregator").cert)) is not None


@pytest_twisted.ensureDeferred
async def test_listeners_hear_only_of_real_changes(cas: Cas, logged: list[dict[str, Any]]) -> None:
    seen: list[AuthenticationConfig] = []
    dynamic = DynamicAuthentication(FlagConfig(), listeners=[seen.append])
    data = configmap(client=(cas.client,), front=(cas.front,))
    dynamic.update_from_configmap(data)
    dynamic.update_from_configmap(dict(data))
    # Same content, written differently (spacing in the JSON, an extra key nobody reads).
    respaced = dict(data, **{"requestheader-allowed-names": '[ "front-proxy-client" ]', "unrelated": "x"})
    dynamic.update_from_configmap(respaced)
    assert len(seen) == 1
    dynamic.update_from_configmap(configmap(client=(cas.client,), front=(cas.front,), allowed=[]))
    assert len(seen) == 2
    assert seen[-1].requestheader.allowed_names == ()


@pytest_twisted.ensureDeferred
async def test_a_bad_configmap_keeps_the_previous_configuration(
    cas: Cas, logged: list[dict[str, Any]]
) -> None:
    seen: list[AuthenticationConfig] = []
    dynamic = DynamicAuthentication(FlagConfig(), listeners=[seen.append])
    dynamic.update_from_configmap(configmap(front=(cas.front,)))
    before = dynamic.config
    proxy = cas.front.client("front-proxy-client").cert
    assert len(seen) == 1

    for bad in (
        dict(configmap(front=(cas.front2,)), **{"requestheader-username-headers": "X-Remote-User"}),
        dict(configmap(front=(cas.front2,)), **{"requestheader-allowed-names": '{"front-proxy-client": 1}'}),
        dict(configmap(), **{"requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\nxx\n"}),
        # Emptied: no CA at all is a broken update too, not "trust nobody".
        dict(configmap(), **{"requestheader-client-ca-file": ""}),
        dict(configmap(front=(cas.front,)), **{"client-ca-file": "\n"}),
    ):
        dynamic.update_from_configmap(bad)
        assert dynamic.config is before
        assert await dynamic.authenticate(proxied(proxy)) is not None
    assert len(seen) == 1
    errors = [e for e in logged if e["log_level"].name == "error"]
    assert len(errors) == 5
    assert "requestheader-client-ca-file is empty" in formatEvent(errors[3])
    assert "keeping the previous authentication configuration" in formatEvent(errors[3])
    # Without the key, the front proxy is not configured: nobody is believed.
    dynamic.update_from_configmap(configmap(client=(cas.client,)))
    assert dynamic.config.requestheader.authorities == ()
    assert await dynamic.authenticate(proxied(proxy)) is None


@pytest_twisted.ensureDeferred
async def test_flags_override_the_configmap(cas: Cas, logged: list[dict[str, Any]]) -> None:
    seen: list[AuthenticationConfig] = []
    flags = FlagConfig(requestheader=RequestHeaderConfig(authorities=(cas.front.cert,), allowed_names=()))
    dynamic = DynamicAuthentication(flags, listeners=[seen.append])
    proxy = cas.front.client("any-name").cert
    assert await dynamic.authenticate(proxied(proxy)) is not None  # from the flags, before any ConfigMap

    dynamic.update_from_configmap(configmap(front=(cas.front2,)))
    assert seen == []  # only the overridden section differed
    assert await dynamic.authenticate(proxied(proxy)) is not None
    assert await dynamic.authenticate(proxied(cas.front2.client("front-proxy-client").cert)) is None

    dynamic.update_from_configmap(configmap(client=(cas.client,), front=(cas.front2,)))
    assert len(seen) == 1 and seen[0].client_cas == (cas.client.cert,)


@pytest_twisted.ensureDeferred
async def test_client_certificates_and_tokens_in_the_chain(cas: Cas, logged: list[dict[str, Any]]) -> None:
    token_calls: list[Credentials] = []

    @attrs.define
    class Token:
        async def authenticate(self, credentials: Credentials) -> UserInfo | None:
            token_calls.append(credentials)
            return UserInfo(name="from-token") if credentials.header("authorization") else None

    dynamic = DynamicAuthentication(FlagConfig(), token=Token())
    dynamic.update_from_configmap(configmap(client=(cas.client,), front=(cas.front,)))

    admin = cas.client.client("kubernetes-admin", ("system:masters",)).cert
    user = await dynamic.authenticate(Credentials(admin, {}))
    assert user == UserInfo(name="kubernetes-admin", groups=("system:masters", "system:authenticated"))
    assert token_calls == []

    # A front-proxy certificate is not a client certificate; headers on a client certificate are ignored.
    assert await dynamic.authenticate(Credentials(cas.front.client("front-proxy-client").cert, {})) is None
    user = await dynamic.authenticate(proxied(admin, user="mallory"))
    assert user is not None and user.name == "kubernetes-admin"

    bearer = Credentials(None, {"authorization": ["Bearer t"]})
    assert await dynamic.authenticate(bearer) == UserInfo(name="from-token", groups=("system:authenticated",))
    # The token authenticator survives an update.
    dynamic.update_from_configmap(configmap(client=(cas.client,), front=(cas.front2,)))
    assert await dynamic.authenticate(bearer) is not None


@pytest_twisted.ensureDeferred
async def test_the_user_of_a_client_certificate_is_its_last_common_name_as_in_go(cas: Cas) -> None:
    """Go's pkix.Name keeps the last CN attribute as the subject's CommonName, which k8s.io/apiserver
    takes as the user (review r1authn L4): the same certificate is the same user here as in
    kube-apiserver, and RBAC written for one applies to the other."""
    dynamic = DynamicAuthentication(FlagConfig())
    dynamic.update_from_configmap(configmap(client=(cas.client,), front=(cas.front,)))
    for names, user in ((("carol", "alice"), "alice"), ((), None)):
        cert = cas.client.client_with_subject(*names, stem="-".join(names) or "none").cert
        found = await dynamic.authenticate(Credentials(cert, {}))
        assert (found.name if found else None) == user, names


def test_trusted_cas_has_no_duplicates(cas: Cas) -> None:
    config = from_configmap(
        configmap(client=(cas.client, cas.front, cas.client), front=(cas.front, cas.front2, cas.front))
    )
    trusted = config.trusted_cas
    assert sorted(c.subject.rfc4514_string() for c in trusted) == [
        "CN=front-proxy-ca",
        "CN=front-proxy-ca-2",
        "CN=kubernetes",
    ]
    assert AuthenticationConfig().trusted_cas == ()


def test_identity_headers(cas: Cas, logged: list[dict[str, Any]]) -> None:
    """Every identity header is named, whoever sent it: forged ones are removed so that no handler reads
    them, the front proxy's once its identity is in the UserInfo."""
    dynamic = DynamicAuthentication(FlagConfig())
    dynamic.update_from_configmap(
        dict(
            configmap(client=(cas.client,), front=(cas.front,)),
            **{"requestheader-uid-headers": '["X-Remote-Uid"]'},
        )
    )
    headers = {
        "x-remote-user": ["system:admin"],
        "x-remote-group": ["system:masters"],
        "x-remote-uid": ["0"],
        "x-remote-extra-scopes": ["all"],
        "authorization": ["Bearer t"],
        "accept": ["application/json"],
    }
    identity = ["x-remote-user", "x-remote-group", "x-remote-uid", "x-remote-extra-scopes"]
    for cert in (
        cas.front.client("front-proxy-client").cert,
        None,
        cas.client.client("alice").cert,
        cas.front.client("not-the-proxy").cert,
        cas.front2.client("front-proxy-client").cert,
    ):
        assert sorted(dynamic.identity_headers(Credentials(cert, headers))) == sorted(identity)
    assert dynamic.identity_headers(Credentials(None, {"accept": ["*/*"]})) == []


# --- decisions kept per connection -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_decisions_kept_for_a_connection_end_with_a_ca_change_and_are_never_shared(
    cas: Cas, logged: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[x509.Certificate] = []
    verify = TrustAnchors.verify

    def counted(anchors: TrustAnchors, cert: x509.Certificate, *args: Any) -> bool:
        verified.append(cert)
        return verify(anchors, cert, *args)

    monkeypatch.setattr(TrustAnchors, "verify", counted)
    dynamic = DynamicAuthentication(FlagConfig())
    dynamic.update_from_configmap(configmap(client=(cas.client,), front=(cas.front,)))
    # As the TLS layer hands them over: the same chain objects on every request of a connection.
    proxy = cas.front.client("front-proxy-client").cert
    proxy_chain = (proxy, cas.front.cert)
    impostor = cas.front.client("not-the-proxy").cert
    impostor_chain = (impostor, cas.front.cert)
    alice = cas.client.client("alice", ("devs",)).cert
    alice_chain = (alice, cas.client.cert)
    bob = cas.client.client("bob").cert
    bob_chain = (bob, cas.client.cert)
    identity = {"x-remote-user": ["carol"], "x-remote-group": ["ops"]}
    # Each connection's verdicts (tls.connection_verdicts), the handshake's check and its requests alike.
    kept: dict[x509.Certificate, Verdicts] = {
        c: weakref.WeakKeyDictionary() for c in (proxy, impostor, alice, bob)
    }
    for _ in range(3):
        assert dynamic.is_front_proxy(proxy_chain, kept[proxy])
        assert await dynamic.authenticate(
            Credentials(proxy, identity, proxy_chain, verdicts=kept[proxy])
        ) == UserInfo(name="carol", groups=("ops", "system:authenticated"))
        # Same CA, another name: its own decision, never the proxy's.
        assert not dynamic.is_front_proxy(impostor_chain, kept[impostor])
        assert (
            await dynamic.authenticate(
                Credentials(impostor, identity, impostor_chain, verdicts=kept[impostor])
            )
            is None
        )
        assert await dynamic.authenticate(
            Credentials(alice, {}, alice_chain, verdicts=kept[alice])
        ) == UserInfo(name="alice", groups=("devs", "system:authenticated"))
        assert await dynamic.authenticate(Credentials(bob, {}, bob_chain, verdicts=kept[bob])) == UserInfo(
            name="bob", groups=("system:authenticated",)
        )
    # Three rounds, one verification per connection and authenticator, the handshake's check serving
    # the requests: the front proxy's by the request-header authenticator only (trusted, the headers
    # name the user); the others' by both (the impostor's refused by each).
    assert sorted(c.subject.rfc4514_string() for c in verified) == sorted(
        c.subject.rfc4514_string() for c in (proxy, impostor, impostor, alice, alice, bob, bob)
    )

    # The CAs change: what was decided for these very objects is not believed any more.
    dynamic.update_from_configmap(configmap(client=(cas.front2,), front=(cas.front2,)))
    assert not dynamic.is_front_proxy(proxy_chain, kept[proxy])
    assert await dynamic.authenticate(Credentials(proxy, identity, proxy_chain, verdicts=kept[proxy])) is None
    assert await dynamic.authenticate(Credentials(alice, {}, alice_chain, verdicts=kept[alice])) is None
    # And back: believed again.
    dynamic.update_from_configmap(configmap(client=(cas.client,), front=(cas.front,)))
    assert dynamic.is_front_proxy(proxy_chain, kept[proxy])
    assert await dynamic.authenticate(Credentials(alice, {}, alice_chain, verdicts=kept[alice])) is not None


def test_chain_decisions_are_kept_with_the_connection(cas: Cas) -> None:
    decided: list[x509.Certificate | None] = []

    def decide(credentials: Credentials, now: object) -> str:
        decided.append(credentials.peer_certificate)
        return f"decision {len(decided)}"

    kept: ChainDecisions[str] = ChainDecisions()
    cert = cas.client.client("alice").cert
    chain = (cert, cas.client.cert)
    connection: Verdicts = weakref.WeakKeyDictionary()
    first = kept.get(Credentials(cert, {}, chain, verdicts=connection), decide)
    assert kept.get(Credentials(cert, {"accept": ["*/*"]}, chain, verdicts=connection), decide) == first
    assert len(decided) == 1
    # Another connection's chain is decided on its own, even an equal one.
    assert kept.get(Credentials(cert, {}, chain, verdicts=weakref.WeakKeyDictionary()), decide) != first
    assert len(decided) == 2
    # Nothing is kept without a certificate, or without a connection to keep it with.
    kept.get(Credentials(None, {}, verdicts=connection), decide)
    kept.get(Credentials(None, {}, verdicts=connection), decide)
    kept.get(Credentials(cert, {}, chain), decide)
    kept.get(Credentials(cert, {}, chain), decide)
    assert len(decided) == 6
    # Another authenticator (a CA change makes one) decides on its own; the one replaced takes its
    # verdicts with it.
    replaced: ChainDecisions[str] = ChainDecisions()
    assert replaced.get(Credentials(cert, {}, chain, verdicts=connection), decide) == "decision 7"
    assert len(connection) == 2
    del replaced
    gc.collect()
    assert len(connection) == 1
    assert kept.get(Credentials(cert, {}, chain, verdicts=connection), decide) == first
    assert len(decided) == 7


# --- no request-header CA after the ConfigMap is read (review-operations F12) ---------------------


def _no_requestheader_warnings(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if "no request-header CA" in formatEvent(e)]


def test_a_missing_configmap_is_warned_about_once_it_is_synced(logged: list[dict[str, Any]]) -> None:
    dynamic = DynamicAuthentication(FlagConfig())
    feed = _ConfigMapFeed(dynamic)
    assert _no_requestheader_warnings(logged) == []  # not read yet: nothing is known
    feed.on_replaced([])  # listed: the ConfigMap is not there
    lines = _no_requestheader_warnings(logged)
    assert len(lines) == 1
    assert "kube-system/extension-apiserver-authentication" in lines[0]
    assert "won't work" in lines[0]
    assert logged[-1]["log_level"].name == "warn"
    feed.on_replaced([])  # every relist: the same state, no new line
    assert len(_no_requestheader_warnings(logged)) == 1


def test_a_configmap_without_requestheader_ca_is_warned_about_once_per_change(
    cas: Cas, logged: list[dict[str, Any]]
) -> None:
    dynamic = DynamicAuthentication(FlagConfig())
    feed = _ConfigMapFeed(dynamic)
    without = {
        "metadata": {"name": "extension-apiserver-authentication"},
        "data": configmap(client=(cas.client,)),
    }
    feed.on_add(without)
    feed.on_replaced([without])
    assert len(_no_requestheader_warnings(logged)) == 1
    feed.on_update(without, without)
    assert len(_no_requestheader_warnings(logged)) == 1
    # The aggregation layer configured: no warning; its CA gone again: warned again.
    with_ca = {**without, "data": configmap(client=(cas.client,), front=(cas.front,))}
    feed.on_update(without, with_ca)
    assert len(_no_requestheader_warnings(logged)) == 1
    feed.on_update(with_ca, without)
    assert len(_no_requestheader_warnings(logged)) == 2


def test_a_requestheader_ca_from_the_flags_or_the_configmap_is_not_warned_about(
    cas: Cas, logged: list[dict[str, Any]]
) -> None:
    flags = FlagConfig(requestheader=RequestHeaderConfig(authorities=(cas.front.cert,)))
    _ConfigMapFeed(DynamicAuthentication(flags)).on_replaced([])
    feed = _ConfigMapFeed(DynamicAuthentication(FlagConfig()))
    present = {"metadata": {"name": "x"}, "data": configmap(front=(cas.front,))}
    feed.on_add(present)
    feed.on_replaced([present])
    assert _no_requestheader_warnings(logged) == []
