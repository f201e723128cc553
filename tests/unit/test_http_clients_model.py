"""The handshake bucket and ``accepted`` of one address against a model of what they should hold
(tests/support/bucket_model.py), on random mixes and kube-apiserver's storms: a few seeds here, many in
the slow tier (review-conns19)."""

from __future__ import annotations

import pytest

from payloadtags.http import clients as clients_module
from tests.support import bucket_model
from tests.support.bucket_model import World


def _found(world: World, exact: bool = True) -> tuple[list[str], list[str], list[float]]:
    """What a world found wrong: over-gives (or above the burst), shows not equal to the exact
    oracle, and (``exact``: nothing folds) shows short of the oracle."""
    return world.problems[:1], world.inexact[:1], world.shows_short()[:1] if exact else []


def _random_mixes(seeds: range) -> None:
    found = {seed: wrong for seed in seeds if any(wrong := _found(bucket_model.randomized(seed, 400)))}
    assert found == {}


def _random_mixes_folding(seeds: range, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients_module, "LOG_LIMIT", 16)
    monkeypatch.setattr(clients_module, "LOG_PER_BURST", 0)
    found = {
        seed: wrong for seed in seeds if any(wrong := _found(bucket_model.randomized(seed, 400), exact=False))
    }
    assert found == {}


def test_random_mixes_give_back_exactly_once_and_never_more() -> None:
    """Connects, handshakes of random length, evictions of pending connects in any order, shows,
    401s, closes, a client sharing the address, time steps: no bucket ever above its burst nor
    fuller than without the connects evicted under way, and at every front-proxy show exactly as
    full as without them."""
    _random_mixes(range(30))


@pytest.mark.slow
def test_random_mixes_give_back_exactly_once_and_never_more_many() -> None:
    _random_mixes(range(1000))


def test_random_mixes_whose_logs_fold_are_exact_but_for_the_connects_folded_in_while_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same with a log of 16 changes (folding all the time): never more, and at every show exactly
    as full as without the evicted connects whose takes were still in the log when they were evicted
    (those folded in while under way may be given back less: the known limitation)."""
    _random_mixes_folding(range(30), monkeypatch)


@pytest.mark.slow
def test_random_mixes_whose_logs_fold_are_exact_but_for_the_connects_folded_in_while_under_way_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _random_mixes_folding(range(300), monkeypatch)


STORMS = [(400, 300, 60, 400), (40, 40, 10, 60), (40, 100, 20, 120)]


def _storms(burst: int, per_round: int, freed: int, places: int, seeds: range) -> None:
    for seed in seeds:
        world = bucket_model.storm(seed, burst, 6, per_round, freed, places)
        assert _found(world) == ([], [], [])
        # Past the burst, its connects evicted while they waited for a token (none taken) are not
        # given back, by design, and it floods.
        assert (world.flooded == 0) == (per_round <= burst)


@pytest.mark.parametrize(("burst", "per_round", "freed", "places"), STORMS)
def test_kube_apiservers_storms_are_given_back_exactly(
    burst: int, per_round: int, freed: int, places: int
) -> None:
    """Six rounds of its connects 0.5 ms apart, handshakes of 2-8 ms, on a full server that evicts its
    oldest pending connect: exact at every show, and its address unflooded while a round is within the
    burst."""
    _storms(burst, per_round, freed, places, range(1))


@pytest.mark.slow
@pytest.mark.parametrize(("burst", "per_round", "freed", "places"), STORMS)
def test_kube_apiservers_storms_are_given_back_exactly_many(
    burst: int, per_round: int, freed: int, places: int
) -> None:
    # A seed of the burst of 400 takes about 6 s; of the others, under a second.
    _storms(burst, per_round, freed, places, range(6 if burst == 400 else 20))
