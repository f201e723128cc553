"""What the connection limits close, counted and said: an operator sees them act (review r1obs L2).

A connection from an address at --max-connections-per-client is closed (before its TLS handshake, or
once it is done if the address reached its cap meanwhile); on a server at --max-connections a new
connection evicts another (docs/hardening.md, "Connections"), or is closed when none can go. Clients
behind one address (a NAT gateway, an ingress) or a server too small for its clients meet resets
then, and say nothing the server could hear. So each is counted by reason
(payloadtags_connections_refused_total, docs/metrics.md) and said in the log at most once per period
per reason, with the address and the limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from twisted.logger import Logger

from payloadtags.limits import HttpLimits
from payloadtags.onceper import OncePerPeriod

log = Logger()

# The reasons, a closed set (the metric's label values): LimitedConnections' words for them first.
CLIENT_LIMIT: Final = "client_limit"  # the address is at --max-connections-per-client
SERVER_FULL: Final = "server_full"  # the server is at --max-connections, every connection being answered
EVICTED: Final = "evicted"  # closed to make room for a new one at --max-connections
REASONS: Final = (CLIENT_LIMIT, SERVER_FULL, EVICTED)
_REASON_OF: Final = {"client-limit": CLIENT_LIMIT, "refused": SERVER_FULL, "evicted": EVICTED}
# What each reason's line says, and the limit (an HttpLimits field) it names.
_SAID: Final = {
    CLIENT_LIMIT: (
        "closed a connection from {address}: it has --max-connections-per-client={limit} connections "
        "open already (clients behind one address share it)",
        "max_connections_per_client",
    ),
    SERVER_FULL: (
        "closed a new connection from {address}: --max-connections={limit} are open, each being "
        "answered, none to evict",
        "max_connections",
    ),
    EVICTED: (
        "evicted a connection from {address} to make room for a new one: --max-connections={limit} are open",
        "max_connections",
    ),
}
# How often each reason is said again while it goes on (a flood meets it at every connect).
REFUSAL_LOG_PERIOD: Final = 60.0


class ConnectionRefusals:
    """LimitedConnections' ``on_refused``: counts each connection a limit closes (``count``, told the
    reason) and says it once per REFUSAL_LOG_PERIOD per reason, with how many more there were."""

    def __init__(
        self,
        limits: HttpLimits,
        count: Callable[[str], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._count = count
        self._said: OncePerPeriod[str] = OncePerPeriod(REFUSAL_LOG_PERIOD, monotonic)

    def __call__(self, why: str, host: str) -> None:
        reason = _REASON_OF[why]
        self._count(reason)
        said = self._said(reason)
        if said is None:
            return
        text, limit = _SAID[reason]
        log.warn(
            text + "{more}",
            address=host,
            limit=getattr(self._limits, limit),
            more=said.more(),
            reason=reason,
        )


__all__ = ["CLIENT_LIMIT", "EVICTED", "REASONS", "REFUSAL_LOG_PERIOD", "SERVER_FULL", "ConnectionRefusals"]
