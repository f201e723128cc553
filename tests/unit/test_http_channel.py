"""The connection layers under the HTTP channel: what a lingering connection reads, and how the TLS
layer and the per-client wrapper declare what their transport provides."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from zope.interface import Interface, implementer, providedBy

from payloadtags.http.channel import _drain, _provide_as


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def test_a_lingering_connection_drains_what_is_there_and_sees_the_close() -> None:
    server, client = _tcp_pair()
    with server, client:
        server.setblocking(False)
        assert _drain(server) is None  # nothing there: go on reading
        client.sendall(b"x" * 50_000)
        assert _drain(server) is None
        client.setblocking(False)
        assert _drain(server) is None  # all of it was taken in one go: nothing left
        with pytest.raises(BlockingIOError):
            server.recv(1)
        client.close()
        assert isinstance(_drain(server), ConnectionDone)


class IMarked(Interface):
    """An interface of one transport type and not of the other."""


@implementer(IMarked)
class _Transport(StringTransport):
    pass


class _Wrapper(Protocol):
    pass


def test_wrappers_provide_what_their_transport_does_with_one_declaration() -> None:
    first, second = _Wrapper(), _Wrapper()
    _provide_as(first, _Transport())
    _provide_as(second, _Transport())
    for wrapper in (first, second):
        assert IMarked.providedBy(wrapper)
        assert IConsumer.providedBy(wrapper) and IPushProducer.providedBy(wrapper)  # StringTransport's
    assert providedBy(first) is providedBy(second)
    other = _Wrapper()
    _provide_as(other, StringTransport())  # another declaration for another transport type
    assert not IMarked.providedBy(other) and IConsumer.providedBy(other)
