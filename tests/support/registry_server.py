"""Run a real CNCF distribution registry (``docker-registry``) for tests, demos and benchmarks.

Everything here is synchronous on purpose: fixtures, scripts and benchmarks call it outside the
reactor. The token server runs in a thread so it can answer while the reactor runs in the main thread.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_BINARY = "docker-registry"


def registry_available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


def need_registry() -> None:
    """Fail the test when the registry is not installed: a missing part fails, never skips."""
    import pytest  # here, not at the top: the benches use this module without pytest

    if not registry_available():
        pytest.fail("docker-registry is not installed (scripts/setup installs it with apt-get)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- htpasswd -------------------------------------------------------------------------------------


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    """A bcrypt hash the registry's htpasswd backend accepts (it accepts nothing else).

    Prefers the ``bcrypt`` package when installed; otherwise libxcrypt, which every Debian system has
    (package libcrypt1, essential), through ctypes. Low cost: tests, not production secrets.
    """
    try:
        import bcrypt  # optional: the libcrypt fallback below needs no package

        hashed_by_package: bytes = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds))
        return hashed_by_package.decode()
    except ImportError:
        pass
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", max(rounds, 4), None, 0)
    hashed: bytes | None = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2"):
        raise RuntimeError("no bcrypt implementation: install the 'bcrypt' package or libcrypt1")
    return hashed.decode()


# --- token server ---------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _self_signed(
    common_name: str, key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName]
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


@attrs.frozen
class TokenRequest:
    """One request the token server received, for assertions."""

    service: str | None
    scopes: tuple[str, ...]
    account: str | None
    user: str | None  # the basic-auth user that authenticated, None when anonymous


Grant = Callable[[str | None, str, str, list[str]], list[str]]
"""(user, resource type, resource name, requested actions) -> granted actions."""


def grant_all(user: str | None, rtype: str, name: str, actions: list[str]) -> list[str]:
    return actions


class TokenServer:
    """A Docker-registry token service (the ``auth: token:`` realm) on 127.0.0.1, in a thread.

    It signs ES256 JWTs with a key whose self-signed certificate is both the registry's
    ``rootcertbundle`` and the token's ``x5c`` header, which is how distribution 2.8 finds the key.
    ``users`` (name -> password) makes it demand basic auth; without it anyone gets a token.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        service: str = "payloadtags-test-registry",
        issuer: str = "payloadtags-test-issuer",
        expires_in: int | None = 300,
        token_field: str = "token",
        grant: Grant = grant_all,
    ) -> None:
        self.service = service
        self.issuer = issuer
        self.users = dict(users) if users is not None else None
        self.expires_in = expires_in
        self.token_field = token_field
        self.grant = grant
        # A status to answer every request with instead of a token (a realm with a wrong path: 404).
        self.fail_with: int | None = None
        self.requests: list[TokenRequest] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        cert = _self_signed("payloadtags test token signer", self._key, [])
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_file = workdir / "token-signer.crt"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def issue(self, user: str | None, scopes: list[str], lifetime: int = 300) -> str:
        access = []
        for scope in scopes:
            # "repository:team/app:pull,push"; a name may contain ':' (a registry host with a port).
            rtype, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = self.grant(user, rtype, name, [a for a in actions.split(",") if a])
            if granted:
                access.append({"type": rtype, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if server.fail_with is not None:
                    self._send(server.fail_with, {"details": "failing on purpose"})
                    return
                if url.path != "/token":
                    self._send(404, {"details": "not found"})
                    return
                query = urllib.parse.parse_qs(url.query)
                user = self._basic_user()
                if server.users is not None and user is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                server.requests.append(
                    TokenRequest(
                        service=query.get("service", [None])[0],
                        scopes=tuple(scopes),
                        account=query.get("account", [None])[0],
                        user=user,
                    )
                )
                token = server.issue(user, scopes)
                body: dict[str, Any] = {}
                if server.token_field in ("token", "both"):
                    body["token"] = token
                if server.token_field in ("access_token", "both"):
                    body["access_token"] = token
                if server.expires_in is not None:
                    body["expires_in"] = server.expires_in
                self._send(200, body)

            def _basic_user(self) -> str | None:
                header = self.headers.get("Authorization", "")
                if not header.lower().startswith("basic "):
                    return None
                try:
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except ValueError:
                    return None
                if server.users is None or server.users.get(user) == password:
                    return user
                return None

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


# --- the registry ---------------------------------------------------------------------------------


@attrs.frozen
class TLSFiles:
    cert_file: str
    key_file: str
    ca_file: str  # what a client trusts


def make_tls_files(directory: Path, hostnames: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSFiles:
    """A CA and a server certificate signed by it (IP and DNS SANs), written as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payloadtags test CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(
        cert_file=str(directory / "registry.crt"),
        key_file=str(directory / "registry.key"),
        ca_file=str(directory / "ca.crt"),
    )
    Path(files.ca_file).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    Path(files.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(files.key_file).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _scratch_parent() -> str | None:
    """Where registry storage goes: tmpfs when there is one. On these VMs' disks, removing the few
    thousand small files of a test session's registry takes seconds; in memory it takes milliseconds."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return None


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that, on Linux, has the child get SIGTERM when its parent dies: a test run (or a
    demo) killed by a timeout or SIGKILL must not leave registries or servers behind. libc is loaded
    here, before the fork, not in the child."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_death_signal


class RegistryError(RuntimeError):
    pass


class RegistryServer:
    """A running ``docker-registry serve`` on 127.0.0.1. Use as a context manager or call stop().

    Attributes ``url``, ``username``, ``password`` and ``ca_file`` make it usable directly as a
    target of the helpers in tests.support.images.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        readonly: bool = False,
        delete_enabled: bool = True,
        htpasswd: Mapping[str, str] | None = None,
        token_server: TokenServer | None = None,
        tls: TLSFiles | None = None,
        username: str | None = None,
        password: str | None = None,
        extra_config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="payloadtags-registry-", dir=_scratch_parent()))
        self.root = Path(root) if root is not None else self._workdir / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        self.readonly = readonly
        self.delete_enabled = delete_enabled
        self.token_server = token_server
        self.ca_file = tls.ca_file if tls else None
        self.username = username
        self.password = password
        if htpasswd and username is None and len(htpasswd) == 1:
            # The common case: one user, and the helpers should log in as that user.
            [(self.username, self.password)] = htpasswd.items()
        self.log_file = self._workdir / "registry.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._htpasswd = dict(htpasswd) if htpasswd else None
        self._tls = tls
        self._extra = dict(extra_config or {})
        # e.g. SSL_CERT_FILE: Go's TLS client (notification endpoints) trusts the CAs named there.
        self._env = {**os.environ, **env} if env else None
        last_error: Exception | None = None
        # A free port can be taken by someone else before the registry binds it: try another.
        for _attempt in range(3):
            self.port = free_port()
            scheme = "https" if tls else "http"
            self.url = f"{scheme}://127.0.0.1:{self.port}"
            try:
                self._start(start_timeout)
                return
            except RegistryError as exc:
                last_error = exc
                self._terminate(5)
                if "address already in use" not in str(exc):
                    break
        self._cleanup_dirs()
        raise last_error or RegistryError("registry did not start")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        storage: dict[str, Any] = {
            "filesystem": {"rootdirectory": str(self.root)},
            "delete": {"enabled": self.delete_enabled},
            "maintenance": {
                "uploadpurging": {"enabled": False},
                "readonly": {"enabled": self.readonly},
            },
        }
        http_cfg: dict[str, Any] = {
            "addr": f"127.0.0.1:{self.port}",
            # Fixed so that several registries on one root dir accept each other's upload state.
            "secret": "payloadtags-test-secret",
        }
        if self._tls:
            http_cfg["tls"] = {"certificate": self._tls.cert_file, "key": self._tls.key_file}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": storage,
            "http": http_cfg,
        }
        if self._htpasswd is not None:
            path = self._workdir / "htpasswd"
            path.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self._htpasswd.items()))
            config["auth"] = {"htpasswd": {"realm": "payloadtags-test", "path": str(path)}}
        elif self.token_server is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.cert_file),
                }
            }
        config.update(self._extra)
        return config

    def _start(self, timeout: float) -> None:
        config_path = self._workdir / "config.yml"
        # JSON is YAML, and needs no YAML library.
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=self._env,
                preexec_fn=die_with_parent(),
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        context = None
        if self.ca_file:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.check_hostname = False  # readiness only; a certificate may name just "localhost"
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RegistryError(f"registry exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=context):
                    return
            except urllib.error.HTTPError:
                return  # 401 from an auth-enabled registry: it is serving
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RegistryError(f"registry not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def signal_stop(self) -> None:
        """Send SIGTERM without waiting, so that several registries can stop in parallel."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def exited(self) -> bool:
        """Whether the process ended (it is waited for here, if it did)."""
        return self.process is None or self.process.poll() is not None

    def _terminate(self, timeout: float) -> None:
        if self.process is None:
            return
        self.signal_stop()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        self._terminate(timeout)
        self._cleanup_dirs()

    def _cleanup_dirs(self) -> None:
        # An owned root lives inside the workdir; a given root (a read-only twin's) is not ours to remove.
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RegistryServer {self.url} root={self.root}>"


@contextlib.contextmanager
def running_registry(**kwargs: Any) -> Iterator[RegistryServer]:
    server = RegistryServer(**kwargs)
    try:
        yield server
    finally:
        server.stop()


def reap(servers: list[RegistryServer]) -> None:
    """Finish stopping those of ``servers`` that exited after `RegistryServer.signal_stop`, and drop
    them from the list: their processes are waited for (no zombies) and their storage, in /dev/shm
    where it can be (memory), removed now rather than when the test session ends."""
    for server in [server for server in servers if server.exited()]:
        server.stop(0)
        servers.remove(server)


def stop_all(servers: list[RegistryServer], timeout: float = 5.0) -> None:
    """Stop several registries at once: each takes a moment to exit after SIGTERM."""
    for server in servers:
        server.signal_stop()
    for server in servers:
        server.stop(timeout)


__all__ = [
    "RegistryServer",
    "TLSFiles",
    "TokenRequest",
    "TokenServer",
    "bcrypt_hash",
    "die_with_parent",
    "free_port",
    "grant_all",
    "make_tls_files",
    "need_registry",
    "reap",
    "registry_available",
    "running_registry",
    "stop_all",
]
