"""Command line: flags with k8s.io/apiserver names → Settings; ``payloadtags serve``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from payloadtags import __version__
from payloadtags.registry import RegistrySettings
from payloadtags.settings import AUTHORIZATION_MODES, Settings

USERNAME_ENV = "PAYLOADTAGS_REGISTRY_USERNAME"
PASSWORD_ENV = "PAYLOADTAGS_REGISTRY_PASSWORD"


class UsageError(Exception):
    """A configuration mistake, reported in one line without a traceback."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payloadtags", description=__doc__)
    parser.add_argument("--version", action="version", version=f"payloadtags {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the aggregated API server")
    serving = serve.add_argument_group("serving")
    serving.add_argument("--bind-address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serving.add_argument("--secure-port", type=int, default=8443, help="HTTPS port (default 8443)")
    serving.add_argument("--tls-cert-file", help="serving certificate (PEM, may include the chain)")
    serving.add_argument("--tls-private-key-file", help="private key of --tls-cert-file")
    auth = serve.add_argument_group("authentication and authorization")
    auth.add_argument(
        "--client-ca-file", help="CA bundle that signs client certificates (user = CN, groups = O)"
    )
    auth.add_argument(
        "--requestheader-client-ca-file",
        help="CA bundle of the front proxy (kube-apiserver's aggregator); absent: read from ConfigMap "
        "kube-system/extension-apiserver-authentication when a cluster API is configured",
    )
    auth.add_argument(
        "--requestheader-allowed-names",
        type=_list,
        default=(),
        help="front-proxy certificate CNs to accept, comma-separated (empty: any CN the CA signed)",
    )
    auth.add_argument(
        "--requestheader-username-headers", type=_list, default=("X-Remote-User",), help="user name headers"
    )
    auth.add_argument(
        "--requestheader-group-headers", type=_list, default=("X-Remote-Group",), help="group headers"
    )
    auth.add_argument(
        "--requestheader-extra-headers-prefix",
        type=_list,
        default=("X-Remote-Extra-",),
        help="prefixes of user extra headers",
    )
    auth.add_argument("--requestheader-uid-headers", type=_list, default=(), help="user UID headers")
    auth.add_argument(
        "--authentication-token-webhook-cache-ttl",
        type=_duration,
        default=10.0,
        help="how long a successful TokenReview is cached, e.g. 10s or 2m (default 10s)",
    )
    auth.add_argument(
        "--authentication-token-webhook-failure-cache-ttl",
        type=_duration,
        default=10.0,
        help="how long a rejected token is cached (default 10s)",
    )
    auth.add_argument(
        "--kubeconfig", help="kubeconfig of the cluster API (default: in-cluster config when in a pod)"
    )
    auth.add_argument(
        "--authorization-mode",
        choices=AUTHORIZATION_MODES,
        help="RBAC (default with a cluster API) or AlwaysAllow (required without one)",
    )
    registry = serve.add_argument_group("registry")
    registry.add_argument(
        "--registry-url", required=True, help="registry API endpoint, e.g. https://registry:5000"
    )
    registry.add_argument(
        "--registry-host", help="host shown in addresses (default: host[:port] of --registry-url)"
    )
    registry.add_argument("--registry-ca-file", help="CA bundle for an HTTPS registry")
    registry.add_argument(
        "--registry-username-file", help=f"file holding the registry user name (or ${USERNAME_ENV})"
    )
    registry.add_argument(
        "--registry-password-file", help=f"file holding the registry password or token (or ${PASSWORD_ENV})"
    )
    registry.add_argument("--registry-timeout", type=float, default=10.0, help="seconds per registry request")
    registry.add_argument(
        "--registry-concurrency", type=int, default=16, help="registry requests in flight for one list"
    )
    registry.add_argument(
        "--delete-concurrency", type=int, default=4, help="tags deleted at once by deletecollection"
    )
    registry.add_argument(
        "--registry-events-token-file",
        help="file holding the bearer token the registry's notifications send to POST /registry/events; "
        "enables the repository index that namespace lists use instead of seeking the catalog",
    )
    registry.add_argument(
        "--registry-index-refresh-period",
        type=_duration,
        default=300.0,
        help="how often the repository index rereads the whole catalog to repair missed events (default 5m)",
    )
    cleanup = serve.add_argument_group("namespace cleanup (with a cluster API)")
    cleanup.add_argument(
        "--namespace-cleanup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="delete a namespace's registry content when the namespace is deleted (default on)",
    )
    cleanup.add_argument(
        "--namespace-sweep-period",
        type=_duration,
        default=3600.0,
        help="how often to delete content whose namespace does not exist (default 1h; 0: only at start)",
    )
    cleanup.add_argument(
        "--namespace-sweep-dry-run",
        action="store_true",
        help="the sweep only reports what it would delete",
    )
    cleanup.add_argument(
        "--namespace-cleanup-concurrency",
        type=int,
        default=4,
        help="registry requests in flight per namespace",
    )
    cleanup.add_argument(
        "--namespace-cleanup-workers", type=int, default=2, help="namespaces cleaned at once"
    )
    cleanup.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="elect one replica (a coordination.k8s.io Lease) to run the cleanup (default on)",
    )
    cleanup.add_argument("--leader-elect-lease-duration", type=_duration, default=15.0, help="default 15s")
    cleanup.add_argument("--leader-elect-renew-deadline", type=_duration, default=10.0, help="default 10s")
    cleanup.add_argument("--leader-elect-retry-period", type=_duration, default=2.0, help="default 2s")
    cleanup.add_argument(
        "--leader-elect-resource-name", default="payloadtags-cleanup", help="the Lease's name"
    )
    cleanup.add_argument(
        "--leader-elect-resource-namespace",
        help="the Lease's namespace (default: the pod's namespace, else default)",
    )
    ops = serve.add_argument_group("operations")
    ops.add_argument(
        "--metrics-allowed-groups",
        type=_list,
        default=("system:masters", "system:monitoring"),
        help="groups allowed to read /metrics (default system:masters,system:monitoring)",
    )
    ops.add_argument("--metrics-anonymous", action="store_true", help="serve /metrics without authentication")
    ops.add_argument(
        "--cert-reload-period",
        type=_duration,
        default=10.0,
        help="how often certificate and CA files are checked for rotation (default 10s)",
    )
    ops.add_argument(
        "--shutdown-delay-duration",
        type=_duration,
        default=0.0,
        help="after SIGTERM, keep serving (with readyz failing) this long before closing the listener",
    )
    ops.add_argument(
        "--shutdown-grace-period",
        type=_duration,
        default=30.0,
        help="after closing the listener, how long requests in flight may take to finish (default 30s)",
    )
    ops.add_argument("--log-format", choices=("text", "json"), default="text", help="log output format")
    ops.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """Seconds, or a Go duration such as 10s, 1m30s, 500ms."""
    try:
        return float(text)
    except ValueError:
        pass
    total, number = 0.0, ""
    rest = text.strip()
    while rest:
        digits = len(rest) - len(rest.lstrip("0123456789."))
        number, rest = rest[:digits], rest[digits:]
        unit = next((u for u in ("ms", "h", "m", "s") if rest.startswith(u)), None)
        if not number or unit is None:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 10s, 1m, 500ms)")
        total += float(number) * _UNITS[unit]
        rest = rest[len(unit) :]
    if not text.strip():
        raise argparse.ArgumentTypeError("empty duration")
    return total


def _secret(file_path: str | None, env: str, what: str) -> str | None:
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as error:
            raise UsageError(f"cannot read the registry {what} file {file_path}: {error.strerror}") from None
    return os.environ.get(env) or None


def settings_from(args: argparse.Namespace) -> Settings:
    url = args.registry_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--registry-url must be an http:// or https:// URL, not {args.registry_url!r}")
    if parts.username or parts.password:
        raise UsageError(
            "--registry-url must not carry credentials; use --registry-username-file/--registry-password-file"
        )
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        raise UsageError("--tls-cert-file and --tls-private-key-file go together")
    for name in (
        "registry_concurrency",
        "delete_concurrency",
        "namespace_cleanup_concurrency",
        "namespace_cleanup_workers",
    ):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.registry_timeout <= 0:
        raise UsageError("--registry-timeout must be positive")
    if args.registry_index_refresh_period <= 0:
        raise UsageError("--registry-index-refresh-period must be positive")
    registry = RegistrySettings(
        url=url,
        username=_secret(args.registry_username_file, USERNAME_ENV, "user name"),
        password=_secret(args.registry_password_file, PASSWORD_ENV, "password"),
        ca_file=args.registry_ca_file,
        timeout=args.registry_timeout,
        max_connections=args.registry_concurrency,
    )
    return Settings(
        registry=registry,
        registry_host=args.registry_host or parts.netloc,
        bind_address=args.bind_address,
        secure_port=args.secure_port,
        tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file,
        client_ca_file=args.client_ca_file,
        requestheader_client_ca_file=args.requestheader_client_ca_file,
        requestheader_allowed_names=args.requestheader_allowed_names,
        requestheader_username_headers=args.requestheader_username_headers,
        requestheader_group_headers=args.requestheader_group_headers,
        requestheader_extra_headers_prefix=args.requestheader_extra_headers_prefix,
        requestheader_uid_headers=args.requestheader_uid_headers,
        token_cache_ttl=args.authentication_token_webhook_cache_ttl,
        token_failure_cache_ttl=args.authentication_token_webhook_failure_cache_ttl,
        kubeconfig=args.kubeconfig,
        authorization_mode=args.authorization_mode,
        registry_concurrency=args.registry_concurrency,
        delete_concurrency=args.delete_concurrency,
        registry_events_token_file=args.registry_events_token_file,
        registry_index_refresh_period=args.registry_index_refresh_period,
        metrics_allowed_groups=args.metrics_allowed_groups,
        metrics_anonymous=args.metrics_anonymous,
        cert_reload_period=args.cert_reload_period,
        shutdown_delay=args.shutdown_delay_duration,
        shutdown_grace_period=args.shutdown_grace_period,
        log_format=args.log_format,
        verbose=args.verbose,
        namespace_cleanup=args.namespace_cleanup,
        namespace_sweep_period=args.namespace_sweep_period,
        namespace_sweep_dry_run=args.namespace_sweep_dry_run,
        namespace_cleanup_concurrency=args.namespace_cleanup_concurrency,
        namespace_cleanup_workers=args.namespace_cleanup_workers,
        leader_elect=args.leader_elect,
        leader_elect_lease_duration=args.leader_elect_lease_duration,
        leader_elect_renew_deadline=args.leader_elect_renew_deadline,
        leader_elect_retry_period=args.leader_elect_retry_period,
        leader_elect_resource_name=args.leader_elect_resource_name,
        leader_elect_resource_namespace=args.leader_elect_resource_namespace,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except UsageError as error:
        print(f"payloadtags: {error}", file=sys.stderr)
        return 2
    from payloadtags.server import serve  # imported late: `--help` should not pay for Twisted

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
