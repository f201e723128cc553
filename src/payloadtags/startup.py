"""Completing validated settings: every file read and checked, the kubeconfig loaded, before anything runs.

Blocking (file reads, a kubeconfig may run a credential plugin): call it before the reactor runs, or
from a thread. Every problem found is collected, so one start reports all of them, each in one line
naming the flag or the file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import attrs

from payloadtags.api.app import HEALTH_ENDPOINTS
from payloadtags.cleanup.leader import JITTER_FACTOR
from payloadtags.kube import ClusterConfig, load_cluster_config
from payloadtags.kube import ConfigError as KubeConfigError
from payloadtags.kube.config import SERVICE_ACCOUNT_DIR, SERVICE_HOST_ENV, pod_without_token
from payloadtags.kube.tls import client_tls_problems
from payloadtags.settings import Settings
from payloadtags.tls import CertificateError, ServingCertificate, load_certificates, load_private_key
from payloadtags.validators import (
    file_flag_forms,
    paths_redacted,
    read_file,
    utf8_encodable,
    without_userinfo,
)

# Names Kubernetes components use for the pair they generate into --cert-dir.
CERT_DIR_CERT = "apiserver.crt"
CERT_DIR_KEY = "apiserver.key"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
# What Go's default transport (and so client-go) would read; payloadtags' clients do not.
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


class ConfigurationError(Exception):
    """The settings cannot make a working server; each line says what to change."""

    def __init__(self, *errors: str) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@attrs.frozen
class Completed:
    """What the settings point at, loaded and checked."""

    serving: ServingCertificate = attrs.field(repr=False)
    serving_origin: str  # for the start-up log: which files, or self-signed
    cluster: ClusterConfig | None
    authorization_mode: str
    lease_namespace: str
    events_token: str | None = attrs.field(default=None, repr=False)
    # Lines for the start-up log (info): settings that are there but have no effect.
    notices: tuple[str, ...] = ()
    # Lines said at start as warnings: something taken otherwise than it is written, but as kubectl (or
    # kube-apiserver) takes it.
    warnings: tuple[str, ...] = ()


def complete(
    settings: Settings,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
    now: datetime.datetime | None = None,
) -> Completed:
    errors: list[str] = []
    at = now or datetime.datetime.now(datetime.UTC)
    found = _serving(settings, errors, at)
    for flag, path in (
        ("--client-ca-file", settings.client_ca_file),
        ("--requestheader-client-ca-file", settings.requestheader_client_ca_file),
        ("--registry-ca-file", settings.registry.ca_file),
    ):
        if path:
            try:
                load_certificates(path, flag)
            except CertificateError as error:
                errors.append(str(error))
    events_token = _events_token(settings, errors)
    cluster = None
    cluster_failed = False
    try:
        cluster = load_cluster_config(
            settings.kubeconfig, environ=environ, service_account_dir=service_account_dir
        )
    except KubeConfigError as error:
        # A kubeconfig or an in-cluster configuration that failed to load: its line is the cause, so no
        # standalone advice follows (in a pod, AlwaysAllow is never the remedy).
        cluster_failed = True
        errors.append(f"--kubeconfig: {error}" if settings.kubeconfig else str(error))
    if cluster is not None:
        # Built here, not first when the client is made: a bad CA or key is then one line, before serving.
        where = (
            f"--kubeconfig: kubeconfig {settings.kubeconfig!r}"
            if settings.kubeconfig
            else "in-cluster configuration"
        )
        errors.extend(f"{where}: {problem}" for problem in client_tls_problems(cluster))
    mode = _authorization_mode(
        settings,
        cluster,
        errors,
        kubeconfig_failed=cluster_failed or settings.kubeconfig is not None,
        missing_token=pod_without_token(environ, service_account_dir),
    )
    namespace = lease_namespace(settings, cluster, environ)
    # The Lease is requested only by the cleanup's leader election: a value no request uses stops nothing
    # (as kube-controller-manager ignores its resource settings, and validates none of its durations,
    # under --leader-elect=false).
    if cluster is not None and settings.namespace_cleanup and settings.leader_elect:
        _check_lease(settings, namespace, errors)
        _check_lease_timing(settings, errors)
    if not errors and found.serving is not None and found.unwritten is not None:
        failure = _write_pair(found.unwritten, found.serving)
        if failure is not None and found.expired is not None:
            # Replacing an expired pair is best effort, as the expiry's warning is no refusal: a
            # read-only --cert-dir (or a clock far ahead) must not stop a start that main served
            # with the same pair (r2cli L2).
            expired = found.expired
            found = _ServingPair(
                expired.serving,
                expired.origin,
                warnings=(f"{expired.warning}; cannot write a new pair: {failure}",),
            )
        elif failure is not None:
            errors.append(f"--cert-dir {found.unwritten}: cannot write the self-signed pair: {failure}")
    if errors or found.serving is None:
        raise ConfigurationError(*errors)
    return Completed(
        serving=found.serving,
        serving_origin=found.origin,
        cluster=cluster,
        authorization_mode=mode,
        lease_namespace=namespace,
        events_token=events_token,
        notices=_proxy_notice(environ) + _credential_notice(settings),
        warnings=found.warnings + _cluster_warnings(settings, cluster),
    )


def _cluster_warnings(settings: Settings, cluster: ClusterConfig | None) -> tuple[str, ...]:
    """The cluster configuration's warnings, which name a --kubeconfig value as typed (and a file
    beside it joined to its folder): redacted as the refusals redact it (cli's `_report`), since a URL
    that took the flag's place may name a file under the working directory, and the start then
    succeeds and logs them."""
    if cluster is None:
        return ()
    warnings = cluster.warnings + _unverified_cluster_warning(settings, cluster)
    paths = file_flag_forms(settings.kubeconfig) if settings.kubeconfig else ()
    return tuple(paths_redacted(warning, paths) for warning in warnings)


def always_allow_warnings(entries: Sequence[str], checks: Mapping[str, Collection[str]]) -> tuple[str, ...]:
    """A line for each --authorization-always-allow-paths entry ending in '/' (`/readyz/`), said at
    start. ``checks``: the names of each health endpoint's checks, as the server has registered them
    (so said once it has: the advice names only a check that exists, review r13cfg L2).

    k8s.io/apiserver's path authorizer takes such an entry and matches it exactly: it opens the path
    `/readyz/` alone, which kube-apiserver's health handlers (at `/readyz` and `/readyz/<check>`) do
    not serve. Here a request's trailing '/' is dropped before the match (`/readyz/` is served as
    `/readyz`), so no request equals it. Either way it opens nothing that answers, which the start
    says rather than leave a probe meeting 401s (review r7misc N4). (Matching it as written would
    serve `/readyz` to anyone as `/readyz/` only, an opening kube-apiserver does not have.)"""
    slashed = dict.fromkeys(p for p in entries if len(p) > 1 and p.endswith("/"))
    return tuple(
        f"--authorization-always-allow-paths: the entry {without_userinfo(entry)!r} ends in '/' and opens "
        "nothing: a request's path is matched with its trailing '/' dropped, so none equals it; "
        + _instead(entry.rstrip("/") or "/", checks)
        for entry in slashed
    )


def _instead(path: str, checks: Mapping[str, Collection[str]]) -> str:
    """What the warning of an entry ending in '/' offers in its place, ``path`` being the entry without
    it: only what opens something (review r11misc L1). Nothing is served under a check or /metrics,
    a check the endpoint does not have is not found (`/readyz/etcd`, from a kube-apiserver probe list,
    review r13cfg L2), and any other path needs a credential whatever the list says. (No such entry
    holds a '*': the flag refuses one before an entry's end.)"""
    shown = without_userinfo(path)
    if path in [f"/{endpoint}" for endpoint in HEALTH_ENDPOINTS]:
        return f"write {shown!r} instead, or {shown + '/*'!r} for the checks under it"
    endpoint, _, name = path[1:].partition("/")
    if endpoint in HEALTH_ENDPOINTS and name and "/" not in name:
        names = checks.get(endpoint, ())
        if name in names:
            return f"write {shown!r} instead"
        # The name is not said apart from the path: a URL that took the flag's place may end in it.
        return (
            f"{shown!r} would open nothing either: it is no check of /{endpoint}, whose checks are "
            + ", ".join(names)
        )
    if path == "/metrics":
        return f"write {shown!r} instead"
    return (
        f"{shown!r} would open nothing either: only the health endpoints, their checks and /metrics "
        "are served without a credential"
    )


def _unverified_cluster_warning(settings: Settings, cluster: ClusterConfig) -> tuple[str, ...]:
    # kubectl says nothing of it, but a server is not a CLI: every identity (TokenReview) and access rule
    # (the RBAC objects) it acts on comes over this connection, and its callers' tokens go there to be
    # reviewed. (Its own credential goes there only over TLS: on http:// the loader drops the user's, as
    # client-go does, with a warning of its own.)
    where = f"--kubeconfig {settings.kubeconfig}" if settings.kubeconfig else "in-cluster configuration"
    if not cluster.uses_tls and _is_loopback(cluster.server):
        # `kubectl proxy` (or a sidecar like it) holds the credential itself and serves plain HTTP on
        # loopback: there is no network path to read, so the warning below would send the operator after
        # an https:// URL that does not exist. What still holds is said instead.
        return (
            f"{where}: the cluster API's server is plain http:// on loopback (as `kubectl proxy` serves): "
            "nothing on that connection crosses a network, and only processes on this host (in a pod, its "
            "containers) can read or answer it; if what listens there passes requests on to another machine "
            "in plain text, that leg is as open as an http:// server elsewhere",
        )
    if not cluster.uses_tls:
        # Worse than an unverified certificate (and insecure-skip-tls-verify means nothing here): the
        # callers' tokens under review can be read off the wire by anyone who sees the traffic, not only
        # by a machine in the middle.
        return (
            f"{where}: the cluster API's server is plain http://, so nothing sent to it or received from it "
            "is encrypted or verified: whoever is on the network path to it can read the callers' bearer "
            "tokens payloadtags sends it to review, and can answer as the cluster API, deciding who callers "
            "are (TokenReview) and what they may read and delete (the RBAC objects); use its https:// URL in "
            "server and give the cluster's CA (certificate-authority)",
        )
    if not cluster.insecure_skip_tls_verify:
        return ()
    return (
        f"{where}: insecure-skip-tls-verify is true, so the cluster API's "
        "certificate is not verified: whoever is on the network path to it can answer as the cluster API, "
        "deciding who callers are (TokenReview) and what they may read and delete (the RBAC objects), and "
        "can take the credential payloadtags sends; give the cluster's CA (certificate-authority) instead",
    )


def _is_loopback(server: str) -> bool:
    host = urllib.parse.urlsplit(server).hostname or ""
    # "localhost" only: a pod's /etc/hosts maps it to 127.0.0.1 first, while a "*.localhost" name goes
    # through hosts and DNS like any other (glibc does not apply RFC 6761) and may lead elsewhere.
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy_notice(environ: Mapping[str, str]) -> tuple[str, ...]:
    names = [name for name in PROXY_ENV if environ.get(name)]
    if not names:
        return ()
    return (
        f"{', '.join(names)} set in the environment but not used: payloadtags connects to the cluster API "
        "and the registry directly (docs/configuration.md)",
    )


def _credential_notice(settings: Settings) -> tuple[str, ...]:
    # cli gives a password without a user name the empty one (Basic ":token"); said once, so that a
    # registry that wants a user name is not left to guess why it refuses.
    if settings.registry.password and settings.registry.username == "":
        return (
            "the registry password (or token) is sent with an empty user name: no --registry-username-file "
            "or $PAYLOADTAGS_REGISTRY_USERNAME gives one",
        )
    return ()


def lease_namespace(settings: Settings, cluster: ClusterConfig | None, environ: Mapping[str, str]) -> str:
    """The flag; in a pod, the pod's namespace; out of one, $POD_NAMESPACE, then the kubeconfig context's."""
    if settings.leader_elect_resource_namespace:
        return settings.leader_elect_resource_namespace
    if cluster is not None and cluster.in_cluster and cluster.namespace:
        return cluster.namespace
    if environ.get(POD_NAMESPACE_ENV):
        return environ[POD_NAMESPACE_ENV]
    if cluster is not None and cluster.namespace:
        return cluster.namespace
    return "default"


def _check_lease(settings: Settings, namespace: str, errors: list[str]) -> None:
    """Refuse a Lease name or namespace without a UTF-8 form: bytes that are not UTF-8 in an argument or
    the environment come out as surrogate escapes, which no request path can carry (every request of the
    leader election would fail inside the client). The namespace file and a kubeconfig's are checked
    where they are read."""
    namespace_source = (
        "--leader-elect-resource-namespace"
        if settings.leader_elect_resource_namespace
        else f"${POD_NAMESPACE_ENV}"
    )
    for source, value in (
        ("--leader-elect-resource-name", settings.leader_elect_resource_name),
        (namespace_source, namespace),
    ):
        if not utf8_encodable(value):
            errors.append(f"{source}: {value!r} holds bytes that are not UTF-8")


def _check_lease_timing(settings: Settings, errors: list[str]) -> None:
    """client-go's rules for the durations (those of `LeaderElectionOptions`), said with the flags."""
    lease, renew, retry = (
        settings.leader_elect_lease_duration,
        settings.leader_elect_renew_deadline,
        settings.leader_elect_retry_period,
    )
    if lease <= renew:
        errors.append(
            f"--leader-elect-lease-duration ({lease:g}s) must be greater than "
            f"--leader-elect-renew-deadline ({renew:g}s)"
        )
    if renew <= JITTER_FACTOR * retry:
        errors.append(
            f"--leader-elect-renew-deadline ({renew:g}s) must be greater than "
            f"{JITTER_FACTOR} x --leader-elect-retry-period ({retry:g}s)"
        )


@attrs.frozen
class _ExpiredPair:
    """A whole --cert-dir pair found expired: served as it is if the new one cannot be written."""

    serving: ServingCertificate = attrs.field(repr=False)
    origin: str
    warning: str


@attrs.frozen
class _ServingPair:
    """The serving pair the settings give (`_serving`) and what comes with it."""

    serving: ServingCertificate | None = attrs.field(repr=False)  # None: refused, the errors say why
    origin: str  # where it comes from (`Completed.serving_origin`)
    # The --cert-dir it is to be written to, once every other check passed: a new pair.
    unwritten: Path | None = None
    warnings: tuple[str, ...] = ()  # what to warn of it
    expired: _ExpiredPair | None = None  # the expired --cert-dir pair it replaces


def _serving(settings: Settings, errors: list[str], now: datetime.datetime) -> _ServingPair:
    """The serving pair: the files given, or --cert-dir's, or a new self-signed one."""
    if settings.tls_cert_file and settings.tls_private_key_file:
        serving = _pair(settings.tls_cert_file, settings.tls_private_key_file, errors)
        where = f"--tls-cert-file {_logged(settings.tls_cert_file)}"
        return _ServingPair(serving, where, warnings=_validity(serving, where, now, "renew it"))
    if not settings.cert_dir:
        return _ServingPair(
            ServingCertificate.self_signed(now=now), "a self-signed certificate for localhost, in memory"
        )
    directory = Path(settings.cert_dir)
    cert_file, key_file = directory / CERT_DIR_CERT, directory / CERT_DIR_KEY
    # Made in memory, written by `complete` only once every other check passed: a start refused for
    # another file wrote a pair, and install.md's wait for apiserver.crt then ended (r1cli L1).
    written = f"a new self-signed pair written to --cert-dir {_logged(directory)}"
    if not cert_file.exists():
        # No pair, or a key alone: the pair is written key first, so a start that died before the
        # certificate was in place left its key, which a new pair replaces.
        return _ServingPair(ServingCertificate.self_signed(now=now), written, directory)
    kept = f"the self-signed pair in --cert-dir {_logged(directory)}"
    try:
        leaf = load_certificates(str(cert_file), "--cert-dir")[0]
    except CertificateError:
        leaf = None  # said by _pair below
    if leaf is not None and leaf.not_valid_after_utc < now:
        # The pair is reused only while it is valid: once expired (after its 365 days) every client
        # refused it, while the start said nothing (r1cli L4). Checked before the key is matched: a
        # start that died between the replacement's two renames left the new key by the old
        # certificate, and the next starts were refused until both were deleted (r2cli F1).
        expired = _day(leaf.not_valid_after_utc)
        # Its own errors dropped: a half pair is made anew, and refused only if that cannot be written.
        old = _pair(str(cert_file), str(key_file), [], "--cert-dir", "--cert-dir")
        return _ServingPair(
            ServingCertificate.self_signed(now=now),
            written,
            directory,
            warnings=(
                f"{kept}: {CERT_DIR_CERT} expired on {expired}, so a new pair is written in its place: "
                f"clients that trust the old {CERT_DIR_CERT} need the new one",
            ),
            expired=None
            if old is None
            else _ExpiredPair(
                old,
                kept,
                f"{kept}: {CERT_DIR_CERT} expired on {expired} (clients will refuse it), served as it is",
            ),
        )
    serving = _pair(
        str(cert_file),
        str(key_file),
        errors,
        "--cert-dir",
        "--cert-dir",
        " (delete both files to have a new pair generated)",
    )
    return _ServingPair(
        serving,
        kept,
        warnings=_validity(serving, kept, now, "delete both files to have a new pair generated"),
    )


def _validity(
    serving: ServingCertificate | None, where: str, now: datetime.datetime, remedy: str
) -> tuple[str, ...]:
    """A warning when the serving certificate is out of its validity: not a refusal, since a clock far
    off must not stop the start, but every client refuses it meanwhile (r1cli L4)."""
    if serving is None:
        return ()
    leaf = serving.chain[0]
    if leaf.not_valid_after_utc < now:
        return (
            f"{where}: the certificate expired on {_day(leaf.not_valid_after_utc)} (clients will "
            f"refuse it): {remedy}",
        )
    if leaf.not_valid_before_utc > now:
        return (
            f"{where}: the certificate is not valid before {_day(leaf.not_valid_before_utc)} (clients "
            "will refuse it until then): check this machine's clock",
        )
    return ()


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _write_pair(directory: Path, serving: ServingCertificate) -> str | None:
    """The pair into --cert-dir, new or in place of one that `_serving` found missing a certificate or
    expired. Each file is written whole to `<name>.new`, synced, then renamed over its name, the key
    first: a start that dies midway leaves a whole old or new certificate (or none), which `_serving`
    replaces when it is expired or missing, so no later start is refused for it (r2cli F1). The
    reason it could not, if so."""
    certificate, key = serving.pem()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # The key owner-only before it holds anything.
        for name, data, mode in ((CERT_DIR_KEY, key, 0o600), (CERT_DIR_CERT, certificate, 0o644)):
            path = directory / name
            target = path.with_name(name + ".new")
            target.unlink(missing_ok=True)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(descriptor, "wb") as f:
                f.write(data)
                f.flush()
                # Else after a power loss the renamed file may come back empty.
                os.fsync(descriptor)
            os.replace(target, path)
        _sync_directory(directory)
    except OSError as error:
        return error.strerror or str(error)
    return None


def _sync_directory(directory: Path) -> None:
    """The renames made durable (POSIX: a rename is on disk once its directory is synced)."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _logged(path: str | Path) -> str:
    """A file flag's value as the start's log line names it: all before its last '@' redacted, as the
    refusals name it (cli's `_report`). A URL given to a file flag may still name a file or a folder
    (--cert-dir=https://user:pw@h is made under the working directory), and the start then succeeds
    and logs it (review r6cfg N3)."""
    return without_userinfo(str(path))


def _pair(
    cert_file: str,
    key_file: str,
    errors: list[str],
    cert_flag: str = "--tls-cert-file",
    key_flag: str = "--tls-private-key-file",
    remedy: str = "",
) -> ServingCertificate | None:
    """The serving pair; each file is checked on its own first, so that one run names both when both
    are bad (from_files stops at the first)."""
    found = len(errors)
    for check in (
        lambda: load_certificates(cert_file, cert_flag),
        lambda: load_private_key(key_file, key_flag),
    ):
        try:
            check()
        except CertificateError as error:
            errors.append(f"{error}{remedy}")
    if len(errors) > found:
        return None
    try:
        return ServingCertificate.from_files(cert_file, key_file, cert_flag, key_flag)
    except CertificateError as error:
        errors.append(f"{error}{remedy}")
        return None


def _events_token(settings: Settings, errors: list[str]) -> str | None:
    path = settings.registry_events_token_file
    if not path:
        return None
    try:
        token = read_file(path).decode("utf-8").strip()
    except OSError as error:
        errors.append(f"--registry-events-token-file {path}: cannot read: {error.strerror}")
        return None
    except UnicodeDecodeError:
        # Its own words name a byte of the token and its position: not said.
        errors.append(f"--registry-events-token-file {path}: cannot read: it is not UTF-8 text")
        return None
    if not token:
        errors.append(f"--registry-events-token-file {path} is empty")
    return token or None


def _authorization_mode(
    settings: Settings,
    cluster: ClusterConfig | None,
    errors: list[str],
    kubeconfig_failed: bool,
    missing_token: str | None = None,
) -> str:
    mode = settings.authorization_mode or ("RBAC" if cluster is not None or kubeconfig_failed else None)
    if cluster is None and not kubeconfig_failed and missing_token is not None and mode != "AlwaysAllow":
        # A pod that opted out of its token: the remedy is the token, never the way around RBAC.
        errors.append(
            f"running in a pod ({SERVICE_HOST_ENV} is set) but no ServiceAccount token is mounted at "
            f"{missing_token}, so the cluster API cannot be used (PayloadRepositoryAccess rules, Roles and "
            "RoleBindings): set automountServiceAccountToken: true on the pod or its ServiceAccount"
        )
        return mode or "RBAC"
    if mode is None:
        errors.append(
            "no cluster API is configured (no --kubeconfig, not in a pod), so PayloadRepositoryAccess rules "
            "cannot be read: pass --authorization-mode=AlwaysAllow to run standalone, where every "
            "authenticated client may see and delete every tag"
        )
        return "AlwaysAllow"
    if mode == "RBAC" and cluster is None and not kubeconfig_failed:
        errors.append(
            "--authorization-mode=RBAC needs the cluster API (--kubeconfig, or run in a pod) to read "
            "Roles and RoleBindings"
        )
    return mode
