r"""Path patterns of registry access rules (the ``resourceNames`` of RBAC rules).

A rule's ``resourceNames`` hold glob patterns over the repository path *after* the namespace (see
the syntax and edge-case tables in docs/access.md).  The module this project re-implements matches
them with Go's ``bmatcuk/doublestar`` v4 ``Match`` (separator ``/``), after lowercasing both the
pattern and the path.  :class:`PathPattern` does the same.

Syntax (applied to the lowercased pattern):

=============  ================================================================================
``*``          any run of characters other than ``/`` (possibly empty)
``**``         as a whole path segment, any number of whole segments (see below); elsewhere the
               same as ``*`` (``team**`` matches ``team-a`` but not ``team/a``)
``?``          exactly one character other than ``/``
``[...]``      one character (never ``/``) from a set: single characters, ranges ``a-z`` and
               escapes ``\x``; ``[^...]`` or ``[!...]`` negates.  ``[]``, ``[^]`` are malformed
``{a,b}``      one of the comma-separated alternatives; they may be empty, nest, and contain any
               of the syntax here, including ``/`` and ``**``.  Outside braces ``,`` is literal
``\x``         the character ``x`` literally (a trailing ``\`` is malformed)
=============  ================================================================================

The whole path must match.  ``**`` is a whole segment when it comes right after the start of the
pattern or a ``/``, and right before an unescaped ``/`` or the end of the pattern, with the
alternatives chosen: ``{a/**,b}/c`` has a whole-segment ``**`` in its first alternative, but
``**{/a,b}`` has none (a ``{`` right after ``**`` makes it a ``*``, see 5. below).  As in
doublestar, an escaped ``\/`` counts as a ``/`` before ``**`` but not after it.

* ``**/`` matches zero or more segments each followed by ``/``: ``**/app`` matches ``app`` and
  ``x/y/app``; ``a/**/b`` matches ``a/b`` and ``a/x/y/b``;
* a final ``**`` matches all the rest: a bare ``**`` matches every path.

When the path runs out before the pattern does, the rest of the pattern matches the empty string
only if it is literally empty, ``*``, ``**``, ``/**``, or ``**/`` with a whole-segment ``**``, or
begins with a ``{...}`` one of whose alternatives, followed by the rest, qualifies.  This is
doublestar's rule (less two cases, see 6.) and it is kept as is: ``team/**``, ``team*`` and
``team{,-x}`` match ``team``, but ``team*/**`` does not (although it matches ``team-a``), nor do
``team/**/**`` or ``team***``.

Deliberate differences from doublestar, all of them towards matching less:

1. A character class never matches ``/``.  doublestar's README says classes match
   non-separators, but its code lets ``[^x]`` (or ``[/]``) match ``/``.
2. A malformed pattern never matches: it is rejected whole by :meth:`PathPattern.compile`.
   doublestar validates lazily and can report a match before it reaches the malformed part
   (``{a/**,[}`` against ``a/b``).  Malformed here: an unclosed ``[`` or ``{``, an empty class, a
   ``}`` without ``{``, a trailing backslash, and (3.) below.
3. Inside ``{...}`` a character class may not contain an unescaped ``{``, ``}`` or ``,``.
   doublestar's brace scanner does not know about classes and would close or split the group
   there, producing an error or a mangled pattern; escape them instead (``{[\,x],y}``).
4. Whether ``**`` is a whole segment depends only on the pattern text around it once the
   alternatives are chosen.  doublestar restarts its "start of segment" tracking each time it
   enters a ``{...}`` group, so for it ``x{**,y}``, ``x{}**`` and ``x{,}**/y`` contain a
   whole-segment ``**`` (``x{**,y}`` matches ``xa/b``); here these ``**`` act as ``*``.
5. ``**`` directly followed by ``{`` (``**{/a,b}``) is never a whole segment: doublestar sees the
   ``{`` as the next character and treats it as ``*``, though it may revisit that choice when it
   backtracks into a group it has already expanded; we do not.
6. doublestar also lets a rest of ``/**/``, or ``**/`` whose ``**`` is not a whole segment, match
   the empty string (``a/**/`` and ``a**/`` match ``a``).  Here a pattern ending in ``/`` needs a
   path ending in ``/``, so it matches no repository path.
7. doublestar searches greedily, remembering only the last ``*`` and ``**`` to backtrack to, and
   stops at the first point where the path runs out; this module considers every way the pattern
   can match.  The two agree on ordinary patterns, and the rules above (6. in particular) are what
   keeps them agreeing elsewhere: compared with a model of doublestar's algorithm on many random
   patterns, this module never matched where doublestar does not.
8. An empty path, or one starting with ``/``, never matches (repository paths are never like
   that), so a pattern starting with ``/`` never matches anything.

Lowercasing uses Python's :meth:`str.lower`; it differs from Go's ``strings.ToLower`` only for a
few non-ASCII characters, which registry paths cannot contain.

Implementation: the pattern is compiled once into a small automaton (a Thompson-style NFA whose
states are positions in the pattern).  Matching runs all states in step, one path character at a
time, so it takes time proportional to ``len(path) * len(pattern)`` at worst, whatever the
pattern: there is no backtracking and no expansion of alternatives.  Sets of states already seen
are cached per pattern as a lazily built DFA, so repeated matching costs about one dictionary
look-up per path character.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["PathPattern", "PatternError", "match"]


class PatternError(ValueError):
    """A malformed path pattern."""


# ---------------------------------------------------------------------------------------------
# Program: the pattern compiled into a list of instructions, addressed by index ("pc").
#
#   (_CHAR, c, raw_slash)  consume the character c; raw_slash: c is an unescaped "/"
#   (_ANY,)                consume one character other than "/"
#   (_CLASS, neg, ranges)  consume one character other than "/" that is (not, if neg) in ranges
#   (_STAR,)               "*"
#   (_DSTAR, follow, tgt)  "**"; follow tells what comes next in the pattern (_F_*); with _F_SLASH,
#                          tgt is the pc after that "/"
#   (_SPLIT, starts)       "{": continue at the start of any alternative
#   (_JMP, tgt)            end of an alternative (but the last): continue after the group
#   (_END,)                end of the pattern
_CHAR, _ANY, _CLASS, _STAR, _DSTAR, _SPLIT, _JMP, _END = range(8)
_F_OTHER, _F_SLASH, _F_END = range(3)

# NFA states are (pc, sub, sos).  sub says where in instruction pc the automaton is; sos ("start of
# segment") is meaningful for _AT only: the pattern text consumed last was a "/" (or nothing).
_AT = 0  # before instruction pc
_BODY = 1  # inside the "*" (or "**" acting as "*") at pc
_GLOOP = 2  # inside the whole-segment "**/" at pc, at the start of a path segment
_GMID = 3  # inside the whole-segment "**/" at pc, within a path segment
_GALL = 4  # inside the final whole-segment "**" at pc: everything else matches

_State = tuple[int, int, bool]
# One instruction of the program above: its opcode, then operands whose types depend on the opcode.
_Instruction = tuple[Any, ...]
# A rest of the pattern as token kinds (see below).
_Rest = tuple[str, ...]

# What the rest of the pattern may literally be, when the path is used up, for it to match the
# empty string: doublestar's rule, less "/**/" (deviation 6.).  Token kinds: "/" unescaped, "*"
# single, "**".
_K_SLASH, _K_STAR, _K_DSTAR = "/", "*", "**"
_EMPTY_RESTS = frozenset({(), (_K_STAR,), (_K_DSTAR,), (_K_SLASH, _K_DSTAR), (_K_DSTAR, _K_SLASH)})
# Where the pattern text consumed last is not a "/", "**/" is not a whole segment: only its "**"
# could match the empty string, and its "/" cannot (doublestar accepts it anyway; see deviations).
_EMPTY_RESTS_MID_SEGMENT = _EMPTY_RESTS - {(_K_DSTAR, _K_SLASH)}

# Bounds on the DFA states cached per pattern: how many, and how many NFA states they hold in all.
# Past either, matching goes on without caching more.
_DFA_CACHE_LIMIT = 2048
_DFA_CACHE_BUDGET = 200_000
# Bound on the number of cached transitions out of one DFA state (distinct next characters).
_TRANSITIONS_LIMIT = 256


def _parse(source: str) -> list[_Instruction]:
    """Compile the (already lowercased) pattern text into a program; raise PatternError."""
    # Built with mutable lists for "{" and "," (patched once the group closes), then frozen.
    prog: list[Any] = []
    # One frame per open "{": (its _SPLIT instruction, the _JMP instructions ending alternatives).
    groups: list[tuple[list[Any], list[list[Any]]]] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 >= n:
                raise PatternError(f"pattern {source!r}: trailing backslash")
            prog.append((_CHAR, source[i + 1], False))
            i += 2
        elif c == "*":
            if i + 1 < n and source[i + 1] == "*":
                prog.append((_DSTAR, _F_OTHER, 0))  # follow is filled in below
                i += 2
            else:
                prog.append((_STAR,))
                i += 1
        elif c == "?":
            prog.append((_ANY,))
            i += 1
        elif c == "[":
            instruction, i = _parse_class(source, i, in_group=bool(groups))
            prog.append(instruction)
        elif c == "{":
            split: list[Any] = [_SPLIT, []]
            prog.append(split)
            groups.append((split, []))
            split[1].append(len(prog))
            i += 1
        elif c == "," and groups:
            split, jumps = groups[-1]
            jump: list[Any] = [_JMP, -1]
            prog.append(jump)
            jumps.append(jump)
            split[1].append(len(prog))
            i += 1
        elif c == "}":
            if not groups:
                raise PatternError(f"pattern {source!r}: '}}' without '{{'")
            _split, jumps = groups.pop()
            for jump in jumps:
                jump[1] = len(prog)  # the last alternative falls through to here
            i += 1
        else:
            prog.append((_CHAR, c, c == "/"))
            i += 1
    if groups:
        raise PatternError(f"pattern {source!r}: unclosed '{{'")
    prog.append((_END,))

    for pc, instruction in enumerate(prog):
        if instruction[0] == _SPLIT:
            prog[pc] = (_SPLIT, tuple(instruction[1]))
        elif instruction[0] == _JMP:
            prog[pc] = (_JMP, instruction[1])
    for pc, instruction in enumerate(prog):
        if instruction[0] == _DSTAR:
            prog[pc] = _classify_double_star(prog, pc)
    return prog


def _parse_class(source: str, start: int, *, in_group: bool) -> tuple[_Instruction, int]:
    """Parse the class opening at source[start] == "["; return its instruction and the next index."""
    n = len(source)

    def malformed(why: str) -> PatternError:
        return PatternError(f"pattern {source!r}: {why} in the character class at offset {start}")

    def read_char(j: int) -> tuple[str, int]:
        c = source[j]
        if c == "\\":
            if j + 1 >= n:
                raise malformed("trailing backslash")
            return source[j + 1], j + 2
        if in_group and c in "{},":
            raise malformed(f"unescaped {c!r} inside '{{...}}'")
        return c, j + 1

    j = start + 1
    negated = j < n and source[j] in "^!"
    if negated:
        j += 1
    if j >= n:
        raise malformed("no closing ']'")
    if source[j] == "]":
        raise malformed("nothing")
    ranges: list[tuple[str, str]] = []
    last: str | None = None  # the previous single character, which a "-" may extend into a range
    while True:
        if j >= n:
            raise malformed("no closing ']'")
        c = source[j]
        if c == "]":
            return (_CLASS, negated, tuple(ranges)), j + 1
        if c == "-" and last is not None and j + 1 < n and source[j + 1] != "]":
            high, j = read_char(j + 1)
            ranges.append((last, high))
            last = None
            continue
        c, j = read_char(j)
        ranges.append((c, c))
        last = c


def _classify_double_star(prog: list[_Instruction], pc: int) -> _Instruction:
    """Decide what follows the "**" at pc: an unescaped "/", the end of the pattern, or other."""
    nxt = pc + 1
    while prog[nxt][0] == _JMP:
        nxt = prog[nxt][1]
    instruction = prog[nxt]
    if instruction[0] == _END:
        return (_DSTAR, _F_END, 0)
    if instruction[0] == _CHAR and instruction[2]:
        return (_DSTAR, _F_SLASH, nxt + 1)
    return (_DSTAR, _F_OTHER, 0)


def _empty_rest_table(prog: list[_Instruction], allowed: frozenset[_Rest]) -> list[bool]:
    """For each pc: may the pattern from pc on match the empty string once the path is used up?

    ``allowed`` is the set of rests (as token kinds) that may; the program only jumps forwards, so
    one pass from the end computes, for each pc, the token-kind prefixes with which the text from
    pc on completes an allowed rest.
    """
    prefixes = frozenset(rest[:i] for rest in allowed for i in range(len(rest) + 1))
    ok: list[frozenset[_Rest]] = [frozenset()] * len(prog)
    for pc in range(len(prog) - 1, -1, -1):
        instruction = prog[pc]
        op = instruction[0]
        if op == _END:
            ok[pc] = allowed
        elif op == _JMP:
            ok[pc] = ok[instruction[1]]
        elif op == _SPLIT:
            ok[pc] = frozenset({()}) if any(() in ok[t] for t in instruction[1]) else frozenset()
        else:
            if op == _STAR:
                kind = _K_STAR
            elif op == _DSTAR:
                kind = _K_DSTAR
            elif op == _CHAR and instruction[2]:
                kind = _K_SLASH
            else:
                ok[pc] = frozenset()
                continue
            ok[pc] = frozenset(p for p in prefixes if (*p, kind) in ok[pc + 1])
    return [() in seen for seen in ok]


class _DfaState:
    __slots__ = ("accepting", "live", "nfa_states", "transitions")

    def __init__(self, nfa_states: frozenset[_State], accepting: bool) -> None:
        self.nfa_states = nfa_states  # the NFA states that can consume the next character
        self.live = bool(nfa_states)
        self.accepting = accepting  # the path may end here
        self.transitions: dict[str, _DfaState] = {}


class _Automaton:
    """The compiled matcher of one (lowercased, well-formed) pattern."""

    def __init__(self, prog: list[_Instruction]) -> None:
        self.prog = prog
        self.empty_rest = _empty_rest_table(prog, _EMPTY_RESTS)
        self.empty_rest_mid_segment = _empty_rest_table(prog, _EMPTY_RESTS_MID_SEGMENT)
        self._cache: dict[frozenset[_State], _DfaState] = {}
        self._cache_size = 0  # NFA states held by the cache, keys and values
        self.start = _DfaState(self._closure([(0, _AT, True)]), accepting=False)

    @property
    def cached_states(self) -> int:
        return len(self._cache)

    def matches(self, path: str) -> bool:
        state = self.start
        for ch in path:
            if not state.live:
                return False
            nxt = state.transitions.get(ch)
            if nxt is None:
                nxt = self._advance(state, ch)
            state = nxt
        return state.accepting

    def _advance(self, state: _DfaState, ch: str) -> _DfaState:
        reached = self._step(state.nfa_states, ch)
        nxt = self._cache.get(reached)
        if nxt is None:
            nxt = _DfaState(self._closure(reached), self._may_end(reached))
            size = len(reached) + len(nxt.nfa_states)
            if len(self._cache) >= _DFA_CACHE_LIMIT or self._cache_size + size > _DFA_CACHE_BUDGET:
                return nxt  # enough cached: keep working, stop remembering
            self._cache[reached] = nxt
            self._cache_size += size
        if len(state.transitions) < _TRANSITIONS_LIMIT:
            state.transitions[ch] = nxt
        return nxt

    def _closure(self, states: Iterable[_State]) -> frozenset[_State]:
        """Follow every move that consumes nothing; keep the states that consume a character."""
        prog = self.prog
        consuming: set[_State] = set()
        seen: set[_State] = set()
        todo = list(states)
        while todo:
            state = todo.pop()
            if state in seen:
                continue
            seen.add(state)
            pc, sub, sos = state
            if sub == _AT:
                instruction = prog[pc]
                op = instruction[0]
                if op in (_CHAR, _ANY, _CLASS):
                    consuming.add(state)
                elif op == _STAR:
                    todo.append((pc, _BODY, False))
                elif op == _DSTAR:
                    follow = instruction[1]
                    if sos and follow == _F_SLASH:
                        todo.append((pc, _GLOOP, False))
                    elif sos and follow == _F_END:
                        todo.append((pc, _GALL, False))
                    else:
                        todo.append((pc, _BODY, False))
                elif op == _SPLIT:
                    todo.extend((start, _AT, sos) for start in instruction[1])
                elif op == _JMP:
                    todo.append((instruction[1], _AT, sos))
                # _END consumes nothing and leads nowhere.
            elif sub == _BODY:
                consuming.add(state)
                todo.append((pc + 1, _AT, False))  # the star matched all it will
            elif sub == _GLOOP:
                consuming.add(state)
                todo.append((prog[pc][2], _AT, True))  # no more segments; skip the pattern's "/"
            else:  # _GMID, _GALL
                consuming.add(state)
        return frozenset(consuming)

    def _step(self, states: frozenset[_State], ch: str) -> frozenset[_State]:
        """The states reached by consuming ch, before any move that consumes nothing."""
        prog = self.prog
        reached: set[_State] = set()
        for state in states:
            pc, sub, _sos = state
            if sub == _AT:
                instruction = prog[pc]
                op = instruction[0]
                if op == _CHAR:
                    if ch == instruction[1]:
                        reached.add((pc + 1, _AT, ch == "/"))
                elif ch != "/" and (
                    op == _ANY or any(lo <= ch <= hi for lo, hi in instruction[2]) != instruction[1]
                ):
                    reached.add((pc + 1, _AT, False))
            elif sub == _BODY:
                if ch != "/":
                    reached.add(state)
            elif sub == _GALL:
                reached.add(state)
            else:  # _GLOOP, _GMID
                reached.add((pc, _GLOOP if ch == "/" else _GMID, False))
        return frozenset(reached)

    def _may_end(self, reached: frozenset[_State]) -> bool:
        """Whether the path may end right after the character that led to these states."""
        for pc, sub, sos in reached:
            if sub == _AT:
                if (self.empty_rest if sos else self.empty_rest_mid_segment)[pc]:
                    return True
            elif sub == _BODY:
                if self.empty_rest_mid_segment[pc + 1]:
                    return True
            elif sub == _GLOOP:
                if self.empty_rest[self.prog[pc][2]]:
                    return True
            elif sub == _GALL:
                return True
        return False


def _literal_text(prog: list[_Instruction]) -> str | None:
    """The text a pattern without any metacharacter stands for, or None."""
    if all(instruction[0] in (_CHAR, _END) for instruction in prog):
        return "".join(instruction[1] for instruction in prog[:-1])
    return None


@attrs.frozen
class PathPattern:
    """A compiled path pattern; ``PathPattern(source)`` and :meth:`compile` both validate it."""

    source: str = attrs.field(validator=attrs.validators.instance_of(str))
    _literal: str | None = attrs.field(init=False, repr=False, eq=False, hash=False)
    _automaton: _Automaton | None = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        prog = _parse(self.source.lower())
        literal = _literal_text(prog)
        object.__setattr__(self, "_literal", literal)
        object.__setattr__(self, "_automaton", None if literal is not None else _Automaton(prog))

    @property
    def literal(self) -> str | None:
        """The one (lower-case) path this pattern matches when it has no metacharacters, else None."""
        return self._literal

    @classmethod
    def compile(cls, pattern: str) -> PathPattern:
        """Compile ``pattern``; raise :class:`PatternError` if it is malformed."""
        return cls(pattern)

    def matches(self, path: str) -> bool:
        """Whether ``path`` (a repository path after the namespace) matches, ignoring case."""
        if not path or path.startswith("/"):
            return False
        path = path.lower()
        if self._literal is not None:
            return path == self._literal
        assert self._automaton is not None
        return self._automaton.matches(path)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> PathPattern | None:
    try:
        return PathPattern.compile(pattern)
    except PatternError:
        return None


def match(pattern: str, path: str) -> bool:
    """Whether ``path`` matches ``pattern``; a malformed pattern matches nothing."""
    compiled = _compiled(pattern)
    return compiled is not None and compiled.matches(path)
