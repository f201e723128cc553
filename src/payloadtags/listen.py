"""The listening socket: an unspecified --bind-address listens on both IP families, as a Go server does.

Twisted's own TCP ports are single-family. For ``0.0.0.0`` and ``::`` one IPv6 socket with
IPV6_V6ONLY turned off takes IPv4 connections as well (as IPv4-mapped addresses); a host without
IPv6 falls back to IPv4 only.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger

from payloadtags.limits import listen_backlog
from payloadtags.settings import UNSPECIFIED_ADDRESSES
from payloadtags.startup import ConfigurationError

log = Logger()


def dual_stack_socket() -> socket.socket | None:
    """An IPv6 TCP socket that also accepts IPv4, not yet bound; None where the host has no IPv6."""
    if not socket.has_ipv6:
        return None
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    except OSError:
        sock.close()
        return None
    return sock


def _cannot_listen(address: str, port: int, error: BaseException | None) -> ConfigurationError:
    """The flag at fault and the cause the OS gave, with a hint only where the cause is certain."""
    shown = f"[{address}]" if ":" in address else address
    number = getattr(error, "errno", None)
    reason = (getattr(error, "strerror", None) or str(error or "") or "unknown error").lower()
    flag = f"--secure-port {port}"
    if number == errno.EADDRINUSE:
        reason += " (another process holds the port; choose another --secure-port or --bind-address)"
    elif number == errno.EACCES and 0 < port < 1024:
        reason += (
            " (ports below 1024 are privileged: choose a --secure-port above 1023, or give the process "
            "the CAP_NET_BIND_SERVICE capability)"
        )
    elif number == errno.EADDRNOTAVAIL:
        flag = f"--bind-address {address}"
        reason += " (the address is not one of this machine's; choose another --bind-address)"
    return ConfigurationError(f"{flag}: cannot listen on {shown}:{port}: {reason}")


def listen(reactor: Any, address: str, port: int, factory: IProtocolFactory) -> IListeningPort:
    """Listen now; a port that cannot be had is a ConfigurationError naming the flag."""
    if address in UNSPECIFIED_ADDRESSES:
        sock = dual_stack_socket()
        if sock is not None:
            try:
                sock.bind(("::", port))
                sock.listen(listen_backlog())
                sock.setblocking(False)
                return reactor.adoptStreamPort(sock.fileno(), socket.AF_INET6, factory)  # type: ignore[no-any-return]
            except OSError as error:
                if error.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise _cannot_listen("::", port, error) from None
                log.info("no IPv6 on this host: listening on IPv4 only")
            finally:
                # The reactor's port holds its own duplicate of the descriptor.
                sock.close()
        address = "0.0.0.0"
    try:
        return reactor.listenTCP(port, factory, backlog=listen_backlog(), interface=address)  # type: ignore[no-any-return]
    except CannotListenError as error:
        raise _cannot_listen(address, port, error.socketError) from None
