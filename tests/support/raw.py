"""A raw HTTPS client on blocking sockets: sends exactly the bytes a hostile client would.

Its functions block, so tests run them in threads (``deferToThread``) while the server under test
runs on the reactor.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from typing import Any

import attrs

from tests.support.pki import Issued


@attrs.frozen
class Reply:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def is_status(self, code: int) -> bool:
        """A Kubernetes Status in JSON with this code: what every error here must look like."""
        if self.code != code or self.headers.get("content-type") != "application/json":
            return False
        status = self.json()
        return (
            status.get("kind") == "Status"
            and status.get("code") == code
            and bool(status.get("message"))
            and bool(status.get("reason"))
        )


def _close_abandoned_tls_socket(error: BaseException) -> None:
    # When the server resets the connection before the handshake (a refused client), CPython's
    # SSLSocket constructor raises from its pre-handshake check without closing the socket it made,
    # which already owns the descriptor: its ResourceWarning at garbage collection would fail whatever
    # test runs then. It is still reachable from the traceback, as the constructor's `self`.
    tb = error.__traceback__
    while tb is not None:
        made = tb.tb_frame.f_locals.get("self")
        if isinstance(made, ssl.SSLSocket):
            made.close()
        tb = tb.tb_next


@attrs.frozen
class Target:
    port: int
    ca_file: str
    # The local address to connect from (127.0.0.2, 127.0.0.3, ... are distinct source addresses on
    # Linux): the server's per-client limits tell clients apart by it.
    source: str | None = None

    def context(self, user: Issued | None = None, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if user is not None:
            context.load_cert_chain(str(user.cert_file), str(user.key_file))
        if version is not None:
            context.minimum_version = context.maximum_version = version
        return context

    def connect(
        self,
        user: Issued | None = None,
        *,
        context: ssl.SSLContext | None = None,
        session: ssl.SSLSession | None = None,
        timeout: float = 10.0,
        receive_buffer: int | None = None,
        source: str | None = None,
    ) -> ssl.SSLSocket:
        """``source``: the local address to connect from, instead of the target's ``source``."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if (source or self.source) is not None:
                raw.bind((source or self.source, 0))
            if receive_buffer is not None:
                # Before connecting, so that the window the server sees stays this small.
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            raw.settimeout(timeout)
            raw.connect(("127.0.0.1", self.port))
            return (context or self.context(user)).wrap_socket(
                raw, server_hostname="localhost", session=session
            )
        except BaseException as error:
            raw.close()
            _close_abandoned_tls_socket(error)
            raise

    def handshake(self, raw: socket.socket, user: Issued | None = None) -> ssl.SSLSocket:
        """The TLS handshake on a TCP connection made before (a test that orders connects and
        handshakes of several connections)."""
        try:
            return self.context(user).wrap_socket(raw, server_hostname="localhost")
        except BaseException as error:
            raw.close()
            _close_abandoned_tls_socket(error)
            raise


def request_bytes(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _fill(sock: ssl.SSLSocket, data: bytearray, until: int) -> None:
    while len(data) < until:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a response")
        data += chunk


def _line(sock: ssl.SSLSocket, data: bytearray) -> bytes:
    while b"\r\n" not in data:
        _fill(sock, data, len(data) + 1)
    line, _, rest = bytes(data).partition(b"\r\n")
    data[:] = rest
    return line


def read_reply(sock: ssl.SSLSocket, buffer: bytearray | None = None, head: bool = False) -> Reply:
    """Read one response; ``buffer`` carries bytes read past it (pipelined responses) between calls.
    The answer to a HEAD request (``head``) has no body, whatever its headers say."""
    data = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {bytes(data[:200])!r}")
        data += chunk
    top, _, rest = bytes(data).partition(b"\r\n\r\n")
    data[:] = rest
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    code = int(status_line.split(" ")[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if code == 100:
        return read_reply(sock, data, head)
    body = bytearray()
    if head or code in (204, 304):
        pass
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(_line(sock, data).split(b";")[0], 16)
            _fill(sock, data, size + 2)
            body += data[:size]
            data[:] = data[size + 2 :]
            if size == 0:
                break
    else:
        length = int(headers.get("content-length", "0"))
        _fill(sock, data, length)
        body += data[:length]
        data[:] = data[length:]
    return Reply(code, headers, bytes(body))


def exchange(target: Target, raw: bytes, user: Issued | None = None, *, timeout: float = 10.0) -> Reply:
    with target.connect(user, timeout=timeout) as sock:
        sock.sendall(raw)
        return read_reply(sock, head=raw.startswith(b"HEAD "))


def closed_within(sock: ssl.SSLSocket, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (reading and dropping anything)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            return True
    return False
