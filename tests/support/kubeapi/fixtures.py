"""pytest fixtures for the Kubernetes API test double.

Enable them with ``from tests.support.kubeapi.fixtures import *`` in a conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.support.kubeapi.server import KubeApiDouble

__all__ = ["kube_api", "kube_client", "kube_kubeconfig"]


@pytest_twisted.async_yield_fixture
async def kube_api(tmp_path: Path) -> AsyncIterator[KubeApiDouble]:
    """A running double on the test's reactor, with short bookmark periods for fast tests."""
    from twisted.internet import reactor

    double = KubeApiDouble(reactor, tmp_path / "kubeapi", bookmark_interval=0.1)
    double.start()
    try:
        yield double
    finally:
        await double.stop()
    assert not double.internal_errors, [f.getTraceback() for f in double.internal_errors]


@pytest.fixture
def kube_kubeconfig(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    """A kubeconfig for `kube_api` as ``admin`` (group ``system:masters``), by client certificate."""
    return kube_api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest_twisted.async_yield_fixture
async def kube_client(kube_kubeconfig: Path) -> AsyncIterator[object]:
    """A production `payloadtags.kube.KubeClient` for `kube_api`, loaded through the kubeconfig."""
    from twisted.internet import reactor

    from payloadtags.kube import KubeClient, load_cluster_config

    config = load_cluster_config(str(kube_kubeconfig))
    assert config is not None
    client = KubeClient(reactor, config, request_timeout=5.0)
    try:
        yield client
    finally:
        await client.close()
