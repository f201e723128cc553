"""List+watch reflector: a local, continuously updated copy of one collection of the cluster API.

It follows client-go's reflector: list (paginated), then watch from the list's resourceVersion with
bookmarks; a watch that ends or breaks resumes from the last resourceVersion seen, so nothing is
missed or seen twice; a 410 Expired (the server no longer remembers that version) forces a fresh
list, after which the store is reconciled with it; every other failure (and a second 410 in a row) is
retried with capped, jittered exponential backoff, forgotten only after a stretch without failures as
client-go's backoff manager does, so a server that fails right after every list is not relisted in a
loop. A watch that goes silent is given up by the client (`KubeClient.watch`, idle timeout) and
watched again at once from the same resourceVersion, not counted as a failure: a healthy
kube-apiserver leaves the watch of a resource that does not change without bookmarks for minutes; a
new watch that then fails is the failure. Watches that bring nothing for far longer than that are
said, once and then every 15 minutes, not as a failure either. Time and randomness are injected so
all of this is testable with `twisted.internet.task.Clock`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from payloadtags.deferreds import cancel_and_wait
from payloadtags.jsontypes import JsonObject
from payloadtags.kube.backoff import Backoff
from payloadtags.kube.client import ADDED, BOOKMARK, DELETED, MODIFIED, WatchEvent
from payloadtags.kube.errors import KubeApiError, KubeError, KubeWatchQuiet, KubeWatchSilent

log = Logger()


class WatchSource(Protocol):
    """The part of `KubeClient` a reflector uses (a fake in unit tests)."""

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject: ...

    async def watch(self, path: str, params: Mapping[str, str] | None = None) -> WatchEventStream: ...


class WatchEventStream(Protocol):
    def __aiter__(self) -> WatchEventStream: ...

    async def __anext__(self) -> WatchEvent: ...

    def close(self) -> None: ...


class StoreListener:
    """Receives the reflector's changes. Override what you need; the defaults do nothing.

    The store is already updated when a method is called. After every list (the first one and
    every relist after a 410) the differences to the previous contents arrive as add/update/delete
    calls, then `on_replaced` with the full new contents, for consumers that rebuild an index.
    """

    def on_add(self, obj: JsonObject) -> None:
        pass

    def on_update(self, old: JsonObject, new: JsonObject) -> None:
        pass

    def on_delete(self, obj: JsonObject) -> None:
        pass

    def on_replaced(self, objects: list[JsonObject]) -> None:
        pass


def object_key(obj: JsonObject) -> str:
    """client-go's key: ``namespace/name``, or ``name`` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    name = meta.get("name", "")
    return f"{namespace}/{name}" if namespace else name


class _ShortWatch(Exception):
    """A watch that closed at once without delivering anything: treat as a failure, or a server
    that does this would be hammered in a tight loop."""


@attrs.define(eq=False)
class Reflector:
    """Keeps `items` in sync with the collection at `path` (e.g. ``/api/v1/namespaces``).

    `label_selector`/`field_selector` narrow the collection. Call `start`, then wait for
    `wait_for_sync` before trusting the contents; `stop` at shutdown.
    """

    client: WatchSource
    path: str
    clock: IReactorTime
    label_selector: str | None = None
    field_selector: str | None = None
    page_size: int = 500
    # Each watch asks the server to end it after a random time in [watch_timeout, 2*watch_timeout),
    # as client-go does, so that replicas' watches do not all reconnect together.
    watch_timeout: float = 300.0
    # A watch that ends sooner than this without any event counts as a failure.
    min_watch_duration: float = 1.0
    backoff: Backoff = attrs.field(factory=Backoff)
    # The backoff starts over once this long has passed since the last retry without a new failure
    # (client-go: 2 minutes). A success alone does not reset it: a server that answers the list and
    # then fails the watch every time would otherwise be relisted in a tight loop.
    backoff_reset_after: float = 120.0
    rng: random.Random = attrs.field(factory=random.Random)
    name: str = ""
    # Told each failure (the path, the error, whether the store has synced: what the failure holds
    # back depends on it): True when it said it (a cause every reflector meets alike, said once for
    # all with its fix: `ClusterAccessLog`), so that this one does not. Told a long quiet too (below).
    on_failure: Callable[[str, KubeError, bool], bool] | None = None
    # Watches that bring nothing at all this long (no event, no bookmark; each answered, then silent
    # or ended) are told to `on_failure` as a `KubeWatchQuiet`, not a failure (nothing counted, no
    # backoff), and again at most this often while it lasts. A healthy kube-apiserver leaves a quiet
    # resource's watch without a bookmark for at most about 11 minutes (etcd's progress notifications
    # every 10, by default, then the watch cache's next minute). Longer is the resource's watch cache
    # turned off, or something on the way holding the streams: changes unseen, readiness green.
    quiet_said_after: float = 900.0

    _items: dict[str, JsonObject] = attrs.field(factory=dict, init=False)
    _listeners: list[StoreListener] = attrs.field(factory=list, init=False)
    _resource_version: str | None = attrs.field(default=None, init=False)
    _synced: bool = attrs.field(default=False, init=False)
    _sync_waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _task: Deferred[None] | None = attrs.field(default=None, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _expired_streak: int = attrs.field(default=0, init=False)
    _retried_at: float | None = attrs.field(default=None, init=False)
    lists: int = attrs.field(default=0, init=False)
    watches: int = attrs.field(default=0, init=False)
    # The last failure (not a 410) since the last complete list: why the store is not synced yet.
    last_error: KubeError | None = attrs.field(default=None, init=False)
    # When the last list, event or bookmark came, and when a quiet was last said.
    _heard_at: float = attrs.field(default=0.0, init=False)
    _quiet_said_at: float = attrs.field(default=float("-inf"), init=False)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            self.name = self.path

    # -- reading the store ---------------------------------------------------------------

    @property
    def has_synced(self) -> bool:
        """True once the first complete list has been applied."""
        return self._synced

    @property
    def resource_version(self) -> str | None:
        """The last resourceVersion seen (list, event or bookmark); where a watch resumes."""
        return self._resource_version

    def get(self, name: str, namespace: str | None = None) -> JsonObject | None:
        return self._items.get(f"{namespace}/{name}" if namespace else name)

    def get_by_key(self, key: str) -> JsonObject | None:
        return self._items.get(key)

    def keys(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[JsonObject]:
        return list(self._items.values())

    def __iter__(self) -> Iterator[JsonObject]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def add_listener(self, listener: StoreListener) -> None:
        """Register for changes. A listener added after the sync does not get the past adds."""
        self._listeners.append(listener)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"reflector {self.name} already started")
        self._task = Deferred.fromCoroutine(self._run())
        self._task.addErrback(self._crashed)

    def wait_for_sync(self) -> Deferred[None]:
        """Fires when the first list is applied (at once if it already is)."""
        d: Deferred[None] = Deferred()
        if self._synced:
            d.callback(None)
        else:
            self._sync_waiters.append(d)
        return d

    async def stop(self) -> None:
        """Stop listing and watching; waits until the loop has exited. The store stays readable.

        A sync waiter or a listener may call it: the loop is then running (applying the list or an
        event), not waiting, so the cancel finds nothing to cancel; the loop itself ends before its
        next request instead, not after a watch that may last minutes."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        waiters, self._sync_waiters = self._sync_waiters, []
        for d in waiters:
            d.cancel()

    def _crashed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("Reflector {name} stopped by a bug", failure, name=self.name)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        need_list = True
        while not self._stopping:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    if self._stopping:
                        return  # stopped by a sync waiter or a listener (see `stop`)
                await self._watch()
                self._say_if_quiet()
            except KubeApiError as e:
                if self._stopping:
                    return
                if e.expired:
                    log.info("Reflector {name}: {error}; relisting", name=self.name, error=e.message)
                    need_list = True
                    self._expired_streak += 1
                    # Relisting at once is what a 410 asks for; a second 410 before any event got
                    # through (a server whose history keeps vanishing) is slowed down like a failure.
                    if self._expired_streak == 1:
                        continue
                elif not self._said(e):
                    log.warn("Reflector {name}: API error {error}", name=self.name, error=e)
                await self._sleep(e.retry_after)
            except KubeWatchSilent as e:
                # Silence is what a quiet resource's watch looks like on a healthy cluster whose etcd
                # sends progress notifications only every 10 minutes, its default
                # (`WATCH_IDLE_TIMEOUT`): no backoff, no failure said, last_error left alone. If what is
                # behind the connection was gone (a proxy's upstream), the new watch fails and is a
                # failure like any other; held streams are said once they outlast any healthy quiet.
                log.debug(
                    "Reflector {name}: {error}; watching again from {rv}",
                    name=self.name,
                    error=e,
                    rv=self._resource_version,
                )
                self._say_if_quiet()
            except (KubeError, _ShortWatch) as e:
                if self._stopping:
                    return
                if not (isinstance(e, KubeError) and self._said(e)):
                    log.warn("Reflector {name}: {error}; retrying", name=self.name, error=e)
                await self._sleep()

    def _said(self, error: KubeError) -> bool:
        """Notes ``error`` as the last one; whether `on_failure` said it (then logged at debug only)."""
        self.last_error = error
        if self.on_failure is not None and self.on_failure(self.path, error, self._synced):
            log.debug("Reflector {name}: {error}; retrying", name=self.name, error=error)
            return True
        return False

    def _say_if_quiet(self) -> None:
        """After a watch that ended without a failure: says a quiet of `quiet_said_after` or longer,
        once, and then at most that often."""
        now = self.clock.seconds()
        if now - max(self._heard_at, self._quiet_said_at) < self.quiet_said_after:
            return
        self._quiet_said_at = now
        quiet = KubeWatchQuiet(self._heard_at, now - self._heard_at)
        if self.on_failure is None or not self.on_failure(self.path, quiet, self._synced):
            log.info("Reflector {name}: watches answered, then nothing: {quiet}", name=self.name, quiet=quiet)

    async def _sleep(self, at_least: float | None = None) -> None:
        if (
            self._retried_at is not None
            and self.clock.seconds() - self._retried_at >= self.backoff_reset_after
        ):
            self.backoff.reset()
        delay = self.backoff.next_delay()
        if at_least is not None:
            delay = max(delay, at_least)
        await deferLater(self.clock, delay)
        self._retried_at = self.clock.seconds()

    async def _list(self) -> None:
        params = self._selectors()
        params["limit"] = str(self.page_size)
        items: list[JsonObject] = []
        while True:
            page = await self.client.list(self.path, params)
            meta = page.get("metadata") or {}
            items.extend(_with_type(item, page) for item in page.get("items") or ())
            token = meta.get("continue")
            if not token:
                break
            params["continue"] = token
        self.lists += 1
        self._heard_at = self.clock.seconds()
        self._replace(items, str(meta.get("resourceVersion") or ""))

    async def _watch(self) -> None:
        params = self._selectors()
        params.update(
            resourceVersion=self._resource_version or "",
            allowWatchBookmarks="true",
            timeoutSeconds=str(max(1, int(self.watch_timeout * (1 + self.rng.random())))),
        )
        started = self.clock.seconds()
        stream = await self.client.watch(self.path, params)
        self.watches += 1
        received = 0
        try:
            async for event in stream:
                received += 1
                self._apply(event)
                self._expired_streak = 0
                if self._stopping:
                    break  # stopped by a listener (see `stop`)
        finally:
            stream.close()
        if received == 0 and self.clock.seconds() - started < self.min_watch_duration:
            raise _ShortWatch("watch ended at once without events")

    def _selectors(self) -> dict[str, str]:
        params = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    # -- applying changes ----------------------------------------------------------------

    def _replace(self, objects: list[JsonObject], resource_version: str) -> None:
        old, new = self._items, {object_key(obj): obj for obj in objects}
        self._items = new
        self._resource_version = resource_version or self._resource_version
        for key, obj in new.items():
            previous = old.get(key)
            if previous is None:
                self._notify("on_add", obj)
            elif _rv(previous) != _rv(obj):
                self._notify("on_update", previous, obj)
        for key, obj in old.items():
            if key not in new:
                self._notify("on_delete", obj)
        self._notify("on_replaced", list(new.values()))
        self.last_error = None
        if not self._synced:
            self._synced = True
            waiters, self._sync_waiters = self._sync_waiters, []
            for d in waiters:
                d.callback(None)

    def _apply(self, event: WatchEvent) -> None:
        self._heard_at = self.clock.seconds()
        obj = event.object
        if event.resource_version:
            self._resource_version = event.resource_version
        if event.type == BOOKMARK:
            return
        key = object_key(obj)
        if event.type in (ADDED, MODIFIED):
            previous = self._items.get(key)
            self._items[key] = obj
            if previous is None:
                self._notify("on_add", obj)
            elif _rv(previous) != _rv(obj) or _rv(obj) is None:
                # Equal versions are a replay of what we have (a server resending after a
                # reconnect); consumers must not see it twice.
                self._notify("on_update", previous, obj)
        elif event.type == DELETED:
            if self._items.pop(key, None) is not None:
                self._notify("on_delete", obj)
        else:
            log.warn("Reflector {name}: ignoring watch event of type {type}", name=self.name, type=event.type)

    def _notify(self, method: str, *args: Any) -> None:
        for listener in self._listeners:
            try:
                getattr(listener, method)(*args)
            except Exception:
                # One faulty consumer must not stop the store, or the other consumers, updating.
                log.failure(
                    "Reflector {name}: listener {listener} failed in {method}",
                    name=self.name,
                    listener=listener,
                    method=method,
                )


def _rv(obj: JsonObject) -> object:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _with_type(item: JsonObject, page: JsonObject) -> JsonObject:
    # A real API server leaves kind/apiVersion out of list items but puts them in watch events; fill
    # them in so consumers see the same shape whichever way an object arrived.
    if "kind" in item and "apiVersion" in item:
        return item
    kind = str(page.get("kind") or "")
    return {"kind": kind.removesuffix("List"), "apiVersion": page.get("apiVersion"), **item}
