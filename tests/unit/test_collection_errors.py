"""The Status a deletecollection answers when it is not finished (`api/tags.py`): its message and
causes say what is left and what may still land, and nothing that is not so."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from payloadtags.api.errors import ApiError
from payloadtags.api.tags import TagsService, _collection_incomplete, _collection_unlooked
from payloadtags.names import TagRef
from payloadtags.registry import RegistryUnavailable

GONE = TagRef("team", "app", "v1")
LEFT = TagRef("team", "app", "v2")
LATE = "the registry did not answer the re-tag and may still carry it out"


def test_a_pending_tag_that_reads_as_gone_is_not_counted_or_caused_as_left() -> None:
    """The tag's write went unanswered, and the tag reads as gone (review-gateway4 finding 6): the
    504 said "0 of 2 selected tag(s) are still there, and the registry did not answer writes made to
    delete 1 of them" (one of none), and its cause was `ResourceLeft` for a tag not left."""
    error = _collection_incomplete("team", 2, [], {GONE: f"tag is gone now; {LATE}"}, [GONE])
    assert (error.code, error.retry_after) == (504, None)
    message = error.message
    assert "of them" not in message and "0 of 2" not in message, message
    assert (
        "none of the 2 selected tag(s) is listed now, but the registry did not answer writes made " in message
    )
    assert "to delete 1 of the 2, which it may still carry out" in message, message
    assert error.details is not None and error.details.causes is not None
    [cause] = error.details.causes
    assert (cause["reason"], cause["field"]) == ("WriteUnanswered", GONE.name)


def test_a_pending_tag_still_there_is_left_and_the_others_pending_are_not() -> None:
    why = {GONE: f"tag is gone now; {LATE}", LEFT: f"left as it was; {LATE}"}
    error = _collection_incomplete("team", 3, [LEFT], why, [GONE, LEFT])
    message = error.message
    assert (
        "1 of 3 selected tag(s) are still there, and the registry did not answer writes made to " in message
    )
    assert "delete 2 of the 3, which it may still carry out" in message, message
    assert error.details is not None and error.details.causes is not None
    assert [(c["reason"], c["field"]) for c in error.details.causes] == [
        ("ResourceLeft", LEFT.name),
        ("WriteUnanswered", GONE.name),
    ]


def test_a_pending_tag_of_a_cut_call_claims_no_look_and_the_latest_write_is_waited_for() -> None:
    """Cut before its look ended (review-ds8 F1, F2), the 504 does not say that none is listed; with the
    latest write that may land there (review-ds8 F5), it says to wait until that has passed."""
    latest = "the registry did not answer a write made while re-tagging team/app:v0 (within about 30s)"
    error = _collection_incomplete("team", 2, [], {GONE: LATE}, [GONE], (), latest, seen=False)
    message = error.message
    assert "listed now" not in message, message
    assert "which of the 2 selected tag(s) are still there is not known (no look ended)" in message, message
    assert f"its message gives, and the latest write of this process there: {latest}" in message
    assert "wait until the latest has passed, then list the tags" in message, message


class _Checks:
    """An inventory whose delete check of a repository is refused when named in ``refusing``, and
    held until the test fires it when ``held``: the check's calls, by repository, are kept."""

    def __init__(self, refusing: set[str], held: bool = False) -> None:
        self.refusing = refusing
        self.held = held
        self.calls: list[str] = []
        self.waiting: list[Deferred[None]] = []
        self.most = 0

    async def check_delete(self, ref: TagRef) -> None:
        self.calls.append(ref.repository)
        if self.held:
            waiting: Deferred[None] = Deferred()
            self.waiting.append(waiting)
            self.most = max(self.most, len([d for d in self.waiting if not d.called]))
            await waiting
        if ref.repository in self.refusing:
            raise RegistryUnavailable(f"denied: the token does not grant repository:{ref.repository}:delete")


def _service(inventory: _Checks, check_concurrency: int = 16) -> TagsService:
    return TagsService(
        inventory=cast(Any, inventory),
        registry_host="registry.example.com",
        authorizer=cast(Any, None),
        versions=cast(Any, None),
        check_concurrency=check_concurrency,
    )


def _failure(outcome: Deferred[None]) -> ApiError:
    failures: list[Failure] = []
    outcome.addErrback(failures.append)
    [failure] = failures
    assert isinstance(failure.value, ApiError)
    return failure.value


def test_the_unlooked_503_says_whether_its_tags_are_there_is_not_known() -> None:
    """The 503 of a call whose deadline came before it looked for what writes of its process may have
    put back: no look read those tags, so their causes are not `ResourceLeft` (a tag a look listed),
    and they are not named as some of the selection, which is deleted (review r8own L1)."""
    error = _collection_unlooked("team", 2, [("team/app", "v2", "sha256:" + "0" * 64)] * 2)
    assert (error.code, error.retry_after) == (503, 1)
    assert error.details is not None
    assert [(c["reason"], c["field"]) for c in error.details.causes or ()] == [("NotLookedFor", LEFT.name)]
    assert "its 2 tag(s) are deleted, but writes of payloadtags during this request may have put back" in (
        error.message
    )
    assert "selected tag(s)" not in error.message, error.message
    assert f'"{LEFT.name}" ({LEFT.repository}:v2); retry' in error.message, error.message
    # Such a write may have been answered before the last look began (of a tag outside the
    # selection, which that look may have listed without taking it in): not "after the last look"
    # (review r9own N1).
    assert "last look" not in error.message, error.message
    assert all("last look" not in c["message"] for c in error.details.causes or ()), error.details.causes


def test_the_unlooked_503_of_an_empty_selection_says_it_selected_none() -> None:
    """A call that selected nothing, while a write of its process to a tag its selector matches was
    answered during it with its copy not known gone: "its 0 tag(s) are deleted" (review r9own N2)."""
    error = _collection_unlooked("team", 0, [("team/app", "v2", "sha256:" + "0" * 64)])
    assert "0 tag(s)" not in error.message, error.message
    assert "not finished: it selected no tag, but writes of payloadtags" in error.message, error.message


def test_a_dry_run_checks_each_repository_it_selects_once() -> None:
    # review-ops4 1: the check was made for the selection's first tag only, so a repository the
    # account may not delete in was shown deleted when it came after one it may.
    refs = [TagRef("team", f"app{i % 3}", f"v{i}") for i in range(9)]
    checks = _Checks({"team/app2"})
    error = _failure(Deferred.fromCoroutine(_service(checks)._check_deletes("team", refs)))
    assert sorted(checks.calls[:3]) == ["team/app0", "team/app1", "team/app2"]
    # The refused repository's other tags are checked for their own words; nothing else is.
    assert checks.calls[3:] == ["team/app2", "team/app2"]
    assert error.code == 503 and "3 of 9 selected tag(s) are still there" in error.message
    assert error.details is not None and error.details.causes is not None
    denied = [ref.name for ref in refs if ref.repository == "team/app2"]
    assert [c["field"] for c in error.details.causes] == denied


def test_a_dry_run_over_thousands_of_repositories_is_bounded_and_keeps_its_stack() -> None:
    # Checks that pass at once (believed for a while) run in a loop, not nested (8f5a64c's
    # RecursionError); held ones are at most check_concurrency at a time.
    refs = [TagRef("team", f"app{i}", "v1") for i in range(5000)]
    quick = _Checks(set())
    done = Deferred.fromCoroutine(_service(quick)._check_deletes("team", refs))
    assert done.called and len(quick.calls) == 5000
    held = _Checks({"team/app4999"}, held=True)
    outcome = Deferred.fromCoroutine(_service(held, check_concurrency=4)._check_deletes("team", refs))
    while not outcome.called:
        pending = [d for d in held.waiting if not d.called]
        assert 0 < len(pending) <= 4
        pending[0].callback(None)
    assert held.most == 4
    error = _failure(outcome)
    assert "1 of 5000 selected tag(s) are still there" in error.message
