"""Seeded randomized interleavings through two `payloadtags serve` processes: users' deletes over HTTPS,
the namespace controller's deletecollection (parallel and repeated) through the front proxy, the
elected leader's cascade, registry faults, and SIGKILL of a replica mid-request with a restart
(`tests.support.process_interleaving`).

One seed runs by default; the slow tier runs many. A failing seed prints the command that reruns it:
`INTERLEAVING_SEED=<seed> scripts/test -m slow <this file>::test_one_process_seed`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.interfaces import IReactorTime

from tests.support.harness import Pki
from tests.support.interleaving import Config, Report, run_many_seeds
from tests.support.kubeapi.server import KubeApiDouble
from tests.support.process_interleaving import run_process_seed
from tests.support.registry_server import RegistryServer

DEFAULT_SEED = 7
SLOW_SEEDS = range(2000, 2100)
# Fewer operations than in one process: two processes start, and each kill restarts one. The
# default tier's seed kills once; the slow tier's seeds three times.
OPERATIONS = 20
SLOW_OPERATIONS = 30
SLOW_KILL_RATE = 0.2
# Registry requests are fewer per operation than in one process (no cascade per call): more faults.
FAULT_RATE = 0.15


def verdict(report: Report) -> None:
    print(report.summary())
    assert not report.violations, "\n".join([report.reproduce(), *report.violations])
    # The run did what it claims: deletes and deletecollection answered, a process was killed.
    assert report.operations["delete"] and report.operations["deletecollection"], report.reproduce()
    assert report.kills > 0 and sum(report.faults.values()) > 0, report.reproduce()


@pytest_twisted.ensureDeferred
async def test_process_interleaving(
    reactor: IReactorTime, fresh_registry: RegistryServer, kube_api: KubeApiDouble, pki: Pki, tmp_path: Path
) -> None:
    config = Config(seed=DEFAULT_SEED, operations=OPERATIONS, fault_rate=FAULT_RATE)
    verdict(await run_process_seed(reactor, fresh_registry, config, kube_api, pki, tmp_path / "run"))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_one_process_seed(
    reactor: IReactorTime, fresh_registry: RegistryServer, kube_api: KubeApiDouble, pki: Pki, tmp_path: Path
) -> None:
    """The seed in INTERLEAVING_SEED (default: the default tier's), with INTERLEAVING_OPERATIONS."""
    seed = int(os.environ.get("INTERLEAVING_SEED", DEFAULT_SEED))
    operations = int(os.environ.get("INTERLEAVING_OPERATIONS", OPERATIONS))
    kill_rate = float(os.environ.get("INTERLEAVING_KILL_RATE", Config(seed=seed).kill_rate))
    config = Config(seed=seed, operations=operations, fault_rate=FAULT_RATE, kill_rate=kill_rate)
    verdict(await run_process_seed(reactor, fresh_registry, config, kube_api, pki, tmp_path / "run"))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_process_interleaving_many_seeds(
    reactor: IReactorTime, fresh_registry: RegistryServer, kube_api: KubeApiDouble, pki: Pki, tmp_path: Path
) -> None:
    async def run(seed: int) -> Report:
        config = Config(
            seed=seed, operations=SLOW_OPERATIONS, fault_rate=FAULT_RATE, kill_rate=SLOW_KILL_RATE
        )
        return await run_process_seed(reactor, fresh_registry, config, kube_api, pki, tmp_path / str(seed))

    failures = await run_many_seeds(reactor, SLOW_SEEDS, run, kills_required=True)
    assert not failures, "\n\n".join(failures)
