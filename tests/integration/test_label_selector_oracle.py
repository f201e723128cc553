"""Label selectors against upstream's own parser (kubectl's copy of labels.Parse, offline): the table of
verdicts the unit tests hold, and a bounded, seeded sample of selectors, are accepted or refused as
there. Tags carry no labels, so a selector accepted here and refused upstream (`!k`, `k!=v`,
`k notin (...)`) would let a deletecollection delete a whole namespace where kube-apiserver says 400."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from payloadtags.api.errors import ApiError
from payloadtags.api.selectors import parse_label_selector
from tests.support.kubectl import upstream_label_selector_error
from tests.unit.test_selectors import UPSTREAM_ACCEPTS, UPSTREAM_REFUSES

pytestmark = pytest.mark.kubectl  # runs kubectl (offline)

_KEYS = ["app", "in", "x.y/z", "a" * 253 + "/b", "a" * 254 + "/b", "a" * 64, "-a", "A.b/c", "/a", "a/b/c"]
_VALUES = ["a", "in", "", "-a", "1", "a" * 64]
_LIST = ["a", "b", "in", ",", ",", ",,", " ", "=", "!"]


def _requirement(rng: random.Random) -> str:
    key = rng.choice(_KEYS)
    match rng.randrange(4):
        case 0:
            return rng.choice(["", "!", "! "]) + key
        case 1:
            return key + rng.choice(["=", "==", "!=", ">", "<", " != "]) + rng.choice(_VALUES)
        case _:
            items = "".join(rng.choices(_LIST, k=rng.randint(0, 5)))
            return f"{key} {rng.choice(['in', 'notin'])} ({items})"


def _selector(rng: random.Random) -> str:
    return rng.choice([",", " , ", ",,"]).join(_requirement(rng) for _ in range(rng.randint(1, 2)))


def _accepted_here(selector: str) -> bool:
    try:
        parse_label_selector(selector)
    except ApiError:
        return False
    return True


def _upstream(selectors: list[str]) -> list[str | None]:
    with ThreadPoolExecutor(4) as pool:  # about 80 ms a kubectl run
        return list(pool.map(upstream_label_selector_error, selectors))


def test_the_table_of_upstream_verdicts_is_upstreams() -> None:
    refused = [text for text, _ in UPSTREAM_REFUSES]
    verdicts = _upstream(UPSTREAM_ACCEPTS + refused)
    assert verdicts[: len(UPSTREAM_ACCEPTS)] == [None] * len(UPSTREAM_ACCEPTS)
    for (text, wording), error in zip(UPSTREAM_REFUSES, verdicts[len(UPSTREAM_ACCEPTS) :], strict=True):
        assert error is not None and wording in error, text


def test_a_seeded_sample_is_accepted_and_refused_as_upstream() -> None:
    rng = random.Random(31)
    selectors = sorted({_selector(rng) for _ in range(60)})
    upstream = [error is None for error in _upstream(selectors)]
    differ = [(text, ok) for text, ok in zip(selectors, upstream, strict=True) if _accepted_here(text) != ok]
    assert differ == [], "(selector, accepted upstream)"
    assert 5 < sum(upstream) < len(selectors) - 5  # the sample holds both verdicts
