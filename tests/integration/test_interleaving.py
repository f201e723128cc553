"""Seeded randomized interleavings of pushes, deletes, deletecollection and cascades, through two
replicas behind a fault-injecting proxy, against the real registry (`tests.support.interleaving`).

A few seeds run by default (seconds); the slow tier runs hundreds. A failing seed prints the command
that runs it again: `INTERLEAVING_SEED=<seed> scripts/test -m slow <this file>::test_one_seed`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.names import TagRef
from payloadtags.registry import DELETE_NONCE_ANNOTATION
from tests.support import images
from tests.support.faultproxy import LATE, Exchange
from tests.support.interleaving import USER, Config, Replica, Report, Run, run_many_seeds, run_seed
from tests.support.registry_server import RegistryServer

DEFAULT_SEEDS = (1, 2, 3)
SLOW_SEEDS = range(1000, 1300)


def verdict(report: Report) -> None:
    assert not report.violations, "\n".join([report.reproduce(), *report.violations])
    # The run exercised what it claims to: operations happened, faults and kills were injected.
    assert report.operations["delete"] and report.operations["deletecollection"], report.reproduce()


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
@pytest_twisted.ensureDeferred
async def test_interleaving(seed: int, reactor: Any, fresh_registry: RegistryServer) -> None:
    report = await run_seed(reactor, fresh_registry, Config(seed=seed))
    verdict(report)
    assert sum(report.faults.values()) > 0, report.reproduce()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_one_seed(reactor: Any, fresh_registry: RegistryServer) -> None:
    """The seed in INTERLEAVING_SEED (default: the first default seed), for reproducing a failure;
    INTERLEAVING_OPERATIONS as the failing run had it (the slow tier runs 60)."""
    seed = int(os.environ.get("INTERLEAVING_SEED", DEFAULT_SEEDS[0]))
    defaults = Config(seed=seed)
    operations = int(os.environ.get("INTERLEAVING_OPERATIONS", defaults.operations))
    kill_rate = float(os.environ.get("INTERLEAVING_KILL_RATE", defaults.kill_rate))
    verdict(
        await run_seed(reactor, fresh_registry, Config(seed=seed, operations=operations, kill_rate=kill_rate))
    )


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_interleaving_many_seeds(reactor: Any, fresh_registry: RegistryServer) -> None:
    async def run(seed: int) -> Report:
        return await run_seed(reactor, fresh_registry, Config(seed=seed, operations=60))

    failures = await run_many_seeds(reactor, SLOW_SEEDS, run, kills_required=False)
    assert not failures, "\n\n".join(failures)


class _LeftAfterThe200(Run):
    """A run whose doomed namespace, as the checker looks at it after replica 0's deletecollection
    answered 200 (`Run.after_200`), holds one tag, t0 in its first repository, on a copy (a manifest
    with a delete's nonce) that a re-tag (carried out late, in most cases) put back, by the proxies'
    record. ``case`` says whose write it was, when it reached the registry, what it put and what
    writes followed it before the look read the tag."""

    def __init__(self, reactor: Any, registry: RegistryServer, case: str) -> None:
        super().__init__(reactor, registry, Config(seed=0, live_namespaces=0), "ilate")
        self.case = case
        self.namespace = self.doomed[0]
        self.repository, self.second = self.repositories[self.namespace]  # listed in this order
        self.begin_removal(self.namespace)
        self.restarted = self.now()  # replica 0's process, in the "killed process" case
        if case not in SEEN_BY_THE_ANSWERING_REPLICA:
            # Replica 0's removal listed t0's repository without it: what a correct 200 rests on.
            self.listing(self.restarted, ())
        self.put = ""

    def listing(self, at: float, tags: tuple[str, ...]) -> None:
        """Record replica 0's listing of t0's repository, served at ``at``, naming ``tags``."""
        path = f"/v2/{self.repository}/tags/list"
        self.proxies[0].exchanges.append(Exchange("GET", path, at, at, at, 200, None, listed=tags))

    def born(self, replica: int) -> float:
        if self.case == "by a killed process of the replica that answered":
            return self.restarted
        return super().born(replica)

    def list_repository(self, repository: str) -> tuple[list[str], float]:
        case = self.case
        if repository == self.second:
            if case == "after its repository was listed, before the look ended":
                self.late_write(1, self.now(), self.put)
            return super().list_repository(repository)
        self.put = images.push_oci_image(
            self.registry.url, self.repository, "t0", annotations={DELETE_NONCE_ANNOTATION: "late"}
        )
        now = self.now()
        if case in (
            "before the look",
            "gone by the read, its manifest deleted",
            "gone by the read, another deleted",
        ) or case.startswith("re-tagged"):
            self.late_write(1, now, self.put)
        elif case == "by the other replica, on time":
            self.late_write(1, now, self.put, received=now - 0.05)
        elif case == "by the replica that answered":
            self.late_write(0, now, self.put)
        elif case == "by a killed process of the replica that answered":
            self.late_write(0, now, self.put, received=self.restarted - 2 * self.config.timeout)
        elif case == "before the removal began":
            self.late_write(1, self.removal_began[self.namespace] - 100.0, self.put)
        elif case == "that put something else":
            self.late_write(1, now, images.sha256(b"another manifest"))
        elif case in SEEN_BY_THE_ANSWERING_REPLICA:
            # Replica 1's re-tag landed a quarter into the span from the removal's start to the 200;
            # replica 0 listed the repository after it, before its 200.
            began, answered = self.removal_began[self.namespace], self.answers[-1].at
            quarter = (answered - began) / 4
            path = f"/v2/{self.repository}/manifests/t0"
            self.proxies[1].exchanges.append(
                Exchange("PUT", path, began, began + quarter, began + quarter, 201, None, self.put)
            )
            self.listing(began + 2 * quarter, SEEN_BY_THE_ANSWERING_REPLICA[case])
        listed = super().list_repository(repository)
        if case == "after the look":
            self.late_write(1, listed[1] + 1.0, self.put)
        if case.startswith("gone by the read"):
            # Replica 1's own delete removes its copy between the look's listing and its read.
            images.delete_manifest(self.registry.url, self.repository, self.put)
            deleted = self.put if case == "gone by the read, its manifest deleted" else images.sha256(b"x")
            at = self.now()
            path = f"/v2/{self.repository}/manifests/{deleted}"
            self.proxies[1].exchanges.append(Exchange("DELETE", path, at, at, at + 0.01, 202, None))
        if case.startswith("re-tagged"):
            # A tag-by-tag delete of t0 (a copy of its own per delete), between the look's listing and
            # its read: t0 re-tagged onto a new copy, then (", deleted") that copy deleted by digest.
            by = 0 if case.startswith("re-tagged by the replica that answered") else 1
            at = self.now()
            copy = images.push_oci_image(
                self.registry.url, self.repository, "t0", annotations={DELETE_NONCE_ANNOTATION: "again"}
            )
            path = f"/v2/{self.repository}/manifests/t0"
            self.proxies[by].exchanges.append(Exchange("PUT", path, at, at, at + 0.01, 201, None, copy))
            if case.endswith(", deleted"):
                images.delete_manifest(self.registry.url, self.repository, copy)
                at = self.now()
                path = f"/v2/{self.repository}/manifests/{copy}"
                self.proxies[by].exchanges.append(Exchange("DELETE", path, at, at, at + 0.01, 202, None))
        return listed

    def late_write(self, proxy: int, reached: float, put: str, received: float | None = None) -> None:
        """Record a PUT of t0 that put ``put`` and reached the registry at ``reached``, held in the
        proxy past its client's timeout since ``received``."""
        path = f"/v2/{self.repository}/manifests/t0"
        received = reached - 2 * self.config.timeout if received is None else received
        self.proxies[proxy].exchanges.append(
            Exchange("PUT", path, received, reached, reached + 0.01, 201, "late", put)
        )


# What replica 0's one listing of t0's repository, after replica 1's write of t0 landed (and none
# before it), named (review r3check F1).
SEEN_BY_THE_ANSWERING_REPLICA = {
    "by the other replica, which a later listing of the replica that answered showed": ("t0",),
    "by the other replica, landed before the listing of the replica that answered": (),
}

# Whether the tag left is a window hit (True) or a violation (False).
LEFT_AFTER_THE_200 = {
    # The slow tier's seeds 77000 and 77052 on a loaded machine.
    "before the look": True,
    "after the look": False,
    # The replica that answered waits until none of its own writes may still land.
    "by the replica that answered": False,
    # A restarted process has no record of what the killed one sent.
    "by a killed process of the replica that answered": True,
    "after its repository was listed, before the look ended": False,
    # The removal's own listings saw it.
    "before the removal began": False,
    "that put something else": False,
    # Replica 1's delete of its copy explains why the look's read found nothing.
    "gone by the read, its manifest deleted": True,
    "gone by the read, another deleted": False,
    # Review r2e F3: any write of another replica, late or not ("What remains").
    "by the other replica, on time": True,
    # Review r2e F2: the other replica's tag-by-tag delete of t0 between the look's listing and read.
    "re-tagged by the other replica before the read": True,
    "re-tagged by the other replica before the read, deleted": True,
    "re-tagged by the replica that answered before the read": False,
    "re-tagged by the replica that answered before the read, deleted": False,
    # Review r3check F1: the replica that answered saw the tag after that write (or saw it gone after
    # it: then something else put it back), and answered 200 on no listing that write came after.
    **dict.fromkeys(SEEN_BY_THE_ANSWERING_REPLICA, False),
}


@pytest.mark.parametrize("case", list(LEFT_AFTER_THE_200))
@pytest_twisted.ensureDeferred
async def test_a_tag_left_after_a_200_is_a_window_hit_only_if_another_replicas_write_put_it_back(
    reactor: Any, fresh_registry: RegistryServer, case: str
) -> None:
    """A tag a deletecollection's 200 left is a residual-window hit only when a write the 200 cannot
    have waited for explains it (docs/consistency.md, "deletecollection", what remains): a write of
    another replica, late or not (or of a process of the answering one that was killed), that reached
    the registry after the removal began and before the checker's look listed the tag's repository,
    after a listing of it by the answering replica that did not show the tag, and that put what the
    look read there, or what such a write put, or deleted, by the read. Anything else is a violation
    (review misc5 F1, review r2e F2 and F3, review r3check F1)."""
    run = _LeftAfterThe200(reactor, fresh_registry, case)
    try:
        await run.after_200(run.namespace, 0)
    finally:
        await run.stop()
        for proxy in run.proxies:
            await proxy.stop()
    if LEFT_AFTER_THE_200[case]:
        assert run.report.violations == []
        assert run.report.late_write_hits == 1
    else:
        assert len(run.report.violations) == 1
        assert f"'{run.repository}': ['t0']" in run.report.violations[0]
        assert run.report.late_write_hits == 0


class _OwnWriteAfterThe200(Run):
    """A run whose doomed namespace is empty when replica 0's deletecollection answers 200, and whose
    proxies' record holds a manifest PUT into it that reaches the registry one second after that 200.
    ``case`` says whose write it was and when the proxy had it (review r2e L2)."""

    def __init__(self, reactor: Any, registry: RegistryServer, case: str) -> None:
        super().__init__(reactor, registry, Config(seed=0, live_namespaces=0), "iown")
        self.case = case
        self.namespace = self.doomed[0]
        self.begin_removal(self.namespace)
        self.restarted = self.now()

    def born(self, replica: int) -> float:
        if self.case == "by a killed process of the replica that answered":
            return self.restarted
        return super().born(replica)

    def list_repository(self, repository: str) -> tuple[list[str], float]:
        if repository == self.repositories[self.namespace][0]:
            timeout = self.config.timeout
            now = self.now()
            # Before the 200 as the run saw it (not the look's time: a slow look would put it after).
            decided = self.answers[-1].decided
            received = {
                "by the replica that answered": decided - 0.01,
                "by the replica that answered, timed out": decided - 1.5 * timeout,
                "by the replica that answered, timed out two and a half timeouts before": decided
                - 2.5 * timeout,
                "by the replica that answered, killed as the proxy had it": decided - 2.5 * timeout,
                "by the replica that answered, past its record": decided - 3.5 * timeout,
                "by the replica that answered, after the 200": decided + 0.5,
                "by a killed process of the replica that answered": self.restarted - 0.01,
                "by the other replica": decided - 0.01,
            }[self.case]
            proxy = 1 if self.case == "by the other replica" else 0
            if self.case == "by the replica that answered, killed as the proxy had it":
                self.cancels.append((0, received))
            path = f"/v2/{repository}/manifests/t0"
            self.proxies[proxy].exchanges.append(
                Exchange("PUT", path, received, now + 1.0, now + 1.01, 201, "late", images.sha256(b"m"))
            )
        return [], self.now()


# Whether the write landing after the 200 is a violation (True): the answering replica waits until none
# of its own writes may still land (docs/consistency.md, "deletecollection").
OWN_WRITE_AFTER_THE_200 = {
    "by the replica that answered": True,
    "by the replica that answered, timed out": True,
    # Its request timed out a registry timeout after the proxy had it (a LATE write), and it is kept
    # LATE_WRITE_GRACE registry timeouts from then: three in all (review r3check L2).
    "by the replica that answered, timed out two and a half timeouts before": True,
    # A kill may have ended the request as soon as it was sent: kept two timeouts from then.
    "by the replica that answered, killed as the proxy had it": False,
    # Kept LATE_WRITE_GRACE registry timeouts after its request ended: a write that lands later still.
    "by the replica that answered, past its record": False,
    "by the replica that answered, after the 200": False,
    "by a killed process of the replica that answered": False,
    "by the other replica": False,
}


@pytest.mark.parametrize("case", list(OWN_WRITE_AFTER_THE_200))
@pytest_twisted.ensureDeferred
async def test_a_write_of_the_answering_replica_that_lands_after_its_200_is_a_violation(
    reactor: Any, fresh_registry: RegistryServer, case: str
) -> None:
    """A deletecollection's 200 waits until no write of the process may still land in the namespace:
    a write of that process, sent before the 200 and still in its record then, that reaches the
    registry after the 200 is a violation, even when nothing is left for the look right after the 200
    to see (review r2e L2)."""
    run = _OwnWriteAfterThe200(reactor, fresh_registry, case)
    try:
        await run.after_200(run.namespace, 0)
        run.check_own_writes()
    finally:
        await run.stop()
        for proxy in run.proxies:
            await proxy.stop()
    if OWN_WRITE_AFTER_THE_200[case]:
        assert len(run.report.violations) == 1
        assert "without waiting for its own write" in run.report.violations[0]
        assert f"{run.repositories[run.namespace][0]}:t0" in run.report.violations[0]
    else:
        assert run.report.violations == []


class _OwnLateWrite(Run):
    """Replica ``replica`` (0 deletes its Terminating namespace by digest, 1 tag by tag), whose proxy
    holds a single delete's re-tag of t0 until ``reaches`` fires."""

    def __init__(self, reactor: Any, registry: RegistryServer, replica: int) -> None:
        config = Config(seed=0, live_namespaces=0, fault_rate=0.0, kill_rate=0.0, timeout=1.0)
        super().__init__(reactor, registry, config, "iwait")
        self.namespace = self.doomed[0]
        self.repository = self.repositories[self.namespace][0]
        self.reaches: Deferred[None] = Deferred()
        self.proxy = self.proxies[replica]
        self.proxy.hold = self.reaches
        retag = f"/v2/{self.repository}/manifests/t0"
        self.proxy.decide = lambda method, path: LATE if method == "PUT" and path == retag else None

    def make_replicas(self) -> list[Replica]:
        # A budget that outlasts the wait (three registry timeouts): the 200 comes in one call.
        return [
            Replica.make(
                self.reactor,
                self.proxies[0].url,
                self.config.timeout,
                deleting=lambda namespace: namespace in self.doomed,
                removal_budget=10.0,
            ),
            Replica.make(self.reactor, self.proxies[1].url, self.config.timeout, removal_budget=10.0),
        ]


@pytest_twisted.ensureDeferred
async def test_a_deletecollection_answers_200_only_once_its_own_late_write_may_no_longer_land(
    reactor: Any, fresh_registry: RegistryServer
) -> None:
    """The product against `Run.check_own_writes`: replica 0's deletecollection (by digest: the
    namespace is Terminating) after its own single delete was killed with its re-tag in the proxy
    (held there until the 200 is in) answers 200 only once that write may no longer land, so its
    landing after the 200 is no violation. Fails with a removal that does not wait for its process's
    writes (review r2e L2), and with replicas whose cascades keep a record of late writes apart from
    their registry client's (as `Replica.make` did)."""
    replica = 0
    run = _OwnLateWrite(reactor, fresh_registry, replica)
    service = run.replicas[replica].service
    try:
        await run.fill()
        name = TagRef(run.namespace, run.repository.split("/", 1)[1], "t0").name
        single = Deferred.fromCoroutine(service.delete(USER, run.namespace, name, DeleteOptions()))
        while not run.proxy.injected[LATE]:
            await deferLater(reactor, 0.01, lambda: None)
        # Its re-tag is in the proxy, held: a kill (the run's cancel) of the delete now leaves it to
        # land, as far as the replica knows, within LATE_WRITE_GRACE registry timeouts (from now: kept
        # for `check_own_writes`, as the run's kills are).
        run.cancels.append((replica, run.now()))
        single.cancel()
        with pytest.raises(CancelledError):
            await single
        await service.delete_collection(USER, run.namespace, list_options({}), DeleteOptions())
        await run.after_200(run.namespace, replica)
        run.reaches.callback(None)
        await run.proxy.settled()
        run.check_own_writes()
    finally:
        await run.stop()
        for proxy in run.proxies:
            await proxy.stop()
    assert run.proxy.injected[LATE] == 1
    assert run.report.violations == [], run.report.violations[0][:800]
