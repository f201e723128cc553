from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from payloadtags.kube.client import _TokenSource
from payloadtags.kube.config import ClusterConfig, ConfigError, in_pod, load_cluster_config
from payloadtags.kube.execcred import (
    ExecPlugin,
    PluginError,
    parse_output,
    run_plugin,
    run_plugin_blocking,
)
from tests.support.kubeapi import write_kubeconfig
from tests.support.kubectl import KUBECTL, version_with
from tests.support.pki import Authority

SERVER = "https://127.0.0.1:6443"
# Guards against a hang of kubectl only, never a measure of speed.
HANG_GUARD = 60.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("pki"), "test")


@pytest.fixture
def service_account(tmp_path: Path, ca: Authority) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("sa-token-1\n")
    (directory / "ca.crt").write_bytes(ca.cert_file.read_bytes())
    (directory / "namespace").write_text("payloadtags")
    return directory


def test_repr_never_shows_the_token_or_the_key() -> None:
    config = ClusterConfig(SERVER, token="s3cr3t-token", client_cert_data=b"CERT", client_key_data=b"K3Y")
    text = repr(config)
    assert "s3cr3t" not in text
    assert "K3Y" not in text
    assert "token='<redacted>'" in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server": "127.0.0.1:6443"},
        {"server": SERVER, "ca_file": "/ca", "ca_data": b"x"},
        {"server": SERVER, "client_cert_file": "/c"},
        {"server": SERVER, "client_key_data": b"k"},
    ],
)
def test_inconsistent_configs_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ClusterConfig(**kwargs)  # type: ignore[arg-type]


def test_standalone_without_kubeconfig_outside_a_pod(tmp_path: Path) -> None:
    assert load_cluster_config(None, environ={}, service_account_dir=str(tmp_path)) is None


def test_service_host_without_a_token_is_not_a_pod_we_can_use(tmp_path: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert not in_pod(environ, str(tmp_path))
    assert load_cluster_config(None, environ=environ, service_account_dir=str(tmp_path)) is None


def test_in_cluster_config_uses_the_service_account(service_account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = load_cluster_config(None, environ=environ, service_account_dir=str(service_account))
    assert config == ClusterConfig(
        server="https://10.96.0.1:443",
        ca_file=str(service_account / "ca.crt"),
        token_file=str(service_account / "token"),
        in_cluster=True,
        namespace="payloadtags",
    )


@pytest.mark.parametrize("name", ["token", "namespace"])
def test_an_in_cluster_file_that_is_not_utf8_is_refused_in_one_line(service_account: Path, name: str) -> None:
    # review-unrev F2: start-up ended in a traceback (UnicodeDecodeError) out of the in-cluster loader.
    (service_account / name).write_bytes(b"s3cr3t-\xff\n")
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(None, environ=environ, service_account_dir=str(service_account))
    assert str(raised.value) == (
        f"cannot load the in-cluster configuration: {service_account / name} is not UTF-8 text"
    )
    assert "s3cr3t" not in str(raised.value) and "xff" not in str(raised.value)


@pytest.mark.parametrize(
    ("host", "port", "problem"),
    [
        # What os.environ makes of bytes that are not UTF-8: a surrogate escape, which no request can carry.
        (
            "10.96.0.\udcff",
            "443",
            "'10.96.0.\\udcff' is not a host name (DNS labels: letters, digits, '-') or an IP address",
        ),
        ("10.96.0.1", "44\udcff", "Port could not be cast to integer value as '44\\udcff'"),
        ("fd00::\udcff", "443", "'fd00::\\udcff' does not appear to be an IPv4 or IPv6 address"),
        ("a b", "443", "'a b' is not a host name (DNS labels: letters, digits, '-') or an IP address"),
    ],
)
def test_an_in_cluster_address_that_cannot_be_requested_is_refused_in_one_line(
    service_account: Path, host: str, port: str, problem: str
) -> None:
    # kcfg2's leftover: it was loaded, and every request of the client then raised UnicodeEncodeError
    # (the reflector "stopped by a bug"), where a kubeconfig's server is checked at load.
    environ = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(None, environ=environ, service_account_dir=str(service_account))
    server = "https://" + (f"[{host}]" if ":" in host else host) + f":{port}"
    assert str(raised.value) == (
        f"cannot load the in-cluster configuration: cluster server {server!r} (from $KUBERNETES_SERVICE_HOST "
        f"and $KUBERNETES_SERVICE_PORT): {problem}"
    )
    str(raised.value).encode("utf-8")  # it can be logged


def test_in_cluster_ipv6_host_is_bracketed(service_account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    config = load_cluster_config(None, environ=environ, service_account_dir=str(service_account))
    assert config is not None
    assert config.server == "https://[fd00::1]:443"


def test_an_explicit_kubeconfig_wins_over_the_pod(
    tmp_path: Path, ca: Authority, service_account: Path
) -> None:
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1234", ca.cert_file.read_bytes(), token="abc")
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = load_cluster_config(str(path), environ=environ, service_account_dir=str(service_account))
    assert config is not None
    assert config.server == "https://127.0.0.1:1234"
    assert config.token == "abc"
    assert not config.in_cluster


def test_kubeconfig_with_inline_client_certificate(tmp_path: Path, ca: Authority) -> None:
    client = ca.client("alice", ("dev",))
    path = write_kubeconfig(tmp_path / "kc", SERVER, ca.cert_file.read_bytes(), client=client)
    config = load_cluster_config(str(path))
    assert config is not None
    assert config.token is None
    # The loader turns inline data into files; their content is what was embedded.
    assert config.ca_file is not None and Path(config.ca_file).read_bytes() == ca.cert_file.read_bytes()
    assert (
        config.client_cert_file is not None
        and Path(config.client_cert_file).read_bytes() == client.cert_file.read_bytes()
    )
    assert (
        config.client_key_file is not None
        and Path(config.client_key_file).read_bytes() == client.key_file.read_bytes()
    )


def test_kubeconfig_relative_file_paths_resolve_against_its_folder(tmp_path: Path, ca: Authority) -> None:
    client = ca.client("alice")
    path = write_kubeconfig(
        tmp_path / "conf" / "kc", SERVER, ca.cert_file.read_bytes(), client=client, inline=False
    )
    config = load_cluster_config(str(path))
    assert config is not None
    assert config.ca_file == str(tmp_path / "conf" / "kc-ca.crt")
    assert config.client_cert_file == str(tmp_path / "conf" / "kc-client.crt")
    assert config.client_key_file == str(tmp_path / "conf" / "kc-client.key")


def test_kubeconfig_insecure_and_tls_server_name(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": SERVER + "/",
                            "insecure-skip-tls-verify": True,
                            "tls-server-name": "kubernetes.default",
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "tok"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    config = load_cluster_config(str(path))
    assert config == ClusterConfig(
        SERVER, token="tok", insecure_skip_tls_verify=True, tls_server_name="kubernetes.default"
    )


def test_a_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_cluster_config(str(tmp_path / "nope"))


def test_a_kubeconfig_that_is_a_directory_is_named_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(tmp_path))
    assert str(raised.value) == f"kubeconfig {str(tmp_path)!r} is a directory, not a file"


def test_a_broken_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text('{"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [], "users": []}')
    with pytest.raises(ConfigError):
        load_cluster_config(str(path))


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"username": "a", "password": "s3cret"}, "username and password"),
        # kubectl sends Basic and runs no plugin; payloadtags ran the plugin and sent its token.
        ({"username": "a", "exec": True}, "username"),
        # kubectl refuses it ("more than one authentication method"); payloadtags took the token silently.
        ({"token": "t", "username": "a", "password": "s3cret"}, "username and password"),
        ({"password": "s3cret", "exec": True}, "password"),
    ],
)
def test_basic_auth_is_refused_naming_the_file_the_user_and_the_fields(
    tmp_path: Path, user: dict[str, object], named: str
) -> None:
    # review r3cfg L3: the refusal was "unsupported kubeconfig credential scheme 'Basic'", naming nothing.
    if user.pop("exec", False):
        script = plugin(tmp_path / "plugin", "touch ran\nexit 1\n")
        user["exec"] = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script)}
    path = kubeconfig_with_user(tmp_path / "kc", user)
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f'kubeconfig {str(path)!r}: user "u": {named} (basic auth) is not supported, as no Kubernetes API '
        "server takes it since 1.19: give the user a token, a client certificate or an exec plugin"
    )
    assert not (tmp_path / "ran").exists()


def kubeconfig_with_user(path: Path, user: dict[str, object]) -> Path:
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": SERVER, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_a_token_file_is_kept_as_a_file_to_reread_and_the_token_beside_it_for_when_it_cannot_be(
    tmp_path: Path,
) -> None:
    # The file wins whenever it can be read (the client's _TokenSource); the token is kept for when it
    # cannot, as client-go's bearer round tripper keeps it (review-misc3 F1).
    (tmp_path / "token").write_text("from-file")
    config = load_cluster_config(
        str(kubeconfig_with_user(tmp_path / "kc", {"tokenFile": "token", "token": "t"}))
    )
    assert config is not None
    assert (config.token_file, config.token, config.warnings) == (str(tmp_path / "token"), "t", ())


def test_a_token_file_that_is_not_utf8_at_load_is_refused_naming_the_file_never_a_byte(
    tmp_path: Path,
) -> None:
    # kcfg2's leftover: the kubernetes library's own words named a byte of the token and its position
    # ("'utf-8' codec can't decode byte 0xf3 in position 6").
    (tmp_path / "token").write_bytes(b"s3cr3t\xf3-tok\n")
    kubeconfig = kubeconfig_with_user(tmp_path / "kc", {"tokenFile": "token"})
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(kubeconfig))
    message = str(raised.value)
    assert message == (
        f'kubeconfig {str(kubeconfig)!r}: user "u": tokenFile {str(tmp_path / "token")!r} is not UTF-8 text'
    )
    for piece in ("0xf3", "xf3", "\\xf3", "position", "s3cr3t", "tok\n"):
        assert piece not in message


def test_a_token_file_path_with_a_nul_is_refused_in_one_line_naming_the_field_never_the_value(
    tmp_path: Path,
) -> None:
    # review-misc F1: reading the file raised ValueError (embedded null byte) before the loader's own
    # handling, and start-up ended in a traceback.
    kubeconfig = kubeconfig_with_user(tmp_path / "kc", {"tokenFile": "s3cr3t\0en"})
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(kubeconfig))
    message = str(raised.value)
    assert message == f'kubeconfig {str(kubeconfig)!r}: user "u": tokenFile holds a NUL byte'
    assert "s3cr3t" not in message


def test_a_token_file_path_with_a_nul_beside_a_token_is_a_warning_naming_the_field_and_the_token_is_sent(
    tmp_path: Path,
) -> None:
    # review-misc3 F1: kubectl 1.32 sends the token beside such a path (client-go falls back to it when
    # the file cannot be read); 8492a97 refused the start. No file has such a path: the token is the
    # credential, and the start says so in one line naming the field, never the value.
    kubeconfig = kubeconfig_with_user(tmp_path / "kc", {"tokenFile": "s3cr3t\0en", "token": "t0ken"})
    config = load_cluster_config(str(kubeconfig))
    assert config is not None
    assert (config.token_file, config.token) == (None, "t0ken")
    assert config.warnings == (
        f'kubeconfig {str(kubeconfig)!r}: user "u": tokenFile holds a NUL byte, so it cannot be read: the '
        "token beside it is sent",
    )


@pytest.mark.parametrize(
    "server", ["http://loc\talhost:8001", "https://127.0.0.1:6443\n", "https://127.0.0.\x7f1"]
)
def test_a_server_with_a_control_character_is_refused_as_kubectl_refuses_it(
    tmp_path: Path, server: str
) -> None:
    # review r3cfg N1: urlsplit drops a tab or line end, so "http://loc<TAB>alhost" was loaded (and taken
    # for loopback); kubectl refuses the URL.
    path = kubeconfig_with_user(tmp_path / "kc", {"token": "t"})
    document = json.loads(path.read_text())
    document["clusters"][0]["cluster"] = {"server": server}
    path.write_text(json.dumps(document))
    assert "invalid control character in URL" in kubectl_refusal(path)
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f"kubeconfig {str(path)!r}: cluster server {server!r} holds a control character, which kubectl "
        "refuses too (net/url: invalid control character in URL)"
    )


@pytest.mark.parametrize("text", ["", " \n", " ", "\xa0"])
def test_an_empty_token_file_is_refused_as_kubectl_refuses_it_unless_a_token_stands_beside_it(
    tmp_path: Path, text: str
) -> None:
    # review r3cfg N4: kubectl refuses an empty one ("read empty token from file") and runs no exec
    # plugin beside it; payloadtags went on without a credential. A blank one kubectl sends as no
    # credential, or cannot send for a line end in it: refused too, and said so (review r6cfg L3).
    (tmp_path / "empty").write_text(text)
    # A blank token beside it is none (docs/kubeconfig.md): the same refusal, whose words said that
    # "a token (a blank one too)" beside the file would save it (review r10cfg L5).
    for beside in ({}, {"token": "  "}):
        kubeconfig = kubeconfig_with_user(tmp_path / "kc", {"tokenFile": "empty", **beside})
        with pytest.raises(ConfigError) as raised:
            load_cluster_config(str(kubeconfig))
        assert str(raised.value) == (
            f'kubeconfig {str(kubeconfig)!r}: user "u": tokenFile {str(tmp_path / "empty")!r} is empty or '
            "blank, refused unless a token that is not blank stands beside it: kubectl refuses an empty one, "
            "and for a blank one sends no credential (or fails every request, for a line end in it)"
        )
    # kubectl sends the token beside it (client-go reads the file only without one).
    config = load_cluster_config(
        str(kubeconfig_with_user(tmp_path / "kc", {"tokenFile": "empty", "token": "t"}))
    )
    assert config is not None and config.token == "t"


@pytest.mark.parametrize("token_file", ["missing", "s3cr3t\0en"])
def test_a_blank_token_beside_a_token_file_that_cannot_be_read_is_no_token_and_the_start_is_refused(
    tmp_path: Path, token_file: str
) -> None:
    # review-misc5 N2, as docs/kubeconfig.md says: kubectl sends the blank token (no credential to the
    # API server); payloadtags takes it as no token at all, so the file is needed, as without a token.
    kubeconfig = kubeconfig_with_user(tmp_path / "kc", {"tokenFile": token_file, "token": " "})
    with pytest.raises(ConfigError, match=r"No such file or directory|tokenFile holds a NUL byte"):
        load_cluster_config(str(kubeconfig))


def plugin(path: Path, body: str) -> Path:
    # It writes what it saw beside itself: a plugin runs in the caller's working directory, as in client-go.
    path.write_text('#!/bin/sh\ncd "$(dirname "$0")"\n' + body)
    path.chmod(0o755)
    return path


def test_an_exec_plugin_runs_once_at_load_with_its_args_env_and_cluster_info(tmp_path: Path) -> None:
    script = plugin(
        tmp_path / "plugin",
        'echo "$1 $GREETING $KUBERNETES_EXEC_INFO" > seen\n'
        'echo \'{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential",'
        '"status":{"token":"tok","expirationTimestamp":"2030-01-02T03:04:05Z"}}\'\n',
    )
    exec_section = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": str(script),
        "args": ["--flag"],
        "env": [{"name": "GREETING", "value": "hi"}],
        "provideClusterInfo": True,
    }
    config = load_cluster_config(str(kubeconfig_with_user(tmp_path / "kc", {"exec": exec_section})))
    assert config is not None and config.exec_plugin is not None
    assert (config.token, config.token_expires_at) == ("tok", 1893553445.0)
    flag, greeting, info = (tmp_path / "seen").read_text().split(" ", 2)
    assert (flag, greeting) == ("--flag", "hi")
    assert json.loads(info) == {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "spec": {"interactive": False, "cluster": {"server": SERVER, "insecure-skip-tls-verify": True}},
    }


def test_an_exec_plugin_that_fails_at_load_is_a_config_error(tmp_path: Path) -> None:
    script = plugin(tmp_path / "plugin", "echo 'no identity provider' >&2; exit 3\n")
    exec_section = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script)}
    with pytest.raises(ConfigError, match="exited with 3: no identity provider"):
        load_cluster_config(str(kubeconfig_with_user(tmp_path / "kc", {"exec": exec_section})))


def test_provide_cluster_info_hands_the_plugin_the_ca_file_read_at_each_run(
    tmp_path: Path, ca: Authority
) -> None:
    # client-go's ConfigToExecCluster: a CA named by file (relative to the kubeconfig's folder) reaches the
    # plugin as certificate-authority-data, with the cluster's TLS name and exec extension config (a
    # proxy-url, which client-go would pass on too, is refused at start: tests/unit/test_startup.py).
    (tmp_path / "ca.crt").write_bytes(ca.cert_file.read_bytes())
    script = plugin(
        tmp_path / "plugin",
        'echo "$KUBERNETES_EXEC_INFO" > seen\n'
        'echo \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"tok"}}\'\n',
    )
    cluster = {
        "server": SERVER,
        "certificate-authority": "ca.crt",
        "tls-server-name": "kubernetes.default",
        "extensions": [
            {"name": "client.authentication.k8s.io/exec", "extension": {"audience": "payloadtags"}}
        ],
    }
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(script),
            "interactiveMode": "Never",
            "provideClusterInfo": True,
        }
    }
    path = tmp_path / "kc"
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    config = load_cluster_config(str(path))
    assert config is not None and config.exec_plugin is not None
    assert json.loads((tmp_path / "seen").read_text())["spec"] == {
        "interactive": False,
        "cluster": {
            "server": SERVER,
            "tls-server-name": "kubernetes.default",
            "certificate-authority-data": base64.b64encode(ca.cert_file.read_bytes()).decode(),
            "config": {"audience": "payloadtags"},
        },
    }
    # A renewal reads the file again: a rotated CA bundle reaches the plugin.
    rotated = Authority.create(tmp_path / "rotated", "rotated").cert_file.read_bytes()
    (tmp_path / "ca.crt").write_bytes(rotated)
    info = json.loads(config.exec_plugin.environment({})["KUBERNETES_EXEC_INFO"])
    assert info["spec"]["cluster"]["certificate-authority-data"] == base64.b64encode(rotated).decode()
    # As client-go, a CA that cannot be read fails the run instead of leaving the CA out.
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(PluginError, match=r"cannot read the cluster's CA bundle: .*ca\.crt"):
        config.exec_plugin.environment({})
    # A renewal on the reactor fails its result (the token source turns it into a 503), not the caller.
    renewal = run_plugin(NoProcesses(), config.exec_plugin)
    errors: list[Failure] = []
    renewal.addErrback(errors.append)
    assert len(errors) == 1 and errors[0].check(PluginError)


class NoProcesses:
    """A reactor for a plugin run that must fail before any process is started."""

    def spawnProcess(self, *_args: object, **_kwargs: object) -> None:
        raise AssertionError("no process should be started")

    def callLater(self, *_args: object) -> None:
        raise AssertionError("no timer should be started")


def test_an_exec_plugin_that_needs_a_terminal_is_refused_at_load(tmp_path: Path) -> None:
    # client-go refuses to run an interactiveMode Always plugin without a terminal; a server has none.
    script = plugin(tmp_path / "plugin", "touch ran\n")
    exec_section = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(script),
        "interactiveMode": "Always",
    }
    with pytest.raises(
        ConfigError, match=re.escape(f"exec plugin {script}: interactiveMode Always needs a terminal")
    ):
        load_cluster_config(str(kubeconfig_with_user(tmp_path / "kc", {"exec": exec_section})))
    assert not (tmp_path / "ran").exists()


# "\n" and "\r\n" decode to nothing for Go's base64, which skips line ends (review-opscheck2 F5).
@pytest.mark.parametrize("empty", ["", None, "\n", "\r\n"])
def test_an_empty_or_null_data_key_beside_its_file_is_absent_as_in_client_go(
    tmp_path: Path, ca: Authority, empty: str | None
) -> None:
    # The library ignores a file whenever its -data key exists: the pinned CA would give way to the
    # system trust store, and the client certificate to an anonymous connection (review-opscheck K2, K6).
    client = ca.client("alice")
    path = write_kubeconfig(tmp_path / "kc", SERVER, ca.cert_file.read_bytes(), client=client, inline=False)
    document = json.loads(path.read_text())
    document["clusters"][0]["cluster"]["certificate-authority-data"] = empty
    document["users"][0]["user"].update({"client-certificate-data": empty, "client-key-data": empty})
    path.write_text(json.dumps(document))
    config = load_cluster_config(str(path))
    assert config is not None
    assert config.ca_file == str(tmp_path / "kc-ca.crt")
    assert (config.client_cert_file, config.client_key_file) == (
        str(tmp_path / "kc-client.crt"),
        str(tmp_path / "kc-client.key"),
    )


def kubectl_refusal(path: Path) -> str:
    """The real kubectl's stderr for a request with the kubeconfig, to a server that is not there: a
    kubeconfig it takes ends in "The connection to the server ... was refused", one it refuses in its
    own words."""
    done = version_with(path, "2s", HANG_GUARD)
    assert done.returncode != 0
    return done.stderr


def both_kubeconfig(tmp_path: Path, ca: Authority, cluster: dict[str, str], user: dict[str, object]) -> Path:
    """A kubeconfig whose fields name the CA's and alice's PEM files ("ca", "cert", "key") or their data
    ("ca-data", ...), beside an exec plugin that records whether it ran (kubectl runs none beside a
    client certificate with its key, nor for a kubeconfig it refuses)."""
    alice = ca.client("alice")
    pems = {"ca": ca.cert_file, "cert": alice.cert_file, "key": alice.key_file}
    values = {name: str(pem) for name, pem in pems.items()}
    values |= {f"{name}-data": base64.b64encode(pem.read_bytes()).decode() for name, pem in pems.items()}
    script = plugin(tmp_path / "plugin", "touch ran\nexit 1\n")
    exec_section = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(script),
        "interactiveMode": "Never",
    }
    path = tmp_path / "kc"
    path.write_text(
        json.dumps(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": SERVER} | {k: values.get(v, v) for k, v in cluster.items()},
                    }
                ],
                "users": [
                    {
                        "name": "u",
                        "user": {"exec": exec_section}
                        | {k: values.get(v, v) if isinstance(v, str) else v for k, v in user.items()},
                    }
                ],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("cluster", "user", "refused", "kubectl_says"),
    [
        (
            {},
            {"client-certificate": "cert", "client-certificate-data": "cert-data", "client-key": "key"},
            'user "u": client-certificate and client-certificate-data are both given',
            "client-cert-data and client-cert are both specified for u. client-cert-data will override.",
        ),
        (
            {},
            {"client-certificate": "cert", "client-key": "key", "client-key-data": "key-data"},
            'user "u": client-key and client-key-data are both given',
            "client-key-data and client-key are both specified for u; client-key-data will override",
        ),
        (
            {},
            {
                "client-certificate": "cert",
                "client-certificate-data": "cert-data",
                "client-key": "key",
                "client-key-data": "key-data",
            },
            'user "u": client-certificate and client-certificate-data; client-key and client-key-data are '
            "both given",
            "client-key-data and client-key are both specified for u; client-key-data will override",
        ),
        (
            {"certificate-authority": "ca", "certificate-authority-data": "ca-data"},
            {"token": "tok"},
            'cluster "c": certificate-authority and certificate-authority-data are both given',
            "certificate-authority-data and certificate-authority are both specified for c. "
            "certificate-authority-data will override.",
        ),
    ],
    ids=["client-certificate", "client-key", "both-pairs", "certificate-authority"],
)
def test_a_file_beside_its_data_is_refused_in_one_line_as_kubectl_refuses_it(
    tmp_path: Path,
    ca: Authority,
    cluster: dict[str, str],
    user: dict[str, object],
    refused: str,
    kubectl_says: str,
) -> None:
    # The library took the data silently, so which certificate, key or CA was used was its choice;
    # kubectl 1.32 refuses the file, running no plugin (review r2e L1).
    path = both_kubeconfig(tmp_path, ca, cluster, user)
    assert kubectl_says in kubectl_refusal(path)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f"kubeconfig {str(path)!r}: {refused}, which kubectl refuses: give the file or the data"
    )
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    ("cluster", "user"),
    [
        ({}, {"client-certificate": "", "client-certificate-data": "cert-data", "client-key": "key"}),
        ({}, {"client-certificate": "cert", "client-certificate-data": "", "client-key": "key"}),
        ({}, {"client-certificate": "cert", "client-key": None, "client-key-data": "key-data"}),
        ({"certificate-authority": "", "certificate-authority-data": "ca-data"}, {"token": "tok"}),
        ({"certificate-authority": "ca", "certificate-authority-data": "\n"}, {"token": "tok"}),
    ],
)
def test_an_empty_file_or_data_beside_the_other_is_absent_as_in_kubectl(
    tmp_path: Path, ca: Authority, cluster: dict[str, str], user: dict[str, object]
) -> None:
    path = both_kubeconfig(tmp_path, ca, cluster, user)
    assert "was refused - did you specify the right host or port?" in kubectl_refusal(path)
    config = load_cluster_config(str(path))
    assert config is not None
    assert not (tmp_path / "ran").exists()


def test_a_key_as_file_and_data_without_a_certificate_is_refused_as_a_key_alone(
    tmp_path: Path, ca: Authority
) -> None:
    # client-go checks the key's pair only beside a certificate, and ignores a key alone (kubectl sends
    # the token); payloadtags refuses a key alone, as docs/kubeconfig.md says, in those words.
    path = both_kubeconfig(
        tmp_path, ca, {}, {"token": "tok", "client-key": "key", "client-key-data": "key-data"}
    )
    assert "was refused - did you specify the right host or port?" in kubectl_refusal(path)
    with pytest.raises(ConfigError, match="a client certificate needs its key, and a key its certificate"):
        load_cluster_config(str(path))


@pytest.mark.parametrize("data", [" ", "=", "====", "not base64!"])
@pytest.mark.parametrize("key", ["certificate-authority-data", "client-certificate-data", "client-key-data"])
def test_a_data_key_that_is_not_base64_is_refused_naming_it(tmp_path: Path, key: str, data: str) -> None:
    # As kubectl ("illegal base64 data"): it was refused as a file holding no PEM certificate, a file
    # the user never named (review-opscheck2 F5).
    document = {
        "clusters": [{"name": "c", "cluster": {"server": SERVER}}],
        "users": [{"name": "u", "user": {"token": "tok"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    section = document["clusters" if key.startswith("certificate") else "users"][0]
    section["cluster" if key.startswith("certificate") else "user"][key] = data  # type: ignore[index]
    path = tmp_path / "kc"
    path.write_text(json.dumps(document))
    where = 'cluster "c"' if key.startswith("certificate") else 'user "u"'
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == f"kubeconfig {str(path)!r}: {where}: {key} is not valid base64"


def yaml_kubeconfig(path: Path, cluster_lines: str) -> Path:
    path.write_text(
        "clusters:\n- name: c\n  cluster:\n    server: " + SERVER + "\n" + cluster_lines + "users:\n"
        "- name: u\n  user: {token: tok}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n"
        "current-context: x\n"
    )
    return path


@pytest.mark.parametrize(("spelling", "insecure"), [("y", True), ("Y", True), ("n", False), ("N", False)])
def test_one_letter_booleans_are_read_as_kubectl_reads_them(
    tmp_path: Path, spelling: str, insecure: bool
) -> None:
    # kubectl's go-yaml v2 reads y/n as booleans, where PyYAML keeps them strings (review-opscheck K8).
    path = yaml_kubeconfig(tmp_path / "kc", f"    insecure-skip-tls-verify: {spelling}\n")
    assert load_cluster_config(str(path)) == ClusterConfig(
        SERVER, token="tok", insecure_skip_tls_verify=insecure
    )
    # Quoted, it is a string to kubectl too, and refused by both.
    yaml_kubeconfig(path, f'    insecure-skip-tls-verify: "{spelling}"\n')
    with pytest.raises(ConfigError, match="insecure-skip-tls-verify must be true or false, not a string"):
        load_cluster_config(str(path))


@pytest.mark.parametrize("spelling", ["y", "n", "Y", "yes", "off", "true"])
def test_boolean_spellings_elsewhere_are_kept_as_written(tmp_path: Path, spelling: str) -> None:
    # Only a boolean field reads them as booleans, as sigs.k8s.io/yaml decodes to the field's type: a
    # context namespace "y" went to namespace "True" (review-opscheck2 F3). (kubectl refuses the file; a
    # plugin's argument or environment value so written is refused, below.)
    script = plugin(
        tmp_path / "plugin",
        'echo "$@|$FLAG|$KUBERNETES_EXEC_INFO" > seen\n'
        'echo \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"tok"}}\'\n',
    )
    path = tmp_path / "kc"
    path.write_text(
        "clusters:\n- name: c\n  cluster:\n    server: " + SERVER + "\n    insecure-skip-tls-verify: y\n"
        "    disable-compression: Y\n"
        "users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
        f"      command: {script}\n      args: [--verbose]\n"
        "      env: [{name: FLAG, value: x}]\n      provideClusterInfo: y\n"
        f"contexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: {spelling}}}\n"
        "current-context: x\n"
    )
    config = load_cluster_config(str(path))
    assert config is not None and config.exec_plugin is not None
    assert config.namespace == spelling
    args, flag, info = (tmp_path / "seen").read_text().strip().split("|")
    assert (args, flag) == ("--verbose", "x")
    # The boolean fields are booleans, for the plugin too.
    assert json.loads(info)["spec"]["cluster"] == {
        "server": SERVER,
        "insecure-skip-tls-verify": True,
        "disable-compression": True,
    }
    assert config.insecure_skip_tls_verify
    # A string field that is checked refuses them, as client-go refuses a boolean there.
    yaml_kubeconfig(path, f"    tls-server-name: {spelling}\n")
    with pytest.raises(ConfigError, match="tls-server-name must be a string, not a boolean"):
        load_cluster_config(str(path))


@pytest.mark.parametrize(
    "lines",
    [
        "    insecure-skip-tls-verify: null\n",
        "    insecure-skip-tls-verify:\n",
        "    tls-server-name: null\n",
        '    certificate-authority: ""\n',
        "    certificate-authority-data: ~\n",
    ],
)
def test_null_and_empty_fields_are_absent_as_in_kubectl(tmp_path: Path, lines: str) -> None:
    # The library refused these in its own words, or took "" as the kubeconfig's folder (review-opscheck K8).
    path = yaml_kubeconfig(tmp_path / "kc", lines)
    assert load_cluster_config(str(path)) == ClusterConfig(SERVER, token="tok")


def test_a_server_url_is_shown_without_its_credentials() -> None:
    # A kubeconfig's server with userinfo is refused at start (tests/unit/test_startup.py); whatever
    # still prints a server never prints a password (review-opscheck K5).
    assert "PASSWORD" not in repr(ClusterConfig("https://admin:PASSWORD@kube.example:6443"))
    assert "https://<redacted>@kube.example:6443" in repr(
        ClusterConfig("https://admin:PASSWORD@kube.example:6443")
    )
    with pytest.raises(ValueError) as raised:
        ClusterConfig("ftp://admin:PASSWORD@kube.example")
    # Only http(s):// opens the authority: "ftp:" could be a user name (review r2f F1).
    assert str(raised.value) == "cluster server must be an http(s) URL, not '<redacted>@kube.example'"
    # An '@' after a '/', '?' or '#' may end a password that holds them (review-opscheck2 F1).
    for server in ("https://admin:PASS/WORD@kube.example", "https://a:PASS?WORD@kube.example"):
        assert repr(ClusterConfig(server)).count("WORD") == 0
        assert "https://<redacted>@kube.example" in repr(ClusterConfig(server))


ALIASED_HEAD = (
    "clusters:\n- name: c\n  cluster: {server: " + SERVER + ", insecure-skip-tls-verify: true}\n"
    "users:\n- name: u\n  user: {token: tok}\n"
    "contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n"
)


def test_an_anchor_that_contains_itself_is_refused_in_one_line(tmp_path: Path) -> None:
    # As kubectl's go-yaml ("anchor 'p' value contains itself"): walked to find its booleans, it was a
    # RecursionError traceback at start, even under a key nobody reads (review-opscheck3 F4).
    path = tmp_path / "kc"
    path.write_text(ALIASED_HEAD + "preferences: &p\n  extensions:\n  - name: loop\n    extension: *p\n")
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f"cannot read kubeconfig {str(path)!r}: a YAML anchor's value contains itself (an alias inside "
        "it names it)"
    )


def test_excessive_aliasing_is_refused_in_one_line_without_expanding_it(tmp_path: Path) -> None:
    # As kubectl's go-yaml ("document contains excessive aliasing"): nested aliases were walked once
    # per reference, 10**6 of them here, and each level more made start ten times slower.
    lines = "preferences:\n  extensions:\n  - name: l0\n    extension: &l0 [y, y, y, y, y, y, y, y, y, y]\n"
    for level in range(1, 7):
        lines += (
            f"  - name: l{level}\n    extension: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]\n"
        )
    path = tmp_path / "kc"
    path.write_text(ALIASED_HEAD + lines)
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    # Refused where go-yaml refuses it, past the first level that makes over 99% of what was decoded.
    assert re.fullmatch(
        re.escape(f"cannot read kubeconfig {str(path)!r}: the document contains excessive aliasing ")
        + r"\(aliases expand it to over \d+ nodes\)",
        str(raised.value),
    )


def test_aliases_as_kubeconfigs_use_them_are_read(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text(
        "clusters:\n- name: c\n  cluster: &c {server: " + SERVER + ", insecure-skip-tls-verify: y}\n"
        "- name: d\n  cluster: *c\n"
        "users:\n- name: u\n  user: &u {token: tok}\n- name: v\n  user: *u\n"
        "contexts:\n- name: x\n  context: {cluster: d, user: v, namespace: &n y}\n"
        "- name: z\n  context: {cluster: c, user: u, namespace: *n}\ncurrent-context: x\n"
    )
    assert load_cluster_config(str(path)) == ClusterConfig(
        SERVER, token="tok", insecure_skip_tls_verify=True, namespace="y"
    )


def test_the_exec_extension_reaches_the_plugin_as_kubectl_sends_it(tmp_path: Path) -> None:
    # The extension is free-form (a RawExtension): kubectl sends go-yaml's booleans as JSON booleans
    # (they were sent as the text written: "y", "true"), numbers as numbers, and a date-like value as
    # the text written (PyYAML's date crashed start with a TypeError) (review-opscheck3 F2, F5).
    script = plugin(
        tmp_path / "plugin",
        'echo "$KUBERNETES_EXEC_INFO" > seen\n'
        'echo \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"tok"}}\'\n',
    )
    path = tmp_path / "kc"
    path.write_text(
        "clusters:\n- name: c\n  cluster:\n    server: " + SERVER + "\n    insecure-skip-tls-verify: true\n"
        "    extensions:\n    - name: client.authentication.k8s.io/exec\n      extension:\n"
        "        verbose: true\n        audit: y\n        quiet: off\n        quoted: 'y'\n        count: 3\n"
        "        since: 2024-01-01\n        at: 2024-01-01 10:00:00\n        nested: {list: [n, Yes, 1.5]}\n"
        "users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
        f"      command: {script}\n      provideClusterInfo: true\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u, namespace: 2024-01-01}\ncurrent-context: x\n"
    )
    config = load_cluster_config(str(path))
    assert config is not None and config.namespace == "2024-01-01"
    assert json.loads((tmp_path / "seen").read_text())["spec"]["cluster"]["config"] == {
        "verbose": True,
        "audit": True,
        "quiet": False,
        "quoted": "y",
        "count": 3,
        "since": "2024-01-01",
        "at": "2024-01-01 10:00:00",
        "nested": {"list": [False, True, 1.5]},
    }


@pytest.mark.parametrize("value", ['"false"', '"true"', "'y'", "1", "[true]"])
def test_provide_cluster_info_that_is_not_a_boolean_is_refused(tmp_path: Path, value: str) -> None:
    # kubectl: "cannot unmarshal string into Go struct field ExecConfig...provideClusterInfo of type
    # bool"; any truthy value handed the plugin the cluster's details, "false" included (review-opscheck3 F3).
    path = tmp_path / "kc"
    path.write_text(
        "clusters:\n- name: c\n  cluster: {server: " + SERVER + ", insecure-skip-tls-verify: true}\n"
        "users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
        f"      command: /bin/false\n      provideClusterInfo: {value}\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n"
    )
    with pytest.raises(
        ConfigError, match=r'user "u": exec: provideClusterInfo must be true or false, not a '
    ):
        load_cluster_config(str(path))


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_wrapped_base64_data_is_read_as_kubectl_reads_it(
    tmp_path: Path, ca: Authority, line_end: str
) -> None:
    # Go's base64 skips line ends: `base64` without -w0 wraps at 76 columns, and kubectl takes it
    # (review-opscheck3 F6: nothing failed if the check read the value with its line ends).
    encoded = base64.b64encode(ca.cert_file.read_bytes()).decode()
    wrapped = line_end.join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + line_end
    path = tmp_path / "kc"
    path.write_text(
        json.dumps(
            {
                "clusters": [
                    {"name": "c", "cluster": {"server": SERVER, "certificate-authority-data": wrapped}}
                ],
                "users": [{"name": "u", "user": {"token": "tok"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    config = load_cluster_config(str(path))
    assert config is not None and config.ca_file is not None
    assert Path(config.ca_file).read_bytes() == ca.cert_file.read_bytes()


@pytest.mark.parametrize("value", ['"false"', '"true"', "0", "[false]"])
def test_disable_compression_that_is_not_a_boolean_is_refused(tmp_path: Path, value: str) -> None:
    # As client-go, which refuses the file (review-opscheck3 F6: nothing failed without the check).
    path = yaml_kubeconfig(tmp_path / "kc", f"    disable-compression: {value}\n")
    with pytest.raises(ConfigError, match='cluster "c": disable-compression must be true or false, not a'):
        load_cluster_config(str(path))


# A plugin that records what it was given, exactly: its argv (empty arguments included), $FOO, its working
# directory and KUBERNETES_EXEC_INFO as sent.
RECORDING_PLUGIN = """#!{python}
import json, os, sys
with open({seen!r}, "w") as seen:
    json.dump({{"argv": sys.argv[1:], "FOO": os.environ.get("FOO"), "cwd": os.getcwd(),
               "info": os.environ["KUBERNETES_EXEC_INFO"]}}, seen)
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": "tok"}}}}))
"""


def exec_kubeconfig(
    folder: Path, *, extension: str = "{}", args: str = "[]", env: str = "[]", tail: str = ""
) -> Path:
    """A kubeconfig in ``folder/conf`` whose user runs the recording plugin ``folder/plugin``, named
    relative to the kubeconfig (``../plugin``), with the cluster's exec extension (a YAML block, each line
    indented under ``extension:``), ``args`` and ``env`` as YAML text."""
    (folder / "plugin").write_text(RECORDING_PLUGIN.format(python=sys.executable, seen=str(folder / "seen")))
    (folder / "plugin").chmod(0o755)
    indented = "".join(f"        {line}\n" for line in extension.splitlines())
    path = folder / "conf" / "kc"
    path.parent.mkdir()
    path.write_text(
        "clusters:\n- name: c\n  cluster:\n    server: " + SERVER + "\n    insecure-skip-tls-verify: true\n"
        "    extensions:\n    - name: client.authentication.k8s.io/exec\n      extension:\n"
        + indented
        + "users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
        "      command: ../plugin\n      provideClusterInfo: true\n"
        f"      args: {args}\n      env: {env}\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n" + tail
    )
    return path


def seen_by_plugin(folder: Path) -> dict[str, Any]:
    seen: dict[str, Any] = json.loads((folder / "seen").read_text())
    return seen


def extension_sent(folder: Path) -> object:
    return json.loads(seen_by_plugin(folder)["info"])["spec"]["cluster"]["config"]


def test_tagged_values_in_the_exec_extension_reach_the_plugin_as_kubectl_sends_them(tmp_path: Path) -> None:
    # Each as kubectl 1.32 sends it (review-ops F1): PyYAML's dates, bytes, sets and pairs ended the start
    # in a TypeError traceback out of json.dumps, and an unknown local tag was refused.
    path = exec_kubeconfig(
        tmp_path,
        extension="since: !!timestamp 2024-01-01\nat: !!timestamp 2024-01-01T10:00:00Z\n"
        "blob: !!binary aGVsbG8=\nwrapped: !!binary |\n  aGVs\n  bG8=\nraw: !!binary /w==\n"
        "set: !!set {a, b}\nomap: !!omap [{x: 1}, {y: 2}]\npairs: !!pairs [{x: 1}, {x: 1}]\n"
        "local: !thing text\nlocalmap: !thing {a: 1}\n? !!binary aGk=\n: key\n"
        "keys: {1: a, true: b, 1.5: c, y: d, 2: e, 0x2: f}",
    )
    assert load_cluster_config(str(path)) is not None
    assert extension_sent(tmp_path) == {
        "since": "2024-01-01",
        "at": "2024-01-01T10:00:00Z",
        "blob": "hello",
        "wrapped": "hello",
        "raw": "\ufffd",
        "set": {"a": None, "b": None},
        "omap": [{"x": 1}, {"true": 2}],
        "pairs": [{"x": 1}, {"x": 1}],
        "local": "text",
        "localmap": {"a": 1},
        "hi": "key",
        "keys": {"1": "a", "true": "d", "1.5": "c", "2": "f"},
    }


# Plain scalars and what kubectl 1.32 sends for them in an extension: go-yaml v2 has no base 60 (YAML
# 1.1's 1:20 was sent as 80), reads 1e3, 0o17 and 08 as numbers (they were sent as text), skips
# underscores, and a whole float reaches the plugin as Go's JSON writes it, without a fraction.
GO_NUMBERS: list[tuple[str, object]] = [
    ("1:20", "1:20"),
    ("1:20.5", "1:20.5"),
    ("-1:30", "-1:30"),
    ("1e3", 1000),
    ("0o17", 15),
    ("017", 15),
    ("08", 8),
    ("1_000", 1000),
    ("0b101", 5),
    ("-0b101", -5),
    ("+12", 12),
    (".5", 0.5),
    (".5_0", 0.5),
    ("1.", 1),
    ("0x_1F", 31),
    ("12345678901234567890", 12345678901234567890),
    ("99999999999999999999", 100000000000000000000),
    ("-9223372036854775809", -9223372036854776000),
    ("1.0e21", 1e21),
    ("1e999", "1e999"),
    ("0x", "0x"),
    ("_1", "_1"),
    ("=", "="),
]


def test_numbers_in_the_exec_extension_are_read_as_go_yaml_reads_them(tmp_path: Path) -> None:
    # (review-ops F3); n is a key go-yaml reads as false.
    path = exec_kubeconfig(tmp_path, extension="n: [" + ", ".join(text for text, _ in GO_NUMBERS) + "]")
    assert load_cluster_config(str(path)) is not None
    assert extension_sent(tmp_path) == {"false": [sent for _, sent in GO_NUMBERS]}
    assert '"false": ["1:20", "1:20.5", "-1:30", 1000, 15,' in seen_by_plugin(tmp_path)["info"]


@pytest.mark.parametrize(
    ("extension", "problem"),
    [
        ("limit: .inf", "limit: json: unsupported value: .inf"),
        ("limit: -.Inf", "limit: json: unsupported value: -.Inf"),
        ("limit: .nan", "limit: json: unsupported value: .nan"),
        ("limit: !!binary '!!!'", "limit: !!binary value contains invalid base64 data"),
        ("limit: !!binary aGVs bG8=", "limit: !!binary value contains invalid base64 data"),
        ("limit: !!timestamp soon", "limit: cannot decode !!str as a !!timestamp"),
        # go-yaml's time.Parse refuses an hour, a minute or a second out of range.
        ("limit: !!timestamp 2024-01-01T24:00:00Z", "limit: cannot decode !!str as a !!timestamp"),
        ("limit: !!timestamp 2024-01-01T10:60:00Z", "limit: cannot decode !!str as a !!timestamp"),
        ("limit: !!timestamp 2024-01-01 10:00:60", "limit: cannot decode !!str as a !!timestamp"),
        ("limit: !!int 1:20", "limit: cannot decode !!str as a !!int"),
    ],
)
def test_values_kubectl_cannot_read_are_refused_in_one_line(
    tmp_path: Path, extension: str, problem: str
) -> None:
    # As kubectl 1.32 refuses them ("error loading config file"): a non-finite number reached the plugin
    # as a bare Infinity, which no JSON decoder reads (review-ops F4); the others were tracebacks (F1).
    path = exec_kubeconfig(tmp_path, extension=extension)
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == f"cannot read kubeconfig {str(path)!r}: {problem} at line 9, column 16"
    assert not (tmp_path / "seen").exists()


def test_exec_args_and_env_values_are_read_as_kubectl_reads_them(tmp_path: Path) -> None:
    # kubectl 1.32: a null argument or environment value is empty (they were the text "None", review-ops
    # F2), and 1:20 is the text written (it was 80, F3); a tagged value is its text, as go-yaml's.
    path = exec_kubeconfig(
        tmp_path,
        args="[a, ~, '', 1:20, !!binary aGk=, !!timestamp 2024-01-01]",
        env="[{name: FOO, value: ~}, {name: BAR, value: 10:30}]",
    )
    config = load_cluster_config(str(path))
    assert config is not None and config.exec_plugin is not None
    assert config.exec_plugin.env == (("FOO", ""), ("BAR", "10:30"))
    assert (seen_by_plugin(tmp_path)["argv"], seen_by_plugin(tmp_path)["FOO"]) == (
        ["a", "", "", "1:20", "hi", "2024-01-01"],
        "",
    )
    # An empty value, as written by kubectl's own `config set-credentials --exec-env=FOO=`.
    (tmp_path / "empty").mkdir()
    empty = exec_kubeconfig(tmp_path / "empty", env="[{name: FOO, value: }]")
    assert load_cluster_config(str(empty)) is not None
    assert seen_by_plugin(tmp_path / "empty")["FOO"] == ""


def _refused_without_the_value(tmp_path: Path, path: Path, problem: str) -> None:
    """The kubeconfig at ``path`` is refused with ``problem`` in one line that never shows the value
    (``s3cr3t``), and the plugin never ran."""
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == f'kubeconfig {str(path)!r}: user "u": exec: {problem}'
    assert "s3cr3t" not in str(raised.value)
    assert not (tmp_path / "seen").exists()


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        ("'--client-secret=s3cr3t'", "[]", "args must be a list of strings, not a string"),
        ("{a: b}", "[]", "args must be a list of strings, not a mapping"),
        ("[--port, 8080]", "[]", "args[1] must be a string, not a number"),
        ("[[a]]", "[]", "args[0] must be a string, not a list"),
        ("[]", "{FOO: x}", "env must be a list of name and value pairs, not a mapping"),
        ("[]", "[FOO]", "env[0] must be a mapping with a name and a value, not a string"),
        ("[]", "[{name: FOO, value: 8080}]", 'env "FOO": value must be a string, not a number'),
        ("[]", "[{name: FOO, value: [x]}]", 'env "FOO": value must be a string, not a list'),
        ("[]", "[{value: x}]", "env[0]: name must be a non-empty string, not null"),
        ("[]", "[{name: 1, value: x}]", "env[0]: name must be a non-empty string, not a number"),
        # client-go: "env variable name must be specified".
        ("[]", "[{name: '', value: x}]", "env[0]: name must be a non-empty string, not an empty one"),
    ],
)
def test_exec_args_and_env_of_the_wrong_shape_are_refused_as_kubectl_refuses_them(
    tmp_path: Path, args: str, env: str, problem: str
) -> None:
    # kubectl 1.32: "cannot unmarshal string into Go struct field ExecConfig.users.user.exec.args of type
    # []string", and so on. A string was run as one argument per character, a number as Python's text of
    # it (1.10 as 1.1), a mapping as its keys (review-ops F7); the value is never shown, it may be a secret.
    path = exec_kubeconfig(tmp_path, args=args, env=env)
    _refused_without_the_value(tmp_path, path, problem)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("'../plugin --client-secret=s3cr3t'", "string"),
        ("''", "string"),
        ("[../plugin, --client-secret=s3cr3t]", "array"),
        ("[]", "array"),
        ("3", "number"),
        ("true", "bool"),
    ],
)
def test_an_exec_that_is_not_a_mapping_is_refused_in_one_line_as_kubectl_refuses_it(
    tmp_path: Path, value: str, kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # It was read: the library made a plugin of it, failed (TypeError) and logged
    # "ERROR:root:string indices must be integers" while the start went on without it (report-r2c L1).
    path = exec_kubeconfig(tmp_path)
    path.write_text(re.sub(r"    exec:\n(      .*\n)+", f"    exec: {value}\n", path.read_text()))
    refused = kubectl_view(path)
    assert isinstance(refused, str), refused
    assert f"cannot unmarshal {kind} into Go struct field AuthInfo.users.user.exec" in refused
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    said = {"string": "a string", "array": "a list", "number": "a number", "bool": "a boolean"}[kind]
    assert str(raised.value) == f'kubeconfig {str(path)!r}: user "u": exec must be a mapping, not {said}'
    assert "s3cr3t" not in str(raised.value)
    assert "ERROR" not in capfd.readouterr().err
    assert not (tmp_path / "seen").exists()


def test_the_plugin_runs_in_the_callers_directory_its_relative_command_found_beside_the_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As client-go: a relative command is resolved against the kubeconfig's folder, and the plugin runs in
    # the caller's working directory, where a relative file in its args is found (it ran in the
    # kubeconfig's folder, review-ops F8). The same for a renewal on the reactor.
    here = tmp_path / "here"
    here.mkdir()
    path = exec_kubeconfig(tmp_path)
    monkeypatch.chdir(here)
    config = load_cluster_config(str(path))
    assert config is not None and config.exec_plugin is not None
    assert seen_by_plugin(tmp_path)["cwd"] == str(here)
    spawned = RecordingProcesses()
    run_plugin(spawned, config.exec_plugin)
    assert spawned.calls[0]["argv"] == [str(tmp_path / "conf" / ".." / "plugin")]
    assert spawned.calls[0]["path"] is None


class RecordingProcesses:
    """A reactor that records the processes it is asked to start, and starts none."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def spawnProcess(self, _protocol: object, executable: str, argv: list[str], **kwargs: object) -> None:
        self.calls.append({"executable": executable, "argv": argv, "path": kwargs.get("path")})

    def callLater(self, *_args: object) -> DelayedCallStub:
        return DelayedCallStub()


class DelayedCallStub:
    def active(self) -> bool:
        return False


@pytest.mark.parametrize("tail", ["---\n", "...\n", "---\nclusters: []\n", "---\n[not, a, kubeconfig\n"])
def test_what_follows_the_first_document_is_not_read_as_in_kubectl(tmp_path: Path, tail: str) -> None:
    # go-yaml's Unmarshal reads the first document: a trailing --- (common in templated files) or a second
    # document was refused (review-ops F5).
    path = exec_kubeconfig(tmp_path, tail=tail)
    config = load_cluster_config(str(path))
    assert config is not None and config.token == "tok"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_a_utf16_kubeconfig_with_its_byte_order_mark_is_read_as_in_kubectl(
    tmp_path: Path, encoding: str
) -> None:
    # What PowerShell 5's > writes; go-yaml, like PyYAML given bytes, reads the encoding from the mark. It
    # was refused: "'utf-8' codec can't decode byte 0xff in position 0" (review-ops F6).
    path = exec_kubeconfig(tmp_path)
    path.write_bytes(("\ufeff" + path.read_text()).encode(encoding))
    config = load_cluster_config(str(path))
    assert config is not None and config.token == "tok"
    # Without the mark, what is not UTF-8 is refused in one line, as before.
    path.write_bytes(b"clusters: [\xff]\n")
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f"cannot read kubeconfig {str(path)!r}: 'utf-8' codec can't decode byte 0xff in position 11: invalid "
        "start byte"
    )


def aliased(width: int, inner: int, outer: int) -> str:
    """Preferences holding a list of ``width`` scalars (&a), a list of ``inner`` aliases of it (&b) and a
    list of ``outer`` aliases of that."""
    return ALIASED_HEAD + (
        "preferences:\n  extensions:\n  - name: a\n    extension: &a [" + ", ".join(["x"] * width) + "]\n"
        "  - name: b\n    extension: &b [" + ", ".join(["*a"] * inner) + "]\n"
        "  - name: c\n    extension: [" + ", ".join(["*b"] * outer) + "]\n"
    )


@pytest.mark.parametrize(
    ("width", "inner", "outer"),
    # Aliases make 91%, 98.6% and 98.98% of the nodes go-yaml decodes here, the last just below its bound
    # (99% up to 400,000 nodes, counted as it decodes: an alias's own node, then its value again), and
    # kubectl 1.32 reads them all. A wrong threshold (10%) refused the first (review-ops F9), and the
    # count of aliases as the nodes beyond those written the other two.
    [(20, 1, 60), (10, 10, 100), (10, 11, 200)],
)
def test_aliases_below_go_yamls_bound_are_read(tmp_path: Path, width: int, inner: int, outer: int) -> None:
    path = tmp_path / "kc"
    path.write_text(aliased(width, inner, outer))
    assert load_cluster_config(str(path)) == ClusterConfig(SERVER, token="tok", insecure_skip_tls_verify=True)


@pytest.mark.parametrize(("width", "inner", "outer"), [(10, 12, 200), (10, 100, 100)])
def test_aliases_just_past_go_yamls_bound_are_refused(
    tmp_path: Path, width: int, inner: int, outer: int
) -> None:
    # Aliases make over 99% of these (99.06% of the first, one alias more in each of 200 than the last
    # above): kubectl 1.32 refuses both ("document contains excessive aliasing").
    path = tmp_path / "kc"
    path.write_text(aliased(width, inner, outer))
    with pytest.raises(ConfigError, match="the document contains excessive aliasing"):
        load_cluster_config(str(path))


def test_a_document_nested_too_deeply_is_refused_in_one_line(tmp_path: Path) -> None:
    # kubectl 1.32 refuses this too ("exceeded max depth of 10000"); PyYAML's RecursionError was a
    # traceback (review-ops F9: nothing failed without its catch).
    path = exec_kubeconfig(tmp_path, extension="deep: " + "[" * 10_001 + "]" * 10_001)
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == f"cannot read kubeconfig {str(path)!r}: the document is nested too deeply"


def test_a_null_entry_in_a_list_of_clusters_users_or_contexts_is_skipped_as_in_kubectl(
    tmp_path: Path,
) -> None:
    # kubectl 1.32 reads this file; it was refused: "argument of type 'NoneType' is not iterable".
    path = tmp_path / "kc"
    path.write_text(
        "clusters:\n- ~\n- name: c\n  cluster: {server: "
        + SERVER
        + "}\nusers:\n- ~\n- name: u\n  user: {token: tok}\n"
        "contexts:\n- ~\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n"
    )
    assert load_cluster_config(str(path)) == ClusterConfig(SERVER, token="tok")


@pytest.mark.parametrize("written", ["08", "1e3", "0o17", "007", "0755", "12"])
def test_a_namespace_written_as_a_number_is_refused_as_kubectl_refuses_it(
    tmp_path: Path, written: str
) -> None:
    # kubectl 1.32: "cannot unmarshal number into Go struct field Context.contexts.context.namespace of type
    # string". It was the number's re-spelling (08 as "8", 1e3 as "1000"), the leader-election Lease's
    # namespace out of a pod (review-ops2 F2).
    path = tmp_path / "kc"
    path.write_text(
        ALIASED_HEAD.replace("{cluster: c, user: u}", "{cluster: c, user: u, namespace: " + written + "}")
    )
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert (
        str(raised.value)
        == f'kubeconfig {str(path)!r}: context "x": namespace must be a string, not a number'
    )


@pytest.mark.parametrize("field", ["token", "password", "client-key-data", "username"])
@pytest.mark.parametrize(
    ("written", "problem"),
    [
        ("*Pa55w0rd-s3cret", "an alias (*…) names no anchor (quote the value if it is text)"),
        ("!!int s3cret", "cannot decode !!str as a !!int"),
        ("!!float s3cret", "cannot decode !!str as a !!float"),
        ("!!bool s3cret", "cannot decode !!str as a !!bool"),
        ("!!null s3cret", "cannot decode !!str as a !!null"),
        ("!!timestamp s3cret", "cannot decode !!str as a !!timestamp"),
    ],
)
def test_a_credential_kubectl_cannot_read_is_refused_without_showing_it(
    tmp_path: Path, field: str, written: str, problem: str
) -> None:
    # An unquoted password beginning with "*" is an alias, a tagged one is decoded by its tag: both refusals
    # quoted the value, in the start-up line the server's log keeps (review-ops2 F6).
    path = tmp_path / "kc"
    path.write_text(ALIASED_HEAD.replace("user: {token: tok}", "user:\n    " + field + ": " + written))
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f"cannot read kubeconfig {str(path)!r}: {field}: {problem} at line 7, column {len(field) + 7}"
    )
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        # A password starting with "!" and holding another "!" is a tag handle to YAML.
        ("password: !Sup3r!s3cret", "found undefined tag handle at line 7, column 15"),
        ("token: !s3cret!x y", "found undefined tag handle at line 7, column 12"),
        # One starting with "&" is an anchor, whose name a second one quoted.
        ("token: &s3cret a\n    password: &s3cret b", "second occurrence at line 8, column 15 (found "),
    ],
)
def test_a_yaml_refusal_never_quotes_more_than_a_character_of_the_file(
    tmp_path: Path, written: str, problem: str
) -> None:
    # review-ops4 2: PyYAML's "found undefined tag handle '!Sup3r!'" went through as it was, and the
    # start-up line showed most of the password. Its problems and contexts keep a quote only when it
    # is one character or a token's name ('<block end>').
    path = tmp_path / "kc"
    path.write_text(ALIASED_HEAD.replace("user: {token: tok}", "user:\n    " + written.replace("\\n", "\n")))
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    message = str(raised.value)
    assert problem in message
    for secret in ("Sup3r", "s3cret"):
        assert not any(secret[i : i + 4] in message for i in range(len(secret) - 3)), message


def test_an_undefined_alias_in_an_exec_plugins_env_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = exec_kubeconfig(tmp_path, env="[{name: FOO, value: *s3cret}]")
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert "value: an alias (*…) names no anchor" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def chain(links: int) -> str:
    """A top-level key holding ``links`` mappings, each merging the one before it (``<<: *a{n-1}``)."""
    return "x-chain:\n  a0: &a0 {k0: v}\n" + "".join(
        f"  a{n}: &a{n} {{<<: *a{n - 1}, k{n}: v}}\n" for n in range(1, links + 1)
    )


@pytest.mark.parametrize(
    "aliases",
    [
        chain(1200),
        # Each level merges the one below twice: 2**20 nodes to go-yaml, which counts each merge.
        "x-bomb:\n  b0: &b0 {k: v}\n"
        + "".join(f"  b{n}: &b{n} {{<<: [*b{n - 1}, *b{n - 1}], k{n}: v}}\n" for n in range(1, 21)),
    ],
)
def test_merge_keys_past_go_yamls_bound_are_refused_before_the_document_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aliases: str
) -> None:
    # kubectl 1.32 refuses these at once ("document contains excessive aliasing"): go-yaml counts a merged
    # alias as an alias. They were accepted, a 230 KB chain after 145 s and 731 MB, each mapping merged
    # into the next (review-ops2 F1). Now counted on the composed nodes, before any mapping is built.
    import yaml

    built: list[object] = []
    monkeypatch.setattr(yaml.SafeLoader, "flatten_mapping", lambda self, node: built.append(node))
    path = tmp_path / "kc"
    path.write_text(aliases + ALIASED_HEAD)
    with pytest.raises(ConfigError, match="the document contains excessive aliasing"):
        load_cluster_config(str(path))
    assert built == []


def test_merge_keys_within_go_yamls_bound_are_read(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text(
        chain(50)
        + "clusters:\n- name: c\n  cluster: &c {server: "
        + SERVER
        + "}\n- name: d\n  cluster: {<<: *c, insecure-skip-tls-verify: y}\n"
        "users:\n- name: u\n  user: {token: tok}\n"
        "contexts:\n- name: x\n  context: {cluster: d, user: u}\ncurrent-context: x\n"
    )
    assert load_cluster_config(str(path)) == ClusterConfig(SERVER, token="tok", insecure_skip_tls_verify=True)


def test_a_non_specific_tag_makes_a_string_as_in_go_yaml(tmp_path: Path) -> None:
    # kubectl 1.32: "! 8080" is the text 8080 (go-yaml resolves a "!"-tagged scalar as a string); it was
    # read as a plain scalar: the argument refused as a number, the namespace "0755" taken as "493"
    # (review-ops2 F4).
    path = exec_kubeconfig(
        tmp_path, extension="n: ! 12", args="[--port, ! 8080]", env="[{name: FOO, value: ! 0755}]"
    )
    path.write_text(
        path.read_text().replace("{cluster: c, user: u}", "{cluster: c, user: u, namespace: ! 0755}")
    )
    config = load_cluster_config(str(path))
    assert config is not None and config.namespace == "0755"
    assert (seen_by_plugin(tmp_path)["argv"], seen_by_plugin(tmp_path)["FOO"]) == (["--port", "8080"], "0755")
    assert extension_sent(tmp_path) == {"false": "12"}


def test_an_extension_aliasing_an_anchor_written_outside_extensions_is_sent_as_kubectl_sends_it(
    tmp_path: Path,
) -> None:
    # kubectl 1.32 sends {"debug": true, ...}: the anchor, met first outside any extension, was turned into
    # its text in place, and the extension, the same object, was sent as "yes" (review-ops2 F3).
    path = exec_kubeconfig(tmp_path, extension="{}")
    text = path.read_text().replace("      extension:\n        {}\n", "      extension: *ext\n")
    path.write_text("x-shared:\n  ext: &ext {debug: yes, level: on, list: [y, n]}\n" + text)
    assert load_cluster_config(str(path)) is not None
    assert extension_sent(tmp_path) == {"debug": True, "level": True, "list": [True, False]}


def kubectl_view(path: Path) -> dict[str, Any] | str:
    """How the real kubectl (1.32, go-yaml v2) reads ``path``: `kubectl config view --raw -o json`'s
    document, or its error when it refuses the file."""
    done = subprocess.run(
        [KUBECTL, "config", "view", "--raw", "-o", "json", "--kubeconfig", str(path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    if done.returncode:
        return done.stderr.strip()
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def kubectl_views(paths: list[Path]) -> list[dict[str, Any] | str]:
    """`kubectl_view` of each path, the kubectl processes run side by side (each takes a fraction of a
    second, mostly waiting)."""
    command = [KUBECTL, "config", "view", "--raw", "-o", "json", "--kubeconfig"]
    running = [
        subprocess.Popen([*command, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for path in paths
    ]
    views: list[dict[str, Any] | str] = []
    for process in running:
        out, err = process.communicate(timeout=HANG_GUARD)
        views.append(err.strip() if process.returncode else json.loads(out))
    return views


def kubectl_line(refused: str) -> int:
    """The line kubectl names in its refusal of a file ("yaml: line 11: found …")."""
    found = re.search(r"yaml: line (\d+):", refused)
    assert found, refused
    return int(found.group(1))


def our_line(message: str) -> int:
    found = re.search(r" at line (\d+), column \d+", message)
    assert found, message
    return int(found.group(1))


def kubectl_extension(path: Path) -> object:
    document = kubectl_view(path)
    assert isinstance(document, dict), document
    return document["clusters"][0]["cluster"]["extensions"][0]["extension"]


def test_boolean_keys_and_the_same_text_quoted_are_two_keys_in_the_exec_extension_as_in_kubectl(
    tmp_path: Path,
) -> None:
    # kubectl 1.32 sends on: 1 as "true": 1 beside 'on': 2, two keys; two boolean keys (on, yes) are one,
    # the last. The boolean key and the quoted text were one key as PyYAML built the mapping (a
    # `_Boolean` is a string equal to its text): "true": 2, the "on" key lost.
    path = exec_kubeconfig(tmp_path, extension="on: 1\n'on': 2\nyes: 3\n'y': 4\nn: 5\nN: 6")
    assert load_cluster_config(str(path)) is not None
    sent = {"true": 3, "on": 2, "y": 4, "false": 6}
    assert extension_sent(tmp_path) == sent
    assert kubectl_extension(path) == sent


def test_non_finite_keys_in_the_exec_extension_are_sent_as_kubectl_sends_them(tmp_path: Path) -> None:
    # A key is no JSON value: kubectl 1.32 reads .inf, -.Inf and .NaN keys and sends them as go-yaml
    # writes them (".inf", "-.inf", ".nan"; +.inf and .inf being one key). They were refused ("json:
    # unsupported value"), as such a value is.
    path = exec_kubeconfig(tmp_path, extension=".inf: a\n-.Inf: b\n.NaN: c\n+.inf: d\nlist: [{.INF: e}]")
    assert load_cluster_config(str(path)) is not None
    sent = {".inf": "d", "-.inf": "b", ".nan": "c", "list": [{".inf": "e"}]}
    assert extension_sent(tmp_path) == sent
    assert kubectl_extension(path) == sent


def test_underscores_in_a_number_starting_with_a_dot_are_read_as_kubectl_reads_them(tmp_path: Path) -> None:
    # review-ops4 5: go-yaml v2 reads a plain scalar starting with "." with Go's ParseFloat on the text as
    # written, which takes an underscore only between digits: ._5 and .5__ are text to kubectl 1.32. They
    # were read as 0.5 (every underscore dropped first, as go-yaml does after a digit or a sign), so the
    # plugin got a number, and args: [._5] was refused as one.
    written = "._5, .5__, .5_, ._, .5_0, -._5, +.5__, ._5e1, .5_0e1_0, .5e_1, .5_e1, ._e1, 1__0, .5E1_0, .0_0"
    path = exec_kubeconfig(tmp_path, args="[._5, .5__]", extension=f"list: [{written}]")
    viewed = kubectl_view(path)
    assert isinstance(viewed, dict), viewed
    assert viewed["users"][0]["user"]["exec"]["args"] == ["._5", ".5__"]
    texts = ["._5", ".5__", ".5_", "._"]
    sent = {
        "list": [*texts, 0.5, -0.5, 0.5, "._5e1", 5000000000, ".5e_1", ".5_e1", "._e1", 10, 5000000000, 0]
    }
    assert kubectl_extension(path) == sent
    assert load_cluster_config(str(path)) is not None
    assert extension_sent(tmp_path) == sent
    assert seen_by_plugin(tmp_path)["argv"] == ["._5", ".5__"]


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        ("[--verbose, y]", "[]", "args[1] must be a string, not a boolean"),
        ("[--verbose, true]", "[]", "args[1] must be a string, not a boolean"),
        ("[Off]", "[]", "args[0] must be a string, not a boolean"),
        ("[]", "[{name: FOO, value: on}]", 'env "FOO": value must be a string, not a boolean'),
        ("[]", "[{name: FOO, value: yes}]", 'env "FOO": value must be a string, not a boolean'),
        ("[]", "[{name: y, value: x}]", "env[0]: name must be a non-empty string, not a boolean"),
    ],
)
def test_a_boolean_word_in_exec_args_or_env_is_refused_as_kubectl_refuses_it(
    tmp_path: Path, args: str, env: str, problem: str
) -> None:
    # kubectl 1.32: "json: cannot unmarshal bool into Go struct field ExecConfig.users.user.exec.args of
    # type string" (ExecEnvVar...env.value, env.name). The plugin was run with the text written.
    path = exec_kubeconfig(tmp_path, args=args, env=env)
    refused = kubectl_view(path)
    assert isinstance(refused, str) and "cannot unmarshal bool into Go struct field" in refused, refused
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == f'kubeconfig {str(path)!r}: user "u": exec: {problem}'
    assert not (tmp_path / "seen").exists()
    # Quoted, it is text to both.
    quoted = re.sub(r"\b(y|true|Off|on|yes)\b", r"'\1'", path.read_text().split("args: ")[1])
    path.write_text(path.read_text().split("args: ")[0] + "args: " + quoted)
    assert isinstance(kubectl_view(path), dict)
    assert load_cluster_config(str(path)) is not None


@pytest.mark.parametrize(
    ("where", "place"),
    [
        ("extension", "line 9, column 9"),
        ("extension-empty", "line 9, column 10"),
        ("elsewhere", "line 1, column 23"),
    ],
)
def test_a_null_key_is_refused_in_one_line_as_kubectl_refuses_it(
    tmp_path: Path, where: str, place: str
) -> None:
    # kubectl 1.32: "unsupported map key of type: %!s(<nil>), key: <nil>, value: ..." (sigs.k8s.io/yaml
    # turns the whole document into JSON, whose keys are strings), wherever the key stands. An extension's
    # was sent to the plugin as "null".
    if where == "extension":
        path = exec_kubeconfig(tmp_path, extension="~: x")
    elif where == "extension-empty":
        path = exec_kubeconfig(tmp_path, extension="? \n: x")
    else:
        path = exec_kubeconfig(tmp_path)
        path.write_text("preferences: {extra: {null: x}}\n" + path.read_text())
    refused = kubectl_view(path)
    assert isinstance(refused, str) and "unsupported map key of type" in refused, refused
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f"cannot read kubeconfig {str(path)!r}: a null key (~, null or nothing before the colon: kubectl's "
        f"unsupported map key; quote it if it is text) at {place}"
    )
    assert not (tmp_path / "seen").exists()


def kubectl_runs_the_plugin(path: Path) -> str:
    """Make the real kubectl run the kubeconfig's plugin (a request to a server that is not there): its
    stderr, the plugin having recorded what it saw when kubectl ran it. kubectl needs interactiveMode,
    which payloadtags reads as Never when it is missing."""
    mode = path.parent / "kubectl-kc"
    mode.write_text(
        path.read_text().replace(
            "provideClusterInfo: true\n", "provideClusterInfo: true\n      interactiveMode: Never\n"
        )
    )
    done = version_with(mode, "2s", HANG_GUARD)
    return done.stderr


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        # kubectl 1.32: "getting credentials: exec: exec: environment variable contains NUL".
        ("[]", '[{name: FOO, value: "s3cr3t\\0x"}]', 'env "FOO": value must not contain a NUL character'),
        ("[]", '[{name: "FOO\\0", value: s3cr3t}]', "env[0]: name must not contain a NUL character"),
        ('["--t=s3cr3t\\0"]', "[]", "args[0] must not contain a NUL character"),
        ("[]", "[{name: '=FOO', value: s3cr3t}]", "env[0]: name must not begin with '='"),
    ],
)
def test_what_a_process_cannot_carry_in_exec_args_or_env_is_refused_in_one_line(
    tmp_path: Path, args: str, env: str, problem: str
) -> None:
    # review-ops6 F3: start-up ended in a traceback out of subprocess (ValueError: embedded null byte).
    # Now one line naming the field, never the value. A surrogate is refused with the file, as kubectl
    # refuses it (test_a_surrogate_escape_anywhere_is_refused_at_load_in_one_line_as_kubectl_refuses_...).
    path = exec_kubeconfig(tmp_path, args=args, env=env)
    _refused_without_the_value(tmp_path, path, problem)
    if "NUL" in problem and "args" not in problem:
        assert "environment variable contains NUL" in kubectl_runs_the_plugin(path)


def escape_kubeconfig(path: Path, place: str, text: str) -> Path:
    """A kubeconfig whose ``place`` holds the double-quoted YAML scalar ``text`` (escapes and all)."""
    quoted = f'"{text}"'
    cluster = {"server": SERVER, "insecure-skip-tls-verify": "true"}
    user = {"token": "t"}
    context = {"cluster": "c", "user": "u"}
    tail = ""
    if place in ("server", "tls-server-name", "proxy-url", "certificate-authority"):
        cluster[place] = f'"https://127.0.0.1/{text}"' if place == "server" else quoted
        if place == "certificate-authority":
            del cluster["insecure-skip-tls-verify"]
    elif place in ("token", "tokenFile", "client-certificate", "username"):
        user = {place: quoted} if place != "client-certificate" else {place: quoted, "client-key": "/k"}
    elif place == "namespace":
        context["namespace"] = quoted
    elif place == "exec-arg":
        user = {"exec": "{apiVersion: client.authentication.k8s.io/v1, command: /p, args: [" + quoted + "]}"}
    elif place == "exec-env":
        user = {
            "exec": "{apiVersion: client.authentication.k8s.io/v1, command: /p, env: [{name: A, value: "
            + quoted
            + "}]}"
        }
    elif place == "another-user":
        tail = f"- name: other\n  user: {{token: {quoted}}}\n"
    elif place == "preferences":
        tail = f"preferences: {{extensions: [{{name: e, extension: {{a: {quoted}}}}}]}}\n"
    elif place == "key":
        user = {"token": "t", quoted: "x"}
    elif place == "second-document":
        tail = f"---\nusers: [{{name: u, user: {{token: {quoted}}}}}]\n"

    def flow(section: dict[str, str]) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in section.items()) + "}"

    users = f"users:\n- name: u\n  user: {flow(user)}\n"
    if place == "another-user":
        users, tail = users + tail, ""
    elif place == "preferences":
        users, tail = tail + users, ""
    path.write_text(
        f"clusters:\n- name: c\n  cluster: {flow(cluster)}\n{users}"
        f"contexts:\n- name: x\n  context: {flow(context)}\ncurrent-context: x\n{tail}"
    )
    return path


_ESCAPE_PLACES = [
    ("token", "users[0].user.token"),
    ("server", "clusters[0].cluster.server"),
    ("namespace", "contexts[0].context.namespace"),
    ("tls-server-name", "clusters[0].cluster.tls-server-name"),
    ("proxy-url", "clusters[0].cluster.proxy-url"),
    ("certificate-authority", "clusters[0].cluster.certificate-authority"),
    ("tokenFile", "users[0].user.tokenFile"),
    ("client-certificate", "users[0].user.client-certificate"),
    ("username", "users[0].user.username"),
    ("exec-arg", "users[0].user.exec.args[0]"),
    ("exec-env", "users[0].user.exec.env[0].value"),
    ("another-user", "users[1].user.token"),
    ("preferences", "preferences.extensions[0].extension.a"),
    ("key", "users[0].user: a key"),
]


# \U00110000 on: chr() raised ValueError out of PyYAML's scanner; from \U80000000 on, OverflowError,
# which the refusal of the first missed (review-kcfg F1).
_PAST_THE_LAST_CODE_POINT = ["\\U00110000", "\\U7FFFFFFF", "\\U80000000", "\\UFFFFFFFF"]
_SURROGATE = "(a surrogate, \\uD800-\\uDFFF, which has no UTF-8 form)"


@pytest.mark.parametrize(("place", "field"), _ESCAPE_PLACES)
@pytest.mark.parametrize(
    ("escape", "why"),
    [
        *((escape, _SURROGATE) for escape in ["\\ud800", "\\uDFFF", "\\ud83d\\ude00", "\\U0000DC00"]),
        *((escape, "(past \\U0010FFFF)") for escape in _PAST_THE_LAST_CODE_POINT),
    ],
)
def test_an_escape_without_a_utf8_form_anywhere_is_refused_in_one_line_as_kubectl_refuses_the_file(
    tmp_path: Path, place: str, field: str, escape: str, why: str
) -> None:
    # review-unrev F1: kubectl 1.27-1.33 refuse the file ("yaml: line N: found invalid Unicode character
    # escape code"), a valid surrogate pair too: go-yaml refuses any escape of a surrogate. payloadtags
    # read it, started, and its reflectors and leader election stopped "by a bug" (UnicodeEncodeError)
    # when the token went into a header or the server or namespace into a URL. Past the last code point
    # start-up ended in a traceback; the refusal then named no field, and from \U80000000 on there was a
    # traceback again (review-kcfg F1, F4).
    path = escape_kubeconfig(tmp_path / "kc", place, f"s3cr3t{escape}")
    refused = kubectl_view(path)
    assert isinstance(refused, str) and "found invalid Unicode character escape code" in refused, refused
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    message = str(raised.value)
    assert message.startswith(
        f"cannot read kubeconfig {str(path)!r}: {field}: found invalid Unicode character escape code {why} "
        "at line "
    ), message
    assert "s3cr3t" not in message and "\n" not in message
    assert our_line(message) == kubectl_line(refused)


@pytest.mark.parametrize("escape", ["\\ud800", "\\U00110000", "\\UFFFFFFFF"])
def test_an_escape_in_a_value_over_several_lines_is_refused_at_the_escapes_line_as_kubectl_names_it(
    tmp_path: Path, escape: str
) -> None:
    # review-kcfg F4: the refusal named the line where the value starts, kubectl the escape's.
    path = tmp_path / "kc"
    path.write_text(
        f"clusters:\n- name: c\n  cluster: {{server: {SERVER}, insecure-skip-tls-verify: true}}\n"
        "contexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n"
        f'users:\n- name: u\n  user:\n    token: "s3cr3t\n      more\n      end{escape}"\n'
    )
    refused = kubectl_view(path)
    assert isinstance(refused, str) and kubectl_line(refused) == 13, refused
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    message = str(raised.value)
    assert message.startswith(f"cannot read kubeconfig {str(path)!r}: users[0].user.token: "), message
    assert " at line 13, column 10" in message, message


# go-yaml v2's escapes of one character (its scannerc.go; kubectl 1.27-1.33 read a kubeconfig with it):
# YAML 1.1's, with \' and without YAML 1.2's \/, the table of PyYAML.
_GO_ESCAPES = "0abt\tnvfre \"'\\NLP_"


def test_every_escape_kubectl_reads_is_read_as_kubectl_reads_it(tmp_path: Path) -> None:
    # review-kcfg F3: "\'" refused the kubeconfig that kubectl reads.
    # In a namespace: a token is refused for the control characters (they cannot be sent, r3cfg N2).
    escapes = "".join(f"\\{char}" for char in _GO_ESCAPES) + "\\x41\\u00e9\\U0001F600"
    path = escape_kubeconfig(tmp_path / "kc", "namespace", f"s3cr3t{escapes}")
    document = kubectl_view(path)
    assert isinstance(document, dict), document
    config = load_cluster_config(str(path))
    assert config is not None
    assert (
        config.namespace
        == document["contexts"][0]["context"]["namespace"]
        == "s3cr3t\0\a\b\t\t\n\v\f\r\x1b \"'\\\x85\u2028\u2029\xa0Aé😀"
    )


def test_every_other_escape_of_one_character_is_refused_as_kubectl_refuses_it(tmp_path: Path) -> None:
    # review-kcfg F3: "\/" (YAML 1.2's) was read, and kubectl refuses the file.
    others = [chr(code) for code in range(0x21, 0x7F) if chr(code) not in _GO_ESCAPES + "xuU"]
    paths = [
        escape_kubeconfig(tmp_path / f"kc{code:x}", "token", f"s3cr3t\\{chr(code)}")
        for code in map(ord, others)
    ]
    for char, path, refused in zip(others, paths, kubectl_views(paths), strict=True):
        assert isinstance(refused, str) and "found unknown escape character" in refused, (char, refused)
        with pytest.raises(ConfigError) as raised:
            load_cluster_config(str(path))
        message = str(raised.value)
        assert f"found unknown escape character {char!r} at line 6" in message, message


@pytest.mark.parametrize(
    ("place", "text", "token"),
    [
        ("token", "s3cr3t\\U0001F600", "s3cr3t\U0001f600"),
        ("token", "s3cr3t\\ud7ff\\ue000", "s3cr3t\ud7ff\ue000"),
        ("second-document", "s3cr3t\\ud800", "t"),
    ],
)
def test_escapes_kubectl_reads_are_read(tmp_path: Path, place: str, text: str, token: str) -> None:
    path = escape_kubeconfig(tmp_path / "kc", place, text)
    assert isinstance(kubectl_view(path), dict)
    config = load_cluster_config(str(path))
    assert config is not None and config.token == token


def test_an_exec_plugin_printing_a_token_without_a_utf8_form_is_refused_at_load_in_one_line(
    tmp_path: Path,
) -> None:
    # review-unrev F1: the token was taken, and each reflector and the leader election stopped "by a bug"
    # (UnicodeEncodeError) once it went into a header. kubectl 1.32 sends U+FFFD in its place.
    script = plugin(
        tmp_path / "plugin",
        'echo \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"s3cr3t\\ud800"}}\'\n',
    )
    exec_section = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script)}
    path = kubeconfig_with_user(tmp_path / "kc", {"exec": exec_section})
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f"kubeconfig {str(path)!r}: exec plugin {script}: the ExecCredential's status.token holds a lone "
        "surrogate (a \\uD800-\\uDFFF escape), which has no UTF-8 form"
    )


@pytest.mark.parametrize("token", ["s3cr3t\nx", "s3cr3t\0x", "s3cr3t\r", "s3cr3t\x7f"])
def test_a_token_a_header_cannot_carry_is_refused_as_kubectl_cannot_send_it(
    tmp_path: Path, token: str
) -> None:
    # review r3cfg N2: a line end or NUL in the token was sent mangled (Twisted turns a line end into a
    # space) or cut; kubectl fails every request ("net/http: invalid header field value for
    # \"Authorization\""). Refused at start, in the kubeconfig, its tokenFile, or a plugin's output (a
    # failed run, as at a renewal), never showing the token.
    output = json.dumps(
        {"apiVersion": "client.authentication.k8s.io/v1", "status": {"token": token}}
    ).encode()
    with pytest.raises(PluginError) as failed:
        parse_output(ExecPlugin(command="get-token", api_version="client.authentication.k8s.io/v1"), output)
    assert str(failed.value) == (
        "exec plugin get-token: the ExecCredential's status.token holds a control character (a line end, "
        "NUL…), which no Authorization header can carry"
    )
    inner = token + "tail"  # at the end, a line end is stripped (the token is the stripped text)
    path = kubeconfig_with_user(tmp_path / "kc", {"token": inner})
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert str(raised.value) == (
        f'kubeconfig {str(path)!r}: user "u": token holds a control character (a line end, NUL…), which no '
        "Authorization header can carry, as kubectl cannot send it either"
    )
    (tmp_path / "token").write_text(inner + "\n")
    path = kubeconfig_with_user(tmp_path / "kc", {"tokenFile": "token"})
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert "s3cr3t" not in str(raised.value)
    assert str(raised.value).endswith(
        "holds a control character (a line end, NUL…) inside the token, which no Authorization header can "
        "carry, as kubectl cannot send it either"
    )


@pytest.mark.parametrize("token", ["s3cr3t\n", "s3cr3t\r\n", "\ns3cr3t", "\r\ns3cr3t\n"])
def test_a_line_end_at_either_end_of_a_kubeconfig_token_is_stripped(tmp_path: Path, token: str) -> None:
    # review r4cfg T2: documented ("at either end of either, a line end is stripped") and untested. More
    # lenient than kubectl, which fails every request with it ("invalid header field value"): a token
    # written as a YAML block scalar (`token: |`) ends in a line end.
    path = kubeconfig_with_user(tmp_path / "kc", {"token": token})
    config = load_cluster_config(str(path))
    assert config is not None and config.token == "s3cr3t"


@pytest.mark.parametrize(
    ("field", "written", "read"),
    [
        # A control character at an end, no line end: kubectl fails every request with it.
        ("token", "s3cr3t\x0b", None),
        ("token", "s3cr3t\x0c", None),
        ("token", "s3cr3t\x1f", None),
        ("token", "\x1cs3cr3t", None),
        ("token", "\x0b", None),
        # A Unicode space or a tab at an end: kubectl sends it as written.
        ("token", "s3cr3t\x85", "s3cr3t\x85"),
        ("token", "s3cr3t\xa0", "s3cr3t\xa0"),
        ("token", "s3cr3t\u2028", "s3cr3t\u2028"),
        ("token", "\u3000s3cr3t", "\u3000s3cr3t"),
        ("token", "\ts3cr3t", "\ts3cr3t"),
        # client-go takes Go's white space off a file's ends (strings.TrimSpace), which U+001C-U+001F
        # are not.
        ("tokenFile", "s3cr3t\x1f", None),
        ("tokenFile", "\x1cs3cr3t\n", None),
        ("tokenFile", "\x0b\u3000s3cr3t\x0c\x85\xa0\u2028\t\n", "s3cr3t"),
    ],
)
def test_the_ends_of_a_kubeconfig_token_are_read_as_kubectl_reads_them(
    tmp_path: Path, field: str, written: str, read: str | None
) -> None:
    # review r5cfg L1: every end Python's strip() takes off was taken off, control characters
    # (refused, as documented, anywhere else in the token) and Unicode spaces (which kubectl sends)
    # alike; only a line end at either end of a `token` is let off (the test above).
    if field == "token":
        user: dict[str, object] = {"token": written}
    else:
        (tmp_path / "token").write_text(written, encoding="utf-8")
        user = {"tokenFile": "token"}
    path = kubeconfig_with_user(tmp_path / "kc", user)
    kubectl_says = kubectl_refusal(path)
    if read is None:
        assert 'invalid header field value for "Authorization"' in kubectl_says
        with pytest.raises(ConfigError, match="holds a control character") as raised:
            load_cluster_config(str(path))
        assert "s3cr3t" not in str(raised.value)
        return
    assert "invalid header" not in kubectl_says and "refused" in kubectl_says  # sent, to no server
    config = load_cluster_config(str(path))
    assert config is not None
    if field == "token":
        assert config.token == read
    else:
        assert config.token_file is not None
        assert _TokenSource(config, Clock(), 60.0).current() == read


@pytest.mark.parametrize("field", ["clientCertificateData", "clientKeyData"])
def test_a_client_certificate_without_a_utf8_form_is_a_plugin_error(field: str) -> None:
    # It raised UnicodeEncodeError out of parse_output: a traceback at start, a renewal held until the
    # plugin's timeout.
    status = {"clientCertificateData": "cert", "clientKeyData": "key", field: "s3cr3t\udc00"}
    output = json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "status": status}).encode()
    with pytest.raises(PluginError) as raised:
        parse_output(ExecPlugin(command="get-cert", api_version="client.authentication.k8s.io/v1"), output)
    assert str(raised.value) == (
        f"exec plugin get-cert: the ExecCredential's status.{field} holds a lone surrogate (a "
        "\\uD800-\\uDFFF escape), which has no UTF-8 form"
    )


def test_an_equals_sign_in_an_exec_env_name_reaches_the_plugin_as_kubectl_passes_it(tmp_path: Path) -> None:
    # review-ops6 F3: kubectl 1.32 passes the entry as NAME=value, so name FOO=B with value x is the
    # variable FOO holding B=x; start-up ended in "ValueError: illegal environment variable name".
    path = exec_kubeconfig(tmp_path, env="[{name: FOO=B, value: x}]")
    kubectl_runs_the_plugin(path)
    by_kubectl = seen_by_plugin(tmp_path)["FOO"]
    (tmp_path / "seen").unlink()
    assert load_cluster_config(str(path)) is not None
    assert seen_by_plugin(tmp_path)["FOO"] == by_kubectl == "B=x"


def test_a_plugin_the_os_cannot_run_with_its_env_fails_as_a_plugin_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    # review-ops6 F3: both runners caught only OSError; what the kubeconfig's check lets through and the
    # OS refuses is a PluginError (the start-up's one line, a renewal's failure), never a ValueError.
    plugin = ExecPlugin(
        command=sys.executable, api_version="client.authentication.k8s.io/v1", env=(("FOO", "s3cr3t\0"),)
    )
    with pytest.raises(PluginError) as raised:
        run_plugin_blocking(plugin)
    assert "s3cr3t" not in str(raised.value)
    failed: list[Failure] = []
    from twisted.internet import reactor

    run_plugin(reactor, plugin).addErrback(failed.append)
    assert failed and failed[0].check(PluginError) and "s3cr3t" not in str(failed[0].value)
