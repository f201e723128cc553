"""One client among many: what one source address may take of the server, and whose turn it is.

* Connections from one address are capped (``max_connections_per_client``): each counts once its
  TLS handshake is done, the front proxy's (its verified certificate) never. A new one from an address
  at the cap is closed before its handshake; one whose address reached the cap while its handshake was
  made, once it is done. Until their handshake, an address's new connections are paced by its tokens
  (below), not capped: kube-apiserver's concurrent new connections are not refused before they show
  its certificate.
* Unauthenticated work is paid from a token bucket per address (``handshake_rate_per_client``
  a second, up to ``handshake_burst_per_client``): a TLS handshake takes a token before it
  starts, given back when the client presents a verified certificate; a request answered 401 takes
  one. An address out of tokens waits: its new handshakes until a token is there, its requests until
  the bucket is out of debt.
* The server's work is shared in turns (:class:`FairScheduler`): a request is run when it is whole,
  but at most one request per client per turn of the reactor; the others wait for the next turn, in
  round-robin order. A client is an address, except that each connection of the verified front
  proxy (kube-apiserver, which carries many users over a few addresses) is a client of its own.

Health probes bypass all of it (they are cheap, and a busy server is not a dead one).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from payloadtags.limits import HttpLimits

log = Logger()

# ("address", "10.1.2.3") for a source address, ("connection", n) for one front-proxy connection.
ClientKey = tuple[str, str | int]
_connection_numbers = itertools.count(1)
# Entries a bucket's log keeps at most (Bucket._note), for its memory: LOG_LIMIT, or LOG_PER_BURST per
# token of its burst if more. Past it, its oldest half is folded into its start, which gives back less
# for a connect still under way whose take is folded in, never more. A connect logs at most four entries
# in each bucket (refill, take, refill, show; refills merge), so a take stays in the log while up to its
# burst's connects of its address come after it: at 512 entries and a burst of 400, one of
# kube-apiserver's connects under way while 64 to 128 others of its connects were taken in lost its
# give-back (review-conns19 F1). Its storms do not need it: only a few of their connects are under way
# at once, far fewer than would fold past one of them even at 512.
LOG_LIMIT = 512
LOG_PER_BURST = 8


@attrs.define(eq=False)
class Ticket:
    """One connection's takes of its address's buckets (their numbers, Bucket.taken): which of the
    takes in a Bucket's log are its own, to be left out when it is spared (Address.pending)."""

    bucket: int | None = None  # its handshake token
    accepted: int | None = None  # its connect
    pending: bool = True  # not yet shown nor closed: it may still be spared


def address_key(host: str) -> ClientKey:
    return ("address", host)


def connection_key() -> ClientKey:
    return ("connection", next(_connection_numbers))


@attrs.define
class Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float
    # Floor of a take (``accepted``: minus its burst; the handshake bucket: none, a 401 takes it into
    # debt).
    floor: float = float("-inf")
    # Its log, kept while a connection of its address may still be spared or was spared and not yet
    # given back (Clients._settle): ``start``, its tokens before the first entry; then each change as
    # ("add", amount) (its refill, merged), ("take", number) (a take, numbered from ``taken``), or
    # ("show", 1) (a front-proxy show, whose give-back counts as its own token only). Replayed
    # without the spared connections' takes (without): what it would hold had they never come.
    start: float = 0.0
    log: list[tuple[str, float]] = attrs.Factory(list)
    taken: int = 0
    # The numbers of the takes in its log of its address's connects evicted before their handshake
    # was done, their token taken (Address, ClientConnection.unshown).
    spared: set[int] = attrs.Factory(set)
    folded: int = 0  # the takes numbered up to this one were folded into its start

    def _note(self, kind: str, amount: float) -> None:
        if not self.log:
            self.start = self.tokens
        if kind == "add" and self.log and self.log[-1][0] == "add":
            # min(burst, min(burst, x + a) + b) == min(burst, x + a + b) for a, b >= 0
            amount += self.log.pop()[1]
        elif len(self.log) >= max(LOG_LIMIT, LOG_PER_BURST * self.burst):
            # Replayed from its level then, not from before those, without the takes already spared
            # (exact for them; kept spent, their give-back was lost: review-conns17 F1): with the takes
            # among them spared later kept, it gives back less, never more.
            half = len(self.log) // 2
            self.start = self.without(self.spared, half)
            self.folded = max([self.folded] + [int(n) for kind, n in self.log[:half] if kind == "take"])
            self.spared = {taken for taken in self.spared if taken > self.folded}
            del self.log[:half]
        self.log.append((kind, amount))

    def refill(self, now: float) -> float:
        added = (now - self.stamp) * self.rate
        if self.log and added > 0:
            self._note("add", added)
        self.tokens = min(self.burst, self.tokens + added)
        self.stamp = now
        return self.tokens

    def take(self) -> int:
        """Takes a token (down to its floor), logged; returns the take's number. The caller refills
        first."""
        self.taken += 1
        self._note("take", self.taken)
        self.spend()
        return self.taken

    def spend(self) -> None:
        """Takes a token (down to its floor), unlogged: for a bucket nothing is ever given back to.
        The caller refills first."""
        self.tokens = max(self.tokens - 1, self.floor)

    def without(self, spared: set[int], upto: int | None = None) -> float:
        """What it would hold now had the takes numbered ``spared`` never been made, and so no
        give-back of them: its log replayed from its start, each show giving its own token only.
        ``upto``: only its first entries: with ``spared`` empty, no more than it held after those."""
        tokens = self.start
        for kind, amount in self.log[:upto]:
            if kind == "add":
                tokens = min(self.burst, tokens + amount)
            elif kind == "show":
                tokens = min(self.burst, tokens + 1)
            elif amount not in spared:
                tokens = max(tokens - 1, self.floor)
        return tokens

    def show(self) -> None:
        """A front-proxy show: its own token back, and what the spared takes still keep spent
        (without). The caller refills first."""
        self._note("show", 1)
        self.tokens = max(min(self.burst, self.tokens + 1), self.without(self.spared))

    def settle(self) -> None:
        """No connection of its address may be spared or wait for a give-back: its log is dropped."""
        self.log.clear()
        self.spared.clear()

    def wait_for(self, level: float, now: float) -> float:
        """Seconds until the bucket holds ``level`` tokens."""
        missing = level - self.refill(now)
        return max(0.0, missing / self.rate)


@attrs.define(eq=False)
class Address:
    host: str
    bucket: Bucket
    open: int = 0  # connections open from it
    counted: int = 0  # of them, those counted against the cap: handshaken, and not the front proxy's
    # Its connections closed bare (no byte come: refused, evicted, or timed out before a handshake
    # began; not one evicted while the server held it waiting for its turn, its token taken, never let
    # speak), paid at the handshake rate: whether it floods (Clients.flooding). Paid at the close, not
    # at the connect: a burst of connections that all make their handshake (kube-apiserver's, made at
    # once) costs nothing here, nor do those of it evicted while they waited for their turn, while a
    # flood of bare connects pays for each.
    connects: Bucket = attrs.field(default=None)
    # Its connects taken in (not refused at its cap), paid at the handshake rate when taken in, down
    # to minus the burst; the front proxy's given back once its certificate is seen: past its burst
    # and rate, the address floods however its connections end. Without it, a steady flood at one and
    # a half to twice its rate, one byte on each connect (none closed bare), flooded only while a
    # handshake waited for a token, which each new token ended for a moment: every other connect
    # found the address not flooding and evicted anyone's fresh connection (review-conns5 F2).
    accepted: Bucket = attrs.field(default=None)
    # Its connects evicted before their handshake was done, their token taken (ClientConnection.unshown: held
    # for their turn, or let read and evicted during their handshake) are kept as their takes of its handshake
    # ``bucket`` and of ``accepted`` (Ticket, Bucket.spared), as long as the buckets' logs are
    # (Clients._settle). Once one of its connections shows the front proxy's certificate, each bucket is given
    # back what those takes still keep spent: it is then as full as it would be had those connects never come
    # (Bucket.show; never fuller, whatever it was given or spent meanwhile: its log is replayed without them).
    # A burst of kube-apiserver's evicts one another as they wait for their turn, or during their handshakes
    # when they come a few ms apart (on a server full of authenticated clients' idle connections), and its
    # reflectors connect again at once: charged, 30 and their 29 retries flooded its address, and its next
    # connection evicted its own answered one (review-conns7 F1; review-conns9 F1 for those evicted during
    # their handshake). Given back only to the front proxy's address: a flood that has its own connects
    # evicted before their handshake is done, every one having taken a handshake token, could otherwise
    # connect at twice its rate without flooding (one sharing kube-apiserver's address has its own given back
    # with them, never more than it would have without those connects). Given back as a count, in full, they
    # came back twice, by the refill and by the show (review-conns13 F1); less everything the buckets were
    # given since each was taken in, kube-apiserver lost each show's own token for every one of its connects
    # under way at that show and evicted after it, and its storms flooded again (review-conns15 F1).
    pending: int = 0  # its Tickets pending: connections taken in, neither shown nor closed
    unreturned: bool = False  # one of its connects was spared since it last showed the front proxy
    # Handshakes waiting for a token, each with its connection's Ticket.
    waiting: deque[tuple[Callable[[], bool], Ticket | None]] = attrs.Factory(deque)
    release: IDelayedCall | None = None
    forget: IDelayedCall | None = None
    settle: IDelayedCall | None = None  # Clients._settle_later


class Clients:
    """Per source address: open connections, the bucket of unauthenticated work, waiting handshakes."""

    def __init__(
        self, limits: HttpLimits, clock: IReactorTime, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self.clock = clock  # for timers only
        # The buckets fill on the monotonic clock: on the reactor's wall clock a step back would
        # drain them, and new connections, /livez probes included, would wait as long as the step.
        self.monotonic = monotonic
        self.addresses: dict[str, Address] = {}
        self.refused = 0  # connections closed at the per-client cap
        self.delayed = 0  # handshakes that had to wait for a token

    def _address(self, host: str) -> Address:
        found = self.addresses.get(host)
        if found is None:
            burst = float(self.limits.handshake_burst_per_client)
            bucket = Bucket(self.limits.handshake_rate_per_client, burst, burst, self.monotonic())
            connects = Bucket(
                self.limits.handshake_rate_per_client, burst, burst, self.monotonic(), floor=-burst
            )
            accepted = Bucket(
                self.limits.handshake_rate_per_client, burst, burst, self.monotonic(), floor=-burst
            )
            found = self.addresses[host] = Address(host, bucket, connects=connects, accepted=accepted)
        return found

    # -- connections --------------------------------------------------------------------------------

    def opened(self, host: str) -> Ticket | None:
        """A new connection from ``host``: its Ticket, to be passed to handshake, handshaken and
        closed; None when the address is at its cap (close it). It is counted against the cap once its
        handshake is done (handshaken)."""
        address = self._address(host)
        if address.counted >= self.limits.max_connections_per_client:
            self.refused += 1
            self._forget_later(address)
            return None
        address.open += 1
        self._settle_full(address)
        accepted = address.accepted
        accepted.refill(self.monotonic())
        address.pending += 1
        return Ticket(accepted=accepted.take())

    def flooding(self, host: str) -> bool:
        """Whether ``host`` opens connections faster than its handshake rate: its handshakes wait for a
        token, or its connections closed bare (one closed while it waits for its handshake's token
        takes no token, but is paid for here, unless the server evicted it while it waited: see
        ClientConnection.spared) have spent half its burst or more, or its connects taken in (this
        one included) are past its burst and rate, however they ended. Within its burst, connections
        still open, their handshake under way or waiting for their turn, are not counted: those of a
        burst are not yet known to be a flood's."""
        address = self.addresses.get(host)
        if address is None:
            return False
        now = self.monotonic()
        connects = address.connects
        return (
            bool(address.waiting)
            or connects.refill(now) < max(1.0, connects.burst / 2)
            or address.accepted.refill(now) < 0
        )

    def handshake(self, host: str, start: Callable[[], bool], ticket: Ticket | None = None) -> bool:
        """Whether the handshake of a connection from ``host`` may start now. If not, ``start`` is
        called when a token is there; it answers whether the connection was still open to take it."""
        address = self._address(host)
        if not address.waiting and address.bucket.refill(self.monotonic()) >= 1:
            self._take_token(address, ticket)
            return True
        self.delayed += 1
        address.waiting.append((start, ticket))
        self._release_later(address)
        return False

    def handshaken(self, host: str, front_proxy: bool, ticket: Ticket | None = None) -> bool:
        """The TLS handshake of a connection from ``host`` is done. The front proxy's (it presented
        the front proxy's verified certificate) is never counted against the cap, and its handshake
        token and its connect are given back, with the handshake tokens and connects of its address
        spared since (see Address.pending), as much as they still keep spent: kube-apiserver's
        connections cost it nothing, however many it opens at once (up to its burst) and however
        often it does so again.
        Any other is counted now; False when the address reached its cap meanwhile (close it)."""
        address = self._address(host)
        self._resolve(address, ticket)
        if front_proxy:
            # The spared connects' handshake tokens too: kept spent, kube-apiserver's third round of
            # reconnects within a second found its bucket near empty, its connects waited for a
            # token, those evicted while waiting were charged as bare, and its address flooded
            # (review-conns11 F1).
            now = self.monotonic()
            for bucket in (address.bucket, address.accepted):
                bucket.refill(now)
                bucket.show()
            address.unreturned = False
            self._settle(address)
            self._release(address)
            return True
        self._settle(address)
        if address.counted >= self.limits.max_connections_per_client:
            self.refused += 1
            return False
        address.counted += 1
        return True

    def closed(
        self,
        host: str,
        counted: bool,
        bare: bool = False,
        spared: bool = False,
        ticket: Ticket | None = None,
    ) -> None:
        """A connection from ``host`` is closed; ``bare``: no byte ever came on it (a connect only);
        ``spared``: the server evicted it before its handshake was done, its token taken (see
        Address.pending); ``ticket``: its takes (opened)."""
        address = self._address(host)
        address.open -= 1
        if counted:
            address.counted -= 1
        if spared and ticket is not None and ticket.pending:
            for taken, bucket in ((ticket.bucket, address.bucket), (ticket.accepted, address.accepted)):
                if taken is not None and bucket.log and taken > bucket.folded:
                    bucket.spared.add(taken)
                    # Only then: its takes already folded in have nothing left to give back, and
                    # the logs are not to be kept for them (review-conns19 N2).
                    address.unreturned = True
        self._resolve(address, ticket)
        self._settle(address)
        if bare:
            address.connects.refill(self.monotonic())
            address.connects.spend()
        self._forget_later(address)

    # -- requests -----------------------------------------------------------------------------------

    def unauthenticated(self, host: str) -> None:
        """A request from ``host`` was answered 401."""
        address = self._address(host)
        self._settle_full(address)
        address.bucket.refill(self.monotonic())
        address.bucket.take()
        self._settle(address)

    def _resolve(self, address: Address, ticket: Ticket | None) -> None:
        if ticket is not None and ticket.pending:
            ticket.pending = False
            address.pending -= 1

    def _settle(self, address: Address) -> None:
        """Drops the buckets' logs once none of the address's connections may still be spared or is
        spared and not given back: the buckets are then as full as without any spared connect. With
        one spared and not given back, once both buckets are full again (_settle_later)."""
        if address.pending:
            return
        if not address.unreturned:
            address.bucket.settle()
            address.accepted.settle()
        else:
            self._settle_later(address)

    def _settle_full(self, address: Address) -> None:
        """Before a connect is taken in or a 401 takes a token (a handshake's take has its own
        connection pending), and when both buckets should be full (_settle_later): once nothing is
        pending and both buckets are full again, the replay without the spared takes cannot be fuller
        than they are, so nothing is left to give back and the logs are dropped. Else an address never
        the front proxy's that once had a connect spared kept both logs for as long as it kept a
        connection (review-conns17 L1)."""
        if address.pending or not (address.bucket.log or address.accepted.log):
            return
        now = self.monotonic()
        buckets = (address.bucket, address.accepted)
        if all(bucket.refill(now) >= bucket.burst for bucket in buckets):
            address.unreturned = False
            self._settle(address)

    def _settle_later(self, address: Address) -> None:
        """Nothing pending, a spared connect not given back: the logs are dropped once both buckets
        are full again (_settle_full), even when no connect or 401 of the address comes then. Else one
        that kept a connection open, requests only on it, held them as long as it did (review-conns19
        L1)."""
        if address.settle is not None:
            return
        wait = _until_full(self.monotonic(), address.bucket, address.accepted)

        def settle() -> None:
            address.settle = None
            self._settle_full(address)
            if not address.pending and address.unreturned:  # taken from since: not full yet
                self._settle_later(address)

        address.settle = _call_after(self.clock, wait, settle)

    def ready_in(self, key: ClientKey) -> float:
        """Seconds until this client's next request may run (0: now)."""
        kind, host = key
        if kind != "address":
            return 0.0
        address = self.addresses.get(str(host))
        if address is None:
            return 0.0
        return address.bucket.wait_for(0.0, self.monotonic())

    # -- waiting handshakes and forgetting addresses -----------------------------------------------

    def _take_token(self, address: Address, ticket: Ticket | None) -> None:
        """A handshake takes its token (refilled by the caller), as its connection's take if it has a
        Ticket; without one (a test's) it can never be spared, and the log it may have started is
        dropped unless it is needed."""
        taken = address.bucket.take()
        if ticket is not None:
            ticket.bucket = taken
        else:
            self._settle(address)

    def _release(self, address: Address) -> None:
        now = self.monotonic()
        while address.waiting and address.bucket.refill(now) >= 1:
            start, ticket = address.waiting.popleft()
            if start():  # a connection closed while waiting takes no token
                self._take_token(address, ticket)
        if address.waiting:
            self._release_later(address)
        else:
            # Its last connection may have closed while its handshake waited (closed() could not
            # forget the address then): forgotten once its buckets are full, as any other.
            self._forget_later(address)

    def _release_later(self, address: Address) -> None:
        if address.release is not None:
            return
        wait = address.bucket.wait_for(1.0, self.monotonic())

        def release() -> None:
            address.release = None
            self._release(address)

        address.release = _call_after(self.clock, wait, release)

    def _forget_later(self, address: Address) -> None:
        """Drop the address's record once nothing is open and its bucket is full again."""
        if address.open > 0 or address.waiting or address.forget is not None:
            return
        wait = _until_full(self.monotonic(), address.bucket, address.connects, address.accepted)
        if wait == 0:
            if self.addresses.get(address.host) is address:
                del self.addresses[address.host]
            return

        def forget() -> None:
            address.forget = None
            self._forget_later(address)

        address.forget = _call_after(self.clock, wait, forget)


def _until_full(now: float, *buckets: Bucket) -> float:
    """Seconds until every one of these buckets is full again (0: they are)."""
    return max(bucket.wait_for(bucket.burst, now) for bucket in buckets)


def _call_after(clock: IReactorTime, wait: float, call: Callable[[], None]) -> IDelayedCall:
    # At least a millisecond: a wait shorter than the clock's resolution at this time (a bucket a
    # rounding error short of full) would be due at once and find nothing changed, without end
    # under a test's Clock.
    return clock.callLater(max(wait, 0.001), call)


class FairScheduler:
    """Runs whole requests in turns: at most one per client per turn of the reactor, round-robin."""

    def __init__(self, clock: IReactorTime, ready_in: Callable[[ClientKey], float]) -> None:
        self.clock = clock
        self.ready_in = ready_in
        self._queues: dict[ClientKey, deque[Callable[[], None]]] = {}
        self._turns: deque[ClientKey] = deque()  # clients with work waiting, in turn order
        self._parked: dict[ClientKey, IDelayedCall] = {}  # clients out of tokens, until they are not
        self._served: set[ClientKey] = set()  # clients that had their turn in this round
        self._round: IDelayedCall | None = None
        self.deferred = 0  # requests that waited for a later turn
        # Counts the rounds run: a turn given (claimed, or work run) while it has a value is that
        # round's, and the client's next is in a later one.
        self.round = 0

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def claim(self, key: ClientKey) -> bool:
        """Whether this client may run work now, in this turn; if so, this was its turn."""
        if key in self._queues or key in self._served or self.ready_in(key) > 0:
            return False
        self._served.add(key)
        self._next_round()
        return True

    def submit(self, key: ClientKey, work: Callable[[], None]) -> None:
        if self.claim(key):
            work()
            return
        self.deferred += 1
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(work)
        self._next_round()

    def _next_round(self) -> None:
        if self._round is None:
            self._round = self.clock.callLater(0, self._run_round)

    def _run_round(self) -> None:
        self._round = None
        self.round += 1
        self._served.clear()
        for _ in range(len(self._turns)):
            key = self._turns.popleft()
            wait = self.ready_in(key)
            if wait > 0:
                self._parked[key] = self.clock.callLater(wait, self._unpark, key)
                continue
            queue = self._queues[key]
            work = queue.popleft()
            if queue:
                self._turns.append(key)
            else:
                del self._queues[key]
            self._served.add(key)
            try:
                work()
            except Exception:
                log.failure("a request failed to start")
        if self._turns or self._served:
            self._next_round()

    def _unpark(self, key: ClientKey) -> None:
        del self._parked[key]
        self._turns.append(key)
        self._next_round()
