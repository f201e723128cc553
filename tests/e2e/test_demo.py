"""scripts/demo.py as a newcomer runs it (after scripts/setup): what it says it does, around real output.

review-newcomer N1: it showed only the commands it ran; it now says what it starts, that the delete is
real, and at the end what ran (a sample registry, payloadtags standalone where any client of its CA
could see and delete everything, kubectl's default namespace d8-system).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.process import ROOT

pytestmark = [pytest.mark.kubectl, pytest.mark.registry]


def test_the_demo_says_what_it_starts_and_at_the_end_what_ran() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    said = [line for line in lines if line.startswith("demo: ")]
    assert len(said) == 5, said
    registry, server, namespace, delete, done = said
    assert registry.startswith("demo: starting a local registry (docker-registry on 127.0.0.1)")
    assert "d8-system/http-echo, d8-system/test/http-echo and d8-system/test/http-echo2" in registry
    assert server.startswith("demo: starting payloadtags in standalone mode on https://127.0.0.1:")
    assert "--authorization-mode=AlwaysAllow: any client" in server
    assert server.endswith("may see and delete every tag")
    assert "context namespace is d8-system" in namespace
    assert delete == "demo: the delete is real: the tag leaves the sample registry, its siblings stay"
    assert done.startswith("demo: done. It ran a sample registry (http://127.0.0.1:")
    for part in ("could see and delete everything (AlwaysAllow)", "d8-system as its default namespace"):
        assert part in done
    # Each said where it happens: before the commands, just before the delete, and last.
    commands = [i for i, line in enumerate(lines) if line.startswith("$ kubectl ")]
    assert lines.index(namespace) < commands[0]
    assert lines[lines.index(delete) + 1].startswith("$ kubectl delete ")
    assert lines[-1] == done
    # The commands' own output is still there.
    assert "$ kubectl get prt -A" in lines
    assert any("nb2hi4bnmvrwq3z2nrqxizltoq" in line and "deleted" in line for line in lines)
