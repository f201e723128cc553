"""Label and field selectors with kube-apiserver's grammar (docs/api.md, "List options")."""

from __future__ import annotations

import pytest

from payloadtags.api.errors import ApiError
from payloadtags.api.selectors import (
    FieldRequirement,
    FieldSelector,
    LabelSelector,
    Requirement,
    escape_value,
    parse_field_selector,
    parse_label_selector,
)


def _requirements(text: str) -> set[tuple[str, str, frozenset[str]]]:
    return {(r.key, r.operator, r.values) for r in parse_label_selector(text).requirements}


def _bad_label(text: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_label_selector(text)
    assert caught.value.code == 400
    assert caught.value.reason == "BadRequest"
    return caught.value


# -- label selector: parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", " ", "\t"])
def test_empty_label_selector_matches_everything(text: str | None) -> None:
    selector = parse_label_selector(text)
    assert selector == LabelSelector()
    assert selector.matches({})
    assert selector.matches({"a": "b"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b", {("a", "=", frozenset({"b"}))}),
        ("a==b", {("a", "=", frozenset({"b"}))}),
        ("a!=b", {("a", "!=", frozenset({"b"}))}),
        ("a in (x,y)", {("a", "in", frozenset({"x", "y"}))}),
        ("a notin (x)", {("a", "notin", frozenset({"x"}))}),
        ("a", {("a", "exists", frozenset())}),
        ("!a", {("a", "!", frozenset())}),
        ("a=b,c!=d", {("a", "=", frozenset({"b"})), ("c", "!=", frozenset({"d"}))}),
        (
            "a=b,c!=d,e in (f,g),h notin (i),j,!k",
            {
                ("a", "=", frozenset({"b"})),
                ("c", "!=", frozenset({"d"})),
                ("e", "in", frozenset({"f", "g"})),
                ("h", "notin", frozenset({"i"})),
                ("j", "exists", frozenset()),
                ("k", "!", frozenset()),
            },
        ),
        # Spaces anywhere between tokens, as a Go re-encode turns "+" back into them.
        ("  a = b , c  !=  d ", {("a", "=", frozenset({"b"})), ("c", "!=", frozenset({"d"}))}),
        ("a in(x , y)", {("a", "in", frozenset({"x", "y"}))}),
        ("a\tin\t(x)", {("a", "in", frozenset({"x"}))}),
        ("! a", {("a", "!", frozenset())}),
        # Empty values.
        ("a=", {("a", "=", frozenset({""}))}),
        ("a==", {("a", "=", frozenset({""}))}),
        ("a!=", {("a", "!=", frozenset({""}))}),
        ("a=,b", {("a", "=", frozenset({""})), ("b", "exists", frozenset())}),
        ("a in (x,)", {("a", "in", frozenset({"x", ""}))}),
        ("a in (,x)", {("a", "in", frozenset({"", "x"}))}),
        ("a in (x,,y)", {("a", "in", frozenset({"x", "", "y"}))}),
        ("a in (,)", {("a", "in", frozenset({""}))}),
        # upstream: "()" is the set holding the empty value (labels.Parse's own example "z notin ()")
        ("a in ()", {("a", "in", frozenset({""}))}),
        (
            "x in (foo,,baz),y,z notin ()",
            {
                ("x", "in", frozenset({"foo", "", "baz"})),
                ("y", "exists", frozenset()),
                ("z", "notin", frozenset({""})),
            },
        ),
        # "in" and "notin" are values inside parentheses.
        ("a in (in,notin)", {("a", "in", frozenset({"in", "notin"}))}),
        # Qualified keys and the full value alphabet.
        (
            "app.kubernetes.io/name=my-app_1.2",
            {("app.kubernetes.io/name", "=", frozenset({"my-app_1.2"}))},
        ),
        ("example.com/Key_1.x=V", {("example.com/Key_1.x", "=", frozenset({"V"}))}),
        ("a=" + "v" * 63, {("a", "=", frozenset({"v" * 63}))}),
        ("k" * 63, {("k" * 63, "exists", frozenset())}),
        # Numeric comparisons.
        ("a>1", {("a", ">", frozenset({"1"}))}),
        ("a < 10,b", {("a", "<", frozenset({"10"})), ("b", "exists", frozenset())}),
        (
            "a>0,a<9223372036854775807",
            {("a", ">", frozenset({"0"})), ("a", "<", frozenset({"9223372036854775807"}))},
        ),
    ],
)
def test_label_selector_grammar(text: str, expected: set[tuple[str, str, frozenset[str]]]) -> None:
    assert _requirements(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a=b,", id="trailing-comma"),
        pytest.param(",a=b", id="leading-comma"),
        pytest.param("a=b,,c=d", id="double-comma"),
        pytest.param("a=b=c", id="two-operators"),
        pytest.param("a=b c", id="two-values"),
        pytest.param("a b", id="two-keys"),
        pytest.param("!", id="bang-alone"),
        pytest.param("!a=b", id="bang-with-operator"),
        pytest.param("!a in (b)", id="bang-with-in"),
        pytest.param("=b", id="missing-key"),
        pytest.param("a in", id="in-without-set"),
        pytest.param("a in x", id="in-without-parentheses"),
        pytest.param("a in (x", id="unclosed-set"),
        pytest.param("a in (x y)", id="values-without-comma"),
        pytest.param("a in (x)y", id="garbage-after-set"),
        pytest.param("a notin", id="notin-without-set"),
        pytest.param("a (x)", id="set-without-operator"),
        pytest.param("a=(x)", id="parenthesis-as-value"),
        pytest.param("a=)", id="closing-parenthesis-as-value"),
        pytest.param("a=!b", id="bang-as-value"),
        pytest.param("a==b==c", id="double-equals-twice"),
        pytest.param("A B=c", id="space-in-key"),
        pytest.param("-a=b", id="key-starts-with-dash"),
        pytest.param("a-=b", id="key-ends-with-dash"),
        pytest.param("a/b/c=d", id="two-slashes"),
        pytest.param("Example.com/a=b", id="uppercase-prefix"),
        pytest.param("/a=b", id="empty-prefix"),
        pytest.param("k" * 64, id="key-name-too-long"),
        pytest.param("a=" + "v" * 64, id="value-too-long"),
        pytest.param("a=-b", id="value-starts-with-dash"),
        pytest.param("a=b-", id="value-ends-with-dash"),
        pytest.param("a=b/c", id="slash-in-value"),
        pytest.param("a in (b/c)", id="slash-in-set-value"),
        pytest.param("a in (-b)", id="bad-set-value"),
        pytest.param("a=b%20", id="percent-in-value"),
        pytest.param("a>", id="greater-without-value"),
        pytest.param("a>x", id="greater-than-a-word"),
        pytest.param("a<1.5", id="less-than-a-fraction"),
        pytest.param("a>9223372036854775808", id="greater-than-beyond-int64"),
        pytest.param("a>+1", id="signed-value"),
        pytest.param("a>(1)", id="greater-than-a-set"),
        pytest.param("!a>1", id="bang-with-greater"),
    ],
)
def test_label_selector_errors_are_400(text: str) -> None:
    error = _bad_label(text)
    assert error.message.startswith("unable to parse requirement")


@pytest.mark.parametrize(
    "text", ["\u00a0", "app!=x\u3000", "\u00a0!app", "!app\u2028", "app\x85!=x", "a=b\x0b"]
)
def test_label_selector_blanks_are_only_space_tab_cr_lf(text: str) -> None:
    """Upstream's lexer skips only those four: any other blank is part of a key or value, which is then
    invalid (here, a selector that would otherwise select every tag: `!app`, `app!=x`)."""
    _bad_label(text)


@pytest.mark.parametrize("text", [" \t\r\n", "\r\n!app\t", " app != x "])
def test_label_selector_ascii_blanks_are_skipped(text: str) -> None:
    assert parse_label_selector(text) == parse_label_selector(text.strip(" \t\r\n").replace(" ", ""))


def test_label_selector_error_names_the_selector() -> None:
    assert "a in x" in _bad_label("a in x").message
    assert '"-a"' in _bad_label("-a=b").message


@pytest.mark.parametrize(
    ("text", "wording"),
    [
        ("a in (x", "found '', expected: ',' or ')'"),
        ("a in (x y)", "found 'y', expected: ',' or ')'"),
        ("a in x", "found 'x' expected: '('"),
        ("a>(1)", "found '(', expected: identifier"),
        ("a>x", "for 'Gt', 'Lt' operators, the value must be an integer"),
    ],
)
def test_label_selector_errors_say_what_upstream_says(text: str, wording: str) -> None:
    assert wording in _bad_label(text).message


# -- label selector: matching -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a=b", {}, False),
        ("a!=b", {"a": "b"}, False),
        ("a!=b", {"a": "c"}, True),
        ("a!=b", {}, True),
        ("a in (x,y)", {"a": "y"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("a in (x,y)", {}, False),
        ("a notin (x)", {"a": "x"}, False),
        ("a notin (x)", {"a": "y"}, True),
        ("a notin (x)", {}, True),
        ("a", {"a": ""}, True),
        ("a", {"b": "a"}, False),
        ("!a", {}, True),
        ("!a", {"a": "x"}, False),
        ("a=", {"a": ""}, True),
        ("a=", {}, False),
        ("a in ()", {"a": ""}, True),
        ("a in ()", {"a": "x"}, False),
        ("a=b,c", {"a": "b", "c": "d"}, True),
        ("a=b,c", {"a": "b"}, False),
        ("a>1", {"a": "2"}, True),
        ("a>1", {"a": "1"}, False),
        ("a<1", {"a": "-3"}, True),
        ("a>1", {"a": "x"}, False),
        ("a>1", {}, False),
        ("a<1", {}, False),
    ],
)
def test_label_selector_matching(text: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_label_selector(text).matches(labels) is matches


def test_tags_have_no_labels() -> None:
    # Objects carry no labels, so only negative selectors can select them.
    assert parse_label_selector("!app,env notin (prod),x!=y").matches({})
    assert not parse_label_selector("app").matches({})


def test_requirement_is_a_value() -> None:
    assert Requirement("a", "=", frozenset({"b"})) == parse_label_selector("a==b").requirements[0]


# -- field selector -----------------------------------------------------------------------------------


def _bad_field(text: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_field_selector(text)
    assert caught.value.code == 400
    assert caught.value.reason == "BadRequest"
    return caught.value


@pytest.mark.parametrize("text", [None, "", ",", ",,"])
def test_empty_field_selector(text: str | None) -> None:
    selector = parse_field_selector(text)
    assert selector == FieldSelector()
    assert selector.matches({"metadata.name": "x", "metadata.namespace": "y"})
    assert selector.required("metadata.name") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.name=abc", [FieldRequirement("metadata.name", "abc", True)]),
        ("metadata.name==abc", [FieldRequirement("metadata.name", "abc", True)]),
        ("metadata.name!=abc", [FieldRequirement("metadata.name", "abc", False)]),
        ("metadata.namespace=ns1", [FieldRequirement("metadata.namespace", "ns1", True)]),
        ("metadata.namespace!=ns1", [FieldRequirement("metadata.namespace", "ns1", False)]),
        (
            "metadata.name=a,metadata.namespace!=b",
            [
                FieldRequirement("metadata.name", "a", True),
                FieldRequirement("metadata.namespace", "b", False),
            ],
        ),
        ("metadata.name=", [FieldRequirement("metadata.name", "", True)]),
        # upstream skips empty terms
        ("metadata.name=a,", [FieldRequirement("metadata.name", "a", True)]),
        (",metadata.name=a", [FieldRequirement("metadata.name", "a", True)]),
    ],
)
def test_field_selector_grammar(text: str, expected: list[FieldRequirement]) -> None:
    assert list(parse_field_selector(text).requirements) == expected


@pytest.mark.parametrize(
    ("text", "fields", "matches"),
    [
        ("metadata.name=abc", {"metadata.name": "abc", "metadata.namespace": "ns"}, True),
        ("metadata.name=abc", {"metadata.name": "abd", "metadata.namespace": "ns"}, False),
        ("metadata.name==abc", {"metadata.name": "abc", "metadata.namespace": "ns"}, True),
        ("metadata.name!=abc", {"metadata.name": "abc", "metadata.namespace": "ns"}, False),
        ("metadata.name!=abc", {"metadata.name": "xyz", "metadata.namespace": "ns"}, True),
        ("metadata.namespace=ns", {"metadata.name": "abc", "metadata.namespace": "ns"}, True),
        ("metadata.namespace=ns", {"metadata.name": "abc", "metadata.namespace": "other"}, False),
        (
            "metadata.name=abc,metadata.namespace=ns",
            {"metadata.name": "abc", "metadata.namespace": "ns"},
            True,
        ),
        (
            "metadata.name=abc,metadata.namespace=ns",
            {"metadata.name": "abc", "metadata.namespace": "x"},
            False,
        ),
    ],
)
def test_field_selector_matching(text: str, fields: dict[str, str], matches: bool) -> None:
    assert parse_field_selector(text).matches(fields) is matches


def test_field_selector_required_value() -> None:
    selector = parse_field_selector("metadata.name=abc,metadata.namespace!=x")
    assert selector.required("metadata.name") == "abc"
    assert selector.required("metadata.namespace") is None
    # Two different pinned values can match nothing; no single value to narrow to.
    assert parse_field_selector("metadata.name=a,metadata.name=b").required("metadata.name") is None
    assert parse_field_selector("metadata.name=a,metadata.name==a").required("metadata.name") == "a"


@pytest.mark.parametrize("field", ["spec.foo", "metadata.labels", "status.digest", "name", "Metadata.name"])
def test_unknown_field_uses_upstream_wording(field: str) -> None:
    error = _bad_field(f"{field}=x")
    assert (
        error.message
        == f'"{field}" is not a known field selector: only "metadata.name", "metadata.namespace"'
    )


@pytest.mark.parametrize("term", ["metadata.name", "abc", "metadata.name~x"])
def test_term_without_operator(term: str) -> None:
    error = _bad_field(f"metadata.namespace=a,{term}")
    assert error.message == f"invalid selector: 'metadata.namespace=a,{term}'; can't understand '{term}'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # fields.ParseSelector: a comma, "=" or backslash in a value is escaped with a backslash.
        ("metadata.name=\\,x", [FieldRequirement("metadata.name", ",x", True)]),
        ("metadata.name=a\\=b", [FieldRequirement("metadata.name", "a=b", True)]),
        ("metadata.name=a\\\\b", [FieldRequirement("metadata.name", "a\\b", True)]),
        (
            "metadata.name!=a\\,b,metadata.namespace=c",
            [
                FieldRequirement("metadata.name", "a,b", False),
                FieldRequirement("metadata.namespace", "c", True),
            ],
        ),
        # The first operator in the term splits it, "!=" and "==" before "=" where they start.
        ("metadata.name==\\=", [FieldRequirement("metadata.name", "=", True)]),
        ("metadata.name=x\\,", [FieldRequirement("metadata.name", "x,", True)]),
    ],
)
def test_field_selector_values_are_unescaped(text: str, expected: list[FieldRequirement]) -> None:
    assert list(parse_field_selector(text).requirements) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Go prints the rune with %v: its code point.
        ("metadata.name=x=y", "invalid field selector: unescaped character in value: 61"),
        ("metadata.name==x=", "invalid field selector: unescaped character in value: 61"),
        ("metadata.name=\\x", "invalid field selector: invalid escape sequence: \\x"),
        ("metadata.name=x\\", "invalid field selector: invalid escape sequence: \\"),
    ],
)
def test_field_selector_value_escapes_are_checked_as_upstream(text: str, message: str) -> None:
    assert _bad_field(text).message == message


@pytest.mark.parametrize(
    "value", ["plain", ",x", "a=b", "a\\b", "\\,=,\\", " x", "x ", "x\u00a0", "\u2028x", " ", ""]
)
def test_escaped_values_read_back_as_themselves(value: str) -> None:
    """The named watch pins its path's name with such a value (any text routes as a name)."""
    selector = parse_field_selector(f"metadata.name={escape_value(value)},metadata.namespace!=y")
    assert selector.required("metadata.name") == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # fields.ParseSelector trims nothing: a blank (ASCII or not) is part of the value, so the value
        # is no tag's name and selects nothing.
        ("metadata.name=x ", [FieldRequirement("metadata.name", "x ", True)]),
        ("metadata.name= x", [FieldRequirement("metadata.name", " x", True)]),
        ("metadata.name=x\u00a0", [FieldRequirement("metadata.name", "x\u00a0", True)]),
        ("metadata.name=\u2028x", [FieldRequirement("metadata.name", "\u2028x", True)]),
        ("metadata.name!=x\t", [FieldRequirement("metadata.name", "x\t", False)]),
        ("metadata.name=\u3000", [FieldRequirement("metadata.name", "\u3000", True)]),
    ],
)
def test_blanks_are_part_of_the_value(text: str, expected: list[FieldRequirement]) -> None:
    selector = parse_field_selector(text)
    assert list(selector.requirements) == expected
    assert selector.matches({"metadata.name": "x", "metadata.namespace": "ns"}) is (not expected[0].equal)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # A blank is part of the field too: no such field, in %q as upstream prints it.
        ("metadata.name =x", '"metadata.name "'),
        (" metadata.name=x", '" metadata.name"'),
        ("metadata.name\u00a0=x", '"metadata.name\\u00a0"'),
        ("metadata.name\t!=x", '"metadata.name\\t"'),
        ("=x", '""'),
        (" =x", '" "'),
        ('a"b\\=x', '"a\\"b\\\\"'),
        ("a\x01=x", '"a\\x01"'),
        ("a\x7f=x", '"a\\x7f"'),
        ("a\u200b=x", '"a\\u200b"'),
        ("a\U0001f600\U000e0001=x", '"a\U0001f600\\U000e0001"'),
        ("\u00e9=x", '"\u00e9"'),
    ],
)
def test_blank_or_odd_field_is_unknown_quoted_as_go(text: str, field: str) -> None:
    assert _bad_field(text).message == field + UNKNOWN


@pytest.mark.parametrize("text", [" ", "  ", "\u00a0", "\t", "metadata.name=x, ", "metadata.name=x,\u2028"])
def test_a_blank_term_is_not_understood(text: str) -> None:
    """Only an empty term is skipped; a blank one is a term without an operator (upstream: 400)."""
    term = text.rsplit(",", 1)[-1]
    assert _bad_field(text).message == f"invalid selector: '{text}'; can't understand '{term}'"


UNKNOWN = ' is not a known field selector: only "metadata.name", "metadata.namespace"'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Upstream sorts the terms, splits and unescapes every one, and only then checks the fields:
        # the error reported is the first in that order.
        ("spec.x=1,metadata.name=a=b", "invalid field selector: unescaped character in value: 61"),
        ("zz,aa", "invalid selector: 'zz,aa'; can't understand 'aa'"),
        ("metadata.name=x, y", "invalid selector: 'metadata.name=x, y'; can't understand ' y'"),
        ("metadata.name=\\q,metadata.name=x=y", "invalid field selector: invalid escape sequence: \\q"),
        ("spec.b=1,spec.a=1", f'"spec.a"{UNKNOWN}'),
        ("z=1,metadata.name=a", f'"z"{UNKNOWN}'),
        ("metadata.name=a=b,aa", "invalid selector: 'metadata.name=a=b,aa'; can't understand 'aa'"),
    ],
)
def test_several_bad_terms_report_the_error_upstream_reports(text: str, message: str) -> None:
    assert _bad_field(text).message == message


# -- label selector: upstream's verdicts ------------------------------------------------------------
# Each case checked against upstream's parser (labels.Parse, as vendored by kubectl 1.32:
# `kubectl set selector --local -f svc.yaml -o name -- SELECTOR` says "couldn't parse the selector
# string" exactly when it refuses). Tags carry no labels, so an accepted `!k`, `k!=v` or `k notin (...)`
# selects every tag: accepting what upstream refuses lets a deletecollection delete a whole namespace.

_PREFIX_253 = "a" * 253
_PREFIX_254 = "a" * 254
_LONG_PREFIX = "prefix part must be no more than 253 characters"
_SUBDOMAIN_REGEX = (
    "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    r"validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_NAME_REGEX = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_TWO_COMMAS = "found ')', expected: ',', or identifier"

UPSTREAM_ACCEPTS = [
    f"!{_PREFIX_253}/b",
    f"{_PREFIX_253}/{'b' * 63}!=x",
    f"{'a.' * 126}a/b notin (x)",  # 253 characters of labels and dots
    "app notin (a,,,)",
    "app notin (,,,)",
    "app notin (,)",
    "app notin (a,,b)",
    "app notin ()",
    "app notin (a,,,,,)",
    "app notin (,,,,,)",
    "app notin (a,,,b)",
    "app notin (a,,,,b)",
    "app notin ( a , , , )",
    "app in (,,,),b",
    "app notin (in,,,notin)",
]

UPSTREAM_REFUSES = [
    (f"!{_PREFIX_254}/b", _LONG_PREFIX),
    (f"{_PREFIX_254}/b!=x", _LONG_PREFIX),
    (f"{_PREFIX_254}/b notin (x)", _LONG_PREFIX),
    (f"{'a' * 300}/b", _LONG_PREFIX),
    (f"!{'a.' * 126}aa/b", _LONG_PREFIX),
    (f"!{'A' * 254}/b", f"{_LONG_PREFIX}; {_SUBDOMAIN_REGEX}"),
    ("!A.b/c", _SUBDOMAIN_REGEX),
    ("!/a", "prefix part must be non-empty"),
    ("!a/", f"name part must be non-empty; {_NAME_REGEX}"),
    ("!-a", _NAME_REGEX),
    (f"!{'a' * 64}", "name part must be no more than 63 characters"),
    ("app notin (a,,)", _TWO_COMMAS),
    ("app notin (,,)", _TWO_COMMAS),
    ("app notin (a,,,,)", _TWO_COMMAS),
    ("app notin (,,,,)", _TWO_COMMAS),
    ("app notin (a,,b,,)", _TWO_COMMAS),
    ("app notin (a, , )", _TWO_COMMAS),
    ("app in (a,,),b", _TWO_COMMAS),
    ("app notin (a,,", "found '', expected: ',', or identifier"),
    ("app notin (a,", "found '', expected: ',', or identifier"),
    ("app notin (a,=)", "found '=', expected: ',', or identifier"),
    ("app notin (a,,!)", "found '!', expected: ',', or identifier"),
    ("app notin (", "found '', expected: ',', ')' or identifier"),
    ("app notin (=)", "found '=', expected: ',', ')' or identifier"),
    ("app notin (a b)", "found 'b', expected: ',' or ')'"),
    ("app notin a", "found 'a' expected: '('"),
    ("app notin (a", "found '', expected: ',' or ')'"),
    # The list is read whole before its values are checked, as upstream's parser does.
    ("app notin (-a,,)", _TWO_COMMAS),
    ("app notin (-a b)", "found 'b', expected: ',' or ')'"),
]


@pytest.mark.parametrize("text", UPSTREAM_ACCEPTS)
def test_label_selectors_upstream_accepts_are_accepted(text: str) -> None:
    parse_label_selector(text)


@pytest.mark.parametrize(("text", "wording"), UPSTREAM_REFUSES)
def test_label_selectors_upstream_refuses_are_400_in_its_words(text: str, wording: str) -> None:
    assert wording in _bad_label(text).message
