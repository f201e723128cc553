"""Bounds on what one client may make the server hold: every one is a flag (see docs/hardening.md)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs

MiB = 1 << 20

# As kube-apiserver's HTTP server: the head of a request must arrive within this many seconds of the
# connection or of the previous response, and an idle kept-alive connection is closed after IDLE_TIMEOUT.
HEADER_TIMEOUT = 32.0
IDLE_TIMEOUT = 90.0
# The kernel's send buffer of each client connection. Left to autotuning it grows to 4 MB
# (net.ipv4.tcp_wmem), which a client that does not read fills with some 200 list chunks or OpenAPI
# documents, all rendered, encrypted and copied for nothing, and which 1,000 such connections would hold
# in kernel memory. 256 kB (the kernel doubles the value asked for) still keeps a 10 Gbit/s link busy at
# the round trips of a cluster network.
SEND_BUFFER = 128 * 1024
# A request head (its request line and header lines) may cost at most HEAD_BYTES, each header line
# counting HEADER_LINE_COST bytes besides its own for what Python holds per header (a dict entry, a list,
# the bytes objects: about 260 bytes each); beyond it, 431. A connection of the verified front proxy may
# go on to FRONT_PROXY_HEAD_BYTES (Go's http.Server default MaxHeaderBytes, which kube-apiserver and the
# servers of k8s.io/apiserver keep: a user in many groups is one X-Remote-Group line per group), taking
# what goes past HEAD_BYTES from LARGE_HEADS, shared by all connections while their head is read; with
# it spent, 429. Once parsed, what the head costs past HEAD_BYTES is counted against PARSED_LARGE_HEADS
# for as long as its request lasts (a watch's up to an hour; the identity it carries lives on in the
# request), apart from LARGE_HEADS so that such watches do not hold back heads being read; with it spent,
# the request gets 429. Together with the 16 kB line limit and --max-connections, what request heads
# hold is bounded (docs/hardening.md, "Request heads").
HEAD_BYTES = 64 * 1024
HEADER_LINE_COST = 256
FRONT_PROXY_HEAD_BYTES = MiB
LARGE_HEADS = 32 * MiB
PARSED_LARGE_HEADS = 64 * MiB
# After refusing a request whose body is still arriving, keep reading (and dropping) it this long before
# closing, so the client sees the answer rather than a reset of a connection with unread data.
LINGER = 0.5
# Connections taken in over --max-connections when every one is being answered (watches, lists being
# read): each may only ask a health probe and closes after its answer, so that a full server still
# answers the kubelet (which opens a connection per probe) and kube-apiserver's /readyz.
PROBE_CONNECTIONS = 16
# Of those, how many one address may hold: a flood of bare connects from one address fills no more,
# and cannot churn out the kubelet's (one probe, one connection at a time).
PROBE_CONNECTIONS_PER_CLIENT = 2
# Connections taken in over --max-connections, when every one is being answered, for the verified
# front proxy (kube-apiserver, which opens several connections to an aggregated server and carries
# every user of the aggregated API on them): a client's flood holding every connection does not make
# the API unavailable to every kubectl user. Only a TLS handshake tells the front proxy's connection
# from another, so a new one takes a place provisionally and keeps it only if its handshake shows the
# front proxy's certificate (docs/hardening.md, "Connections").
FRONT_PROXY_CONNECTIONS = 16
# Of --max-connections, the share open watches may hold (each holds its connection for as long as it
# lasts: HTTP/1.1, no HTTP/2): the rest stays for everything else, kube-apiserver's other requests
# included, as kube-apiserver keeps watches out of its in-flight limits but not out of its capacity.
WATCH_SHARE = 0.75
# Of --max-requests-inflight, how many more responses may give their seat up while their client does
# not read (api.app._Seat): each still holds its rendered chunks and its connection's buffers (some
# 400 kB for a 3,000-tag list), so that share, not --max-connections, bounds what unread lists hold.
WAITING_SHARE = 0.25
# One user may hold at most 1/USER_WATCH_PARTS of the watches (--max-watches, once held to WATCH_SHARE):
# the defaults' 250 of 750. It takes three users (ServiceAccounts) to hold every watch, not one.
USER_WATCH_PARTS = 3


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"--{attribute.name.replace('_', '-')} must be positive")


@attrs.frozen
class HttpLimits:
    max_request_body_bytes: int = attrs.field(default=3 * MiB, validator=_positive)
    max_requests_inflight: int = attrs.field(default=400, validator=_positive)
    max_connections: int = attrs.field(default=1000, validator=_positive)
    request_timeout: float = attrs.field(default=60.0, validator=_positive)
    header_timeout: float = attrs.field(default=HEADER_TIMEOUT, validator=_positive)
    idle_timeout: float = attrs.field(default=IDLE_TIMEOUT, validator=_positive)
    # Per source address (docs/hardening.md, "One client among many"): connections (the verified
    # front proxy's aside), and the rate of TLS handshakes (the front proxy's aside) and 401 answers.
    max_connections_per_client: int = attrs.field(default=100, validator=_positive)
    handshake_rate_per_client: float = attrs.field(default=20.0, validator=_positive)
    handshake_burst_per_client: int = attrs.field(default=40, validator=_positive)


@attrs.frozen
class WatchLimits:
    """Watches: how many, how much each may hold, how often scopes are reread (docs/watch.md)."""

    # Held to WATCH_SHARE of --max-connections whatever they say (watch_limits).
    max_watches: int = 750
    max_watches_per_user: int = 250
    resync_period: float = 30.0
    idle_scope_ttl: float = 120.0
    history: int = 10000
    send_buffer: int = 1000
    bookmark_interval: float = 60.0
    access_check_interval: float = 1.0
    # (user, namespace) pairs whose rules are noted for resumed watches (`watch.rules`).
    resume_rules: int = 100_000
    # Without timeoutSeconds a stream lasts this long (kube-apiserver picks 30 to 60 minutes).
    default_timeout: float = 1800.0
    max_timeout: float = 3600.0


def watch_limits(watch: WatchLimits, http: HttpLimits) -> WatchLimits:
    """``watch`` with its counts held below ``http.max_connections`` (WATCH_SHARE of it): a watch
    holds a connection, and watches that took every connection would lock out every other request
    and the health probes. One user's are held to 1/USER_WATCH_PARTS of the watches so held, so that
    one user (one ServiceAccount) cannot take every watch and lock the others' informers out."""
    most = max(1, int(http.max_connections * WATCH_SHARE))
    watches = min(watch.max_watches, most)
    return attrs.evolve(
        watch,
        max_watches=watches,
        max_watches_per_user=min(watch.max_watches_per_user, max(1, watches // USER_WATCH_PARTS)),
    )


def held_watch_limits(
    asked: WatchLimits, held: WatchLimits, max_connections: int, given: Collection[str] = ()
) -> list[tuple[bool, str]]:
    """What watch_limits lowered, one line each, to log at start: (whether the value held was one the
    operator set, rather than a default, and the line). A default held is no mistake to warn about; a
    flag given (its name in ``given``) is one even when it says the default, as is any other value."""
    defaults = WatchLimits()
    notes: list[tuple[bool, str]] = []
    for name, why in (
        ("max_watches", f"three quarters of --max-connections={max_connections}"),
        (
            "max_watches_per_user",
            f"a third of --max-watches ({held.max_watches}), so that one user cannot hold every watch",
        ),
    ):
        flag, value, lowered = "--" + name.replace("_", "-"), getattr(asked, name), getattr(held, name)
        if lowered >= value:
            continue
        if name not in given and value == getattr(defaults, name):
            notes.append((False, f"{flag} defaults to {lowered} here, {why}"))
        else:
            notes.append((True, f"{flag}={value} is held to {lowered}, {why}"))
    return notes


SOMAXCONN = "/proc/sys/net/core/somaxconn"


def listen_backlog(path: str = SOMAXCONN, fallback: int = 4096) -> int:
    """The largest listen queue the kernel allows (the kernel caps larger values at it anyway)."""
    try:
        with open(path, encoding="ascii") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return fallback
    return max(value, 1)
