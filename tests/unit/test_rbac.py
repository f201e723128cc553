"""PayloadRepositoryAccess decisions from in-memory RBAC objects.

See docs/access.md, "How a decision is made".
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import Logger

from payloadtags.access import rbac
from payloadtags.access.authn import UserInfo
from payloadtags.access.authz import AlwaysAllow, AuthorizationNotReady, readable_as_now
from payloadtags.access.rbac import RbacAuthorizer, RbacIndex
from payloadtags.metrics import CountingAuthorizer, Metrics
from tests.support.logcapture import Collect

GROUP = "payload-registry.deckhouse.io"
RESOURCE = "payloadrepositoryaccesses"
RBAC_V1 = "rbac.authorization.k8s.io/v1"

# --- RBAC objects shaped like the JSON the cluster API returns ------------------------------------


def rule(
    verbs: tuple[str, ...] = ("get",),
    names: list[str] | None = None,
    groups: tuple[str, ...] = (GROUP,),
    resources: tuple[str, ...] = (RESOURCE,),
) -> dict[str, Any]:
    out: dict[str, Any] = {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}
    if names is not None:
        out["resourceNames"] = names
    return out


def role(namespace: str, name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_V1,
        "kind": "Role",
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{namespace}-{name}"},
        "rules": list(rules),
    }


def cluster_role(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": RBAC_V1, "kind": "ClusterRole", "metadata": {"name": name}, "rules": list(rules)}


def role_ref(kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}


def role_binding(namespace: str, name: str, ref: dict[str, str], *subjects: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_V1,
        "kind": "RoleBinding",
        "metadata": {"namespace": namespace, "name": name},
        "roleRef": ref,
        "subjects": list(subjects),
    }


def cluster_role_binding(name: str, ref: dict[str, str], *subjects: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_V1,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": ref,
        "subjects": list(subjects),
    }


def user_subject(name: str) -> dict[str, str]:
    return {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}


def group_subject(name: str) -> dict[str, str]:
    return {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": name}


def sa_subject(name: str, namespace: str | None = None) -> dict[str, str]:
    out = {"kind": "ServiceAccount", "name": name}
    if namespace is not None:
        out["namespace"] = namespace
    return out


def person(name: str, *groups: str) -> UserInfo:
    return UserInfo(name=name, groups=(*groups, "system:authenticated"))


def service_account(namespace: str, name: str) -> UserInfo:
    return UserInfo(
        name=f"system:serviceaccount:{namespace}:{name}",
        groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


def index_of(*objects: dict[str, Any]) -> RbacIndex:
    index = RbacIndex()
    for obj in objects:
        index.upsert(obj["kind"], obj)
    return index


ALICE = person("alice")
BOB = person("bob")


# --- subjects and bindings ------------------------------------------------------------------------


def test_role_binding_to_user_applies_only_in_its_namespace() -> None:
    index = index_of(
        role("team-a", "reader", rule(names=["app/**"])),
        role("team-b", "reader", rule(names=["app/**"])),  # same name elsewhere, not bound there
        role_binding("team-a", "alice-reads", role_ref("Role", "reader"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "app/x")
    assert not index.allowed(ALICE, "get", "team-b", "app/x")
    assert not index.allowed(BOB, "get", "team-a", "app/x")
    assert not index.allowed(person("Alice"), "get", "team-a", "app/x")  # user names are case-sensitive


def test_cluster_role_binding_applies_in_every_namespace() -> None:
    index = index_of(
        cluster_role("all-paths", rule()),
        cluster_role_binding(
            "readers-everywhere", role_ref("ClusterRole", "all-paths"), group_subject("readers")
        ),
    )
    reader = person("carol", "readers")
    for namespace in ("team-a", "team-b", "kube-system"):
        assert index.allowed(reader, "get", namespace, "any/path")
    assert not index.allowed(BOB, "get", "team-a", "any/path")


def test_role_binding_to_cluster_role_applies_only_in_the_binding_namespace() -> None:
    index = index_of(
        cluster_role("app-reader", rule(names=["app"])),
        role_binding("team-a", "b", role_ref("ClusterRole", "app-reader"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "app")
    assert not index.allowed(ALICE, "get", "team-b", "app")


def test_cluster_role_binding_to_a_role_grants_nothing() -> None:
    index = index_of(
        role("team-a", "reader", rule()),
        cluster_role_binding("wrong", role_ref("Role", "reader"), user_subject("alice")),
    )
    assert not index.allowed(ALICE, "get", "team-a", "app")
    assert not index.allowed(ALICE, "get", "", "app")


def test_role_binding_refers_to_the_role_in_its_own_namespace() -> None:
    index = index_of(
        role("team-b", "reader", rule()),
        role_binding("team-a", "b", role_ref("Role", "reader"), user_subject("alice")),
    )
    assert not index.allowed(ALICE, "get", "team-a", "app")
    assert not index.allowed(ALICE, "get", "team-b", "app")


def test_binding_to_a_missing_role_grants_nothing() -> None:
    index = index_of(
        role_binding("team-a", "b1", role_ref("Role", "nope"), user_subject("alice")),
        role_binding("team-a", "b2", role_ref("ClusterRole", "nope"), user_subject("alice")),
        cluster_role_binding("b3", role_ref("ClusterRole", "nope"), user_subject("alice")),
    )
    assert not index.allowed(ALICE, "get", "team-a", "app")
    # The role appearing later takes effect at once.
    index.upsert("ClusterRole", cluster_role("nope", rule()))
    assert index.allowed(ALICE, "get", "team-b", "app")


def test_group_subjects() -> None:
    index = index_of(
        role("team-a", "reader", rule()),
        role_binding("team-a", "devs", role_ref("Role", "reader"), group_subject("devs")),
    )
    assert index.allowed(person("dave", "devs"), "get", "team-a", "app")
    assert not index.allowed(person("devs"), "get", "team-a", "app")  # a user named like the group
    assert not index.allowed(person("eve", "devs-2"), "get", "team-a", "app")


def test_decisions_follow_the_groups_of_each_request() -> None:
    # One user name seen with different groups (a token and a front-proxy identity, say): the cached
    # decision for one must not answer for the other.
    index = index_of(
        cluster_role("r", rule()),
        cluster_role_binding("b", role_ref("ClusterRole", "r"), group_subject("readers")),
    )
    assert not index.allowed(person("carol"), "get", "team-a", "app")
    assert index.allowed(person("carol", "readers"), "get", "team-a", "app")
    assert not index.allowed(person("carol"), "get", "team-a", "app")


def test_service_account_subject_namespace_defaults_to_the_role_binding_namespace() -> None:
    index = index_of(
        role("team-a", "reader", rule()),
        role_binding("team-a", "b", role_ref("Role", "reader"), sa_subject("builder")),
    )
    assert index.allowed(service_account("team-a", "builder"), "get", "team-a", "app")
    assert not index.allowed(service_account("other", "builder"), "get", "team-a", "app")
    assert not index.allowed(service_account("team-a", "deployer"), "get", "team-a", "app")
    assert not index.allowed(person("builder"), "get", "team-a", "app")


def test_service_account_subject_from_another_namespace() -> None:
    index = index_of(
        role("team-a", "reader", rule()),
        role_binding("team-a", "b", role_ref("Role", "reader"), sa_subject("builder", "ci")),
        cluster_role("deleter", rule(verbs=("delete",))),
        cluster_role_binding("ci-deletes", role_ref("ClusterRole", "deleter"), sa_subject("cleaner", "ci")),
    )
    assert index.allowed(service_account("ci", "builder"), "get", "team-a", "app")
    assert not index.allowed(service_account("team-a", "builder"), "get", "team-a", "app")
    assert not index.allowed(service_account("ci", "builder"), "get", "ci", "app")  # bound in team-a only
    for namespace in ("team-a", "team-b"):
        assert index.allowed(service_account("ci", "cleaner"), "delete", namespace, "app")
    assert not index.allowed(service_account("team-a", "cleaner"), "delete", "team-a", "app")


def test_service_account_groups() -> None:
    index = index_of(
        cluster_role("reader", rule()),
        role_binding(
            "team-a", "all-sas", role_ref("ClusterRole", "reader"), group_subject("system:serviceaccounts")
        ),
        role_binding(
            "team-b", "ci-sas", role_ref("ClusterRole", "reader"), group_subject("system:serviceaccounts:ci")
        ),
    )
    assert index.allowed(service_account("anywhere", "x"), "get", "team-a", "app")
    assert not index.allowed(BOB, "get", "team-a", "app")
    assert index.allowed(service_account("ci", "x"), "get", "team-b", "app")
    assert not index.allowed(service_account("team-b", "x"), "get", "team-b", "app")


def test_several_subjects_in_one_binding() -> None:
    index = index_of(
        role("team-a", "reader", rule()),
        role_binding(
            "team-a",
            "b",
            role_ref("Role", "reader"),
            user_subject("alice"),
            group_subject("ops"),
            sa_subject("bot"),
        ),
    )
    assert index.allowed(ALICE, "get", "team-a", "x")
    assert index.allowed(person("olga", "ops"), "get", "team-a", "x")
    assert index.allowed(service_account("team-a", "bot"), "get", "team-a", "x")
    assert not index.allowed(BOB, "get", "team-a", "x")


# --- which rules count ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_rule", "counts"),
    [
        (rule(), True),
        (rule(groups=("*",)), True),
        (rule(resources=("*",)), True),
        (rule(verbs=("*",)), True),
        (rule(groups=("*",), resources=("*",), verbs=("*",)), True),
        (rule(groups=("apps", GROUP)), True),
        (rule(resources=("pods", RESOURCE)), True),
        (rule(groups=("Payload-Registry.Deckhouse.IO",)), True),
        (rule(resources=("PayloadRepositoryAccesses",)), True),
        (rule(verbs=("list", "watch", "get")), True),
        (rule(groups=("",)), False),
        (rule(groups=("apps",)), False),
        (rule(groups=("payload-registry.deckhouse.io.evil",)), False),
        (rule(groups=()), False),
        (rule(resources=("pods",)), False),
        (rule(resources=("payloadrepositorytags",)), False),
        (rule(resources=("payloadrepositoryaccesses/status",)), False),
        (rule(resources=()), False),
        (rule(verbs=("list", "watch")), False),
        (rule(verbs=("create",)), False),
        # Verbs compare exactly, as Kubernetes RBAC compares them.
        (rule(verbs=("GET",)), False),
        (rule(verbs=("Get",)), False),
        (rule(verbs=(" get",)), False),
        (rule(verbs=()), False),
    ],
)
def test_which_rules_count(the_rule: dict[str, Any], counts: bool) -> None:
    index = index_of(
        cluster_role("r", the_rule),
        cluster_role_binding("b", role_ref("ClusterRole", "r"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "app/x") is counts


def test_rules_for_other_resources_do_not_widen_a_role() -> None:
    index = index_of(
        role(
            "team-a",
            "mixed",
            rule(groups=("",), resources=("pods",), verbs=("*",)),  # no resourceNames: would cover all
            rule(names=["app"]),
            {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
        ),
        role_binding("team-a", "b", role_ref("Role", "mixed"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "app")
    assert not index.allowed(ALICE, "get", "team-a", "other")


@pytest.mark.parametrize("names", [None, []])
def test_no_resource_names_cover_every_path_of_the_namespace(names: list[str] | None) -> None:
    index = index_of(
        role("team-a", "all", rule(names=names)),
        role_binding("team-a", "b", role_ref("Role", "all"), user_subject("alice")),
    )
    for path in ("a", "a/b/c", "Deep/Path/With-Case"):
        assert index.allowed(ALICE, "get", "team-a", path)
    assert not index.allowed(ALICE, "get", "team-b", "a")
    assert not index.allowed(ALICE, "delete", "team-a", "a")


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("team/**", "team", True),
        ("team/**", "team/a", True),
        ("team/**", "team/a/b", True),
        ("team/**", "teamx/a", False),
        ("app", "app", True),
        ("app", "app/x", False),
        ("app", "ap", False),
        ("*", "app", True),
        ("*", "team/app", False),
        ("**", "team/app", True),
        ("team**", "team-a", True),
        ("team**", "team/a", False),
        ("team*/**", "team-a/b/c", True),
        ("**/app", "app", True),
        ("**/app", "x/y/app", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("{web,api}/*", "api/v1", True),
        ("{web,api}/*", "db/v1", False),
        ("Team/*", "team/x", True),
        ("team/*", "Team/X", True),
        ("team/*", "team/x/y", False),
        ("/app", "app", False),
        ("app/v?", "app/v1", True),
        ("app/[a-c]", "app/b", True),
        ("app/[a-c]", "app/d", False),
    ],
)
def test_path_patterns(pattern: str, path: str, expected: bool) -> None:
    index = index_of(
        role("team-a", "r", rule(names=[pattern])),
        role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", path) is expected


def test_any_pattern_of_any_rule_of_any_binding_may_allow() -> None:
    index = index_of(
        role("team-a", "r1", rule(names=["one", "two/**"])),
        cluster_role("r2", rule(names=["three"])),
        role_binding("team-a", "b1", role_ref("Role", "r1"), user_subject("alice")),
        cluster_role_binding("b2", role_ref("ClusterRole", "r2"), group_subject("g")),
    )
    user = person("alice", "g")
    for path in ("one", "two", "two/x/y", "three"):
        assert index.allowed(user, "get", "team-a", path), path
    assert not index.allowed(user, "get", "team-a", "four")
    assert index.allowed(user, "get", "team-b", "three")
    assert not index.allowed(user, "get", "team-b", "one")


def test_an_empty_path_is_not_matched_by_patterns() -> None:
    index = index_of(
        role("team-a", "r", rule(names=["**", "*"])),
        role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "x")
    assert not index.allowed(ALICE, "get", "team-a", "")


def test_get_and_delete_are_separate_verbs() -> None:
    index = index_of(
        role(
            "team-a", "r", rule(verbs=("get",), names=["app/**"]), rule(verbs=("delete",), names=["app/old"])
        ),
        role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")),
        role("team-b", "deleter", rule(verbs=("delete",))),
        role_binding("team-b", "b", role_ref("Role", "deleter"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "app/new")
    assert not index.allowed(ALICE, "delete", "team-a", "app/new")
    assert index.allowed(ALICE, "delete", "team-a", "app/old")
    assert index.allowed(ALICE, "delete", "team-b", "anything")
    assert not index.allowed(ALICE, "get", "team-b", "anything")  # delete does not imply get


def test_a_verb_in_another_case_allows_nothing() -> None:
    index = index_of(
        role("team-a", "r", rule(verbs=("DELETE", "Get"))),
        role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")),
    )
    assert not index.allowed(ALICE, "delete", "team-a", "app/x")
    assert not index.allowed(ALICE, "get", "team-a", "app/x")


def test_system_masters_is_always_allowed() -> None:
    index = RbacIndex()
    admin = person("kubernetes-admin", "system:masters")
    assert index.allowed(admin, "get", "team-a", "app")
    assert index.allowed(admin, "delete", "any", "a/b/c")
    assert not index.allowed(person("kubernetes-admin"), "get", "team-a", "app")


# --- malformed patterns ---------------------------------------------------------------------------


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(rbac, "log", Logger(namespace="test.rbac", observer=Collect(events)))
    return events


def test_a_malformed_pattern_matches_nothing_and_is_logged_once(warnings: list[dict[str, Any]]) -> None:
    index = index_of(
        role("team-a", "mixed", rule(names=["app/[", "ok/**"])),
        role("team-a", "broken", rule(names=["{oops"])),
        role_binding("team-a", "b1", role_ref("Role", "mixed"), user_subject("alice")),
        role_binding("team-a", "b2", role_ref("Role", "broken"), user_subject("bob")),
    )
    for round_ in range(5):
        for user in (ALICE, BOB, person("alice", "other-group")):
            for path in ("app/[", "app/x", "{oops", "oops", "x", "ok/y"):
                index.allowed(user, "get", "team-a", path)
        # Edits rebuild the index; the warning must not come back.
        index.upsert("ClusterRole", cluster_role(f"unrelated-{round_}", rule()))
    assert index.allowed(ALICE, "get", "team-a", "ok/y")  # the good pattern next to it still works
    assert not index.allowed(ALICE, "get", "team-a", "app/[")
    assert not index.allowed(ALICE, "get", "team-a", "app/x")
    # A rule whose only pattern is malformed covers nothing, not everything.
    for path in ("{oops", "oops", "x", "a/b"):
        assert not index.allowed(BOB, "get", "team-a", path)

    logged = [e for e in warnings if e["log_level"].name == "warn"]
    assert sorted(e["pattern"] for e in logged) == ["app/[", "{oops"]
    assert len(warnings) == 2


def test_what_was_said_of_malformed_patterns_is_kept_only_while_a_role_holds_them(
    warnings: list[dict[str, Any]],
) -> None:
    """r1access L3: whoever may write Roles in a namespace wrote one key per malformed pattern into a
    set kept for the life of the process, the Role deleted or not. Only patterns still in a Role are
    remembered now: one still there is not said again on later rebuilds; one removed and written
    again is said again."""
    index = index_of(
        role("team-a", "kept", rule(names=["[kept"])),
        role_binding("team-a", "b", role_ref("Role", "kept"), user_subject("alice")),
    )
    index.allowed(ALICE, "get", "team-a", "app")
    for i in range(1000):
        churn = role("team-a", f"churn-{i}", rule(names=[f"[x{i}"]))
        index.upsert("Role", churn)
        index.allowed(ALICE, "get", "team-a", "app")  # a decision rebuilds the index
        index.remove("Role", churn)
        index.allowed(ALICE, "get", "team-a", "app")
    assert index.roles.keys() == {"team-a/kept"}
    assert len(index._warned) == 1  # was 1,001: one per Role ever written
    said = [e["pattern"] for e in warnings]
    assert said == ["[kept", *(f"[x{i}" for i in range(1000))]  # "[kept" once, not per rebuild

    index.upsert("Role", role("team-a", "churn-0", rule(names=["[x0"])))
    index.allowed(ALICE, "get", "team-a", "app")
    assert [e["pattern"] for e in warnings[1001:]] == ["[x0"]
    assert len(index._warned) == 2


# --- edits ----------------------------------------------------------------------------------------


def test_edits_change_decisions_immediately() -> None:
    index = index_of(
        role("team-a", "r", rule(names=["app"])),
        role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "app")
    assert not index.allowed(ALICE, "get", "team-a", "web")

    # A changed role (same key): the cached matcher for alice must not survive.
    index.upsert("Role", role("team-a", "r", rule(names=["web"])))
    assert not index.allowed(ALICE, "get", "team-a", "app")
    assert index.allowed(ALICE, "get", "team-a", "web")

    # A changed binding.
    index.upsert("RoleBinding", role_binding("team-a", "b", role_ref("Role", "r"), user_subject("bob")))
    assert not index.allowed(ALICE, "get", "team-a", "web")
    assert index.allowed(BOB, "get", "team-a", "web")

    # A removed binding.
    index.remove("RoleBinding", role_binding("team-a", "b", role_ref("Role", "r"), user_subject("bob")))
    assert not index.allowed(BOB, "get", "team-a", "web")

    # A re-list replaces everything of one kind.
    index.replace(
        "ClusterRoleBinding", [cluster_role_binding("c", role_ref("ClusterRole", "all"), user_subject("bob"))]
    )
    assert not index.allowed(BOB, "get", "team-a", "web")  # no such ClusterRole yet
    index.replace("ClusterRole", [cluster_role("all", rule(verbs=("*",)))])
    assert index.allowed(BOB, "delete", "team-z", "web")
    index.replace("ClusterRoleBinding", [])
    assert not index.allowed(BOB, "delete", "team-z", "web")

    # A removed role.
    index.upsert("RoleBinding", role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")))
    assert index.allowed(ALICE, "get", "team-a", "web")
    index.remove("Role", role("team-a", "r"))
    assert not index.allowed(ALICE, "get", "team-a", "web")


def test_objects_are_keyed_by_namespace_and_name() -> None:
    index = index_of(
        role("team-a", "r", rule()),
        role("team-b", "r", rule()),
        role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")),
        role_binding("team-b", "b", role_ref("Role", "r"), user_subject("alice")),
    )
    index.remove("Role", role("team-b", "r"))
    assert index.allowed(ALICE, "get", "team-a", "x")
    assert not index.allowed(ALICE, "get", "team-b", "x")
    index.remove("RoleBinding", role_binding("team-a", "b", role_ref("Role", "r")))
    assert not index.allowed(ALICE, "get", "team-a", "x")


def test_every_edit_bumps_the_generation() -> None:
    index = RbacIndex()
    seen = [index.generation]
    index.upsert("Role", role("a", "r", rule()))
    seen.append(index.generation)
    index.remove("Role", role("a", "r"))
    seen.append(index.generation)
    index.replace("Role", [])
    seen.append(index.generation)
    assert seen == sorted(set(seen))


# --- the authorizer -------------------------------------------------------------------------------


def alice_may_get_app() -> tuple[RbacIndex, list[bool], RbacAuthorizer]:
    """Alice may get `app` in team-a; the authorizer is ready once ``ready[0]`` is set."""
    index = index_of(
        role("team-a", "r", rule(names=["app"])),
        role_binding("team-a", "b", role_ref("Role", "r"), user_subject("alice")),
    )
    ready = [False]
    authorizer = RbacAuthorizer(index, lambda: ready[0])
    return index, ready, authorizer


def test_authorizer_refuses_until_ready_except_for_masters() -> None:
    _, ready, authorizer = alice_may_get_app()
    with pytest.raises(AuthorizationNotReady):
        authorizer.allowed(ALICE, "get", "team-a", "app")
    with pytest.raises(AuthorizationNotReady):
        authorizer.allowed(BOB, "get", "team-a", "app")
    assert authorizer.allowed(person("admin", "system:masters"), "delete", "team-a", "app")

    ready[0] = True
    assert authorizer.allowed(ALICE, "get", "team-a", "app")
    assert not authorizer.allowed(ALICE, "get", "team-a", "web")
    assert not authorizer.allowed(BOB, "get", "team-a", "app")
    assert not authorizer.allowed(ALICE, "delete", "team-a", "app")


def test_the_rules_a_decision_is_made_by_tell_a_change_that_matters_from_one_that_does_not() -> None:
    """What a watch compares when the rules change (watch/watcher.py, ``access_changed``)."""
    index, ready, authorizer = alice_may_get_app()
    with pytest.raises(AuthorizationNotReady):
        authorizer.rules(ALICE, "get", "team-a")
    assert authorizer.rules(person("admin", "system:masters"), "get", "team-a").matches("anything")
    ready[0] = True
    before = authorizer.rules(ALICE, "get", "team-a")
    assert before.matches("app") and not before.matches("secret")
    index.upsert("Role", role("team-a", "other", rule(names=["secret"])))  # bound to nobody
    assert authorizer.rules(ALICE, "get", "team-a").same_rules(before)
    index.upsert("Role", role("team-a", "r", rule(names=["app", "secret"])))
    after = authorizer.rules(ALICE, "get", "team-a")
    assert not after.same_rules(before) and after.matches("secret") and not before.matches("secret")


# --- keeping work across unrelated edits ------------------------------------------------------------


def test_an_unrelated_edit_keeps_the_matcher_and_a_relevant_one_replaces_it() -> None:
    index = index_of(
        role("team-a", "reader", rule(names=["app/**", "lib"])),
        role_binding("team-a", "alice-reads", role_ref("Role", "reader"), user_subject("alice")),
    )
    before = index.matcher(ALICE, "get", "team-a")
    assert before.matches("app/x") and before.matches("LIB") and not before.matches("other")
    index.upsert(
        "RoleBinding", role_binding("team-b", "bob-reads", role_ref("Role", "reader"), user_subject("bob"))
    )
    assert index.matcher(ALICE, "get", "team-a") is before  # same rules: memoized decisions stay
    index.upsert("Role", role("team-a", "reader", rule(names=["other"])))
    after = index.matcher(ALICE, "get", "team-a")
    assert after is not before
    assert after.matches("other") and not after.matches("app/x") and not after.matches("lib")


def test_compiled_patterns_are_reused_across_rebuilds_and_dropped_when_unused(monkeypatch) -> None:
    compiled: list[str] = []
    real = rbac.PathPattern.compile

    def counting(source: str):
        compiled.append(source)
        return real(source)

    monkeypatch.setattr(rbac.PathPattern, "compile", staticmethod(counting))
    index = index_of(
        role("team-a", "reader", rule(names=["app/**"])),
        role_binding("team-a", "alice-reads", role_ref("Role", "reader"), user_subject("alice")),
    )
    assert index.allowed(ALICE, "get", "team-a", "app/x")
    index.upsert("RoleBinding", role_binding("team-b", "x", role_ref("Role", "reader"), user_subject("bob")))
    assert index.allowed(ALICE, "get", "team-a", "app/y")
    assert compiled == ["app/**"]  # compiled once, not again after the unrelated edit
    index.upsert("Role", role("team-a", "reader", rule(names=["lib/*"])))
    assert index.allowed(ALICE, "get", "team-a", "lib/x")
    index.upsert("Role", role("team-a", "reader", rule(names=["app/**"])))
    assert index.allowed(ALICE, "get", "team-a", "app/x")
    assert compiled == ["app/**", "lib/*", "app/**"]  # dropped while unused, compiled again when back


def test_non_resource_urls_count_only_through_cluster_role_bindings() -> None:
    from payloadtags.access.authn import UserInfo
    from payloadtags.access.rbac import RbacIndex

    index = RbacIndex()
    rules = [{"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]}]
    index.replace("ClusterRole", [{"metadata": {"name": "reader"}, "rules": rules}])
    index.replace("Role", [{"metadata": {"name": "reader", "namespace": "ns"}, "rules": rules}])
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"}
    index.replace(
        "ClusterRoleBinding",
        [{"metadata": {"name": "b"}, "roleRef": ref, "subjects": [{"kind": "Group", "name": "monitoring"}]}],
    )
    index.replace(
        "RoleBinding",
        [
            {
                "metadata": {"name": "b", "namespace": "ns"},
                "roleRef": ref,
                "subjects": [{"kind": "User", "name": "local"}],
            }
        ],
    )
    scraper = UserInfo(name="prom", groups=("monitoring",))
    assert index.allowed_path(scraper, "get", "/metrics")
    assert index.allowed_path(scraper, "get", "/debug/pprof")
    assert not index.allowed_path(scraper, "get", "/metricsx")
    assert not index.allowed_path(scraper, "delete", "/metrics")
    assert not index.allowed_path(UserInfo(name="local"), "get", "/metrics")
    assert index.allowed_path(UserInfo(name="root", groups=("system:masters",)), "get", "/anything")
    # Verbs compare exactly here too.
    index.replace(
        "ClusterRole",
        [{"metadata": {"name": "reader"}, "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["GET"]}]}],
    )
    assert not index.allowed_path(scraper, "get", "/metrics")


@pytest.mark.parametrize(
    ("urls", "allowed", "refused"),
    [
        (["/healthz/**"], ["/healthz/ping", "/healthz/", "/healthz/**"], ["/healthz", "/metrics"]),
        (["**"], ["/metrics", "/healthz/ping", "/"], []),
        (["/readyz*"], ["/readyz", "/readyz/ping", "/readyzx"], ["/healthz"]),
        (["/readyz/*x"], ["/readyz/*x"], ["/readyz/ax", "/readyz/x"]),  # no '*' inside: exact only
    ],
)
def test_non_resource_urls_lose_every_trailing_star_as_in_kube_apiserver(
    urls: list[str], allowed: list[str], refused: list[str]
) -> None:
    # Review r10cfg L2: RBAC's NonResourceURLMatches trims every trailing '*' (strings.TrimRight), and
    # RBAC's validation accepts `/healthz/**` and `**`; they opened nothing here.
    from payloadtags.access.authn import UserInfo
    from payloadtags.access.rbac import RbacIndex

    index = RbacIndex()
    index.replace(
        "ClusterRole", [{"metadata": {"name": "r"}, "rules": [{"nonResourceURLs": urls, "verbs": ["get"]}]}]
    )
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "r"}
    index.replace(
        "ClusterRoleBinding",
        [{"metadata": {"name": "b"}, "roleRef": ref, "subjects": [{"kind": "User", "name": "u"}]}],
    )
    user = UserInfo(name="u")
    assert {path: index.allowed_path(user, "get", path) for path in allowed + refused} == {
        **dict.fromkeys(allowed, True),
        **dict.fromkeys(refused, False),
    }


def test_readable_as_now_keeps_the_decisions_of_the_rules_it_was_taken_from() -> None:
    """A deletecollection's view of what its caller may see is taken as it begins: a rule edited
    during the call changes none of its decisions (review-ds6 F1), from the RBAC rules or, for
    another authorizer, each path as first asked."""
    index, ready, authorizer = alice_may_get_app()
    ready[0] = True
    as_now = readable_as_now(authorizer, ALICE, "team-a")
    index.remove("Role", role("team-a", "r"))
    assert not authorizer.allowed(ALICE, "get", "team-a", "app")
    assert as_now("app") and as_now("App") and not as_now("web")

    revoked: list[bool] = []

    class Revoking(AlwaysAllow):
        def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
            return not revoked

    asked_first = readable_as_now(Revoking(), ALICE, "team-a")
    assert asked_first("app")
    revoked.append(True)
    assert asked_first("app") and not asked_first("web")


def test_readable_as_now_takes_the_rules_through_the_servers_counting_authorizer() -> None:
    """The server counts its decisions (CountingAuthorizer around RbacAuthorizer): the rules are taken
    from the one it wraps, where a path first asked after an edit followed the new rules (review-ds8 3)."""
    index, ready, authorizer = alice_may_get_app()
    ready[0] = True
    as_now = readable_as_now(CountingAuthorizer(authorizer, Metrics()), ALICE, "team-a")
    index.remove("Role", role("team-a", "r"))
    assert as_now("app") and not as_now("web")
