"""The namespace watch loop: which namespaces need their registry content removed, and which exist.

The list+watch itself is `payloadtags.kube.Reflector` (list, watch from the list's resourceVersion
with bookmarks, relist on 410, reconnect with capped jittered backoff, a timeout on every request).
This module turns its store changes into cleanup triggers and answers "does this namespace exist?"
from the synced store only.

A namespace deleted while the stream was cut, or while the API was down, is not missed: the watch
resumes from the last resourceVersion seen and gets its DELETED event, or, when that version is no
longer remembered (410), the relist's difference to the previous store reports it as deleted.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from payloadtags.jsontypes import JsonObject
from payloadtags.kube import Reflector, StoreListener
from payloadtags.names import is_namespace

NAMESPACES_PATH = "/api/v1/namespaces"


TERMINATING = "terminating"
DELETED = "deleted"


def is_terminating(obj: JsonObject | None) -> bool:
    return bool(obj is not None and (obj.get("metadata") or {}).get("deletionTimestamp"))


def _name(obj: JsonObject) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def uid_of(obj: JsonObject) -> str | None:
    """The object's uid: what tells a namespace created anew from the one deleted under its name."""
    uid = (obj.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


@attrs.define
class NamespaceTriggers(StoreListener):
    """Calls `trigger(namespace, why, uid)` for each namespace that starts terminating or disappears
    (`uid`: that namespace object's, so that a namespace created anew under the name is told apart)."""

    trigger: Callable[[str, str, str | None], None]

    def on_add(self, obj: JsonObject) -> None:
        # Seen for the first time already Terminating (the initial list, or a relist).
        if is_terminating(obj):
            self._fire(obj, TERMINATING)

    def on_update(self, old: JsonObject, new: JsonObject) -> None:
        # Only the transition: a Terminating namespace gets status updates that need no new cleanup.
        # Another uid is another namespace, seen for the first time: a relist (after a 410) reports a
        # namespace deleted and created anew under its name as an update of the old one.
        if is_terminating(new) and (not is_terminating(old) or uid_of(old) != uid_of(new)):
            self._fire(new, TERMINATING)

    def on_delete(self, obj: JsonObject) -> None:
        self._fire(obj, DELETED)

    def _fire(self, obj: JsonObject, why: str) -> None:
        name = _name(obj)
        if is_namespace(name):
            self.trigger(name, why, uid_of(obj))


class NamespaceView:
    """Answers from the reflector's store, and refuses to answer before the first complete list."""

    def __init__(self, reflector: Reflector) -> None:
        self._reflector = reflector

    @property
    def synced(self) -> bool:
        return self._reflector.has_synced

    def get(self, name: str) -> JsonObject | None:
        if not self._reflector.has_synced:
            raise RuntimeError("the namespace store is not synced yet")
        return self._reflector.get(name)

    def live(self, name: str) -> bool:
        """Exists and is not Terminating: its content must not be touched."""
        obj = self.get(name)
        return obj is not None and not is_terminating(obj)

    def snapshot(self) -> tuple[str | None, frozenset[str]]:
        """(resourceVersion, names): the store's consistent state at that version."""
        if not self._reflector.has_synced:
            raise RuntimeError("the namespace store is not synced yet")
        names = frozenset(_name(obj) for obj in self._reflector.items())
        return self._reflector.resource_version, names
