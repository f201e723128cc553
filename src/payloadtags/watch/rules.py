"""Which rules decided what a watch's client holds, kept past the end of its stream.

A stream ends (its timeout, a dropped connection, a slow client cut) and client-go watches again from
the last resourceVersion it saw. A running watch ends with 410 when its user's rules change what it may
show (`Watcher.access_changed`); a change between two streams must be told as well, or the resumed
watch goes on from a client cache decided by the old rules (a revoked repository's tags kept, a
granted one's never sent).

So each scope's source keeps, per user (her name and uid: the same person whatever groups and extras
her request carries, so that leaving a group or a rotated token's credential-id is hers too) and per
namespace, a fingerprint of the rules last noted for her there (`PathMatcher.fingerprint`: what they
mean, not their order), and the sequence a change of them was noted at (``changed_at``: after every
resourceVersion issued under the old rules). A resume from below it is 410. The rules are noted when a
watch starts (the rules computed for the identity it comes with), at each access check for the users
watching (`WatchHub.check_access`), when a watch ends (every set of rules that decided something it
sent: rules granted and taken back between two checks included), when an all-namespaces watch drops
the rules of a namespace gone from its scope (`WatchHub._forget_rules`: its client may resume from
before the DELETED that emptied it), and when a user already noted lists
the scope (`listed`: her list, each of its pages, was decided by the rules then, which may be changed
back before its watch; a page by the rules of each of its decisions, compared with those noted as it
makes them, `PageDecisions`; and, in a namespace not noted for her, a decision of any list of hers
notes her rules there as the first ones, within her share, `RulesLedger._first`). The rules noted
first are no change. The groups of the request her
rules were last computed for are noted too, and taken only with her rules compared in every namespace
noted for her (`_compared`): a change her groups make is dated when a list or a watch of hers sees it,
not by an access check. (An access check for a second running watch of hers with other groups takes
them having compared only the namespaces that watch sent in; each watch compares every namespace as it
starts and as it ends.)

Bounded: past ``max_entries`` (user, namespace) pairs in all, the least recently used user of a scope is
forgotten, and the sequence then is kept for her in a fixed table of slots (by a hash of scope and
user): a resume of hers from below it is 410 until she is noted again, from the rules a watch of hers
still running ran under if one is, else from her next watch's. A user past her share of it in a scope
(`RulesLedger.share`: an all-namespaces watch notes every namespace it drops) drops those out of her
scope, the longest gone first, and her resumes from before they left it are 410: her churn never evicts
the other users. Those of her scope now are never dropped (a watch from a list of hers would be 410);
a list's noting past her share (`_first`) keeps the namespace it just noted, and dates each one out of
her scope not noted gone by the source's last event there (its leaving), or the history's floor. No
trim drops one where a list showed tags the source has not read, nor one a list of hers being read
decided in (`Noted.lists`): her client may hold tags there that no date of the source's tells.
Another user sharing the slot has the same 410 (one in `FORGOTTEN_SLOTS`). Entries go with their
scope's source (`WatchHub.reap`), whose history a resume then cannot use anyway. Each replica keeps
its own, in its own numbers.
"""

from __future__ import annotations

import collections
import itertools
import weakref
import zlib
from collections.abc import Callable, Collection, Iterable

import attrs

from payloadtags.access.rbac import PathMatcher
from payloadtags.identity import UserInfo
from payloadtags.registry import namespace_of
from payloadtags.watch.source import ScopeSource

# (user, namespace) pairs kept in all unless told (`WatchLimits.resume_rules`): about 530 bytes the
# first of a user and scope, under 100 each further one (docs/watch.md, "Bounds").
MAX_ENTRIES = 100_000
# One user's share of them in a scope, unless told: a tenth of the bound, at least this many, never
# more than half the bound (`RulesLedger.share`). Her all-namespaces watch notes every namespace it
# drops: without a share of her own, her churn evicted every other user before her own oldest
# namespaces went.
MIN_USER_SHARE = 4096
# Sequences of forgotten users: a fixed table (32 KiB), whatever the number of users forgotten.
FORGOTTEN_SLOTS = 4096
# The fingerprint of rules that let her read nothing in a namespace (`RulesLedger._trim`).
_NOTHING = PathMatcher(False, ()).fingerprint

# A user's rules are hers by name and uid: groups and extras are of one request.
UserKey = tuple[str, str]


def user_key(user: UserInfo) -> UserKey:
    return (user.name, user.uid)


@attrs.define(eq=False, slots=True)
class Noted:
    # Per namespace of the scope: the fingerprint of her rules there (`PathMatcher.fingerprint`).
    rules: dict[str, bytes] = attrs.field(factory=dict)
    # The sequence her rules in the scope were seen changed at (0: never changed while noted). One for
    # all her namespaces: a resume is served only if none of them changed after it.
    changed_at: int = 0
    # The groups of the request her rules were last computed for (shared with its UserInfo): in every
    # namespace noted, when they are other groups than those noted before (`RulesLedger._compared`).
    # (Not so at an access check for a second running watch of hers, which compares only where it
    # sent: each watch of hers compares every namespace as it starts and as it ends.)
    groups: tuple[str, ...] = ()
    # Per namespace noted out of the scope (the reap's, `RulesLedger.saw` with ``gone``): the sequence
    # then, after the DELETED that emptied it (its latest leaving: a leaving noted again is dated
    # again); in the order noted, the oldest first. Seen in the scope again (`_returned`), it is out of
    # here. These go first past her share (`RulesLedger._trim`), dated by it: a client that resumes
    # from it holds nothing there.
    gone: dict[str, int] = attrs.field(factory=dict)
    # The namespaces kept at her last trim (`RulesLedger._trim`): more than her share when those of her
    # scope are. The next trim waits for an eighth of her share more, not one namespace more: each
    # looks at the whole scope.
    trimmed_to: int = 0
    # Her lists of the scope reading now (a page's or a whole list's `PageDecisions`), known weakly:
    # gone with their request, and None once none reads (`_reading`). A trim keeps the namespaces
    # they decided in (`RulesLedger._trim`).
    lists: list[weakref.ref[PageDecisions]] | None = None

    @property
    def cost(self) -> int:
        # An entry with no namespace yet (an all-namespaces scope with no tags) is kept all the same.
        return max(1, len(self.rules))


@attrs.define(eq=False, slots=True)
class PageDecisions:
    """The access decisions of one page of a list, each told as it is made (in the same reactor turn:
    by the rules in force then). A page's reads span reactor turns (registry awaits), so her rules may
    change before a decision of the page and back before it ends: each decision is compared with the
    rules noted for her there at that moment (`RulesLedger.decided`), and a difference is a change,
    noted and dated then, as a list made at that moment would note it. Compared then, not once the
    page ends: by then the rules noted may have moved on, through an access check or another list of
    hers that noted and dated the change already, and a decision by the rules noted when it was made
    changed nothing. A decision (one per repository the page reaches) costs a lookup of her rules
    there, in the memo the decision itself looked up, and of those noted; nothing per tag. The
    namespaces decided in are kept, for the check of her rules once the page is read, and for a trim
    of her entry while the page reads (`RulesLedger._trim`): a slice of repositories is decided, then
    read, and what it shows there is told to the source only then. A whole list's decisions are
    kept so too (`WatchHub.list_decisions`), a namespace once."""

    # Compares a decision in a namespace with the rules noted for her there (`WatchHub.page_decisions`),
    # told these decisions; None: her rules are not noted in the scope, or not decided by RBAC.
    note: Callable[[str, PageDecisions], None] | None = None
    namespaces: set[str] = attrs.field(factory=set)

    def decided(self, namespace: str) -> None:
        """An access decision of the page in ``namespace``, just made."""
        self.namespaces.add(namespace)
        if self.note is not None:
            self.note(namespace, self)  # not held by ``note``: gone with its request


@attrs.define(eq=False)
class RulesLedger:
    max_entries: int = MAX_ENTRIES
    # The namespaces one user's entry of a scope keeps (`share`); None: a tenth of the bound, at least
    # MIN_USER_SHARE.
    user_share: int | None = None
    # Per (source, user), least recently used first.
    entries: collections.OrderedDict[tuple[ScopeSource, UserKey], Noted] = attrs.field(
        factory=collections.OrderedDict
    )
    size: int = 0
    # Per slot of (scope, user): the sequence the last user forgotten there was forgotten at.
    forgotten: list[int] = attrs.field(factory=list, repr=False)

    @property
    def share(self) -> int:
        """The namespaces one user's entry of a scope keeps: past it, her oldest go (`_trim`), and the
        other users' entries stay. At most half the bound: her trim waits for an eighth of her share
        more (`_resized`), and a share of the whole bound (4,096 with a bound below 4,096) let her
        churn evict every other user before her own namespaces went (review-watch6 F3)."""
        asked = (
            self.user_share if self.user_share is not None else max(self.max_entries // 10, MIN_USER_SHARE)
        )
        return max(1, min(asked, self.max_entries // 2))

    def admits(
        self,
        source: ScopeSource,
        user: UserInfo,
        namespaces: Iterable[str],
        rules_of: Callable[[str], PathMatcher],
        since: int | None,
        stamp: Callable[[], int],
    ) -> bool:
        """Notes ``user``'s rules now in ``namespaces`` (of ``source``'s scope) and in every namespace
        noted for her there before; whether a watch of hers from ``since`` (None: one that starts from
        a snapshot) may be served: no change of them after ``since``. ``stamp`` numbers a change of the
        access rules seen here: after every resourceVersion the old rules decided."""
        noted = self._entry(source, user)
        before = noted.cost
        changed = False
        scope = set(namespaces)
        if noted.gone:
            _returned(noted, scope)
        for namespace in {*noted.rules, *scope}:
            now = rules_of(namespace).fingerprint
            old = noted.rules.setdefault(namespace, now)  # noted first: no change
            if old != now:
                noted.rules[namespace], changed = now, True
        if changed:
            self._changed(source, noted, user, stamp)
        noted.groups = user.groups
        # Given before the trim: it compared her rules in every namespace a trim now drops, and a
        # resume judged by them is served as any other. The trim's date binds the resumes after it,
        # which no longer compare those (taken after it, a needless 410 and relist of her whole scope
        # whenever a namespace left it while her client reconnected, review-watch8 F2).
        admitted = since is None or since >= noted.changed_at
        self._resized(source, noted, before, scope)
        return admitted

    def reading(self, source: ScopeSource, user: UserInfo, listing: PageDecisions) -> None:
        """A page of ``user``'s list of ``source``'s scope, or a whole list of hers, starts: while it
        reads (``listing`` is referenced), every trim of her entry keeps the namespaces it decided in
        (`_trim`), a watch start's or another list's too. Nothing when she is not noted there."""
        noted = self.entries.get((source, user_key(user)))
        if noted is not None:
            _reading(noted, listing)

    def knows(self, source: ScopeSource, user: UserInfo) -> bool:
        """Whether ``user``'s rules are noted in ``source``'s scope (a list of hers there is compared)."""
        return (source, user_key(user)) in self.entries

    def listed(
        self,
        source: ScopeSource,
        user: UserInfo,
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
        namespaces: Iterable[str] | None = None,
    ) -> None:
        """A list of ``source``'s scope by ``user``, before it reads (its resourceVersion is taken
        after this), or a page of it once read, or one access decision of a page as it is made
        (`decided`): where her rules were noted there and differ now, the change is noted and dated,
        so that a watch of hers from a list made before it is 410, and one from this list is not
        judged by the rules noted before it (her rules changed and changed back between this list,
        or one of its pages, and its watch are a change). Only a user already noted: a list adds no
        entry (one per user and namespace of every list would be the cost docs/watch.md declines);
        a namespace not noted for her is noted by the list's decision there (`_first`), not here.
        ``namespaces``: only those (what a page decided
        in), not every one noted for her (None); every one all the same when her groups are not
        those noted (`_compared`)."""
        noted = self.entries.get((source, user_key(user)))
        if noted is None:
            return
        self.entries.move_to_end((source, user_key(user)))
        if namespaces is not None and noted.gone:
            namespaces = list(namespaces)
            _returned(noted, namespaces)  # a page decided there: back in the scope
        checked = self._compared(noted, user, namespaces)
        # All computed before any is noted: a failure leaves no fingerprint noted without its date.
        now = {namespace: rules_of(namespace).fingerprint for namespace in checked}
        if any(noted.rules[namespace] != fingerprint for namespace, fingerprint in now.items()):
            noted.rules.update(now)
            self._changed(source, noted, user, stamp)
        noted.groups = user.groups

    def decided(
        self,
        source: ScopeSource,
        user: UserInfo,
        namespace: str,
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
        listing: PageDecisions | None = None,
    ) -> None:
        """An access decision of a page of ``user``'s list in ``namespace``, just made, by her rules
        there now (`PageDecisions`): if they are not those noted for her there, the change is noted
        and dated now (`listed`), as her rules were seen then. Compared with the rules noted as it is
        made, not once the page ends: a decision by the rules noted then changed nothing, whatever is
        noted later (a change of them noted meanwhile, by an access check or another list of hers,
        has its own date; noted again at the page's end, it would be dated after a later list of hers
        that was decided wholly by the new rules, a spurious 410 for that list's watch). Not noted
        for her there: noted now, as the first ones (`_first`; ``listing``: the page's). A dict lookup
        when they are the same."""
        noted = self._back(source, user, namespace)
        if noted is None:
            return
        old = noted.rules.get(namespace)
        if old is None:
            self._first(source, noted, user, namespace, rules_of, stamp, listing)
        elif old != rules_of(namespace).fingerprint:
            self.listed(source, user, rules_of, stamp, [namespace])

    def returned(
        self,
        source: ScopeSource,
        user: UserInfo,
        namespace: str,
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
        listing: PageDecisions | None = None,
    ) -> None:
        """An access decision of a whole list (no ``limit``) of ``user``'s in ``namespace`` of
        ``source``'s scope, just made: back in her scope (`_returned`), as a page's decision is
        (`decided`), and, not noted for her yet, noted (`_first`). A whole list compares her rules only
        as it starts (docs/watch.md, "Limits"); the namespaces it reads are known only as it reads
        them, and one that came back and was shown by it kept the date it first left: dropped by a
        trim after it left again, a resume from the list, after her access there was taken back, was
        served, and its client kept what the second leaving deleted. ``listing``: the list's decisions
        (`_first`). A dict lookup or two, and one more while she has namespaces noted gone."""
        noted = self._back(source, user, namespace)
        if noted is not None and namespace not in noted.rules:
            self._first(source, noted, user, namespace, rules_of, stamp, listing)

    def _back(self, source: ScopeSource, user: UserInfo, namespace: str) -> Noted | None:
        """What is noted for ``user`` in ``source``'s scope (None: she is not), with ``namespace``, where
        one of her lists just decided, back in her scope if it had left it (`_returned`)."""
        noted = self.entries.get((source, user_key(user)))
        if noted is not None and noted.gone:
            _returned(noted, (namespace,))
        return noted

    def _first(
        self,
        source: ScopeSource,
        noted: Noted,
        user: UserInfo,
        namespace: str,
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
        listing: PageDecisions | None = None,
    ) -> None:
        """A decision of a list of ``user``'s (noted in the scope) in ``namespace``, not noted for her:
        her rules there now (those it was made by) are noted, as the first ones (no change). Not
        noted, a namespace that came to her scope since her last watch started (or one her share
        dropped that came back) was compared by nothing between her list and its watch: her rules
        there changed, the watch from that list was served (its start noted the rules then as the
        first ones, or, the namespace emptied meanwhile, compared nothing there), and her client kept
        what the list showed. Within her share (`_resized`): past it, those out of her scope go
        (never this one, nor one ``listing``, the list's decisions, or another list of hers reading
        now decided in: `reading`), dated by their leaving (`_trim`). A user not noted is not noted
        by a list (docs/watch.md, "Access"). Her groups, not those noted, are taken first with every
        namespace noted compared (`listed`), so that every rules noted are those of the groups noted."""
        now = rules_of(namespace).fingerprint  # computed first: a failure notes nothing
        if frozenset(noted.groups) != frozenset(user.groups):
            # Keeps every rules noted those of the groups noted, as every noting does. Without it no
            # resume is judged wrongly that we know of (review-watch11 F3): any later noting with
            # other groups than those noted compares every namespace and dates a change by a new
            # sequence. But the new namespace's rules would be of groups not noted, and a noting with
            # the groups noted, comparing only some namespaces (`_compared`), would leave them so.
            self.listed(source, user, rules_of, stamp, [namespace])
        self.entries.move_to_end((source, user_key(user)))  # never the one the bound evicts
        before = noted.cost
        noted.rules[namespace] = now
        if listing is not None:
            _reading(noted, listing)  # a whole list begun before she was noted
        self._resized(source, noted, before, listing=namespace)

    def _compared(self, noted: Noted, user: UserInfo, namespaces: Iterable[str] | None) -> Iterable[str]:
        """The namespaces noted for her that a noting of ``user``'s rules in ``namespaces`` (None: all)
        compares: every one when her groups (as a set) are not those noted, so that the groups noted
        are those every rules noted were computed for. Else a change that her other groups make in a
        namespace not compared would be seen later as one of the RBAC objects (`_changed`), dated by
        an access check made before it, and a resume from before her groups changed served."""
        if namespaces is None or frozenset(noted.groups) != frozenset(user.groups):
            return list(noted.rules)
        return [namespace for namespace in {*namespaces} if namespace in noted.rules]

    def _changed(self, source: ScopeSource, noted: Noted, user: UserInfo, stamp: Callable[[], int]) -> None:
        # Through the RBAC objects: dated by ``stamp`` (the access check that saw them, if one has).
        # Through her groups (as a set: their order decides nothing, as for openings): her other
        # requests were decided for the old ones up to now, whatever access check has run since.
        same = frozenset(noted.groups) == frozenset(user.groups)
        at = stamp() if same else source.versions.next()
        noted.changed_at = max(noted.changed_at, at)

    def saw(
        self,
        source: ScopeSource,
        user: UserInfo,
        seen: Iterable[tuple[str, Iterable[PathMatcher]]],
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
        every_namespace: bool = True,
        gone: bool = False,
    ) -> None:
        """Notes the rules that decided what a watch of ``user`` sent, per namespace (``seen``), and
        those in force now in each namespace noted (only in those of ``seen`` unless
        ``every_namespace``): any that differ from the rules noted is a change. Also at an access check
        (``seen``: what the running watch sent since the last one). ``gone``: the namespaces of
        ``seen`` are out of the scope now (the reap), their sequence noted (`Noted.gone`)."""
        noted = self._entry(source, user)
        before = noted.cost
        fingerprints: dict[str, set[bytes]] = {}
        for namespace, rules in seen:
            fingerprints.setdefault(namespace, set()).update(r.fingerprint for r in rules)
        changed = False
        for namespace in {*noted.rules, *fingerprints} if every_namespace else fingerprints:
            now = rules_of(namespace).fingerprint
            old = noted.rules.get(namespace)
            if (old is not None and old != now) or any(f != now for f in fingerprints.get(namespace, ())):
                changed = True
            noted.rules[namespace] = now
        if changed:
            noted.changed_at = max(noted.changed_at, stamp())
        if gone:
            for namespace in fingerprints:
                noted.gone.pop(namespace, None)  # to the end: the newest
                noted.gone[namespace] = source.versions.current
        elif noted.gone:
            # Decided in since it left: back in the scope (`_returned`).
            _returned(noted, fingerprints)
        noted.groups = user.groups
        self._resized(source, noted, before)

    def drop(self, source: ScopeSource, user: UserInfo) -> None:
        """Forgets ``user`` in ``source``'s scope (her rules could not be told): her resumes from before
        now are 410."""
        key = (source, user_key(user))
        dropped = self.entries.pop(key, None)
        if dropped is not None:
            self.size -= dropped.cost
        self._forget_key(key)

    def forget(self, current: Callable[[ScopeSource], bool]) -> None:
        """Drops what was noted for sources that are no longer their scope's."""
        for key in [key for key in self.entries if not current(key[0])]:
            self.size -= self.entries.pop(key).cost

    def _entry(self, source: ScopeSource, user: UserInfo) -> Noted:
        key = (source, user_key(user))
        noted = self.entries.get(key)
        if noted is not None:
            self.entries.move_to_end(key)
            return noted
        # New, or forgotten (the bound): nothing she holds from before then can be vouched for.
        noted = self.entries[key] = Noted(changed_at=self._forgotten_at(key))
        self.size += noted.cost
        return noted

    def _resized(
        self,
        source: ScopeSource,
        noted: Noted,
        before: int,
        scope: Collection[str] | None = None,
        listing: str | None = None,
    ) -> None:
        share = self.share
        # Past her share: when she grew by an eighth of it since her last trim (her scope alone may be
        # past it: each trim looks at the whole scope), or once an eighth of it is noted gone, or some
        # noted are out of ``scope`` (a watch start's, compared whole anyway): those can always go, and
        # a scope that shrank kept what left it for ever (review-watch6 F4).
        if noted.cost > share and (
            noted.cost > noted.trimmed_to + share // 8
            or len(noted.gone) > share // 8
            or (scope is not None and any(namespace not in scope for namespace in noted.rules))
        ):
            self._trim(source, noted, _scope_namespaces(source) if scope is None else scope, listing)
        self.size += noted.cost - before
        # The least recently used go first; never the entry just noted (the most recent), which keeps
        # to its share, at most the bound, past those of its scope now.
        while self.size > self.max_entries and len(self.entries) > 1:
            key, dropped = self.entries.popitem(last=False)
            self.size -= dropped.cost
            self._forget_key(key)

    def _trim(
        self, source: ScopeSource, noted: Noted, scope: Collection[str], listing: str | None = None
    ) -> None:
        """One user past her share (an all-namespaces watch of hers notes every namespace it drops at
        the reap: with CI namespaces coming and going, her entry grew without end, each watch, access
        check and list of hers compared them all, and the bound then evicted every other user): the
        namespaces out of her scope go, those noted out of it first and the oldest first, down to
        seven eighths of her share (a compact dict rebuilt now and then, not its oldest key looked for
        past the slots of those deleted before on every noting). Never one of the scope now (``scope``):
        what her client holds there could never be judged again, and every watch of hers, from a list
        or a resume, was 410 (review-watch4 F1). A change is dated by the sequence each went out of
        the scope at (`Noted.gone`; one out of it not noted so, now): a resume from before it may hold
        tags there, one from after holds none, and is served (her watch from a list made since).

        Never one where a list showed tags the source has not read (out of ``scope``): its client
        holds them, and no date of the source's tells it (the history has nothing there after the
        list's resourceVersion). Dropped, dated at the floor or at a ``DELETED`` before a push again,
        the watch from that list was served after her rules there changed, and its client kept what
        the list showed. Kept so: those of the lists' reads told to the source, anyone's
        (`ScopeSource.unconfirmed_namespaces`: until a read of the source has the tags, the
        namespace then in ``scope``, or finds them gone, its ``DELETED`` after the list), and those
        her lists reading now decided in (`Noted.lists`; a slice of repositories is decided, then
        read and told) where the rules noted let her read something. ``listing``: the namespace a
        list's decision just noted (`_first`), in the middle of that list, whose resourceVersion was
        taken before (review-watch11 F1). A namespace of empty repositories, decided in by every
        list of hers and never in the source, goes at a trim once that list has ended.

        A list's trim dates one out of the scope not noted gone by its leaving, the source's last
        event there (a ``DELETED``): dated now, after the list's resourceVersion when something was
        written while it read, the watch from it was a needless 410 though the namespace left before
        (review-watch11 F2). With no event there in the history, at its floor (`_left_at`): dated
        after the list's resourceVersion, a namespace of empty repositories made the watch from
        every list 410 (a relist loop)."""
        share = self.share
        keep = max(1, share - share // 8)
        for namespace in [namespace for namespace in noted.gone if namespace in scope]:
            del noted.gone[namespace]  # back in the scope
        current = source.versions.current
        unread = source.unconfirmed_namespaces()
        # A copy: a list of hers ending meanwhile (a collection) is taken out in place, and a loop over
        # ``noted.lists`` itself would skip the next one, a list still reading (`_reading`).
        lists = [decisions for ref in tuple(noted.lists or ()) if (decisions := ref()) is not None]

        def kept(namespace: str) -> bool:
            # ``listing`` even where she may read nothing, which the lists' check below lets go: its
            # last tags deleted while the list read, it was dated by that DELETED, after the list's
            # resourceVersion, and the watch from that list was a needless 410. Only at the trim its
            # own decision starts: a later trim of the same list (its next decisions in other
            # namespaces) has another ``listing`` and may still drop it so, the needless 410 back
            # (left by design, report-trim: a namespace where she reads nothing, not the listing one).
            if namespace == listing or namespace in unread:
                return True
            # One a list decided in where the rules noted for her let her read nothing showed nothing.
            return noted.rules[namespace] != _NOTHING and any(namespace in d.namespaces for d in lists)

        left = [n for n in noted.rules if n not in scope and n not in noted.gone and not kept(n)]
        if listing is None:
            noted.gone.update((namespace, current) for namespace in left)
        else:
            dates = _left_at(source, set(left))
            noted.gone.update((namespace, dates[namespace]) for namespace in left)
        excess = max(0, len(noted.rules) - keep)
        dropped = list(itertools.islice((n for n in noted.gone if not kept(n)), excess))
        for namespace in dropped:
            del noted.rules[namespace]
            noted.changed_at = max(noted.changed_at, noted.gone.pop(namespace))
        if dropped:
            noted.rules = dict(noted.rules)
        noted.trimmed_to = len(noted.rules)

    def _slot(self, key: tuple[ScopeSource, UserKey]) -> int:
        # The same in every run (str hashes are not): a user shares her slot with the same others.
        source, (name, uid) = key
        return zlib.crc32(f"{source.namespace}\x00{name}\x00{uid}".encode()) % FORGOTTEN_SLOTS

    def _forget_key(self, key: tuple[ScopeSource, UserKey]) -> None:
        if not self.forgotten:
            self.forgotten = [0] * FORGOTTEN_SLOTS
        # Past every resourceVersion issued so far: the sequence moves on (`ScopeSource.versions`).
        self.forgotten[self._slot(key)] = key[0].versions.next()

    def _forgotten_at(self, key: tuple[ScopeSource, UserKey]) -> int:
        return self.forgotten[self._slot(key)] if self.forgotten else 0


def _returned(noted: Noted, namespaces: Iterable[str]) -> None:
    """``namespaces`` were seen in ``noted``'s scope (a watch of hers decided there, a page of her
    list, her watch started with them): no longer dated by when they left it. A namespace that left,
    came back (sent to a client of hers) and left again while no watch of hers ran kept the date it
    first left, and a trim dropped it dated so: a resume from between the two, after her access there
    was taken back, was served, and its client kept what the second leaving deleted (review-watch6 F1).
    One out of the scope and not noted gone is dated at the trim, after anything sent there."""
    for namespace in namespaces:
        noted.gone.pop(namespace, None)


def _reading(noted: Noted, listing: PageDecisions) -> None:
    """Notes ``listing`` in ``noted.lists`` until it ends. References of its own, each gone as its
    list ends, and the list of them with the last: a `weakref.WeakSet` stays once empty, about 870
    bytes, twice what docs/watch.md ("Bounds") gives a whole entry, in every entry of a user who
    listed once (review-watch16 F1).

    A list ends where its last reference goes or, held in a reference cycle (a client gone in the
    middle of a list), at the collection that frees it, which runs at any allocation: in the middle
    of this, of a trim or of another list's ``ended``. So ``ended`` takes out its own reference in
    place (``in`` and ``remove``: neither allocates, and a dead reference equals only itself) and
    lets the list go once empty; this and the trim iterate a copy (a removal in place skips the next
    one), and this sets ``noted.lists`` again after adding to it (an ``ended`` between its read and
    the append lets the list go). ``ended`` rebuilding the list, and this reading it three times, a
    collection in between failed her list request (`TypeError`, `AttributeError`), lost the
    reference of a list reading (a trim then dropped what it decided in), or left a dead one in her
    entry for good (review-watch18 F1)."""
    known = noted.lists
    if known is not None and any(ref() is listing for ref in tuple(known)):
        return

    def ended(gone: weakref.ref[PageDecisions]) -> None:
        lists = noted.lists
        if lists is not None and gone in lists:
            lists.remove(gone)
            if not lists:
                noted.lists = None

    ref = weakref.ref(listing, ended)
    lists = noted.lists
    if lists is None:
        noted.lists = [ref]  # none reads: no ``ended`` can change it meanwhile
    else:
        lists.append(ref)
        noted.lists = lists  # again: the last other list of hers may have ended since the read


def _left_at(source: ScopeSource, namespaces: Collection[str]) -> dict[str, int]:
    """The sequence each of ``namespaces`` (out of ``source``'s scope now) left it at: that of the
    source's last event there, a ``DELETED``; the history's floor when it holds none (left before its
    oldest event, or never in the scope since: a resume from below the floor is 410 anyway). Not past
    every resourceVersion issued: a namespace whose repositories are empty is decided in by every
    list of hers and never in the source, and the watch from each list that trimmed it was 410, the
    relist noting it again (a relist loop). One pass over the history, newest first, stopping once
    all are found: a list's trim (`RulesLedger._trim`), once per an eighth of her share."""
    dates: dict[str, int] = {}
    for event in reversed(source.ring):
        if len(dates) == len(namespaces):
            break
        namespace = event.ref.namespace
        if namespace in namespaces and namespace not in dates:
            dates[namespace] = event.sequence
    dates.update((namespace, source.floor) for namespace in namespaces if namespace not in dates)
    return dates


def _scope_namespaces(source: ScopeSource) -> Collection[str]:
    """The namespaces of ``source``'s scope now (with tags)."""
    if source.namespace is not None:
        return (source.namespace,)
    return set(map(namespace_of, source.tags))


__all__ = [
    "FORGOTTEN_SLOTS",
    "MAX_ENTRIES",
    "MIN_USER_SHARE",
    "Noted",
    "PageDecisions",
    "RulesLedger",
    "UserKey",
    "user_key",
]
