"""Static discovery documents: legacy APIGroupList/APIGroup/APIResourceList and aggregated v2/v2beta1."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from payloadtags.model import GROUP, GROUP_VERSION, KIND, RESOURCE, SHORT_NAMES, SINGULAR, VERBS, VERSION

_VERSION_REF = {"groupVersion": GROUP_VERSION, "version": VERSION}

API_GROUP: dict[str, Any] = {
    "kind": "APIGroup",
    "apiVersion": "v1",
    "name": GROUP,
    "versions": [_VERSION_REF],
    "preferredVersion": _VERSION_REF,
}

API_GROUP_LIST: dict[str, Any] = {
    "kind": "APIGroupList",
    "apiVersion": "v1",
    "groups": [{k: v for k, v in API_GROUP.items() if k not in ("kind", "apiVersion")}],
}

API_RESOURCE_LIST: dict[str, Any] = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": GROUP_VERSION,
    "resources": [
        {
            "name": RESOURCE,
            "singularName": SINGULAR,
            "namespaced": True,
            "kind": KIND,
            "verbs": list(VERBS),
            "shortNames": list(SHORT_NAMES),
        }
    ],
}

# kubectl pointed straight at this server asks for the core group too; it has no resources here.
API_VERSIONS: dict[str, Any] = {"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": []}


def aggregated(api_version: str, with_group: bool = True) -> dict[str, Any]:
    items = []
    if with_group:
        items.append(
            {
                "metadata": {"name": GROUP},
                "versions": [
                    {
                        "version": VERSION,
                        "freshness": "Current",
                        "resources": [
                            {
                                "resource": RESOURCE,
                                "singularResource": SINGULAR,
                                "scope": "Namespaced",
                                "responseKind": {"group": GROUP, "version": VERSION, "kind": KIND},
                                "verbs": list(VERBS),
                                "shortNames": list(SHORT_NAMES),
                                # No "categories": it has none, and upstream's field is omitempty.
                            }
                        ],
                    }
                ],
            }
        )
    return {"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items}


def aggregated_version(accept: str | None) -> str | None:
    """The apidiscovery version the client asked for first, if any (v2 preferred when both appear)."""
    if not accept:
        return None
    for entry in accept.split(","):
        params = {}
        main, *rest = (p.strip() for p in entry.split(";"))
        for param in rest:
            key, _, value = param.partition("=")
            params[key.strip()] = value.strip()
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            if params.get("v") in ("v2", "v2beta1") and main in ("application/json", "*/*"):
                return params["v"]
        elif main in ("application/json", "*/*", "application/*"):
            return None
    return None


def etag(body: Any) -> str:
    return '"' + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32] + '"'
