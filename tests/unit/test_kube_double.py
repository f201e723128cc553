"""The Kubernetes API test double's own state machine, used directly (no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.support.kubeapi import ApiError, Event, ObjectStore
from tests.support.kubeapi.resources import CONFIGMAPS, LEASES, NAMESPACES, ROLES
from tests.support.kubeapi.selectors import FieldSelector, LabelSelector, SelectorError


def cm(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}}


@pytest.fixture
def store() -> ObjectStore:
    return ObjectStore(Clock(), history_limit=5)


def error(fn: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    return info.value


def test_initial_namespaces_and_server_owned_fields(store: ObjectStore) -> None:
    names = [n["metadata"]["name"] for n in store.list(NAMESPACES).items]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    created = store.create(
        CONFIGMAPS, {**cm("a"), "metadata": {"name": "a", "uid": "mine", "resourceVersion": "7"}}
    )
    assert created["metadata"]["uid"] != "mine"
    assert created["metadata"]["resourceVersion"] == str(store.resource_version) == "5"
    assert created["metadata"]["creationTimestamp"] == "1970-01-01T00:00:00Z"
    assert created["metadata"]["namespace"] == "default"


def test_a_no_op_update_keeps_the_resource_version(store: ObjectStore) -> None:
    created = store.create(CONFIGMAPS, cm("a"))
    again = store.update(CONFIGMAPS, created)
    assert again == created and store.resource_version == 5
    assert store.patch(CONFIGMAPS, "a", {"metadata": {"labels": {}}}, "default") == created


def test_merge_patch_with_a_stale_resource_version_conflicts(store: ObjectStore) -> None:
    created = store.create(CONFIGMAPS, cm("a"))
    store.patch(CONFIGMAPS, "a", {"data": {"k": "v"}}, "default")
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "data": {"k": "w"}}
    assert error(store.patch, CONFIGMAPS, "a", stale, "default").reason == "Conflict"


def test_generate_name_and_name_rules(store: ObjectStore) -> None:
    made = store.create(CONFIGMAPS, {"metadata": {"generateName": "gen-", "namespace": "default"}})
    assert made["metadata"]["name"].startswith("gen-") and len(made["metadata"]["name"]) == 9
    assert error(store.create, CONFIGMAPS, {"metadata": {"namespace": "default"}}).code == 422
    assert error(store.create, NAMESPACES, {"metadata": {"name": "a.b"}}).code == 422  # labels only
    store.create(ROLES, {"metadata": {"name": "system:leader-locking", "namespace": "default"}})
    assert error(store.create, ROLES, {"metadata": {"name": "a/b", "namespace": "default"}}).code == 422
    assert error(store.create, LEASES, {"kind": "ConfigMap", "metadata": {"name": "x"}}).code == 400


def test_history_overflow_makes_old_versions_expire(store: ObjectStore) -> None:
    start = store.resource_version
    for i in range(4):
        store.create(CONFIGMAPS, cm(f"c{i}"))
    assert [e.obj["metadata"]["name"] for e in store.events_since(CONFIGMAPS, start)] == [
        "c0",
        "c1",
        "c2",
        "c3",
    ]
    store.create(CONFIGMAPS, cm("c4"))
    store.create(CONFIGMAPS, cm("c5"))
    assert store.compacted_rv == start + 1
    too_old = error(store.events_since, CONFIGMAPS, start)
    assert too_old.status["message"] == f"too old resource version: {start} ({start + 1})"
    assert len(store.events_since(CONFIGMAPS, start + 1)) == 5


def test_exact_lists_roll_back_through_history(store: ObjectStore) -> None:
    store.create(CONFIGMAPS, cm("a"))
    store.create(CONFIGMAPS, cm("b"))
    then = store.resource_version
    store.patch(CONFIGMAPS, "a", {"data": {"x": "1"}}, "default")
    store.delete(CONFIGMAPS, "b", "default")
    store.create(CONFIGMAPS, cm("c"))
    past = store.list(CONFIGMAPS, "default", exact_rv=then)
    assert [(o["metadata"]["name"], o.get("data")) for o in past.items] == [("a", None), ("b", None)]
    assert past.resource_version == then


def test_pagination_is_a_consistent_snapshot(store: ObjectStore) -> None:
    for name in "abcd":
        store.create(CONFIGMAPS, cm(name))
    first = store.list(CONFIGMAPS, limit=3)
    assert first.remaining == 1 and first.continue_token
    store.create(CONFIGMAPS, cm("e"))
    store.delete(CONFIGMAPS, "d", "default")
    rest = store.list(CONFIGMAPS, limit=3, continue_token=first.continue_token)
    assert [o["metadata"]["name"] for o in rest.items] == ["d"] and rest.continue_token is None
    assert error(store.list, CONFIGMAPS, continue_token="garbage").code == 400


def test_subscribers_see_each_change_once(store: ObjectStore) -> None:
    seen: list[Event] = []
    unsubscribe = store.subscribe(seen.append)
    store.create(CONFIGMAPS, cm("a"))
    store.delete(NAMESPACES, "kube-public")
    store.finalize_namespace("kube-public")
    unsubscribe()
    store.create(CONFIGMAPS, cm("b"))
    assert [(e.type, e.resource.plural, e.obj["metadata"]["name"]) for e in seen] == [
        ("ADDED", "configmaps", "a"),
        ("MODIFIED", "namespaces", "kube-public"),
        ("DELETED", "namespaces", "kube-public"),
    ]
    assert seen[-1].obj["metadata"]["resourceVersion"] == str(seen[-1].rv)


def test_finalizing_a_namespace_deletes_its_content(store: ObjectStore) -> None:
    store.create(NAMESPACES, {"metadata": {"name": "t"}})
    store.create(CONFIGMAPS, cm("a", "t"))
    store.create(ROLES, {"metadata": {"name": "r", "namespace": "t"}})
    store.create(CONFIGMAPS, cm("a"))
    store.delete(NAMESPACES, "t")
    store.finalize_namespace("t")
    assert store.list(CONFIGMAPS, "t").items == [] and store.list(ROLES).items == []
    assert [o["metadata"]["namespace"] for o in store.list(CONFIGMAPS).items] == ["default"]
    assert not store.exists(NAMESPACES, "t")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a in (x, y),b", {"a": "y", "b": "1"}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("example.com/role=db", {"example.com/role": "db"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", ["a=b=c", "a in (x", "a in ()", "=b", "a > 1"])
def test_bad_label_selectors(selector: str) -> None:
    with pytest.raises(SelectorError):
        LabelSelector.parse(selector)


def test_field_selectors() -> None:
    obj = {"metadata": {"name": "n", "namespace": "ns"}}
    assert FieldSelector.parse("metadata.name=n,metadata.namespace==ns").matches(obj)
    assert not FieldSelector.parse("metadata.name!=n").matches(obj)
    with pytest.raises(SelectorError, match="not a known field selector"):
        FieldSelector.parse("status.phase=Active")
