"""scripts/demo.py stopped midway, or with a payloadtags that cannot start.

review-newcomer F1: SIGTERM (`kill`, a service manager, `timeout`) ended the demo at once, no `finally`
run: its payloadtags kept serving (with AlwaysAllow) and holding the demo's stdout, so a reader through a
pipe waited for ever; the demo's directory with the CAs' private keys and the registry's storage stayed.
L1: Ctrl-C ended in a traceback and left that directory. L2: a payloadtags that could not start got 15 s
of waiting, then "payloadtags did not become ready" and not its reason, which is in its log.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.process import ROOT
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.kubectl, pytest.mark.registry]

DEMO = ROOT / "scripts" / "demo.py"


def _environment(scratch: Path, **extra: str) -> dict[str, str]:
    # TMPDIR: the demo's own directory (keys, kubeconfig, log) goes where only this test looks.
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(scratch), **extra}


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def _registry_dir(port: int, scratch: Path) -> Path:
    # The registry keeps its config and storage in a directory of its own, in /dev/shm where there is
    # one (else in TMPDIR); the config names its port.
    for parent in (Path("/dev/shm"), scratch):
        for config in parent.glob("payloadtags-registry-*/config.yml"):
            if f'"127.0.0.1:{port}"' in config.read_text():
                return config.parent
    raise AssertionError(f"no registry directory for port {port}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stopped_demo_stops_all_it_started_and_removes_its_files(signum: int, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # Into a file, not a pipe: before the fix, the server left running held a pipe open for ever.
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_environment(scratch),
            cwd=ROOT,
        )
    try:
        while "kubectl runs with" not in out.read_text():
            assert demo.poll() is None, out.read_text()
            time.sleep(0.05)
    except BaseException:
        demo.kill()
        raise
    started = re.search(r"standalone mode on https://127\.0\.0\.1:(\d+)", out.read_text())
    assert started is not None
    server_pattern = f"--secure-port={started.group(1)} "
    [server] = _pids(server_pattern)
    registry_url = re.search(
        r"--registry-url=http://127\.0\.0\.1:(\d+)", Path(f"/proc/{server}/cmdline").read_text()
    )
    assert registry_url is not None
    registry_dir = _registry_dir(int(registry_url.group(1)), scratch)
    assert _pids(str(registry_dir))
    [work] = scratch.glob("payloadtags-demo-*")
    assert (work / "pki").is_dir()

    demo.send_signal(signum)
    demo.wait(timeout=120)

    left = _pids(server_pattern) + _pids(str(registry_dir))
    storage_left = registry_dir.exists()
    for pid in left:  # before failing, stop and remove what the demo left
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(registry_dir, ignore_errors=True)
    said = out.read_text()
    assert not left, f"still running after the demo ended ({demo.returncode}): {left}\n{said}"
    assert not storage_left, said
    assert list(scratch.iterdir()) == [], said  # the demo's keys, kubeconfig and log
    # Killed by the signal, as a shell expects (it shows 128+N: 130 for Ctrl-C, 143 for SIGTERM).
    assert demo.returncode == -signum, said
    assert "Traceback" not in said, said
    name = signal.Signals(signum).name
    last = said.splitlines()[-1]
    assert (
        last == f"demo: stopped by {name}: the registry and payloadtags are stopped, their files removed"
    ), said


def test_a_payloadtags_that_cannot_start_is_told_at_once_with_its_reason(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # A real start-up error, from the environment the demo passes on: a password that is not UTF-8.
    password = os.fsdecode(b"\xff")
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_environment(scratch, PAYLOADTAGS_REGISTRY_PASSWORD=password),
        cwd=ROOT,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    # It saw the process end: it did not wait out the 15 s and say only that it was not ready.
    kept = re.fullmatch(
        r"payloadtags exited with code 1 at start; the last lines of its log \((.+)\):", lines[0]
    )
    assert kept is not None, result.stderr
    assert lines[1:] == ["  payloadtags: $PAYLOADTAGS_REGISTRY_PASSWORD is not UTF-8 text"], result.stderr
    # The log is kept and named; the demo's directory (private keys) is removed all the same.
    log = Path(kept.group(1))
    assert log.parent == scratch
    assert "is not UTF-8 text" in log.read_text()
    assert list(scratch.iterdir()) == [log]
    assert "Traceback" not in result.stderr


def _demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("payloadtags_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Running:
    """A payloadtags process that runs and never becomes ready."""

    returncode = None

    def poll(self) -> None:
        return None


def test_a_payloadtags_never_ready_is_told_with_its_log_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = _demo_module()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    log = tmp_path / "payloadtags.log"
    log.write_text("first\nregistry http://127.0.0.1:1 cannot be used: connection refused\n")
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += 1.0  # whole seconds: no float sums near the deadline

    nobody = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exited:
        demo.wait_ready(nobody, _Running(), log, timeout=3.0, clock=lambda: now[0], sleep=sleep)
    assert slept == [0.2] * 3
    said = str(exited.value.code).splitlines()
    kept = re.fullmatch(
        r"payloadtags did not become ready within 3 s; the last lines of its log \((.+)\):", said[0]
    )
    assert kept is not None, said
    assert said[1:] == ["  first", "  registry http://127.0.0.1:1 cannot be used: connection refused"]
    assert Path(kept.group(1)).read_text() == log.read_text()
