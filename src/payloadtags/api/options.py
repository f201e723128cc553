"""ListOptions and DeleteOptions from the query string and body, validated as kube-apiserver does."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from payloadtags.api.errors import (
    bad_request,
    invalid,
    invalid_field,
    method_not_allowed,
    unsupported_media_type,
)
from payloadtags.api.selectors import FieldSelector, LabelSelector, parse_field_selector, parse_label_selector
from payloadtags.validators import bounded_decimal
from payloadtags.watch import parse_version

Query = Mapping[str, list[str]]

INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


def first(query: Query, key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


# The only runes outside ASCII that Unicode simple case folding (Go's strings.EqualFold) puts with an
# ASCII letter: the long s and the Kelvin sign.
_ASCII_FOLDS = str.maketrans({"\u017f": "s", "\u212a": "k"})


def _equal_fold(value: str, ascii_word: str) -> bool:
    """Go's strings.EqualFold against a word of ASCII letters: rune by rune, each in the word's
    letter's simple case-folding orbit. Not lower() (which keeps U+017F) nor casefold() (whose full
    folding also turns one rune into several)."""
    folded = value.translate(_ASCII_FOLDS)
    return folded.isascii() and folded.lower() == ascii_word.lower()


def flag(query: Query, key: str) -> bool | None:
    """A boolean query parameter as kube-apiserver reads it (runtime.Convert_Slice_string_To_bool):
    only "0" and what strings.EqualFold finds equal to "false" are false; any other value, the empty
    one too, is true, so ``?watch=`` is a watch there and here. None when absent (some options tell
    absent from false, e.g. sendInitialEvents)."""
    value = first(query, key)
    if value is None:
        return None
    return not (value == "0" or _equal_fold(value, "false"))


def integer(query: Query, key: str) -> int | None:
    """An integer query parameter as kube-apiserver reads one (Go's strconv.ParseInt into 64 bits):
    None when absent; a present key's empty value is no integer there either (400)."""
    text = first(query, key)
    if text is None:
        return None
    if not _INTEGER.fullmatch(text):
        raise bad_request(f'invalid value for {key}: "{text}" is not an integer')
    magnitude = bounded_decimal(text.lstrip("+-"), INT64_MAX + 1)
    if magnitude is not None:
        value = -magnitude if text[0] == "-" else magnitude
        if value <= INT64_MAX:
            return value
    raise bad_request(f'invalid value for {key}: "{text}" is out of range for a 64-bit integer')


@attrs.frozen
class ListOptions:
    labels: LabelSelector
    fields: FieldSelector
    limit: int | None
    continue_: str | None
    resource_version: str | None
    # resourceVersionMatch=Exact: the list at exactly resource_version, or an error (docs/api.md).
    exact: bool = False


def _watch_list_options(query: Query, resource_version: str | None, continue_: str | None) -> str | None:
    """The resourceVersionMatch of a deletecollection whose query says watch, checked as
    kube-apiserver's DeleteCollection checks it: it defaults the ListOptions as a watch's
    (SetListOptionsDefaults, WatchList on: a watch from "" or "0" without sendInitialEvents and
    resourceVersionMatch becomes a streaming one, NotOlderThan) and validates them on the watch
    branch (validateWatchOptions); its list then ignores watch and sendInitialEvents."""
    match = first(query, "resourceVersionMatch") or None
    send_initial = flag(query, "sendInitialEvents")
    if send_initial is None and match is None and resource_version in (None, "0"):
        send_initial, match = True, "NotOlderThan"
    if send_initial is not None and match != "NotOlderThan":
        raise invalid_field(
            "ListOptions",
            "meta.k8s.io",
            "resourceVersionMatch",
            match or "",
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        )
    if match is not None:
        if send_initial is None:
            raise invalid_field(
                "ListOptions",
                "meta.k8s.io",
                "resourceVersionMatch",
                match,
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )
        if match != "NotOlderThan":
            raise invalid_field(
                "ListOptions", "meta.k8s.io", "resourceVersionMatch", match, 'must be "NotOlderThan"'
            )
        if continue_ is not None:
            raise invalid_field(
                "ListOptions",
                "meta.k8s.io",
                "resourceVersionMatch",
                match,
                "resourceVersionMatch is forbidden when continue is provided",
            )
    return match


def list_options(query: Query, deleting: bool = False) -> ListOptions:
    """``deleting``: the options of a deletecollection, which kube-apiserver lists by whatever its
    query's watch says (docs/api.md, "Delete"); a list's watch is served elsewhere, or not at all."""
    watch = bool(flag(query, "watch"))
    if watch and not deleting:
        raise method_not_allowed("watch")
    limit = integer(query, "limit")
    if limit is not None and limit < 0:
        raise invalid_field(
            "ListOptions", "meta.k8s.io", "limit", first(query, "limit") or "", "must be non-negative"
        )
    limit = limit or None  # limit=0 means no limit, as upstream
    resource_version = first(query, "resourceVersion") or None
    match = first(query, "resourceVersionMatch") or None
    continue_ = first(query, "continue") or None
    if watch:
        match = _watch_list_options(query, resource_version, continue_)
    elif match is not None:
        if match not in ("Exact", "NotOlderThan"):
            raise invalid_field(
                "ListOptions",
                "meta.k8s.io",
                "resourceVersionMatch",
                match,
                'must be "Exact" or "NotOlderThan"',
            )
        if resource_version is None:
            raise invalid_field(
                "ListOptions",
                "meta.k8s.io",
                "resourceVersionMatch",
                match,
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )
        if continue_ is not None:
            raise invalid_field(
                "ListOptions",
                "meta.k8s.io",
                "resourceVersionMatch",
                match,
                "resourceVersionMatch is forbidden when continue is provided",
            )
        if match == "Exact" and resource_version == "0":
            raise invalid_field(
                "ListOptions",
                "meta.k8s.io",
                "resourceVersionMatch",
                match,
                'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
            )
    if continue_ is not None and resource_version not in (None, "0"):
        # As kube-apiserver's storage: a continued page is read at its token's resourceVersion. Checked
        # here, before a list reads or a deletecollection deletes anything.
        raise bad_request("specifying resource version is not allowed when using continue")
    if resource_version is not None and parse_version(resource_version) is None:
        raise bad_request(f'invalid resource version "{resource_version}"')
    # An int64 in every ListOptions, as kube-apiserver decodes it; only a watch uses it.
    integer(query, "timeoutSeconds")
    if not watch and first(query, "sendInitialEvents") is not None:
        raise invalid_field(
            "ListOptions",
            "meta.k8s.io",
            "sendInitialEvents",
            first(query, "sendInitialEvents") or "",
            "sendInitialEvents is forbidden for list",
        )
    return ListOptions(
        labels=parse_label_selector(first(query, "labelSelector")),
        fields=parse_field_selector(first(query, "fieldSelector")),
        limit=limit,
        continue_=continue_,
        resource_version=resource_version,
        exact=match == "Exact",
    )


PROPAGATION = ("Foreground", "Background", "Orphan")


@attrs.frozen
class DeleteOptions:
    dry_run: bool = False
    uid: str | None = None
    resource_version: str | None = None


def _delete_invalid(field: str, value: Any, message: str) -> Exception:
    return invalid_field("DeleteOptions", "meta.k8s.io", field, str(value), message)


def _not_decodable(message: str) -> Exception:
    # What kube-apiserver answers for a body that does not decode into DeleteOptions: nothing is deleted.
    return bad_request(f"the body of the request is not valid DeleteOptions: {message}")


def _shown(value: str) -> str:
    return json.dumps(value[:100])


def _body_options(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The DeleteOptions a DELETE body carries, refused (400) when it is another kind or a field has
    another JSON type than DeleteOptions gives it."""
    if content_type and content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise unsupported_media_type(content_type)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("the body of the request is not valid JSON DeleteOptions") from None
    if not isinstance(data, dict):
        raise bad_request("the body of the request must be a DeleteOptions object")

    def typed(key: str, expected: str, valid: Callable[[Any], bool]) -> None:
        value = data.get(key)
        if value is not None and not valid(value):
            raise _not_decodable(f"{key} must be {expected}")

    typed("kind", "a string", lambda v: isinstance(v, str))
    typed("apiVersion", "a string", lambda v: isinstance(v, str))
    # kube-apiserver registers DeleteOptions unversioned, in every group: under any group-version it
    # decodes (client-go's typed clients and controller-runtime send their resource's), and without
    # kind and apiVersion (kubectl) it is DeleteOptions. Another kind does not decode, nor an
    # apiVersion that is no group-version.
    kind, version = data.get("kind") or "DeleteOptions", data.get("apiVersion") or ""
    if kind != "DeleteOptions":
        raise _not_decodable(f"kind {_shown(kind)} is not DeleteOptions")
    if version.count("/") > 1:
        raise _not_decodable(f"apiVersion {_shown(version)} is not a group/version")
    typed("dryRun", "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
    typed("propagationPolicy", "a string", lambda v: isinstance(v, str))
    typed("orphanDependents", "a boolean", lambda v: isinstance(v, bool))
    # A JSON integer within 64 bits, as Go decodes into int64: not 1.5, nor "5", nor true.
    typed(
        "gracePeriodSeconds",
        "a 64-bit integer",
        lambda v: type(v) is int and -INT64_MAX - 1 <= v <= INT64_MAX,
    )
    typed("preconditions", "an object", lambda v: isinstance(v, dict))
    preconditions = data.get("preconditions") or {}
    uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
    if not isinstance(uid, str | None) or not isinstance(rv, str | None):
        raise bad_request("preconditions.uid and preconditions.resourceVersion must be strings")
    return data


def delete_options(query: Query, body: bytes, content_type: str | None) -> DeleteOptions:
    """Body wins over the query, as upstream; a dry run requested in either place is honoured."""
    given = bool(body.strip())
    data = _body_options(body, content_type) if given else {}
    dry_run = data.get("dryRun", query.get("dryRun", []))
    if dry_run is None:  # JSON null: unset, as upstream
        dry_run = []
    for value in dry_run:
        if value != "All":
            raise _delete_invalid("dryRun", value, 'supported values: "All"')
    propagation = data.get("propagationPolicy", first(query, "propagationPolicy"))
    if propagation is not None and propagation not in PROPAGATION:
        raise _delete_invalid(
            "propagationPolicy", propagation, 'supported values: "Foreground", "Background", "Orphan"'
        )
    # With a body, kube-apiserver reads no option from the query: the query's orphanDependents, which
    # nothing here honours, must not make a valid body invalid (docs/api.md, "Delete").
    orphan = data.get("orphanDependents") if given else flag(query, "orphanDependents")
    if orphan is not None and propagation is not None:
        raise invalid(
            "DeleteOptions",
            "meta.k8s.io",
            "orphanDependents and propagationPolicy are mutually exclusive",
            [
                {
                    "type": "FieldValueForbidden",
                    "field": "orphanDependents",
                    "message": "Forbidden: orphanDependents and deletionPropagation cannot be both set",
                }
            ],
        )
    if not given:
        # Decoded as kube-apiserver decodes the query (strconv.ParseInt): what is no int64 is 400. Any
        # int64 is valid there (a negative one is 1 second on the delete path), and tags are deleted at
        # once whatever it says; a body's was type-checked by _body_options.
        integer(query, "gracePeriodSeconds")
    preconditions = data.get("preconditions") or {}
    uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
    return DeleteOptions(
        dry_run="All" in dry_run or "All" in query.get("dryRun", []),
        # As kube-apiserver, a uid that is there ("" too) is compared with the tag's. A resourceVersion
        # is compared with the object's, and tags carry none: "" holds, as no precondition does.
        uid=uid,
        resource_version=rv or None,
    )
