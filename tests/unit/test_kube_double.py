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


def test_short_and_empty_pages_carry_a_continue_token_to_the_rest(store: ObjectStore) -> None:
    """r1double N8: kube-apiserver may serve fewer items than the limit, even none, with a token."""
    for name in "abcd":
        store.create(CONFIGMAPS, cm(name))
    names: list[list[str]] = []
    token = None
    for serve in (1, 0, 0, 2, 3):
        page = store.list(CONFIGMAPS, limit=3, continue_token=token, serve=serve)
        names.append([o["metadata"]["name"] for o in page.items])
        token = page.continue_token
        if token is None:
            break
        assert page.remaining == 4 - sum(map(len, names))
    assert names == [["a"], [], [], ["b", "c"], ["d"]]
    # The last page holds what is left: no token, even when fewer than the limit were asked for.
    last = store.list(CONFIGMAPS, limit=2, serve=0)
    assert (last.items, last.continue_token is not None) == ([], True)
    empty = store.list(CONFIGMAPS, "nowhere", limit=2, serve=0)
    assert (empty.items, empty.continue_token) == ([], None)


def test_an_expired_continue_carries_a_token_for_the_rest_at_the_latest_version(store: ObjectStore) -> None:
    """r1double N8: etcd3's store answers a compacted continue with 410 and a fresh token that goes on
    from the same key, inconsistently, at the latest resourceVersion."""
    for name in "abc":
        store.create(CONFIGMAPS, cm(name))
    first = store.list(CONFIGMAPS, limit=1)
    store.create(CONFIGMAPS, cm("d"))
    store.delete(CONFIGMAPS, "b", "default")
    store.compact()
    expired = error(store.list, CONFIGMAPS, limit=1, continue_token=first.continue_token)
    assert (expired.code, expired.reason) == (410, "Expired")
    assert "use the continue token in this response" in expired.status["message"]
    rest = store.list(CONFIGMAPS, limit=5, continue_token=expired.status["metadata"]["continue"])
    assert [o["metadata"]["name"] for o in rest.items] == ["c", "d"]
    assert rest.resource_version == store.resource_version and rest.continue_token is None


def lease(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "l", "namespace": "default"}, "spec": spec}


STAMP = "2026-12-07T21:00:00.123456Z"


def test_lease_times_must_be_micro_time(store: ObjectStore) -> None:
    """r1double N5: a Lease's renewTime and acquireTime are MicroTime, which the API server decodes
    with exactly six fractional digits: anything else is 400 before validation."""
    for bad in ("2026-12-07T21:00:00Z", "2026-12-07T21:00:00.123Z", "2026-12-07T21:00:00.1234567Z", 5):
        for field in ("renewTime", "acquireTime"):
            rejected = error(store.create, LEASES, lease(**{field: bad}))
            assert (rejected.code, rejected.reason) == (400, "BadRequest"), bad
            assert rejected.status["message"].startswith(
                'Lease in version "v1" cannot be handled as a Lease: '
            )
    assert error(store.create, LEASES, lease(renewTime="2026-13-07T21:00:00.123456Z")).code == 400
    created = store.create(LEASES, lease(renewTime=STAMP, acquireTime="2026-12-07T22:00:00.000000+01:00"))
    stale = dict(created, spec={"renewTime": "2026-12-07T21:00:01Z"})
    assert error(store.update, LEASES, stale, "l", "default").code == 400
    assert store.get(LEASES, "l", "default")["spec"]["renewTime"] == STAMP


def test_lease_validation_and_null_fields(store: ObjectStore) -> None:
    """r1double N5: a negative leaseTransitions or a duration that is not positive is 422 Invalid;
    null spec fields are dropped, as Go's typed LeaseSpec drops them, an empty holder kept."""
    for field, value, wording in (
        ("leaseTransitions", -1, "must be greater than or equal to 0"),
        ("leaseDurationSeconds", 0, "must be greater than 0"),
    ):
        rejected = error(store.create, LEASES, lease(**{field: value}))
        assert (rejected.code, rejected.reason) == (422, "Invalid")
        assert rejected.status["message"] == (
            f'Lease.coordination.k8s.io "l" is invalid: spec.{field}: Invalid value: {value}: {wording}'
        )
        assert rejected.status["details"]["causes"][0]["field"] == f"spec.{field}"
    created = store.create(
        LEASES,
        lease(
            holderIdentity="", leaseDurationSeconds=1, acquireTime=None, renewTime=STAMP, leaseTransitions=0
        ),
    )
    assert created["spec"] == {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "renewTime": STAMP,
        "leaseTransitions": 0,
    }
    updated = store.update(
        LEASES, dict(created, spec={"holderIdentity": None, "leaseTransitions": 2}), "l", "default"
    )
    assert updated["spec"] == {"leaseTransitions": 2}
    assert (
        error(store.update, LEASES, dict(updated, spec={"leaseTransitions": -2}), "l", "default").code == 422
    )
    assert store.create(LEASES, {"metadata": {"name": "bare"}})["spec"] == {}


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
        ("MODIFIED", "namespaces", "kube-public"),
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


def test_finalizing_a_namespace_writes_its_conditions_and_finalizers_before_it_goes() -> None:
    """r1double N7: between Terminating and DELETED, the namespace controller writes the deletion
    conditions into the status, then removes the ``kubernetes`` finalizer: two MODIFIED events."""
    store = ObjectStore(Clock())
    store.create(NAMESPACES, {"metadata": {"name": "t"}})
    store.create(CONFIGMAPS, cm("a", "t"))
    store.delete(NAMESPACES, "t")
    seen: list[Event] = []
    store.subscribe(seen.append)
    store.finalize_namespace("t")
    assert [(e.type, e.resource.plural) for e in seen] == [
        ("DELETED", "configmaps"),
        ("MODIFIED", "namespaces"),
        ("MODIFIED", "namespaces"),
        ("DELETED", "namespaces"),
    ]
    conditions, finalized, deleted = (e.obj for e in seen[1:])
    assert conditions["spec"] == {"finalizers": ["kubernetes"]}
    assert conditions["status"]["phase"] == "Terminating"
    assert [(c["type"], c["status"]) for c in conditions["status"]["conditions"]] == [
        ("NamespaceDeletionDiscoveryFailure", "False"),
        ("NamespaceDeletionGroupVersionParsingFailure", "False"),
        ("NamespaceDeletionContentFailure", "False"),
        ("NamespaceContentRemaining", "False"),
        ("NamespaceFinalizersRemaining", "False"),
    ]
    assert finalized["spec"] == {} and finalized["status"] == conditions["status"]
    assert deleted["spec"] == {} and deleted["metadata"]["deletionTimestamp"]
    assert [int(e.obj["metadata"]["resourceVersion"]) for e in seen] == [e.rv for e in seen]


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
