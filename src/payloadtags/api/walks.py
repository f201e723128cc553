"""Tag lists a paginated walk has read and not finished showing, kept briefly for its next pages.

distribution 2.8 answers tags/list whole (it ignores ``n`` and ``last``), so a page that resumes inside
a repository would read that repository's whole list again, and a page that ends at the end of one
reads the next ones only to learn whether the list goes on. Kept here per walk, those lists are read
once per walk: the continue token carries a random walk id, and a continued page takes the lists its
walk read before instead of reading them again (docs/api.md, "List options"). The catalog names a page
read past its end are kept too, so the next page does not seek the catalog again while they last.

What a walk keeps is kept per token: for the token a page hands out, what the next page starts from;
for the token the page was asked with, every list and catalog name that page used, so that the same
token given again (a retry, a dry run followed by the same deletecollection) selects the same tags.
Earlier tokens' are dropped.

Only registry data is kept (whole tag lists); access and selectors are applied on every page. Entries
are keyed by the caller's identity (the whole `UserInfo`, compared by value) as well as the walk id, so
nothing is shared between identities, and bound to the list the walk lists (`Listed`): another list's
token naming the walk does not get them. A walk is dropped when it was not continued for ``ttl``
seconds, and when all walks together hold more than ``max_bytes`` (the memory the names take,
`kept_size`, and the identities and users their keys hold, `_Identity`, `_User`): first the walks of
users who hold more than a ``1/FAIR_SHARE`` of it in two walks or more, each such user's least
recently continued first, the one least recently continued of them first; then, least recently
continued first, any. A user is a user name and uid, as kube-apiserver names them, whatever the
groups and extra of each of its identities (a bound service-account token's extra differs per token
and per pod). So many walks of one user make that user's walks go, not other users'. Once its last
page is served a walk keeps only what that page used. A page that finds nothing kept (dropped,
another replica, a restart, an older token) reads the registry, as a first page does.
"""

from __future__ import annotations

import math
import re
import secrets
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from operator import itemgetter

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from payloadtags.identity import UserInfo
from payloadtags.inventory import CatalogRest
from payloadtags.names import TagRef
from payloadtags.registry.taglist import TagList

# A walk id: random, URL-safe, carried in the (opaque) continue token; 12 random bytes in base64, the
# same length whoever mints it. A token's id is the walk's key from then on, counted at this length
# (`_WALK`): one of another length, which only a forged token carries, is malformed.
WALK_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
WALK_ID_BYTES = 12
WALK_ID_LENGTH = 16

# kubectl asks for the next page as soon as it has the previous one; a minute covers a slow client
# and costs at most the bound below.
DEFAULT_TTL = 60.0
# What all walks together may keep, counted by `kept_size`. The count follows CPython's objects, each
# counted once per walk however many of the walk's tokens hold it (see `_measure`), so it is the memory
# dropping the walks frees: measured with tracemalloc (tests/unit/test_walks_memory*.py) for first and
# continued pages, short and 210-character repository names, long tag lists, tags that are not ASCII
# and repositories with no tag left, within 5% (docs/api.md, "List options").
DEFAULT_MAX_BYTES = 32 << 20

# CPython's per-object sizes (64-bit): an ASCII string's header (its characters come on top), and a
# catalog entry: a tuple of three strings (repository, namespace, path), each made for the walk.
_STR = sys.getsizeof("")
_ENTRY = sys.getsizeof(tuple(range(3))) + 3 * _STR
# A tag list of this many tags or more is measured once, when a page first keeps it, and its measure
# remembered with the walk: a walk through a 300,000-tag repository keeps its list (the same tuple) for
# every page, and measuring it again on each cost milliseconds a page, seconds a walk. A shorter one is
# measured again on each page that keeps it (a few dozen lengths): remembering it would cost about as
# much memory as the list itself. The tuple of catalog names a walk's rests are cut from is
# remembered whatever its length: its pages keep the same one until they have gone through half of
# it, and measuring it on each page was 14% of a served page's CPU (issue #11).
_REMEMBERED_FROM = 64
# What remembering a measure costs, counted with the walk: the entry (a tuple of the object, its bytes,
# its names and a tuple of catalog entries' index), its key (the object's id) and its dict slot.
_REMEMBERED = sys.getsizeof((0, 0, 0, None)) + 3 * sys.getsizeof(1 << 40) + 6 * 8
# Past ``max_bytes``, the walks of a user (a name and uid, `_User`) who holds more than this fraction of
# it in two walks or more go first (`WalkCache._victim`): one user's many walks (each list a walk, kept
# a minute) evict that user's own, not other users'. A user's one walk, however large, is evicted as
# anyone's.
FAIR_SHARE = 4
# How many walks may be counted by their bound (`_bound`) rather than measured (`WalkCache._pending`):
# the last page's, whose walk's next page (kubectl's, at once) replaces it unmeasured. Each other
# page's keep measures at most this many walks besides its own, however many the cache holds: when
# all could wait for the bound to reach ``max_bytes``, the page that took it there measured every walk
# kept since (review-walks8 F1: 12,047 walks, 2 s on the reactor thread at the default bound).
_PENDING_MAX = 1
# A tag of one character inside a tag list's lines (`_list_size`).
_ONE_CHARACTER_LINE = re.compile("\n.\n")


def new_walk_id() -> str:
    return secrets.token_urlsafe(WALK_ID_BYTES)


def is_walk_id(text: object) -> bool:
    # Checked on every continued page: stripping the alphabet runs in C, a test per character does not.
    return isinstance(text, str) and len(text) == WALK_ID_LENGTH and not text.strip(WALK_ID_ALPHABET)


@attrs.frozen
class Listed:
    """The list a walk walks: the scope its tokens carry ("" for all namespaces) and the namespace its
    pages read (None: all; a metadata.namespace selector pins one in an all-namespaces list). Registry
    data kept for one list serves no other: the catalog names of an all-namespaces walk are not a
    namespace's. The other selectors are applied on every page, so they may change between pages."""

    scope: str
    namespace: str | None


class Reported(weakref.ref):  # type: ignore[type-arg]
    """Where a page reported every one of the lists it kept (the version source's callable: the watch
    hub's record, or a watched scope's reporter of the resourceVersion), held weakly: the walk holds
    nothing of the hub's. A watched scope's source keeps the reporters of its last 64 versions; a walk
    holding one of another version held it alone, uncounted (review-walks6 F2). Dead, it reports to
    no one: the page reports the lists again, to whatever takes them now. Of a class of its own, so
    that each is its walk's own object (CPython gives everyone one plain `weakref.ref` of an object),
    counted with the walk (`_REPORTED`)."""

    __slots__ = ()


@attrs.frozen
class Kept:
    """What a walk kept for the page that continues from one of its tokens."""

    lists: Mapping[str, Sequence[str]]
    # The catalog names read past the repository the token points into (`inventory.Page.rest`).
    rest: CatalogRest | None = None
    # Where the page that kept them reported every one of the lists, or None.
    reported_to: Reported | None = None


@attrs.define(eq=False)
class _Walk:
    listed: Listed
    # By the last key of the token that continues from them: the one its last page was asked with and
    # the one that page handed out.
    kept: dict[TagRef, Kept]
    # Bytes: `kept_size` once measured, until then an upper bound of it (`_bound`).
    size: int
    names: int
    touched: float
    # The measures of its longer tag lists and of its rests' names, for its next page (`_measure`).
    measured: Measured = attrs.field(factory=dict)
    # The key its last page was asked with, for its exact measure; None when ``kept`` keeps nothing
    # for it (nothing of that page's, or too much for both tokens).
    asked: TagRef | None = None
    # Its key in the cache (the tuple the cache holds), which its identity's keys hold too.
    key: tuple[UserInfo, str] = attrs.field(kw_only=True)


@attrs.define(eq=False)
class _User:
    """A user as kube-apiserver names them, by name and uid, whatever the groups and extra of each
    request (a bound service-account token's extra differs per token and per pod): the walks of all its
    identities, for the fair share (`WalkCache._victim`). Counted with its first identity, whose name
    and uid strings its key holds (counted here, not with that identity), and freed with its last."""

    key: tuple[str, str]
    identities: int
    size: int
    # Its walks' keys (the cache's own tuples), least recently continued first, and the bytes they count
    # (their sizes: exact, or bounds while pending).
    keys: dict[tuple[UserInfo, str], None] = attrs.field(factory=dict)
    held: int = 0


@attrs.define(eq=False)
class _Identity:
    """A caller's identity as the walks' keys hold it: one `UserInfo` per identity, however many walks it
    has and whichever request's object each page came with (every authenticator makes one per
    request), counted once, with the first walk that holds it, and freed with the last."""

    who: UserInfo
    walks: int
    size: int
    user: _User


# What a user costs the cache besides its name and uid strings: its `_User`, its size and the bytes its
# walks hold (ints), its key (a tuple of two) and its slot in the dict of users, and its dict of keys as
# it is with one key (the further keys are counted with their walks, `_KEY`).
_USER = (
    sys.getsizeof(_User(("", ""), 0, 0))
    + 2 * sys.getsizeof(1 << 20)
    + sys.getsizeof(("", ""))
    + 3 * 8
    + sys.getsizeof(dict.fromkeys(range(1)))
)
# What an identity costs the cache besides its record and strings: its `_Identity`, its size (an int)
# and its slot in the dict of identities.
_IDENTITY = (
    sys.getsizeof(_Identity(UserInfo(""), 0, 0, _User(("", ""), 0, 0))) + sys.getsizeof(1 << 20) + 3 * 8
)
# A walk's key in its user's dict of keys, a table slot and an entry, the table grown as a dict grows
# (2/3 full at most): from 27 to 54 bytes a key, measured with sys.getsizeof.
_KEY = 40


def identity_size(who: UserInfo) -> int:
    """The memory ``who`` takes (its record, its strings and the tuples that hold them) and its entry
    in the cache, with its user's (`_User`) when it is its user's first identity. A string shared with
    others (a group constant, a string of one character) is counted all the same: more than is freed,
    never less."""
    return _identity_size(who, (who.name, who.uid)) + _user_size(who)


def _user_size(who: UserInfo) -> int:
    return _USER + sum(sys.getsizeof(string) for string in (who.name, who.uid) if len(string) > 1)


def _identity_size(who: UserInfo, user: tuple[str, str]) -> int:
    """``identity_size`` without its user's: its name and uid strings only where they are not those of
    its user's key ``user`` (counted with the user: the first identity's, which outlive it)."""
    strings = [string for string, users in zip((who.name, who.uid), user, strict=True) if string is not users]
    strings += who.groups
    size = sys.getsizeof(who) + (sys.getsizeof(who.groups) if who.groups else 0)
    if who.extra:
        size += sys.getsizeof(who.extra)
        for key, values in who.extra:
            size += sys.getsizeof((key, values)) + (sys.getsizeof(values) if values else 0)
            strings += (key, *values)
    return size + _IDENTITY + sum(sys.getsizeof(string) for string in strings if len(string) > 1)


Key = tuple[UserInfo, str]
# What a walk costs besides what it keeps and the keys of its tokens (counted with it, `_measure`): its
# record, the time it was last continued and its size, its dict by token and its dict of measures, its
# `Listed`, its key in the cache (a tuple and the walk id) and in its identity's keys. About 650 bytes.
_WALK = (
    sys.getsizeof(_Walk(Listed("", None), {}, 0, 0, 0.0, key=(UserInfo(""), "")))
    + sys.getsizeof(0.0)
    + sys.getsizeof(1 << 20)
    + sys.getsizeof({})
    + sys.getsizeof(dict.fromkeys(range(2)))
    + sys.getsizeof(Listed("", None))
    + sys.getsizeof((None, None))
    + _STR
    + WALK_ID_LENGTH
    + _KEY
)
# A page's `Reported`, which both its tokens' `Kept` hold.
_REPORTED = sys.getsizeof(Reported(new_walk_id))
Entry = tuple[str, str, str]
# A tuple of catalog entries' entries by repository (`_index`).
Index = dict[str, Entry]
# A remembered measure of a tag list or a tuple of catalog entries, by its id(): the object itself
# (held, so that the id names no other object while the entry lasts), its bytes and its names, and for
# a tuple of catalog entries its `Index` (counted in its bytes), made once for the walk's pages.
Measure = tuple[object, int, int, Index | None]
Measured = dict[int, Measure]
# The index of a tag list's measure that is an upper bound of its bytes (`_bound`), not its measure.
_LOOSE: Index = {}


def kept_size(kept: Mapping[TagRef, Kept], asked: TagRef | None = None) -> tuple[int, int]:
    """The memory what a walk keeps by its tokens' last keys takes (bytes), and how many tags and
    catalog names it is. ``asked``: the key decoded from the token its last page was asked with."""
    size, names, _ = _measure(kept, asked, {})
    return size, names


def _measure(
    kept: Mapping[TagRef, Kept], asked: TagRef | None, before: Measured, listed: Listed | None = None
) -> tuple[int, int, Measured]:
    """`kept_size`, and the measures to remember with the walk (tag lists of `_REMEMBERED_FROM` tags or
    more and the tuples of catalog names its rests are cut from, counted with it). An object in
    ``before`` (remembered for the walk's previous page: the same object) is not measured again, so a
    page's keep costs what the page brought (the lists it read, the mappings it made, the catalog
    names it read), not the tags and names its walk keeps from earlier pages.

    Every object is counted once per walk, however many of its tokens hold it: a page takes its lists
    from the one token's and keeps them for the other's (the same tuples), the catalog rests a page
    keeps for both tokens are cut from one tuple of entries (`inventory.CatalogCursor.rests`), and a
    mapping's key is the string of a catalog entry. What is distinct is counted each: every repository
    a mapping names (its key string, its slot) even when all share one tag list, as the ``()`` of
    every repository with no tag left does. Repository names are ASCII (the grammar every catalog
    entry is checked for), a byte a character; a tag may not be (the registry client hands out every
    tag the registry lists), nor a catalog name a rest holds where the catalog goes on: a list with a
    tag that is not ASCII, and each such string, is counted as CPython counts it (review-walks12 L2:
    up to 2.5 times the memory an ASCII count gave). Whether a string is an entry's is looked up in
    the entries' index by its repository (made once per tuple of entries and remembered with the
    walk, `_entries_size`): a string is not counted twice, and no set of all their strings is made
    per page.

    The keys count too, each string once: the asked one is decoded from its token (the `TagRef` and
    its three strings are the walk's alone), a handed one is cut from the page's last entry (its
    namespace and path strings, which the next page's keys go on holding) and its tag is a string of
    the tag list its token keeps, unless that repository was shown to its end. So does a catalog
    rest's ``after`` (made from a key for each rest), ``last`` (where the catalog goes on, an
    entry's repository string or one the walk alone holds) and ``top`` (likewise). A walk of a few
    short tag lists under long names keeps as much in these as in its lists.

    And the namespaces of the list: its `Listed`'s (its last page's) scope and namespace, and each
    rest's namespace (the page's that made it). Each is a string of that request's own, its URL's
    or its metadata.namespace selector's value, that no key or catalog entry holds (the tokens
    decoded keep copies of their own, api/continuation.py); the one of every page, counted once."""
    size = _WALK
    mappings: dict[int, Mapping[str, Sequence[str]]] = {}
    rests: dict[int, CatalogRest] = {}
    reported: set[int] = set()
    for one in kept.values():
        size += sys.getsizeof(one)
        mappings.setdefault(id(one.lists), one.lists)
        if one.rest is not None:
            rests.setdefault(id(one.rest), one.rest)
        if one.reported_to is not None and id(one.reported_to) not in reported:
            reported.add(id(one.reported_to))
            size += _REPORTED
    counted: Measured = {}  # tag lists and tuples of entries, by id
    entries: list[Index] = []
    for rest in rests.values():
        size += sys.getsizeof(rest)
        shared = _count_rest(rest, before, counted)
        if shared is not None:
            entries.append(shared)
    # The strings counted so far that are no entry's, by the object.
    strings: set[int] = set()
    for mapping in mappings.values():
        size += sys.getsizeof(mapping)  # its table: a slot per repository
        for repository, tags in mapping.items():
            if id(repository) not in strings and not _an_entrys(entries, repository, repository, 0):
                strings.add(id(repository))
                size += _STR + len(repository)
            if id(tags) not in counted:
                counted[id(tags)] = _known(before, tags) or (tags, *_list_size(tags), None)
    # Strings besides: each with the repository of the entry it may be a string of (and which), or None.
    loose: list[tuple[str | None, str | None, int]] = []
    for rest in rests.values():
        # ``after`` is made for the rest (`TagRef.repository`): no entry's.
        # ``namespace`` is the one its page read: that request's own string (the URL's, or a
        # metadata.namespace selector's value), no entry's; each page's may be another string.
        loose += (
            (rest.after, None, 0),
            (rest.last, rest.last, 0),
            (rest.top, rest.top, 0),
            (rest.namespace, None, 0),
        )
    if listed is not None:
        loose += ((listed.scope, None, 0), (listed.namespace, None, 0))
    for ref, one in kept.items():
        size += sys.getsizeof(ref)
        # The asked key's strings are decoded from its token: the walk's alone.
        cut_from = None if ref is asked else f"{ref.namespace}/{ref.repository_path}"
        loose += ((ref.namespace, cut_from, 1), (ref.repository_path, cut_from, 2))
        if ref is asked or ref.repository not in one.lists:
            loose.append((ref.tag, None, 0))
    for string, cut_from, index in loose:
        # A string of one character is CPython's own (shared, never freed), as the empty one.
        if (
            string is not None
            and len(string) > 1
            and id(string) not in strings
            and (cut_from is None or not _an_entrys(entries, string, cut_from, index))
        ):
            strings.add(id(string))
            # One that is not ASCII takes more than a byte a character (sys.getsizeof: thrice the time).
            size += _STR + len(string) if string.isascii() else sys.getsizeof(string)
    counted_size, names, measured = _remembered(counted)
    return size + counted_size, names, measured


def _bound(kept: Mapping[TagRef, Kept], before: Measured, listed: Listed) -> tuple[int, int, Measured]:
    """An upper bound of `_measure`'s bytes, its names (exact) and the measures it remembers (the
    same), without its look at which strings are whose: every string a key, a mapping or a rest
    holds is counted as if it were the walk's own, each time it is held. A page's keep counts this
    much (issue #11: the strings' look was most of a page's keep, and the walk's next page replaces
    what it counted before anyone reads it); the exact measure is made by the next page of another
    walk, or when the bound comes over ``max_bytes`` or the cache's size is read (`WalkCache._fit`).
    The catalog names a page brought are measured here as `_measure` does, its tag lists bounded
    (`_list_bound`), and either remembered as `_measure` remembers them (a bound until the exact
    measure replaces it)."""
    # A string's size taken as CPython gives it (at least what `_measure` counts it), not its length.
    size = _WALK + _str_size(listed.scope) + _str_size(listed.namespace)
    counted: Measured = {}
    mapping_ids: list[int] = []
    rest_ids: list[int] = []
    for ref, one in kept.items():
        size += (
            sys.getsizeof(one)
            + (_REPORTED if one.reported_to is not None else 0)  # each token's, the page's one
            + sys.getsizeof(ref)
            + sys.getsizeof(ref.namespace)
            + sys.getsizeof(ref.repository_path)
            + sys.getsizeof(ref.tag)
        )
        rest = one.rest
        if rest is not None and id(rest) not in rest_ids:
            rest_ids.append(id(rest))
            size += sys.getsizeof(rest) + sys.getsizeof(rest.after) + _str_size(rest.namespace)
            size += _str_size(rest.last) + _str_size(rest.top)
            _count_rest(rest, before, counted)
        mapping = one.lists
        if id(mapping) in mapping_ids:
            continue
        mapping_ids.append(id(mapping))
        size += sys.getsizeof(mapping) + sum(map(sys.getsizeof, mapping))
        for tags in mapping.values():
            if id(tags) not in counted:
                known = before.get(id(tags))  # exact or a bound
                counted[id(tags)] = (
                    known
                    if known is not None and known[0] is tags
                    else (tags, _list_bound(tags), len(tags), _LOOSE)
                )
    counted_size, names, measured = _remembered(counted)
    return size + counted_size, names, measured


def _count_rest(rest: CatalogRest, before: Measured, counted: Measured) -> Index | None:
    """A rest's tuples of catalog names counted into ``counted`` (each once, by id; the tuple it shares
    with the walk's other rests measured as ``before`` remembers it, else anew), as `_measure` and
    `_bound` both count them: the index of the shared one's entries when this counted it, else None."""
    if rest.guessed and id(rest.guessed) not in counted:  # its strings are entries'
        counted[id(rest.guessed)] = (rest.guessed, sys.getsizeof(rest.guessed), 0, None)
    # No names (a page that ended in the namespace's last repository): the one empty tuple, never
    # freed, and no index of them kept.
    if not rest.shared or id(rest.shared) in counted:
        return None
    measure = counted[id(rest.shared)] = _known(before, rest.shared) or _entries_size(rest.shared)
    return measure[3]  # always an index: made by `_entries_size`


def _remembered(counted: Measured) -> tuple[int, int, Measured]:
    """The bytes and names of the objects counted, and those of their measures a walk remembers for
    its next page (counted with them): tag lists of `_REMEMBERED_FROM` tags or more (exact, or a
    bound), and the tuples of catalog entries its rests are cut from (those with an index of their
    entries, which only `_entries_size` makes)."""
    size = names = 0
    measured: Measured = {}
    for key, one in counted.items():
        size += one[1]
        names += one[2]
        if one[2] >= _REMEMBERED_FROM or (one[3] is not None and one[3] is not _LOOSE):
            measured[key] = one
    return size + len(measured) * _REMEMBERED, names, measured


def _str_size(string: str | None) -> int:
    return 0 if string is None else sys.getsizeof(string)


def _an_entrys(entries: Sequence[Index], string: str, repository: str, index: int) -> bool:
    """Whether ``string`` is the string at ``index`` (0: the repository, 1: its namespace, 2: its path)
    of the entry of ``repository`` in any of them."""
    for one in entries:  # one or two: a loop, no generator per string
        found = one.get(repository)
        if found is not None and found[index] is string:
            return True
    return False


_FIRST = itemgetter(0)


def _entries_size(entries: tuple[Entry, ...]) -> Measure:
    """A tuple of catalog entries measured: the tuple, its entries and their strings, how many, and
    its entries by repository, counted with them. The index is made once for the walk's pages (which
    keep the same tuple until they have gone through half of it) and remembered with the measure, so
    that a page looks up the few strings it asks about (`_an_entrys`) in a dict rather than making
    and bisecting the catalog order per page (12% of a page's keep; issue #11)."""
    # Reversed: a name listed twice (which a catalog does not do) is found first, as a search would.
    index = dict(zip(map(_FIRST, reversed(entries)), reversed(entries), strict=True))
    size = (
        sys.getsizeof(entries)
        + len(entries) * _ENTRY
        + sum(map(len, chain.from_iterable(entries)))
        + sys.getsizeof(index)
    )
    return entries, size, len(entries), index


def _known(before: Measured, what: object) -> Measure | None:
    """The exact measure of ``what`` remembered in ``before``, or None."""
    known = before.get(id(what))
    return known if known is not None and known[0] is what and known[3] is not _LOOSE else None


def _list_bound(tags: Sequence[str]) -> int:
    # `_list_size`'s bytes or more: every tag counted as a string of its own (one of a character, which
    # CPython shares, too), with no look for them (half of the measure, issue #11).
    if not tags:
        return 0
    if isinstance(tags, TagList):
        return tags.held()
    joined = "".join(tags)
    if not joined.isascii():  # a flag of the string's, not a scan
        return _strings_size(tags)
    return sys.getsizeof(tags) + len(tags) * _STR + len(joined)


def _strings_size(tags: Sequence[str]) -> int:
    """A tag list with a tag that is not ASCII, as CPython counts it: such a string's header is longer
    (73 to 76 bytes) and its characters take 1, 2 or 4 bytes each, by the widest. Its tags of one
    character, which CPython may share, are counted too: more than is freed, never less."""
    return sys.getsizeof(tags) + sum(map(sys.getsizeof, tags))


def _list_size(tags: Sequence[str]) -> tuple[int, int]:
    if not tags:
        return 0, 0  # the one empty tuple, never freed (an empty list is a few dozen bytes)
    if isinstance(tags, TagList):  # its tags as blocks of text: no str of their own
        return tags.held(), len(tags)
    # One pass over the tags, in C (a length per tag took twice as long, issue #11): their characters
    # are the joined text's less the separators, and a tag of one character (rare) is a line of one.
    joined = "\n".join(tags)
    if not joined.isascii():
        return _strings_size(tags), len(tags)
    if len(tags[0]) > 1 and len(tags[-1]) > 1 and _ONE_CHARACTER_LINE.search(joined) is None:
        return sys.getsizeof(tags) + len(tags) * _STR + len(joined) - (len(tags) - 1), len(tags)
    lengths = list(map(len, tags))
    # A tag of one character is CPython's own string (shared by all who make it, never freed).
    own = len(lengths) - lengths.count(1)
    return sys.getsizeof(tags) + own * _STR + sum(lengths) - (len(lengths) - own), len(tags)


@attrs.define(eq=False)
class WalkCache:
    clock: IReactorTime
    max_bytes: int = DEFAULT_MAX_BYTES
    ttl: float = DEFAULT_TTL
    # Told of each continued page's lookup: True when its walk's lists were found (metrics).
    on_lookup: Callable[[bool], None] | None = None
    _walks: OrderedDict[Key, _Walk] = attrs.field(factory=OrderedDict)  # least recently used first
    # The identities the walks' keys hold, each the one object all its walks' keys hold (`_Identity`).
    _identities: dict[UserInfo, _Identity] = attrs.field(factory=dict)
    # Bytes kept, all walks and the identities and users they hold: the walks' exact measures
    # (`kept_size`) and, for those in ``_pending``, their upper bounds (`_bound`). `size` is the exact
    # count.
    _size: int = 0
    # The walks whose size is their bound, the one kept first first: at most `_PENDING_MAX` between
    # pages (`_fit`), so that no page measures more than a few walks.
    _pending: dict[Key, None] = attrs.field(factory=dict)
    names: int = 0  # tags and catalog names kept, all walks (metrics)
    # The users (`_User`) of the identities, by name and uid.
    _users: dict[tuple[str, str], _User] = attrs.field(factory=dict)
    # The users with two walks or more that hold more than their share (`_place`): a few at most.
    _over: dict[_User, None] = attrs.field(factory=dict)
    # At most the oldest walk's ``touched`` (inf: none was kept since the cache emptied): an
    # `_expire` before it is due looks at no walk (each page made two, issue #11).
    _oldest: float = math.inf
    _sweep: LoopingCall | None = None

    @property
    def size(self) -> int:
        """The bytes kept, all walks (`kept_size`) and the identities they hold."""
        while self._pending:  # `_PENDING_MAX` walks at most
            self._settle()
        return self._size

    def run(self) -> None:
        """Frees abandoned walks within ``ttl`` and a half, also when no list comes to notice them."""
        self._sweep = LoopingCall(self._expire)
        self._sweep.clock = self.clock
        self._sweep.start(self.ttl / 2, now=False)

    def stop(self) -> None:
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None

    def __len__(self) -> int:
        return len(self._walks)

    def continued(
        self, who: UserInfo, walk: str, listed: Listed, at: TagRef
    ) -> tuple[Listed | None, Kept | None]:
        """A continued page's look, in one (issue #11): the list ``who``'s walk ``walk`` keeps data for
        (None when it keeps none), and what it kept for the page after ``at`` (the token's last key)
        when that list is ``listed``, else None. A walk of another scope than ``listed``'s (its token is
        another list's: the caller refuses it) tells no lookup; any other look tells whether it found
        the page's lists, and one that did restarts the walk's ttl."""
        self._expire()
        key = (who, walk)
        entry = self._walks.get(key)
        if entry is None:
            kept = None
        else:
            if entry.listed.scope != listed.scope:
                return entry.listed, None
            kept = entry.kept.get(at) if entry.listed == listed else None
            if kept is not None:
                entry.touched = self._touch()
                self._walks.move_to_end(key)
                # Its user's least recently continued first too, under the cache's own key.
                own = self._identities[key[0]].user.keys
                del own[entry.key]
                own[entry.key] = None
        if self.on_lookup is not None:
            self.on_lookup(kept is not None)
        return (entry.listed if entry is not None else None), kept

    def keep(
        self,
        who: UserInfo,
        walk: str,
        listed: Listed,
        asked: tuple[TagRef, Kept] | None,
        handed: tuple[TagRef, Kept] | None,
    ) -> None:
        """What the walk keeps after a page: for the token it was asked with (``asked``: its last key
        and what the page used; None for a first page) and for the one it handed out (``handed``;
        None when it was the walk's last). Replaces what the walk kept before."""
        # Taken before the walk's old entry is dropped: the identity stays, not measured again. The
        # page's entry takes this hold over (`_keep`); none kept, it is released.
        identity = self._hold(who)
        key = (identity.who, walk)
        before: Measured = {}
        old = self._walks.pop(key, None)
        if old is not None:
            before = old.measured
            self._forget(key, old, identity)  # the one its key holds: equal identities share it
        self._expire()
        held = False
        try:
            held = self._keep(key, listed, asked, handed, before)
        finally:
            if not held:
                self._release(identity)
        # Once the entry holds the identity: should a measure raise here, its hold stays its own.
        if held:
            self._fit()

    def _keep(
        self,
        key: Key,
        listed: Listed,
        asked: tuple[TagRef, Kept] | None,
        handed: tuple[TagRef, Kept] | None,
        before: Measured,
    ) -> bool:
        """Whether the walk's entry was made, holding ``key``'s identity (the caller's hold); counted,
        not yet fitted within ``max_bytes`` (`_fit`)."""
        kept: dict[TagRef, Kept] = {}
        if asked is not None and (asked[1].lists or asked[1].rest):
            kept[asked[0]] = asked[1]
        if handed is not None and (handed[1].lists or handed[1].rest):
            kept[handed[0]] = handed[1]
        at = asked[0] if asked is not None else None
        # Measured exactly only where the bound might decide (the exact measure is at most the bound).
        size, names, measured = _bound(kept, before, listed)
        exact = size > self.max_bytes
        if exact:
            size, names, measured = _measure(kept, at, measured, listed)
        if size > self.max_bytes and handed is not None and handed[0] in kept:
            # Too much for both: the next page's come first, a repeated page reads the registry.
            kept = {handed[0]: handed[1]}
            size, names, measured = _measure(kept, at, measured, listed)
        if not kept or size > self.max_bytes:
            return False
        # The asked key only while its token's data is kept: else nothing measures it, nor needs it.
        asked_kept = at if at in kept else None
        self._walks[key] = _Walk(listed, kept, size, names, self._touch(), measured, asked_kept, key=key)
        self._size += size
        self.names += names
        user = self._identities[key[0]].user
        user.keys[key] = None
        user.held += size
        self._place(user)
        if not exact:
            self._pending[key] = None
        return True

    def _fit(self) -> None:
        """The walks within ``max_bytes``, each dropped only once every walk is measured exactly (the
        same walks go as with an exact measure on every page; a page measures at most `_PENDING_MAX`
        + 1 walks, its own among them), in the order of `_victim`."""
        while len(self._pending) > _PENDING_MAX:
            self._settle()
        while self._size > self.max_bytes and self._walks:
            if self._pending:
                self._settle()
            else:
                self._drop(self._victim())

    def _victim(self) -> Key:
        """The walk to drop: the least recently continued walk of each user over the fair share (two
        walks or more, of any of its identities, holding more than ``max_bytes / FAIR_SHARE``), the
        least recently continued of those; with no such user, the least recently continued walk. A
        user's walk kept last (the page being served, when it is that user's) is never its user's least
        recently continued."""
        if not self._over:
            return next(iter(self._walks))
        oldest = [next(iter(user.keys)) for user in self._over]
        return min(oldest, key=lambda key: self._walks[key].touched)

    def _place(self, user: _User) -> None:
        """``user`` among those over the fair share, or not, as its walks now are."""
        if len(user.keys) > 1 and user.held > self.max_bytes // FAIR_SHARE:
            self._over[user] = None
        else:
            self._over.pop(user, None)

    def _settle(self) -> None:
        """The walk pending longest measured exactly (`_measure`). Taken out of ``_pending`` first:
        should the measure raise, its size stays its bound, more than dropping it frees, never less."""
        key = next(iter(self._pending))
        del self._pending[key]
        walk = self._walks[key]
        size, _, walk.measured = _measure(walk.kept, walk.asked, walk.measured, walk.listed)
        self._size += size - walk.size
        user = self._identities[key[0]].user
        user.held += size - walk.size
        walk.size = size
        self._place(user)

    def _hold(self, who: UserInfo) -> _Identity:
        """``who``'s identity, held once more (the one object of equal identities)."""
        identity = self._identities.get(who)
        if identity is None:
            named = (who.name, who.uid)
            user = self._users.get(named)
            if user is None:
                user = self._users[named] = _User(named, 0, _user_size(who))
                self._size += user.size
            size = _identity_size(who, user.key)
            identity = self._identities[who] = _Identity(who, 0, size, user)
            user.identities += 1
            self._size += size
        identity.walks += 1
        return identity

    def _release(self, identity: _Identity) -> None:
        identity.walks -= 1
        if not identity.walks:
            del self._identities[identity.who]
            self._size -= identity.size
            user = identity.user
            user.identities -= 1
            if not user.identities:
                del self._users[user.key]
                self._size -= user.size

    def _touch(self) -> float:
        now = self.clock.seconds()
        self._oldest = min(self._oldest, now)
        return now

    def _expire(self) -> None:
        before = self.clock.seconds() - self.ttl
        if self._oldest >= before:
            return
        while self._walks:
            key, oldest = next(iter(self._walks.items()))
            if oldest.touched >= before:
                self._oldest = oldest.touched
                return
            self._drop(key)
        self._oldest = math.inf

    def _drop(self, key: Key) -> None:
        self._forget(key, self._walks.pop(key), self._identities[key[0]])

    def _forget(self, key: Key, walk: _Walk, identity: _Identity) -> None:
        """What the walk taken out of ``_walks`` counted, and its hold of ``identity``, let go."""
        self._size -= walk.size
        self.names -= walk.names
        self._pending.pop(key, None)
        user = identity.user
        del user.keys[key]
        user.held -= walk.size
        self._place(user)
        self._release(identity)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TTL",
    "FAIR_SHARE",
    "Kept",
    "Listed",
    "Reported",
    "WalkCache",
    "identity_size",
    "is_walk_id",
    "kept_size",
    "new_walk_id",
]
