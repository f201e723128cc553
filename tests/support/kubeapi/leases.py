"""How kube-apiserver reads and checks a ``coordination.k8s.io/v1`` Lease's spec.

The spec is decoded into Go's typed LeaseSpec before anything else: each field is a pointer with
``omitempty``, so a ``null`` is dropped from what is stored and answered; renewTime and acquireTime
are MicroTime, parsed with the layout ``2006-01-02T15:04:05.000000Z07:00`` (exactly six fractional
digits, then ``Z`` or an offset), a value that does not parse failing the whole decode with 400
BadRequest. Then validation (pkg/apis/coordination/validation) answers 422 Invalid for a duration
that is not positive and a negative transition count.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from tests.support.kubeapi import statuses
from tests.support.kubeapi.resources import LEASES

Obj = dict[str, Any]

MICRO_TIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})")
_MICRO_TIMES = ("acquireTime", "renewTime")


def decoded(obj: Obj) -> Obj:
    """`obj` as the server stores it: null spec fields dropped; 400 for a MicroTime that does not
    parse. `obj` is changed in place and returned."""
    spec = obj.get("spec")
    spec = {k: v for k, v in spec.items() if v is not None} if isinstance(spec, dict) else {}
    for field in _MICRO_TIMES:
        value = spec.get(field)
        if value is not None and not _is_micro_time(value):
            raise statuses.bad_request(
                f'Lease in version "v1" cannot be handled as a Lease: parsing time {_quoted(value)} as '
                f'"{MICRO_TIME_LAYOUT}": cannot parse {_quoted(value)} as "{MICRO_TIME_LAYOUT}"'
            )
    obj["spec"] = spec
    return obj


def validate(obj: Obj) -> None:
    """422 Invalid for what ValidateLeaseSpec rejects among the fields the double knows."""
    name = (obj.get("metadata") or {}).get("name") or ""
    spec = obj["spec"]
    for field, lowest, wording in (
        ("leaseDurationSeconds", 1, "must be greater than 0"),
        ("leaseTransitions", 0, "must be greater than or equal to 0"),
    ):
        value = spec.get(field)
        if isinstance(value, int) and value < lowest:
            raise statuses.invalid(
                LEASES, name, f"spec.{field}", "FieldValueInvalid", f"Invalid value: {value}: {wording}"
            )


def _is_micro_time(value: object) -> bool:
    if not isinstance(value, str) or not _MICRO_TIME.fullmatch(value):
        return False
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:  # a month 13, an hour 25: Go's parser rejects them too
        return False
    return True


def _quoted(value: object) -> str:
    return '"' + str(value).replace('"', '\\"') + '"'
