"""The test support's registries: one stopped without waiting (`signal_stop`, so that several stop at
once) is reaped by the next test's teardown, not left a zombie with its storage in memory until the
session ends (the slow tier starts a registry per seed)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.registry_server import RegistryServer, need_registry, reap


def _wait_exited_unreaped(pid: int) -> None:
    # Waits for the exit without collecting it (WNOWAIT): the process stays a zombie for `reap`.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_registries_that_exited_are_waited_for_and_their_storage_removed() -> None:
    need_registry()
    stopped, running = RegistryServer(), RegistryServer()
    servers = [stopped, running]
    try:
        assert stopped.process is not None
        pid, storage = stopped.process.pid, stopped.root
        assert storage.exists()
        stopped.signal_stop()
        _wait_exited_unreaped(pid)
        assert _zombie(pid)
        reap(servers)
        assert servers == [running]  # the one still running is left to the session's end
        assert not _zombie(pid)
        assert not storage.exists()
        assert not running.exited()
    finally:
        for server in servers:
            server.stop()
