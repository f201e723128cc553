"""The one name for a decoded JSON object (Kubernetes objects, registry documents, schemas).

Values stay `Any`: the shapes are checked where they are read (attrs classes through cattrs in
`payloadtags.model`, explicit checks in the reflectors and the RBAC index), not by the type checker.
"""

from __future__ import annotations

from typing import Any, TypeAlias

JsonObject: TypeAlias = dict[str, Any]

__all__ = ["JsonObject"]
