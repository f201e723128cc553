"""A seeded randomized run of list+watch clients against one payloadtags and the real registry, and
the informer invariant (docs/watch.md, "Guarantees").

One run:

- a server under test (`tests.support.harness`) in front of a registry of its own, bookmarks every
  0.2 s; its scopes are resynced when the plan says so (``resync``), and, in some runs, also every
  half second to two seconds;
- *clients*, each a reflector as client-go's is: it lists its scope (a namespace, or all namespaces;
  whole, or in pages with ``limit``/``continue``), then watches from the list's resourceVersion with
  bookmarks and a ``timeoutSeconds`` of a few seconds, applying ADDED and DELETED to its cache. A
  stream that ends (its timeout, or the plan dropping the connection) is watched again from the last
  resourceVersion the client saw (an event's or a bookmark's); an ``ERROR`` 410 relists, as does a
  ``continue`` that expired. Clients start at planned moments: the first of a scope lists it while
  nobody watches it, later ones while it has a source (if its watch opened by then). Once the plan
  is out, one more client watches a scope, and only once its watch is open does another start and
  list that scope (`Run.list_while_watched`): every run lists a scope that has a source. In a third
  of the runs idle scopes are kept for a second only, and the plan keeps a client away longer than
  that (its source may go: 410);
- half the clients are slow to watch after each list (a few tenths of a second, while changes go on:
  they are the watch's first events) and have that watch's connection cut after one to three events,
  resuming from the last resourceVersion they saw;
- clients that list and watch one tag by name (``fieldSelector``, as ``kubectl wait --for=delete``),
  pushed into a new repository whose push notification is lost (the repository index does not learn
  of it): a ``DELETED`` of that tag is a violation unless a deletecollection of its whole namespace
  was sent (nothing else deletes it);
- operations, planned by the seed and started without waiting for each other: pushes of new tags and
  re-pushes of known ones (other clients, straight to the registry, in threads), deletes and
  deletecollections through the API, deletes by digest straight in the registry, and, when the run's
  server takes registry notifications, the notification of a change (some are "lost": the registry
  retries a failed one a few times, then drops it), sent as the registry would post it.

Once every operation has ended, the system is made quiet: the repository index (when notifications
are on) is refreshed and every source reads its scope again (`ScopeSource.fresh`, through the hub).
That is what the documented guarantee waits for (a resync period; the index's own refresh for a
repository whose first notification was lost): a change a source never read is not the bug looked for.
It cannot hide one either: a resync only sends the differences from the source's own snapshot, so a
client whose cache the watch left differing from that snapshot (an event never sent, or sent twice
the wrong way) still differs. Each client must then reach a resourceVersion at or after the last one
the server issued (the next bookmark brings it; numbers a watch's opening takes after the quiet
point count too), while watching, and its cache must be exactly the registry's tags of its scope.
A client that keeps getting 410 (three in a row) fails the run.

The seed fixes the plan (operations, targets, clients, drops); thread and network timing still vary,
so a failing seed is rerun with the command the failure prints.
"""

from __future__ import annotations

import collections
import json
import random
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from payloadtags.limits import WatchLimits
from payloadtags.names import encode_name
from tests.support import images
from tests.support.client import ApiClient, Stream, stream
from tests.support.harness import Pki, ServerUnderTest, start_server
from tests.support.interleaving import described
from tests.support.registry_server import RegistryServer

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
EVENTS_TOKEN = "watch-convergence-events-token"
# Three 410s in a row without a watch that lasted: the client relists in a loop.
EXPIRED_IN_A_ROW = 3
RERUN = "tests/integration/test_watch_convergence.py::test_one_seed"
# What a client's journal notes of the events it got (`Client.recent` leaves them out).
_EVENT_KINDS = ("ADDED", "DELETED", "MODIFIED")


def collection(namespace: str | None) -> str:
    if namespace is None:
        return f"{B}/payloadrepositorytags"
    return f"{B}/namespaces/{namespace}/payloadrepositorytags"


Key = tuple[str, str, str]  # namespace, repository path, tag


@attrs.frozen
class Config:
    seed: int
    namespaces: int = 2
    repositories: int = 2  # per namespace at the start
    tags: int = 2  # per repository at the start
    operations: int = 40
    clients: int = 6  # started by the plan, at most (`Run.list_while_watched` adds two)

    def describe(self) -> str:
        return described(self)


@attrs.define
class Report:
    config: Config
    counts: collections.Counter[str] = attrs.Factory(collections.Counter)
    violations: list[str] = attrs.Factory(list)
    mode: str = ""

    def reproduce(self) -> str:
        return (
            f"{self.config.describe()} [{self.mode}]: reproduce with "
            f"`INTERLEAVING_SEED={self.config.seed} INTERLEAVING_OPERATIONS={self.config.operations} "
            f"scripts/test -m slow {RERUN}`"
        )

    def summary(self) -> str:
        return f"seed {self.config.seed} [{self.mode}]: " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.counts.items())
        )


@attrs.define(eq=False)
class Client:
    """A reflector: list, then watch from the list's resourceVersion, resume, relist on 410."""

    name: str
    scope: str | None  # a namespace, or None: all namespaces
    limit: int | None  # the page size of its lists; None: one unpaged list
    api: ApiClient
    rng: random.Random
    run: Run
    # A list and watch by name (kubectl wait --for=delete), in ``scope``: this one tag only.
    only: Key | None = None
    # Seconds between each of its lists and the watch from it (changes made meanwhile are the
    # watch's first events), and how many events of that watch it reads before its connection is
    # cut (0: none): a reflector resumes from the last resourceVersion it saw.
    linger: float = 0.0
    cut: int = 0
    cache: dict[tuple[str, str], Key] = attrs.Factory(dict)
    rv: str = ""
    stream: Stream | None = None
    stopping: bool = False
    relist_asked: bool = False
    away: float = 0.0  # seconds it stays away before its next watch (a reflector's backoff)
    expired_in_a_row: int = 0
    failed: bool = False
    # What it did, for the timeline of a tag it got wrong: (when, what, the tags it concerns).
    journal: list[tuple[float, str, frozenset[Key]]] = attrs.Factory(list)
    done: Deferred[None] | None = None
    # Set by the run for a client that must be watching while another lists its scope
    # (`Run.list_while_watched`): its watches last until the run ends one, and ``watching`` fires once
    # one is open (or the client ended). ``listed`` fires once its first list is made (or it ended).
    held: bool = False
    watching: Deferred[None] = attrs.Factory(Deferred)
    listed: Deferred[None] = attrs.Factory(Deferred)

    def describe(self) -> str:
        paging = "unpaged" if self.limit is None else f"limit={self.limit}"
        if self.only is not None:
            paging = f"by name {self.only[1]}:{self.only[2]}"
        slow = f", {self.linger:.2f} s to watch, cut after {self.cut} events" if self.cut else ""
        return f"client {self.name} ({self.scope or 'all namespaces'}, {paging}{slow})"

    def selected(self, query: dict[str, str]) -> dict[str, str]:
        if self.only is not None:
            query["fieldSelector"] = f"metadata.name={encode_name(self.only[1], self.only[2])}"
        return query

    def note(self, what: str, keys: frozenset[Key] = frozenset()) -> None:
        self.journal.append((float(self.run.reactor.seconds()) - self.run.began, what, keys))

    def story(self, key: Key) -> list[tuple[float, str]]:
        """Its lists (whether each showed ``key``), watches, and events about ``key``."""
        told = []
        for at, what, keys in self.journal:
            if what.startswith("asks"):
                continue  # when its requests went out: for its 410s (`recent`), not a tag's story
            if what.startswith("list"):
                told.append((at, f"client {self.name} {what}: {'shows' if key in keys else 'lacks'} it"))
            elif not keys or key in keys:
                told.append((at, f"client {self.name} {what}"))
        return told

    def recent(self, count: int = 12) -> str:
        """Its last lists and watches (asked, answered) and 410s, one a line, from the run's start: how
        long each took against the idle time of what its watch needed."""
        steps = [(at, what) for at, what, _ in self.journal if not what.startswith(_EVENT_KINDS)]
        return "\n".join(f"  {at:8.3f} s  {what}" for at, what in steps[-count:])

    def violation(self, text: str) -> None:
        self.failed = True
        self.run.report.violations.append(f"{self.describe()}: {text}")

    def start(self) -> None:
        self.done = Deferred.fromCoroutine(self._loop())

    def drop(self, relist: bool, away: float = 0.0) -> None:
        """The connection of its watch goes away (a restart from the last resourceVersion, after
        ``away`` seconds), or the client relists first (as a reflector after an error)."""
        self.relist_asked = self.relist_asked or relist
        self.away = away
        if self.stream is not None:
            self.stream.close()

    async def stop(self) -> None:
        self.stopping = True
        if self.stream is not None:
            self.stream.close()
        if self.done is not None:
            await self.done

    async def _loop(self) -> None:
        try:
            await self._reflect()
        except Exception as error:
            if not self.stopping:
                self.violation(f"failed: {error!r}")
        finally:
            # Whoever waits for what it would have done goes on: it will not do it now.
            for waited in (self.watching, self.listed):
                if not waited.called:
                    waited.callback(None)

    async def _reflect(self) -> None:
        relist = True
        while not self.stopping:
            cut = 0
            if relist or self.relist_asked:
                self.relist_asked = False
                if not await self._list():
                    return
                if self.linger:
                    await deferLater(self.run.reactor, self.linger, lambda: None)
                cut = self.cut
            outcome = await self._watch(cut)
            if self.away:
                away, self.away = self.away, 0.0
                await deferLater(self.run.reactor, away, lambda: None)
            relist = outcome == "expired"
            if outcome == "error":
                return
            if relist:
                self.expired_in_a_row += 1
                self.run.report.counts["watch 410"] += 1
                if self.expired_in_a_row >= EXPIRED_IN_A_ROW:
                    self.violation(
                        f"{self.expired_in_a_row} watches in a row got 410 after a relist; its last "
                        f"steps (seconds from the run's start):\n{self.recent()}"
                    )
                    return

    async def _list(self) -> bool:
        counts = self.run.report.counts
        while not self.stopping:
            items: dict[tuple[str, str], Key] = {}
            token = None
            rv = None
            self.note("asks for a list")
            while True:
                query = self.selected({} if self.limit is None else {"limit": str(self.limit)})
                if token:
                    query["continue"] = token
                path = collection(self.scope) + ("?" + urllib.parse.urlencode(query) if query else "")
                reply = await self.api.get(path)
                counts["list pages"] += 1
                if reply.code == 410 and token:
                    counts["list continue 410"] += 1
                    break  # the walk expired: a whole new list, as client-go's pager does
                if reply.code != 200:
                    self.violation(f"GET {path}: {reply.code} {reply.body[:300]!r}")
                    return False
                listing = reply.json()
                page_rv = listing["metadata"]["resourceVersion"]
                if rv is not None and page_rv != rv:
                    self.violation(f"the pages of one list carry {rv} and {page_rv}")
                rv = page_rv
                for item in listing["items"]:
                    key = self._key(item)
                    if key is not None:
                        items[(key[0], item["metadata"]["name"])] = key
                token = listing["metadata"].get("continue")
                if not token:
                    self.cache, self.rv = items, rv
                    self.note(f"list at {rv}", frozenset(items.values()))
                    counts["lists"] += 1
                    counts["lists with a source" if self.run.watched(self.scope) else "lists without"] += 1
                    if not self.listed.called:
                        self.listed.callback(None)
                    return True
        return False

    def _key(self, obj: dict[str, Any]) -> Key | None:
        namespace = obj["metadata"]["namespace"]
        if self.scope is not None and namespace != self.scope:
            self.violation(f"an object of namespace {namespace}: {obj['metadata']['name']}")
            return None
        return namespace, obj["spec"]["repositoryPath"], obj["spec"]["tag"]

    async def _watch(self, cut: int = 0) -> str:
        """One watch stream: "ended" (resume from self.rv), "expired" (relist) or "error"; ``cut``:
        its connection goes after that many events."""
        timeout = self.rng.randint(1, 3)
        query = self.selected(
            {
                "watch": "true",
                "resourceVersion": self.rv,
                "allowWatchBookmarks": "true",
                # Held: longer than any run, so that only the run's drop ends it.
                "timeoutSeconds": str(600 if self.held else timeout),
            }
        )
        path = collection(self.scope) + "?" + urllib.parse.urlencode(query)
        self.note(f"asks for a watch from {self.rv}")
        opened = await stream(self.api, path)
        self.note(f"watch from {self.rv}: {opened.code}")
        self.run.report.counts["watches"] += 1
        if opened.code != 200:
            self.violation(f"watch {path}: {opened.code}")
            return "error"
        self.stream = opened
        if self.held and not self.watching.called:
            self.watching.callback(None)
        last = self.run.sequence(self.rv)
        try:
            while True:
                line = await _next_line(opened)
                if line is None:
                    return "ended"
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        self.note("410")
                        return "expired"
                    self.violation(f"watch from {self.rv}: ERROR {obj}")
                    return "error"
                rv = obj["metadata"]["resourceVersion"]
                sequence = self.run.sequence(rv)
                if sequence is None or (last is not None and sequence < last):
                    self.violation(f"watch from {self.rv}: {kind} at {rv} after {last}")
                last = sequence
                self.expired_in_a_row = 0
                self.rv = rv
                self.run.report.counts[f"events {kind}"] += 1
                if kind == "BOOKMARK":
                    continue
                key = self._key(obj)
                if key is None:
                    continue
                self.note(f"{kind} at {rv}", frozenset([key]))
                if kind == "ADDED":
                    self.cache[(key[0], obj["metadata"]["name"])] = key
                elif kind == "DELETED":
                    self.cache.pop((key[0], obj["metadata"]["name"]), None)
                    if key == self.only and key[0] not in self.run.wiped:
                        # Nothing deleted it: kubectl wait --for=delete would end on a tag there.
                        self.violation(f"DELETED {key} at {rv}, which nothing deleted")
                else:
                    self.violation(f"an event of type {kind}")
                if cut:
                    cut -= 1
                    if not cut:
                        self.note(f"its connection is cut at {rv}")
                        self.run.report.counts["watches cut"] += 1
                        return "ended"
        finally:
            self.stream = None
            opened.close()


async def _next_line(opened: Stream) -> bytes | None:
    """The stream's next line; None once it ended and every line was read."""
    if opened.lines.pending:
        return opened.lines.pending.pop(0)
    if opened.ended.called:
        return None
    waiting = opened.lines.get()

    def ended(result: None) -> None:
        if not waiting.called:
            waiting.cancel()
        return result

    opened.ended.addBoth(ended)
    try:
        return await waiting
    except CancelledError:
        return opened.lines.pending.pop(0) if opened.lines.pending else None


@attrs.define
class Change:
    """One operation, for the timeline of a tag that a client got wrong."""

    at: float
    what: str
    key: Key | None
    outcome: str = ""


class Run:
    def __init__(
        self, reactor: Any, registry: RegistryServer, pki: Pki, config: Config, workdir: Path
    ) -> None:
        self.reactor = reactor
        self.registry = registry
        self.pki = pki
        self.config = config
        self.workdir = workdir
        self.rng = random.Random(config.seed)
        self.report = Report(config)
        stem = f"wc{config.seed}n"
        self.namespaces = [f"{stem}{i}" for i in range(config.namespaces)]
        self.repositories = [
            f"{namespace}/app{r}" if r % 2 == 0 else f"{namespace}/grp/app{r}"
            for namespace in self.namespaces
            for r in range(config.repositories)
        ]
        self.known: list[tuple[str, str]] = []  # (repository, tag), in the order first pushed
        self.pushed = collections.Counter[tuple[str, str]]()
        self.changes: list[Change] = []
        self.clients: list[Client] = []
        self.server: ServerUnderTest | None = None
        self.notifications = False  # the server takes them
        self.notifying = False  # the registry sends them, for now
        self.idle_scope_ttl = 120.0
        self.began = float(reactor.seconds())
        self.waiters = 0  # clients by name of a tag whose push notification was lost
        self.wiped: set[str] = set()  # namespaces a deletecollection of the whole was sent for

    # -- helpers ------------------------------------------------------------------------------------

    @property
    def hub(self) -> Any:
        assert self.server is not None
        return self.server.running.api.watch_hub

    def sequence(self, rv: str) -> int | None:
        return self.hub.versions.parse(rv)  # type: ignore[no-any-return]

    def watched(self, scope: str | None) -> bool:
        return scope in self.hub.sources

    def admin(self) -> ApiClient:
        assert self.server is not None
        return self.server.client(self.pki.admin, self.reactor)

    def change(self, what: str, key: Key | None) -> Change:
        record = Change(float(self.reactor.seconds()) - self.began, what, key)
        self.changes.append(record)
        return record

    @staticmethod
    def key_of(repository: str, tag: str) -> Key:
        namespace, path = repository.split("/", 1)
        return namespace, path, tag

    # -- the plan ------------------------------------------------------------------------------------

    async def go(self, start: Callable[..., Coroutine[Any, Any, ServerUnderTest]]) -> Report:
        rng = self.rng
        self.notifications = notifications = rng.random() < 0.5
        resync_period = rng.choice([3600.0, 3600.0, rng.uniform(0.5, 2.0)])
        # Short: sources and list records nobody uses go while the run lasts (410s, relists).
        self.idle_scope_ttl = rng.choice([120.0, 120.0, 1.0])
        self.report.mode = (
            f"notifications {'on' if notifications else 'off'}, resync period {resync_period:.2f} s, "
            f"idle scopes kept {self.idle_scope_ttl:.0f} s"
        )
        for repository in self.repositories:
            for t in range(self.config.tags):
                self.known.append((repository, f"t{t}"))
        await deferToThread(self._push_all, list(self.known))
        overrides: dict[str, Any] = {
            "watch": WatchLimits(
                resync_period=resync_period, bookmark_interval=0.2, idle_scope_ttl=self.idle_scope_ttl
            ),
        }
        if notifications:
            token = self.workdir / f"events-{self.config.seed}.token"
            token.write_text(EVENTS_TOKEN + "\n")
            overrides["registry_events_token_file"] = str(token)
            # The index is filled by its first refresh; only events and the end's refresh change it.
            overrides["registry_index_refresh_period"] = 3600.0
        self.server = await start(self.registry.url, **overrides)
        try:
            self.notifying = notifications
            running: list[Deferred[None]] = []
            for _ in range(self.config.operations):
                work = self.plan_step()
                if work is not None:
                    running.append(Deferred.fromCoroutine(work))
                await deferLater(self.reactor, rng.uniform(0.0, 0.03), lambda: None)
            while len(self.clients) < 2:  # a run checks at least two clients
                self.start_client()
            await self.list_while_watched()
            await gatherResults(running, consumeErrors=True)
            await self.quiet()
            return self.report
        finally:
            for client in self.clients:
                await client.stop()
            await self.server.stop()

    def plan_step(self) -> Coroutine[Any, Any, None] | None:
        rng = self.rng
        choices: list[tuple[float, Callable[[], Coroutine[Any, Any, None] | None]]] = [
            (0.22, self.plan_push),
            (0.08, self.plan_repush),
            (0.14, self.plan_api_delete),
            (0.04, self.plan_delete_collection),
            (0.10, self.plan_registry_delete),
            (0.10, self.plan_client),
            (0.08, self.plan_drop),
            (0.06, self.plan_relist),
            (0.08, self.plan_resync),
            (0.04 if self.notifications else 0.0, self.plan_toggle),
            (0.04 if self.idle_scope_ttl < 10 else 0.0, self.plan_away),
            (0.04, self.plan_waiter),
        ]
        total = sum(weight for weight, _ in choices)
        pick = rng.uniform(0.0, total)
        for weight, plan in choices:
            pick -= weight
            if pick <= 0:
                return plan()
        return choices[-1][1]()

    def target(self) -> tuple[str, str]:
        """A known tag to delete or push again: often one of the last pushed, whose window since a
        source's last read is open (the tag a list showed and the source never read)."""
        rng = self.rng
        if rng.random() < 0.5:
            return rng.choice(self.known[-3:])
        return rng.choice(self.known)

    def plan_push(self) -> Coroutine[Any, Any, None]:
        rng = self.rng
        if rng.random() < 0.1:
            namespace = rng.choice(self.namespaces)
            repository = f"{namespace}/new{len(self.repositories)}"
            self.repositories.append(repository)
        else:
            repository = rng.choice(self.repositories)
        tag = f"p{len(self.known)}"
        self.known.append((repository, tag))
        return self.push(repository, tag, notify=rng.random())

    def plan_repush(self) -> Coroutine[Any, Any, None]:
        repository, tag = self.target()
        return self.push(repository, tag, notify=self.rng.random())

    def plan_api_delete(self) -> Coroutine[Any, Any, None]:
        repository, tag = self.target()
        return self.api_delete(repository, tag)

    def plan_delete_collection(self) -> Coroutine[Any, Any, None]:
        rng = self.rng
        if rng.random() < 0.3:
            namespace = rng.choice(self.namespaces)
            return self.delete_collection(namespace, None)
        repository, tag = self.target()
        return self.delete_collection(repository.split("/", 1)[0], (repository, tag))

    def plan_registry_delete(self) -> Coroutine[Any, Any, None]:
        repository, tag = self.target()
        return self.registry_delete(repository, tag, notify=self.rng.random())

    def plan_client(self) -> None:
        if len(self.clients) < self.config.clients:
            self.start_client()

    def start_client(self, held: bool = False) -> Client:
        """A client of a scope the seed picks; ``held``: one that watches until the run drops it,
        neither slow to watch nor cut (`list_while_watched`)."""
        rng = self.rng
        # Scopes repeat, so that later clients list a scope that already has a source.
        scope = rng.choice([None, *self.namespaces[:2]])
        return self._start_client(scope, held)

    def _start_client(self, scope: str | None, held: bool = False) -> Client:
        rng = self.rng
        limit = rng.choice([None, None, 1, 2, 3])
        client = Client(
            name=str(len(self.clients)),
            scope=scope,
            limit=limit,
            api=self.admin(),
            rng=random.Random(rng.random()),
            run=self,
            held=held,
        )
        if client.rng.random() < 0.5 and not held:
            # Slow to watch after its lists, and cut among the watch's first events.
            client.linger = client.rng.uniform(0.05, 0.3)
            client.cut = client.rng.randint(1, 3)
        self.clients.append(client)
        self.change(f"{client.describe()} starts", None)
        self.report.counts["clients"] += 1
        client.start()
        return client

    async def list_while_watched(self) -> None:
        """Once the plan is out (its operations may still run), a scope is listed while it has a
        source, whatever the timing: a held client lists and watches it, and only once its watch is
        open does another client start and list the scope; the held one is dropped (it resumes as
        any client) once that list is made. The plan's later clients of a scope may list it before
        the first one's watch opened (under load, every one of them did in some runs); without this,
        a run could check no list of a scope that has a source."""
        holder = self.start_client(held=True)
        await holder.watching
        if holder.stream is None:
            return  # it ended on a violation of its own; the run fails on it
        lister = self._start_client(holder.scope)
        await lister.listed
        self.change(f"{holder.describe()} is let go", None)
        holder.held = False
        holder.drop(relist=False)

    def plan_waiter(self) -> Coroutine[Any, Any, None] | None:
        """A tag pushed into a new repository whose push notification is lost (the index does not
        learn of it), then a client that lists and watches it by name, as kubectl wait --for=delete
        does. Nothing but a deletecollection of its whole namespace deletes it."""
        if self.waiters >= 2:
            return None
        namespace = self.rng.choice(self.namespaces[:2])
        repository = f"{namespace}/lost{self.waiters}"
        self.waiters += 1
        return self.wait_for(repository, "w", random.Random(self.rng.random()))

    async def wait_for(self, repository: str, tag: str, rng: random.Random) -> None:
        key = self.key_of(repository, tag)
        record = self.change("push (its notification lost)", key)
        self.report.counts["pushes"] += 1
        await deferToThread(self._push, repository, tag)
        record.outcome = "pushed"
        client = Client(
            name=str(len(self.clients)),
            scope=key[0],
            limit=None,
            api=self.admin(),
            rng=rng,
            run=self,
            only=key,
        )
        self.clients.append(client)
        self.change(f"{client.describe()} starts", None)
        self.report.counts["clients by name"] += 1
        client.start()

    def plan_drop(self, relist: bool = False) -> None:
        if self.clients:
            client = self.rng.choice(self.clients)
            client.drop(relist)
            self.change(f"{client.describe()} {'relists' if relist else 'drops its watch'}", None)
            self.report.counts["relists asked" if relist else "watch restarts"] += 1

    def plan_away(self) -> None:
        """A client stays away longer than an idle scope is kept (in runs where that is short): when
        nobody else watches its scope, its source is dropped, and its watch from where it was gets 410."""
        if self.clients:
            client = self.rng.choice(self.clients)
            client.drop(relist=False, away=self.idle_scope_ttl * 1.5)
            self.change(f"{client.describe()} stays away {self.idle_scope_ttl * 1.5:.1f} s", None)
            self.report.counts["clients away"] += 1

    def plan_relist(self) -> None:
        self.plan_drop(relist=True)

    def plan_resync(self) -> None:
        scopes = [None, *self.namespaces]
        scope = self.rng.choice(scopes)
        source = self.hub.sources.get(scope)
        if source is not None:
            source.resync()
            self.change(f"resync of {scope or 'all namespaces'}", None)
            self.report.counts["resyncs"] += 1

    def plan_toggle(self) -> None:
        if self.notifications:
            self.notifying = not self.notifying
            self.change(f"notifications {'on' if self.notifying else 'off'}", None)

    # -- operations ----------------------------------------------------------------------------------

    def _push_all(self, tags: list[tuple[str, str]]) -> None:
        for repository, tag in tags:
            self._push(repository, tag)

    def _push(self, repository: str, tag: str) -> None:
        self.pushed[(repository, tag)] += 1
        seed = f"{repository}:{tag}:{self.pushed[(repository, tag)]}"
        images.push_oci_image(self.registry, repository, tag, seed=seed)

    async def push(self, repository: str, tag: str, notify: float) -> None:
        record = self.change("push", self.key_of(repository, tag))
        self.report.counts["pushes"] += 1
        try:
            await deferToThread(self._push, repository, tag)
            record.outcome = "pushed"
        except Exception as error:  # a concurrent delete may fail it: nothing this test checks
            record.outcome = f"failed: {error}"
            self.report.counts["pushes failed"] += 1
        await self.notify("push", repository, notify)

    async def notify(self, action: str, repository: str, chance: float) -> None:
        """The registry's notification of a change, when notifications are on; one in four is lost."""
        if not self.notifying or chance < 0.25:
            return
        self.report.counts["notifications"] += 1
        body = {"events": [{"action": action, "target": {"repository": repository, "tag": "x"}}]}
        reply = await self.admin().request(
            "POST", "/registry/events", headers={"Authorization": f"Bearer {EVENTS_TOKEN}"}, body=body
        )
        if reply.code != 200:
            self.report.violations.append(f"POST /registry/events: {reply.code} {reply.body[:200]!r}")

    async def api_delete(self, repository: str, tag: str) -> None:
        namespace, path, _ = self.key_of(repository, tag)
        record = self.change("API delete", (namespace, path, tag))
        self.report.counts["API deletes"] += 1
        reply = await self.admin().delete(f"{collection(namespace)}/{encode_name(path, tag)}")
        record.outcome = str(reply.code)
        if reply.code == 503:  # a push of the tag raced its delete: nothing this test checks
            self.report.counts["API deletes 503"] += 1
        elif reply.code not in (200, 404, 409):
            self.report.violations.append(f"delete of {repository}:{tag}: {reply.code} {reply.body[:300]!r}")

    async def delete_collection(self, namespace: str, one: tuple[str, str] | None) -> None:
        query = ""
        key = None
        if one is not None:
            key = self.key_of(*one)
            query = "?" + urllib.parse.urlencode(
                {"fieldSelector": f"metadata.name={encode_name(key[1], key[2])}"}
            )
        if one is None:
            self.wiped.add(namespace)
        record = self.change(f"API deletecollection of {namespace}{' (one tag)' if one else ''}", key)
        self.report.counts["API deletecollections"] += 1
        reply = await self.admin().delete(collection(namespace) + query)
        record.outcome = str(reply.code)
        if reply.code == 503:  # a push into the namespace during its deletes: "not finished", retry
            self.report.counts["API deletecollections 503"] += 1
        elif reply.code != 200:
            self.report.violations.append(
                f"deletecollection {namespace}{query}: {reply.code} {reply.body[:300]!r}"
            )

    def _registry_delete(self, repository: str, tag: str) -> str:
        digest = images.resolve(self.registry, repository, tag)
        if digest is None:
            return "not found"
        return str(images.delete_manifest(self.registry, repository, digest))

    async def registry_delete(self, repository: str, tag: str, notify: float) -> None:
        record = self.change("registry delete (by digest)", self.key_of(repository, tag))
        self.report.counts["registry deletes"] += 1
        try:
            record.outcome = await deferToThread(self._registry_delete, repository, tag)
        except Exception as error:
            record.outcome = f"failed: {error}"
        await self.notify("delete", repository, notify)

    # -- the end -------------------------------------------------------------------------------------

    async def quiet(self) -> None:
        """Every source reads the registry as it now is, then each client must catch up with the
        server and hold exactly the registry's tags of its scope."""
        assert self.server is not None
        index = self.server.running.index
        if index is not None:
            await index.refresh(self.server.running.registry)
        for scope in list(self.hub.sources):
            source = await self.hub.source(scope)
            await source.fresh()
        target = self.hub.versions.current
        self.change(f"quiet: sources read again, the server's last resourceVersion {target}", None)
        waited = 0.0
        while True:
            behind = self.behind(target)
            if not behind or waited >= 30.0:
                break
            await deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
        current = self.hub.versions.current
        expected = await deferToThread(self.registry_tags)
        for client in self.clients:
            await client.stop()
            if client.name in behind:
                client.violation(
                    f"never caught up with the server (its last resourceVersion {current}, {target} "
                    f"at the quiet point; the client at {behind[client.name]!r})"
                )
                continue
            want = {
                key
                for key in expected
                if (client.scope is None or key[0] == client.scope) and client.only in (None, key)
            }
            have = set(client.cache.values())
            for key in sorted(have - want):
                client.violation(
                    f"holds {key}, which the registry does not have\n{self.timeline(key, client)}"
                )
            for key in sorted(want - have):
                client.violation(f"lacks {key}, which the registry has\n{self.timeline(key, client)}")
        # Reads started before the quiet point may still end after it (a read confirming what a list
        # showed). What they send then must be true of the registry as it is: a repeat (a DELETED for
        # a tag gone, an ADDED for one there) is harmless, any other event would undo a client.
        for source in self.hub.sources.values():
            for event in source.ring:
                if event.sequence <= target:
                    continue
                ref = event.ref
                there = (ref.namespace, ref.repository_path, ref.tag) in expected
                if there == (event.type.value == "ADDED"):
                    self.report.counts["late repeats"] += 1
                else:
                    self.report.violations.append(
                        f"after the system was quiet (at {target}), {event.type.value} {ref} at "
                        f"{event.sequence}: the registry {'has' if there else 'does not have'} it"
                    )

    def behind(self, target: int) -> dict[str, str]:
        """The clients not caught up with ``target`` (`_caught_up`), by name, with their last
        resourceVersions. Not one that failed: it ended on a violation of its own and never catches
        up, and waiting for it ran out the quiet point's wait and reported whichever other client was
        between two watches at that instant (wc84319)."""
        return {c.name: c.rv for c in self.clients if not c.failed and not self._caught_up(c, target)}

    def _caught_up(self, client: Client, target: int) -> bool:
        """Watching, at or after ``target`` and every number the server has issued since: a watch
        from a list of an unwatched scope made after the quiet point takes new numbers for its
        opening, and a client that got only the first of them (its connection cut) has the rest
        still to come. A client between its list and its watch is not caught up either: what
        changed since its list reaches it only through that watch."""
        sequence = self.sequence(client.rv) if client.rv else None
        return (
            client.stream is not None
            and sequence is not None
            and sequence >= max(target, self.hub.versions.current)
        )

    def registry_tags(self) -> set[Key]:
        found = set()
        for repository in images.catalog(self.registry):
            for tag in images.list_tags(self.registry, repository):
                found.add(self.key_of(repository, tag))
        return found

    def timeline(self, key: Key, client: Client) -> str:
        """What happened to ``key``, and what ``client`` did and was told, in order (seconds from the
        run's start; an operation at the moment it started, with how it ended)."""
        told = [
            (c.at, f"{c.what}" + (f": {c.outcome}" if c.outcome else ""))
            for c in self.changes
            if c.key in (None, key)
        ]
        return "\n".join(f"  {at:7.3f} {what}" for at, what in sorted([*told, *client.story(key)]))


async def run_seed(reactor: Any, registry: RegistryServer, pki: Pki, config: Config, workdir: Path) -> Report:
    async def start(url: str, **overrides: Any) -> ServerUnderTest:
        return await start_server(reactor, pki, url, **overrides)

    return await Run(reactor, registry, pki, config, workdir).go(start)
