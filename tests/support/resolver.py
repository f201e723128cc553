"""A host name resolver that the test drives, for clients on a MemoryReactorClock.

With it a real Agent and HostnameEndpoint can be held "resolving the host name" for as long as a
test needs: a request cancelled then fails inside Twisted with DNSLookupError("Couldn't find the
hostname …"), exactly as on a real reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError  # HostnameEndpoint never cancels a resolution


@implementer(IHostnameResolver)
class HeldResolver:
    """Resolves nothing until the test says so: each lookup stays in progress."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, int, IResolutionReceiver]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        self.lookups.append((hostName, portNumber, resolutionReceiver))
        return resolution

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.lookups]

    def finish(self, *addresses: str) -> None:
        """End the oldest lookup with these addresses (none: the name does not resolve)."""
        _name, port, receiver = self.lookups.pop(0)
        for address in addresses:
            receiver.addressResolved(IPv4Address("TCP", address, port))
        receiver.resolutionComplete()


def held_reactor() -> tuple[MemoryReactorClock, HeldResolver]:
    reactor = MemoryReactorClock()
    resolver = HeldResolver()
    reactor.installNameResolver(resolver)
    return reactor, resolver
