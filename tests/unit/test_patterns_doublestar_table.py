"""The public match test table of bmatcuk/doublestar v4 (its ``matchTests``), restated as data.

Each row is (pattern, path, what doublestar's ``Match`` answers, whether it reports ``ErrBadPattern``).
The rows about files on disk (symlinks, permissions) are kept too: ``Match`` never looks at the disk, so
they are plain matching cases. Every row must agree with :func:`payloadtags.access.patterns.match`, or
be one of the deliberate differences listed in docs/access.md (each of them towards matching less).
"""

from __future__ import annotations

import pytest

from payloadtags.access.patterns import PathPattern, PatternError, match

DOUBLESTAR_MATCH_TESTS: list[tuple[str, str, bool, bool]] = [
    ("", "", True, False),
    ("*", "", True, False),
    ("*", "/", False, False),
    ("/*", "/", True, False),
    ("/*", "/debug/", False, False),
    ("/*", "//", False, False),
    ("abc", "abc", True, False),
    ("*", "abc", True, False),
    ("*c", "abc", True, False),
    ("*/", "a/", True, False),
    ("a*", "a", True, False),
    ("a*", "abc", True, False),
    ("a*", "ab/c", False, False),
    ("a*/b", "abc/b", True, False),
    ("a*/b", "a/c/b", False, False),
    ("a*/c/", "a/b", False, False),
    ("a*b*c*d*e*", "axbxcxdxe", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False, False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True, False),
    ("a*b?c*x", "abxbbxdbxebxczzy", False, False),
    ("ab[c]", "abc", True, False),
    ("ab[b-d]", "abc", True, False),
    ("ab[e-g]", "abc", False, False),
    ("ab[^c]", "abc", False, False),
    ("ab[^b-d]", "abc", False, False),
    ("ab[^e-g]", "abc", True, False),
    (r"a\*b", "ab", False, False),
    ("a?b", "a☺b", True, False),
    ("a[^a]b", "a☺b", True, False),
    ("a[!a]b", "a☺b", True, False),
    ("a???b", "a☺b", False, False),
    ("a[^a][^a][^a]b", "a☺b", False, False),
    ("[a-ζ]*", "α", True, False),  # noqa: RUF001 - a Greek alpha, as in the table
    ("*[a-ζ]", "A", False, False),
    ("a?b", "a/b", False, False),
    ("a*b", "a/b", False, False),
    (r"[\]a]", "]", True, False),
    (r"[\-]", "-", True, False),
    (r"[x\-]", "x", True, False),
    (r"[x\-]", "-", True, False),
    (r"[x\-]", "z", False, False),
    (r"[\-x]", "x", True, False),
    (r"[\-x]", "-", True, False),
    (r"[\-x]", "a", False, False),
    ("[]a]", "]", False, True),
    ("[-]", "-", True, False),
    ("[x-]", "x", True, False),
    ("[x-]", "-", True, False),
    ("[x-]", "z", False, False),
    ("[-x]", "x", True, False),
    ("[-x]", "-", True, False),
    ("[-x]", "a", False, False),
    ("[a-b-d]", "a", True, False),
    ("[a-b-d]", "b", True, False),
    ("[a-b-d]", "-", True, False),
    ("[a-b-d]", "c", False, False),
    ("[a-b-x]", "x", True, False),
    ("\\", "a", False, True),
    ("[", "a", False, True),
    ("[^", "a", False, True),
    ("[^bc", "a", False, True),
    ("a[", "a", False, True),
    ("a[", "ab", False, True),
    ("ad[", "ab", False, True),
    ("*x", "xxx", True, False),
    ("[abc]", "b", True, False),
    ("[abc123]", "1", True, False),
    ("[a-z0-9]", "1", True, False),
    ("**", "", True, False),
    ("a/**", "a", True, False),
    ("a/**/", "a", True, False),
    ("a/**", "a/", True, False),
    ("a/**/", "a/", True, False),
    ("a/**", "a/b", True, False),
    ("a/**", "a/b/c", True, False),
    ("**/c", "c", True, False),
    ("**/c", "b/c", True, False),
    ("**/c", "a/b/c", True, False),
    ("**/c", "a/b", False, False),
    ("**/c", "abcd", False, False),
    ("**/c", "a/abc", False, False),
    ("a/**/b", "a/b", True, False),
    ("a/**/c", "a/b/c", True, False),
    ("a/**/d", "a/b/c/d", True, False),
    (r"a/\**", "a/b/c", False, False),
    (r"a/\[*\]", "a/bc", False, False),
    ("a/b/c", "a/b//c", False, False),
    ("a/", "a", False, False),
    ("ab{c,d}", "abc", True, False),
    ("ab{c,d,*}", "abcde", True, False),
    ("ab{c,d}[", "abcd", False, True),
    ("a{,bc}", "a", True, False),
    ("a{,bc}", "abc", True, False),
    ("a/{b/c,c/b}", "a/b/c", True, False),
    ("a/{b/c,c/b}", "a/c/b", True, False),
    ("a/a*{b,c}", "a/abc", True, False),
    ("{a/{b,c},abc}", "a/b", True, False),
    ("{a/{b,c},abc}", "a/c", True, False),
    ("{a/{b,c},abc}", "abc", True, False),
    ("{a/{b,c},abc}", "a/b/c", False, False),
    ("{a/ab*}", "a/abc", True, False),
    ("{a/*}", "a/b", True, False),
    ("{a/abc}", "a/abc", True, False),
    ("{a/b,a/c}", "a/c", True, False),
    ("abc/**", "abc/b", True, False),
    ("**/abc", "abc", True, False),
    ("abc**", "abc/b", False, False),
    ("**/*.txt", "abc/【test】.txt", True, False),
    ("**/【*", "abc/【test】.txt", True, False),
    ("**/{a,b}", "a/b", True, False),
    ("a/*/*/d", "a/b/c/d", True, False),
    ("broken-symlink", "broken-symlink", True, False),
    ("broken-symlink/*", "a", False, False),
    ("broken*/*", "a", False, False),
    ("working-symlink/c/*", "working-symlink/c/d", True, False),
    ("working-sym*/*", "working-symlink/c", True, False),
    ("b/**/f", "b/symlink-dir/f", True, False),
    ("*/symlink-dir/*", "b/symlink-dir/f", True, False),
    (r"e/\[x\]/*", "e/[x]/[y]", True, False),
    (r"e/\[x\]/*/z", "e/[x]/[y]/z", True, False),
    ("e/**", "e/**", True, False),
    ("e/**", "e/*", True, False),
    ("e/**", "e/?", True, False),
    ("e/**", "e/[", True, False),
    ("e/**", "e/]", True, False),
    ("e/**", "e/[]", True, False),
    ("e/**", "e/{", True, False),
    ("e/**", "e/}", True, False),
    ("e/**", "e/\\", True, False),
    ("e/*", "e/*", True, False),
    ("e/?", "e/?", True, False),
    ("e/?", "e/*", True, False),
    ("e/?", "e/[", True, False),
    ("e/?", "e/]", True, False),
    ("e/?", "e/{", True, False),
    ("e/?", "e/}", True, False),
    (r"e/\[", "e/[", True, False),
    ("e/[", "e/[", False, True),
    ("e/]", "e/]", True, False),
    (r"e/\]", "e/]", True, False),
    (r"e/\{", "e/{", True, False),
    (r"e/\}", "e/}", True, False),
    (r"e/[\*\?]", "e/*", True, False),
    (r"e/[\*\?]", "e/?", True, False),
    (r"e/[\*\?]", "e/**", False, False),
    (r"e/[\*\?]?", "e/**", True, False),
    (r"e/{\*,\?}", "e/*", True, False),
    (r"e/{\*,\?}", "e/?", True, False),
    (r"e/\*", "e/*", True, False),
    (r"e/\?", "e/?", True, False),
    (r"e/\?", "e/**", False, False),
    (r"*\}", "}", True, False),
    ("nonexistent-path", "a", False, False),
    ("nonexistent-path/", "a", False, False),
    ("nonexistent-path/file", "a", False, False),
    ("nonexistent-path/*", "a", False, False),
    ("nonexistent-path/**", "a", False, False),
    ("nopermission/*", "nopermission/file", True, False),
    ("nopermission/dir/", "nopermission/dir", False, False),
    ("nopermission/file", "nopermission/file", True, False),
    ("*/dir/file", "noreaddirpermission/dir/file", True, False),
]

# Rows where this matcher answers differently, and why (the numbers of the list in docs/access.md).
DIFFERENCES = {
    ("", ""): "8. an empty path never matches",
    ("*", ""): "8. an empty path never matches",
    ("**", ""): "8. an empty path never matches",
    ("/*", "/"): "8. a path starting with / never matches",
    ("a/**/", "a"): "6. a pattern ending in / needs a path ending in /",
}

# Both the pattern and the path are lowercased before matching (as the registry's auth server does), so
# a row that depends on case is compared with doublestar's answer for the lowercased inputs: "a" is in
# the range a-ζ.
LOWERCASED = {("*[a-ζ]", "A"): True}


@pytest.mark.parametrize(("pattern", "path", "doublestar", "bad_pattern"), DOUBLESTAR_MATCH_TESTS)
def test_doublestar_match_table(pattern: str, path: str, doublestar: bool, bad_pattern: bool) -> None:
    ours = match(pattern, path)
    if (pattern, path) in DIFFERENCES:
        assert doublestar and not ours  # a difference may only ever match less
        return
    expected = LOWERCASED.get((pattern, path), doublestar)
    assert ours is expected
    if bad_pattern:
        with pytest.raises(PatternError):
            PathPattern.compile(pattern)
    else:
        PathPattern.compile(pattern)


def test_the_table_is_complete_and_its_exceptions_are_rows() -> None:
    rows = {(pattern, path) for pattern, path, _, _ in DOUBLESTAR_MATCH_TESTS}
    assert len(DOUBLESTAR_MATCH_TESTS) == 164
    assert set(DIFFERENCES) <= rows
    assert set(LOWERCASED) <= rows
