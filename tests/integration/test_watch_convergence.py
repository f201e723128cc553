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
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from payloadtags.limits import WatchLimits
from tests.support.harness import Pki, start_server
from tests.support.interleaving import slow_seeds
from tests.support.registry_server import RegistryServer, reap
from tests.support.watch_convergence import Client, Config, Report, Run, run_seed

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


@pytest_twisted.ensureDeferred
async def test_a_run_lists_a_scope_while_a_client_watches_it(
    reactor: Any, fresh_registry: RegistryServer, pki: Pki, tmp_path: Path
) -> None:
    """A run with no plan: seed 2's two clients list all namespaces and one namespace, so neither
    lists a scope the other watches, and every list the plan makes is of a scope nobody watches. The
    run still lists a scope while a client watches it, ordered by that watch's opening, not by
    timing (seed 21 checked no such list in about 2 runs in 10 on a loaded machine: its later clients
    listed before the first ones' watches opened)."""
    report = await run_seed(reactor, fresh_registry, pki, Config(seed=2, operations=0), tmp_path)
    assert not report.violations, "\n".join([report.reproduce(), *report.violations])
    assert report.counts["lists without"] >= 2, report.summary()
    assert report.counts["lists with a source"] >= 1, report.summary()


@pytest_twisted.ensureDeferred
async def test_a_client_cut_inside_an_opening_made_after_the_quiet_point_is_waited_for(
    reactor: Any, fresh_registry: RegistryServer, pki: Pki, tmp_path: Path
) -> None:
    """Seed 46023 of the slow tier: an all-namespaces client listed while nobody watched, and watched
    only after the quiet point, so its opening took numbers past the target the quiet point noted;
    its connection was cut after the first of them, and the check took it for caught up and found it
    holding tags the rest of its opening deletes. The check must wait for the rest."""
    run = Run(reactor, fresh_registry, pki, Config(seed=0), tmp_path)
    repository = "wc0n0/app0"
    await deferToThread(run._push_all, [(repository, tag) for tag in ("t0", "t1", "t2")])
    run.server = await start_server(
        reactor, pki, fresh_registry.url, watch=WatchLimits(bookmark_interval=0.2)
    )
    client = Client(
        name="0", scope=None, limit=1, api=run.admin(), rng=random.Random(0), run=run, linger=1.0, cut=1
    )
    # Away a while after the cut: the check must not stop it meanwhile.
    client.away = 1.0
    run.clients.append(client)
    try:
        client.start()
        while not any(what.startswith("list at") for _, what, _ in client.journal):
            await deferLater(reactor, 0.02, lambda: None)
        for tag in ("t0", "t1"):
            assert await deferToThread(run._registry_delete, repository, tag) == "202"
        await Deferred.fromCoroutine(run.quiet())
    finally:
        for each in run.clients:
            await each.stop()
        await run.server.stop()
    quiet_at = next(change.at for change in run.changes if change.what.startswith("quiet"))
    watched_at = next(at for at, what, _ in client.journal if what.startswith("watch from"))
    assert quiet_at < watched_at, "the client watched before the quiet point: nothing was tested"
    assert run.report.counts["watches cut"] == 1
    assert not run.report.violations, run.report.violations
    deleted = {next(iter(keys))[2] for _, what, keys in client.journal if what.startswith("DELETED")}
    assert deleted == {"t0", "t1"}
    assert set(client.cache.values()) == {("wc0n0", "app0", "t2")}


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
            reap(registry_reaper)
        print(report.summary(), "violations:", len(report.violations))
        if report.violations:
            failures.append("\n".join([report.reproduce(), *report.violations]))
    assert not failures, "\n\n".join(failures)
