"""A kubeconfig whose cluster server is plain http://: its user's credentials are not used, as kubectl
uses none there (review r3cfg F2). The real kubectl is asked the same question, against a recorder."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from payloadtags.kube.config import ConfigError, load_cluster_config
from tests.support.kubectl import version_with
from tests.support.pki import Authority

# Guards against a hang of kubectl only, never a measure of speed.
HANG_GUARD = 60.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("pki"), "test")


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    """A plain-HTTP server answering /version, and the Authorization header of each request it had."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", "<none>"))
            body = b'{"major":"1","minor":"32","gitVersion":"v1.32.0"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def plugin(path: Path) -> dict[str, object]:
    """An exec section whose plugin records that it ran and prints a token."""
    path.write_text(
        '#!/bin/sh\ntouch "$(dirname "$0")/ran"\necho \'{"apiVersion":"client.authentication.k8s.io/v1",'
        '"kind":"ExecCredential","status":{"token":"s3cret-plugin"}}\'\n'
    )
    path.chmod(0o755)
    return {"apiVersion": "client.authentication.k8s.io/v1", "command": str(path), "interactiveMode": "Never"}


def users(tmp_path: Path, ca: Authority) -> dict[str, tuple[dict[str, object], str]]:
    """Each kind of credential a user may hold, with the fields the warning names."""
    alice = ca.client("alice")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-file\n")
    data: dict[str, object] = {
        "client-certificate-data": base64.b64encode(alice.cert_file.read_bytes()).decode(),
        "client-key-data": base64.b64encode(alice.key_file.read_bytes()).decode(),
    }
    return {
        "token": ({"token": "s3cret-token"}, "token"),
        "tokenFile": ({"tokenFile": str(token_file)}, "tokenFile"),
        # kubectl does not read it there; payloadtags refused the start.
        "missing tokenFile": ({"tokenFile": str(tmp_path / "missing")}, "tokenFile"),
        "token and tokenFile": (
            {"token": "s3cret-token", "tokenFile": str(token_file)},
            "token, tokenFile",
        ),
        "certificate files": (
            {"client-certificate": str(alice.cert_file), "client-key": str(alice.key_file)},
            "client-certificate, client-key",
        ),
        "certificate data": (data, "client-certificate-data, client-key-data"),
        "exec": ({"exec": plugin(tmp_path / "plugin")}, "exec"),
        # payloadtags refused basic auth ("unsupported kubeconfig credential scheme"); kubectl ignores it.
        "basic": ({"username": "bob", "password": "s3cret-pw"}, "username, password"),
    }


def kubeconfig(path: Path, server: str, user: dict[str, object], ca_file: Path | None = None) -> Path:
    cluster: dict[str, object] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
                "current-context": "x",
            }
        )
    )
    return path


def kubectl_get_version(path: Path) -> None:
    """The real kubectl's `get --raw /version` with the kubeconfig, which must succeed."""
    done = version_with(path, "5s", HANG_GUARD)
    assert done.returncode == 0, done.stderr


CASES = [
    "token",
    "tokenFile",
    "missing tokenFile",
    "token and tokenFile",
    "certificate files",
    "certificate data",
    "exec",
    "basic",
]


@pytest.mark.kubectl
@pytest.mark.parametrize("case", CASES)
def test_no_credential_of_the_user_goes_to_a_plain_http_server_as_in_kubectl(
    tmp_path: Path, ca: Authority, recorder: tuple[str, list[str]], case: str
) -> None:
    url, seen = recorder
    user, named = users(tmp_path, ca)[case]
    path = kubeconfig(tmp_path / "kc", url, user)
    kubectl_get_version(path)
    # The reference: kubectl sent no credential and ran no plugin (client-go's DirectClientConfig takes
    # the user's identification only for an https:// server).
    assert seen and set(seen) == {"<none>"}
    assert not (tmp_path / "ran").exists()

    config = load_cluster_config(str(path))
    assert config is not None
    assert not (tmp_path / "ran").exists()
    assert (config.server, config.namespace) == (url, "ns")
    credentials = (config.token, config.token_file, config.exec_plugin, config.client_cert_file)
    assert credentials == (None, None, None, None)
    assert (config.client_cert_data, config.client_key_file, config.client_key_data) == (None, None, None)
    not_run = " (its exec plugin is not run)" if named == "exec" else ""
    assert config.warnings == (
        f'kubeconfig {str(path)!r}: user "u": {named} not used{not_run}: the cluster\'s server is plain '
        "http://, to which kubectl sends no credential either (one would cross the connection unencrypted), "
        "so payloadtags connects without one",
    )
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    "server",
    # Loopback by name and as IPv6 too (review r4cfg T1): a `kubectl proxy` there adds its own credential,
    # and kubectl sends the user's to none of them.
    ["http://192.0.2.2:8080", "http://localhost:8001", "http://[::1]:8001", "http://LOCALHOST:8001"],
)
def test_the_rule_is_the_scheme_not_the_host(tmp_path: Path, server: str) -> None:
    # client-go looks at the scheme alone: a server elsewhere on the network is no different.
    path = kubeconfig(tmp_path / "kc", server, {"token": "s3cret-token"})
    config = load_cluster_config(str(path))
    assert config is not None
    assert (config.token, config.warnings[0].split(": ")[2]) == (None, "token not used")


@pytest.mark.parametrize("server", ["HTTPS://", "https://", "http:///"])
def test_a_server_without_a_host_is_refused_as_written(tmp_path: Path, server: str) -> None:
    # review r4cfg N1: refused as "not 'https:'", the server lowercased and its slashes taken off; kubectl
    # 1.32: host must be a URL or a host:port pair: "HTTPS://".
    path = kubeconfig(tmp_path / "kc", server, {"token": "s3cret-token"})
    with pytest.raises(ConfigError) as raised:
        load_cluster_config(str(path))
    assert (
        str(raised.value)
        == f"kubeconfig {str(path)!r}: cluster server {server!r} has no host, as kubectl refuses it"
    )


def test_a_server_that_does_not_parse_is_still_refused_in_one_line(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", "http://[::1:8080", {"token": "s3cret-token"})
    with pytest.raises(ConfigError, match=r"^cannot load kubeconfig '.*': Invalid IPv6 URL$"):
        load_cluster_config(str(path))


def test_a_user_without_credentials_on_plain_http_loads_without_a_warning_of_its_own(tmp_path: Path) -> None:
    # The `kubectl proxy` case: the proxy on loopback holds the credential, the kubeconfig none.
    path = kubeconfig(tmp_path / "kc", "http://127.0.0.1:8001", {})
    config = load_cluster_config(str(path))
    assert config is not None
    assert (config.server, config.token, config.warnings) == ("http://127.0.0.1:8001", None, ())


def test_over_https_the_credentials_are_taken(tmp_path: Path, ca: Authority) -> None:
    user, _ = users(tmp_path, ca)["token"]
    path = kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", {**user}, ca.cert_file)
    config = load_cluster_config(str(path))
    assert config is not None
    assert (config.token, config.warnings) == ("s3cret-token", ())


@pytest.mark.kubectl
def test_a_scheme_in_capitals_is_read_as_kubectl_reads_it(
    tmp_path: Path, ca: Authority, recorder: tuple[str, list[str]]
) -> None:
    # review r3cfg L4: HTTP:// and HTTPS:// were refused ("cluster server must be an http(s) URL"), where
    # kubectl takes them (Go lowercases the scheme).
    url, seen = recorder
    path = kubeconfig(tmp_path / "kc", url.replace("http://", "HTTP://"), {})
    kubectl_get_version(path)
    assert seen and set(seen) == {"<none>"}
    config = load_cluster_config(str(path))
    assert config is not None and config.server == url

    path = kubeconfig(tmp_path / "kc", "HTTPS://127.0.0.1:6443", {"token": "s3cret-token"}, ca.cert_file)
    config = load_cluster_config(str(path))
    assert config is not None
    assert (config.server, config.token, config.ca_file, config.warnings) == (
        "https://127.0.0.1:6443",
        "s3cret-token",
        str(ca.cert_file),
        (),
    )
