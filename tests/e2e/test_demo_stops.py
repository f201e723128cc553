"""scripts/demo.py stopped midway, or with a payloadtags that cannot start.

review-newcomer F1: SIGTERM (`kill`, a service manager, `timeout`) ended the demo at once, no `finally`
run: its payloadtags kept serving (with AlwaysAllow) and holding the demo's stdout, so a reader through a
pipe waited for ever; the demo's directory with the CAs' private keys and the registry's storage stayed.
L1: Ctrl-C ended in a traceback and left that directory. L2: a payloadtags that could not start got 15 s
of waiting, then "payloadtags did not become ready" and not its reason, which is in its log.
r2demo L1: each failed start kept one more copy of the log in /tmp, never removed. L2: a Ctrl-C during
the demo's first second (its imports) still ended in a traceback. L3: `scripts/demo | head` ended in a
BrokenPipeError traceback and exit status 1.
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


def _registry_dir_of_child(parent: int) -> Path:
    """The directory of the registry that `parent` runs, from the registry's command line."""
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False)
    for pid in found.stdout.split():
        args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        if args[:2] == ["docker-registry", "serve"]:
            return Path(args[2]).parent
    raise AssertionError(f"no registry among the children of {parent}")


def _left_behind(server_pattern: str, registry_dir: Path) -> list[str]:
    """What is left of the demo's payloadtags and registry after it ended; stopped and removed here,
    so that a test failing on it leaves nothing either."""
    pids = _pids(server_pattern) + _pids(str(registry_dir))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    left = [f"process {pid}" for pid in pids]
    if registry_dir.exists():
        left.append(str(registry_dir))
        shutil.rmtree(registry_dir, ignore_errors=True)
    return left


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

    left = _left_behind(server_pattern, registry_dir)
    said = out.read_text()
    assert not left, f"left after the demo ended ({demo.returncode}): {left}\n{said}"
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
    # It saw the process end: it did not wait out the 15 s and say only that it was not ready.
    assert result.stderr.splitlines() == [
        "payloadtags exited with code 1 at start; its log:",
        "  payloadtags: $PAYLOADTAGS_REGISTRY_PASSWORD is not UTF-8 text",
    ], result.stderr
    # The message holds the whole log: no copy is kept (one was, per failed run, never removed), and
    # the demo's directory (private keys) is removed.
    assert list(scratch.iterdir()) == []


# Sends the demo a SIGINT as it imports tests.support.harness: a Ctrl-C in its first second, during its
# imports (Twisted), before it handles the stop signals.
_CTRL_C_WHILE_IMPORTING = """
import importlib.abc, os, runpy, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tests.support.harness":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_ctrl_c_while_the_demo_imports_stops_it_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_IMPORTING, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_environment(tmp_path),
        cwd=ROOT,
    )
    # Ended by the signal (a shell shows 130), quietly: it had started nothing yet.
    assert result.returncode == -signal.SIGINT, result.stdout + result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_a_reader_that_leaves_stops_the_demo_as_sigpipe_does(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    errors = tmp_path / "demo.err"
    with errors.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO)],
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
            env=_environment(scratch),
            cwd=ROOT,
        )
    assert demo.stdout is not None
    try:
        demo.stdout.readline()
        started = re.search(r"standalone mode on https://127\.0\.0\.1:(\d+)", demo.stdout.readline())
        assert started is not None
        registry_dir = _registry_dir_of_child(demo.pid)  # said once the registry runs
    except BaseException:
        demo.kill()
        demo.wait()
        demo.stdout.close()
        raise
    # As `scripts/demo | head -2`: the reader leaves, and the demo's next line (said once payloadtags is
    # ready) has nobody to go to.
    demo.stdout.close()
    demo.wait(timeout=120)

    left = _left_behind(f"--secure-port={started.group(1)} ", registry_dir)
    said = errors.read_text()
    assert not left, f"left after the demo ended ({demo.returncode}): {left}\n{said}"
    assert list(scratch.iterdir()) == []  # the demo's keys, kubeconfig and log
    # Killed by SIGPIPE, as a program whose reader left: a shell shows 141.
    assert demo.returncode == -signal.SIGPIPE, said
    assert said == ""  # no traceback, nor anything else


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
    work = tmp_path / "work"
    work.mkdir()
    log = work / "payloadtags.log"
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
    assert str(exited.value.code).splitlines() == [
        "payloadtags did not become ready within 3 s; its log:",
        "  first",
        "  registry http://127.0.0.1:1 cannot be used: connection refused",
    ]
    assert list(tmp_path.iterdir()) == [work]  # the whole log was said: no copy


def test_a_longer_log_is_kept_in_one_file_that_the_next_failed_start_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = _demo_module()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    kept = tmp_path / "payloadtags-demo.log"
    # Renamed over, not written through: a link planted there does not lead the copy elsewhere.
    kept.symlink_to(tmp_path / "elsewhere")
    work = tmp_path / "work"
    work.mkdir()
    log = work / "payloadtags.log"
    for run in ("first", "second"):
        log.write_text("".join(f"{run} run, line {n}\n" for n in range(1, 26)))
        said = demo.not_started(_Running(), log, 15.0).splitlines()
        assert said[0] == (
            "payloadtags did not become ready within 15 s; the last 20 lines of its log (all of it in "
            f"{kept} until a later failed start replaces it):"
        )
        assert said[1:] == [f"  {run} run, line {n}" for n in range(6, 26)]
        assert not kept.is_symlink()
        assert kept.read_text() == log.read_text()
        assert kept.stat().st_mode & 0o777 == 0o600
        assert sorted(tmp_path.iterdir()) == [kept, work]
