"""Connections to the cluster API with TCP keepalive, as client-go dials them.

A peer that vanished without closing (a node gone, a NAT or load balancer that dropped the flow) leaves
a connection that looks open forever; keepalive probes find it out, so a pooled connection is closed
before a request is sent on it and a watch without bookmarks does not hang until its deadline.
"""

from __future__ import annotations

import socket
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

# client-go's dialer probes after 30 s of silence; a dead peer is then noticed within a minute.
KEEPALIVE_IDLE: Final = 30
KEEPALIVE_INTERVAL: Final = 10
KEEPALIVE_COUNT: Final = 3


def enable_keepalive(transport: Any) -> None:
    """Turn on keepalive for a TCP transport, with Linux's timing options where they exist."""
    transport.setTcpKeepAlive(True)
    handle = transport.getHandle()
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, option):
            handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


@implementer(IStreamClientEndpoint)
class _KeepAliveEndpoint:
    def __init__(self, tcp: HostnameEndpoint) -> None:
        self._tcp = tcp

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def connected(protocol: IProtocol) -> IProtocol:
            # Under TLS the protocol is the TLS layer; either way its transport is the TCP connection.
            enable_keepalive(protocol.transport)  # type: ignore[attr-defined]
            return protocol

        return self._tcp.connect(protocolFactory).addCallback(connected)


@implementer(IAgentEndpointFactory)
class KeepAliveEndpoints:
    """What ``twisted.web.client.Agent`` builds by default (TCP, or TLS over TCP), plus keepalive."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connect_timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        tcp = _KeepAliveEndpoint(
            HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._connect_timeout)
        )
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tcp)
        return tcp
