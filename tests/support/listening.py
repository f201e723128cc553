"""Twisted listening ports in tests: the port number one got, and stopping one."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort


def tcp_port(listener: IListeningPort) -> int:
    host = listener.getHost()
    assert isinstance(host, IPv4Address), host
    return host.port


async def stop_listening(listener: IListeningPort) -> None:
    # stopListening may answer a Deferred or, when it stopped at once, nothing.
    stopped = listener.stopListening()
    if stopped is not None:
        await stopped
