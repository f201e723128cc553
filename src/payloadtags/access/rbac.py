"""PayloadRepositoryAccess decisions from RBAC objects held in memory.

Roles, ClusterRoles, RoleBindings and ClusterRoleBindings arrive from list+watch reflectors; every
change bumps a generation, and the derived index and per-user matchers are rebuilt lazily, so a
decision costs dictionary lookups and, for a new path, one pass of a pattern set.

Semantics (docs/access.md, "How a decision is made"): a rule counts when its apiGroups hold ``*`` or the group
and its resources hold ``*`` or ``payloadrepositoryaccesses`` (case-insensitive); it allows a verb when
its verbs hold the verb or ``*``; an empty resourceNames covers every path of the namespace, otherwise
one of the patterns must match the path below the namespace. ClusterRoleBindings apply in every
namespace, RoleBindings in their own. ``system:masters`` is always allowed.
"""

from __future__ import annotations

import collections
import hashlib
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from payloadtags.access.authn import MASTERS, UserInfo
from payloadtags.access.authz import AuthorizationNotReady, path_matches
from payloadtags.access.patterns import PathPattern, PatternError
from payloadtags.jsontypes import JsonObject
from payloadtags.model import GROUP

log = Logger()

ACCESS_RESOURCE = "payloadrepositoryaccesses"
RBAC_GROUP = "rbac.authorization.k8s.io"
_MAX_MEMO = 65536
# Access decisions memoized in all, every meaning's memo together (`MemoBudget`): about 85 bytes a path,
# 190 with a 50-character made-up path only the memo holds, about 25 MiB then (docs/watch.md, "Bounds").
_MAX_MEMO_PATHS = 131072


@attrs.define(eq=False)
class MemoBudget:
    """The paths memoized by every matcher of an index, the oldest first, at most _MAX_MEMO_PATHS in
    all: a bound per memo was one per meaning, and with a Role per namespace (a multi-tenant cluster)
    any user's GETs of made-up names filled a memo in every namespace (review-watch4 F2: 200 namespaces,
    66 MiB). A path memoized is in its matcher's memo exactly while it is here: forgetting the oldest is
    O(1), a ``popleft`` and a dict delete. It holds its matchers weakly: one replaced by an RBAC edit
    goes with its memo as the last rule set using it does, its entries here skipped as they come
    (held strongly, every matcher that memoized a path stayed until 131,072 newer ones were: 167 MiB
    after 800 edits of a Role of 1,000 names, review-watch6 F2)."""

    _order: collections.deque[tuple[weakref.ref[PathMatcher], str]] = attrs.field(factory=collections.deque)

    def memoized(self, matcher: PathMatcher, path: str) -> None:
        """``path`` was just added to ``matcher``'s memo."""
        # One ref per matcher: CPython hands back the same one while it lives.
        self._order.append((weakref.ref(matcher), path))
        while len(self._order) > _MAX_MEMO_PATHS:
            ref, forgotten = self._order.popleft()
            oldest = ref()
            if oldest is not None:
                del oldest._memo[forgotten]

    def __len__(self) -> int:
        return len(self._order)


@attrs.frozen
class Rule:
    verbs: frozenset[str]
    patterns: tuple[PathPattern, ...] | None  # None: every path

    def allows_verb(self, verb: str) -> bool:
        return verb in self.verbs or "*" in self.verbs


@attrs.frozen
class Subject:
    kind: str
    name: str
    namespace: str


@attrs.frozen
class Binding:
    namespace: str  # "" for a ClusterRoleBinding
    subjects: tuple[Subject, ...]
    role_kind: str
    role_name: str

    def applies_to(self, user: UserInfo) -> bool:
        for subject in self.subjects:
            if subject.kind == "User" and subject.name == user.name:
                return True
            if subject.kind == "Group" and subject.name in user.groups:
                return True
            if subject.kind == "ServiceAccount":
                namespace = subject.namespace or self.namespace
                if user.name == f"system:serviceaccount:{namespace}:{subject.name}":
                    return True
        return False


@attrs.define(eq=False)
class PathMatcher:
    """Whether any of a user's rules for one verb in one namespace covers a path."""

    allow_all: bool
    patterns: tuple[PathPattern, ...]
    _literals: frozenset[str] = attrs.field(init=False)
    _globs: tuple[PathPattern, ...] = attrs.field(init=False)
    # Where the paths memoized are counted and forgotten, the oldest first, with those of the other
    # matchers of its index; None: nothing memoized.
    budget: MemoBudget | None = attrs.field(default=None, kw_only=True)
    # Its paths forgotten by the budget, never by a scan for the oldest here: a dict's first key, once
    # the oldest were deleted, is found past their empty slots, scanned on every eviction until it
    # resizes (10-150 us a new path on a full memo, against 2 for a decision made, memoized or not).
    _memo: dict[str, bool] = attrs.field(factory=dict, init=False)
    # What the rules mean, in 16 bytes: the patterns as a set (their order, that of the bindings in
    # the index, decides nothing; patterns match lowercased) and allow_all. Equal fingerprints decide
    # every path alike; a watch's resumes keep it rather than the matcher (`watch.rules`).
    fingerprint: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Literal paths are a set lookup; only real globs are run against the path.
        self._literals = frozenset(p.literal for p in self.patterns if p.literal is not None)
        self._globs = tuple(p for p in self.patterns if p.literal is None)
        sources = sorted({p.source.lower() for p in self.patterns})
        # Each length-prefixed: no two sets of sources share a text.
        canonical = "".join(["*" if self.allow_all else "-", *(f"{len(s)}:{s}" for s in sources)])
        self.fingerprint = hashlib.blake2b(canonical.encode(), digest_size=16).digest()

    def same_rules(self, other: PathMatcher) -> bool:
        return self.fingerprint == other.fingerprint

    def matches(self, path: str) -> bool:
        if self.allow_all:
            return True
        if not path or path.startswith("/"):
            return False
        known = self._memo.get(path)
        if known is None:
            known = path.lower() in self._literals or any(p.matches(path) for p in self._globs)
            if self.budget is not None:
                # The oldest first, of every meaning: those of repositories deleted since (CI churn) go
                # in time, where a full memo kept them and memoized nothing new.
                self._memo[path] = known
                self.budget.memoized(self, path)
        return known


_DENY = PathMatcher(False, ())
_ALLOW = PathMatcher(True, ())


def _lower_set(values: Any) -> frozenset[str]:
    return frozenset(str(v).lower() for v in values or () if isinstance(v, str))


def _verbs(rule: Mapping[str, Any]) -> frozenset[str]:
    # Exact, as Kubernetes RBAC compares verbs: "DELETE" in a rule does not allow delete.
    return frozenset(v for v in rule.get("verbs") or () if isinstance(v, str))


@attrs.define
class RbacIndex:
    """Fed by reflectors (``StoreListener``s built with ``listener()``); answers ``allowed``."""

    roles: dict[str, JsonObject] = attrs.field(factory=dict)
    cluster_roles: dict[str, JsonObject] = attrs.field(factory=dict)
    role_bindings: dict[str, JsonObject] = attrs.field(factory=dict)
    cluster_role_bindings: dict[str, JsonObject] = attrs.field(factory=dict)
    generation: int = 0
    _built: int = attrs.field(default=-1, init=False)
    _role_rules: dict[tuple[str, str], tuple[Rule, ...]] = attrs.field(factory=dict, init=False)
    _cluster_role_rules: dict[str, tuple[Rule, ...]] = attrs.field(factory=dict, init=False)
    _cluster_bindings: tuple[Binding, ...] = attrs.field(default=(), init=False)
    _namespace_bindings: dict[str, tuple[Binding, ...]] = attrs.field(factory=dict, init=False)
    # Per (user, groups, namespace, verb): the generation it was computed at and the matcher. A change
    # elsewhere in RBAC keeps a matcher (and the decisions it memoized) whose patterns did not change.
    # Least recently used first, evicted one at a time past _MAX_MEMO keys: cleared whole, every user
    # past the bound recomputed hers (a pass over the bindings) on most decisions.
    _matchers: collections.OrderedDict[tuple[Any, ...], tuple[int, PathMatcher]] = attrs.field(
        factory=collections.OrderedDict, init=False
    )
    # The matchers in use by what their rules mean (``fingerprint``), whatever the namespace: users, and
    # so their watches, with the same rules share one matcher and its memo of decisions (the same rules
    # decide a path alike in every namespace). Not one per namespace: any user may name namespaces (a
    # GET of a made-up name is decided before any read), and a memo each made the decisions kept grow
    # with them, up to _MAX_MEMO memos of _MAX_MEMO paths. Their paths are counted together (``memos``):
    # at most _MAX_MEMO_PATHS in all, however many distinct sets of rules RBAC objects make (a Role
    # per namespace); lists cycling through more make each decision again (a few microseconds: the
    # oldest is forgotten in O(1)).
    _shared: weakref.WeakValueDictionary[bytes, PathMatcher] = attrs.field(
        factory=weakref.WeakValueDictionary, init=False
    )
    # Every matcher's memo together: at most _MAX_MEMO_PATHS paths in all, whatever the meanings.
    memos: MemoBudget = attrs.field(factory=MemoBudget, init=False)
    # Compiled patterns by source, kept across rebuilds: one RBAC edit should not recompile them all.
    _compiled: dict[str, PathPattern | PatternError] = attrs.field(factory=dict, init=False)
    # The malformed patterns logged, by Role and pattern: those the last rebuild met (_warning: this
    # one), as _compiled keeps only the sources in use. Kept for good instead, whoever may write Roles
    # in a namespace would grow it by a key per malformed pattern written and deleted (r1access L3).
    _warned: set[str] = attrs.field(factory=set, init=False)
    _warning: set[str] = attrs.field(factory=set, init=False)
    _used: set[str] = attrs.field(factory=set, init=False)

    # -- feeding -----------------------------------------------------------------------------------

    def replace(self, kind: str, objects: Iterable[JsonObject]) -> None:
        store = self._store(kind)
        store.clear()
        for obj in objects:
            store[_key(obj)] = obj
        self.generation += 1

    def upsert(self, kind: str, obj: JsonObject) -> None:
        self._store(kind)[_key(obj)] = obj
        self.generation += 1

    def remove(self, kind: str, obj: JsonObject) -> None:
        self._store(kind).pop(_key(obj), None)
        self.generation += 1

    def _store(self, kind: str) -> dict[str, JsonObject]:
        return {
            "Role": self.roles,
            "ClusterRole": self.cluster_roles,
            "RoleBinding": self.role_bindings,
            "ClusterRoleBinding": self.cluster_role_bindings,
        }[kind]

    # -- deciding ----------------------------------------------------------------------------------

    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        if MASTERS in user.groups:
            return True
        return self.matcher(user, verb, namespace).matches(repository_path)

    def allowed_path(self, user: UserInfo, verb: str, path: str) -> bool:
        """A non-resource URL: nonResourceURLs rules of ClusterRoles bound by ClusterRoleBindings (the only
        place Kubernetes honours them)."""
        if MASTERS in user.groups:
            return True
        self._rebuild()
        for binding in self._cluster_bindings:
            if binding.role_kind != "ClusterRole" or not binding.applies_to(user):
                continue
            # A ClusterRole has no namespace: `cluster_roles` is keyed by its name (`_key`).
            role = self.cluster_roles.get(binding.role_name)
            for raw in (role or {}).get("rules") or ():
                if not isinstance(raw, Mapping):
                    continue
                verbs = _verbs(raw)
                if not ({"*", verb} & verbs):
                    continue
                urls = [u for u in raw.get("nonResourceURLs") or () if isinstance(u, str)]
                if any(path_matches(url, path) for url in urls):
                    return True
        return False

    def matcher(self, user: UserInfo, verb: str, namespace: str) -> PathMatcher:
        self._rebuild()
        key = (user.name, user.groups, namespace, verb)
        found = self._matchers.get(key)
        if found is not None and found[0] == self._built:
            self._matchers.move_to_end(key)
            return found[1]
        fresh = self._compute(user, verb, namespace)
        if found is not None and found[1].same_rules(fresh):
            fresh = found[1]
        else:
            fresh = self._shared.setdefault(fresh.fingerprint, fresh)
        self._matchers[key] = (self._built, fresh)
        self._matchers.move_to_end(key)
        if len(self._matchers) > _MAX_MEMO:
            self._matchers.popitem(last=False)
        return fresh

    def _compute(self, user: UserInfo, verb: str, namespace: str) -> PathMatcher:
        patterns: list[PathPattern] = []
        for binding in (*self._cluster_bindings, *self._namespace_bindings.get(namespace, ())):
            if not binding.applies_to(user):
                continue
            for rule in self._rules_of(binding):
                if not rule.allows_verb(verb):
                    continue
                if rule.patterns is None:
                    return PathMatcher(True, ())
                patterns.extend(rule.patterns)
        if not patterns:
            return _DENY
        unique = tuple({p.source: p for p in patterns}.values())
        return PathMatcher(False, unique, budget=self.memos)

    def _rules_of(self, binding: Binding) -> tuple[Rule, ...]:
        if binding.role_kind == "ClusterRole":
            return self._cluster_role_rules.get(binding.role_name, ())
        if binding.role_kind == "Role" and binding.namespace:
            return self._role_rules.get((binding.namespace, binding.role_name), ())
        return ()

    # -- the derived index -------------------------------------------------------------------------

    def _rebuild(self) -> None:
        if self._built == self.generation:
            return
        used: set[str] = set()
        self._used = used
        warning: set[str] = set()
        self._warning = warning
        self._cluster_role_rules = {
            _meta(obj).get("name", ""): self._compile_rules(obj) for obj in self.cluster_roles.values()
        }
        self._role_rules = {
            (_meta(obj).get("namespace", ""), _meta(obj).get("name", "")): self._compile_rules(obj)
            for obj in self.roles.values()
        }
        self._cluster_bindings = tuple(
            b for b in (_binding(obj, "") for obj in self.cluster_role_bindings.values()) if b is not None
        )
        by_namespace: dict[str, list[Binding]] = {}
        for obj in self.role_bindings.values():
            namespace = _meta(obj).get("namespace", "")
            binding = _binding(obj, namespace)
            if binding is not None and namespace:
                by_namespace.setdefault(namespace, []).append(binding)
        self._namespace_bindings = {ns: tuple(bs) for ns, bs in by_namespace.items()}
        self._compiled = {source: self._compiled[source] for source in used}
        self._warned = warning
        self._built = self.generation

    def _compile_rules(self, role: JsonObject) -> tuple[Rule, ...]:
        rules = []
        for raw in role.get("rules") or ():
            if not isinstance(raw, Mapping):
                continue
            groups, resources = _lower_set(raw.get("apiGroups")), _lower_set(raw.get("resources"))
            if not ({"*", GROUP} & groups and {"*", ACCESS_RESOURCE} & resources):
                continue
            names = [n for n in raw.get("resourceNames") or () if isinstance(n, str)]
            patterns: tuple[PathPattern, ...] | None = None
            if names:
                compiled = []
                for name in names:
                    pattern = self._pattern(name)
                    if isinstance(pattern, PatternError):
                        self._warn_once(role, name, pattern)
                    else:
                        compiled.append(pattern)
                patterns = tuple(compiled)
            rules.append(Rule(_verbs(raw), patterns))
        return tuple(rules)

    def _pattern(self, source: str) -> PathPattern | PatternError:
        self._used.add(source)
        known = self._compiled.get(source)
        if known is None:
            try:
                known = PathPattern.compile(source)
            except PatternError as error:
                known = error
            self._compiled[source] = known
        return known

    def _warn_once(self, role: JsonObject, pattern: str, error: Exception) -> None:
        meta = _meta(role)
        name = "/".join(part for part in (meta.get("namespace"), meta.get("name")) if part)
        where = f"{role.get('kind', 'Role')} {name}"
        key = f"{where}\x00{pattern}"
        if key in self._warning:
            return
        self._warning.add(key)
        if key not in self._warned:
            log.warn(
                "{where}: resourceNames pattern {pattern!r} is malformed and matches nothing: {error}",
                where=where,
                pattern=pattern,
                error=str(error),
            )


def _meta(obj: JsonObject) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: JsonObject) -> str:
    meta = _meta(obj)
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name', '')}" if namespace else str(meta.get("name", ""))


def _binding(obj: JsonObject, namespace: str) -> Binding | None:
    ref = obj.get("roleRef")
    if not isinstance(ref, Mapping) or ref.get("apiGroup", RBAC_GROUP) != RBAC_GROUP:
        return None
    subjects = []
    for raw in obj.get("subjects") or ():
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
            subjects.append(Subject(str(raw.get("kind", "")), raw["name"], str(raw.get("namespace") or "")))
    return Binding(namespace, tuple(subjects), str(ref.get("kind", "")), str(ref.get("name", "")))


@attrs.define
class RbacAuthorizer:
    """Decisions from the index, refused while the reflectors feeding it have not synced."""

    index: RbacIndex
    ready: Callable[[], bool]

    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        if MASTERS in user.groups:
            return True
        self._check_ready()
        return self.index.allowed(user, verb, namespace, repository_path)

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return self.rules(user, verb, namespace).allow_all

    def _check_ready(self) -> None:
        if not self.ready():
            raise AuthorizationNotReady(
                "PayloadRepositoryAccess rules are still loading from the cluster API; retry shortly"
            )

    def rules(self, user: UserInfo, verb: str, namespace: str) -> PathMatcher:
        """What ``allowed`` decides by for ``user``, ``verb`` and ``namespace``: a watch compares it
        (``same_rules``) when the rules change, and asks the old and the new about its repositories."""
        if MASTERS in user.groups:
            return _ALLOW
        self._check_ready()
        return self.index.matcher(user, verb, namespace)

    def allowed_path(self, user: UserInfo, verb: str, path: str) -> bool:
        if MASTERS in user.groups:
            return True
        if not self.ready():
            raise AuthorizationNotReady("RBAC rules are still loading from the cluster API; retry shortly")
        return self.index.allowed_path(user, verb, path)
