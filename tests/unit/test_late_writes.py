"""`LateWrites`: the record of this process's writes that may still land, by namespace, and `wait_out`,
the one wait for them."""

from __future__ import annotations

import math
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from payloadtags.registry import LateWrites
from payloadtags.registry.late import COPY, PLACEHOLDER, RESTORE, Kind, Landing, Scope, landing_of


def outcome(waiting: Deferred[Any]) -> list[object]:
    """What ``waiting`` fired with, once it has (empty until then)."""
    fired: list[object] = []
    waiting.addBoth(fired.append)
    return fired


def test_nothing_to_wait_for_fires_at_once() -> None:
    clock = Clock()
    late = LateWrites(clock)
    assert outcome(late.wait_out("team", deadline=10.0)) == [None]
    late.note("team", "repairing dangling tag team/app:v1", until=0.0)  # its time already passed
    late.sent("other", "deleting tag other/app:v1")  # another namespace's
    assert outcome(late.wait_out("team", deadline=10.0)) == [None]
    assert clock.getDelayedCalls() == []


def test_waits_for_every_write_out_then_for_an_unanswered_ones_time() -> None:
    """Two writes out: one answered, one unanswered with a grace time. Woken by their ends, then by the
    grace's end, well before the deadline; no timer left behind."""
    clock = Clock()
    late = LateWrites(clock)
    answered = late.sent("team", "deleting tag team/app:v1")
    unanswered = late.sent("team", "repairing dangling tag team/app:v2")
    fired = outcome(late.wait_out("team", deadline=100.0))
    [deadline] = clock.getDelayedCalls()
    assert deadline.getTime() == 100.0  # while a write is out, only the deadline is a time to wake at
    clock.advance(1.0)
    late.ended("team", answered, None)
    assert fired == []  # the other is still out
    late.ended("team", unanswered, 5.0)  # may land until 6.0
    assert fired == []
    [grace] = clock.getDelayedCalls()
    assert grace.getTime() == 6.0
    late.note("team", "deleting tag team/app:v3", until=8.0)  # a later one, noted meanwhile
    clock.advance(5.0)
    assert fired == []
    clock.advance(2.0)
    assert fired == [None]
    assert clock.getDelayedCalls() == []


def test_the_deadline_first_gives_the_write_still_out() -> None:
    clock = Clock()
    late = LateWrites(clock)
    late.sent("team", "deleting tag team/app:v1")
    fired = outcome(late.wait_out("team", deadline=10.0))
    clock.advance(9.0)
    assert fired == []
    clock.advance(1.0)
    assert fired == [("deleting tag team/app:v1", math.inf)]
    assert clock.getDelayedCalls() == []


def test_a_write_that_may_land_past_the_deadline_gives_it_at_once() -> None:
    """Nothing shortens a write's time: known past the deadline, it is answered then, not at the
    deadline; as is a write out that ends unanswered with a grace past it."""
    clock = Clock()
    late = LateWrites(clock)
    late.note("team", "repairing dangling tag team/app:v1", until=20.0)
    assert outcome(late.wait_out("team", deadline=20.0)) == [("repairing dangling tag team/app:v1", 20.0)]
    number = late.sent("other", "deleting tag other/app:v1")
    fired = outcome(late.wait_out("other", deadline=10.0))
    clock.advance(1.0)
    late.ended("other", number, 30.0)
    assert fired == [("deleting tag other/app:v1", 31.0)]
    assert clock.getDelayedCalls() == []


def test_the_write_first_ends_the_wait_before_the_deadline() -> None:
    clock = Clock()
    late = LateWrites(clock)
    number = late.sent("team", "deleting tag team/app:v1")
    fired = outcome(late.wait_out("team"))  # no deadline: only the write's end wakes it
    assert clock.getDelayedCalls() == []
    late.ended("team", number, None)
    assert fired == [None]


def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    """The request waiting goes away: its wait is cancelled, and neither its timer nor its place among
    the namespace's waiters stays (a later end of the write wakes nobody)."""
    clock = Clock()
    late = LateWrites(clock)
    number = late.sent("team", "deleting tag team/app:v1")
    waiting = late.wait_out("team", deadline=10.0)
    other = outcome(late.wait_out("team", deadline=10.0))
    failed = outcome(waiting)
    waiting.cancel()
    [failure] = failed
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    assert len(clock.getDelayedCalls()) == 1  # the other wait's
    late.ended("team", number, None)
    assert other == [None]
    assert clock.getDelayedCalls() == []
    assert late._woken == {}


def test_an_entry_whose_time_passed_is_dropped_and_the_record_stays_bounded() -> None:
    """Only a cascade's pass that found the namespace empty dropped an entry (`settled`): a namespace
    deleted tag by tag, one that lives on, one whose removal another replica served kept theirs for
    the life of the process (review-ds D3). Once its time has passed, an entry goes: when it is asked
    for (`pending`), and with every new one noted (`note`), so the record holds the writes that may
    still land, not every namespace that ever had one."""
    clock = Clock()
    late = LateWrites(clock)
    for number in range(100):
        late.note(f"team{number}", f"deleting tag team{number}/app:v1", 10.0)
    clock.advance(10.0)
    assert late.pending("team0") is None
    late.note("other", "deleting tag other/app:v1", 30.0)
    assert late._writes == {"other": ("deleting tag other/app:v1", 30.0)}
    # Where a write would leave its tag goes with its namespace's entry.
    late.ended(
        "other",
        late.sent("other", "deleting tag other/app:v2", ("other/app", "v2", "sha256:1"), kind=COPY),
        5.0,
    )
    assert late.leaves("other") == {("other/app", "v2", "sha256:1"): COPY}
    clock.advance(20.0)
    assert late.pending("other") is None
    assert (late._writes, late._out, late._leaves) == ({}, {}, {})


def test_a_namespace_noted_again_as_its_time_passes_keeps_where_its_writes_would_leave_tags() -> None:
    """A delete whose re-tag went unanswered is noted again at its end, two timeouts after the re-tag's
    error, when the re-tag's own time has just passed: the entry is renewed, and where the re-tag would
    leave its tag stays known (the tag-by-tag deletecollection that waits for it deletes it there)."""
    clock = Clock()
    late = LateWrites(clock)
    late.ended(
        "team", late.sent("team", "deleting tag team/app:v1", ("team/app", "v1", "sha256:1"), kind=COPY), 4.0
    )
    clock.advance(4.0)
    late.note("team", "deleting tag team/app:v1", 8.0)
    assert late.pending("team") == ("deleting tag team/app:v1", 8.0)
    assert late.leaves("team") == {("team/app", "v1", "sha256:1"): COPY}


def test_a_pass_begun_before_a_dropped_entrys_time_is_told_of_it() -> None:
    """A cascade's pass that began before a write's time and found the namespace empty after it may
    have missed what the write left (it may have landed in a part already listed): it passes again.
    The entry dropped once its time passed no longer says so; its time, kept by namespace, does for
    a pass of that namespace begun before it (of it alone: review r2latedelete N1)."""
    clock = Clock()
    late = LateWrites(clock)
    late.note("team", "repairing dangling tag team/app:v1", 10.0)
    began = clock.seconds()
    assert late.since("team", began) == ("repairing dangling tag team/app:v1", 10.0)
    clock.advance(12.0)
    assert late.pending("team") is None  # dropped
    assert late.since("team", began) is not None
    assert late.since("elsewhere", began) is None  # another namespace's pass missed nothing
    assert late.since("team", clock.seconds()) is None  # a pass begun after it is told of nothing


def test_a_write_out_says_how_long_after_its_request_ends_it_may_land() -> None:
    """A write out (sent, not answered) may land "later" (review-ds D4: a 504 said to "wait that
    long" where no length was named): its sender says how long at the latest. That was counted from
    when it was sent, and said "within about 1s" once that time had passed with the write still out:
    a write waiting for a connection slot or a token (not left yet) landed after it (review-ds2 F1).
    It is said from its request's end, however long the write has been out; "later" when one of the
    writes out gave none."""
    clock = Clock()
    late = LateWrites(clock)
    first = late.sent("team", "deleting tag team/app:v1", after=10.0, timeout=5.0)
    clock.advance(4.0)
    late.sent("team", "deleting tag team/app:v2", after=12.0, timeout=6.0)
    assert late.pending("team") == ("deleting tag team/app:v1", float("inf"))
    # The longest; not "after the registry answers it" (an answered write is done: review-ds4 F6), and
    # with its bound from when its request leaves, the request's timeout with it.
    within = (
        "when the registry answers it, or up to about 12s after its request times out: within about 18s "
        "of when its request leaves"
    )
    assert late.out_within("team") == within
    clock.advance(60.0)  # still out, past any time counted from when it was sent
    assert late.out_within("team") == within
    late.ended("team", first, None)
    late.sent("team", "deleting tag team/app:v3", after=20.0)  # no timeout given: no bound from its leaving
    assert (
        late.out_within("team")
        == "when the registry answers it, or up to about 20s after its request times out"
    )
    late.sent("team", "deleting tag team/app:v4")
    assert late.out_within("team") == "later"
    assert late.out_within("elsewhere") == "later"


def test_a_look_scoped_to_some_repositories_sees_only_their_writes() -> None:
    """A caller who may see some repositories of a namespace only waits for, and is told of, the late
    writes of those (review-ds4 F1); one of unknown repository counts for every look, unnamed."""
    clock = Clock()
    late = LateWrites(clock)
    mine = {"team/mine"}.__contains__
    scope = Scope(mine)
    late.note("team", "deleting tag team/theirs:v1", 30.0, "team/theirs")
    out = late.sent(
        "team", "deleting tag team/theirs:v2", ("team/theirs", "v2", "sha256:2"), after=10.0, kind=COPY
    )
    assert late.pending("team", scope) is None
    assert late.leaves("team", mine) == {}
    assert late.out_within("team", scope) == "later"
    assert outcome(late.wait_out("team", 100.0, scope)) == [None]
    assert late.pending("team") == ("deleting tag team/theirs:v2", math.inf)  # the namespace's look
    late.note("team", "deleting tag team/mine:v1", 20.0, "team/mine")
    late.sent("team", "deleting tag team/mine:v2", ("team/mine", "v2", "sha256:3"), after=10.0, kind=COPY)
    assert late.pending("team", scope) == ("deleting tag team/mine:v2", math.inf)
    assert late.leaves("team", mine) == {("team/mine", "v2", "sha256:3"): COPY}
    late.ended("team", out, None)
    late.ended("team", out + 1, 5.0)  # mine may land until 5.0; noted at 20.0 already
    assert late.pending("team", scope) == ("deleting tag team/mine:v1", 20.0)
    assert late.pending("team") == ("deleting tag team/theirs:v1", 30.0)
    clock.advance(20.0)
    assert late.pending("team", scope) is None
    assert late.pending("team") == ("deleting tag team/theirs:v1", 30.0)
    late.note("team", "deleting tag team/somewhere:v1", 40.0)  # no repository given
    assert late.pending("team", scope) == ("writing to the registry", 40.0)
    clock.advance(20.0)
    assert late.pending("team", scope) is None and late.pending("team") is None


def test_a_write_that_leaves_no_tag_counts_in_its_repository_only() -> None:
    """A cascade's DELETE by digest (review r1replica F1) gives its repository and no tag: a look scoped
    to other repositories neither waits for it nor names it, out or unanswered; one scoped to its
    repository counts it whatever tag it selects (the DELETE may remove any on its digest), and so
    does the namespace's own look. Its unanswered time extends no other repository's writes."""
    clock = Clock()
    late = LateWrites(clock)
    theirs = Scope({"team/theirs"}.__contains__)
    its_own = Scope(None, lambda repository, tag: tag == "v9")
    what = "deleting manifest team/app@sha256:1"
    with pytest.raises(TypeError):
        late.sent(  # type: ignore[call-overload]
            "team", what, ("team/app", "v1", "sha256:1"), kind=COPY, repository="team/app"
        )
    copy = late.sent("team", "deleting tag team/theirs:v1", ("team/theirs", "v1", "sha256:2"), kind=COPY)
    late.ended("team", copy, 5.0)  # may land until 5.0
    out = late.sent("team", what, after=4.0, timeout=2.0, repository="team/app")
    assert late.repositories("team") == {"team/app", "team/theirs"}
    assert late.pending("team", theirs) == ("deleting tag team/theirs:v1", 5.0)
    assert late.out_within("team", theirs) == "later"  # none of its writes is out
    assert late.pending("team", its_own) == (what, math.inf)
    assert late.pending("team") == (what, math.inf)
    assert late.leaves("team") == {("team/theirs", "v1", "sha256:2"): COPY}  # the DELETE leaves none
    late.ended("team", out, 8.0)  # unanswered: may land until 8.0
    assert late.pending("team", its_own) == (what, 8.0)
    assert late.pending("team", theirs) == ("deleting tag team/theirs:v1", 5.0)
    assert late.pending("team") == (what, 8.0)
    clock.advance(6.0)
    # The copy's time passed: the DELETE's, in another repository, does not keep it.
    assert late.leaves("team") == {}
    assert late.pending("team", theirs) is None
    assert late.pending("team", its_own) == (what, 8.0)
    clock.advance(2.0)
    assert late.pending("team") is None


def test_the_repositories_of_a_namespaces_writes_are_those_out_noted_or_leaving_a_tag() -> None:
    """What a deletecollection decides the caller's view of as it begins (review-ds6 F1)."""
    late = LateWrites(Clock())
    assert late.repositories("team") == frozenset()
    late.note("team", "deleting tag team/a:v1", 30.0, "team/a")
    late.note("team", "writing somewhere", 30.0)  # no repository: none to decide
    late.sent("team", "deleting tag team/b:v1", ("team/b", "v1", "sha256:1"), kind=COPY)
    late.sent("team", "repairing", None)
    late.sent("other", "deleting tag other/c:v1", ("other/c", "v1", "sha256:2"), kind=COPY)
    assert late.repositories("team") == {"team/a", "team/b"}


def test_a_watch_holds_the_writes_of_its_time_and_not_those_answered_before_it() -> None:
    """A deletecollection's `Watch` (review r5own F1, F2): where the writes that may still land as it
    begins would leave a tag, and those of every write sent until it ends, answered or not, each with
    its kind. A write answered before it began is in neither: a restore's digest, where a client's
    push of the same image puts the tag too, was taken for what that write left (r5own F1)."""
    late = LateWrites(Clock())
    answered = late.sent("team", "restoring tag team/app:v1", ("team/app", "v1", "sha256:1"), kind=RESTORE)
    out = late.sent("team", "deleting tag team/app:v2", ("team/app", "v2", "sha256:2"), kind=COPY)
    late.ended("team", answered, None)  # answered while another write of the namespace is out
    assert late.leaves("team") == {("team/app", "v2", "sha256:2"): COPY}
    watch = late.watch("team")
    elsewhere = late.watch("other")
    sent = late.sent(
        "team", "repairing dangling tag team/app:v3", ("team/app", "v3", "sha256:3"), kind=PLACEHOLDER
    )
    late.ended("team", sent, None)
    late.ended("team", out, None)
    assert late.leaves("team") == {}
    assert watch.leaves == {("team/app", "v2", "sha256:2"): COPY, ("team/app", "v3", "sha256:3"): PLACEHOLDER}
    assert elsewhere.leaves == {}
    late.unwatch(watch)
    late.unwatch(elsewhere)
    late.sent("team", "restoring tag team/app:v4", ("team/app", "v4", "sha256:4"), kind=RESTORE)
    assert len(watch.leaves) == 2
    assert late._watches == {}


def test_a_restore_unanswered_keeps_its_kind_where_a_copy_would_leave_the_same_tag() -> None:
    """An unanswered write's leave is kept with its kind while its namespace has a write out or noted;
    a restore's wins over any other kind at the same leave: a tag there may be a client's push."""
    late = LateWrites(Clock())
    leave = ("team/app", "v1", "sha256:1")
    late.ended("team", late.sent("team", "restoring tag team/app:v1", leave, kind=RESTORE), 5.0)
    late.ended("team", late.sent("team", "deleting tag team/app:v1", leave, kind=COPY), 5.0)
    assert late.leaves("team") == {leave: RESTORE}
    assert late.watch("team").leaves == {leave: RESTORE}


def test_a_watch_knows_when_each_leaves_writes_were_answered() -> None:
    """A deletecollection looks once more for what a write of its time left unless a look begun after
    the registry answered it counted that tag (`_TagByTag.seen_after`): the watch keeps when a leave's
    writes were answered, and none for a leave one of whose writes went unanswered or is still out."""
    clock = Clock()
    late = LateWrites(clock)
    noted = ("team/app", "v0", "sha256:0")
    late.ended("team", late.sent("team", "deleting tag team/app:v0", noted, kind=COPY), 5.0)
    before = late.sent("team", "deleting tag team/app:v1", ("team/app", "v1", "sha256:1"), kind=COPY)
    watch = late.watch("team")
    clock.advance(1.0)
    late.ended("team", before, None)
    twice = ("team/app", "v2", "sha256:2")
    first = late.sent("team", "deleting tag team/app:v2", twice, kind=COPY)
    second = late.sent("team", "deleting tag team/app:v2", twice, kind=COPY)
    clock.advance(1.0)
    late.ended("team", first, None)
    assert twice not in watch.answered  # the other one is still out
    late.ended("team", second, None)
    lost = ("team/app", "v3", "sha256:3")
    late.ended("team", late.sent("team", "deleting tag team/app:v3", lost, kind=COPY), 5.0)
    assert watch.answered == {("team/app", "v1", "sha256:1"): 1, twice: 3}  # in order of the answers
    assert late.answers() == 3
    assert watch.unanswered == {noted, lost}


def test_a_watch_holds_no_unanswered_write_whose_time_passed() -> None:
    """The writes a call looks for are those that may still land as it begins (docs/consistency.md):
    a restore that ended unanswered and whose time passed long ago is not among them, although another
    write of the namespace is out and keeps its entry (review r7own L1)."""
    clock = Clock()
    late = LateWrites(clock)
    restore = late.sent("team", "restoring tag team/app:v1", ("team/app", "v1", "sha256:aa"), kind=RESTORE)
    late.ended("team", restore, 2.0)  # may land until 2.0
    clock.advance(1.0)
    late.sent("team", "deleting tag team/app:v2", ("team/app", "v2", "sha256:bb"), kind=COPY)  # out, held
    assert ("team/app", "v1", "sha256:aa") in late.watch("team").leaves  # may still land
    clock.advance(100.0)
    assert late.pending("team") is not None  # the second one is out
    watch = late.watch("team")
    assert ("team/app", "v1", "sha256:aa") not in watch.leaves, watch.leaves
    assert ("team/app", "v1", "sha256:aa") not in watch.unanswered
    assert ("team/app", "v1", "sha256:aa") not in late.leaves("team")


def test_a_watch_forgets_a_copy_once_its_digest_delete_was_answered() -> None:
    """`LateWrites.gone`: the registry deleted the copy's digest, and every tag on it: what that write
    left needs no look (review r7own F1). Not a write still out or unanswered, nor a restore's leave."""
    clock = Clock()
    late = LateWrites(clock)
    watch = late.watch("team")
    copy, held, restore = (
        ("team/app", "v1", "sha256:aa"),
        ("team/app", "v2", "sha256:bb"),
        ("team/app", "v3", "sha256:cc"),
    )
    late.ended("team", late.sent("team", "deleting tag team/app:v1", copy, kind=COPY), None)
    late.sent("team", "deleting tag team/app:v2", held, kind=COPY)
    late.ended("team", late.sent("team", "restoring tag team/app:v3", restore, kind=RESTORE), None)
    for leave in (copy, held, restore):
        late.gone("team", leave)
    assert watch.leaves == {held: COPY, restore: RESTORE}
    assert copy not in watch.answered
    late.unwatch(watch)
    assert late.watching("team") == 0


def test_a_write_that_would_leave_a_tag_says_what_it_would_put_there() -> None:
    """A write's kind is a `Kind`, given with its leave and only then: `sent` defaulted to a copy, so a
    sender that forgot it recorded a restore (the client's own content, never deleted where found) as
    a copy, which a deletecollection deletes where it finds it."""
    late = LateWrites(Clock())
    leave = ("team/app", "v1", "sha256:1")
    with pytest.raises(TypeError):
        late.sent("team", "restoring tag team/app:v1", leave)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        late.sent("team", "deleting tag team/app:v1", None, kind=COPY)  # type: ignore[call-overload]
    assert late.pending("team") is None  # neither was recorded
    late.sent("team", "restoring tag team/app:v1", leave, kind=RESTORE)
    assert late.leaves("team") == {leave: Kind.RESTORE}


def test_a_look_scoped_to_some_tags_sees_only_writes_that_could_leave_one() -> None:
    """A deletecollection with a selector waits only for writes that could put back a tag it lists
    (review r8own F1): one to another tag of a repository it sees is not its concern, out, ended
    unanswered, or noted at a delete's end; a write of unknown tag (a note without one) still counts,
    and one of unknown repository too."""
    clock = Clock()
    late = LateWrites(clock)
    scope = Scope(None, lambda repository, tag: tag == "v1")
    theirs = late.sent(
        "team", "deleting tag team/app:v2", ("team/app", "v2", "sha256:2"), after=10.0, kind=COPY
    )
    assert late.pending("team", scope) is None
    assert late.out_within("team", scope) == "later"  # none of those it counts is out
    assert outcome(late.wait_out("team", 100.0, scope)) == [None]
    assert late.pending("team") == ("deleting tag team/app:v2", math.inf)
    late.ended("team", theirs, 20.0)  # unanswered: may land until 20
    late.note("team", "deleting tag team/app:v2", 30.0, "team/app", "v2")  # the delete's end
    assert late.pending("team", scope) is None
    assert late.pending("team") == ("deleting tag team/app:v2", 30.0)
    mine = late.sent(
        "team", "deleting tag team/app:v1", ("team/app", "v1", "sha256:1"), after=10.0, kind=COPY
    )
    assert late.pending("team", scope) == ("deleting tag team/app:v1", math.inf)
    late.ended("team", mine, 5.0)
    assert late.pending("team", scope) == ("deleting tag team/app:v1", 5.0)
    late.note("team", "deleting tag team/app:v3", 10.0, "team/app")  # its tag not given
    assert late.pending("team", scope) == ("deleting tag team/app:v3", 10.0)
    late.note("team", "writing somewhere", 12.0)  # nor its repository: named, every one being seen
    assert late.pending("team", scope) == ("writing somewhere", 12.0)
    assert late.pending("team", Scope({"team/web"}.__contains__)) == ("writing to the registry", 12.0)
    clock.advance(12.0)
    assert late.pending("team", scope) is None
    assert late.pending("team") == ("deleting tag team/app:v2", 30.0)


def _landing(late: LateWrites, namespace: str) -> tuple[str, float, Landing]:
    """The namespace's write that may land latest (`LateWrites.pending`), with its `Landing`."""
    pending = late.pending(namespace)
    assert pending is not None
    return pending[0], pending[1], landing_of(pending[0])


def test_a_write_carries_what_it_would_do_landing_late() -> None:
    """A DELETE's description says, out and once ended unanswered, that landing late it removes a
    manifest; a PUT's (`sent` without ``landing``, and every `note`) that it leaves a tag: what the
    504s that name the write say of it (review r2latedelete L1)."""
    late = LateWrites(Clock())
    delete = "deleting manifest a/app@sha256:0"
    number = late.sent("a", delete, repository="a/app", landing=Landing.REMOVES_MANIFEST)
    assert _landing(late, "a") == (delete, math.inf, Landing.REMOVES_MANIFEST)
    late.ended("a", number, grace=4.0)
    assert _landing(late, "a") == (delete, 4.0, Landing.REMOVES_MANIFEST)
    put = late.sent("b", "deleting tag b/app:v1", ("b/app", "v1", "sha256:1"), kind=COPY)
    assert _landing(late, "b") == ("deleting tag b/app:v1", math.inf, Landing.LEAVES_TAG)
    late.ended("b", put, grace=4.0)
    assert _landing(late, "b") == ("deleting tag b/app:v1", 4.0, Landing.LEAVES_TAG)
    late.note("c", "repairing dangling tag c/app:v1", 4.0, "c/app", "v1")
    assert _landing(late, "c") == ("repairing dangling tag c/app:v1", 4.0, Landing.LEAVES_TAG)


def test_a_dropped_entry_makes_only_its_own_namespaces_pass_run_again() -> None:
    """A namespace's unanswered DELETE whose time has passed and whose entry was dropped tells a pass
    of that namespace begun before that time to pass again, not one of another namespace: one
    process-wide time made every found-empty pass run again (review r2latedelete N1). Past
    `dropped_kept` namespaces, the oldest one's time counts for all: a pass more, none missed."""
    clock = Clock()
    late = LateWrites(clock, dropped_kept=1)
    began = clock.seconds()
    number = late.sent("a", "deleting manifest a/app@sha256:1", after=4.0, timeout=2.0, repository="a/app")
    clock.advance(2.0)
    late.ended("a", number, 4.0)  # unanswered: may land in a until 6.0
    clock.advance(5.0)
    assert late.pending("a") is None  # its time passed: dropped
    assert late.since("a", began) == ("this pass ran (its record dropped once its time passed)", 6.0)
    assert late.since("b", began) is None
    late.note("c", "repairing dangling tag c/app:v1", 8.0, "c/app", "v1")
    clock.advance(2.0)
    assert late.pending("c") is None  # a second namespace dropped: a's time now counts for every one
    assert late.since("b", began) == ("this pass ran (its record dropped once its time passed)", 6.0)
    assert late.since("c", 7.0) == ("this pass ran (its record dropped once its time passed)", 8.0)
    assert late.since("b", 7.0) is None
