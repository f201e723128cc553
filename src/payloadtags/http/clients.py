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

import bisect
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from payloadtags.limits import HttpLimits

log = Logger()

# ("address", "10.1.2.3") for a source address, ("connection", n) for one front-proxy connection.
ClientKey = tuple[str, str | int]
_connection_numbers = itertools.count(1)


# What an address's handshake bucket and its ``accepted`` had been given (Bucket.restored) when one of
# its connections was taken in.
Restored = tuple[float, float]


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
    # Tokens it was given since it was made: its refill, at its rate whether it was full or not, what
    # was given back (give_back), and a take its floor forgave (Clients.opened). What a give-back of
    # tokens taken since a moment (spared_back) counts as given back already: whatever the bucket
    # would have held more without those tokens shrinks by no more than that.
    restored: float = 0.0

    def refill(self, now: float) -> float:
        self.restored += (now - self.stamp) * self.rate
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def give_back(self, tokens: float) -> None:
        self.tokens = min(self.burst, self.tokens + tokens)
        self.restored += tokens

    def spared_back(self, taken: list[float]) -> float:
        """How many of the tokens taken when ``restored`` stood at each of ``taken`` (oldest first)
        are still missing, what it was given since counted as giving them back first: never more
        than it would hold more without them (what it was given filled it as much with them as
        without, unless it reached its burst without them; then no more was lost than was given).
        The caller brings its refill up to now first."""
        back = 0.0
        for count, restored in enumerate(reversed(taken), 1):
            back = max(back, count - (self.restored - restored))
        return back

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
    # Its connects evicted before their handshake was done, their token taken (ClientConnection.unshown:
    # held for their turn, or let read and evicted during their handshake), since one of its
    # connections last showed the front proxy's certificate, at most its burst (the newest), each as
    # what its buckets had been given when it was taken in (Restored), oldest first: given back to
    # ``accepted`` and to its handshake ``bucket`` then, less what each was given since, by its refill
    # or a give-back (Bucket.spared_back). A burst of kube-apiserver's evicts one another as they wait
    # for their turn, or during their handshakes when they come a few ms apart (on a server full of
    # authenticated clients' idle connections), and its reflectors connect again at once: charged,
    # 30 and their 29 retries flooded its address, and its next connection evicted its own answered
    # one (review-conns7 F1; review-conns9 F1 for those evicted during their handshake). Given back
    # only to the front proxy's address: a flood that has its own connects evicted before their
    # handshake is done, every one having taken a handshake token, could otherwise connect at twice
    # its rate without flooding (one sharing kube-apiserver's address has its own given back with
    # them: at most a burst of connects and of handshakes each time kube-apiserver's connection shows,
    # never more than it would have without those connects). Given back in full however long ago they
    # were taken in, they came back twice, by the refill and by the show: a client sharing the
    # address had up to a burst more at each show (review-conns13 F1); counted from the eviction, a
    # connect whose handshake stalled past the refill would still have been.
    spared: list[Restored] = attrs.Factory(list)
    waiting: deque[Callable[[], bool]] = attrs.Factory(deque)  # handshakes waiting for a token
    release: IDelayedCall | None = None
    forget: IDelayedCall | None = None


class Clients:
    """Per source address: open connections, the bucket of unauthenticated work, waiting handshakes."""

    def __init__(
        self, limits: HttpLimits, clock: Any, monotonic: Callable[[], float] = time.monotonic
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
            connects = Bucket(self.limits.handshake_rate_per_client, burst, burst, self.monotonic())
            accepted = Bucket(self.limits.handshake_rate_per_client, burst, burst, self.monotonic())
            found = self.addresses[host] = Address(host, bucket, connects=connects, accepted=accepted)
        return found

    # -- connections --------------------------------------------------------------------------------

    def opened(self, host: str) -> bool:
        """A new connection from ``host``; False when the address is at its cap (close it). It is
        counted against the cap once its handshake is done (handshaken)."""
        address = self._address(host)
        if address.counted >= self.limits.max_connections_per_client:
            self.refused += 1
            self._forget_later(address)
            return False
        address.open += 1
        accepted = address.accepted
        accepted.refill(self.monotonic())
        # Past its floor a connect takes nothing: counted as given back at once, so a show gives back
        # no more of one of those evicted before its handshake (Address.spared) than it took.
        taken = accepted.tokens - max(accepted.tokens - 1, -accepted.burst)
        accepted.tokens -= taken
        accepted.restored += 1 - taken
        return True

    def restored(self, host: str) -> Restored:
        """What ``host``'s handshake bucket and ``accepted`` have been given so far (Bucket.restored):
        a connection about to be taken in keeps it, for its connect and its handshake token to be
        given back, if it is spared, less what came since (Address.spared)."""
        address = self._address(host)
        now = self.monotonic()
        address.bucket.refill(now)
        address.accepted.refill(now)
        return address.bucket.restored, address.accepted.restored

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

    def handshake(self, host: str, start: Callable[[], bool]) -> bool:
        """Whether the handshake of a connection from ``host`` may start now. If not, ``start`` is
        called when a token is there; it answers whether the connection was still open to take it."""
        address = self._address(host)
        if not address.waiting and address.bucket.refill(self.monotonic()) >= 1:
            address.bucket.tokens -= 1
            return True
        self.delayed += 1
        address.waiting.append(start)
        self._release_later(address)
        return False

    def handshaken(self, host: str, front_proxy: bool) -> bool:
        """The TLS handshake of a connection from ``host`` is done. The front proxy's (it presented
        the front proxy's verified certificate) is never counted against the cap, and its handshake
        token and its connect are given back, with the handshake tokens and connects of its address
        spared since (see Address.spared), at most its burst, less what the buckets were given since
        those were taken in: kube-apiserver's connections cost it nothing, however many it opens at
        once (up to its burst) and however often it does so again.
        Any other is counted now; False when the address reached its cap meanwhile (close it)."""
        address = self._address(host)
        if front_proxy:
            # The spared connects' handshake tokens too: kept spent, kube-apiserver's third round of
            # reconnects within a second found its bucket near empty, its connects waited for a
            # token, those evicted while waiting were charged as bare, and its address flooded
            # (review-conns11 F1).
            now = self.monotonic()
            for bucket, taken in (
                (address.bucket, [spared[0] for spared in address.spared]),
                (address.accepted, [spared[1] for spared in address.spared]),
            ):
                bucket.refill(now)
                bucket.give_back(1 + bucket.spared_back(taken))
            address.spared.clear()
            self._release(address)
            return True
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
        taken_in: Restored | None = None,
    ) -> None:
        """A connection from ``host`` is closed; ``bare``: no byte ever came on it (a connect only);
        ``spared``: the server evicted it before its handshake was done, its token taken (see
        Address.spared); ``taken_in``: ``restored`` when it was taken in (now if not given)."""
        address = self._address(host)
        address.open -= 1
        if counted:
            address.counted -= 1
        if spared:
            bisect.insort(address.spared, taken_in if taken_in is not None else self.restored(host))
            if len(address.spared) > self.limits.handshake_burst_per_client:
                del address.spared[0]  # the oldest: without it as much or less comes back
        if bare:
            connects = address.connects
            connects.refill(self.monotonic())
            connects.tokens = max(connects.tokens - 1, -connects.burst)
        self._forget_later(address)

    # -- requests -----------------------------------------------------------------------------------

    def unauthenticated(self, host: str) -> None:
        """A request from ``host`` was answered 401."""
        address = self._address(host)
        address.bucket.refill(self.monotonic())
        address.bucket.tokens -= 1

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

    def _release(self, address: Address) -> None:
        now = self.monotonic()
        while address.waiting and address.bucket.refill(now) >= 1:
            start = address.waiting.popleft()
            if start():  # a connection closed while waiting takes no token
                address.bucket.tokens -= 1
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

        address.release = self.clock.callLater(max(wait, 0.001), release)

    def _forget_later(self, address: Address) -> None:
        """Drop the address's record once nothing is open and its bucket is full again."""
        if address.open > 0 or address.waiting or address.forget is not None:
            return
        now = self.monotonic()
        wait = max(
            bucket.wait_for(bucket.burst, now)
            for bucket in (address.bucket, address.connects, address.accepted)
        )
        if wait == 0:
            if self.addresses.get(address.host) is address:
                del self.addresses[address.host]
            return

        def forget() -> None:
            address.forget = None
            self._forget_later(address)

        # At least a millisecond: a wait shorter than the clock's resolution at this time (a bucket a
        # rounding error short of full) would be due at once and find nothing changed, without end
        # under a test's Clock.
        address.forget = self.clock.callLater(max(wait, 0.001), forget)


class FairScheduler:
    """Runs whole requests in turns: at most one per client per turn of the reactor, round-robin."""

    def __init__(self, clock: Any, ready_in: Callable[[ClientKey], float]) -> None:
        self.clock = clock
        self.ready_in = ready_in
        self._queues: dict[ClientKey, deque[Callable[[], None]]] = {}
        self._turns: deque[ClientKey] = deque()  # clients with work waiting, in turn order
        self._parked: dict[ClientKey, IDelayedCall] = {}  # clients out of tokens, until they are not
        self._served: set[ClientKey] = set()  # clients that had their turn in this round
        self._round: IDelayedCall | None = None
        self.deferred = 0  # requests that waited for a later turn

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
