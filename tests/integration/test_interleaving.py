"""Seeded randomized interleavings of pushes, deletes, deletecollection and cascades, through two
replicas behind a fault-injecting proxy, against the real registry (`tests.support.interleaving`).

A few seeds run by default (seconds); the slow tier runs hundreds. A failing seed prints the command
that runs it again: `INTERLEAVING_SEED=<seed> scripts/test -m slow <this file>::test_one_seed`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted

from tests.support.interleaving import Config, Report, run_many_seeds, run_seed
from tests.support.registry_server import RegistryServer

DEFAULT_SEEDS = (1, 2, 3)
SLOW_SEEDS = range(1000, 1300)


def verdict(report: Report) -> None:
    assert not report.violations, "\n".join([report.reproduce(), *report.violations])
    # The run exercised what it claims to: operations happened, faults and kills were injected.
    assert report.operations["delete"] and report.operations["deletecollection"], report.reproduce()


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
@pytest_twisted.ensureDeferred
async def test_interleaving(seed: int, reactor: Any, fresh_registry: RegistryServer) -> None:
    report = await run_seed(reactor, fresh_registry, Config(seed=seed))
    verdict(report)
    assert sum(report.faults.values()) > 0, report.reproduce()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_one_seed(reactor: Any, fresh_registry: RegistryServer) -> None:
    """The seed in INTERLEAVING_SEED (default: the first default seed), for reproducing a failure;
    INTERLEAVING_OPERATIONS as the failing run had it (the slow tier runs 60)."""
    seed = int(os.environ.get("INTERLEAVING_SEED", DEFAULT_SEEDS[0]))
    defaults = Config(seed=seed)
    operations = int(os.environ.get("INTERLEAVING_OPERATIONS", defaults.operations))
    kill_rate = float(os.environ.get("INTERLEAVING_KILL_RATE", defaults.kill_rate))
    verdict(
        await run_seed(reactor, fresh_registry, Config(seed=seed, operations=operations, kill_rate=kill_rate))
    )


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_interleaving_many_seeds(reactor: Any, fresh_registry: RegistryServer) -> None:
    async def run(seed: int) -> Report:
        return await run_seed(reactor, fresh_registry, Config(seed=seed, operations=60))

    failures = await run_many_seeds(reactor, SLOW_SEEDS, run, kills_required=False)
    assert not failures, "\n\n".join(failures)
