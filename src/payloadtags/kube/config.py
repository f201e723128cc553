"""Where the cluster API is and how to authenticate to it.

`load_cluster_config` is **blocking**: it reads files, and a kubeconfig may run an exec credential
plugin. Call it once at start-up, before the reactor runs (or from a thread), never from a request
handler. Everything it returns is plain data that the reactor-side client uses without blocking.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from payloadtags.validators import address_problem

if TYPE_CHECKING:
    from kubernetes.client import Configuration

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"


class ConfigError(Exception):
    """The cluster configuration is missing a piece or cannot be read."""


def _redact(value: object) -> str:
    return "None" if value is None else "'<redacted>'"


_EXCLUSIVE = (
    ("ca_file", "ca_data"),
    ("client_cert_file", "client_cert_data"),
    ("client_key_file", "client_key_data"),
    ("token", "token_file"),
)


@attrs.frozen
class ClusterConfig:
    """How to reach the cluster API: URL, trust, and client credentials.

    Credentials come either as file paths or as PEM bytes. A `token_file` is re-read periodically by
    the client because in-cluster service-account tokens rotate; a `token` is used as it is. The
    token never appears in ``repr``.
    """

    server: str = attrs.field()
    ca_file: str | None = None
    ca_data: bytes | None = attrs.field(default=None, repr=False)
    client_cert_file: str | None = None
    client_key_file: str | None = None
    client_cert_data: bytes | None = attrs.field(default=None, repr=False)
    client_key_data: bytes | None = attrs.field(default=None, repr=_redact)
    token: str | None = attrs.field(default=None, repr=_redact)
    token_file: str | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    in_cluster: bool = False
    # The namespace of the kubeconfig's context, or the pod's: where namespaced objects of our own go.
    namespace: str | None = None

    @server.validator
    def _check_server(self, _attribute: attrs.Attribute[Any], value: str) -> None:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"cluster server must be an http(s) URL, not {value!r}")

    def __attrs_post_init__(self) -> None:
        for a, b in _EXCLUSIVE:
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise ValueError(f"give {a} or {b}, not both")
        has_cert = self.client_cert_file is not None or self.client_cert_data is not None
        has_key = self.client_key_file is not None or self.client_key_data is not None
        if has_cert != has_key:
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def uses_tls(self) -> bool:
        return self.server.startswith("https://")

    @property
    def has_client_cert(self) -> bool:
        return self.client_cert_file is not None or self.client_cert_data is not None


def in_pod(environ: Mapping[str, str] = os.environ, service_account_dir: str = SERVICE_ACCOUNT_DIR) -> bool:
    """Whether this process runs in a pod with a service account to talk to its cluster.

    Both are needed: the service environment variables alone also appear in pods that opted out of
    a token (``automountServiceAccountToken: false``), where there is nothing to authenticate with.
    """
    return bool(environ.get(SERVICE_HOST_ENV)) and (Path(service_account_dir) / "token").is_file()


def load_cluster_config(
    kubeconfig: str | None,
    *,
    context: str | None = None,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> ClusterConfig | None:
    """Load the cluster configuration the way the process was deployed. Blocking: see the module doc.

    - an explicit `kubeconfig` file wins (``--kubeconfig``);
    - otherwise, in a pod, the service account's in-cluster configuration;
    - otherwise None: standalone mode, no cluster API.

    ``$KUBECONFIG`` and ``~/.kube/config`` are deliberately not consulted: a developer's personal
    kubeconfig must not silently turn standalone mode into cluster mode.
    """
    if kubeconfig is not None:
        return _from_kubeconfig(kubeconfig, context)
    if in_pod(environ, service_account_dir):
        return _from_service_account(environ, service_account_dir)
    return None


def _from_kubeconfig(path: str, context: str | None) -> ClusterConfig:
    # Imported here: the package takes seconds to import and standalone mode never needs it.
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration

    if not Path(path).is_file():
        raise ConfigError(f"kubeconfig {path!r} does not exist")
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read kubeconfig {path!r}: {_gist(e)}") from e
    if not isinstance(document, dict) or not document.get("clusters"):
        raise ConfigError(f"{path!r} is not a kubeconfig (a YAML document with clusters, users and contexts)")
    configuration = Configuration()
    try:
        kube_config.load_kube_config(
            config_file=path, context=context, client_configuration=configuration, persist_config=False
        )
    except (kube_config.ConfigException, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"cannot load kubeconfig {path!r}: {_gist(e)}") from e
    cluster = _convert(configuration, token_file=None, in_cluster=False)
    try:
        problem = address_problem(urlsplit(cluster.server))
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        problem = str(e)
    if problem:
        raise ConfigError(f"kubeconfig {path!r}: cluster server {cluster.server!r}: {problem}")
    return attrs.evolve(cluster, namespace=_context_namespace(path, context))


def _gist(error: Exception) -> str:
    """The error on one line, as start-up reports every problem: a YAML error's own text spans several,
    with the offending line quoted and a caret under the place."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        gist = error.problem or error.context or "not valid YAML"
        if mark is not None:
            gist += f" at line {mark.line + 1}, column {mark.column + 1}"
        if error.problem and error.context:
            start = error.context_mark
            gist += f" ({error.context}" + (
                f" at line {start.line + 1}, column {start.column + 1})" if start else ")"
            )
        return gist
    return " ".join(str(error).split())


def _context_namespace(path: str, context: str | None) -> str | None:
    from kubernetes import config as kube_config

    contexts, active = kube_config.list_kube_config_contexts(config_file=path)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def _from_service_account(environ: Mapping[str, str], service_account_dir: str) -> ClusterConfig:
    from kubernetes.client import Configuration
    from kubernetes.config import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    token_file = str(Path(service_account_dir) / "token")
    configuration = Configuration()
    loader = InClusterConfigLoader(
        token_filename=token_file,
        cert_filename=str(Path(service_account_dir) / "ca.crt"),
        # Token rotation is handled by re-reading token_file in our own client.
        try_refresh_token=False,
        environ=environ,
    )
    try:
        loader.load_and_set(configuration)
    except (ConfigException, OSError) as e:
        raise ConfigError(f"cannot load the in-cluster configuration: {e}") from e
    try:
        namespace = (Path(service_account_dir) / "namespace").read_text().strip() or None
    except OSError:
        namespace = None
    return attrs.evolve(_convert(configuration, token_file=token_file, in_cluster=True), namespace=namespace)


def _convert(configuration: Configuration, *, token_file: str | None, in_cluster: bool) -> ClusterConfig:
    token = None
    if token_file is None:
        token = _bearer_token(
            configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
        )
    return ClusterConfig(
        server=str(configuration.host).rstrip("/"),
        ca_file=configuration.ssl_ca_cert or None,
        client_cert_file=configuration.cert_file or None,
        client_key_file=configuration.key_file or None,
        token=token,
        token_file=token_file,
        insecure_skip_tls_verify=not configuration.verify_ssl,
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        in_cluster=in_cluster,
    )


def _bearer_token(header: str | None) -> str | None:
    """The token inside the loader's ready-made ``Authorization`` value."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # Basic auth was removed from Kubernetes in 1.19; nothing else reaches this point.
        raise ConfigError(f"unsupported kubeconfig credential scheme {scheme!r}")
    return token.strip()
