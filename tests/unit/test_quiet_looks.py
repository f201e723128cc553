"""The quiet loop's looks on a Clock, against a model of when the action may and must run: settings of
any precision, looks on time, late, very late (a stall) or after the clock stepped (review r15quiet)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from payloadtags.quiet import WhenQuiet, quiet_after

EPS = 1e-6


@attrs.define
class Look:
    due: float  # the clock time it was due at (the loop's grid)
    clock: float  # the clock time it ran at
    real: float  # the real time it ran at
    begun: int
    held: bool
    stepped: bool  # the wall clock stepped since the look before
    acted: bool = False


def _bound_looks(after: float, held_at_most: float) -> int:
    """Looks past the seeing one the held bound takes, as the docs mean it (the first look due at or
    after after + held_at_most), with a tolerance for float noise in the settings."""
    if math.isinf(held_at_most):
        return 10**9
    x = (after + held_at_most) / (after / 3)
    return max(3, math.ceil(x - 1e-9))


def _run(data: st.DataObject, request_timeout: float, ttl: float) -> tuple[list[Look], list[float]]:
    after = quiet_after(request_timeout)
    look = after / 3
    held_at_most = 1.5 * ttl
    clock = Clock()
    clock.rightNow = data.draw(st.sampled_from([0.0, 1.7e9 + 0.25]), "t0")
    real = [0.0]
    state: dict[str, Any] = {"lists": 0, "held": False}
    looks: list[Look] = []
    lists: list[float] = []  # real times lists began
    pending: dict[str, Any] = {"due": 0.0, "stepped": False}

    def begun() -> int:
        looks.append(
            Look(pending["due"], clock.seconds(), real[0], state["lists"], state["held"], pending["stepped"])
        )
        pending["stepped"] = False
        return int(state["lists"])

    def act() -> None:
        looks[-1].acted = True

    quiet = WhenQuiet(
        clock, begun, (act,), after, held=lambda: bool(state["held"]), held_at_most=held_at_most
    )
    quiet.run()
    looks.clear()  # run() read begun once
    steps = data.draw(st.integers(5, 40), "steps")
    for _ in range(steps):
        assert quiet._loop is not None and quiet._loop.call is not None
        due = quiet._loop.call.getTime()
        now = clock.seconds()
        if due > now and data.draw(st.integers(0, 5), "list?") == 0:
            at = now + data.draw(st.floats(0, 0.999), "list at") * (due - now)
            if at < due:
                real[0] += at - now
                clock.advance(at - now)
                state["lists"] += 1
                lists.append(real[0])
        if data.draw(st.integers(0, 3), "toggle held?") == 0:
            state["held"] = not state["held"]
        kind = data.draw(st.sampled_from(["on time"] * 3 + ["late"] * 3 + ["very late", "step"]), "kind")
        late = 0.0
        if kind == "late":
            late = data.draw(st.floats(0, 0.49), "late") * look
        elif kind == "very late":
            late = data.draw(st.floats(0.5, 6.0), "very") * look
        elif kind == "step":
            pending["stepped"] = True
            step = data.draw(st.floats(-6.0, 6.0), "step") * look
            clock.rightNow += step  # the wall clock steps: no real time passes
        pending["due"] = due
        target = due + late
        amount = max(0.0, target - clock.seconds())
        real[0] += amount
        clock.advance(amount)
    quiet.stop()
    return looks, lists


def _check(looks: list[Look], lists: list[float], request_timeout: float, ttl: float) -> None:
    after = quiet_after(request_timeout)
    look = after / 3
    held_at_most = 1.5 * ttl
    bound = _bound_looks(after, held_at_most)
    seen = 0
    since: Look | None = None
    since_index = 0
    done = True
    stepped = any_held = False
    for index, x in enumerate(looks):
        if x.begun != seen:
            assert not x.acted
            seen, since, since_index, done, stepped, any_held = x.begun, x, index, False, x.stepped, False
            continue
        stepped = stepped or x.stepped
        any_held = any_held or x.held
        was_done = done
        if x.acted:
            assert not done, "a second action in a spell, or one with no list"
            assert since is not None
            done = True
            last_list = max(t for t in lists if t <= since.real)
            if not stepped:
                # never while a list began less than after ago, minus at most half a look
                assert x.real - last_list >= after - look / 2 - EPS, (x.real - last_list, after)
                if x.held:
                    assert x.real - since.real >= after + held_at_most - look / 2 - EPS
        if since is None or was_done or stepped:
            continue
        # the model: all looks since `since` ran on the grid, each late by less than half a look
        spell = looks[since_index : index + 1]
        regular = all(0 <= y.clock - y.due < 0.49 * look + EPS for y in spell) and all(
            abs((b.due - a.due) - look) < 1e-6 * look for a, b in itertools.pairwise(spell)
        )
        k = index - since_index
        if regular:
            expected = k >= 3 and (k >= bound or not x.held)
            assert x.acted == expected, (k, bound, x.held, x.acted)
            if x.acted:
                # the docs' bound: after + a look, or held: after + held_at_most rounded up to a look + a look
                last_list = max(t for t in lists if t <= since.real)
                late = x.clock - x.due
                assert x.real - last_list < (bound if any_held else 3) * look + look + late + EPS
        elif x.clock - since.clock > 3.5 * look + EPS and (
            not x.held or x.clock - since.clock > after + held_at_most + look / 2 + EPS
        ):
            # liveness, looks late or missed: it has run by now
            assert x.acted, (x.clock - since.clock, x.held)


_TIMEOUTS = st.one_of(
    st.sampled_from([1.0, 40.0, 60.0, 61.5, 80.0, 90.25, 120.0, 240.0, 600.0, 601.0, 3600.0, 86400.0]),
    st.integers(1, 200_000).map(lambda ms: ms / 1000),
    st.floats(0.001, 1e6),
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), request_timeout=_TIMEOUTS, ttl=_TIMEOUTS)
def test_the_quiet_action_against_a_model(data: st.DataObject, request_timeout: float, ttl: float) -> None:
    looks, lists = _run(data, request_timeout, ttl)
    _check(looks, lists, request_timeout, ttl)


@pytest.mark.parametrize(("request_timeout", "ttl"), [(60.027, 120.018), (60.027, 40.006)])
def test_the_held_bound_a_whole_number_of_looks_is_not_a_look_late(
    request_timeout: float, ttl: float
) -> None:
    after = quiet_after(request_timeout)
    bound = _bound_looks(after, 1.5 * ttl)
    clock, lists, done = Clock(), [0], list[float]()
    quiet = WhenQuiet(
        clock,
        lambda: lists[0],
        (lambda: done.append(clock.seconds()),),
        after,
        held=lambda: True,
        held_at_most=1.5 * ttl,
    )
    quiet.run()
    lists[0] += 1
    while not done:
        clock.advance(after / 3)
    quiet.stop()
    looks_after_the_seeing_one = round(done[0] / (after / 3)) - 1
    assert looks_after_the_seeing_one == bound


def _action_after_list(
    after: float,
    first_look_late_by: float,
    later_looks_late_by: float,
    list_before_the_look: float = 1.0,
    held_at_most: float = float("inf"),
) -> float:
    """The loop starts at 0 (looks due at whole intervals); a list begins ``list_before_the_look``
    before the look that sees it (due at one interval, late by ``first_look_late_by``); the looks after
    it each late by ``later_looks_late_by``. Returns when the action ran, after the list."""
    look = after / 3
    clock, lists, done = Clock(), [0], list[float]()
    quiet = WhenQuiet(
        clock, lambda: lists[0], (lambda: done.append(clock.seconds()),), after, held_at_most=held_at_most
    )
    quiet.run()
    seen_at = look + first_look_late_by
    began = seen_at - list_before_the_look  # after the look before (at 0), maybe after this one was due
    # ``begun`` is read only by the looks: counting the list now is counting it at ``began``, also when
    # ``began`` falls in the look's lateness (a Clock would run the look first if advanced there).
    lists[0] += 1
    clock.advance(seen_at)
    k = 2
    while not done:
        clock.advance(k * look + later_looks_late_by - clock.seconds())
        k += 1
    quiet.stop()
    return done[0] - began


def test_a_later_look_late_by_a_millisecond_does_not_bring_the_action_a_look_early() -> None:
    # The looks after the one that saw the list each late by 1 ms: the action must not come before
    # after minus half a look (150 s by default). Passes on main (181.001 s); a count rounded up
    # (math.ceil for round, mutant M2) gives 121.001 s, and no test in test_quiet.py or
    # test_quiet_server.py sees it.
    assert _action_after_list(180.0, 0.0, 0.001) >= 180.0 - 30.0
