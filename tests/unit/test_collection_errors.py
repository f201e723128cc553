"""The Status a deletecollection answers when it is not finished (`api/tags.py`): its message and
causes say what is left and what may still land, and nothing that is not so."""

from __future__ import annotations

from payloadtags.api.tags import _collection_incomplete
from payloadtags.names import TagRef

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
