"""The resources the Kubernetes API test double serves."""

from __future__ import annotations

import re

import attrs

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

CRUD = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})


def _label_error(name: str) -> str | None:
    if len(name) <= 63 and _DNS_LABEL.match(name):
        return None
    return (
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
        "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
        "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    )


def _subdomain_error(name: str) -> str | None:
    if len(name) <= 253 and _DNS_SUBDOMAIN.match(name):
        return None
    return (
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
        "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
        "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )


def _path_segment_error(name: str) -> str | None:
    # RBAC objects only need to be usable as a URL path segment (system:… names contain colons).
    if name in (".", "..") or "/" in name or "%" in name:
        return "may not be '.' or '..' and may not contain '/' or '%'"
    return None


@attrs.frozen
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: frozenset[str] = CRUD
    name_rule: str = "subdomain"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How error messages name the resource: ``configmaps``, ``roles.rbac.authorization.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def name_error(self, name: str) -> str | None:
        if self.name_rule == "label":
            return _label_error(name)
        if self.name_rule == "path":
            return _path_segment_error(name)
        return _subdomain_error(name)


NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, name_rule="label")
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True)
RBAC = "rbac.authorization.k8s.io"
ROLES = ResourceType(RBAC, "v1", "roles", "Role", namespaced=True, name_rule="path")
ROLEBINDINGS = ResourceType(RBAC, "v1", "rolebindings", "RoleBinding", namespaced=True, name_rule="path")
CLUSTERROLES = ResourceType(RBAC, "v1", "clusterroles", "ClusterRole", namespaced=False, name_rule="path")
CLUSTERROLEBINDINGS = ResourceType(
    RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False, name_rule="path"
)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
TOKENREVIEWS = ResourceType(
    "authentication.k8s.io",
    "v1",
    "tokenreviews",
    "TokenReview",
    namespaced=False,
    verbs=frozenset({"create"}),
)

STORED = (NAMESPACES, CONFIGMAPS, ROLES, ROLEBINDINGS, CLUSTERROLES, CLUSTERROLEBINDINGS, LEASES)
ALL = (*STORED, TOKENREVIEWS)

_BY_PATH = {(r.group, r.version, r.plural): r for r in ALL}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))
