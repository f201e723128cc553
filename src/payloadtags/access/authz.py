"""What a caller may do: decisions on repository paths (PayloadRepositoryAccess)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from payloadtags.access.authn import UserInfo


class AuthorizationNotReady(Exception):
    """The access rules are not loaded yet (start-up); the request may be retried shortly."""


class Authorizer(Protocol):
    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        """``verb`` is ``get`` (list and get) or ``delete`` (delete and deletecollection)."""
        ...

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        """Whether ``verb`` is allowed on every repository path of ``namespace``, those that do not
        exist yet included (a rule without path patterns)."""
        ...


@attrs.frozen
class Readable:
    """Whether ``user`` may see the tags of (namespace, repository path): ``get`` as ``authorizer``
    decides it. A watch keeps it, and asks by ``user`` which rules decided, to tell whether a change
    of the access rules changes what its client may see."""

    authorizer: Authorizer
    user: UserInfo

    def __call__(self, namespace: str, repository_path: str) -> bool:
        return self.authorizer.allowed(self.user, "get", namespace, repository_path)


class PathRules(Protocol):
    def matches(self, path: str) -> bool:
        """Whether the rules allow ``path``, as they stood when they were taken."""
        ...


@runtime_checkable
class RuleSource(Protocol):
    """An authorizer that gives the rules it decides by (`RbacAuthorizer.rules`): one kept decides as
    they stood when it was taken, whatever changes after."""

    def rules(self, user: UserInfo, verb: str, namespace: str) -> PathRules: ...


@runtime_checkable
class Wrapping(Protocol):
    """An authorizer that decides as another does (`metrics.CountingAuthorizer`, which counts)."""

    inner: Authorizer


def readable_as_now(authorizer: Authorizer, user: UserInfo, namespace: str) -> Callable[[str], bool]:
    """Whether ``user`` may see the tags of a repository path of ``namespace``, as the rules stand now:
    a change of them afterwards changes no decision, as kube-apiserver authorizes a request once, at
    its start. From the rules themselves where ``authorizer`` (or the one it wraps: the server counts
    its decisions) gives them; else each path as first asked, kept (those a caller needs should be
    asked at once)."""
    source: object = authorizer
    while not isinstance(source, RuleSource) and isinstance(source, Wrapping):
        source = source.inner
    if isinstance(source, RuleSource):
        return source.rules(user, "get", namespace).matches
    readable = Readable(authorizer, user)
    decided: dict[str, bool] = {}

    def decide(path: str) -> bool:
        known = decided.get(path)
        if known is None:
            known = decided[path] = readable(namespace, path)
        return known

    return decide


class PathAuthorizer(Protocol):
    def allowed_path(self, user: UserInfo, verb: str, path: str) -> bool:
        """A non-resource URL such as ``/metrics``, as RBAC's ``nonResourceURLs`` rules decide it."""
        ...


@attrs.frozen
class AlwaysAllow:
    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        return True

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return True

    def allowed_path(self, user: UserInfo, verb: str, path: str) -> bool:
        return True


def path_matches(pattern: str, path: str) -> bool:
    """RBAC's nonResourceURLs (and --authorization-always-allow-paths) matching: exact, or a prefix
    ending in ``*``. Every trailing ``*`` goes, as RBAC's NonResourceURLMatches trims them (review r10cfg
    L2: `/healthz/**` and `**`, which RBAC's validation accepts, opened nothing); the start refuses an
    always-allow entry with more than one, as k8s.io/apiserver's path authorizer does."""
    if pattern == path:
        return True
    return pattern.endswith("*") and path.startswith(pattern.rstrip("*"))
