"""The state of the Kubernetes API test double: objects, one global resourceVersion, event history.

Everything here is synchronous and in memory; the HTTP layer (`server.py`) and tests share it. Tests
may call it directly to arrange state without going through HTTP.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import copy
import json
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from tests.support.kubeapi import leases, statuses
from tests.support.kubeapi.resources import LEASES, NAMESPACES, STORED, ResourceType
from tests.support.kubeapi.selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)

TERMINATING_CONFLICT = (
    "The system is ensuring all content is removed from this namespace.  "
    "Upon completion, this namespace will automatically be purged by the system."
)
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# The resourceVersion of a continue token that goes on from the latest state (etcd3's -1).
LATEST = -1


@attrs.frozen
class Event:
    """One change. For DELETED, `obj` is the last state, carrying the deletion's resourceVersion."""

    rv: int
    resource: ResourceType
    type: str
    obj: Obj
    prev: Obj | None


@attrs.frozen
class ListResult:
    items: list[Obj]
    resource_version: int
    continue_token: str | None
    remaining: int | None


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _without_rv(obj: Obj) -> Obj:
    stripped = copy.deepcopy(obj)
    stripped.get("metadata", {}).pop("resourceVersion", None)
    return stripped


class ObjectStore:
    """Objects of every stored resource, a global resourceVersion counter and a bounded history."""

    def __init__(self, clock: IReactorTime | None = None, history_limit: int = 1000) -> None:
        self._clock = clock
        self._objects: dict[ResourceType, dict[Key, Obj]] = {r: {} for r in STORED}
        self._rv = 0
        # Each resource's last change: where kube-apiserver's watch cache of that resource stands
        # (its bookmarks carry it), kept through compaction as the cache keeps it.
        self._last_rv: dict[ResourceType, int] = {}
        self._history: deque[Event] = deque()
        self._history_limit = history_limit
        # Events with a resourceVersion up to this one may have been dropped from the history.
        self._compacted_rv = 0
        self._subscribers: list[Callable[[Event], None]] = []
        #: When True, deleting a namespace removes it at once instead of leaving it Terminating.
        self.auto_finalize_namespaces = False
        for name in INITIAL_NAMESPACES:
            self.create(NAMESPACES, {"metadata": {"name": name}})

    # -- reading ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def compacted_rv(self) -> int:
        return self._compacted_rv

    def last_rv_of(self, resource: ResourceType) -> int:
        """The resourceVersion of `resource`'s last change (0 when it never changed)."""
        return self._last_rv.get(resource, 0)

    def get(self, resource: ResourceType, name: str, namespace: str | None = None) -> Obj:
        obj = self._objects[resource].get((namespace or "", name))
        if obj is None:
            raise statuses.not_found(resource, name)
        return copy.deepcopy(obj)

    def exists(self, resource: ResourceType, name: str, namespace: str | None = None) -> bool:
        return (namespace or "", name) in self._objects[resource]

    def list(
        self,
        resource: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: LabelSelector | None = None,
        field_selector: FieldSelector | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        exact_rv: int | None = None,
        serve: int | None = None,
    ) -> ListResult:
        """A list, or one page of it. `serve`, with a `limit`, is how many of the `limit` items this
        page holds: kube-apiserver may answer fewer, even none, with a continue token for the rest."""
        start: Key | None = None
        if continue_token:
            snapshot, start = _decode_continue(continue_token)
            if snapshot == LATEST:
                snapshot, objects = self._rv, self._objects[resource]
            elif snapshot < self._compacted_rv:
                # etcd3's store: the rest can still be had, inconsistently, from the latest revision.
                raise statuses.expired_continue(_encode_continue(LATEST, start))
            else:
                objects = self._state_at(resource, snapshot)
        elif exact_rv is not None:
            if exact_rv < self._compacted_rv:
                raise statuses.too_old(exact_rv, self._compacted_rv)
            snapshot, objects = exact_rv, self._state_at(resource, exact_rv)
        else:
            snapshot, objects = self._rv, self._objects[resource]
        matched = [
            (key, obj)
            for key, obj in sorted(objects.items())
            if (namespace is None or key[0] == namespace)
            and (start is None or key > start)
            and self.matches(obj, label_selector, field_selector)
        ]
        token = remaining = None
        served = min(limit, serve if serve is not None else limit) if limit else len(matched)
        if len(matched) > served:
            # The token names the last key served, or the one the page started after: none served.
            last = matched[served - 1][0] if served else (start or ("", ""))
            token = _encode_continue(snapshot, last)
            remaining = len(matched) - served
            matched = matched[:served]
        return ListResult([copy.deepcopy(obj) for _, obj in matched], snapshot, token, remaining)

    @staticmethod
    def matches(obj: Obj, label_selector: LabelSelector | None, field_selector: FieldSelector | None) -> bool:
        if label_selector is not None and not label_selector.matches(
            (obj.get("metadata") or {}).get("labels")
        ):
            return False
        return field_selector is None or field_selector.matches(obj)

    def events_since(self, resource: ResourceType, rv: int) -> builtins.list[Event]:
        """The retained events after `rv`; 410 Expired when some of them are gone."""
        if rv < self._compacted_rv:
            raise statuses.too_old(rv, self._compacted_rv)
        return [e for e in self._history if e.rv > rv and e.resource == resource]

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback` with every future event; returns the function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    # -- test controls ---------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the history: watches and continue tokens from before now get 410 Expired."""
        self._history.clear()
        self._compacted_rv = self._rv

    def finalize_namespace(self, name: str) -> None:
        """What the namespace controller does with a Terminating namespace, each step an event:
        deletes everything in it (DELETED), writes its deletion conditions into the status
        (MODIFIED), removes its ``kubernetes`` finalizer (MODIFIED, through /finalize: an empty
        spec.finalizers is left out), then deletes it (DELETED)."""
        key = ("", name)
        if not self.exists(NAMESPACES, name):
            raise statuses.not_found(NAMESPACES, name)
        for resource in STORED:
            if resource.namespaced:
                for content in sorted(k for k in self._objects[resource] if k[0] == name):
                    self._remove(resource, content)
        current = self._objects[NAMESPACES][key]
        with_conditions = copy.deepcopy(current)
        with_conditions["status"]["conditions"] = self._deletion_conditions()
        finalized = self._store(NAMESPACES, key, with_conditions, "MODIFIED", current)
        current = self._objects[NAMESPACES][key]
        finalized["spec"] = {}
        self._store(NAMESPACES, key, finalized, "MODIFIED", current)
        self._remove(NAMESPACES, key)

    def _deletion_conditions(self) -> builtins.list[Obj]:
        """The namespace controller's conditions once all content is gone and nothing holds it."""
        now = self._now()
        return [
            {"type": kind, "status": "False", "lastTransitionTime": now, "reason": reason, "message": message}
            for kind, reason, message in (
                (
                    "NamespaceDeletionDiscoveryFailure",
                    "ResourcesDiscovered",
                    "All resources successfully discovered",
                ),
                (
                    "NamespaceDeletionGroupVersionParsingFailure",
                    "ParsedGroupVersions",
                    "All legacy kube types successfully parsed",
                ),
                (
                    "NamespaceDeletionContentFailure",
                    "ContentDeleted",
                    "All content successfully deleted, may be waiting on finalization",
                ),
                ("NamespaceContentRemaining", "ContentRemoved", "All content successfully removed"),
                (
                    "NamespaceFinalizersRemaining",
                    "ContentHasNoFinalizers",
                    "All content-preserving finalizers finished",
                ),
            )
        ]

    # -- writing ---------------------------------------------------------------------------

    def create(
        self, resource: ResourceType, obj: Obj, namespace: str | None = None, *, dry_run: bool = False
    ) -> Obj:
        obj = self._typed(resource, obj)
        meta = obj.setdefault("metadata", {})
        namespace = self._namespace_for(resource, meta, namespace)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
        if not name:
            raise statuses.invalid(
                resource,
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            )
        self._validate_name(resource, name)
        if namespace is not None:
            self._check_namespace_accepts(resource, namespace, name)
        key = (namespace or "", name)
        if key in self._objects[resource]:
            raise statuses.already_exists(resource, name)
        meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=self._now())
        for server_owned in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_owned, None)
        if namespace is not None:
            meta["namespace"] = namespace
        if resource is NAMESPACES:
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        if dry_run:
            return obj
        return self._store(resource, key, obj, "ADDED", None)

    def update(
        self, resource: ResourceType, obj: Obj, name: str | None = None, namespace: str | None = None
    ) -> Obj:
        obj = self._typed(resource, obj)
        meta = obj.setdefault("metadata", {})
        namespace = self._namespace_for(resource, meta, namespace)
        name = name or meta.get("name") or ""
        if meta.get("name") and meta["name"] != name:
            raise statuses.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        key = (namespace or "", name)
        current = self._objects[resource].get(key)
        if current is None:
            raise statuses.not_found(resource, name)
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv not in (None, "") and str(wanted_rv) != current["metadata"]["resourceVersion"]:
            raise statuses.conflict(resource, name, statuses.STALE_UPDATE)
        # Fields the server owns survive whatever the client sends.
        for server_owned in ("uid", "creationTimestamp", "deletionTimestamp", "name", "namespace"):
            if server_owned in current["metadata"]:
                meta[server_owned] = current["metadata"][server_owned]
            else:
                meta.pop(server_owned, None)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if resource is NAMESPACES:
            # spec and status of a namespace change only through its subresources.
            obj["spec"], obj["status"] = copy.deepcopy(current["spec"]), copy.deepcopy(current["status"])
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if obj == current:
            # A no-op write does not bump the resourceVersion, like the real server.
            return copy.deepcopy(current)
        return self._store(resource, key, obj, "MODIFIED", current)

    def patch(self, resource: ResourceType, name: str, patch: Obj, namespace: str | None = None) -> Obj:
        current = self._objects[resource].get((namespace or "", name))
        if current is None:
            raise statuses.not_found(resource, name)
        if not isinstance(patch, dict):
            raise statuses.bad_request("the patch is not a JSON object")
        return self.update(resource, _merge_patch(current, patch), name, namespace)

    def delete(
        self,
        resource: ResourceType,
        name: str,
        namespace: str | None = None,
        *,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete; returns (the object, whether it is gone). A namespace is only marked Terminating."""
        key = (namespace or "", name)
        current = self._objects[resource].get(key)
        if current is None:
            raise statuses.not_found(resource, name)
        meta = current["metadata"]
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = (preconditions or {}).get(field)
            if wanted is not None and str(wanted) != meta.get(field):
                raise statuses.conflict(
                    resource,
                    name,
                    f"Precondition failed: {label} in precondition: {wanted}, "
                    f"{label} in object meta: {meta.get(field)}",
                )
        if resource is NAMESPACES:
            if meta.get("deletionTimestamp"):
                raise statuses.conflict(resource, name, TERMINATING_CONFLICT)
            if dry_run:
                return copy.deepcopy(current), False
            terminating = copy.deepcopy(current)
            terminating["metadata"]["deletionTimestamp"] = self._now()
            terminating["status"] = {"phase": "Terminating"}
            stored = self._store(resource, key, terminating, "MODIFIED", current)
            if self.auto_finalize_namespaces:
                self.finalize_namespace(name)
                return stored, True
            return stored, False
        if dry_run:
            return copy.deepcopy(current), False
        return self._remove(resource, key), True

    # -- internals -------------------------------------------------------------------------

    def _typed(self, resource: ResourceType, obj: Obj) -> Obj:
        """`obj` with its kind and apiVersion, decoded as the server decodes (and checks) its type."""
        obj = self._with_type(resource, obj)
        if resource is LEASES:
            leases.validate(leases.decoded(obj))
        return obj

    def _with_type(self, resource: ResourceType, obj: Obj) -> Obj:
        if not isinstance(obj, dict):
            raise statuses.bad_request("the body of the request is not a JSON object")
        obj = {"apiVersion": resource.api_version, "kind": resource.kind, **copy.deepcopy(obj)}
        if obj["apiVersion"] != resource.api_version:
            raise statuses.bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match the expected API version "
                f"({resource.api_version})"
            )
        if obj["kind"] != resource.kind:
            raise statuses.bad_request(
                f"the kind in the data ({obj['kind']}) does not match the expected kind ({resource.kind})"
            )
        if not isinstance(obj.get("metadata", {}), dict):
            raise statuses.bad_request("metadata must be an object")
        return obj

    def _namespace_for(self, resource: ResourceType, meta: Obj, namespace: str | None) -> str | None:
        if not resource.namespaced:
            meta.pop("namespace", None)
            return None
        in_body = meta.get("namespace")
        if namespace is None:
            namespace = in_body or "default"
        elif in_body and in_body != namespace:
            raise statuses.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        return namespace

    def _validate_name(self, resource: ResourceType, name: str) -> None:
        problem = resource.name_error(name)
        if problem is not None:
            raise statuses.invalid(
                resource, name, "metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {problem}'
            )

    def _check_namespace_accepts(self, resource: ResourceType, namespace: str, name: str) -> None:
        ns = self._objects[NAMESPACES].get(("", namespace))
        if ns is None:
            raise statuses.not_found(NAMESPACES, namespace)
        if ns["metadata"].get("deletionTimestamp"):
            why = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise statuses.forbidden(
                resource,
                name,
                f'{resource.qualified} "{name}" is forbidden: {why}',
                {"reason": "NamespaceTerminating", "message": why, "field": "metadata.namespace"},
            )

    def _store(self, resource: ResourceType, key: Key, obj: Obj, event_type: str, prev: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[resource][key] = obj
        self._emit(Event(self._rv, resource, event_type, copy.deepcopy(obj), prev))
        return copy.deepcopy(obj)

    def _remove(self, resource: ResourceType, key: Key) -> Obj:
        current = self._objects[resource].pop(key)
        self._rv += 1
        last = copy.deepcopy(current)
        last["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(Event(self._rv, resource, "DELETED", last, current))
        return copy.deepcopy(last)

    def _emit(self, event: Event) -> None:
        self._last_rv[event.resource] = event.rv
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._compacted_rv = self._history.popleft().rv
        for subscriber in list(self._subscribers):
            subscriber(event)

    def _state_at(self, resource: ResourceType, rv: int) -> dict[Key, Obj]:
        """The objects of `resource` as they were at `rv`, rolled back through the history."""
        objects = dict(self._objects[resource])
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.resource != resource:
                continue
            key = _key(event.obj)
            if event.type == "ADDED":
                objects.pop(key, None)
            elif event.prev is not None:
                objects[key] = event.prev
        return objects

    def _now(self) -> str:
        seconds = self._clock.seconds() if self._clock is not None else time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _encode_continue(rv: int, last: Key) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(last)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, Key]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        rv, start = decoded["rv"], decoded["start"]
        if not isinstance(rv, int) or not (isinstance(start, list) and len(start) == 2):
            raise ValueError("bad token")
        return rv, (str(start[0]), str(start[1]))
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise statuses.bad_request(f"continue key is not valid: {e}") from e
