"""Seeded randomized list+watch clients against one payloadtags and the real registry: once the system
is quiet, every client's cache is exactly the registry's tags of its scope
(`tests.support.watch_convergence`, docs/watch.md "Guarantees").

Five seeds run by default (about a second each; each of them failed before the first events of a
watch from a list of an unwatched scope took resourceVersions of their own, or before a tag such a
list showed was DELETED only once a read confirmed it); the slow tier runs a hundred. A failing seed
prints the command that runs it again: `INTERLEAVING_SEED=<seed> scripts/test -m slow <this
file>::test_one_seed`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.harness import Pki
from tests.support.interleaving import slow_seeds
from tests.support.registry_server import RegistryServer
from tests.support.watch_convergence import Config, Report, run_seed

DEFAULT_SEEDS = (3, 13, 21, 24, 30)
SLOW_SEEDS = range(3000, 3100)


def verdict(report: Report) -> None:
    print(report.summary())
    assert not report.violations, "\n".join([report.reproduce(), *report.violations])
    # The run exercised what it claims to: lists of scopes with and without a source, changes made
    # through the API and behind its back, watches resumed.
    wanted = ("lists with a source", "lists without", "pushes", "events DELETED", "events BOOKMARK")
    missing = [name for name in wanted if not report.counts[name]]
    assert not missing, f"{report.reproduce()}: no {', no '.join(missing)}"


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
@pytest_twisted.ensureDeferred
async def test_clients_converge(
    seed: int, reactor: Any, fresh_registry: RegistryServer, pki: Pki, tmp_path: Path
) -> None:
    verdict(await run_seed(reactor, fresh_registry, pki, Config(seed=seed), tmp_path))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_one_seed(reactor: Any, fresh_registry: RegistryServer, pki: Pki, tmp_path: Path) -> None:
    """The seed in INTERLEAVING_SEED (default: the first default seed), for reproducing a failure;
    INTERLEAVING_OPERATIONS as the failing run had it (the slow tier runs 80)."""
    seed = int(os.environ.get("INTERLEAVING_SEED", DEFAULT_SEEDS[0]))
    operations = int(os.environ.get("INTERLEAVING_OPERATIONS", Config(seed=seed).operations))
    verdict(await run_seed(reactor, fresh_registry, pki, Config(seed=seed, operations=operations), tmp_path))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_clients_converge_many_seeds(
    reactor: Any, registry_reaper: list[RegistryServer], pki: Pki, tmp_path: Path
) -> None:
    """A registry of its own for each seed: the all-namespaces clients see every tag of it."""
    failures = []
    for seed in slow_seeds(SLOW_SEEDS):
        registry = RegistryServer()
        registry_reaper.append(registry)
        try:
            report = await run_seed(reactor, registry, pki, Config(seed=seed, operations=80), tmp_path)
        finally:
            registry.signal_stop()
        print(report.summary(), "violations:", len(report.violations))
        if report.violations:
            failures.append("\n".join([report.reproduce(), *report.violations]))
    assert not failures, "\n\n".join(failures)
