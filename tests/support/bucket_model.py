"""A randomized, Clock-driven model of one address's handshake bucket and ``accepted`` (Clients), with
an oracle of what they should hold (docs/hardening.md), checked after every step.

The oracle keeps each bucket's whole history (connects' takes by connect, shows, 401s and their
times), never folded, and replays it from the start without the takes of the connects evicted under
way (spared), each show giving back its own token only. So at every moment a bucket holds at most
what the oracle does (never more: no over-give, never above its burst), and at every front-proxy
show exactly that. A second, exact oracle leaves out only the spared connects whose takes were still
in the buckets' logs when they were evicted: it is what a fold of the log may give back less for
(review-conns17 F1; the known limitation), and at every show each bucket equals it.

Worlds: ``randomized`` (random mixes of connects, handshakes of random length, evictions of pending
connects in any order, shows, 401s, closes, a client sharing the address, time steps) and ``storm``
(kube-apiserver's storms of connects on a full server that evicts its oldest pending connect).
Written by review conns19, kept as a test by conns20.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from twisted.internet.task import Clock

from payloadtags.http.clients import Bucket, Clients, Ticket
from payloadtags.limits import HttpLimits

EPS = 1e-6
HOST = "10.0.0.2"


@dataclass
class Oracle:
    """One bucket's whole history: (time, "take" or "show", the connect's id or None for a 401)."""

    rate: float
    burst: float
    floor: float
    start: float
    events: list[tuple[float, str, int | None]] = field(default_factory=list)
    # (size of the spared set, events replayed, tokens, time): ``spared`` only grows, so a replay
    # goes on from the last one until its size changes (a change of the past).
    cache: tuple[int, int, float, float] = (-1, 0, 0.0, 0.0)

    def ideal(self, now: float, spared: set[int]) -> float:
        """What the bucket would hold now had the ``spared`` connects never come."""
        size, done, tokens, stamp = self.cache
        if size != len(spared):
            done, tokens, stamp = 0, self.burst, self.start
        for at, kind, connect in self.events[done:]:
            tokens = min(self.burst, tokens + (at - stamp) * self.rate)
            stamp = at
            if kind == "take":
                if connect is None or connect not in spared:
                    tokens = max(tokens - 1, self.floor)
            else:
                tokens = min(self.burst, tokens + 1)
        self.cache = (len(spared), len(self.events), tokens, stamp)
        return min(self.burst, tokens + (now - stamp) * self.rate)


@dataclass
class Conn:
    number: int
    ticket: Ticket
    state: str = "waiting"  # for a token; "hs" (its handshake under way), "up", "closed"
    counted: bool = False
    end: float = 0.0  # when its handshake is done


class World:
    def __init__(self, rnd: random.Random, rate: float, burst: int) -> None:
        self.rnd = rnd
        self.clock = Clock()
        self.clock.advance(1000)
        limits = HttpLimits(
            max_connections_per_client=100_000,
            handshake_rate_per_client=rate,
            handshake_burst_per_client=burst,
        )
        self.clients = Clients(limits, self.clock, self.clock.seconds)
        now = self.clock.seconds()
        self.hs = Oracle(rate, float(burst), float("-inf"), now)
        self.acc = Oracle(rate, float(burst), -float(burst), now)
        self.spared: set[int] = set()
        # The exact oracles: the same events, without only the spared connects whose take was still
        # in the log when they were evicted.
        self.hs_exact = Oracle(rate, float(burst), float("-inf"), now, self.hs.events)
        self.acc_exact = Oracle(rate, float(burst), -float(burst), now, self.acc.events)
        self.spared_hs: set[int] = set()
        self.spared_acc: set[int] = set()
        self.numbers = 0
        self.conns: list[Conn] = []
        self.sharing = 0.0  # the share of handshakes done without the front proxy's certificate
        # Found:
        self.problems: list[str] = []  # above the burst, or fuller than the oracle
        self.inexact: list[str] = []  # at a show, not equal to the exact oracle
        self.deficits: list[tuple[float, float]] = []  # at each show, (hs, acc) short of the oracle
        self.flooded = 0  # checks that found the address flooding

    def connect(self, handshake: float) -> None:
        ticket = self.clients.opened(HOST)
        assert ticket is not None
        self.numbers += 1
        conn = Conn(self.numbers, ticket)
        self.acc.events.append((self.clock.seconds(), "take", conn.number))

        def start() -> bool:
            if conn.state != "waiting":
                return False
            conn.state = "hs"
            conn.end = self.clock.seconds() + handshake
            self.hs.events.append((self.clock.seconds(), "take", conn.number))
            return True

        if self.clients.handshake(HOST, start, ticket):
            start()
        self.conns.append(conn)
        self.check("connect")

    def evict(self, conn: Conn) -> None:
        if conn.state == "hs":  # spared
            self.spared.add(conn.number)
            address = self.clients.addresses[HOST]
            ticket = conn.ticket
            for bucket, taken, spared in (
                (address.bucket, ticket.bucket, self.spared_hs),
                (address.accepted, ticket.accepted, self.spared_acc),
            ):
                if _in_log(bucket, taken):
                    spared.add(conn.number)
            self.clients.closed(HOST, counted=False, spared=True, ticket=ticket)
        elif conn.state == "waiting":  # tokenless: closed bare
            self.clients.closed(HOST, counted=False, bare=True, ticket=conn.ticket)
        else:
            self.clients.closed(HOST, counted=conn.counted, ticket=conn.ticket)
        conn.state = "closed"
        self.check("evict")

    def show(self, conn: Conn) -> None:
        if self.sharing and self.rnd.random() < self.sharing:  # the sharing client's handshake
            up = self.clients.handshaken(HOST, front_proxy=False, ticket=conn.ticket)
            conn.state = "up" if up else "closed"
            conn.counted = up
            if not up:
                self.clients.closed(HOST, counted=False, ticket=conn.ticket)
            self.check("handshaken")
            return
        # The show first: handshaken releases the waiting handshakes after it.
        now = self.clock.seconds()
        self.hs.events.append((now, "show", conn.number))
        self.acc.events.append((now, "show", conn.number))
        assert self.clients.handshaken(HOST, front_proxy=True, ticket=conn.ticket)
        conn.state = "up"
        self.check("show", at_show=True)

    def unauthenticated(self) -> None:
        self.clients.unauthenticated(HOST)
        self.hs.events.append((self.clock.seconds(), "take", None))
        self.check("401")

    def advance(self, step: float) -> None:
        """Time goes on; the handshakes due meanwhile are done in their order."""
        target = self.clock.seconds() + step
        while due := [c for c in self.conns if c.state == "hs" and c.end <= target]:
            conn = min(due, key=lambda c: c.end)
            self.clock.advance(max(0.0, conn.end - self.clock.seconds()))
            self.show(conn)
        self.clock.advance(max(0.0, target - self.clock.seconds()))
        self.check("advance")

    def check(self, what: str, at_show: bool = False) -> None:
        address = self.clients.addresses.get(HOST)
        if address is None:
            return
        now = self.clock.seconds()
        self.flooded += self.clients.flooding(HOST)
        short = []
        for name, bucket, oracle, exact, spared in (
            ("hs", address.bucket, self.hs, self.hs_exact, self.spared_hs),
            ("acc", address.accepted, self.acc, self.acc_exact, self.spared_acc),
        ):
            actual = bucket.refill(now)
            ideal = oracle.ideal(now, self.spared)
            if actual > bucket.burst + EPS:
                self.problems.append(f"{what} t={now:.4f} {name} above its burst: {actual}")
            if actual > ideal + EPS:
                self.problems.append(f"{what} t={now:.4f} {name} {actual:.4f} > oracle {ideal:.4f}")
            short.append(ideal - actual)
            if at_show and abs((expected := exact.ideal(now, spared)) - actual) > EPS:
                self.inexact.append(f"{what} t={now:.4f} {name} {actual:.4f} != exact {expected:.4f}")
        if at_show:
            self.deficits.append((short[0], short[1]))

    def shows_short(self) -> list[float]:
        return [short for shorts in self.deficits for short in shorts if short > EPS]


def _in_log(bucket: Bucket, taken: int | None) -> bool:
    """Whether a connect's take is still in the bucket's log (not folded into its start)."""
    return taken is not None and bool(bucket.log) and taken > bucket.folded


def randomized(seed: int, steps: int) -> World:
    """Random mixes: connects with handshakes of 1 ms to 0.5 s, evictions of pending connects in any
    order (under way: spared; waiting for a token: bare), shows, 401s, closes of shown connections,
    time steps of 0.5 ms to 2 s; burst 2 to 40, rate 0.5 to 20, a sharing client in half the seeds."""
    rnd = random.Random(seed)
    burst = rnd.choice([2, 3, 5, 8, 40])
    rate = rnd.choice([0.5, 2.0, 20.0])
    world = World(rnd, rate, burst)
    world.sharing = rnd.choice([0.0, 0.0, 0.3, 0.7])
    for _ in range(steps):
        action = rnd.random()
        live = [c for c in world.conns if c.state != "closed"]
        pending = [c for c in live if c.state in ("hs", "waiting")]
        if action < 0.35:
            world.connect(rnd.choice([0.001, 0.005, 0.05, 0.5]))
        elif action < 0.55 and pending:
            world.evict(rnd.choice(pending))
        elif action < 0.60:
            world.unauthenticated()
        elif action < 0.70 and live:
            conn = rnd.choice(live)
            if conn.state == "up":
                world.evict(conn)
        else:
            world.advance(rnd.choice([0.0005, 0.002, 0.01, 0.1, 0.5, 2.0]))
        if len(world.conns) > 200:
            world.conns = [c for c in world.conns if c.state != "closed"]
    return world


def storm(
    seed: int,
    burst: int,
    rounds: int,
    per_round: int,
    freed: int,
    places: int,
    gap: float = 0.0005,
    handshakes: tuple[float, float] = (0.002, 0.008),
    period: float = 0.5,
) -> World:
    """kube-apiserver's storms at rate 20: ``per_round`` connects ``gap`` apart, handshakes of
    ``handshakes`` seconds, on a server with ``places`` places its pending connects and its shown
    connections share; ``freed`` of its shown connections closed before each round; a full server
    evicts its oldest pending connect."""
    rnd = random.Random(seed)
    world = World(rnd, 20.0, burst)
    for _ in range(rounds):
        up = [c for c in world.conns if c.state == "up"]
        rnd.shuffle(up)
        for conn in up[:freed]:
            world.evict(conn)
        for _ in range(per_round):
            live = [c for c in world.conns if c.state in ("hs", "waiting", "up")]
            if len(live) >= places:
                pending = [c for c in live if c.state in ("hs", "waiting")]
                if not pending:
                    continue
                world.evict(pending[0])
            world.connect(rnd.uniform(*handshakes))
            world.advance(gap)
        world.conns = [c for c in world.conns if c.state != "closed"]
        world.advance(period)
    return world
