"""PathPattern against an independent reference matcher, on generated patterns and paths.

The reference below shares no code with the production module and works differently: it expands
every ``{...}`` into separate brace-free token lists (the production automaton never expands),
decides the role of each ``**`` by looking at its neighbours in the expanded list (production
tracks it while running), and searches by memoized recursion over how much of the path each
``*``/``**`` takes (production runs sets of automaton states in step).  Both implement the rules of
the module docstring of payloadtags.access.patterns.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from payloadtags.access.patterns import PathPattern, PatternError, match

# Thousands of patterns and paths against a model of doublestar: in the default suite, not the unit tier.
pytestmark = pytest.mark.property

# --- the reference matcher ---------------------------------------------------------------------


class RefMalformed(Exception):
    pass


# Tree nodes: ("lit", char, escaped) ("any",) ("class", negated, singles, ranges) ("star",)
# ("dstar",) ("group", [alternative, ...]); an alternative is a list of nodes.
Node = tuple[Any, ...]


def ref_parse(text: str) -> list[Node]:
    nodes, pos = _ref_sequence(text, 0, depth=0)
    if pos != len(text):  # only a stray "}" stops the top level early
        raise RefMalformed("unbalanced }")
    return nodes


def _ref_sequence(text: str, pos: int, depth: int) -> tuple[list[Node], int]:
    nodes: list[Node] = []
    while pos < len(text):
        ch = text[pos]
        if depth and ch in ",}":
            return nodes, pos
        if ch == "}":
            return nodes, pos
        if ch == "\\":
            if pos + 1 == len(text):
                raise RefMalformed("dangling escape")
            nodes.append(("lit", text[pos + 1], True))
            pos += 2
        elif text.startswith("**", pos):
            nodes.append(("dstar",))
            pos += 2
        elif ch == "*":
            nodes.append(("star",))
            pos += 1
        elif ch == "?":
            nodes.append(("any",))
            pos += 1
        elif ch == "[":
            node, pos = _ref_class(text, pos + 1, inside_braces=depth > 0)
            nodes.append(node)
        elif ch == "{":
            alternatives = []
            pos += 1
            while True:
                alternative, pos = _ref_sequence(text, pos, depth + 1)
                alternatives.append(alternative)
                if pos == len(text):
                    raise RefMalformed("unclosed {")
                pos += 1
                if text[pos - 1] == "}":
                    break
            nodes.append(("group", alternatives))
        else:
            nodes.append(("lit", ch, False))
            pos += 1
    return nodes, pos


def _ref_class(text: str, pos: int, inside_braces: bool) -> tuple[Node, int]:
    negated = pos < len(text) and text[pos] in "!^"
    pos += negated
    # First cut the body into (char, escaped) pieces up to the closing "]".
    pieces: list[tuple[str, bool]] = []
    while True:
        if pos >= len(text):
            raise RefMalformed("unclosed [")
        ch = text[pos]
        if ch == "]" and pieces:
            pos += 1
            break
        if ch == "]":
            raise RefMalformed("empty class")
        if ch == "\\":
            if pos + 1 >= len(text):
                raise RefMalformed("dangling escape in class")
            pieces.append((text[pos + 1], True))
            pos += 2
            continue
        if inside_braces and ch in "{},":
            raise RefMalformed("brace character in a class inside braces")
        pieces.append((ch, False))
        pos += 1
    # Then read ranges: an unescaped "-" between a single character and another character.
    singles: set[str] = set()
    ranges: list[tuple[str, str]] = []
    previous: str | None = None
    k = 0
    while k < len(pieces):
        ch, escaped = pieces[k]
        if ch == "-" and not escaped and previous is not None and k + 1 < len(pieces):
            ranges.append((previous, pieces[k + 1][0]))
            previous = None
            k += 2
            continue
        singles.add(ch)
        previous = ch
        k += 1
    return ("class", negated, frozenset(singles), Node(ranges)), pos


MARK = ("mark",)  # where a group opened, in an expanded token list


def ref_expand(nodes: list[Node]) -> list[list[Node]]:
    choices: list[list[list[Node]]] = []
    for node in nodes:
        if node[0] == "group":
            choices.append([[MARK, *tokens] for alt in node[1] for tokens in ref_expand(alt)])
        else:
            choices.append([[node]])
    return [[token for part in combination for token in part] for combination in itertools.product(*choices)]


def _is_slash(token: Node | None, *, escaped_ok: bool) -> bool:
    return token is not None and token[0] == "lit" and token[1] == "/" and (escaped_ok or not token[2])


def _fits(token: Node, ch: str) -> bool:
    if token[0] == "lit":
        return bool(ch == token[1])
    if ch == "/":
        return False
    if token[0] == "any":
        return True
    _kind, negated, singles, ranges = token
    return (ch in singles or any(lo <= ch <= hi for lo, hi in ranges)) is not bool(negated)


def ref_match_tokens(tokens: list[Node], path: str) -> bool:
    n = len(path)

    def previous(i: int) -> Node | None:
        for token in reversed(tokens[:i]):
            if token is not MARK:
                return token
        return None

    def segment_start(i: int) -> bool:
        before = previous(i)
        return before is None or _is_slash(before, escaped_ok=True)

    def role(i: int) -> str:
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        if segment_start(i) and after is None:
            return "rest"
        if segment_start(i) and _is_slash(after, escaped_ok=False):
            return "dirs"
        return "star"

    def may_end(i: int) -> bool:
        rest = tokens[i:]
        while rest and rest[0] is MARK:
            rest = rest[1:]
        kinds = []
        for token in rest:
            if token[0] in ("star", "dstar"):
                kinds.append("*" if token[0] == "star" else "**")
            elif _is_slash(token, escaped_ok=False):
                kinds.append("/")
            else:
                return False
        allowed = [[], ["*"], ["**"], ["/", "**"]]
        if segment_start(i):
            allowed.append(["**", "/"])
        return kinds in allowed

    def landed(i: int, j: int) -> bool:  # just consumed path[j - 1]
        return may_end(i) if j == n else at(i, j)

    @functools.cache
    def at(i: int, j: int) -> bool:  # token i next, path[j:] (non-empty) left
        if i == len(tokens):
            return False
        token = tokens[i]
        if token is MARK:
            return at(i + 1, j)
        if token[0] in ("lit", "any", "class"):
            return _fits(token, path[j]) and landed(i + 1, j + 1)
        how = role(i) if token[0] == "dstar" else "star"
        if how == "rest":
            return True
        if how == "dirs":  # skip the pattern's "/" too; take whole segments
            return at(i + 2, j) or any(path[k] == "/" and landed(i + 2, k + 1) for k in range(j, n))
        if at(i + 1, j):
            return True
        k = j
        while k < n and path[k] != "/":
            k += 1
            if landed(i + 1, k):
                return True
        return False

    return at(0, 0)


def reference(pattern: str, path: str) -> bool:
    """Raise RefMalformed for a malformed pattern."""
    nodes = ref_parse(pattern.lower())
    path = path.lower()
    if not path or path.startswith("/"):
        return False
    return any(ref_match_tokens(tokens, path) for tokens in ref_expand(nodes))


def production(pattern: str, path: str) -> bool | None:
    try:
        compiled = PathPattern.compile(pattern)
    except PatternError:
        assert match(pattern, path) is False
        return None
    result = compiled.matches(path)
    assert match(pattern, path) is result
    return result


def reference_or_none(pattern: str, path: str) -> bool | None:
    try:
        return reference(pattern, path)
    except RefMalformed:
        return None


def test_reference_sanity() -> None:
    assert reference("team/**", "team")
    assert reference("a/**/b", "a/x/y/b")
    assert not reference("team*/**", "team")
    assert reference("{a,b}/*", "b/x")
    assert not reference("x{**,y}", "xa/b")
    assert reference_or_none("{[,]}", ",") is None


# --- generated patterns and paths --------------------------------------------------------------
# No deadlines: the reference expands alternatives and may be slow on a busy machine; the cost of
# the production matcher is tested in test_patterns.py.

ATOMS = [
    "a", "b", "-", "/", "/", "*", "**", "*", "?", "[ab]", "[^a]", "[!b-c]", "[a-b]", "[-a]",
    "\\*", "\\/", "\\a", ",", "A", "**/", "/**",
]  # fmt: skip


def _group(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    alternatives = st.lists(st.lists(inner, max_size=3).map("".join), min_size=1, max_size=3)
    return alternatives.map(lambda alts: "{" + ",".join(alts) + "}")


FRAGMENTS = st.recursive(st.sampled_from(ATOMS), _group, max_leaves=6)
PATTERNS = st.lists(FRAGMENTS, min_size=1, max_size=6).map("".join)
PATHS = st.text(alphabet="ab-/A", max_size=8)
# Anything at all, mostly malformed: brackets and braces in any order.
RAW_PATTERNS = st.text(alphabet="ab/*?[]{},^!-\\", max_size=10)


def _instance(nodes: list[Node]) -> st.SearchStrategy[str]:
    """Paths shaped like the pattern, so that many of them match."""
    parts: list[st.SearchStrategy[str]] = []
    for node in nodes:
        kind = node[0]
        if kind == "lit":
            parts.append(st.sampled_from([node[1], node[1].upper()]))
        elif kind == "any":
            parts.append(st.sampled_from("ab-/"))
        elif kind == "class":
            ends = {ch for pair in node[3] for ch in pair}
            parts.append(st.sampled_from(sorted(node[2] | ends | {"a", "b", "-", "/"})))
        elif kind == "star":
            parts.append(st.sampled_from(["", "a", "ab", "b-"]))
        elif kind == "dstar":
            parts.append(st.sampled_from(["", "a", "a/", "a/b/", "ab/a", "/"]))
        else:
            parts.append(st.one_of([_instance(alternative) for alternative in node[1]]))
    return st.tuples(*parts).map("".join)


@settings(max_examples=300, deadline=None)
@given(PATTERNS, PATHS)
def test_agrees_with_reference_on_random_paths(pattern: str, path: str) -> None:
    expected = reference_or_none(pattern, path)
    assert production(pattern, path) == expected
    event(f"matched: {expected}")


@settings(max_examples=250, deadline=None)
@given(PATTERNS, st.data())
def test_agrees_with_reference_on_paths_shaped_like_the_pattern(pattern: str, data: st.DataObject) -> None:
    nodes = ref_parse(pattern.lower())
    path = data.draw(_instance(nodes), label="path")
    if data.draw(st.booleans(), label="cut"):  # where the path runs out early
        path = path[: data.draw(st.integers(0, len(path)), label="length")]
    expected = reference(pattern, path)
    assert production(pattern, path) == expected
    event(f"matched: {expected}")


@settings(deadline=None)
@given(RAW_PATTERNS, st.lists(PATHS, max_size=3))
def test_agrees_with_reference_on_arbitrary_text(pattern: str, paths: list[str]) -> None:
    for path in [*paths, pattern, pattern.replace("\\", "")]:
        assert production(pattern, path) == reference_or_none(pattern, path)
    event("malformed" if reference_or_none(pattern, "a") is None else "well-formed")


@settings(deadline=None)
@given(PATTERNS, PATHS)
def test_case_does_not_matter(pattern: str, path: str) -> None:
    answer = production(pattern, path)
    assert production(pattern.upper(), path) == answer
    assert production(pattern, path.upper()) == answer
    assert production(pattern.swapcase(), path.swapcase()) == answer


# Every pattern of up to three of these tokens against every path of up to four characters.
SMALL_TOKENS = ["a", "/", "*", "**", "[!a]", "\\/", "{a,}", "{**,/}", "{}"]
SMALL_PATHS = ["".join(chars) for size in range(5) for chars in itertools.product("ab/", repeat=size)]


def test_agrees_with_reference_on_all_small_patterns() -> None:
    for size in range(1, 4):
        for tokens in itertools.product(SMALL_TOKENS, repeat=size):
            pattern = "".join(tokens)
            compiled = PathPattern.compile(pattern)
            for path in SMALL_PATHS:
                assert compiled.matches(path) == reference(pattern, path), (pattern, path)


LITERALS = st.text(alphabet="abcxyz0189._-/,]ABC", min_size=1, max_size=20)


@settings(deadline=None)
@given(LITERALS, LITERALS)
def test_a_literal_pattern_matches_exactly_itself(literal: str, other: str) -> None:
    compiled = PathPattern.compile(literal)
    itself = not literal.startswith("/")
    assert compiled.matches(literal) is itself
    assert compiled.matches(literal.swapcase()) is itself
    assert compiled.matches(literal + "a") is False
    assert compiled.matches(literal[:-1]) is False
    assert compiled.matches(other) is (itself and other.lower() == literal.lower())
