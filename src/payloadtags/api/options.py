"""ListOptions and DeleteOptions from the query string and body, validated as kube-apiserver does."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from payloadtags.api.errors import ApiError, bad_request, invalid, method_not_allowed, unsupported_media_type
from payloadtags.api.selectors import (
    FieldSelector,
    LabelSelector,
    decode_field_selector,
    go_quote,
    known_fields,
    parse_label_selector,
)
from payloadtags.validators import bounded_decimal
from payloadtags.watch import parse_version

Query = Mapping[str, list[str]]

INT64_MAX = 2**63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


# Field errors as k8s.io/apimachinery's field package makes them, each a Status cause: its type, its
# field, and its body (ErrorBody: a string value as Go's %q prints it, a []string as %#v does).
Cause = dict[str, str]


def forbidden(field: str, detail: str) -> Cause:
    return {"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": field}


def invalid_value(field: str, shown: str, detail: str) -> Cause:
    return {"reason": "FieldValueInvalid", "message": f"Invalid value: {shown}: {detail}", "field": field}


def not_supported(field: str, shown: str, supported: tuple[str, ...]) -> Cause:
    values = ", ".join(go_quote(value) for value in supported)
    return {
        "reason": "FieldValueNotSupported",
        "message": f"Unsupported value: {shown}: supported values: {values}",
        "field": field,
    }


def invalid_options(kind: str, causes: list[Cause]) -> ApiError:
    """The 422 of kube-apiserver's handlers for invalid ListOptions or DeleteOptions (errors.NewInvalid
    of GroupKind meta.k8s.io), with every error its validation found."""
    return invalid(kind, "meta.k8s.io", causes)


def _strings(values: list[str]) -> str:
    return "[]string{" + ", ".join(go_quote(value) for value in values) + "}"


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


def watch_errors(match: str | None, send_initial: bool | None, continue_: str | None) -> list[Cause]:
    """What ValidateListOptions finds wrong with a watch's options (validateWatchOptions, WatchList on)."""
    errors = []
    if send_initial is not None and match != "NotOlderThan":
        errors.append(
            forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )
        )
    if match is not None:
        if send_initial is None:
            errors.append(
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                )
            )
        if match != "NotOlderThan":
            errors.append(not_supported("resourceVersionMatch", go_quote(match), ("NotOlderThan",)))
        if continue_ is not None:
            errors.append(
                forbidden(
                    "resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided"
                )
            )
    return errors


def _list_errors(
    match: str | None, resource_version: str | None, continue_: str | None, send_initial: str | None
) -> list[Cause]:
    """What ValidateListOptions finds wrong with a list's options."""
    errors = []
    if match is not None:
        if resource_version is None:
            errors.append(
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            )
        if continue_ is not None:
            errors.append(
                forbidden(
                    "resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided"
                )
            )
        if match not in ("Exact", "NotOlderThan"):
            errors.append(
                not_supported("resourceVersionMatch", go_quote(match), ("Exact", "NotOlderThan", ""))
            )
        if match == "Exact" and resource_version == "0":
            errors.append(
                forbidden(
                    "resourceVersionMatch",
                    'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                )
            )
    if send_initial is not None:
        errors.append(forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"))
    return errors


def decode_list_query(query: Query) -> tuple[int | None, int | None, LabelSelector, FieldSelector]:
    """What kube-apiserver decodes of any ListOptions query, a watch's too, before it validates them
    (400 on failure), in its order: the integers as they come in ListOptions (timeoutSeconds, then
    limit), then the selectors, which it parses while converting the query to its internal
    ListOptions (only a field selector's field names are checked later: known_fields)."""
    timeout = integer(query, "timeoutSeconds")
    limit = integer(query, "limit")
    labels = parse_label_selector(first(query, "labelSelector"))
    fields = decode_field_selector(first(query, "fieldSelector"))
    return timeout, limit, labels, fields


# The query of a page as kubectl and client-go ask for one: a limit and, past the first page, a continue
# token (`_page_options`).
_PAGE_KEYS = frozenset({"limit", "continue"})
# The selectors of a query without any (both immutable, shared by such lists).
_NO_LABELS = LabelSelector()
_NO_FIELDS = FieldSelector()


def list_options(query: Query, deleting: bool = False) -> ListOptions:
    """``deleting``: the options of a deletecollection, which kube-apiserver lists by whatever its
    query's watch says (docs/api.md, "Delete"); a list's watch is served elsewhere, or not at all.
    Checked in kube-apiserver's order: decoding (400, the selectors parsed), validation (422, every error
    it finds), the field selector's field names (400), then, for a list, what its storage refuses (400,
    storage_refusals); a deletecollection checks that after its DeleteOptions, as there."""
    if not deleting and query.keys() <= _PAGE_KEYS:
        return _page_options(query)
    watch = bool(flag(query, "watch"))
    if watch and not deleting:
        raise method_not_allowed("watch")
    # timeoutSeconds: an int64 in every ListOptions, as kube-apiserver decodes it; only a watch uses it.
    _, limit, labels, fields = decode_list_query(query)
    # kube-apiserver validates no limit, and its storage pages only by a positive one (Limit > 0):
    # 0 and a negative limit are no limit, the whole list (docs/api.md).
    limit = limit if limit is not None and limit > 0 else None
    resource_version = first(query, "resourceVersion") or None
    match = first(query, "resourceVersionMatch") or None
    continue_ = first(query, "continue") or None
    if watch:
        # A deletecollection's watch, as kube-apiserver's DeleteCollection takes it: the ListOptions
        # defaulted as a watch's (SetListOptionsDefaults, WatchList on: a watch from "" or "0" without
        # sendInitialEvents and resourceVersionMatch becomes a streaming one, NotOlderThan) and validated
        # on the watch branch; its list then ignores watch and sendInitialEvents.
        send_initial = flag(query, "sendInitialEvents")
        if send_initial is None and match is None and resource_version in (None, "0"):
            send_initial, match = True, "NotOlderThan"
        errors = watch_errors(match, send_initial, continue_)
    else:
        errors = _list_errors(match, resource_version, continue_, first(query, "sendInitialEvents"))
    if errors:
        raise invalid_options("ListOptions", errors)
    options = ListOptions(
        labels=labels,
        fields=known_fields(fields),
        limit=limit,
        continue_=continue_,
        resource_version=resource_version,
        # kube-apiserver's legacy rule: a resourceVersion with a limit and no match is read exactly.
        exact=match == "Exact"
        or (match is None and limit is not None and resource_version not in (None, "0")),
    )
    if not deleting:
        storage_refusals(options)
    return options


def _page_options(query: Query) -> ListOptions:
    """`list_options` of a list's query that holds nothing but ``limit`` and ``continue``, as it decides
    them: with no selector, watch, resourceVersion or match, only the limit can be wrong (400 as no
    integer), and storage refuses nothing. Every page of a walk asks this: the steps that find
    nothing to decode or check are not taken (issue #11)."""
    limit = integer(query, "limit")
    return ListOptions(
        labels=_NO_LABELS,
        fields=_NO_FIELDS,
        limit=limit if limit is not None and limit > 0 else None,  # 0 or negative: no limit, as upstream
        continue_=first(query, "continue") or None,
        resource_version=None,
    )


def storage_refusals(options: ListOptions) -> None:
    """What kube-apiserver's storage refuses (400) when it lists by these options: after the handler
    checked every option, a deletecollection's DeleteOptions too. Checked here before a list reads or a
    deletecollection deletes anything."""
    if options.continue_ is not None and options.resource_version not in (None, "0"):
        # A continued page is read at its token's resourceVersion.
        raise bad_request("specifying resource version is not allowed when using continue")
    if options.resource_version is not None and parse_version(options.resource_version) is None:
        raise bad_request(f'invalid resource version "{options.resource_version}"')


PROPAGATION = ("Foreground", "Background", "Orphan")


@attrs.frozen
class DeleteOptions:
    dry_run: bool = False
    uid: str | None = None
    resource_version: str | None = None


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
    """As kube-apiserver decodes them: from the body when there is one, from the query only when
    there is none; a query's ``dryRun=All`` is honoured beside a body too (docs/api.md, "Delete")."""
    if body.strip():
        # kube-apiserver decodes the body alone: nothing in the query (a policy, orphanDependents,
        # another dryRun) can turn a valid body into an error (r1kubectl N3).
        data = _body_options(body, content_type)
        orphan = data.get("orphanDependents")
    else:
        # Decoded as kube-apiserver decodes the query (strconv.ParseInt), before it validates: what is
        # no int64 is 400. Any int64 is valid there (a negative one is 1 second on the delete path), and
        # tags are deleted at once whatever it says; a body's was type-checked by _body_options.
        integer(query, "gracePeriodSeconds")
        data = {"dryRun": query.get("dryRun", []), "propagationPolicy": first(query, "propagationPolicy")}
        orphan = flag(query, "orphanDependents")
    dry_run = data.get("dryRun") or []  # JSON null: unset, as upstream
    propagation = data.get("propagationPolicy")
    # As ValidateDeleteOptions: every error, in its order, on the fields it names.
    errors = []
    if orphan is not None and propagation is not None:
        errors.append(
            invalid_value(
                "propagationPolicy",
                go_quote(propagation),
                "orphanDependents and deletionPropagation cannot be both set",
            )
        )
    if propagation is not None and propagation not in PROPAGATION:
        errors.append(not_supported("propagationPolicy", go_quote(propagation), (*PROPAGATION, "nil")))
    if any(value != "All" for value in dry_run):
        errors.append(not_supported("dryRun", _strings(dry_run), ("All",)))
    if errors:
        raise invalid_options("DeleteOptions", errors)
    preconditions = data.get("preconditions") or {}
    uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
    return DeleteOptions(
        # The query's dryRun=All with a body too, where kube-apiserver would delete: a client that put
        # it there (the Python client does, beside its body) asked for nothing to be deleted.
        dry_run="All" in dry_run or "All" in query.get("dryRun", []),
        # As kube-apiserver, a uid that is there ("" too) is compared with the tag's. A resourceVersion
        # is compared with the object's, and tags carry none: "" holds, as no precondition does.
        uid=uid,
        resource_version=rv or None,
    )
