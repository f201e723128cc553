"""Label and field selectors with kube-apiserver's grammar and error wording."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import attrs

from payloadtags.api.errors import bad_request
from payloadtags.inventory import TagFilter
from payloadtags.names import InvalidName, TagRef, decode_name, encode_name

# validation.IsQualifiedName's parts: a key is NAME or PREFIX/NAME, and each part is checked on its own.
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_NAME_REGEX = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_SUBDOMAIN_REGEX = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
# Blanks are what upstream's label lexer skips (space, tab, CR, LF): any other (NBSP, U+3000, U+2028)
# is part of a key or value there, which is then invalid, never a separator to drop.
_BLANKS = " \t\r\n"
_TOKEN = re.compile(r"[ \t\r\n]*(!=|==|=|!|,|\(|\)|>|<|[^ \t\r\n!=,()<>]+)")
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")  # what Go's strconv.ParseInt(value, 10, 64) reads
_SPECIAL = frozenset({",", "(", ")", "=", "==", "!=", "!", ">", "<"})


@attrs.frozen
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case "=" | "in":
                return present and labels[self.key] in self.values
            case "!=" | "notin":
                return not present or labels[self.key] not in self.values
            case "exists":
                return present
            case ">" | "<":
                # As upstream: a label that is not an integer matches neither.
                if not present or not _INTEGER.match(labels[self.key]):
                    return False
                label, (bound,) = int(labels[self.key]), self.values
                return label > int(bound) if self.operator == ">" else label < int(bound)
            case _:
                return not present


@attrs.frozen
class LabelSelector:
    # A conjunction: equal (and hashed alike) whatever the order of its terms, so that a watch resumed
    # with the same selector spelled in another order is the same watch (`Opening.selectors`).
    requirements: tuple[Requirement, ...] = attrs.field(default=(), eq=frozenset)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.rstrip(_BLANKS)
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:  # pragma: no cover - the pattern accepts every non-space run
            raise bad_request(f"unable to parse requirement: {text!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _key_problems(key: str) -> list[str]:
    """What validation.IsQualifiedName finds wrong with ``key``, in its order and words. The prefix is
    bounded on its own (253, a DNS subdomain's), not through the key's whole length: a key with a longer
    prefix is refused upstream, and accepted here it would make ``!key`` select every tag."""
    parts = key.split("/")
    if len(parts) > 2:
        return [
            f"a qualified name {_NAME_REGEX} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    problems = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                problems.append("prefix part must be no more than 253 characters")
            if not _SUBDOMAIN.match(prefix):
                problems.append(f"prefix part {_SUBDOMAIN_REGEX}")
    name = parts[-1]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    if not _NAME.match(name):
        problems.append(f"name part {_NAME_REGEX}")
    return problems


def _check_key(key: str, text: str) -> str:
    if problems := _key_problems(key):
        raise bad_request(
            f'unable to parse requirement: {text}: invalid label key "{key}": {"; ".join(problems)}'
        )
    return key


def _check_value(value: str, text: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(f'unable to parse requirement: {text}: invalid label value: "{value}"')
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k`` or raise a 400 Status."""
    if text is None or not text.strip(_BLANKS):
        return LabelSelector()
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0

    def fail(expected: str = "identifier or operator", comma: str = ",") -> None:
        raise bad_request(
            f"unable to parse requirement: found '{tokens[i] if i < len(tokens) else ''}'{comma} "
            f'expected: {expected} in label selector "{text}"'
        )

    while i < len(tokens):
        if tokens[i] == "!":
            i += 1
            if i >= len(tokens):
                fail()
            requirements.append(Requirement(_check_key(tokens[i], text), "!"))
            i += 1
        else:
            key = _check_key(tokens[i], text)
            i += 1
            if i >= len(tokens) or tokens[i] == ",":
                requirements.append(Requirement(key, "exists"))
            elif tokens[i] in ("=", "==", "!="):
                op = "!=" if tokens[i] == "!=" else "="
                i += 1
                value = ""
                if i < len(tokens) and tokens[i] not in _SPECIAL:
                    value = tokens[i]
                    i += 1
                requirements.append(Requirement(key, op, frozenset({_check_value(value, text)})))
            elif tokens[i] in (">", "<"):
                op = tokens[i]
                i += 1
                value = ""
                if i < len(tokens) and tokens[i] != ",":
                    if tokens[i] in _SPECIAL:
                        fail("identifier")
                    value = tokens[i]
                    i += 1
                if not _INTEGER.match(value) or not -(2**63) <= int(value) < 2**63:
                    raise bad_request(
                        f"unable to parse requirement: {text}: "
                        "for 'Gt', 'Lt' operators, the value must be an integer"
                    )
                requirements.append(Requirement(key, op, frozenset({_check_value(value, text)})))
            elif tokens[i] in ("in", "notin"):
                op = tokens[i]
                i += 1
                if i >= len(tokens) or tokens[i] != "(":
                    fail("'('", comma="")  # upstream's parseValues has no comma there
                i += 1
                values: list[str] = []
                if i < len(tokens) and tokens[i] == ")":
                    values.append("")  # upstream: "()" is the set holding the empty value
                elif i >= len(tokens) or (tokens[i] in _SPECIAL and tokens[i] != ","):
                    fail("',', ')' or identifier")
                else:
                    # upstream's parseIdentifiersList, step for step: a comma followed by a comma takes
                    # it too, and then wants an identifier or a comma, so "(a,,)" is refused (an even run
                    # of commas before ')'), "(a,,,)" not. Read as "(a,)" it would be notin {a, ""},
                    # which every tag (no labels) matches.
                    while True:
                        token = tokens[i] if i < len(tokens) else ""
                        if token == ",":
                            i += 1
                            if not values or (i < len(tokens) and tokens[i] == ")"):
                                values.append("")  # "(," and ",)" hold the empty value
                            if i < len(tokens) and tokens[i] == ")":
                                break
                            if i < len(tokens) and tokens[i] == ",":
                                values.append("")
                                i += 1
                        elif token and token not in _SPECIAL:
                            values.append(token)
                            i += 1
                            if i < len(tokens) and tokens[i] == ",":
                                continue
                            if i < len(tokens) and tokens[i] == ")":
                                break
                            fail("',' or ')'")
                        else:
                            fail("',', or identifier")
                i += 1
                # As upstream (NewRequirement), the values are checked once the list is read whole.
                values = [_check_value(value, text) for value in values]
                requirements.append(Requirement(key, op, frozenset(values)))
            else:
                fail()
        if i < len(tokens):
            if tokens[i] != ",":
                fail()
            i += 1
            if i >= len(tokens):
                fail()
    return LabelSelector(tuple(requirements))


FIELDS = ("metadata.name", "metadata.namespace")


@attrs.frozen
class FieldRequirement:
    field: str
    value: str
    equal: bool


@attrs.frozen
class FieldTest:
    """The terms of a selector on one field, compiled: the one value the field must equal (None: no
    such term), the values it must not, and whether the terms contradict each other (two different
    required values, or a required value also excluded). A value is then checked in O(1), however
    many terms there are (a 700-term selector checked term by term on every tag of a list held the
    reactor for most of a second)."""

    required: str | None = None
    excluded: frozenset[str] = frozenset()
    contradiction: bool = False

    def admits(self, value: str | None) -> bool:
        if self.contradiction:
            return False
        if self.required is not None:
            return value == self.required
        return value not in self.excluded


def _compile(requirements: tuple[FieldRequirement, ...]) -> dict[str, FieldTest]:
    required: dict[str, set[str]] = {}
    excluded: dict[str, set[str]] = {}
    for r in requirements:
        (required if r.equal else excluded).setdefault(r.field, set()).add(r.value)
    tests = {}
    for field in {*required, *excluded}:
        values = required.get(field, set())
        others = frozenset(excluded.get(field, ()))
        if len(values) > 1:
            tests[field] = FieldTest(contradiction=True)
        elif values:
            (value,) = values
            tests[field] = FieldTest(value, contradiction=value in others)
        else:
            tests[field] = FieldTest(excluded=others)
    return tests


@attrs.frozen
class FieldSelector:
    # A conjunction, as LabelSelector's.
    requirements: tuple[FieldRequirement, ...] = attrs.field(default=(), eq=frozenset)
    # Per field, its terms compiled once (a request checks every tag of a list against them).
    tests: dict[str, FieldTest] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "tests", _compile(self.requirements))

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(test.admits(fields.get(field)) for field, test in self.tests.items())

    def required(self, field: str) -> str | None:
        """The value the field must equal, when the selector pins it; for narrowing registry reads."""
        values = {r.value for r in self.requirements if r.field == field and r.equal}
        return values.pop() if len(values) == 1 else None


@attrs.define(eq=False)
class _TagTest(TagFilter):
    """A field selector's verdict on tags, from their references: O(1) a tag, and no name encoded.
    The names the selector gives are decoded once instead, each to its (repository path, tag), those
    that are no tag's name (not decodable, or not spelt as that tag's name is) matching no tag."""

    namespace: FieldTest | None
    nothing: bool  # a name required that no tag has, or contradicting terms
    required: tuple[str, str] | None  # (repository path, tag) of the name required
    excluded: dict[str, frozenset[str]]  # repository path -> its tags the names excluded give

    def select(self, namespace: str, path: str, tags: Sequence[str]) -> Sequence[str]:
        if self.nothing or (self.namespace is not None and not self.namespace.admits(namespace)):
            return []
        if self.required is not None:
            if path != self.required[0]:
                return []
            tag = self.required[1]
            return [tag] if tag in tags else []
        excluded = self.excluded.get(path)
        if not excluded:
            return tags
        return [tag for tag in tags if tag not in excluded]


def _tag_of(name: str) -> tuple[str, str] | None:
    try:
        path, tag = decode_name(name)
    except InvalidName:
        return None
    return (path, tag) if encode_name(path, tag) == name else None


def tag_filter(labels: LabelSelector, fields: FieldSelector) -> Callable[[TagRef], bool] | None:
    """Which tags the selectors keep, each decided in O(1) whatever the number of terms; None when
    they keep every tag."""
    if not labels.matches({}):
        # Tags carry no labels: the label selector decides once for all. Keeping none, it is the
        # filter of no tag, which selects a repository at once (`_TagTest.select`; review r9own L1).
        return _TagTest(None, True, None, {})
    namespace = fields.tests.get("metadata.namespace")
    name = fields.tests.get("metadata.name")
    if namespace is None and name is None:
        return None
    nothing, required, excluded = False, None, {}
    if name is not None:
        if name.contradiction:
            nothing = True
        elif name.required is not None:
            required = _tag_of(name.required)
            nothing = required is None
        else:
            by_path: dict[str, set[str]] = {}
            for value in name.excluded:
                if (tag := _tag_of(value)) is not None:
                    by_path.setdefault(tag[0], set()).add(tag[1])
            excluded = {path: frozenset(tags) for path, tags in by_path.items()}
    return _TagTest(namespace, nothing, required, excluded)


def _split_terms(text: str) -> list[str]:
    """The terms of a field selector: split on commas a backslash does not escape, the escapes kept
    (fields.splitTerms)."""
    if "\\" not in text:
        return text.split(",")
    terms, start, escaped = [], 0, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    """Field, operator and raw value, split at the first operator in the term (fields.splitTerm:
    a field has no escapes)."""
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
    return None


def _unescape(value: str) -> str:
    """fields.UnescapeValue: ``\\,`` ``\\=`` ``\\\\`` stand for the character; any other escape, or a
    ``,`` or ``=`` not escaped, is refused in upstream's words (Go prints the rune as its number)."""
    if "\\" not in value and "," not in value and "=" not in value:
        return value
    out: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise bad_request(f"invalid field selector: invalid escape sequence: \\{char}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise bad_request(f"invalid field selector: unescaped character in value: {ord(char)}")
        else:
            out.append(char)
    if escaped:
        raise bad_request("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def escape_value(value: str) -> str:
    """A value as a field selector's text must spell it (fields.EscapeValue); the parser reads it back
    as exactly that value, blanks included."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` (strconv.Quote) prints it: upstream's messages quote names this way.
    Go's unicode.IsPrint and str.isprintable() reject the same characters (the categories Other and
    Separator, but for the ASCII space)."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        elif char <= "\uffff":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def parse_field_selector(text: str | None) -> FieldSelector:
    """Parse ``metadata.name=a,metadata.namespace!=b`` as fields.ParseSelector does, or raise a 400,
    then check its fields (known_fields).

    As upstream: nothing is trimmed (a blank, ASCII or not, is part of its field or value: such a value
    is no tag's name, such a field no field); the terms are taken in sorted order, every one split and
    unescaped before any field is checked, so that of several bad terms the same one is reported."""
    return known_fields(decode_field_selector(text))


def decode_field_selector(text: str | None) -> FieldSelector:
    """The selector as kube-apiserver parses it while it decodes the query (400 if it does not parse),
    its fields not yet checked: they are checked after the options are validated (known_fields)."""
    if not text:
        return FieldSelector()
    requirements = []
    for term in sorted(_split_terms(text)):  # sort.StringSlice: byte order, the code point order
        if not term:
            continue  # only an empty term is skipped: "metadata.name=x," is valid, "x, " is not
        split = _split_term(term)
        if split is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field, op, raw = split
        # As kube-apiserver, any value is accepted: one no namespace can have (Bad_NS) selects nothing,
        # and its != everything. Lists never look such a value up in the registry (TagsService).
        requirements.append(FieldRequirement(field, _unescape(raw), op != "!="))
    return FieldSelector(tuple(requirements))


def known_fields(selector: FieldSelector) -> FieldSelector:
    """The selector if it names only fields a tag has, else the 400 of kube-apiserver's field-label
    conversion, which its handlers make after validating the options (the first unknown field, in the
    terms' sorted order)."""
    for requirement in selector.requirements:
        if requirement.field not in FIELDS:
            raise bad_request(
                f'{go_quote(requirement.field)} is not a known field selector: only "metadata.name", '
                '"metadata.namespace"'
            )
    return selector
