"""A seeded randomized interleaving of everything that writes to the registry, and its invariants.

One run, against a real registry:

- two *replicas* of payloadtags (`Replica`: its own RegistryClient, hence its own connections and
  per-repository queue, an Inventory, a TagsService and a Cascade), both behind one fault-injecting
  proxy (`tests.support.faultproxy`): seeded registry 500s before or after the work, and stalls
  longer than the client timeout;
- other clients pushing straight to the registry in threads: new digests to existing tags, a tag
  copied onto another (shared digests), new tags. Pushes to one tag are sequential (one writer per
  tag), so "the last acknowledged push" of a tag is well defined;
- single deletes through either replica's TagsService, and *doomed* namespaces removed the way a
  namespace deletion removes them: deletecollection repeated until it answers 200, through both
  replicas at once, and a cascade on each replica;
- single deletes of a doomed namespace's tags just before and while its removal runs (before it
  answered 200), most of them with their re-tag held in the proxy past the client's timeout (it lands
  late), most of those killed while it is held: a replica's own write that its removal's 200 must
  wait for (`check_own_writes`);
- kills: an operation in flight is cancelled, its connections dropped mid-request, as a process
  killed at that moment leaves them (what it sent may or may not have landed); a killed
  deletecollection or cascade is started again, as a restarted replica would.

Invariants, checked against the registry directly once everything has settled:

1. every tag of a live namespace whose last acknowledged push no delete of that tag overlapped or
   followed is present, on that push's digest: no acknowledged push lost, no sibling lost;
2. no tag points at anything but its last acknowledged push (never reverted to an older digest),
   except a copy that a failed delete reported in its error;
3. no dangling tag anywhere;
4. every doomed namespace is empty, and every deletecollection that answered 200 left nothing of
   its namespace at that moment but what a write it cannot know of put back after the removal began
   (another replica's, or a killed earlier process's of the same replica; `Run._explained`), and no
   write of its own process that was still in that process's record of writes that may land
   reached the registry after it (`Run.check_own_writes`). Each replica has a record of its own, as
   each process of a deployment does.

The seed fixes the plan (operations, targets, kills, fault decisions in order); thread and network
timing still vary, so a failing seed is re-run with the command the failure prints.
"""

from __future__ import annotations

import collections
import json
import os
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from payloadtags.access.authn import UserInfo
from payloadtags.access.authz import AlwaysAllow
from payloadtags.api.errors import ApiError
from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.api.registry_errors import api_error_for
from payloadtags.api.tags import ResourceVersions, TagsService
from payloadtags.cleanup.cascade import Cascade
from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import EXISTS, TERMINATING
from payloadtags.inventory import Inventory
from payloadtags.kube import Backoff
from payloadtags.names import TagRef, encode_name
from payloadtags.registry import (
    DELETE_NONCE_ANNOTATION,
    REPAIR_ANNOTATION,
    RegistryClient,
    RegistryError,
    RegistrySettings,
)
from payloadtags.registry.client import LATE_WRITE_GRACE
from tests.support import images
from tests.support.dangling import dangling_tags
from tests.support.faultproxy import FAULTS, LATE, STALL, Exchange, FaultProxy
from tests.support.registry_server import RegistryServer

USER = UserInfo(name="interleaving")


@attrs.define
class Replica:
    """What one payloadtags process holds: its own client (connections, queue), service, cascade."""

    client: RegistryClient
    service: TagsService
    cascade: Cascade
    remover: NamespaceRemover | None = None

    @classmethod
    def make(
        cls,
        reactor: Any,
        url: str,
        timeout: float = 1.0,
        deleting: Callable[[str], bool] | None = None,
        removal_budget: float = 2.0,
        finish_begun_deletes: bool = False,
        landing_clock: IReactorTime | None = None,
    ) -> Replica:
        """``deleting``: which namespaces the cluster API would call Terminating; with it, the
        replica's deletecollection of those deletes by digest (`NamespaceRemover`), as in a cluster.

        A cancel stands for the death of the process here (the kills), so deletes stop wherever they
        are, unless ``finish_begun_deletes`` (what a live server does when a request ends).

        ``landing_clock``: the client's for its watch of an unanswered write (the reactor unless given)."""
        client = RegistryClient(
            reactor,
            RegistrySettings(url=url, timeout=timeout),
            finish_begun_deletes=finish_begun_deletes,
            landing_clock=landing_clock,
        )
        # One record of the writes that may still land, for the client that notes them, every cascade
        # and the deletecollections, as `payloadtags.server` wires a process: with a record of their
        # own, a removal would never wait for a single delete's re-tag or another cascade's repair.
        late_writes = client.late_writes
        grace = LATE_WRITE_GRACE * timeout
        cascade = Cascade(
            client,
            reactor,
            concurrency=4,
            backoff=lambda: Backoff(initial=0.02, factor=2.0, cap=0.2),
            late_write_grace=grace,
            late_writes=late_writes,
        )
        removal = None
        if deleting is not None:

            async def check(namespace: str) -> tuple[str, str | None]:
                return (TERMINATING if deleting(namespace) else EXISTS), None

            removal = NamespaceRemover(
                Cascade(
                    client,
                    reactor,
                    concurrency=4,
                    backoff=lambda: Backoff(initial=0.02, cap=0.2),
                    late_write_grace=grace,
                    late_writes=late_writes,
                ),
                reactor,
                check,
            )
        service = TagsService(
            inventory=Inventory(client),
            registry_host="registry.test",
            authorizer=AlwaysAllow(),
            versions=ResourceVersions(reactor),
            removal=removal,
            removal_budget=removal_budget,
            late_writes=late_writes,
        )
        return cls(client, service, cascade, removal)

    async def close(self) -> None:
        await self.client.close()


@attrs.frozen
class Config:
    seed: int
    live_namespaces: int = 2
    doomed_namespaces: int = 1
    repositories: int = 2  # per namespace
    tags: int = 4  # per repository at the start
    operations: int = 40
    fault_rate: float = 0.08  # of registry requests through the proxy
    kill_rate: float = 0.08  # of operations started
    timeout: float = 0.6  # the replicas' registry timeout; a stall lasts twice as long
    # Single deletes of a doomed namespace's tags: at which steps of the plan, from the one its
    # removal begins at (`Run.delete_doomed`).
    doomed_deletes: tuple[int, ...] = (-3, -2, -1, 1)

    def describe(self) -> str:
        return described(self)


def described(config: Any) -> str:
    """An attrs run configuration as the code that makes it: for a failing seed's message."""
    fields = ", ".join(f"{f.name}={getattr(config, f.name)!r}" for f in attrs.fields(type(config)))
    return f"{type(config).__name__}({fields})"


@attrs.define
class Push:
    start: float
    end: float
    digest: str
    content: bytes
    # False: the registry failed the tag's PUT (distribution 2.8 answers 500 when a concurrent delete
    # removes the tag's directories under it); the tag may or may not have moved.
    acknowledged: bool = True


@attrs.define
class Delete:
    start: float
    end: float = float("inf")
    outcome: str = "running"  # ok | not-found | conflict | error | killed
    message: str = ""  # what a failed or conflicting delete told its user


@attrs.frozen
class Found:
    """A tag a look at a doomed namespace found: when its repository's tag listing answered, and the
    digest it held when read right after (None: gone by then), at ``read``."""

    repository: str
    tag: str
    listed: float
    digest: str | None
    read: float


@attrs.frozen
class Answer:
    """A deletecollection's 200: of which namespace, by which replica (an index into the proxies),
    decided by when and seen by the checker when, and when the process that answered started."""

    namespace: str
    replica: int
    decided: float
    at: float
    born: float


# How much earlier than the proxy had it a replica may have ended a write's request (cancelled while
# the request was on its way), in seconds: its record holds the write that much less after the proxy's
# `received` (a lot for loopback, little beside the registry timeout).
_OWN_WRITE_SLACK = 0.1


@attrs.define
class Report:
    config: Config
    operations: collections.Counter[str] = attrs.Factory(collections.Counter)
    faults: collections.Counter[str] = attrs.Factory(collections.Counter)
    kills: int = 0
    violations: list[str] = attrs.Factory(list)
    # Seconds from the first deletecollection of a doomed namespace to its verified-empty end.
    doomed_seconds: list[float] = attrs.Factory(list)
    windows: list[float] = attrs.Factory(list)
    # Tags left on a content-equal copy (one extra annotation) by a failed delete that said so, and
    # by a delete killed between its re-tag and its digest delete.
    reported_copies: int = 0
    interrupted_copies: int = 0
    # Hits of the residual windows (docs/consistency.md), counted rather than failed: a push reverted
    # inside a restore's read-to-write window, and a push that copied a delete's transient copy.
    restore_window_hits: int = 0
    transient_copy_losses: int = 0
    # The test that reruns one seed, and the settings of its own it ran with ("NAME=value ...").
    rerun: str = "tests/integration/test_interleaving.py::test_one_seed"
    rerun_settings: str = ""
    # Of the window hits: a write that reached the registry after its client had given up on it (a
    # timeout), so its window lasted until the registry carried it out.
    late_write_hits: int = 0

    def summary(self) -> str:
        counts = {
            **self.operations,
            **{f"fault {kind}": n for kind, n in self.faults.items()},
            "kills": self.kills,
            "violations": len(self.violations),
            "window hits": self.restore_window_hits + self.transient_copy_losses,
            "of which late writes": self.late_write_hits,
            "reported copies": self.reported_copies,
            "interrupted copies": self.interrupted_copies,
        }
        return f"seed {self.config.seed}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))

    def reproduce(self) -> str:
        return (
            f"{self.config.describe()}: reproduce with `INTERLEAVING_SEED={self.config.seed} "
            f"INTERLEAVING_OPERATIONS={self.config.operations} "
            f"INTERLEAVING_KILL_RATE={self.config.kill_rate} "
            f"{self.rerun_settings + ' ' if self.rerun_settings else ''}"
            f"scripts/test -m slow {self.rerun}`"
        )


class Run:
    def __init__(self, reactor: Any, registry: RegistryServer, config: Config, stem: str) -> None:
        self.reactor = reactor
        self.registry = registry
        self.config = config
        self.rng = random.Random(config.seed)
        fault_rng = random.Random(config.seed * 7919 + 1)

        def decide(method: str, path: str) -> str | None:
            if self.faulting and method == "PUT" and path in self.late_puts:
                # A doomed namespace's single delete asked for its re-tag to land late (`delete_doomed`),
                # and maybe to be killed once it is held.
                self.late_puts.pop(path).callback(None)
                self.report.operations["late re-tag in a doomed namespace"] += 1
                return LATE
            # Reads fail less often than writes: a run must make progress to say anything.
            rate = self.config.fault_rate * (1.0 if method in ("PUT", "DELETE", "POST") else 0.3)
            if not self.faulting or fault_rng.random() >= rate:
                return None
            return fault_rng.choice(FAULTS)

        self.faulting = True
        # Manifest paths whose next PUT the proxies hold past the client's timeout, each with what fires
        # once it is held (`delete_doomed`).
        self.late_puts: dict[str, Deferred[None]] = {}
        # One proxy per replica, so that every request the registry saw is known to be whose.
        self.proxies = [FaultProxy(reactor, registry.url, decide, stall=config.timeout * 2) for _ in range(2)]
        self.replicas = self.make_replicas()
        self.began = self.now()
        self.report = Report(config)
        for replica in self.replicas:
            replica.client.on_window = self._window
        self.live = [f"{stem}l{i}" for i in range(config.live_namespaces)]
        self.doomed = [f"{stem}d{i}" for i in range(config.doomed_namespaces)]
        self.pushes: dict[tuple[str, str], list[Push]] = collections.defaultdict(list)
        self.deletes: dict[tuple[str, str], list[Delete]] = collections.defaultdict(list)
        self.push_locks: dict[tuple[str, str], DeferredLock] = collections.defaultdict(DeferredLock)
        self.inflight: list[Deferred[Any]] = []
        self.repositories = {
            namespace: [
                f"{namespace}/app{r}" if r % 2 == 0 else f"{namespace}/grp/app{r}"
                for r in range(config.repositories)
            ]
            for namespace in self.live + self.doomed
        }
        self.counter = 0
        self.removal_began: dict[str, float] = {}
        # Each deletecollection's 200, for `check_own_writes`.
        self.answers: list[Answer] = []
        # Each cancel of an operation of a replica (a kill): the replica's index, and when
        # (`check_own_writes`: it may have ended a request of that replica at once).
        self.cancels: list[tuple[int, float]] = []
        self.windows: dict[str, list[tuple[str, float, float]]] = collections.defaultdict(list)

    def make_replicas(self) -> list[Replica]:
        # One replica knows the doomed namespaces are Terminating (deletes them by digest), the other
        # deletes them tag by tag, as a replica without a cluster API answer would.
        return [
            Replica.make(
                self.reactor, self.proxies[0].url, self.config.timeout, deleting=lambda ns: ns in self.doomed
            ),
            Replica.make(self.reactor, self.proxies[1].url, self.config.timeout),
        ]

    async def start(self) -> None:
        """Before anything is pushed: what the replicas need (nothing, in this process)."""

    async def stop(self) -> None:
        for replica in self.replicas:
            await replica.close()

    def at_step(self, step: int) -> list[Deferred[None]]:
        """Work a run variant adds at a step of the plan (process kills); none here: kills are
        decided per operation."""
        return []

    def step_pause(self) -> float:
        return self.rng.uniform(0.0, 0.01)

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _window(self, kind: str, where: str, since: float, until: float) -> None:
        self.windows[where].append((kind, since, until))
        self.report.windows.append(until - since)

    def now(self) -> float:
        return float(self.reactor.seconds())

    def tags_of(self, repository: str) -> list[str]:
        return sorted({tag for (repo, tag) in self.pushes if repo == repository})

    # -- other clients' pushes (straight to the registry, in threads) -----------------------------------

    async def push(self, repository: str, tag: str, source: str | None = None) -> None:
        lock = self.push_locks[(repository, tag)]
        await lock.acquire()
        try:
            start = self.now()
            self.counter += 1
            seed = f"{repository}:{tag}:{self.config.seed}:{self.counter}"

            def blocking() -> tuple[float, str, bytes, bool] | None:
                # Blobs (and the manifest by digest) first; the tag is written by the last request
                # alone, so the push's [start, end] is that PUT's and nothing earlier.
                try:
                    fetched = None
                    if source is not None:
                        fetched = images.get_manifest(self.registry.url, repository, source)
                    if fetched is None:
                        made = images.push_oci_image(self.registry.url, repository, None, seed=seed)
                        fetched = images.get_manifest(self.registry.url, repository, made)
                        assert fetched is not None
                except images.PushError:
                    return None  # the registry failed the push before its tag was written
                put_at = float(self.reactor.seconds())
                try:
                    digest = images.push_manifest(
                        self.registry.url, repository, tag, fetched.content, fetched.media_type
                    )
                except images.PushError:
                    return put_at, images.sha256(fetched.content), fetched.content, False
                return put_at, digest, fetched.content, True

            done = await deferToThread(blocking)
            if done is None:
                self.report.operations["push failed"] += 1
                return
            start, digest, content, acknowledged = done
            self.pushes[(repository, tag)].append(Push(start, self.now(), digest, content, acknowledged))
            kind = "push-shared" if source else "push"
            self.report.operations[kind if acknowledged else "push failed at the tag"] += 1
        finally:
            lock.release()

    # -- payloadtags operations ---------------------------------------------------------------------------

    def replica(self) -> Replica:
        return self.rng.choice(self.replicas)

    async def delete_one(
        self, namespace: str, repository: str, tag: str, kill: Deferred[None] | None = None
    ) -> None:
        """``kill``: when it fires, the delete is killed (if still running), besides `_maybe_killed`."""
        record = Delete(self.now())
        self.deletes[(repository, tag)].append(record)
        ref = TagRef(namespace, repository.split("/", 1)[1], tag)
        replica = self.replica()
        self.report.operations["delete"] += 1
        try:
            try:
                await self._maybe_killed(
                    replica.service.delete(USER, namespace, ref.name, DeleteOptions()), replica, kill
                )
            except RegistryError as error:
                raise api_error_for(error) from error  # as the API's handler wrapper does
            record.outcome = "ok"
        except ApiError as error:
            record.outcome = {404: "not-found", 409: "conflict"}.get(error.code, "error")
            if error.code != 404:  # what a failed or conflicting delete told its user
                record.message = error.message
        except CancelledError:
            record.outcome = "killed"
        finally:
            record.end = self.now()

    async def _maybe_killed(
        self, work: Coroutine[Any, Any, Any], replica: Replica, kill: Deferred[None] | None = None
    ) -> Any:
        """Run ``work`` on ``replica``; with probability kill_rate cancel it part-way, as a killed
        process stops; and when ``kill`` fires. Each cancel is kept (`cancels`)."""
        task = Deferred.fromCoroutine(work)
        index = self.replicas.index(replica)

        def killing(_: object = None) -> None:
            if not task.called:
                self.cancels.append((index, self.now()))
                task.cancel()

        if kill is not None:

            def killing_once_fired(_: None) -> None:
                if not task.called:
                    self.report.kills += 1
                killing()

            kill.addCallback(killing_once_fired)
        if self.rng.random() < self.config.kill_rate:
            delay = self.rng.uniform(0.0, 0.05)
            self.report.kills += 1
            killer = self.reactor.callLater(delay, killing)
            try:
                return await task
            finally:
                if killer.active():
                    killer.cancel()
        return await task

    async def delete_doomed(self, namespace: str) -> None:
        """A single delete of a tag of ``namespace`` around its removal's start, unless a
        deletecollection of it already answered 200 (a user's delete then finds nothing); most of the
        time its re-tag is held in the proxy past the client's timeout (LATE), and most of those times
        the delete is then killed within two timeouts (its wait for that write's effect cut short): a
        write of the replica's own that may still land when its removal decides, which its 200 must
        wait for (review r3check L1)."""
        repository = self.rng.choice(self.repositories[namespace])
        tag = self.rng.choice(self.tags_of(repository))  # as filled: the plan does not depend on timing
        late = self.rng.random() < 0.8
        killed = self.rng.random() < 0.7
        delay = self.rng.uniform(0.0, 2 * self.config.timeout)
        if any(answer.namespace == namespace for answer in self.answers):
            return
        path = f"/v2/{repository}/manifests/{tag}"
        held: Deferred[None] = Deferred()  # fired by the proxy as it holds the re-tag
        if late:
            self.late_puts[path] = held
            if killed:
                held.addCallback(lambda _: deferLater(self.reactor, delay, lambda: None))
        try:
            await self.delete_one(namespace, repository, tag, held if late and killed else None)
        finally:
            self.late_puts.pop(path, None)  # a delete that wrote nothing leaves no mark for another write

    def begin_removal(self, namespace: str) -> float:
        """Record that the namespace's removal begins now (for each of its tags, and for `after_200`)."""
        started = self.now()
        self.removal_began[namespace] = started
        for repository in self.repositories[namespace]:
            for tag in self.tags_of(repository):
                self.deletes[(repository, tag)].append(Delete(started, outcome="namespace"))
        return started

    async def remove_namespace(self, namespace: str) -> None:
        """What a namespace deletion does: deletecollection until 200, on both replicas, and the cascades."""
        started = self.begin_removal(namespace)

        async def collection(replica: Replica) -> None:
            options = list_options({})
            for _attempt in range(200):
                self.report.operations["deletecollection"] += 1
                try:
                    await self._maybe_killed(
                        replica.service.delete_collection(USER, namespace, options, DeleteOptions()), replica
                    )
                except (ApiError, RegistryError, CancelledError):
                    await deferLater(self.reactor, 0.02, lambda: None)
                    continue
                await self.after_200(namespace, self.replicas.index(replica))
                return
            self.report.violations.append(f"deletecollection of {namespace} never answered 200")

        async def cascade(replica: Replica) -> None:
            for _attempt in range(50):
                self.report.operations["cascade"] += 1
                try:
                    await self._maybe_killed(replica.cascade.run(namespace), replica)
                    return
                except CancelledError:
                    continue  # restarted, as the next leader (or the restarted one) would
            self.report.violations.append(f"the cascade of {namespace} never finished")

        await gatherResults(
            [Deferred.fromCoroutine(collection(r)) for r in self.replicas]
            + [Deferred.fromCoroutine(cascade(r)) for r in self.replicas]
        )
        self.report.doomed_seconds.append(self.now() - started)

    async def after_200(self, namespace: str, replica: int, decided: float | None = None) -> None:
        """What a deletecollection's 200 (answered by ``replica``, an index into the proxies) left of
        the namespace: nothing, or only tags that a write the 200 cannot have waited for put back
        (`_explained`), which that write's own delete then removes (the final check says whether it
        did). ``decided``: by when the replica had decided to answer 200, when earlier than now (a
        process's answer travels). Recorded for `check_own_writes`."""
        at = self.now()
        born = self.born(replica)  # read now: the process that answered, not a later restart of it
        self.answers.append(Answer(namespace, replica, at if decided is None else decided, at, born))
        left = await deferToThread(self.look, namespace)
        if not left:
            return
        unexplained = [found for found in left if not self._explained(found, replica, born, namespace, at)]
        if not unexplained:
            self.report.late_write_hits += 1
            self.report.restore_window_hits += 1
            return
        timelines = [
            f"{found.repository}:{found.tag}: listed at {found.listed - self.began:.3f}, holding "
            f"{found.digest or 'nothing by its read'} at {found.read - self.began:.3f}:\n"
            f"{self.timeline(found.repository, found.tag)}"
            for found in unexplained
        ]
        content: dict[str, list[str]] = collections.defaultdict(list)
        for found in left:
            content[found.repository].append(found.tag)
        self.report.violations.append(
            f"deletecollection of {namespace} answered 200 by replica {replica} at {at - self.began:.3f} "
            f"with {dict(content)} left\n" + "\n".join(timelines)
        )

    def _explained(self, found: Found, replica: int, born: float, namespace: str, at: float) -> bool:
        """Whether a write the 200 (seen at ``at``) cannot have waited for explains the tag ``found``
        saw (docs/consistency.md, "deletecollection", what remains: a write another replica made, which
        this replica does not know of, late or not; the replica that answered waits until none of its
        own writes may still land): a manifest PUT under the tag by another replica or by a process
        of the answering one that died before ``born`` (`_unknown`), that reached the registry after
        the namespace's removal began (one before it, the removal's listings saw) and before the look
        listed the tag's repository (one after cannot have put back what the look saw), and that may
        have landed after a listing of the repository that did not show the tag, by the process that
        answered, since the removal began and before the 200 (`_clearing_listings`): a correct 200
        rests on such a listing; a write that landed before all of them, they saw (review r3check F1:
        a write the answering process's own later listing showed is no excuse). That explains
        the listing; the look's read right after is then explained by what such writes did meanwhile
        (the other replica's tag-by-tag delete of that tag re-tags it onto a copy of its own, then
        deletes that copy): it holds what the write put, or what a later such write put by the read,
        or nothing, when a delete of one of those manifests reached the registry by the read."""
        path = f"/v2/{found.repository}/manifests/{found.tag}"
        began = self.removal_began[namespace]
        writes = [
            write
            for index, proxy in enumerate(self.proxies)
            for write in proxy.exchanges
            if write.path == path and write.method == "PUT" and self._unknown(index, write, replica, born)
        ]
        cleared = self._clearing_listings(found, replica, born, began, at)
        for write in writes:
            if not began <= write.sent <= found.listed:
                continue
            if not any(write.answered is None or write.answered > since for since in cleared):
                continue
            put = {write.body_digest} | {
                later.body_digest for later in writes if write.sent < later.sent <= found.read
            }
            if found.digest is None:
                if any(self._deleted(found.repository, digest, write.sent, found.read) for digest in put):
                    return True
            elif found.digest in put:
                return True
        return False

    def _clearing_listings(
        self, found: Found, replica: int, born: float, began: float, at: float
    ) -> list[float]:
        """When the registry served each listing of ``found``'s repository that did not show its tag,
        sent by the process of ``replica`` born at ``born``, since the removal began (``began``), and
        answered to it (no fault) before its 200 was seen (``at``): what that 200 may rest on."""
        listing = f"/v2/{found.repository}/tags/list"
        return [
            exchange.sent
            for exchange in self.proxies[replica].exchanges
            if exchange.path == listing
            and exchange.listed is not None
            and found.tag not in exchange.listed
            and exchange.fault is None
            and born <= exchange.received
            and began <= exchange.sent
            and exchange.answered is not None
            and exchange.answered <= at
        ]

    @staticmethod
    def _unknown(index: int, write: Exchange, replica: int, born: float) -> bool:
        """Whether ``write``, through proxy ``index``, is one the process of ``replica`` born at
        ``born`` does not know of: another replica's, or a killed process's of the same one."""
        return index != replica or write.received < born

    def check_own_writes(self) -> None:
        """Whether each deletecollection's 200 waited for its own replica's writes, as
        docs/consistency.md says it does ("deletecollection": until no write of the process may still
        land in the namespace): a manifest PUT into the namespace by the process that answered, sent
        before it decided to answer and still in its record of writes that may land then (it keeps one
        for `LATE_WRITE_GRACE` registry timeouts once its request ended, unanswered or cancelled, at
        the earliest when `_request_ended` says), must not reach the registry after the 200 (run once
        the proxies have settled). Only a write the registry answered 201 is checked (one that landed),
        and ``decided`` is when the process decided at the latest (the process tier: when the request
        was sent, so a write of the call itself is not checked there)."""
        grace = LATE_WRITE_GRACE * self.config.timeout
        for answer in self.answers:
            prefix = f"/v2/{answer.namespace}/"
            for write in self.proxies[answer.replica].exchanges:
                if (
                    write.method == "PUT"
                    and write.path.startswith(prefix)
                    and "/manifests/" in write.path
                    and write.status == 201
                    and answer.born <= write.received < answer.decided
                    and answer.decided < self._request_ended(answer.replica, write) + grace
                    and write.sent > answer.at
                ):
                    repository, tag = write.path[len("/v2/") :].split("/manifests/")
                    self.report.violations.append(
                        f"deletecollection of {answer.namespace} answered 200 by replica {answer.replica} "
                        f"at {answer.at - self.began:.3f} without waiting for its own write: "
                        f"{repository}:{tag} sent at {write.received - self.began:.3f} reached the registry "
                        f"at {write.sent - self.began:.3f}\n{self.timeline(repository, tag)}"
                    )

    def _request_ended(self, replica: int, write: Exchange) -> float:
        """When the request of ``replica`` that sent ``write`` ended at the earliest, as its process's
        record of late writes counts from (review r3check L2): the client's timeout after the proxy had
        it, for a write the proxy held past that timeout (STALL, LATE), unless an operation of the
        replica was cancelled (a kill) before then, which may have ended it at once; else when the
        proxy had it. `_OWN_WRITE_SLACK` earlier: the client's deadline runs from just before the
        proxy had the request, and a cancel may come while it is on its way. A cancel the product makes
        itself (a budget's end) is not seen here: one within the slack of the proxy's receipt of a held
        write, with a 200 decided in the moment between its record's end and its landing, would be
        taken for a violation."""
        earliest = write.received - _OWN_WRITE_SLACK
        until = write.received + self.config.timeout
        if write.fault not in (STALL, LATE):
            return earliest
        if any(index == replica and earliest <= at <= until for index, at in self.cancels):
            return earliest
        return until - _OWN_WRITE_SLACK

    def _deleted(self, repository: str, digest: str | None, since: float, until: float) -> bool:
        """Whether a delete of the manifest ``digest`` reached the registry within [since, until]."""
        path = f"/v2/{repository}/manifests/{digest}"
        return digest is not None and any(
            exchange.path == path and exchange.method == "DELETE" and since <= exchange.sent <= until
            for proxy in self.proxies
            for exchange in proxy.exchanges
        )

    def born(self, replica: int) -> float:
        """When the process of ``replica`` that runs now started: a write it sent earlier is another
        process's, which this one does not know of. Here a replica is never restarted (a kill cancels
        its operation, the replica keeps its client and its record of writes that may still land)."""
        return float("-inf")

    def look(self, namespace: str) -> list[Found]:
        """Every tag of the namespace, with when its repository's listing answered and what it held
        when read right after (blocking: run it in a thread)."""
        found = []
        for repository in self.repositories[namespace]:
            tags, listed = self.list_repository(repository)
            for tag in tags:
                fetched = images.get_manifest(self.registry.url, repository, tag)
                digest = None if fetched is None else fetched.digest
                found.append(Found(repository, tag, listed, digest, self.now()))
        return found

    def list_repository(self, repository: str) -> tuple[list[str], float]:
        """The repository's tags, and when the registry's answer was in."""
        tags = images.list_tags(self.registry.url, repository)
        return tags, self.now()

    def content(self, namespace: str) -> dict[str, list[str]]:
        found = {}
        for repository in self.repositories[namespace]:
            tags, _ = self.list_repository(repository)
            if tags:
                found[repository] = tags
        return found

    # -- the run ----------------------------------------------------------------------------------

    async def fill(self) -> None:
        jobs = []
        for namespace in self.live + self.doomed:
            for repository in self.repositories[namespace]:
                for t in range(self.config.tags):
                    source = f"t{t - 1}" if t % 2 == 1 else None  # every other tag shares a digest
                    jobs.append((repository, f"t{t}", source))

        async def fill_repository(items: list[tuple[str, str, str | None]]) -> None:
            for repository, tag, source in items:
                await self.push(repository, tag, source)

        by_repository: dict[str, list[tuple[str, str, str | None]]] = collections.defaultdict(list)
        for job in jobs:
            by_repository[job[0]].append(job)
        await gatherResults(
            [Deferred.fromCoroutine(fill_repository(items)) for items in by_repository.values()]
        )
        self.report.operations.clear()

    def plan_step(self) -> Callable[[], Coroutine[Any, Any, None]]:
        namespace = self.rng.choice(self.live)
        repository = self.rng.choice(self.repositories[namespace])
        tags = self.tags_of(repository)
        roll = self.rng.random()
        if roll < 0.30 or not tags:
            tag = (
                self.rng.choice(tags) if tags and self.rng.random() < 0.7 else f"n{self.rng.randrange(1000)}"
            )
            return lambda: self.push(repository, tag)
        if roll < 0.45:
            source, tag = self.rng.choice(tags), self.rng.choice([*tags, f"s{self.rng.randrange(1000)}"])
            return lambda: self.push(repository, tag, source)
        tag = self.rng.choice(tags)
        if roll < 0.65:
            # A push to the very tag being deleted, a moment later: lands somewhere in the delete.
            delay = self.rng.uniform(0.0, 0.08)

            async def both() -> None:
                later = deferLater(self.reactor, delay, lambda: None)
                later.addCallback(lambda _: Deferred.fromCoroutine(self.push(repository, tag)))
                await gatherResults(
                    [Deferred.fromCoroutine(self.delete_one(namespace, repository, tag)), later]
                )

            return both
        return lambda: self.delete_one(namespace, repository, tag)

    async def go(self) -> Report:
        try:
            self.faulting = False
            await self.start()
            await self.fill()
            self.faulting = True
            doom_at = {self.rng.randrange(self.config.operations): namespace for namespace in self.doomed}
            # The doomed namespace's single deletes, a few steps before and after its removal begins.
            doomed_at = {
                at + offset: namespace
                for at, namespace in doom_at.items()
                for offset in self.config.doomed_deletes
            }
            running: list[Deferred[None]] = []
            for step in range(self.config.operations):
                if step in doom_at:
                    running.append(Deferred.fromCoroutine(self.remove_namespace(doom_at[step])))
                if step in doomed_at:
                    running.append(Deferred.fromCoroutine(self.delete_doomed(doomed_at[step])))
                running.extend(self.at_step(step))
                running.append(Deferred.fromCoroutine(self.plan_step()()))
                await deferLater(self.reactor, self.step_pause(), lambda: None)
            for namespace in self.doomed:
                if namespace not in doom_at.values():
                    running.append(Deferred.fromCoroutine(self.remove_namespace(namespace)))
            await gatherResults(running, consumeErrors=True)
            return await self.checked()
        finally:
            await self.close()

    async def checked(self) -> Report:
        """The report once the operations are over: the faults stop, stalled and late requests land,
        then the invariants are checked (off the reactor: the checks read the registry's files)."""
        self.faulting = False
        for proxy in self.proxies:  # stalled and late requests land before anything is checked
            await proxy.settled()
        for proxy in self.proxies:
            self.report.faults.update(proxy.injected)
        await deferToThread(self.check)
        return self.report

    async def close(self) -> None:
        await self.stop()
        for proxy in self.proxies:
            await proxy.stop()

    # -- invariants ------------------------------------------------------------------------------------

    def check(self) -> None:
        url = self.registry.url
        violations = self.report.violations
        self.check_own_writes()
        for namespace in self.doomed:
            left = self.content(namespace)
            if left:
                timelines = [
                    f"{repository}:{tag}:\n{self.timeline(repository, tag)}"
                    for repository, tags in left.items()
                    for tag in tags
                ]
                violations.append(
                    f"doomed namespace {namespace} is not empty: {left}\n" + "\n".join(timelines)
                )
        for namespace in self.live:
            for repository in self.repositories[namespace]:
                listed = set(images.list_tags(url, repository))
                dangling = set(dangling_tags(url, repository))
                for tag in sorted(dangling):
                    acknowledged = [p for p in self.pushes[(repository, tag)] if p.acknowledged]
                    if acknowledged and _ours(acknowledged[-1].content):
                        # The client copied a delete's transient manifest onto this tag, and that
                        # manifest's digest delete then half-failed in the registry: the documented
                        # transient-copy loss, seen as a dangling tag. Nobody asked to delete this
                        # tag, so payloadtags does not touch it.
                        self.report.transient_copy_losses += 1
                        continue
                    violations.append(f"dangling tag {repository}:{tag}\n{self.timeline(repository, tag)}")
                for tag in self.tags_of(repository):
                    if tag not in dangling:
                        self._check_tag(repository, tag, tag in listed)

    def _check_tag(self, repository: str, tag: str, listed: bool) -> None:
        attempts = self.pushes[(repository, tag)]
        acknowledged = [p for p in attempts if p.acknowledged]
        if not acknowledged:
            return
        last = acknowledged[-1]
        # A push the registry failed at the tag's PUT after the last acknowledged one may have moved
        # the tag all the same: its digest is as good as the acknowledged one.
        unsure = [p.digest for p in attempts[attempts.index(last) + 1 :]]
        pushes = acknowledged
        deleted_later = [d for d in self.deletes[(repository, tag)] if d.end > last.start]
        fetched = images.get_manifest(self.registry.url, repository, tag) if listed else None
        where = f"{repository}:{tag}"
        if fetched is None:
            if not deleted_later:
                if _ours(last.content):
                    # The pushing client copied the tag it read while a delete had it on its
                    # transient copy (or a repair on its placeholder), and that manifest's digest
                    # delete took this tag along.
                    self.report.transient_copy_losses += 1
                    return
                self.report.violations.append(
                    f"{where}: acknowledged push {last.digest} lost (no delete of this tag after it)\n"
                    f"{self.timeline(repository, tag)}"
                )
            return
        if fetched.digest == last.digest or fetched.digest in unsure:
            return
        written = fetched.json().get("annotations") or {}
        ours = sorted(set(written) & {DELETE_NONCE_ANNOTATION, REPAIR_ANNOTATION})
        after_push = [d for d in self.deletes[(repository, tag)] if d.end > last.start]
        if REPAIR_ANNOTATION in written:
            # A repair's placeholder (the tag was dangling: a delete of it had half-failed) that a
            # delete of this tag said it may leave there, digest and all, or was killed before saying.
            if self.told(repository, tag, fetched.digest):
                self.report.reported_copies += 1
                return
            if any(d.outcome == "killed" for d in after_push):
                self.report.interrupted_copies += 1
                return
        document = fetched.json()
        if DELETE_NONCE_ANNOTATION in (document.get("annotations") or {}):
            # Both without the nonce: the last push may itself be a copy of a delete's transient
            # manifest (a tag copied while a delete had it on its copy), whose nonce this copy replaced.
            if _without_nonce(json.loads(last.content)) == _without_nonce(document):
                # The same content under the copy a delete of this tag wrote: allowed when that delete
                # said so in its error, digest and all, or was killed before it could say anything.
                if self.told(repository, tag, fetched.digest):
                    self.report.reported_copies += 1
                    return
                if any(d.outcome == "killed" and d.end > last.start for d in self.deletes[(repository, tag)]):
                    self.report.interrupted_copies += 1
                    return
        older = [p.digest for p in pushes[:-1]]
        if _ours(last.content) and fetched.digest in older:
            # The pushing client copied the tag onto itself (or another tag on the same transient
            # manifest) while a delete had it on its copy: the push changed nothing in the registry,
            # and the delete's conditional restore put back what it had read.
            self.report.transient_copy_losses += 1
            return
        hits = [
            late
            for since, until, late in self.write_windows(repository, tag)
            if since <= last.end and last.start <= until
        ]
        if (fetched.digest in older or ours) and hits:
            # The push landed inside a conditional write's read-to-write window (the re-tag's, the
            # restore's, a repair's), and what that write put there stayed (a failed delete then
            # restored the older push, or could not remove its copy): the documented residual
            # windows, which the protocol cannot close.
            self.report.restore_window_hits += 1
            self.report.late_write_hits += any(hits)
            return
        kind = "reverted to an older push" if fetched.digest in older else "overwritten"
        what = f", a manifest payloadtags wrote ({', '.join(ours)})" if ours else ""
        self.report.violations.append(
            f"{where}: points at {fetched.digest}{what}, not its last acknowledged push "
            f"{last.digest} ({kind})\n{self.timeline(repository, tag)}"
        )

    def told(self, repository: str, tag: str, text: str) -> bool:
        """Whether a failed or conflicting delete of the tag named ``text`` to its user."""
        return any(text in delete.message for delete in self.deletes[(repository, tag)])

    def write_windows(self, repository: str, tag: str) -> list[tuple[float, float, bool]]:
        """Each write payloadtags made to the tag, as the registry saw it: from the read it was
        conditional on (that replica's last read of the tag before it, with no write of the tag in
        between) to the registry's answer, however late after the client gave up on the write (a
        timeout, a kill). A write with no read of its own just before it (a blind write) has no
        window but its own span. The flag: the write reached the registry only after its client's
        timeout."""
        path = f"/v2/{repository}/manifests/{tag}"
        spans = []
        for proxy in self.proxies:
            read_sent: float | None = None
            # In the order the replica sent them: a late write reaches the registry after reads
            # the replica sent later.
            for exchange in sorted(proxy.exchanges, key=lambda e: e.received):
                if exchange.path != path:
                    continue
                if exchange.method in ("GET", "HEAD"):
                    read_sent = exchange.received
                elif exchange.method == "PUT":
                    since = exchange.received if read_sent is None else read_sent
                    until = float("inf") if exchange.answered is None else exchange.answered
                    spans.append((since, until, exchange.sent - exchange.received > self.config.timeout))
                    read_sent = None
        return spans

    def timeline(self, repository: str, tag: str) -> str:
        """What happened to one tag, in order: for a failure message (times from the run's start)."""
        where = f"{repository}:{tag}"
        events: list[tuple[float, str]] = []
        for push in self.pushes[(repository, tag)]:
            copied = " (a copy of a transient manifest of ours)" if _ours(push.content) else ""
            outcome = "acknowledged" if push.acknowledged else "failed by the registry"
            events.append(
                (push.start, f"push {push.digest[:19]}{copied} {outcome} at {push.end - self.began:.3f}")
            )
        for delete in self.deletes[(repository, tag)]:
            told = f" ({delete.message})" if delete.message else ""
            events.append(
                (delete.start, f"delete asked, ended {delete.end - self.began:.3f}: {delete.outcome}{told}")
            )
        for kind, since, until in self.windows[where]:
            events.append((since, f"{kind} window until {until - self.began:.3f}"))
        for index, proxy in enumerate(self.proxies):
            for exchange in proxy.exchanges:
                on_tag = exchange.path == f"/v2/{repository}/manifests/{tag}"
                by_digest = exchange.path.startswith(f"/v2/{repository}/manifests/sha256:")
                # The repository's tag lists and blobs: what a delete's settle and repair read.
                listing = exchange.path.startswith(
                    (f"/v2/{repository}/tags/list", f"/v2/{repository}/blobs/")
                )
                if on_tag or listing or (by_digest and exchange.method == "DELETE"):
                    what = (
                        exchange.path.removeprefix(f"/v2/{repository}/")
                        if listing
                        else exchange.path.rsplit("/", 1)[1][:19]
                    )
                    answered = (
                        "never" if exchange.answered is None else f"{exchange.answered - self.began:.3f}"
                    )
                    events.append(
                        (
                            exchange.received,
                            f"replica {index}: {exchange.method} {what[:30]} "
                            f"reached the registry {exchange.sent - self.began:.3f}, answered {answered} "
                            f"{exchange.status} {exchange.fault or ''}",
                        )
                    )
        return "\n".join(
            f"  {at - self.began:8.3f} {text}" for at, text in sorted(events, key=lambda e: e[0])
        )


def _without_nonce(document: Any) -> Any:
    """A manifest document as it was before a delete added its nonce annotation to it."""
    annotations = {
        k: v for k, v in (document.get("annotations") or {}).items() if k != DELETE_NONCE_ANNOTATION
    }
    rest = {k: v for k, v in document.items() if k != "annotations"}
    return {**rest, "annotations": annotations} if annotations else rest


def _ours(content: bytes) -> bool:
    """Whether a manifest is one payloadtags writes only for a moment: a delete's copy, a placeholder."""
    return any(mark.encode() in content for mark in (DELETE_NONCE_ANNOTATION, REPAIR_ANNOTATION))


async def run_seed(reactor: Any, registry: RegistryServer, config: Config, stem: str | None = None) -> Report:
    return await Run(reactor, registry, config, stem or f"il{config.seed}x").go()


__all__ = ["Config", "Delete", "Push", "Replica", "Report", "Run", "encode_name", "run_seed"]


def slow_seeds(seeds: Sequence[int]) -> Sequence[int]:
    """The seeds a slow-tier loop runs: INTERLEAVING_SLOW_SEEDS=<n> runs the first n seeds;
    INTERLEAVING_SLOW_SKIP=<k> skips k first; INTERLEAVING_SLOW_FIRST=<s> shifts the whole range to
    start at seed s: the fixed seeds have been run many times, new ones explore interleavings they
    never made."""
    skip = int(os.environ.get("INTERLEAVING_SLOW_SKIP", 0))
    first = os.environ.get("INTERLEAVING_SLOW_FIRST")
    if first is not None:
        seeds = range(int(first), int(first) + len(seeds))
    return seeds[skip : int(os.environ.get("INTERLEAVING_SLOW_SEEDS", len(seeds)))]


async def run_many_seeds(
    reactor: Any, seeds: Sequence[int], run: Callable[[int], Awaitable[Report]], *, kills_required: bool
) -> list[str]:
    """The slow tier's loop over seeds: runs each, prints running totals, and returns one failure text
    per seed that broke an invariant or did not exercise what it claims (each with its rerun command).
    Which seeds: `slow_seeds`."""
    failures = []
    totals: collections.Counter[str] = collections.Counter()
    for seed in slow_seeds(seeds):
        began = reactor.seconds()
        report = await run(seed)
        totals["seconds"] += round(reactor.seconds() - began)
        if (
            report.violations
            or not report.operations["deletecollection"]
            or (kills_required and not report.kills)
        ):
            failures.append("\n".join([report.reproduce(), *report.violations]))
        totals.update(report.operations)
        totals.update({f"fault {kind}": n for kind, n in report.faults.items()})
        totals["kills"] += report.kills
        totals["residual window hits"] += report.restore_window_hits + report.transient_copy_losses
        totals["of which late writes"] += report.late_write_hits
        totals["violations"] += len(report.violations)
        print(f"seed {seed}: {report.violations or 'no violation'}; so far {dict(sorted(totals.items()))}")
    return failures
