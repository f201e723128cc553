"""Completion: files read and checked, kubeconfig loaded, every problem one line naming the flag or file."""

from __future__ import annotations

import base64
import datetime
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as global_reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory

from payloadtags.kube import ClusterConfig
from payloadtags.listen import dual_stack_socket, listen
from payloadtags.registry import RegistrySettings
from payloadtags.settings import Settings
from payloadtags.startup import (
    CERT_DIR_CERT,
    CERT_DIR_KEY,
    ConfigurationError,
    always_allow_warnings,
    complete,
    lease_namespace,
)
from payloadtags.tls import SELF_SIGNED_DAYS
from tests.support.kubeapi import write_kubeconfig
from tests.support.pki import Authority
from tests.support.process import ROOT
from tests.support.registry_server import free_port

NO_POD: dict[str, str] = {}


def settings(**values: object) -> Settings:
    base: dict[str, object] = {
        "registry": RegistrySettings(url="http://127.0.0.1:5000"),
        "registry_host": "r",
        "authorization_mode": "AlwaysAllow",
    }
    base.update(values)
    return Settings(**base)  # type: ignore[arg-type]


def errors_of(**values: object) -> list[str]:
    with pytest.raises(ConfigurationError) as raised:
        complete(settings(**values), environ=NO_POD)
    return raised.value.errors


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "ca", "serving")


def test_a_key_that_is_not_the_certificates_names_both_files(ca: Authority) -> None:
    one, other = ca.server(stem="one"), ca.server(stem="other")
    assert errors_of(tls_cert_file=str(one.cert_file), tls_private_key_file=str(other.key_file)) == [
        f"--tls-private-key-file {other.key_file} does not match the certificate in "
        f"--tls-cert-file {one.cert_file}"
    ]


def test_unparsable_pem_names_the_file(ca: Authority, tmp_path: Path) -> None:
    good = ca.server()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    assert errors_of(tls_cert_file=str(garbage), tls_private_key_file=str(good.key_file)) == [
        f"--tls-cert-file {garbage}: not a PEM certificate bundle (cannot parse it)"
    ]
    assert errors_of(tls_cert_file=str(good.cert_file), tls_private_key_file=str(garbage)) == [
        f"--tls-private-key-file {garbage}: not a PEM private key (cannot parse it)"
    ]
    assert errors_of(client_ca_file=str(empty)) == [f"--client-ca-file {empty}: holds no PEM certificate"]


def test_an_encrypted_key_says_so(ca: Authority, tmp_path: Path) -> None:
    issued = ca.server()
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert errors_of(tls_cert_file=str(issued.cert_file), tls_private_key_file=str(encrypted)) == [
        f"--tls-private-key-file {encrypted}: the key is encrypted; give it unencrypted"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("just: [a, list\n")
    token = tmp_path / "token"
    token.write_text("\n")
    errors = errors_of(
        tls_cert_file=str(tmp_path / "missing.crt"),
        tls_private_key_file=str(tmp_path / "missing.key"),
        requestheader_client_ca_file=str(tmp_path / "missing-ca.crt"),
        registry=RegistrySettings(url="https://r", ca_file=str(tmp_path / "registry-ca.crt")),
        registry_events_token_file=str(token),
        kubeconfig=str(kubeconfig),
    )
    assert errors == [
        f"--tls-cert-file {tmp_path / 'missing.crt'}: cannot read: No such file or directory",
        f"--tls-private-key-file {tmp_path / 'missing.key'}: cannot read: No such file or directory",
        f"--requestheader-client-ca-file {tmp_path / 'missing-ca.crt'}: cannot read: "
        "No such file or directory",
        f"--registry-ca-file {tmp_path / 'registry-ca.crt'}: cannot read: No such file or directory",
        f"--registry-events-token-file {token} is empty",
        errors[5],
    ]
    assert errors[5].startswith(f"--kubeconfig: cannot read kubeconfig '{kubeconfig}'")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- a\n- b\n", "is not a kubeconfig"),
        ("apiVersion: v1\nkind: Config\n", "is not a kubeconfig"),
        ("{unclosed", "cannot read kubeconfig"),
    ],
)
def test_a_bad_kubeconfig_names_the_flag(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    (error,) = errors_of(kubeconfig=str(path), authorization_mode=None)
    assert error.startswith("--kubeconfig: ") and message in error and str(path) in error


@pytest.mark.parametrize(
    ("content", "gist"),
    [
        (
            "apiVersion: v1\ngarbage: [\n",
            "expected the node content, but found '<stream end>' at line 3, column 1 "
            "(while parsing a flow node at line 3, column 1)",
        ),
        (
            "{unclosed",
            "expected ',' or '}', but got '<stream end>' at line 1, column 10 "
            "(while parsing a flow mapping at line 1, column 1)",
        ),
        (
            "clusters: [a]\n\tusers: []\n",
            "found character '\\t' that cannot start any token at line 2, column 1",
        ),
        (
            "clusters: *x\n",
            "clusters: an alias (*…) names no anchor (quote the value if it is text) at line 1, column 11",
        ),
        # Tracebacks at start before (review-ops F1, F4); kubectl refuses these files too.
        ("clusters: [!!binary '!!!']\n", "!!binary value contains invalid base64 data at line 1, column 12"),
        ("clusters: [{limit: .inf}]\n", "limit: json: unsupported value: .inf at line 1, column 20"),
        (
            "clusters: [!!timestamp 2024-02-30]\n",
            "cannot decode !!str as a !!timestamp at line 1, column 12",
        ),
    ],
)
def test_a_kubeconfig_yaml_error_is_one_line_with_its_place(tmp_path: Path, content: str, gist: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    (error,) = errors_of(kubeconfig=str(path), authorization_mode=None)
    assert "\n" not in error
    assert error.startswith(f"--kubeconfig: cannot read kubeconfig '{path}': {gist}")


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("https://bad host:6443", "'bad host' is not a host name"),
        ("https://127.0.0.1:99999", "Port out of range 0-65535"),
    ],
)
def test_a_kubeconfig_server_that_cannot_be_reached_by_its_syntax_is_refused(
    tmp_path: Path, server: str, problem: str
) -> None:
    # Found at start, not by every reflector's first request failing with a traceback.
    path = tmp_path / "kubeconfig"
    path.write_text(
        f'clusters: [{{name: c, cluster: {{server: "{server}"}}}}]\n'
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    (error,) = errors_of(kubeconfig=str(path), authorization_mode=None)
    assert error.startswith(f"--kubeconfig: kubeconfig '{path}': cluster server '{server}': ")
    assert problem in error and "\n" not in error


def test_standalone_without_always_allow_is_refused() -> None:
    (error,) = errors_of(authorization_mode=None)
    assert "pass --authorization-mode=AlwaysAllow to run standalone" in error


def test_a_url_given_to_cert_dir_or_tls_cert_file_is_logged_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # review r6cfg N3: a URL that took a file flag's value is a folder (or file) that can be made under
    # the working directory ("https:/al1ce:s3cret@r"); the start then succeeded and logged it whole.
    monkeypatch.chdir(tmp_path)
    url = "https://al1ce:s3cret@r"
    first = complete(settings(cert_dir=url), environ=NO_POD)
    assert first.serving_origin == "a new self-signed pair written to --cert-dir <redacted>@r"
    second = complete(settings(cert_dir=url), environ=NO_POD)
    assert second.serving_origin == "the self-signed pair in --cert-dir <redacted>@r"
    pair = complete(
        settings(tls_cert_file=f"{url}/{CERT_DIR_CERT}", tls_private_key_file=f"{url}/{CERT_DIR_KEY}"),
        environ=NO_POD,
    )
    assert pair.serving_origin == f"--tls-cert-file https://<redacted>@r/{CERT_DIR_CERT}"


# The health checks a server without a cluster registers (server.start), by endpoint.
STANDALONE_CHECKS = {"healthz": ["ping"], "livez": ["ping"], "readyz": ["ping", "shutdown", "registry"]}


def test_an_always_allow_entry_ending_in_a_slash_is_said_once_at_start() -> None:
    # Review r7misc N4: `/readyz/` or `/healthz/ping/` was taken and opened nothing, without a word: a
    # request's trailing '/' is dropped before the match. k8s.io/apiserver takes it too and opens the
    # path `/readyz/` alone, which kube-apiserver does not serve: it opens nothing there either.
    # Review r11misc L1: what it offers instead opens something: nothing is served under a check or
    # /metrics ('/healthz/ping/*' opened nothing), and another path needs a credential whatever is listed.
    # Review r13cfg L2: a check the endpoint does not have ('/readyz/etcd/', from a kube-apiserver probe
    # list) was offered without its '/', which answers 404: only a registered check is offered.
    entries: tuple[str, ...] = ("/readyz/", "/healthz/ping/", "/readyz/", "/", "/livez", "/readyz/*")
    entries += ("/metrics", "/metrics/", "/version/", "/readyz//", "/healthz/ping/x/", "//")
    entries += ("/readyz/registry/", "/readyz/etcd/", "/livez/shutdown/")
    opens_nothing = "--authorization-always-allow-paths: the entry {!r} ends in '/' and opens nothing: a "
    opens_nothing += "request's path is matched with its trailing '/' dropped, so none equals it; "
    nor = "{!r} would open nothing either: only the health endpoints, their checks and /metrics are served "
    nor += "without a credential"
    no_check = "{!r} would open nothing either: it is no check of {}, whose checks are {}"
    assert always_allow_warnings(entries, STANDALONE_CHECKS) == (
        opens_nothing.format("/readyz/") + "write '/readyz' instead, or '/readyz/*' for the checks under it",
        opens_nothing.format("/healthz/ping/") + "write '/healthz/ping' instead",
        opens_nothing.format("/metrics/") + "write '/metrics' instead",
        opens_nothing.format("/version/") + nor.format("/version"),
        opens_nothing.format("/readyz//") + "write '/readyz' instead, or '/readyz/*' for the checks under it",
        opens_nothing.format("/healthz/ping/x/") + nor.format("/healthz/ping/x"),
        opens_nothing.format("//") + nor.format("/"),
        opens_nothing.format("/readyz/registry/") + "write '/readyz/registry' instead",
        opens_nothing.format("/readyz/etcd/")
        + no_check.format("/readyz/etcd", "/readyz", "ping, shutdown, registry"),
        opens_nothing.format("/livez/shutdown/") + no_check.format("/livez/shutdown", "/livez", "ping"),
    )
    assert always_allow_warnings(settings().always_allow_paths, STANDALONE_CHECKS) == ()
    # Said by the server once its checks are registered, not among the settings' warnings.
    assert complete(settings(always_allow_paths=entries), environ=NO_POD).warnings == ()


def test_an_always_allow_entry_ending_in_a_slash_is_said_without_a_urls_user_information() -> None:
    # Review r11misc L2: a scheme-relative URL that took the flag's place begins with '/', so it is an
    # entry, warned about; the redaction of its password there was untested. Nor does a check's name
    # show it (an entry under an endpoint ending in the URL's host).
    warnings = always_allow_warnings(("//al1ce:s3cret@r/", "/readyz/al1ce:s3cret@r/"), STANDALONE_CHECKS)
    assert warnings == (
        "--authorization-always-allow-paths: the entry '//<redacted>@r/' ends in '/' and opens nothing: a "
        "request's path is matched with its trailing '/' dropped, so none equals it; '//<redacted>@r' would "
        "open nothing either: only the health endpoints, their checks and /metrics are served without a "
        "credential",
        "--authorization-always-allow-paths: the entry '<redacted>@r/' ends in '/' and opens nothing: a "
        "request's path is matched with its trailing '/' dropped, so none equals it; '<redacted>@r' would "
        "open nothing either: it is no check of /readyz, whose checks are ping, shutdown, registry",
    )


def test_cert_dir_pair_is_written_once_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    first = complete(settings(cert_dir=str(directory)), environ=NO_POD)
    assert first.serving_origin == f"a new self-signed pair written to --cert-dir {directory}"
    assert os.stat(directory / CERT_DIR_KEY).st_mode & 0o777 == 0o600
    second = complete(settings(cert_dir=str(directory)), environ=NO_POD)
    assert second.serving_origin == f"the self-signed pair in --cert-dir {directory}"
    assert second.serving.chain == first.serving.chain
    (directory / CERT_DIR_CERT).write_text("garbage")
    (error,) = errors_of(cert_dir=str(directory))
    assert error.startswith(f"--cert-dir {directory / CERT_DIR_CERT}: ")
    assert error.endswith("(delete both files to have a new pair generated)")


@pytest.mark.parametrize("flag", ["client_ca_file", "kubeconfig"])
def test_a_start_refused_for_another_file_writes_no_cert_dir_pair(tmp_path: Path, flag: str) -> None:
    # install.md's standalone recipe waits for apiserver.crt: a refused start must not write it (r1cli L1).
    bad = tmp_path / "bad.pem"
    bad.write_text("garbage\n")
    directory = tmp_path / "certs"
    errors_of(cert_dir=str(directory), **{flag: str(bad)})
    assert not directory.exists()
    # The same start with that file fixed writes the pair.
    complete(settings(cert_dir=str(directory)), environ=NO_POD)
    assert sorted(p.name for p in directory.iterdir()) == sorted([CERT_DIR_CERT, CERT_DIR_KEY])


def _write_pair_valid(
    tmp_path: Path, since: datetime.datetime, until: datetime.datetime
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(since)
        .not_valid_after(until)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("since", "until", "said"),
    [
        (datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 2), "expired on 2020-01-02 00:00:00 UTC"),
        (
            datetime.datetime(2031, 1, 1),
            datetime.datetime(2032, 1, 1),
            "is not valid before 2031-01-01 00:00:00 UTC",
        ),
    ],
)
def test_a_serving_certificate_out_of_its_validity_is_warned_of_at_start(
    tmp_path: Path, since: datetime.datetime, until: datetime.datetime, said: str
) -> None:
    # r1cli L4: it started without a word, and every client then refused it. A warning, not a refusal:
    # a clock far off must not stop the start.
    cert_file, key_file = _write_pair_valid(tmp_path, since, until)
    completed = complete(
        settings(tls_cert_file=str(cert_file), tls_private_key_file=str(key_file)), environ=NO_POD, now=NOW
    )
    (warning,) = completed.warnings
    assert warning.startswith(f"--tls-cert-file {cert_file}: the certificate {said} (clients will refuse it")
    in_time = complete(
        settings(tls_cert_file=str(cert_file), tls_private_key_file=str(key_file)),
        environ=NO_POD,
        now=since.replace(tzinfo=datetime.UTC) + datetime.timedelta(hours=1),
    )
    assert in_time.warnings == ()


def test_an_expired_cert_dir_pair_is_made_anew(tmp_path: Path) -> None:
    # r1cli L4: docs/configuration.md says the pair is reused: after its 365 days every client refused it.
    directory = tmp_path / "certs"
    first = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=NOW)
    later = NOW + datetime.timedelta(days=SELF_SIGNED_DAYS, minutes=1)
    renewed = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=later)
    assert renewed.serving.chain != first.serving.chain
    assert renewed.serving_origin == f"a new self-signed pair written to --cert-dir {directory}"
    (warning,) = renewed.warnings
    assert warning == (
        f"the self-signed pair in --cert-dir {directory}: {CERT_DIR_CERT} expired on "
        f"{(NOW + datetime.timedelta(days=SELF_SIGNED_DAYS)).strftime('%Y-%m-%d %H:%M:%S')} UTC, so a new "
        f"pair is written in its place: clients that trust the old {CERT_DIR_CERT} need the new one"
    )
    assert os.stat(directory / CERT_DIR_KEY).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in directory.iterdir()) == sorted([CERT_DIR_CERT, CERT_DIR_KEY])
    reused = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=later)
    assert (reused.serving.chain, reused.warnings) == (renewed.serving.chain, ())


@pytest.mark.parametrize("dies_at", [1, 2])
def test_a_start_that_dies_while_replacing_an_expired_pair_leaves_one_the_next_start_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies_at: int
) -> None:
    # r2cli F1: dead between the two renames, the start left the new key by the old certificate, and
    # every later start was refused ("does not match ... delete both files") until someone did.
    directory = tmp_path / "certs"
    complete(settings(cert_dir=str(directory)), environ=NO_POD, now=NOW)
    old = {name: (directory / name).read_bytes() for name in (CERT_DIR_CERT, CERT_DIR_KEY)}
    later = NOW + datetime.timedelta(days=SELF_SIGNED_DAYS, minutes=1)
    real_replace = os.replace
    renames: list[object] = []

    def dies(source: Any, target: Any) -> None:
        renames.append(target)
        if len(renames) == dies_at:
            raise SystemExit("killed")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(SystemExit):
        complete(settings(cert_dir=str(directory)), environ=NO_POD, now=later)
    monkeypatch.setattr(os, "replace", real_replace)
    # No file was written in place: dead before any rename, the old pair is there byte for byte.
    if dies_at == 1:
        assert {name: (directory / name).read_bytes() for name in old} == old
    restarted = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=later)
    assert restarted.serving_origin == f"a new self-signed pair written to --cert-dir {directory}"
    reused = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=later)
    assert (reused.serving.chain, reused.warnings) == (restarted.serving.chain, ())
    assert sorted(p.name for p in directory.iterdir()) == sorted([CERT_DIR_CERT, CERT_DIR_KEY])


def test_a_first_start_that_died_before_its_certificate_was_written_is_made_anew(tmp_path: Path) -> None:
    # r2cli F1: the pair is written key first; a key without a certificate was refused at every start.
    directory = tmp_path / "certs"
    directory.mkdir()
    (directory / CERT_DIR_KEY).write_bytes(b"a key whose certificate was never written")
    completed = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=NOW)
    assert completed.serving_origin == f"a new self-signed pair written to --cert-dir {directory}"
    reused = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=NOW)
    assert reused.serving.chain == completed.serving.chain


def test_each_cert_dir_file_is_synced_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # r2cli F1: without it, after a power loss a renamed file may come back empty on some filesystems.
    directory = tmp_path / "certs"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{descriptor}')}")
        real_fsync(descriptor)

    def replace(source: Any, target: Any) -> None:
        events.append(f"rename {source}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    complete(settings(cert_dir=str(directory)), environ=NO_POD, now=NOW)
    new_key, new_cert = (str(directory / f"{name}.new") for name in (CERT_DIR_KEY, CERT_DIR_CERT))
    assert events == [
        f"fsync {new_key}",
        f"rename {new_key}",
        f"fsync {new_cert}",
        f"rename {new_cert}",
        f"fsync {directory}",
    ]


def test_an_expired_pair_in_a_read_only_cert_dir_is_served_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # r2cli L2: the start was refused ("cannot write the self-signed pair: Read-only file system"),
    # which main served; a clock over a year ahead does the same. The expiry is a warning, never a refusal.
    directory = tmp_path / "certs"
    first = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=NOW)
    later = NOW + datetime.timedelta(days=SELF_SIGNED_DAYS, minutes=1)
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    started = complete(settings(cert_dir=str(directory)), environ=NO_POD, now=later)
    assert started.serving.chain == first.serving.chain
    kept = f"the self-signed pair in --cert-dir {directory}"
    assert started.serving_origin == kept
    expired = (NOW + datetime.timedelta(days=SELF_SIGNED_DAYS)).strftime("%Y-%m-%d %H:%M:%S")
    assert started.warnings == (
        f"{kept}: {CERT_DIR_CERT} expired on {expired} UTC (clients will refuse it), served as it is; "
        "cannot write a new pair: Read-only file system",
    )
    # A half pair cannot be served: then the write's failure is the refusal.
    other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / CERT_DIR_KEY).write_bytes(other_key)
    with pytest.raises(ConfigurationError) as refused:
        complete(settings(cert_dir=str(directory)), environ=NO_POD, now=later)
    assert refused.value.errors == [
        f"--cert-dir {directory}: cannot write the self-signed pair: Read-only file system"
    ]


def test_lease_namespace_flag_pod_environment_kubeconfig_default() -> None:
    out_of_pod = ClusterConfig(server="https://k", namespace="from-context")
    in_pod = ClusterConfig(server="https://k", namespace="pods-own", in_cluster=True)
    env = {"POD_NAMESPACE": "from-env"}
    flagged = settings(leader_elect_resource_namespace="flagged")
    assert lease_namespace(flagged, in_pod, env) == "flagged"
    assert lease_namespace(settings(), in_pod, env) == "pods-own"
    assert lease_namespace(settings(), out_of_pod, env) == "from-env"
    assert lease_namespace(settings(), out_of_pod, {}) == "from-context"
    assert lease_namespace(settings(), ClusterConfig(server="https://k"), {}) == "default"


def test_kubeconfig_context_namespace_is_read(tmp_path: Path, ca: Authority) -> None:
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_file.read_bytes(), token="t")
    text = path.read_text().replace(
        '"cluster": "kubeapi-double"', '"cluster": "kubeapi-double", "namespace": "ops"'
    )
    assert '"namespace": "ops"' in text
    path.write_text(text)
    completed = complete(settings(kubeconfig=str(path)), environ=NO_POD)
    assert completed.cluster is not None and completed.cluster.namespace == "ops"
    assert completed.lease_namespace == "ops"


def test_a_kubeconfig_that_skips_tls_verification_starts_with_a_warning_saying_what_is_at_risk(
    tmp_path: Path, ca: Authority
) -> None:
    # review-newcomer N3: it started without a word, though callers' identities (TokenReview) and access
    # rules (RBAC objects) come over that connection.
    token = "s3cr3t-token"
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_file.read_bytes(), token=token)
    verified = complete(settings(kubeconfig=str(path)), environ=NO_POD)
    assert verified.warnings == ()
    document = json.loads(path.read_text())
    cluster = document["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = True
    path.write_text(json.dumps(document))
    (warning,) = complete(settings(kubeconfig=str(path)), environ=NO_POD).warnings
    assert warning.startswith(f"--kubeconfig {path}: insecure-skip-tls-verify is true, so the cluster API's ")
    for risk in ("not verified", "callers are (TokenReview)", "read and delete (the RBAC objects)"):
        assert risk in warning
    assert token not in warning


# review r2f L5: a "*.localhost" name is resolved through hosts and DNS, which may map it anywhere.
@pytest.mark.parametrize("server", ["http://cluster.test:1", "http://api.localhost:8001"])
@pytest.mark.parametrize("insecure", [{}, {"insecure-skip-tls-verify": True}])
def test_a_kubeconfig_whose_server_is_plain_http_starts_with_a_warning_saying_what_is_at_risk(
    tmp_path: Path, insecure: dict[str, bool], server: str
) -> None:
    # ops2's note on N3: http:// has the risk of insecure-skip-tls-verify and more (tokens in clear), and
    # started without a word. One warning, the one whose fix works: a CA alone would not help here. The
    # user's token is not sent there (review r3cfg F2): the loader's warning, first, says so.
    token = "s3cr3t-token"
    cluster = {"server": server, **insecure}
    path = _kubeconfig(tmp_path, cluster, {"token": token}, {"cluster": "c", "user": "u"})
    completed = complete(settings(kubeconfig=str(path)), environ=NO_POD)
    assert completed.cluster is not None and completed.cluster.token is None
    unused, warning = completed.warnings
    assert unused.startswith(f"kubeconfig '{path}': user \"u\": token not used: "), unused
    assert warning.startswith(f"--kubeconfig {path}: the cluster API's server is plain http://, so "), warning
    for risk in (
        "nothing sent to it or received from it is encrypted or verified",
        "read the callers' bearer tokens payloadtags sends it to review",
        "callers are (TokenReview)",
        "read and delete (the RBAC objects)",
    ):
        assert risk in warning
    fix = "use its https:// URL in server and give the cluster's CA (certificate-authority)"
    assert warning.endswith(fix)
    assert token not in warning


@pytest.mark.parametrize(
    ("server", "user"),
    [("http://cluster.test:1", "tokenFile: token"), ("https://cluster.test:1", "token: t")],
    ids=["plain-http", "insecure-skip-tls-verify"],
)
def test_the_warnings_of_a_url_shaped_kubeconfig_that_names_a_file_show_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str, user: str
) -> None:
    # Found beside review r11misc F1: a URL that took --kubeconfig's place (https://al1ce:s3cret@r/kc)
    # and names a file under the working directory starts with warnings, logged, that named it as typed.
    monkeypatch.chdir(tmp_path)
    kubeconfig = "https://al1ce:s3cret@r/kc"
    Path(kubeconfig).parent.mkdir(parents=True)
    Path(kubeconfig).write_text(
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]\n'
        f"users: [{{name: u, user: {{{user}}}}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    warnings = complete(settings(kubeconfig=kubeconfig), environ=NO_POD).warnings
    assert warnings and not any("al1ce" in warning or "s3cret" in warning for warning in warnings), warnings
    assert all("https://<redacted>@r/kc" in warning for warning in warnings), warnings


@pytest.mark.parametrize("server", ["http://127.0.0.1:8001", "http://[::1]:8001", "http://localhost:8001"])
def test_a_kubeconfig_whose_server_is_plain_http_on_loopback_is_not_told_of_a_network_path(
    tmp_path: Path, server: str
) -> None:
    # review r2d N1: `kubectl proxy` serves plain HTTP on loopback and holds the credential itself; the
    # warning spoke of "whoever is on the network path" and told to use an https:// URL it does not have.
    # The kubeconfig kubectl proxy is used with has no credential of its own (one would not be used there,
    # tests/unit/test_kube_config_plain_http.py).
    cluster = {"server": server}
    path = _kubeconfig(tmp_path, cluster, {}, {"cluster": "c", "user": "u"})
    (warning,) = complete(settings(kubeconfig=str(path)), environ=NO_POD).warnings
    assert warning == (
        f"--kubeconfig {path}: the cluster API's server is plain http:// on loopback (as `kubectl proxy` "
        "serves): nothing on that connection crosses a network, and only processes on this host (in a pod, "
        "its containers) can read or answer it; if what listens there passes requests on to another machine "
        "in plain text, that leg is as open as an http:// server elsewhere"
    )


def test_the_unspecified_address_socket_takes_both_families() -> None:
    sock = dual_stack_socket()
    if not socket.has_ipv6:  # the IPv4 fallback
        assert sock is None
        return
    assert sock is not None
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        sock.close()


def test_without_ipv6_the_socket_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "has_ipv6", False)
    assert dual_stack_socket() is None


def _serve(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "payloadtags.cli", "serve", "--registry-url=http://127.0.0.1:1", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_port_in_use_is_one_line_exit_1() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        result = _serve(
            "--authorization-mode=AlwaysAllow", "--bind-address=127.0.0.1", f"--secure-port={port}"
        )
    finally:
        holder.close()
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "payloadtags:" in line]
    assert len(errors) == 1, result.stderr
    assert f"--secure-port {port}: cannot listen on 127.0.0.1:{port}: address already in use" in errors[0]
    assert "Traceback" not in result.stderr


class _RefusingReactor:
    """Stands in for the reactor's listenTCP where the OS refuses the port with `error_number`."""

    def __init__(self, error_number: int) -> None:
        self.error_number = error_number

    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> NoReturn:
        error = OSError(self.error_number, os.strerror(self.error_number))
        raise CannotListenError(interface, port, error)


def _listen_error(address: str, port: int, reactor: object = None) -> str:
    with pytest.raises(ConfigurationError) as raised:
        listen(reactor if reactor is not None else global_reactor, address, port, Factory())
    (line,) = raised.value.errors
    return line


def test_a_privileged_port_is_named_with_its_remedies() -> None:
    line = _listen_error("127.0.0.1", 443, _RefusingReactor(errno.EACCES))
    assert line == (
        "--secure-port 443: cannot listen on 127.0.0.1:443: permission denied (ports below 1024 are "
        "privileged: choose a --secure-port above 1023, or give the process the CAP_NET_BIND_SERVICE "
        "capability)"
    )
    # Above 1023 a refusal is something else (a security module, say): the OS's word only.
    assert _listen_error("127.0.0.1", 8443, _RefusingReactor(errno.EACCES)) == (
        "--secure-port 8443: cannot listen on 127.0.0.1:8443: permission denied"
    )


def test_an_address_of_another_machine_names_the_bind_address() -> None:
    port = free_port()
    line = _listen_error("192.0.2.7", port)  # TEST-NET-1 (RFC 5737): never one of this machine's
    assert line == (
        f"--bind-address 192.0.2.7: cannot listen on 192.0.2.7:{port}: cannot assign requested address "
        "(the address is not one of this machine's; choose another --bind-address)"
    )
    assert "another process" not in line


def test_a_port_in_use_says_another_process_holds_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        line = _listen_error("127.0.0.1", port)
    assert line == (
        f"--secure-port {port}: cannot listen on 127.0.0.1:{port}: address already in use (another "
        "process holds the port; choose another --secure-port or --bind-address)"
    )


def test_other_listen_failures_give_the_os_message_without_a_guess() -> None:
    line = _listen_error("127.0.0.1", 8443, _RefusingReactor(errno.ENOBUFS))
    assert line == "--secure-port 8443: cannot listen on 127.0.0.1:8443: no buffer space available"


def test_completion_errors_exit_1_without_traceback(ca: Authority) -> None:
    one, other = ca.server(stem="one"), ca.server(stem="other")
    result = _serve(f"--tls-cert-file={one.cert_file}", f"--tls-private-key-file={other.key_file}")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"payloadtags: --tls-private-key-file {other.key_file} does not match the certificate in "
        f"--tls-cert-file {one.cert_file}",
        "payloadtags: no cluster API is configured (no --kubeconfig, not in a pod), so "
        "PayloadRepositoryAccess rules cannot be read: pass --authorization-mode=AlwaysAllow to run "
        "standalone, where every authenticated client may see and delete every tag",
    ]


# --- the kubeconfig's own consistency, found at start (review-operations F4, F5, F7, F8) ---------------


def _kubeconfig(
    tmp_path: Path, cluster: Mapping[str, object], user: Mapping[str, object], context: Mapping[str, object]
) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": context}],
                "current-context": "x",
            }
        )
    )
    return path


def test_a_cluster_without_server_is_one_line(tmp_path: Path) -> None:
    path = _kubeconfig(
        tmp_path, {"insecure-skip-tls-verify": True}, {"token": "t"}, {"cluster": "c", "user": "u"}
    )
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': cluster \"c\" has no server"
    ]


def test_a_cluster_without_server_exits_1_without_traceback(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, {}, {"token": "t"}, {"cluster": "c", "user": "u"})
    result = _serve(f"--kubeconfig={path}", "--bind-address=127.0.0.1", "--secure-port=0")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"payloadtags: --kubeconfig: kubeconfig '{path}': cluster \"c\" has no server"
    ]


@pytest.mark.parametrize(
    ("context", "problem"),
    [
        ({"cluster": "c", "user": "ghost"}, 'user "ghost" was not found for context "x"'),
        ({"cluster": "nowhere", "user": "u"}, 'cluster "nowhere" was not found for context "x"'),
        ({"user": "u"}, 'cluster was not specified for context "x"'),
    ],
)
def test_a_context_naming_what_is_not_there_is_refused_as_client_go_does(
    tmp_path: Path, context: dict[str, object], problem: str
) -> None:
    # Not started without credentials, every request then 401 and readiness never coming.
    path = _kubeconfig(tmp_path, {"server": "http://127.0.0.1:1"}, {"token": "t"}, context)
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': {problem}"
    ]


def test_credentials_written_where_a_context_names_its_user_are_refused_without_being_shown(
    tmp_path: Path,
) -> None:
    context = {"cluster": "c", "user": {"token": "SECRET"}}
    path = _kubeconfig(tmp_path, {"server": "http://127.0.0.1:1"}, {"token": "t"}, context)
    errors = errors_of(kubeconfig=str(path), authorization_mode=None)
    assert errors == [
        f"--kubeconfig: kubeconfig '{path}': context \"x\": "
        "user must be the name of a users entry, not a mapping"
    ]


@pytest.mark.parametrize(
    ("field", "value", "expected", "kind"),
    [
        ("insecure-skip-tls-verify", "false", "true or false", "a string"),
        ("tls-server-name", 5, "a string", "a number"),
        ("certificate-authority-data", ["x"], "a string", "a list"),
    ],
)
def test_a_cluster_field_of_the_wrong_type_is_refused_as_client_go_does(
    tmp_path: Path, field: str, value: object, expected: str, kind: str
) -> None:
    # The kubernetes library takes any non-empty string for true: "false" would turn verification off.
    cluster = {"server": "https://127.0.0.1:1", field: value}
    path = _kubeconfig(tmp_path, cluster, {"token": "t"}, {"cluster": "c", "user": "u"})
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': cluster \"c\": {field} must be {expected}, not {kind}"
    ]


OIDC = {
    "name": "oidc",
    "config": {
        "idp-issuer-url": "https://127.0.0.1:1",
        "client-id": "payloadtags",
        "client-secret": "CLIENT-SECRET",
        "refresh-token": "REFRESH-TOKEN",
        "id-token": "ID-TOKEN",
    },
}


@pytest.mark.parametrize(
    ("provider", "named"),
    [
        (OIDC, ' "oidc"'),
        ({"name": "gcp", "config": {"access-token": "ACCESS-TOKEN"}}, ' "gcp"'),
        ({"name": "azure", "config": {"access-token": "ACCESS-TOKEN"}}, ' "azure"'),
        ({"name": "mystery"}, ' "mystery"'),
        ({"name": ["SECRET"]}, ""),
        ({}, ""),
    ],
)
def test_an_auth_provider_is_refused_in_one_line(tmp_path: Path, provider: object, named: str) -> None:
    # The library's oidc refresh sent the refresh token and client secret to an IdP whose certificate it
    # did not verify, and nothing refreshed a token later; client-go removed gcp and azure, and refuses a
    # name it does not know (review-opscheck K1, K7, K9).
    path = _kubeconfig(
        tmp_path,
        {"server": "https://127.0.0.1:1"},
        {"auth-provider": provider},
        {"cluster": "c", "user": "u"},
    )
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': user \"u\": auth-provider{named} is not supported: use an exec "
        "credential plugin (such as kubelogin for oidc) or a token"
    ]


def test_a_null_auth_provider_is_absent_as_in_client_go(tmp_path: Path) -> None:
    path = _kubeconfig(
        tmp_path,
        {"server": "https://127.0.0.1:1"},
        {"token": "t", "auth-provider": None, "as": "", "as-groups": []},
        {"cluster": "c", "user": "u"},
    )
    assert complete(settings(kubeconfig=str(path)), environ=NO_POD).cluster == ClusterConfig(
        server="https://127.0.0.1:1", token="t"
    )


@pytest.mark.parametrize(
    ("impersonation", "named"),
    [
        ({"as": "system:serviceaccount:payloadtags:limited"}, "as"),
        ({"as": "limited", "as-groups": ["limited"]}, "as, as-groups"),
        ({"as-uid": "1234"}, "as-uid"),
        ({"as-user-extra": {"scopes": ["a"]}}, "as-user-extra"),
    ],
)
def test_impersonation_is_refused_not_dropped(
    tmp_path: Path, impersonation: dict[str, object], named: str
) -> None:
    # Dropped, payloadtags acted with the base credentials' full rights (review-opscheck K4).
    path = _kubeconfig(
        tmp_path,
        {"server": "https://127.0.0.1:1"},
        {"token": "t", **impersonation},
        {"cluster": "c", "user": "u"},
    )
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': user \"u\": impersonation ({named}) is not supported: "
        "payloadtags would act with the user's own credentials; "
        "give it the credentials of the identity to act as"
    ]


@pytest.mark.parametrize("ca", [{"certificate-authority": "ca.crt"}, {"certificate-authority-data": "Q0E="}])
def test_insecure_beside_a_ca_is_refused_as_client_go_does(tmp_path: Path, ca: dict[str, str]) -> None:
    # Verification was turned off silently, the CA ignored (review-opscheck K3).
    cluster = {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True, **ca}
    path = _kubeconfig(tmp_path, cluster, {"token": "t"}, {"cluster": "c", "user": "u"})
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': cluster \"c\": specifying a root certificates file with the "
        "insecure flag is not allowed (remove insecure-skip-tls-verify or the certificate-authority)"
    ]


@pytest.mark.parametrize(
    "server",
    [
        "http://admin:PASSWORD@127.0.0.1:8080",
        "https://admin:PASSWORD@kube.example:644312",
        "https://admin:PASSWORD@kube_example:6443",
        "https://admin:PASSWORD@[::1:6443",
        "admin:PASSWORD@kube.example:6443",
        # review r10cfg L3: an at sign typed full-width (U+FF20) or small (U+FE6B), which NFKC makes
        # '@': urlsplit's refusal quoted the netloc whole.
        "https://admin:PASSWORD\uff20kube.example:6443",
        "https://admin:PASSWORD\ufe6bkube.example:6443",
    ],
)
def test_a_server_with_credentials_is_refused_without_showing_them(tmp_path: Path, server: str) -> None:
    # It started, then every connection failed with a traceback; a typo in host or port printed the
    # password (review-opscheck K5).
    path = _kubeconfig(tmp_path, {"server": server}, {"token": "t"}, {"cluster": "c", "user": "u"})
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': cluster \"c\": server must not carry credentials "
        "(user:password@ before the host): give the user a token, a client certificate or an exec plugin"
    ]


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("token", ["SECRET"], "a list"),
        ("token", 12345, "a number"),
        ("tokenFile", 5, "a number"),
        ("client-certificate", 5, "a number"),
        ("client-key-data", {"SECRET": 1}, "a mapping"),
        ("password", True, "a boolean"),
    ],
)
def test_a_user_field_of_the_wrong_type_is_refused_as_client_go_does(
    tmp_path: Path, field: str, value: object, kind: str
) -> None:
    # A list under token was sent as its Python text; a number under a file key failed in Python's words
    # (review-opscheck K10).
    path = _kubeconfig(
        tmp_path, {"server": "https://127.0.0.1:1"}, {field: value}, {"cluster": "c", "user": "u"}
    )
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': user \"u\": {field} must be a string, not {kind}"
    ]


@pytest.mark.parametrize(
    ("cluster", "user", "refusal"),
    [
        (
            {"insecure-skip-tls-verify": True},
            {"auth-provider": OIDC},
            'user "u": auth-provider "oidc" is not supported',
        ),
        (
            {"insecure-skip-tls-verify": True, "certificate-authority-data": "Q0E="},
            {"token": "TOKEN"},
            "insecure flag",
        ),
        ({"insecure-skip-tls-verify": True}, {"token": "TOKEN", "as": "limited"}, "impersonation (as)"),
    ],
)
def test_refused_credentials_reach_nobody_through_the_real_start(
    tmp_path: Path, cluster: dict[str, object], user: dict[str, object], refusal: str
) -> None:
    # The review's reproductions sent the refresh token, or the token without the pinned CA or the
    # impersonation, to whatever listened; now the start stops before any connection.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    try:
        # The oidc IdP is the listener too.
        user = json.loads(json.dumps(user).replace('"https://127.0.0.1:1"', json.dumps(url)))
        path = _kubeconfig(tmp_path, {"server": url, **cluster}, user, {"cluster": "c", "user": "u"})
        result = _serve(f"--kubeconfig={path}", "--bind-address=127.0.0.1", "--secure-port=0")
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"payloadtags: --kubeconfig: kubeconfig '{path}': ") and refusal in line
        assert not any(secret in line for secret in ("TOKEN", "SECRET", "PASSWORD"))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize(
    "server",
    [
        "https://127.0.0.1:1/prefix@v1",
        "https://127.0.0.1:1/k8s/clusters/team@prod",
        "https://127.0.0.1:1/?tenant=a@b",
        "https://127.0.0.1:1#x@y",
        # A password holding '/', '#' or '?' unencoded (base64 ones hold '/'): the authority then seems
        # to end inside it, and the whole URL was printed (review-opscheck2 F1).
        "https://admin:PASS/WORD+x@kube.example:6443",
        "https://admin:PASS#WORD@kube.example:6443",
        "https://admin:PASS?WORD@kube.example:6443",
        "https://admin:PASS/WO@RD@kube.example:6443/",
    ],
)
def test_an_at_sign_after_the_host_is_refused_saying_so(tmp_path: Path, server: str) -> None:
    # kubectl takes an '@' in a path, query or fragment as such; it is refused because it may as well
    # end a password holding '/', '?' or '#'. It was refused as "user:password@ before the host", which
    # such a server does not hold (review-opscheck3, noted).
    path = _kubeconfig(tmp_path, {"server": server}, {"token": "t"}, {"cluster": "c", "user": "u"})
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': cluster \"c\": server has an '@' after its host (in its "
        "path, query or fragment), refused since it may end a password that holds '/', '?' or '#' "
        "(user:password@): write an '@' of the path or query as %40, and give the user a token, a client "
        "certificate or an exec plugin"
    ]


def test_a_server_with_credentials_stops_the_real_start_without_showing_them(tmp_path: Path) -> None:
    path = _kubeconfig(
        tmp_path, {"server": "https://admin:PASSWORD@kube.example:644312"}, {}, {"cluster": "c", "user": "u"}
    )
    result = _serve(f"--kubeconfig={path}", "--bind-address=127.0.0.1", "--secure-port=0")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"payloadtags: --kubeconfig: kubeconfig '{path}': cluster \"c\": server must not carry credentials "
        "(user:password@ before the host): give the user a token, a client certificate or an exec plugin"
    ]


def test_a_context_without_a_user_is_anonymous_as_in_client_go(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, {"server": "http://127.0.0.1:1"}, {"token": "t"}, {"cluster": "c"})
    completed = complete(settings(kubeconfig=str(path)), environ=NO_POD)
    assert completed.cluster == ClusterConfig(server="http://127.0.0.1:1")


def test_a_proxy_url_is_refused_not_ignored(tmp_path: Path) -> None:
    cluster = {
        "server": "https://kube.internal.invalid:6443",
        "insecure-skip-tls-verify": True,
        "proxy-url": "http://127.0.0.1:3128",
    }
    path = _kubeconfig(tmp_path, cluster, {"token": "t"}, {"cluster": "c", "user": "u"})
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': cluster \"c\" has a proxy-url, which payloadtags does not "
        "support: it connects to the cluster API directly (remove proxy-url and allow that connection)"
    ]


def test_proxy_environment_variables_are_named_as_unused_at_start() -> None:
    quiet = complete(settings(), environ=NO_POD)
    assert quiet.notices == ()
    told = complete(
        settings(), environ={"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "x", "http_proxy": "p"}
    )
    assert told.notices == (
        "HTTPS_PROXY, http_proxy set in the environment but not used: payloadtags connects to the cluster "
        "API and the registry directly (docs/configuration.md)",
    )


def test_a_password_without_a_user_name_is_named_at_start() -> None:
    # Token-only installs send Basic ":token"; the log says so, so that a refusal is not a mystery.
    quiet = complete(
        settings(registry=RegistrySettings(url="http://r", username="u", password="p")), environ=NO_POD
    )
    assert quiet.notices == ()
    told = complete(
        settings(registry=RegistrySettings(url="http://r", username="", password="t")), environ=NO_POD
    )
    assert told.notices == (
        "the registry password (or token) is sent with an empty user name: no --registry-username-file or "
        "$PAYLOADTAGS_REGISTRY_USERNAME gives one",
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tls_kubeconfig(
    tmp_path: Path, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *, inline: bool = True
) -> Path:
    """A kubeconfig with the CA, certificate and key as ``*-data`` fields, or as files beside it."""
    pems = {"certificate-authority": ca_pem, "client-certificate": cert_pem, "client-key": key_pem}
    fields: dict[str, str] = {}
    for field, pem in pems.items():
        if inline:
            fields[f"{field}-data"] = _b64(pem)
        else:
            (tmp_path / field).write_bytes(pem)
            fields[field] = str(tmp_path / field)
    cluster = {"server": "https://127.0.0.1:1", **{k: v for k, v in fields.items() if "authority" in k}}
    user = {k: v for k, v in fields.items() if k.startswith("client-")}
    return _kubeconfig(tmp_path, cluster, user, {"cluster": "c", "user": "u"})


GARBAGE_PEM = b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("inline", [True, False], ids=["data", "files"])
def test_bad_tls_data_in_the_kubeconfig_is_one_line_per_problem(
    ca: Authority, tmp_path: Path, inline: bool
) -> None:
    # Each names the field the user wrote: `client-certificate-data` was named `client-certificate`,
    # the file the kubernetes library wrote it to (review r2e N1).
    data = "-data" if inline else ""
    ca_field, cert_field, key_field = (
        f"certificate-authority{data}",
        f"client-certificate{data}",
        f"client-key{data}",
    )
    one, other = ca.client("one"), ca.client("other")
    ca_pem, cert, key = ca.cert_file.read_bytes(), one.cert_file.read_bytes(), one.key_file.read_bytes()
    where = f"--kubeconfig: kubeconfig '{tmp_path / 'kubeconfig'}'"
    cases = [
        (
            (ca_pem, cert, other.key_file.read_bytes()),
            [f"the client key ({key_field}) does not match the client certificate ({cert_field})"],
        ),
        (
            (ca_pem, GARBAGE_PEM, key),
            [f"the client certificate ({cert_field}) holds no valid PEM certificate"],
        ),
        ((GARBAGE_PEM, cert, key), [f"the cluster CA ({ca_field}) holds no valid PEM certificate"]),
        ((ca_pem, cert, b"not a key"), [f"the client key ({key_field}) is not a PEM private key"]),
        (
            (GARBAGE_PEM, GARBAGE_PEM, key),
            [
                f"the cluster CA ({ca_field}) holds no valid PEM certificate",
                f"the client certificate ({cert_field}) holds no valid PEM certificate",
            ],
        ),
    ]
    for pems, problems in cases:
        path = _tls_kubeconfig(tmp_path, *pems, inline=inline)
        assert errors_of(kubeconfig=str(path), authorization_mode=None) == [f"{where}: {p}" for p in problems]
    # The good pair passes, as the client will build it.
    path = _tls_kubeconfig(tmp_path, ca_pem, cert, key, inline=inline)
    assert complete(settings(kubeconfig=str(path)), environ=NO_POD).cluster is not None


def test_bad_tls_data_an_exec_plugin_prints_names_the_plugins_fields(ca: Authority, tmp_path: Path) -> None:
    # Named `client-certificate` before, a field the kubeconfig does not hold (review r2e N1).
    one = ca.client("one")
    status = {"clientCertificateData": GARBAGE_PEM.decode(), "clientKeyData": one.key_file.read_text()}
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "status": status}
    script = tmp_path / "get-cert"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n")
    script.chmod(0o755)
    exec_section = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(script),
        "interactiveMode": "Never",
    }
    cluster = {"server": "https://127.0.0.1:1", "certificate-authority-data": _b64(ca.cert_file.read_bytes())}
    path = _kubeconfig(tmp_path, cluster, {"exec": exec_section}, {"cluster": "c", "user": "u"})
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': the client certificate (the exec plugin's "
        "status.clientCertificateData) holds no valid PEM certificate"
    ]


def test_bad_tls_data_in_the_kubeconfig_exits_1_before_serving(ca: Authority, tmp_path: Path) -> None:
    one, other = ca.client("one"), ca.client("other")
    path = _tls_kubeconfig(
        tmp_path, ca.cert_file.read_bytes(), one.cert_file.read_bytes(), other.key_file.read_bytes()
    )
    result = _serve(f"--kubeconfig={path}", "--bind-address=127.0.0.1", "--secure-port=0")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"payloadtags: --kubeconfig: kubeconfig '{path}': the client key (client-key-data) does not match "
        "the client certificate (client-certificate-data)"
    ]


# --- the pair's files, and a pod without its token (review-operations F10, F11) -----------------------


def test_a_missing_key_is_named_beside_a_missing_certificate(tmp_path: Path, ca: Authority) -> None:
    good = ca.server()
    assert errors_of(
        tls_cert_file=str(tmp_path / "nope.crt"), tls_private_key_file=str(tmp_path / "nope.key")
    ) == [
        f"--tls-cert-file {tmp_path / 'nope.crt'}: cannot read: No such file or directory",
        f"--tls-private-key-file {tmp_path / 'nope.key'}: cannot read: No such file or directory",
    ]
    assert errors_of(tls_cert_file=str(tmp_path / "nope.crt"), tls_private_key_file=str(good.key_file)) == [
        f"--tls-cert-file {tmp_path / 'nope.crt'}: cannot read: No such file or directory",
    ]


# A certificate whose key is on SM2's curve: it parses, but cryptography cannot load its public key.
SM2_CERTIFICATE = b"""-----BEGIN CERTIFICATE-----
MIIBcTCCARegAwIBAgIUb3tptZeYn25AsmQqr9fOAyyDmOUwCgYIKoEcz1UBg3Uw
DjEMMAoGA1UEAwwDc20yMB4XDTI2MTIwNjA4MjY1MloXDTI3MDEwNTA4MjY1Mlow
DjEMMAoGA1UEAwwDc20yMFkwEwYHKoZIzj0CAQYIKoEcz1UBgi0DQgAEGK9Sv7Ux
GjQCXjqldOZvYSJ2IP2fdkzEgQICg0u8TvhkRMalCcrXJmWBMsMqJz4YGhgJN9NQ
OxRVRrkdl5KVAKNTMFEwHQYDVR0OBBYEFJBEEPLM7dkPJVUFdXUJMNdoTT0VMB8G
A1UdIwQYMBaAFJBEEPLM7dkPJVUFdXUJMNdoTT0VMA8GA1UdEwEB/wQFMAMBAf8w
CgYIKoEcz1UBg3UDSAAwRQIhAIOrHTagj+0zxM8t49pSepOAtfFTn5mIJcOPYX+k
L5OjAiAoHKdWQDsNioRmjsA9B53uNkTgfvSojIsizKQF4KeWaA==
-----END CERTIFICATE-----
"""


def test_a_certificate_key_type_that_cannot_be_loaded_is_one_line(ca: Authority, tmp_path: Path) -> None:
    # UnsupportedAlgorithm ended the start in a traceback (review-startup2 F3b), in both places.
    one = ca.client("one")
    path = _tls_kubeconfig(tmp_path, ca.cert_file.read_bytes(), SM2_CERTIFICATE, one.key_file.read_bytes())
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': the client certificate (client-certificate-data) has a key type "
        "that cannot be used (Curve 1.2.156.10197.1.301 is not supported)"
    ]
    cert = tmp_path / "sm2.crt"
    cert.write_bytes(SM2_CERTIFICATE)
    assert errors_of(tls_cert_file=str(cert), tls_private_key_file=str(one.key_file)) == [
        f"--tls-cert-file {cert}: the certificate has a key type that cannot be used "
        "(Curve 1.2.156.10197.1.301 is not supported)"
    ]


# A 512-bit RSA pair: it parses and matches, and OpenSSL refuses it ("ee key too small").
WEAK_CERTIFICATE = b"""-----BEGIN CERTIFICATE-----
MIIBdTCCAR+gAwIBAgIUMO8KIteG8LvxlBLq/DpyqcM6TZkwDQYJKoZIhvcNAQEL
BQAwDzENMAsGA1UEAwwEd2VhazAeFw0yNjEyMDYwODI2MjdaFw0yNzAxMDUwODI2
MjdaMA8xDTALBgNVBAMMBHdlYWswXDANBgkqhkiG9w0BAQEFAANLADBIAkEAyV0C
dSizTtgXaigggdWNkFVyWay0wynBWj6qnswzPXpweZb0yLutTv/tHvhnlNmIVJaE
3kEO1OFBPvRvsWKBxQIDAQABo1MwUTAdBgNVHQ4EFgQUVgPLUYKtYIxKMETQ9pPy
U0Q0/y4wHwYDVR0jBBgwFoAUVgPLUYKtYIxKMETQ9pPyU0Q0/y4wDwYDVR0TAQH/
BAUwAwEB/zANBgkqhkiG9w0BAQsFAANBALfBvaL/+PHj5pid55tUovO88S6mP4EB
Vt0PBvjYHCT+2HJqrvHH+Tqz/3ThE4ShNaZtNlPbsPak+DsFbpdi75s=
-----END CERTIFICATE-----
"""
WEAK_KEY = b"""-----BEGIN PRIVATE KEY-----
MIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEAyV0CdSizTtgXaigg
gdWNkFVyWay0wynBWj6qnswzPXpweZb0yLutTv/tHvhnlNmIVJaE3kEO1OFBPvRv
sWKBxQIDAQABAkANbH7qcpEpk2xULmKkZSkv0xJxefr++7yhGIZlWbWcxnuAAA/m
MnV7uQHTKdNf3KO/d9bAKNPANO/cbqCfnjhhAiEA8MxhUwFpoviN61rFZ+MpK9Xq
A/9U4Y1IiAjxjClK22kCIQDWE06ZYmZGNfSGECiJleoKkrzHpzlK7TQNzM4mfavz
/QIgEREbUMvH1fIx9N1xImTaVS4LMQ9Wz8m4u1OO8zU2BgkCIQDSP0IJmL+TozgV
VtdJUUf7vGPVviGhuddO2l95JCH2TQIgM8QS/7y6LBlbB7gqQBR356aDStaRXP0Y
YG2skYdSKmY=
-----END PRIVATE KEY-----
"""


def test_an_openssl_refusal_is_worded_as_its_reason(ca: Authority, tmp_path: Path) -> None:
    # It was printed as the error's list repr, [('SSL routines', '', 'ee key too small')].
    path = _tls_kubeconfig(tmp_path, ca.cert_file.read_bytes(), WEAK_CERTIFICATE, WEAK_KEY)
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: kubeconfig '{path}': the TLS client settings are refused by OpenSSL: ee key too small"
    ]


@pytest.mark.parametrize("kind", ["clusters", "users", "contexts"])
@pytest.mark.parametrize("value", [5, {"name": "c"}, "c"])
def test_a_kubeconfig_section_that_is_not_a_list_is_one_line(
    tmp_path: Path, kind: str, value: object
) -> None:
    # A number ended the start in a TypeError traceback (review-startup2 F3a).
    path = _kubeconfig(
        tmp_path, {"server": "http://127.0.0.1:1"}, {"token": "t"}, {"cluster": "c", "user": "u"}
    )
    document = json.loads(path.read_text())
    document[kind] = value
    path.write_text(json.dumps(document))
    assert errors_of(kubeconfig=str(path), authorization_mode=None) == [
        f"--kubeconfig: '{path}' is not a kubeconfig (a YAML document with clusters, users and contexts): "
        f"{kind} is not a list"
    ]


@pytest.mark.parametrize("mode", ["RBAC", None])
def test_a_pod_whose_in_cluster_configuration_fails_is_told_that_alone(
    tmp_path: Path, mode: str | None
) -> None:
    # The token is there, the CA is not: the cause is the one line; never "run in a pod" or AlwaysAllow
    # (review-startup2 F4).
    (tmp_path / "token").write_text("t")
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigurationError) as raised:
        complete(settings(authorization_mode=mode), environ=environ, service_account_dir=str(tmp_path))
    assert raised.value.errors == [
        "cannot load the in-cluster configuration: Service certification file does not exist."
    ]


def test_a_bad_in_cluster_ca_names_its_file(tmp_path: Path, ca: Authority) -> None:
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_bytes(GARBAGE_PEM)
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigurationError) as raised:
        complete(settings(authorization_mode=None), environ=environ, service_account_dir=str(tmp_path))
    assert raised.value.errors == [
        f"in-cluster configuration: the ServiceAccount CA {tmp_path / 'ca.crt'} "
        "holds no valid PEM certificate"
    ]


@pytest.mark.parametrize("mode", ["RBAC", None])
def test_a_pod_without_its_token_is_told_to_mount_it(tmp_path: Path, mode: str | None) -> None:
    # As with automountServiceAccountToken: false: the service variables are there, the token is not.
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigurationError) as raised:
        complete(settings(authorization_mode=mode), environ=environ, service_account_dir=str(tmp_path))
    assert raised.value.errors == [
        "running in a pod (KUBERNETES_SERVICE_HOST is set) but no ServiceAccount token is mounted at "
        f"{tmp_path / 'token'}, so the cluster API cannot be used (PayloadRepositoryAccess rules, Roles and "
        "RoleBindings): set automountServiceAccountToken: true on the pod or its ServiceAccount"
    ]
    # Standalone on purpose stays possible.
    assert complete(settings(), environ=environ, service_account_dir=str(tmp_path)).cluster is None


@pytest.mark.parametrize(
    ("values", "environ", "source"),
    [
        ({"leader_elect_resource_namespace": "ops\udcff"}, {}, "--leader-elect-resource-namespace"),
        ({}, {"POD_NAMESPACE": "ops\udcff"}, "$POD_NAMESPACE"),
        ({"leader_elect_resource_name": "lease\udcff"}, {}, "--leader-elect-resource-name"),
    ],
)
def test_a_lease_name_or_namespace_that_is_not_utf8_is_refused_in_one_line(
    tmp_path: Path, ca: Authority, values: dict[str, object], environ: dict[str, str], source: str
) -> None:
    # kcfg3: bytes that are not UTF-8 in an argument or the environment come out as surrogate escapes,
    # which no request path can carry: every Lease request of the leader election raised
    # UnicodeEncodeError instead of start-up saying so.
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_file.read_bytes(), token="t")
    with pytest.raises(ConfigurationError) as raised:
        complete(settings(kubeconfig=str(path), **values), environ=environ)
    value = next(v for v in [*values.values(), *environ.values()] if isinstance(v, str))
    assert raised.value.errors == [f"{source}: {value!r} holds bytes that are not UTF-8"]


@pytest.mark.parametrize(
    "off", [{"leader_elect": False}, {"namespace_cleanup": False}], ids=["no-leader-elect", "no-cleanup"]
)
@pytest.mark.parametrize(
    ("values", "environ"),
    [
        ({}, {"POD_NAMESPACE": "ops\udcff"}),
        ({"leader_elect_resource_namespace": "ops\udcff"}, {}),
        ({"leader_elect_resource_name": "lease\udcff"}, {}),
    ],
    ids=["pod-namespace", "namespace-flag", "lease-name"],
)
def test_a_lease_name_or_namespace_that_is_not_utf8_does_not_stop_start_when_no_lease_is_requested(
    tmp_path: Path, ca: Authority, off: dict[str, bool], values: dict[str, str], environ: dict[str, str]
) -> None:
    # review-misc F2: they were refused whenever a cluster was configured, though the Lease is requested
    # only with namespace cleanup and leader election both on ($POD_NAMESPACE can be set for other
    # reasons; kube-controller-manager ignores its resource settings under --leader-elect=false).
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_file.read_bytes(), token="t")
    completed = complete(settings(kubeconfig=str(path), **off, **values), environ=environ)
    assert completed.cluster is not None


def test_an_events_token_file_that_is_not_utf8_is_refused_naming_the_file_never_a_byte(
    tmp_path: Path,
) -> None:
    # kcfg3: start-up ended in a UnicodeDecodeError traceback, whose words name a byte of the token.
    token = tmp_path / "events-token"
    token.write_bytes(b"s3cr3t\xf3-tok\n")
    (error,) = errors_of(registry_events_token_file=str(token))
    assert error == f"--registry-events-token-file {token}: cannot read: it is not UTF-8 text"
    assert "xf3" not in error and "s3cr3t" not in error and "position" not in error


LEASE_TIMING = [
    (
        {"leader_elect_lease_duration": 5.0},
        "--leader-elect-lease-duration (5s) must be greater than --leader-elect-renew-deadline (10s)",
    ),
    (
        {"leader_elect_retry_period": 9.0},
        "--leader-elect-renew-deadline (10s) must be greater than 1.2 x --leader-elect-retry-period (9s)",
    ),
]


@pytest.mark.parametrize(("values", "error"), LEASE_TIMING, ids=["lease-duration", "retry-period"])
def test_lease_durations_client_go_refuses_are_refused_at_start_when_a_lease_is_requested(
    tmp_path: Path, ca: Authority, values: dict[str, object], error: str
) -> None:
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_file.read_bytes(), token="t")
    with pytest.raises(ConfigurationError) as raised:
        complete(settings(kubeconfig=str(path), **values), environ=NO_POD)
    assert raised.value.errors == [error]


@pytest.mark.parametrize(
    "off",
    [{"leader_elect": False}, {"namespace_cleanup": False}, {"kubeconfig": None}],
    ids=["no-leader-elect", "no-cleanup", "standalone"],
)
@pytest.mark.parametrize(("values", "error"), LEASE_TIMING, ids=["lease-duration", "retry-period"])
def test_lease_durations_are_not_checked_when_no_lease_is_requested(
    tmp_path: Path, ca: Authority, off: dict[str, object], values: dict[str, object], error: str
) -> None:
    # review-misc3 F3: they were refused whatever the other flags, though the Lease is requested only
    # with a cluster, namespace cleanup and leader election (the condition of the Lease name's check,
    # c647534); kube-controller-manager's ValidateLeaderElectionConfiguration checks nothing when
    # LeaderElect is false.
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", ca.cert_file.read_bytes(), token="t")
    given = {"kubeconfig": str(path), **off, **values}
    completed = complete(settings(**given), environ=NO_POD)
    assert (completed.cluster is not None) == (given["kubeconfig"] is not None)


@pytest.mark.parametrize(("values", "error"), LEASE_TIMING, ids=["lease-duration", "retry-period"])
def test_the_cleanup_is_built_without_leader_election_whatever_its_durations(
    values: dict[str, object], error: str
) -> None:
    # review-misc3 F3: with namespace cleanup on and --leader-elect=false, the server still built the
    # election's options from the durations, and refused them ("namespace cleanup: the lease duration
    # must be greater than the renew deadline") where start-up now lets them pass.
    from twisted.internet.task import Clock

    from payloadtags.cleanup import CleanupMetrics
    from payloadtags.registry import LateWrites
    from payloadtags.server import _cleanup

    clock = Clock()
    built = _cleanup(
        clock,
        settings(leader_elect=False, **values),
        object(),  # type: ignore[arg-type]
        object(),  # type: ignore[arg-type]
        {},
        "default",
        CleanupMetrics(),
        LateWrites(clock),
        object(),  # type: ignore[arg-type]
    )
    assert built is not None and not built.options.leader_elect


def test_an_unreadable_credential_file_is_reported_with_the_other_file_problems(tmp_path: Path) -> None:
    # review-newcomer L1: the credential files were read with the flags, and a missing one stopped the
    # start before the file round, hiding the certificate, key and CA problems of the same start.
    missing = {name: tmp_path / name for name in ("password", "username", "serving.crt", "serving.key", "ca")}
    result = _serve(
        "--authorization-mode=AlwaysAllow",
        f"--registry-password-file={missing['password']}",
        f"--registry-username-file={missing['username']}",
        f"--tls-cert-file={missing['serving.crt']}",
        f"--tls-private-key-file={missing['serving.key']}",
        f"--client-ca-file={missing['ca']}",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"payloadtags: {flag} {missing[name]}: cannot read: No such file or directory"
        for flag, name in (
            ("--registry-username-file", "username"),
            ("--registry-password-file", "password"),
            ("--tls-cert-file", "serving.crt"),
            ("--tls-private-key-file", "serving.key"),
            ("--client-ca-file", "ca"),
        )
    ]


def test_an_unreadable_credential_file_alone_stops_the_start(tmp_path: Path) -> None:
    password = tmp_path / "password"
    result = _serve("--authorization-mode=AlwaysAllow", f"--registry-password-file={password}")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"payloadtags: --registry-password-file {password}: cannot read: No such file or directory"
    ]


def test_a_flag_mistake_still_reports_the_credential_file_with_it(tmp_path: Path) -> None:
    # Flag mistakes stop the start before the file round, as before; the credential line stays with them.
    password = tmp_path / "password"
    result = _serve("--tls-min-version=VersionTLS11", f"--registry-password-file={password}")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("payloadtags: --tls-min-version=VersionTLS11"), lines
    assert lines[1] == (
        f"payloadtags: --registry-password-file {password}: cannot read: No such file or directory"
    )
