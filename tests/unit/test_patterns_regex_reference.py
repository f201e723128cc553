"""PathPattern against a second reference: the pattern translated to a Python regular expression.

The translation shares no code with payloadtags.access.patterns (an automaton run in step) nor with
the recursive reference of test_patterns_reference.py.  Here a pattern is scanned by regular
expressions, its ``{...}`` groups are expanded into brace-free token lists by an explicit stack,
each list becomes one regular expression (an alternation over the places where the path may run
out), and Python's ``re`` engine does the matching.  Hypothesis also draws paths from that regular
expression (``from_regex``), so many generated paths match.

Each documented deliberate difference from doublestar (docs/access.md) is written out below where
it applies, marked "difference N".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from payloadtags.access.patterns import PathPattern, PatternError

pytestmark = pytest.mark.property


class Malformed(Exception):
    pass


# --- scanning ----------------------------------------------------------------------------------


@attrs.frozen
class Lit:
    char: str
    escaped: bool


@attrs.frozen
class OneChar:  # "?"
    pass


@attrs.frozen
class CharClass:
    negated: bool
    singles: frozenset[str]
    ranges: tuple[tuple[str, str], ...]


@attrs.frozen
class Star:
    pass


@attrs.frozen
class DoubleStar:
    pass


@attrs.frozen
class Mark:
    """Where an alternative of a ``{...}`` group began, in an expanded token list."""


Token = Lit | OneChar | CharClass | Star | DoubleStar | Mark
MARK = Mark()

# One lexeme of the pattern text, tried at each position.
LEXEME = re.compile(
    r"""(?P<escape>\\(?P<escaped>.))
      | (?P<dangling>\\$)
      | (?P<dstar>\*\*)
      | (?P<star>\*)
      | (?P<one>\?)
      | (?P<cls>\[(?P<neg>[!^]?)(?P<body>(?:\\.|[^\\\]])*)\])
      | (?P<badcls>\[)
      | (?P<open>\{) | (?P<close>\}) | (?P<comma>,)
      | (?P<char>.)""",
    re.VERBOSE | re.DOTALL,
)
CLASS_PIECE = re.compile(r"\\(?P<escaped>.)|(?P<plain>.)", re.DOTALL)


def _char_class(negated: bool, body: str, in_braces: bool) -> CharClass:
    if not body:
        raise Malformed("empty class")  # "[]", "[^]", "[!]"
    pieces = [(m["escaped"] or m["plain"], m["escaped"] is not None) for m in CLASS_PIECE.finditer(body)]
    if in_braces and any(not escaped and ch in "{}," for ch, escaped in pieces):
        raise Malformed("difference 3: a brace character in a class inside braces")
    singles: set[str] = set()
    ranges: list[tuple[str, str]] = []
    k, can_start_range = 0, False
    while k < len(pieces):
        ch, escaped = pieces[k]
        if ch == "-" and not escaped and can_start_range and k + 1 < len(pieces):
            ranges.append((pieces[k - 1][0], pieces[k + 1][0]))
            k, can_start_range = k + 2, False
            continue
        singles.add(ch)
        k, can_start_range = k + 1, True
    return CharClass(negated, frozenset(singles), tuple(ranges))


# A group under construction: its finished alternatives and the one being read.
@attrs.define
class Group:
    alternatives: list[list[Token | Group]] = attrs.Factory(list)
    current: list[Token | Group] = attrs.Factory(list)


def scan(pattern: str) -> list[Token | Group]:
    """The pattern as tokens and groups; raises Malformed (difference 2: rejected whole)."""
    stack: list[Group] = [Group()]  # the bottom is the pattern itself, never closed
    for m in LEXEME.finditer(pattern):
        kind = m.lastgroup
        top = stack[-1].current
        in_braces = len(stack) > 1
        if kind == "escape":
            top.append(Lit(m["escaped"], True))
        elif kind == "dangling":
            raise Malformed("trailing backslash")
        elif kind == "dstar":
            top.append(DoubleStar())
        elif kind == "star":
            top.append(Star())
        elif kind == "one":
            top.append(OneChar())
        elif kind == "cls":
            top.append(_char_class(bool(m["neg"]), m["body"], in_braces))
        elif kind == "badcls":
            raise Malformed("unclosed [")
        elif kind == "open":
            stack.append(Group())
        elif kind == "comma" and in_braces:
            stack[-1].alternatives.append(stack[-1].current)
            stack[-1].current = []
        elif kind == "close":
            if not in_braces:
                raise Malformed("} without {")
            group = stack.pop()
            group.alternatives.append(group.current)
            group.current = []
            stack[-1].current.append(group)
        else:  # "char", or a "," outside braces
            top.append(Lit(m.group(), False))
    if len(stack) > 1:
        raise Malformed("unclosed {")
    return stack[0].current


def expand(items: list[Token | Group]) -> Iterator[list[Token]]:
    """Every brace-free token list; each alternative starts with a MARK."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    heads: list[list[Token]]
    if isinstance(first, Group):
        heads = [[MARK, *tokens] for alternative in first.alternatives for tokens in expand(alternative)]
    else:
        heads = [[first]]
    for tail in list(expand(rest)):
        for head in heads:
            yield head + tail


# --- translation -------------------------------------------------------------------------------

ANY = "."  # with DOTALL
NOT_SLASH = "[^/]"


def _is_slash(token: Token | None, *, escaped_ok: bool) -> bool:
    return isinstance(token, Lit) and token.char == "/" and (escaped_ok or not token.escaped)


def _class_regex(cls: CharClass) -> str | None:
    """A regex for one character of the class, never "/" (difference 1); None if none can match."""

    def code(ch: str) -> str:
        return f"\\U{ord(ch):08x}"

    ranges = [(lo, hi) for lo, hi in cls.ranges if lo <= hi]  # a reversed range holds nothing
    if cls.negated:
        inner = "".join(code(ch) for ch in sorted(cls.singles))
        inner += "".join(f"{code(lo)}-{code(hi)}" for lo, hi in ranges)
        return f"[^/{inner}]"
    cut: list[tuple[str, str]] = []
    for lo, hi in ranges:  # take "/" out of every range: what lies below it, what lies above
        cut += [(lo, min(hi, ".")), (max(lo, "0"), hi)]
    cut = [(lo, hi) for lo, hi in cut if lo <= hi]
    singles = sorted(cls.singles - {"/"})
    if not cut and not singles:
        return None
    return (
        "[" + "".join(code(ch) for ch in singles) + "".join(f"{code(lo)}-{code(hi)}" for lo, hi in cut) + "]"
    )


@attrs.frozen
class Unit:
    """What one or two tokens consume: ``middle`` when more follows, ``last`` when it consumes the
    path's last character; ``end`` is the token index after it."""

    middle: str
    last: str
    end: int


def _previous(tokens: list[Token], i: int) -> Token | None:
    return next((t for t in reversed(tokens[:i]) if t is not MARK), None)


def _segment_start(tokens: list[Token], i: int) -> bool:
    before = _previous(tokens, i)
    return before is None or _is_slash(before, escaped_ok=True)


def _units(tokens: list[Token]) -> list[Unit | None] | None:
    """The consuming units, in order (None for a MARK); None when a class can match nothing."""
    units: list[Unit | None] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token is MARK:
            units.append(None)
            i += 1
        elif isinstance(token, Lit):
            units.append(Unit(re.escape(token.char), re.escape(token.char), i + 1))
            i += 1
        elif isinstance(token, OneChar):
            units.append(Unit(NOT_SLASH, NOT_SLASH, i + 1))
            i += 1
        elif isinstance(token, CharClass):
            regex = _class_regex(token)
            if regex is None:
                return None
            units.append(Unit(regex, regex, i + 1))
            i += 1
        elif isinstance(token, DoubleStar) and _segment_start(tokens, i) and i + 1 == len(tokens):
            units.append(Unit(f"{ANY}*", f"{ANY}+", i + 1))  # a final "**": all the rest
            i += 1
        elif (
            isinstance(token, DoubleStar)
            and _segment_start(tokens, i)
            # Difference 5: a MARK right after "**" (a "{") makes it a "*".
            and _is_slash(tokens[i + 1], escaped_ok=False)
        ):
            # Difference 4: decided on the expanded list, i.e. with the alternatives chosen.
            units.append(Unit(f"(?:{ANY}*/)?", f"{ANY}*/", i + 2))  # "**/": whole segments
            i += 2
        else:  # "*", or a "**" that is not a whole segment
            units.append(Unit(f"{NOT_SLASH}*", f"{NOT_SLASH}+", i + 1))
            i += 1
    return units


def _may_end(tokens: list[Token], i: int) -> bool:
    """Whether tokens[i:] matches where the path has run out (doublestar's rule, less difference 6:
    a rest "/**/", or "**/" whose "**" is not a whole segment, needs a path ending in "/")."""
    k = i
    while k < len(tokens) and tokens[k] is MARK:
        k += 1
    kinds = []
    for token in tokens[k:]:
        if isinstance(token, Star):
            kinds.append("*")
        elif isinstance(token, DoubleStar):
            kinds.append("**")
        elif _is_slash(token, escaped_ok=False):
            kinds.append("/")
        else:
            return False
    shapes = [[], ["*"], ["**"], ["/", "**"]]
    if _segment_start(tokens, i):
        shapes.append(["**", "/"])
    return kinds in shapes


def translate(tokens: list[Token]) -> str | None:
    """One alternative for each place the path's last character may be consumed."""
    units = _units(tokens)
    if units is None:
        return None
    alternatives = []
    middles: list[str] = []
    for unit in units:
        if unit is None:
            continue
        if _may_end(tokens, unit.end):
            alternatives.append("".join(middles) + unit.last)
        middles.append(unit.middle)
    return "|".join(f"(?:{a})" for a in alternatives) or None


def to_regex(pattern: str) -> re.Pattern[str] | None:
    """The whole pattern as one regex over lowercased paths; None when nothing can match.
    Raises Malformed."""
    branches = {b for tokens in expand(scan(pattern.lower())) if (b := translate(tokens))}
    if not branches:
        return None
    return re.compile("|".join(f"(?:{b})" for b in sorted(branches)), re.DOTALL)


def regex_reference(pattern: str, path: str) -> bool | None:
    """None for a malformed pattern."""
    try:
        regex = to_regex(pattern)
    except Malformed:
        return None
    if not path or path.startswith("/"):
        return False  # difference 8
    return regex is not None and regex.fullmatch(path.lower()) is not None


def production(pattern: str, path: str) -> bool | None:
    try:
        compiled = PathPattern.compile(pattern)
    except PatternError:
        return None
    return compiled.matches(path)


# --- the reference itself ----------------------------------------------------------------------

# Each deliberate difference from doublestar, with doublestar's answer for the row: the reference
# (and the product) answer differently, always towards matching less.
DIFFERENCES: list[tuple[int, str, str, bool, bool | None]] = [
    # (difference, pattern, path, doublestar, here)
    (1, "a[^x]b", "a/b", True, False),
    (2, "{a/**,[}", "a/b", True, None),
    (3, "{[,]x,y}", ",x", False, None),  # doublestar splits at the ","
    (4, "x{**,y}", "xa/b", True, False),
    (5, "**{/a,b}", "x/y/a", False, False),  # "*": as doublestar mostly does
    (6, "a/**/", "a", True, False),
    (6, "a**/", "a", True, False),
    (8, "", "", True, False),
    (8, "/*", "/", True, False),
]


@pytest.mark.parametrize(("number", "pattern", "path", "doublestar", "here"), DIFFERENCES)
def test_the_deliberate_differences_are_written_into_the_reference(
    number: int, pattern: str, path: str, doublestar: bool, here: bool | None
) -> None:
    assert regex_reference(pattern, path) is here
    assert production(pattern, path) is here
    assert bool(here) <= doublestar  # towards matching less


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("team/**", "team", True),
        ("team/**", "team/a/b", True),
        ("team*/**", "team", False),
        ("team*/**", "team-a", True),
        ("team{,-x}", "team", True),
        ("team/**/**", "team", False),
        ("**/app", "app", True),
        ("**/app", "x/y/app", True),
        ("a/**/b", "a/b", True),
        ("team**", "team/a", False),
        ("{a/**,b}/c", "a/x/c", True),
        (r"[\]-a]", "_", True),
        (r"[a-\]]", "]", False),  # a reversed range
        ("[z-a]", "m", False),
        ("[.-0]", "/", False),
        (r"\A\*", "a*", True),
    ],
)
def test_regex_reference_sanity(pattern: str, path: str, expected: bool) -> None:
    assert regex_reference(pattern, path) is expected


# --- generated patterns and paths --------------------------------------------------------------

ATOMS = [
    "a", "b", "B", "-", ".", "/", "/", "*", "**", "?", ",", "**/", "/**",
    "[ab]", "[^a]", "[!b-c]", "[-a]", "[a-]", "[z-a]", "[.-0]", r"[\]a]", r"[a-\]]", "[^/]",
    r"\*", r"\/", r"\a", r"\{", r"\}", r"\,", r"\[", r"\\", r"\?",
]  # fmt: skip
MALFORMED_ATOMS = ["[", "]", "{", "}", "[]", "[^]", "[,]", "\\"]


def _group(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    alternatives = st.lists(st.lists(inner, max_size=3).map("".join), min_size=1, max_size=3)
    return alternatives.map(lambda alts: "{" + ",".join(alts) + "}")


FRAGMENTS = st.recursive(st.sampled_from(ATOMS), _group, max_leaves=6)
# Few, short tokens: the corners (where the path runs out, what "**" is) come up often.
SHORT_PATTERNS = st.lists(
    st.sampled_from(["a", "/", "*", "**", "{a,}", "{,/}", r"\/"]), min_size=1, max_size=5
)
PATTERNS = st.one_of(st.lists(FRAGMENTS, min_size=1, max_size=6).map("".join), SHORT_PATTERNS.map("".join))
# Now and then a piece that makes the pattern malformed, anywhere.
ROUGH_PATTERNS = st.lists(st.one_of(FRAGMENTS, st.sampled_from(MALFORMED_ATOMS)), min_size=1, max_size=6).map(
    "".join
)
PATHS = st.text(alphabet="ab-./AB,*", max_size=8).filter(lambda p: not p.startswith("/")) | st.text(
    alphabet="ab/", max_size=8
)


def _check(pattern: str, path: str) -> None:
    expected = regex_reference(pattern, path)
    assert production(pattern, path) == expected, (pattern, path)
    event(f"matched: {expected}")


def _paths_drawn_from_the_regex(pattern: str, data: st.DataObject) -> str:
    """A path the reference regex accepts (when there is one), sometimes cut or extended."""
    try:
        regex = to_regex(pattern)
    except Malformed:
        regex = None
    if regex is None:
        return data.draw(PATHS, label="path")
    path = data.draw(st.from_regex(regex, fullmatch=True), label="path")
    change = data.draw(st.sampled_from(["none", "cut", "extend"]), label="change")
    if change == "cut":
        path = path[: data.draw(st.integers(0, len(path)), label="length")]
    elif change == "extend":
        path += data.draw(st.sampled_from(["a", "/", "/a", "-"]), label="extra")
    return path


def _agrees_on_random_paths(pattern: str, path: str) -> None:
    _check(pattern, path)


def _agrees_on_paths_from_the_regex(pattern: str, data: st.DataObject) -> None:
    _check(pattern, _paths_drawn_from_the_regex(pattern, data))


def _agrees_on_rough_patterns(pattern: str, paths: list[str]) -> None:
    for path in [*paths, pattern.replace("\\", "")]:
        _check(pattern, path)


SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much]


@settings(max_examples=60, deadline=None, suppress_health_check=SUPPRESS)
@given(PATTERNS, PATHS)
def test_agrees_with_the_regex_reference_on_random_paths(pattern: str, path: str) -> None:
    _agrees_on_random_paths(pattern, path)


@settings(max_examples=60, deadline=None, suppress_health_check=SUPPRESS)
@given(PATTERNS, st.data())
def test_agrees_with_the_regex_reference_on_paths_it_generates(pattern: str, data: st.DataObject) -> None:
    _agrees_on_paths_from_the_regex(pattern, data)


@settings(max_examples=40, deadline=None, suppress_health_check=SUPPRESS)
@given(ROUGH_PATTERNS, st.lists(PATHS, max_size=3))
def test_agrees_with_the_regex_reference_on_malformed_patterns(pattern: str, paths: list[str]) -> None:
    _agrees_on_rough_patterns(pattern, paths)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=SUPPRESS)
@given(PATTERNS, PATHS)
def test_agrees_with_the_regex_reference_on_random_paths_at_length(pattern: str, path: str) -> None:
    _agrees_on_random_paths(pattern, path)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=SUPPRESS)
@given(PATTERNS, st.data())
def test_agrees_with_the_regex_reference_on_paths_it_generates_at_length(
    pattern: str, data: st.DataObject
) -> None:
    _agrees_on_paths_from_the_regex(pattern, data)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=SUPPRESS)
@given(ROUGH_PATTERNS, st.lists(PATHS, max_size=3))
def test_agrees_with_the_regex_reference_on_malformed_patterns_at_length(
    pattern: str, paths: list[str]
) -> None:
    _agrees_on_rough_patterns(pattern, paths)


# Every pattern of up to three (slow tier: four) of these tokens against every path of up to four
# characters over "a", "b" and "/".
SMALL_TOKENS = ["a", "/", "*", "**", "/**", "[!a]", r"\/", "{a,}", "{**,/}", "{}"]
SMALL_PATHS = ["".join(chars) for size in range(5) for chars in itertools.product("ab/", repeat=size)]


def _agrees_on_all_small_patterns(sizes: range) -> None:
    for size in sizes:
        for tokens in itertools.product(SMALL_TOKENS, repeat=size):
            pattern = "".join(tokens)
            regex = to_regex(pattern)
            compiled = PathPattern.compile(pattern)
            for path in SMALL_PATHS:
                expected = bool(path) and not path.startswith("/") and bool(regex and regex.fullmatch(path))
                assert compiled.matches(path) == expected, (pattern, path)


def test_agrees_with_the_regex_reference_on_all_small_patterns() -> None:
    _agrees_on_all_small_patterns(range(1, 4))


@pytest.mark.slow
def test_agrees_with_the_regex_reference_on_all_patterns_of_four_tokens() -> None:
    _agrees_on_all_small_patterns(range(4, 5))
