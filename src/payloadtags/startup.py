"""Completing validated settings: every file read and checked, the kubeconfig loaded, before anything runs.

Blocking (file reads, a kubeconfig may run a credential plugin): call it before the reactor runs, or
from a thread. Every problem found is collected, so one start reports all of them, each in one line
naming the flag or the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from payloadtags.kube import ClusterConfig, load_cluster_config
from payloadtags.kube import ConfigError as KubeConfigError
from payloadtags.settings import Settings
from payloadtags.tls import CertificateError, ServingCertificate, load_certificates

# Names Kubernetes components use for the pair they generate into --cert-dir.
CERT_DIR_CERT = "apiserver.crt"
CERT_DIR_KEY = "apiserver.key"
POD_NAMESPACE_ENV = "POD_NAMESPACE"


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


def complete(settings: Settings, environ: Mapping[str, str] = os.environ) -> Completed:
    errors: list[str] = []
    serving, origin = _serving(settings, errors)
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
    try:
        cluster = load_cluster_config(settings.kubeconfig, environ=environ)
    except KubeConfigError as error:
        errors.append(f"--kubeconfig: {error}" if settings.kubeconfig else str(error))
    mode = _authorization_mode(settings, cluster, errors, kubeconfig_failed=settings.kubeconfig is not None)
    if errors or serving is None:
        raise ConfigurationError(*errors)
    return Completed(
        serving=serving,
        serving_origin=origin,
        cluster=cluster,
        authorization_mode=mode,
        lease_namespace=lease_namespace(settings, cluster, environ),
        events_token=events_token,
    )


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


def _serving(settings: Settings, errors: list[str]) -> tuple[ServingCertificate | None, str]:
    if settings.tls_cert_file and settings.tls_private_key_file:
        try:
            serving = ServingCertificate.from_files(settings.tls_cert_file, settings.tls_private_key_file)
        except CertificateError as error:
            errors.append(str(error))
            return None, ""
        return serving, f"--tls-cert-file {settings.tls_cert_file}"
    if not settings.cert_dir:
        return ServingCertificate.self_signed(), "a self-signed certificate for localhost, in memory"
    directory = Path(settings.cert_dir)
    cert_file, key_file = directory / CERT_DIR_CERT, directory / CERT_DIR_KEY
    if cert_file.exists() or key_file.exists():
        try:
            serving = ServingCertificate.from_files(str(cert_file), str(key_file), "--cert-dir", "--cert-dir")
        except CertificateError as error:
            errors.append(f"{error} (delete both files to have a new pair generated)")
            return None, ""
        return serving, f"the self-signed pair in --cert-dir {directory}"
    serving = ServingCertificate.self_signed()
    certificate, key = serving.pem()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # The key is written owner-only before it holds anything.
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(key)
        cert_file.write_bytes(certificate)
    except OSError as error:
        errors.append(f"--cert-dir {directory}: cannot write the self-signed pair: {error.strerror}")
        return None, ""
    return serving, f"a new self-signed pair written to --cert-dir {directory}"


def _events_token(settings: Settings, errors: list[str]) -> str | None:
    path = settings.registry_events_token_file
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as error:
        errors.append(f"--registry-events-token-file {path}: cannot read: {error.strerror}")
        return None
    if not token:
        errors.append(f"--registry-events-token-file {path} is empty")
    return token or None


def _authorization_mode(
    settings: Settings, cluster: ClusterConfig | None, errors: list[str], kubeconfig_failed: bool
) -> str:
    mode = settings.authorization_mode or ("RBAC" if cluster is not None or kubeconfig_failed else None)
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
