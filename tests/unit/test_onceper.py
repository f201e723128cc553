"""`OncePerPeriod`: once per period per key, the times held back counted, the keys bounded; timed on
a reactor `Clock`."""

from __future__ import annotations

from twisted.internet.task import Clock

from payloadtags.onceper import OncePerPeriod, Said


def test_a_key_passes_first_then_once_per_period_counting_the_times_held_back() -> None:
    clock = Clock()
    once: OncePerPeriod[str] = OncePerPeriod(60.0, clock.seconds)
    assert once("refused") == Said(0, None)
    clock.advance(10)
    assert once("refused") is None
    clock.advance(49.5)
    assert once("refused") is None
    clock.advance(0.5)  # the period is over: said again, with the two held back
    said = once("refused")
    assert said == Said(2, 60.0)
    assert said.more() == " (2 more like it in the 60s since the last line)"


def test_the_count_covers_the_whole_interval_when_the_failures_had_stopped() -> None:
    clock = Clock()
    once: OncePerPeriod[str] = OncePerPeriod(30.0, clock.seconds)
    once("down")
    once("down")
    clock.advance(300)
    assert once("down") == Said(1, 300.0)
    # Said with nothing held back: no suffix.
    clock.advance(30)
    said = once("down")
    assert said == Said(0, 30.0)
    assert said.more() == ""


def test_keys_have_periods_of_their_own() -> None:
    clock = Clock()
    once: OncePerPeriod[tuple[str, int]] = OncePerPeriod(60.0, clock.seconds)
    assert once(("a", 1)) == Said(0, None)
    assert once(("a", 2)) == Said(0, None)
    assert once(("a", 1)) is None
    clock.advance(60)
    assert once(("a", 2)) == Said(0, 60.0)
    assert once(("a", 1)) == Said(1, 60.0)


def test_forget_ends_a_keys_period_and_gives_what_was_held_back() -> None:
    clock = Clock()
    once: OncePerPeriod[str] = OncePerPeriod(30.0, clock.seconds)
    assert once.forget("never said") is None
    once("failing")
    once("failing")
    once("failing")
    clock.advance(12)
    assert once.forget("failing") == Said(2, 12.0)
    assert once.forget("failing") is None  # once
    # Said at once after, counting nothing of before.
    assert once("failing") == Said(0, None)


def test_over_ends_an_episode_with_the_suffix_of_its_one_line() -> None:
    # The ending of the api/health.py and watch/failures.py lines, written once (review r2obs L2).
    clock = Clock()
    once: OncePerPeriod[str] = OncePerPeriod(30.0, clock.seconds)
    assert once.over("never said") == ""
    once("failing")
    assert once.over("failing") == ""  # none left out: no line
    once("failing")
    once("failing")
    once("failing")
    clock.advance(7)
    assert once.over("failing", like="the last line, about a,") == (
        " (2 more like the last line, about a, in the 7s after it)"
    )
    assert once.over("failing") == ""  # once
    assert once("failing") == Said(0, None)  # the next failure is said at once


def test_keys_are_bounded_forgetting_first_those_with_nothing_to_say() -> None:
    clock = Clock()
    once: OncePerPeriod[int] = OncePerPeriod(10.0, clock.seconds, max_keys=3)
    once(1)
    once(1)  # 1 has one held back
    once(2)
    clock.advance(10)
    once(3)
    # Full: 2's period is over with nothing held back, so it goes; 1 (one held back) stays.
    assert once(4) == Said(0, None)
    assert len(once) == 3
    assert once(1) == Said(1, 10.0)
    assert once(3) is None


def test_keys_are_bounded_when_every_key_is_in_its_period_the_oldest_goes() -> None:
    clock = Clock()
    once: OncePerPeriod[int] = OncePerPeriod(60.0, clock.seconds, max_keys=3)
    for key in (1, 2, 3):
        once(key)
        clock.advance(1)
    for key in range(4, 1000):
        once(key)
        assert len(once) == 3
    # The three said last are kept, in their period.
    assert [once(key) for key in (997, 998, 999)] == [None, None, None]


def test_a_key_said_again_is_the_newest() -> None:
    clock = Clock()
    once: OncePerPeriod[int] = OncePerPeriod(5.0, clock.seconds, max_keys=2)
    once(1)
    once(1)
    clock.advance(1)
    once(2)
    once(2)
    clock.advance(5)
    assert once(1) == Said(1, 6.0)  # said again: now newer than 2
    once(3)  # full, nothing expired and clean: the oldest said, 2, goes
    assert once(1) is None
    assert once(2) == Said(0, None)
