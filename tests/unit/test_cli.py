"""Flags → Settings: every flag reaches the settings, mistakes are one-line usage errors."""

from __future__ import annotations

import pytest

from payloadtags.cli import PASSWORD_ENV, USERNAME_ENV, UsageError, _duration, _parser, main, settings_from


def parse(*argv: str):
    return settings_from(_parser().parse_args(["serve", "--registry-url=http://127.0.0.1:5000", *argv]))


def test_defaults():
    settings = parse()
    assert settings.registry.url == "http://127.0.0.1:5000"
    assert settings.registry_host == "127.0.0.1:5000"
    assert (settings.bind_address, settings.secure_port) == ("0.0.0.0", 8443)
    assert settings.authorization_mode is None
    assert settings.requestheader_username_headers == ("X-Remote-User",)
    assert settings.requestheader_group_headers == ("X-Remote-Group",)
    assert settings.requestheader_extra_headers_prefix == ("X-Remote-Extra-",)
    assert settings.metrics_allowed_groups == ("system:masters", "system:monitoring")
    assert (settings.token_cache_ttl, settings.token_failure_cache_ttl) == (10.0, 10.0)
    assert (settings.shutdown_delay, settings.shutdown_grace_period) == (0.0, 30.0)
    assert settings.log_format == "text"
    assert (settings.namespace_cleanup, settings.leader_elect) == (True, True)
    assert (settings.namespace_sweep_period, settings.leader_elect_resource_name) == (
        3600.0,
        "payloadtags-cleanup",
    )
    assert settings.leader_elect_resource_namespace is None
    assert (settings.registry_events_token_file, settings.registry_index_refresh_period) == (None, 300.0)


def test_every_flag_reaches_the_settings(tmp_path):
    settings = parse(
        "--bind-address=127.0.0.1",
        "--secure-port=9443",
        "--tls-cert-file=/c.crt",
        "--tls-private-key-file=/c.key",
        "--client-ca-file=/clients.crt",
        "--requestheader-client-ca-file=/proxy.crt",
        "--requestheader-allowed-names=front-proxy-client, aggregator",
        "--requestheader-username-headers=X-Remote-User,X-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-,X-Extra-",
        "--requestheader-uid-headers=X-Remote-Uid",
        "--authentication-token-webhook-cache-ttl=2m",
        "--authentication-token-webhook-failure-cache-ttl=1m30s",
        "--kubeconfig=/kube.conf",
        "--authorization-mode=RBAC",
        "--registry-host=registry.example.com",
        "--registry-ca-file=/registry-ca.crt",
        "--registry-timeout=2.5",
        "--registry-concurrency=8",
        "--delete-concurrency=2",
        "--registry-events-token-file=/events.token",
        "--registry-index-refresh-period=2m",
        "--metrics-allowed-groups=ops",
        "--metrics-anonymous",
        "--cert-reload-period=500ms",
        "--shutdown-delay-duration=5s",
        "--shutdown-grace-period=1m",
        "--log-format=json",
        "-v",
        "--no-namespace-cleanup",
        "--namespace-sweep-period=30m",
        "--namespace-sweep-dry-run",
        "--namespace-cleanup-concurrency=8",
        "--namespace-cleanup-workers=3",
        "--no-leader-elect",
        "--leader-elect-lease-duration=30s",
        "--leader-elect-renew-deadline=20s",
        "--leader-elect-retry-period=4s",
        "--leader-elect-resource-name=cleanup",
        "--leader-elect-resource-namespace=payloadtags-system",
    )
    assert (settings.bind_address, settings.secure_port) == ("127.0.0.1", 9443)
    assert (settings.tls_cert_file, settings.tls_private_key_file) == ("/c.crt", "/c.key")
    assert settings.client_ca_file == "/clients.crt"
    assert settings.requestheader_client_ca_file == "/proxy.crt"
    assert settings.requestheader_allowed_names == ("front-proxy-client", "aggregator")
    assert settings.requestheader_username_headers == ("X-Remote-User", "X-User")
    assert settings.requestheader_extra_headers_prefix == ("X-Remote-Extra-", "X-Extra-")
    assert settings.requestheader_uid_headers == ("X-Remote-Uid",)
    assert (settings.token_cache_ttl, settings.token_failure_cache_ttl) == (120.0, 90.0)
    assert (settings.kubeconfig, settings.authorization_mode) == ("/kube.conf", "RBAC")
    assert settings.registry_host == "registry.example.com"
    assert (settings.registry.ca_file, settings.registry.timeout) == ("/registry-ca.crt", 2.5)
    assert (settings.registry.max_connections, settings.registry_concurrency) == (8, 8)
    assert settings.delete_concurrency == 2
    assert settings.registry_events_token_file == "/events.token"
    assert settings.registry_index_refresh_period == 120.0
    assert (settings.metrics_allowed_groups, settings.metrics_anonymous) == (("ops",), True)
    assert settings.cert_reload_period == 0.5
    assert (settings.shutdown_delay, settings.shutdown_grace_period) == (5.0, 60.0)
    assert (settings.log_format, settings.verbose) == ("json", True)
    assert settings.namespace_cleanup is False
    assert (settings.namespace_sweep_period, settings.namespace_sweep_dry_run) == (1800.0, True)
    assert (settings.namespace_cleanup_concurrency, settings.namespace_cleanup_workers) == (8, 3)
    assert settings.leader_elect is False
    assert (
        settings.leader_elect_lease_duration,
        settings.leader_elect_renew_deadline,
        settings.leader_elect_retry_period,
    ) == (30.0, 20.0, 4.0)
    assert settings.leader_elect_resource_name == "cleanup"
    assert settings.leader_elect_resource_namespace == "payloadtags-system"


def test_credentials_come_from_files_or_environment_and_stay_out_of_repr(tmp_path, monkeypatch):
    user, password = tmp_path / "user", tmp_path / "password"
    user.write_text("robot\n")
    password.write_text("hunter2-from-file\n")
    settings = parse(f"--registry-username-file={user}", f"--registry-password-file={password}")
    assert (settings.registry.username, settings.registry.password) == ("robot", "hunter2-from-file")
    assert "hunter2" not in repr(settings)
    monkeypatch.setenv(USERNAME_ENV, "env-user")
    monkeypatch.setenv(PASSWORD_ENV, "env-secret")
    settings = parse()
    assert (settings.registry.username, settings.registry.password) == ("env-user", "env-secret")
    assert "env-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--registry-url=ftp://x"], "--registry-url must be an http:// or https:// URL"),
        (["--registry-url=http://user:pw@x"], "must not carry credentials"),
        (["--tls-cert-file=/c.crt"], "--tls-cert-file and --tls-private-key-file go together"),
        (["--registry-concurrency=0"], "--registry-concurrency must be at least 1"),
        (["--registry-timeout=0"], "--registry-timeout must be positive"),
        (["--registry-password-file=/does/not/exist"], "cannot read the registry password file"),
    ],
)
def test_usage_errors(argv, message):
    args = _parser().parse_args(["serve", "--registry-url=http://127.0.0.1:5000", *argv])
    with pytest.raises(UsageError, match=message):
        settings_from(args)


def test_main_reports_usage_errors_in_one_line(capsys):
    assert main(["serve", "--registry-url=ftp://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("payloadtags: --registry-url must be")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("10", 10.0), ("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0)]
)
def test_durations(text, seconds):
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "s"])
def test_bad_durations(text):
    with pytest.raises(Exception, match="duration"):
        _duration(text)
