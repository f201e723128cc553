"""Path patterns of access rules: the documented tables, corner cases, malformed patterns, cost.

The property-based comparison with a reference matcher is in test_patterns_reference.py.
"""

from __future__ import annotations

import attrs
import pytest

from payloadtags.access import patterns
from payloadtags.access.patterns import PathPattern, PatternError, match


def check(pattern: str, path: str, expected: bool) -> None:
    assert PathPattern.compile(pattern).matches(path) is expected, (pattern, path)
    assert match(pattern, path) is expected, (pattern, path)


# docs/access.md, the edge-case table, row by row.
EDGE_CASES = [
    ("app", "app", True),
    ("app", "app/x", False),
    ("*", "team/app", False),
    ("**", "team/app", True),
    ("**", "app", True),
    ("team/**", "team/a/b", True),
    ("team/**", "team", True),
    ("team/**", "teamx/a", False),
    ("team**", "team-a", True),
    ("team**", "team/a", False),
    ("team*/**", "team-a/b/c", True),
    ("**/app", "app", True),
    ("**/app", "x/y/app", True),
    ("a/**/b", "a/b", True),
    ("{web,api}/*", "api/v1", True),
    ("Team/*", "team/x", True),
    ("/app", "app", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), EDGE_CASES)
def test_access_model_edge_cases(pattern: str, path: str, expected: bool) -> None:
    check(pattern, path, expected)


@pytest.mark.parametrize("pattern", ["app", "*", "**", "{,}", "{,a}", "*/**", "", "?", "[a]"])
def test_the_empty_path_never_matches(pattern: str) -> None:
    check(pattern, "", False)


# docs/access.md, the syntax table.
MEANINGS = {
    "star": [
        ("a*c", "abbc", True),
        ("a*c", "ac", True),
        ("a*c", "ab/c", False),
        ("*", "app", True),
        ("*/*", "team/app", True),
        ("a*b*c*d", "axxbxcd", True),
        ("a*b*c*d", "axxbx/cd", False),
    ],
    "slash-doublestar-slash": [
        ("a/**/c", "a/b/c", True),
        ("a/**/c", "a/b/x/c", True),
        ("a/**/c", "a/c", True),
        ("a/**/c", "a/bc", False),
        ("a/**/c", "ab/c", False),
        ("a/**/c", "a/b/c/d", False),
        ("**/c", "a/b/c", True),
        ("**/c", "a/bc", False),
    ],
    "question": [
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("a?c", "a/c", False),
        ("a?c", "abbc", False),
        ("???", "a-b", True),
    ],
    "class": [
        ("[ab]x", "bx", True),
        ("[ab]x", "cx", False),
        ("[a-c]x", "bx", True),
        ("[a-c]x", "cx", True),
        ("[a-c]x", "dx", False),
        ("[^a-c]x", "dx", True),
        ("[^a-c]x", "bx", False),
        ("[!a]x", "bx", True),
        ("[!a]x", "ax", False),
        ("[A-C]x", "bx", True),
        ("[0-9][0-9]", "42", True),
        ("[\\]]", "]", True),
        ("[x\\-]", "-", True),
        ("[x\\-]", "y", False),
        ("[-x]", "-", True),
        ("[x-]", "-", True),
        ("[-]", "-", True),
        ("[a-c-e]", "-", True),
        ("[a-c-e]", "e", True),
        ("[a-c-e]", "d", False),
        ("[\\a-c]", "b", True),
        ("[c-a]", "b", False),
        ("[c-a]", "c", True),
        ("[{]x", "{x", True),
        ("[}]", "}", True),
        ("[[]", "[", True),
    ],
    "alternatives": [
        ("{a,b}", "a", True),
        ("{a,b}", "c", False),
        ("{a,b}", "a,b", False),
        ("x{a,{b,c}}", "xc", True),
        ("x{a,{b,c}}", "xd", False),
        ("{a/b,c}/d", "a/b/d", True),
        ("{a/**,b}/c", "a/x/y/c", True),
        ("{a/**,b}/c", "a/c", True),
        ("{a/**,b}/c", "b/c", True),
        ("{a/**,b}/c", "b/x/c", False),
        ("{a*,b?}", "axx", True),
        ("{a*,b?}", "bx", True),
        ("{a*,b?}", "bxx", False),
        ("{[ab],?}x", "zx", True),
        ("team{,-dev}", "team", True),
        ("team{,-dev}", "team-dev", True),
        ("team{,-dev}", "team-d", False),
        ("a{}b", "ab", True),
        ("{,}a", "a", True),
        ("{[\\,],b}", ",", True),
        ("a,b", "a,b", True),
        ("x/{**,y}/z", "x/a/b/z", True),
        ("{**}/z", "a/b/z", True),
        ("{a,b}/**", "b", True),
    ],
    "escape": [
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("\\?", "?", True),
        ("\\?", "a", False),
        ("\\[a]", "[a]", True),
        ("\\{a,b\\}", "{a,b}", True),
        ("a\\/b", "a/b", True),
        ("\\A", "a", True),
        ("\\\\", "\\", True),
        ("a/\\**", "a/*b", True),
        ("a/\\**", "a/b/c", False),
    ],
}


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        pytest.param(*row, id=f"{meaning}:{row[0]}:{row[1]}")
        for meaning, rows in MEANINGS.items()
        for row in rows
    ],
)
def test_meanings(pattern: str, path: str, expected: bool) -> None:
    check(pattern, path, expected)


# Corners of doublestar's behaviour that this module reproduces.
DOUBLESTAR_CORNERS = [
    # "**" that is not a whole segment is "*".
    ("a/**b", "a/xb", True),
    ("a/**b", "a/x/b", False),
    ("a**/b", "ax/b", True),
    ("a**/b", "a/x/b", False),
    ("**a", "x/a", False),
    ("***/a", "x/a", True),
    ("***/a", "x/y/a", False),
    ("****", "x/y", False),
    ("**/**", "a/b/c", True),
    ("a/**/**/b", "a/b", True),
    ("**/a/**", "a", True),
    ("**/a/**", "x/a/y/z", True),
    ("{a,b/}**", "b/c/d", True),
    ("{a,b/}**", "ac/d", False),
    ("a\\/**", "a/b/c", True),
    ("a/**\\/b", "a/x/b", True),  # "**" needs an unescaped "/" after it
    ("a/**\\/b", "a/x/y/b", False),
    # When the path runs out, only some rests may match nothing.
    ("team*", "team", True),
    ("team{,-x}", "team", True),
    ("team{/**,-x}", "team", True),
    ("team*/**", "team", False),
    ("team*/**", "team-a", True),
    ("team/**/**", "team", False),
    ("team/**/**", "team/a", True),
    ("team***", "team", False),
    ("team***", "team-a", True),
    ("team/**/", "team/", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), DOUBLESTAR_CORNERS)
def test_doublestar_corners(pattern: str, path: str, expected: bool) -> None:
    check(pattern, path, expected)


# The deliberate differences listed in the module docstring: (pattern, path, ours, doublestar's).
DEVIATIONS = [
    ("a[^x]b", "a/b", False, True),  # 1. classes never match "/"
    ("a[/]b", "a/b", False, True),
    ("x{**,y}", "xa/b", False, True),  # 4. "**" right after "{" mid-segment is "*"
    ("x{**,y}", "xab", True, True),
    ("x{,}**/y", "xa/b/y", False, True),
    ("x{,}**/y", "xa/y", True, True),
    ("x{}**", "xa/b", False, True),
    ("**{/a,b}", "x/a", True, True),  # 5. "**" right before "{" is "*", as in doublestar
    ("**{/a,b}", "x/y/a", False, False),
    ("a/**/", "a", False, True),  # 6. a pattern ending in "/" needs a path ending in "/"
    ("a**/", "a", False, True),
    ("**", "/a", False, True),  # 8. paths starting with "/" never match
    ("/**", "/a", False, True),
]


@pytest.mark.parametrize(("pattern", "path", "expected", "doublestar"), DEVIATIONS)
def test_deliberate_deviations(pattern: str, path: str, expected: bool, doublestar: bool) -> None:
    check(pattern, path, expected)
    assert expected <= doublestar  # never matching where doublestar would not


MALFORMED = [
    "[",
    "[]",
    "[]a]",
    "[^]",
    "[!]",
    "[a",
    "[a-",
    "[a-\\",
    "a[b",
    "[\\",
    "[\\]",
    "\\",
    "a\\",
    "{",
    "{a,b",
    "a{b{c}",
    "}",
    "a}",
    "{a}}",
    "\\{a,b}",  # the "}" is unmatched
    "{[,]}",
    "{[}]}",
    "{[{]}",
    "{a,[b,c]}",
    "{a/**,[}",
    "ab{c,d}[",
]


@pytest.mark.parametrize("pattern", MALFORMED)
def test_malformed_patterns_are_rejected_and_match_nothing(pattern: str) -> None:
    with pytest.raises(PatternError):
        PathPattern.compile(pattern)
    with pytest.raises(PatternError):
        PathPattern(pattern)
    for path in ("a", "a/b", "ab", "abcd", "a/b/c", pattern):
        assert match(pattern, path) is False


def test_pattern_error_is_a_value_error() -> None:
    assert issubclass(PatternError, ValueError)


def test_path_pattern_value_semantics() -> None:
    pattern = PathPattern.compile("Team/**")
    assert pattern.source == "Team/**"
    assert pattern == PathPattern.compile("Team/**")
    assert pattern != PathPattern.compile("team/**")
    assert hash(pattern) == hash(PathPattern("Team/**"))
    assert "Team/**" in repr(pattern)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        pattern.source = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        PathPattern(b"team/**")  # type: ignore[arg-type]


def test_case_is_ignored_on_both_sides() -> None:
    check("Team-A/*", "TEAM-a/App", True)
    check("TEAM[A-C]", "teamb", True)
    check("team", "TEAM", True)


def test_literal_patterns_match_only_themselves() -> None:
    check("team/app-1.2_x", "team/app-1.2_x", True)
    check("team/app-1.2_x", "team/app-1.2_xy", False)
    check("team/app-1.2_x", "team/app-1.2_", False)
    check("a,b]", "a,b]", True)


# --- cost --------------------------------------------------------------------------------------
# A backtracking matcher needs time exponential in the number of "*", "**" or "{...}" for these;
# each would run for far longer than the test session.  The automaton is linear in the path.

ADVERSARIAL = [
    ("*a" * 30 + "*b", "a" * 300, False),
    ("*a" * 30 + "*b", "a" * 300 + "b", True),
    ("a*" * 40 + "b", "a" * 200 + "c", False),
    ("**/" * 25 + "b", "a/" * 150, False),
    ("**/" * 25 + "b", "a/" * 150 + "b", True),
    ("**/a" * 20 + "/c", "a/" * 100 + "b", False),
    ("{a,b}" * 40, "ab" * 20, True),
    ("{a,b}" * 40, "ab" * 19 + "ac", False),
    ("{a,{a,{a,b}}}*" * 30, "a" * 200 + "c", True),
    ("{a,{a,{a,b}}}*/" * 30, "a" * 200 + "/c", False),
    ("{*,**/}" * 20 + "b", "a/" * 60 + "c", False),
    ("{" * 400 + "a" + "}" * 400, "a", True),
    ("a" * 5000 + "*", "a" * 5000 + "x", True),
    ("?" * 3000, "a" * 3000, True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), ADVERSARIAL, ids=lambda v: str(v)[:20])
def test_adversarial_patterns_are_cheap(pattern: str, path: str, expected: bool) -> None:
    compiled = PathPattern.compile(pattern)
    assert compiled.matches(path) is expected
    assert compiled.matches(path) is expected  # again, through the cached DFA states


def test_matching_is_a_bounded_state_machine() -> None:
    pattern = "*a" * 30 + "*b"
    compiled = PathPattern.compile(pattern)
    automaton = compiled._automaton
    assert isinstance(automaton, patterns._Automaton)
    # One instruction per pattern element, so the NFA is linear in the pattern...
    assert len(automaton.prog) <= len(pattern) + 1
    assert compiled.matches("a" * 300) is False
    # ...and every set of NFA states run in step is bounded by it (five sub-states per instruction).
    for state in list(automaton._cache.values()):
        assert len(state.nfa_states) <= 5 * len(automaton.prog)
    assert automaton.cached_states <= patterns._DFA_CACHE_LIMIT


def test_the_dfa_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "_DFA_CACHE_LIMIT", 3)
    compiled = PathPattern.compile("{a,b}*/**/c?")
    for _ in range(3):
        assert compiled.matches("ab/x/y/cd") is True
        assert compiled.matches("ab/x/y/c") is False
        assert compiled.matches("bz/cz") is True
        assert compiled.matches("cz/cz") is False
    assert compiled._automaton is not None
    assert compiled._automaton.cached_states <= 3


def test_the_dfa_cache_is_bounded_in_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "_DFA_CACHE_BUDGET", 50)
    compiled = PathPattern.compile("*a" * 30 + "*b")
    assert compiled.matches("a" * 100 + "b") is True
    assert compiled.matches("a" * 100) is False
    assert compiled._automaton is not None
    assert compiled._automaton._cache_size <= 50


def test_literal_patterns_skip_the_automaton() -> None:
    compiled = PathPattern.compile("Team/App")
    assert compiled._automaton is None
    assert compiled.matches("team/app")
