"""ListOptions and DeleteOptions (docs/api.md, "List options" and "Delete")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from payloadtags.api.errors import ApiError
from payloadtags.api.options import (
    DeleteOptions,
    delete_options,
    first,
    flag,
    list_options,
    storage_refusals,
)
from payloadtags.api.selectors import FieldRequirement, Requirement
from payloadtags.api.watch import watch_options
from payloadtags.model import to_json
from payloadtags.names import encode_name


def _q(**values: str | list[str]) -> dict[str, list[str]]:
    return {key: value if isinstance(value, list) else [value] for key, value in values.items()}


def _error(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


def _body(error: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(to_json(error.status())))
    return body


def test_first() -> None:
    assert first({"a": ["1", "2"]}, "a") == "1"
    assert first({"a": []}, "a") is None
    assert first({}, "a") is None


# -- ListOptions ----------------------------------------------------------------------------------


def test_defaults() -> None:
    options = list_options({})
    assert options.limit is None
    assert options.continue_ is None
    assert options.resource_version is None
    assert options.labels.requirements == ()
    assert options.fields.requirements == ()


def test_kubectl_get_with_selectors() -> None:
    # `kubectl get prt -l a=b --field-selector metadata.name=x` (docs/api.md, "What kubectl sends").
    options = list_options(_q(fieldSelector="metadata.name=x", labelSelector="a=b", limit="500"))
    assert options.limit == 500
    assert options.labels.requirements == (Requirement("a", "=", frozenset({"b"})),)
    assert options.fields.requirements == (FieldRequirement("metadata.name", "x", True),)


def test_continue_and_resource_version_are_passed_on() -> None:
    options = list_options(_q(limit="1", resourceVersion="0", **{"continue": "tok"}))
    assert (options.limit, options.continue_, options.resource_version) == (1, "tok", "0")
    options = list_options(_q(limit="1", resourceVersion="", **{"continue": "tok"}))
    assert (options.continue_, options.resource_version) == ("tok", None)


@pytest.mark.parametrize("resource_version", ["1", "42", "18446744073709551615", "abc"])
def test_continue_with_a_resource_version_is_400(resource_version: str) -> None:
    # kube-apiserver's storage (storage.ValidateListOptions): a continued page is read at its token's
    # resourceVersion, so any other than "" or "0" is refused, before the list (or the deletes of a
    # deletecollection, which lists with these options) reads anything. A bad one says the same.
    error = _error(list_options, _q(limit="2", resourceVersion=resource_version, **{"continue": "tok"}))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == "specifying resource version is not allowed when using continue"


def test_limit_zero_means_no_limit() -> None:
    assert list_options(_q(limit="0")).limit is None
    assert list_options({}).limit is None


@pytest.mark.parametrize("key", ["limit", "timeoutSeconds"])
def test_an_empty_integer_parameter_is_400(key: str) -> None:
    # Go's strconv.ParseInt(""), what kube-apiserver decodes a present key's value with, fails.
    for call in (list_options, watch_options):
        error = _error(call, _q(**{key: ""}))
        assert (error.code, error.reason) == (400, "BadRequest")
        assert error.message == f'invalid value for {key}: "" is not an integer'


def test_empty_parameters_are_unset() -> None:
    options = list_options(
        _q(resourceVersion="", resourceVersionMatch="", labelSelector="", **{"continue": ""})
    )
    assert (options.resource_version, options.continue_) == (None, None)


@pytest.mark.parametrize("value", ["abc", "1.5", "ten", "0x10"])
def test_limit_not_an_integer_is_400(value: str) -> None:
    error = _error(list_options, _q(limit=value))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert value in error.message


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ("9223372036854775807", 9223372036854775807),  # the largest int64: larger than any list
        ("+7", 7),
        ("0" * 5000 + "1", 1),
        ("1" + "0" * 307, None),
    ],
)
def test_limit_within_int64(value: str, limit: int | None) -> None:
    if limit is None:
        assert _error(list_options, _q(limit=value)).code == 400
    else:
        assert list_options(_q(limit=value)).limit == limit


@pytest.mark.parametrize(
    "value",
    [
        "9223372036854775808",
        "-9223372036854775809",
        "1" + "0" * 309,
        "9" * 4300,
        "9" * 5000,
        "-" + "9" * 5000,
    ],
)
def test_limit_beyond_int64_is_400(value: str) -> None:
    # kube-apiserver parses limit as an int64 (Go's strconv.ParseInt).
    error = _error(list_options, _q(limit=value))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == f'invalid value for limit: "{value}" is out of range for a 64-bit integer'


@pytest.mark.parametrize("value", [" 1", "1 ", "1_000", "\u0661", "\uff11", "--1", "+"])
def test_limit_is_read_as_go_reads_an_integer(value: str) -> None:
    error = _error(list_options, _q(limit=value))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == f'invalid value for limit: "{value}" is not an integer'


@pytest.mark.parametrize("value", ["0", "-0", "-1", "-500", "-9223372036854775808"])
@pytest.mark.parametrize("extra", [{}, {"labelSelector": ["a!=b"]}])
def test_a_negative_limit_is_no_limit_as_upstream(value: str, extra: dict[str, list[str]]) -> None:
    # kube-apiserver's ValidateListOptions checks no limit and its storage pages only by Limit > 0:
    # `kubectl get --chunk-size=-1` is the whole list there, not a 422. With another key or without
    # (a page's query takes a shorter path).
    options = list_options({**_q(limit=value), **extra})
    assert options.limit is None
    assert not options.exact
    assert list_options({**_q(limit=value, resourceVersion="42"), **extra}).exact is False


@pytest.mark.parametrize("value", ["true", "1", "True", "TRUE", "yes", "maybe", "2", ""])
def test_watch_is_not_offered(value: str) -> None:
    # Any value but false or 0 is a watch (runtime.Convert_Slice_string_To_bool), the empty one too.
    error = _error(list_options, _q(watch=value))
    assert (error.code, error.reason) == (405, "MethodNotAllowed")
    assert error.message == (
        'watch is not supported on resources of kind "payloadrepositorytags.payload-registry.deckhouse.io"'
    )


@pytest.mark.parametrize("value", ["false", "0", "False", "FALSE", "fAlSe"])
def test_watch_false_is_a_list(value: str) -> None:
    assert list_options(_q(watch=value, limit="5")).limit == 5


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["false"], False),
        (["FALSE"], False),
        (["0"], False),
        (["true"], True),
        (["1"], True),
        ([""], True),
        (["yes"], True),
        (["no"], True),
        (["00"], True),
        (["f"], True),
        (["0", "true"], False),
        (["true", "false"], True),
        # strings.EqualFold: Unicode simple folding, in which only the long s (U+017F) and the
        # Kelvin sign (U+212A) fold with ASCII letters; lower() keeps the long s.
        (["fal\u017fe"], False),
        (["FAL\u017fE"], False),
        (["fal\u212ae"], True),
        (["\ufb02\u0430se"], True),  # no full folding (the ligature fl), no lookalikes (Cyrillic a)
        (["false\u0307"], True),
        (["\uff10"], True),  # "0" only as it is
    ],
)
def test_a_boolean_query_parameter_is_read_as_kube_apiserver_reads_it(
    values: list[str], expected: bool | None
) -> None:
    # runtime.Convert_Slice_string_To_bool: the first value; only "false" and "0", in any case, are false.
    assert flag({"watch": values}, "watch") is expected


def test_resource_version_match_exact_is_kept_for_the_list() -> None:
    assert list_options(_q(resourceVersion="5", resourceVersionMatch="Exact")).exact
    assert not list_options(_q(resourceVersion="5", resourceVersionMatch="NotOlderThan")).exact
    assert not list_options(_q(resourceVersion="5")).exact
    # kube-apiserver's legacy rule: with a limit and no match, a resourceVersion is read exactly (not "0").
    assert list_options(_q(resourceVersion="5", limit="2")).exact
    assert list_options(_q(resourceVersion="5", limit="2"), True).exact
    assert not list_options(_q(resourceVersion="5", limit="2", resourceVersionMatch="NotOlderThan")).exact
    assert not list_options(_q(resourceVersion="0", limit="2")).exact
    assert not list_options(_q(resourceVersion="5", limit="0")).exact


@pytest.mark.parametrize("value", ["", "true", "yes"])
def test_a_deletecollection_lists_whatever_its_watch_says(value: str) -> None:
    # kube-apiserver's DeleteCollection: ListOptions defaulted and validated as a watch's (a watch from
    # "" or "0" becomes a streaming one), then listed without the watch.
    options = list_options(_q(watch=value, limit="5", labelSelector="a!=b"), True)
    assert (options.limit, options.resource_version, options.exact) == (5, None, False)
    streamed = _q(watch=value, sendInitialEvents="true", resourceVersionMatch="NotOlderThan")
    assert list_options({**streamed, "resourceVersion": ["7"]}, True).resource_version == "7"
    assert not list_options({**streamed, "sendInitialEvents": ["false"]}, True).exact


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            _q(sendInitialEvents="true"),
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ),
        (
            _q(resourceVersion="3", resourceVersionMatch="NotOlderThan"),
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ),
        (
            _q(resourceVersion="3", sendInitialEvents="true", resourceVersionMatch="Exact"),
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ),
        ({"continue": ["abc"]}, "resourceVersionMatch is forbidden when continue is provided"),
        (
            {"continue": ["abc"], "resourceVersion": ["0"]},
            "resourceVersionMatch is forbidden when continue is provided",
        ),
    ],
)
def test_a_deletecollection_with_watch_is_validated_as_a_watch(
    query: dict[str, list[str]], message: str
) -> None:
    error = _error(list_options, {**query, "watch": ["true"]}, True)
    assert (error.code, error.reason) == (422, "Invalid")
    assert message in error.message


def test_a_deletecollection_with_watch_keeps_the_storage_checks() -> None:
    query = _q(
        watch="true", resourceVersion="5", sendInitialEvents="true", resourceVersionMatch="NotOlderThan"
    )
    error = _error(list_options, {**query, "continue": ["abc"]}, True)
    assert error.code == 422
    assert "resourceVersionMatch is forbidden when continue is provided" in error.message
    # What the storage refuses is checked after the DeleteOptions (storage_refusals), as there.
    listing = list_options(_q(watch="true", resourceVersion="5", **{"continue": "abc"}), True)
    error = _error(storage_refusals, listing)
    assert (error.code, error.message) == (
        400,
        "specifying resource version is not allowed when using continue",
    )
    assert _error(list_options, _q(watch="true", timeoutSeconds="x"), True).code == 400
    assert _error(storage_refusals, list_options(_q(watch="true", resourceVersion="x"), True)).code == 400


def test_kubectl_watch_request_is_405_before_anything_else() -> None:
    # `kubectl get prt -n ns1 NAME -w` (docs/api.md, "What kubectl sends").
    query = _q(fieldSelector="metadata.name=abc", resourceVersion="0", watch="true")
    assert _error(list_options, query).code == 405


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param(
            _q(resourceVersionMatch="NotOlderThan"),
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
            id="match-without-resource-version",
        ),
        pytest.param(
            _q(resourceVersionMatch="Exact"),
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
            id="exact-without-resource-version",
        ),
        pytest.param(
            _q(resourceVersionMatch="NotOlderThan", resourceVersion="5", **{"continue": "tok"}),
            "resourceVersionMatch is forbidden when continue is provided",
            id="match-with-continue",
        ),
        pytest.param(
            _q(resourceVersionMatch="Exact", resourceVersion="0"),
            'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
            id="exact-with-zero",
        ),
        pytest.param(
            _q(resourceVersionMatch="Newest", resourceVersion="5"),
            'Unsupported value: "Newest": supported values: "Exact", "NotOlderThan", ""',
            id="unknown-match",
        ),
        pytest.param(
            _q(resourceVersionMatch="exact", resourceVersion="5"),
            'Unsupported value: "exact": supported values: "Exact", "NotOlderThan", ""',
            id="match-is-case-sensitive",
        ),
    ],
)
def test_resource_version_match_violations_are_422(query: dict[str, list[str]], message: str) -> None:
    error = _error(list_options, query)
    assert (error.code, error.reason) == (422, "Invalid")
    body = _body(error)
    assert body["details"]["kind"] == "ListOptions"
    assert body["details"]["group"] == "meta.k8s.io"
    [cause] = body["details"]["causes"]
    assert cause["field"] == "resourceVersionMatch"
    assert message in cause["message"]
    assert message in body["message"]


@pytest.mark.parametrize(
    "query",
    [
        _q(resourceVersionMatch="NotOlderThan", resourceVersion="0"),
        _q(resourceVersionMatch="NotOlderThan", resourceVersion="42"),
        _q(resourceVersionMatch="Exact", resourceVersion="42"),
    ],
)
def test_valid_resource_version_match(query: dict[str, list[str]]) -> None:
    assert list_options(query).resource_version == query["resourceVersion"][0]


@pytest.mark.parametrize("value", ["abc", "-1", "1.0", " 1", "\u00b2", "\u0661"])
def test_resource_version_must_be_decimal(value: str) -> None:
    error = _error(list_options, _q(resourceVersion=value))
    assert (error.code, error.reason) == (400, "BadRequest")


@pytest.mark.parametrize("value", ["18446744073709551616", "9" * 309, "9" * 4301, "9" * 5000])
def test_resource_version_beyond_uint64_is_400(value: str) -> None:
    # kube-apiserver's storage parses resourceVersions as uint64 (Go's strconv.ParseUint).
    error = _error(list_options, _q(resourceVersion=value))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == f'invalid resource version "{value}"'


@pytest.mark.parametrize("value", ["18446744073709551615", "0" * 5000 + "7"])
def test_resource_version_within_uint64(value: str) -> None:
    assert list_options(_q(resourceVersion=value)).resource_version == value


@pytest.mark.parametrize("value", ["true", "false", ""])
def test_send_initial_events_is_422(value: str) -> None:
    error = _error(list_options, _q(sendInitialEvents=value))
    assert (error.code, error.reason) == (422, "Invalid")
    [cause] = _body(error)["details"]["causes"]
    assert cause["field"] == "sendInitialEvents"
    assert "sendInitialEvents is forbidden for list" in cause["message"]


def test_bad_selectors_are_400() -> None:
    assert _error(list_options, _q(labelSelector="a in x")).code == 400
    assert _error(list_options, _q(fieldSelector="spec.foo=x")).code == 400


@pytest.mark.parametrize("value", ["abc", "1.5", "9223372036854775808"])
def test_timeout_seconds_of_a_list_is_an_int64(value: str) -> None:
    """ListOptions.timeoutSeconds is decoded as an int64 for every list, not only for watches."""
    error = _error(list_options, _q(timeoutSeconds=value))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert f'invalid value for timeoutSeconds: "{value}"' in error.message


def test_unknown_parameters_are_ignored() -> None:
    options = list_options(_q(timeoutSeconds="30", allowWatchBookmarks="true", pretty="true", limit="2"))
    assert options.limit == 2


# -- the options of a watch (docs/watch.md) --------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"timeoutSeconds": "9223372036854775808"}, "out of range for a 64-bit integer"),
        ({"timeoutSeconds": "9" * 5000}, "out of range for a 64-bit integer"),
        ({"timeoutSeconds": "1e3"}, "is not an integer"),
        ({"resourceVersion": "18446744073709551616"}, "invalid resource version"),
        ({"resourceVersion": "9" * 5000}, "invalid resource version"),
        (
            {
                "resourceVersion": "9" * 5000,
                "sendInitialEvents": "false",
                "resourceVersionMatch": "NotOlderThan",
            },
            "invalid resource version",
        ),
    ],
)
def test_watch_numbers_out_of_range_are_400(query: dict[str, str], message: str) -> None:
    error = _error(watch_options, _q(watch="true", **query))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert message in error.message


def test_watch_numbers_in_range() -> None:
    options = watch_options(
        _q(watch="true", timeoutSeconds="9223372036854775807", resourceVersion="18446744073709551615")
    )
    assert (options.timeout_seconds, options.resource_version) == (2**63 - 1, "18446744073709551615")


def test_watch_flags_of_any_value_but_false_are_true() -> None:
    # The empty value too, as kube-apiserver reads sendInitialEvents and allowWatchBookmarks.
    options = watch_options(
        _q(watch="", sendInitialEvents="", allowWatchBookmarks="yes", resourceVersionMatch="NotOlderThan")
    )
    assert (options.send_initial_events, options.bookmarks) == (True, True)
    query = _q(watch="1", sendInitialEvents="", allowWatchBookmarks="0", resourceVersionMatch="NotOlderThan")
    error = _error(watch_options, query)
    assert (error.code, error.reason) == (422, "Invalid")
    assert "sendInitialEvents requires setting allowWatchBookmarks to true" in error.message


def test_watch_pinned_repository() -> None:
    """The one repository a single-object watch needs read before it starts from "0"."""
    name = encode_name("app/web", "v1")

    def pinned(namespace: str | None, **query: str) -> str | None:
        return watch_options(_q(watch="true", **query)).pinned_repository(namespace)

    assert pinned("team", fieldSelector=f"metadata.name={name}") == "team/app/web"
    assert pinned("team", fieldSelector=f"metadata.name=={name},metadata.namespace=team") == "team/app/web"
    assert pinned(None, fieldSelector=f"metadata.name={name},metadata.namespace=team") == "team/app/web"
    assert pinned(None, fieldSelector=f"metadata.name={name}") is None  # every namespace's: not one read
    assert pinned("team", fieldSelector=f"metadata.name={name},metadata.namespace=other") is None
    assert pinned("team", fieldSelector=f"metadata.name!={name}") is None
    assert pinned("team", fieldSelector="metadata.name=not-a-tag") is None
    assert pinned("team", fieldSelector=f"metadata.name={name}", labelSelector="a=b") is None  # nothing
    assert pinned("team") is None


# -- DeleteOptions ----------------------------------------------------------------------------------

JSON_CT = "application/json"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # kubectl's observed bodies (docs/api.md, "Delete").
        (b'{"propagationPolicy":"Background"}', DeleteOptions()),
        (b'{"propagationPolicy":"Background","dryRun":["All"]}', DeleteOptions(dry_run=True)),
        (b'{"propagationPolicy":"Foreground"}', DeleteOptions()),
        (b'{"gracePeriodSeconds":0,"propagationPolicy":"Background"}', DeleteOptions()),
        (b'{"propagationPolicy":"Orphan"}', DeleteOptions()),
        # Python DynamicClient's body.
        (b'{"dryRun": ["All"], "preconditions": {"uid": "u-1"}}', DeleteOptions(dry_run=True, uid="u-1")),
        (b"", DeleteOptions()),
        (b"  \n", DeleteOptions()),
        (b"{}", DeleteOptions()),
        (b'{"kind":"DeleteOptions","apiVersion":"v1"}', DeleteOptions()),
        (b'{"dryRun":[]}', DeleteOptions()),
        (
            b'{"dryRun":null,"propagationPolicy":null,"preconditions":null,"gracePeriodSeconds":null}',
            DeleteOptions(),
        ),
        (b'{"orphanDependents":true}', DeleteOptions()),
        (b'{"orphanDependents":false}', DeleteOptions()),
        (
            b'{"preconditions":{"uid":"u","resourceVersion":"7"}}',
            DeleteOptions(uid="u", resource_version="7"),
        ),
        # A uid that is there is compared, "" too; tags carry no resourceVersion, so "" always holds.
        (b'{"preconditions":{"uid":"","resourceVersion":""}}', DeleteOptions(uid="")),
        (b'{"preconditions":{"resourceVersion":""}}', DeleteOptions()),
        (b'{"preconditions":{"uid":null}}', DeleteOptions()),
        (b'{"preconditions":{}}', DeleteOptions()),
    ],
)
def test_delete_bodies(body: bytes, expected: DeleteOptions) -> None:
    assert delete_options({}, body, JSON_CT) == expected


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_content_types_are_accepted(content_type: str | None) -> None:
    assert delete_options({}, b'{"dryRun":["All"]}', content_type) == DeleteOptions(dry_run=True)


def test_dry_run_from_the_query() -> None:
    # Python DynamicClient puts options in the query string too.
    assert delete_options(_q(dryRun="All"), b"", None) == DeleteOptions(dry_run=True)
    assert delete_options(_q(dryRun="All", propagationPolicy="Foreground"), b"", None).dry_run


def test_dry_run_in_either_place_is_honoured() -> None:
    assert delete_options(_q(dryRun="All"), b'{"propagationPolicy":"Background"}', JSON_CT).dry_run
    assert delete_options({}, b'{"dryRun":["All"]}', JSON_CT).dry_run
    # The body names no dry run, the query does: still a dry run.
    assert delete_options(_q(dryRun="All"), b'{"dryRun":[]}', JSON_CT).dry_run
    assert not delete_options(
        _q(propagationPolicy="Background"), b'{"propagationPolicy":"Background"}', JSON_CT
    ).dry_run


def test_body_wins_over_query_for_validation() -> None:
    # The body is complete and valid; a bad dryRun value in the query is not looked at.
    assert delete_options(_q(dryRun="bogus"), b'{"dryRun":["All"]}', JSON_CT) == DeleteOptions(dry_run=True)


@pytest.mark.parametrize(
    ("query", "body"),
    [
        pytest.param({}, b'{"dryRun":["Server"]}', id="body-unknown-value"),
        pytest.param({}, b'{"dryRun":["All","x"]}', id="body-one-bad-value"),
        pytest.param({}, b'{"dryRun":["all"]}', id="body-lowercase"),
        pytest.param(_q(dryRun="true"), b"", id="query-true"),
        pytest.param(_q(dryRun=""), b"", id="query-empty"),
        pytest.param(_q(dryRun=["All", "Nope"]), b"", id="query-second-value"),
    ],
)
def test_bad_dry_run_value_is_422(query: dict[str, list[str]], body: bytes) -> None:
    error = _error(delete_options, query, body, JSON_CT)
    assert (error.code, error.reason) == (422, "Invalid")
    details = _body(error)["details"]
    assert (details["kind"], details["group"]) == ("DeleteOptions", "meta.k8s.io")
    assert [cause["field"] for cause in details["causes"]] == ["dryRun"]
    assert details["causes"][0]["reason"] == "FieldValueNotSupported"
    assert details["causes"][0]["message"].endswith(': supported values: "All"')
    assert details["causes"][0]["message"].startswith("Unsupported value: []string{")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"dryRun":"All"}', "dryRun"),
        (b'{"dryRun":[1]}', "dryRun"),
        (b'{"dryRun":{"All":1}}', "dryRun"),
        (b'{"propagationPolicy":1}', "propagationPolicy"),
        (b'{"propagationPolicy":["Background"]}', "propagationPolicy"),
        (b'{"orphanDependents":"yes"}', "orphanDependents"),
        (b'{"orphanDependents":1}', "orphanDependents"),
        (b'{"gracePeriodSeconds":"5"}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":1.5}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":5.0}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":true}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":1e400}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":Infinity}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":NaN}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":[1]}', "gracePeriodSeconds"),
        (b'{"gracePeriodSeconds":{}}', "gracePeriodSeconds"),
        (b'{"preconditions":[]}', "preconditions"),
    ],
)
def test_a_field_of_the_wrong_json_type_is_400_as_a_decode_error(body: bytes, field: str) -> None:
    # kube-apiserver cannot decode such a body into DeleteOptions: 400, never read as something else.
    error = _error(delete_options, {}, body, JSON_CT)
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message.startswith(f"the body of the request is not valid DeleteOptions: {field} must be")


@pytest.mark.parametrize(
    "body",
    [
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}',
        b'{"kind":"ListOptions","apiVersion":"meta.k8s.io/v1"}',
        b'{"kind":"Status"}',
        b'{"kind":"deleteoptions","apiVersion":"v1"}',
    ],
)
def test_a_body_of_another_kind_is_400(body: bytes) -> None:
    error = _error(delete_options, {}, body, JSON_CT)
    assert (error.code, error.reason) == (400, "BadRequest")
    assert "is not DeleteOptions" in error.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"kind":false}', "kind"),
        (b'{"kind":5}', "kind"),
        (b'{"kind":{"name":"DeleteOptions"}}', "kind"),
        (b'{"apiVersion":[]}', "apiVersion"),
        (b'{"apiVersion":["v1"]}', "apiVersion"),
        (b'{"kind":"DeleteOptions","apiVersion":1}', "apiVersion"),
    ],
)
def test_a_kind_or_api_version_that_is_not_a_string_is_400(body: bytes, field: str) -> None:
    # A false kind once counted as absent, and the body as DeleteOptions.
    error = _error(delete_options, {}, body, JSON_CT)
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == f"the body of the request is not valid DeleteOptions: {field} must be a string"


def test_an_api_version_that_is_no_group_version_is_400() -> None:
    body = b'{"kind":"DeleteOptions","apiVersion":"a/b/v1"}'
    error = _error(delete_options, {}, body, JSON_CT)
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message.endswith('apiVersion "a/b/v1" is not a group/version')


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"]}',
        b'{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1","dryRun":["All"]}',
        b'{"kind":"DeleteOptions","apiVersion":"meta.k8s.io/v1beta1","dryRun":["All"]}',
        b'{"kind":"DeleteOptions","dryRun":["All"]}',
        b'{"apiVersion":"meta.k8s.io/v1","dryRun":["All"]}',
        b'{"kind":"","apiVersion":"","dryRun":["All"]}',
        b'{"kind":null,"apiVersion":null,"dryRun":["All"]}',
        b'{"dryRun":["All"]}',
        # DeleteOptions is unversioned upstream: typed clients send their resource's group-version.
        b'{"kind":"DeleteOptions","apiVersion":"payload-registry.deckhouse.io/v1alpha1","dryRun":["All"]}',
        b'{"kind":"DeleteOptions","apiVersion":"apps/v1","dryRun":["All"]}',
        b'{"kind":"DeleteOptions","apiVersion":"v2","dryRun":["All"]}',
        b'{"apiVersion":"payload-registry.deckhouse.io/v1alpha1","dryRun":["All"]}',
    ],
)
def test_delete_options_of_every_version_kube_apiserver_decodes_are_accepted(body: bytes) -> None:
    assert delete_options({}, body, JSON_CT) == DeleteOptions(dry_run=True)


@pytest.mark.parametrize(
    ("query", "body"),
    [
        pytest.param({}, b'{"propagationPolicy":"background"}', id="body-lowercase"),
        pytest.param({}, b'{"propagationPolicy":"Cascade"}', id="body-unknown"),
        pytest.param({}, b'{"propagationPolicy":""}', id="body-empty"),
        pytest.param(_q(propagationPolicy="Later"), b"", id="query-unknown"),
    ],
)
def test_bad_propagation_policy_is_422(query: dict[str, list[str]], body: bytes) -> None:
    error = _error(delete_options, query, body, JSON_CT)
    assert (error.code, error.reason) == (422, "Invalid")
    [cause] = _body(error)["details"]["causes"]
    assert (cause["field"], cause["reason"]) == ("propagationPolicy", "FieldValueNotSupported")
    assert cause["message"].endswith('supported values: "Foreground", "Background", "Orphan", "nil"')


@pytest.mark.parametrize("policy", ["Foreground", "Background", "Orphan"])
def test_propagation_policies_are_accepted_from_the_query(policy: str) -> None:
    assert delete_options(_q(propagationPolicy=policy), b"", None) == DeleteOptions()


@pytest.mark.parametrize(
    ("query", "body", "dry_run"),
    [
        # r1kubectl N3: the query's policy beside the body's orphanDependents was 422.
        (_q(propagationPolicy="Orphan"), b'{"orphanDependents":false}', False),
        (_q(propagationPolicy="Background"), b'{"orphanDependents":true,"dryRun":["All"]}', True),
        (_q(propagationPolicy="Bogus"), b'{"dryRun":["All"]}', True),
        (_q(orphanDependents="true", propagationPolicy="Background"), b"{}", False),
        (_q(dryRun="Bogus"), b'{"propagationPolicy":"Background"}', False),
        (_q(dryRun=["All", "Bogus"]), b"{}", True),
        (_q(gracePeriodSeconds="abc"), b'{"gracePeriodSeconds":5}', False),
    ],
)
def test_with_a_body_no_option_of_the_query_is_read(
    query: dict[str, list[str]], body: bytes, dry_run: bool
) -> None:
    # kube-apiserver decodes DeleteOptions from the body alone when there is one: nothing in the query
    # can make a valid body an error. A dryRun=All there still makes a dry run (docs/api.md, "Delete").
    assert delete_options(query, body, JSON_CT) == DeleteOptions(dry_run=dry_run)


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ({}, b'{"orphanDependents":true,"propagationPolicy":"Background"}'),
        ({}, b'{"orphanDependents":false,"propagationPolicy":"Background"}'),
        (_q(orphanDependents="true", propagationPolicy="Background"), b""),
        (_q(orphanDependents="false", propagationPolicy="Orphan"), b""),
        # Any value of the query's is a boolean (true): still both set.
        (_q(orphanDependents="yes", propagationPolicy="Background"), b""),
        (_q(orphanDependents="", propagationPolicy="Background"), b""),
    ],
)
def test_orphan_dependents_with_propagation_policy_is_422(query: dict[str, list[str]], body: bytes) -> None:
    error = _error(delete_options, query, body, JSON_CT)
    assert (error.code, error.reason) == (422, "Invalid")
    # ValidateDeleteOptions: field.Invalid on propagationPolicy, its value as Go's %q prints it.
    status = _body(error)
    policy = json.loads(body or b"{}").get("propagationPolicy") or query["propagationPolicy"][0]
    message = f'Invalid value: "{policy}": orphanDependents and deletionPropagation cannot be both set'
    assert status["details"] == {
        "kind": "DeleteOptions",
        "group": "meta.k8s.io",
        "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "propagationPolicy"}],
    }
    assert status["message"] == f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: {message}'


def test_every_delete_options_error_is_reported_as_upstream_reports_it() -> None:
    # ValidateDeleteOptions' errors in its order: orphan with policy, the policy, dryRun (a []string
    # printed as Go's %#v).
    query = _q(orphanDependents="true", propagationPolicy="Later", dryRun=["All", "x"])
    status = _body(_error(delete_options, query, b"", None))
    causes = [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "Later": orphanDependents and deletionPropagation cannot be both set',
            "field": "propagationPolicy",
        },
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "Later": supported values: '
            '"Foreground", "Background", "Orphan", "nil"',
            "field": "propagationPolicy",
        },
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: []string{"All", "x"}: supported values: "All"',
            "field": "dryRun",
        },
    ]
    assert status["details"]["causes"] == causes
    joined = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    assert status["message"] == f'DeleteOptions.meta.k8s.io "" is invalid: [{joined}]'


def test_every_list_options_error_is_reported_as_upstream_reports_it() -> None:
    # ValidateListOptions: a resourceVersionMatch that is unknown and lacks a resourceVersion is both.
    status = _body(_error(list_options, _q(resourceVersionMatch="Bogus", sendInitialEvents="true")))
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueForbidden",
            "message": "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            "field": "resourceVersionMatch",
        },
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "Bogus": supported values: "Exact", "NotOlderThan", ""',
            "field": "resourceVersionMatch",
        },
        {
            "reason": "FieldValueForbidden",
            "message": "Forbidden: sendInitialEvents is forbidden for list",
            "field": "sendInitialEvents",
        },
    ]
    assert status["message"].startswith(
        'ListOptions.meta.k8s.io "" is invalid: [resourceVersionMatch: Forbidden: '
    )
    watch = _body(
        _error(
            watch_options,
            _q(sendInitialEvents="true", resourceVersionMatch="Exact", allowWatchBookmarks="true"),
        )
    )
    assert watch["message"] == (
        'ListOptions.meta.k8s.io "" is invalid: [resourceVersionMatch: Forbidden: sendInitialEvents requires '
        'setting resourceVersionMatch to NotOlderThan, resourceVersionMatch: Unsupported value: "Exact": '
        'supported values: "NotOlderThan"]'
    )


@pytest.mark.parametrize("orphan", ["true", "false", "yes", "abc", ""])
def test_orphan_dependents_in_the_query_alone_is_accepted(orphan: str) -> None:
    # As kube-apiserver, any value is a boolean: only "false" and "0" are false, the rest true.
    assert delete_options(_q(orphanDependents=orphan), b"", None) == DeleteOptions()


@pytest.mark.parametrize("orphan", ["false", "true", "yes"])
def test_orphan_dependents_in_the_query_is_not_read_when_there_is_a_body(orphan: str) -> None:
    # As kube-apiserver, which reads no option from the query then: a valid body stays valid.
    body = b'{"propagationPolicy":"Background","dryRun":["All"]}'
    assert delete_options(_q(orphanDependents=orphan), body, JSON_CT) == DeleteOptions(dry_run=True)


@pytest.mark.parametrize("grace", ["-1", "-9223372036854775808", "0", "9223372036854775807"])
def test_any_int64_grace_period_is_accepted(grace: str) -> None:
    # kube-apiserver's ValidateDeleteOptions does not look at it; rest.BeforeDelete treats a negative
    # one as 1 second. Tags are deleted at once whatever it says.
    body = b'{"dryRun":["All"],"gracePeriodSeconds":' + grace.encode() + b"}"
    assert delete_options({}, body, JSON_CT) == DeleteOptions(dry_run=True)
    assert delete_options(_q(gracePeriodSeconds=grace), b"", None) == DeleteOptions()


def test_grace_period_from_the_query() -> None:
    assert delete_options(_q(gracePeriodSeconds="30"), b"", None) == DeleteOptions()
    assert delete_options(_q(gracePeriodSeconds="-5"), b"", None) == DeleteOptions()


@pytest.mark.parametrize("grace", ["", "soon", "abc", "1_0", " 5", "5 ", "1.5", "1e3", "\u0661", "--1"])
def test_a_query_grace_period_that_is_no_int64_is_400(grace: str) -> None:
    # Decoded with strconv.ParseInt, as kube-apiserver decodes query parameters: a failure is 400.
    error = _error(delete_options, _q(gracePeriodSeconds=grace), b"", None)
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == f'invalid value for gracePeriodSeconds: "{grace}" is not an integer'


def test_the_query_grace_period_is_not_read_when_there_is_a_body() -> None:
    # As kube-apiserver, which reads no option from the query then.
    body = b'{"dryRun":["All"]}'
    assert delete_options(_q(gracePeriodSeconds="soon"), body, JSON_CT) == DeleteOptions(dry_run=True)


@pytest.mark.parametrize("grace", ["9223372036854775808", "9" * 400, "9" * 5000])
def test_grace_period_beyond_int64_is_refused(grace: str) -> None:
    error = _error(delete_options, _q(gracePeriodSeconds=grace), b"", None)
    assert (error.code, error.reason) == (400, "BadRequest")
    body = b'{"gracePeriodSeconds":' + grace[:4000].encode() + b"}"  # json refuses over 4300 digits
    assert _error(delete_options, {}, body, JSON_CT).code == 400  # Go cannot decode it into int64


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="text"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"All"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"42", id="number"),
    ],
)
def test_body_that_is_not_a_json_object_is_400(body: bytes) -> None:
    error = _error(delete_options, {}, body, JSON_CT)
    assert (error.code, error.reason) == (400, "BadRequest")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"preconditions":"u"}', id="preconditions-string"),
        pytest.param(b'{"preconditions":["u"]}', id="preconditions-array"),
        pytest.param(b'{"preconditions":{"uid":5}}', id="uid-number"),
        pytest.param(b'{"preconditions":{"resourceVersion":7}}', id="resource-version-number"),
    ],
)
def test_malformed_preconditions_are_400(body: bytes) -> None:
    assert _error(delete_options, {}, body, JSON_CT).code == 400


@pytest.mark.parametrize(
    "content_type",
    [
        "application/yaml",
        "application/vnd.kubernetes.protobuf",
        "application/merge-patch+json",
        "text/plain",
        "application/x-www-form-urlencoded",
    ],
)
def test_wrong_content_type_is_415(content_type: str) -> None:
    error = _error(delete_options, {}, b'{"propagationPolicy":"Background"}', content_type)
    assert (error.code, error.reason) == (415, "UnsupportedMediaType")
    assert content_type in error.message


def test_content_type_is_irrelevant_without_a_body() -> None:
    assert delete_options(_q(dryRun="All"), b"", "text/plain") == DeleteOptions(dry_run=True)


LIMITS = [[], [""], ["0"], ["500"], ["+5"], ["007"], ["-0"], ["-1"], ["x"], [" 5"], ["1", "-2"]]
LIMITS += [["9223372036854775807"], ["9223372036854775808"], ["-9223372036854775809"]]


@pytest.mark.parametrize("limit", [None, *LIMITS])
@pytest.mark.parametrize("token", [None, [], [""], ["abc"], ["a", "b"]])
def test_a_page_query_is_decided_as_any_query(limit: list[str] | None, token: list[str] | None) -> None:
    # A query of nothing but limit and continue (every page of a walk) is decided by a shorter path
    # (`_page_options`): the same options, or the same error, as with any other key besides.
    query = {
        **({} if limit is None else {"limit": limit}),
        **({} if token is None else {"continue": token}),
    }

    def decided(query: dict[str, list[str]]) -> object:
        try:
            return list_options(query)
        except ApiError as error:
            return _body(error)

    assert decided(query) == decided({**query, "pretty": ["true"]})
