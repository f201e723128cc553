"""Everything the server is configured with, independent of where it came from (flags, environment)."""

from __future__ import annotations

import attrs

from payloadtags.limits import HttpLimits, WatchLimits
from payloadtags.registry import RegistrySettings

AUTHORIZATION_MODES = ("AlwaysAllow", "RBAC")
LOGGING_FORMATS = ("text", "json")
TLS_VERSIONS = ("VersionTLS12", "VersionTLS13")
# k8s.io/apiserver's default for --authorization-always-allow-paths.
DEFAULT_ALWAYS_ALLOW_PATHS = ("/healthz", "/readyz", "/livez")
# An unspecified --bind-address listens on every address of both IP families, as Go servers do.
UNSPECIFIED_ADDRESSES = ("0.0.0.0", "::", "")


@attrs.frozen
class Settings:
    registry: RegistrySettings
    registry_host: str
    bind_address: str = "0.0.0.0"
    secure_port: int = 8443
    tls_cert_file: str | None = None
    tls_private_key_file: str | None = None
    cert_dir: str | None = None  # where the self-signed pair is kept; None: in memory
    tls_min_version: str = "VersionTLS12"
    tls_cipher_suites: tuple[str, ...] = ()  # IANA names; () = tls.DEFAULT_TLS12_SUITES
    client_ca_file: str | None = None
    requestheader_client_ca_file: str | None = None
    requestheader_allowed_names: tuple[str, ...] = ()
    requestheader_username_headers: tuple[str, ...] = ("X-Remote-User",)
    requestheader_group_headers: tuple[str, ...] = ("X-Remote-Group",)
    requestheader_extra_headers_prefix: tuple[str, ...] = ("X-Remote-Extra-",)
    requestheader_uid_headers: tuple[str, ...] = ()
    token_cache_ttl: float = 10.0
    token_failure_cache_ttl: float = 10.0
    kubeconfig: str | None = None
    authorization_mode: str | None = None
    always_allow_paths: tuple[str, ...] = DEFAULT_ALWAYS_ALLOW_PATHS
    registry_concurrency: int = 16
    delete_concurrency: int = 4
    registry_events_token_file: str | None = None  # enables the repository index and /registry/events
    registry_index_refresh_period: float = 300.0
    metrics_allowed_groups: tuple[str, ...] = ()  # deprecated: /metrics is authorized by RBAC
    metrics_anonymous: bool = False
    cert_reload_period: float = 10.0
    shutdown_delay: float = 0.0
    shutdown_grace_period: float = 30.0
    log_format: str = "text"
    verbosity: int = 0
    namespace_cleanup: bool = True
    namespace_sweep_period: float = 3600.0
    namespace_sweep_dry_run: bool = False
    namespace_cleanup_concurrency: int = 4
    namespace_cleanup_workers: int = 2
    leader_elect: bool = True
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0
    leader_elect_resource_name: str = "payloadtags-cleanup"
    # None: the pod's namespace, else $POD_NAMESPACE, else the kubeconfig context's, else "default"
    leader_elect_resource_namespace: str | None = None
    http: HttpLimits = attrs.Factory(HttpLimits)  # bounds on what clients may make the server hold
    watch: WatchLimits = attrs.Factory(WatchLimits)  # watches: counts, buffers, resync period
    # Which of ``watch``'s counts were given as flags, not left to their defaults (max_watches,
    # max_watches_per_user): one held lower at start is warned about, even when it equals its default.
    watch_flags: frozenset[str] = frozenset()
