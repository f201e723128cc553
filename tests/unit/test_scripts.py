"""scripts/install and scripts/uninstall as a user runs them: from their own directory, with the overlay
of docs/install.md section 2 beside a copy of manifests/. A stand-in kubectl records each call and the
directory it was made from, and hands `kustomize` to the real kubectl; the order of the calls and their
failure paths are scripts/check-deploy's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Renders the trees with the real kubectl: packaging, not the unit tier.
pytestmark = [pytest.mark.kubectl, pytest.mark.packaging]

ROOT = Path(__file__).resolve().parents[2]
APISERVICE = "apiservice/v1alpha1.payload-registry.deckhouse.io"
Call = tuple[Path, list[str]]  # the directory kubectl ran in, its arguments

STUB = """#!/bin/sh
printf '%s\\t%s\\n' "$PWD" "$*" >>"$STUB_LOG"
if [ "$1" = kustomize ]; then exec "$REAL_KUBECTL" "$@"; fi
exit 0
"""


def _yaml_block(title: str) -> str:
    """The docs/install.md yaml block whose first line is `# <title>`."""
    for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "install.md").read_text(), re.S):
        if block.startswith(f"# {title}\n"):
            return str(block)
    raise AssertionError(f"docs/install.md has no yaml block for {title}")


@pytest.fixture
def own_repository(tmp_path: Path) -> Path:
    """docs/install.md section 2's layout: my-payloadtags/ next to a copy of manifests/."""
    repository = tmp_path / "ops"
    shutil.copytree(ROOT / "manifests", repository / "manifests")
    for tree in ("my-payloadtags", "my-payloadtags/apiservice"):
        (repository / tree).mkdir()
        (repository / tree / "kustomization.yaml").write_text(_yaml_block(f"{tree}/kustomization.yaml"))
    return repository


def _run(
    script: str, cwd: Path, tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[Call]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (1.32) must be on PATH: the scripts render the trees with it")
    stub, log = tmp_path / "kubectl-stub", tmp_path / "calls.log"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log.write_text("")
    env = {**os.environ, "KUBECTL": str(stub), "STUB_LOG": str(log), "REAL_KUBECTL": kubectl, "TIMEOUT": "1s"}
    result = subprocess.run(
        [str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = [line.split("\t", 1) for line in log.read_text().splitlines()]
    return result, [(Path(where), call.split()) for where, call in calls]


def _trees(calls: list[Call], verb: str) -> list[Path]:
    """The trees of the `VERB -k TREE` calls, resolved from the directory kubectl was run in."""
    return [(where / words[2]).resolve() for where, words in calls if words[:2] == [verb, "-k"]]


def test_install_takes_a_relative_overlay_from_the_callers_directory(
    own_repository: Path, tmp_path: Path
) -> None:
    result, calls = _run("install", own_repository, tmp_path, "my-payloadtags")
    assert result.returncode == 0, result.stderr
    overlay = own_repository / "my-payloadtags"
    assert _trees(calls, "apply") == [overlay, overlay / "apiservice"]


def test_install_takes_an_absolute_overlay_from_anywhere(own_repository: Path, tmp_path: Path) -> None:
    overlay = own_repository / "my-payloadtags"
    result, calls = _run("install", tmp_path, tmp_path, str(overlay), str(overlay / "apiservice"))
    assert result.returncode == 0, result.stderr
    assert _trees(calls, "apply") == [overlay, overlay / "apiservice"]


def test_install_default_is_the_checkouts_tree_and_its_placeholders_are_refused(tmp_path: Path) -> None:
    result, calls = _run("install", tmp_path, tmp_path)
    assert result.returncode == 1
    assert "the registry URL is still the placeholder" in result.stderr
    assert [(where / words[1]).resolve() for where, words in calls] == [ROOT / "manifests" / "cert-manager"]
    assert calls[0][1][0] == "kustomize"


def test_uninstall_takes_a_relative_overlay_from_the_callers_directory(
    own_repository: Path, tmp_path: Path
) -> None:
    result, calls = _run("uninstall", own_repository, tmp_path, "my-payloadtags")
    assert result.returncode == 0, result.stderr
    assert [words[:2] for _, words in calls] == [["delete", APISERVICE], ["delete", "-k"]]
    assert _trees(calls, "delete") == [own_repository / "my-payloadtags"]


def test_uninstall_default_is_the_checkouts_tree(tmp_path: Path) -> None:
    result, calls = _run("uninstall", tmp_path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert _trees(calls, "delete") == [ROOT / "manifests" / "cert-manager"]


def test_demo_says_what_it_installs_before_setup_runs(tmp_path: Path) -> None:
    # review-newcomer N1: scripts/setup takes minutes on a fresh machine; the demo said nothing first.
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "demo", tmp_path / "scripts" / "demo")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for stub, text in (("scripts/setup", "echo SETUP\n"), (".venv/bin/python", 'echo "DEMO $*"\n')):
        (tmp_path / stub).write_text("#!/bin/sh\n" + text)
        (tmp_path / stub).chmod(0o755)
    result = subprocess.run(
        [str(tmp_path / "scripts" / "demo")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "demo: installing what it needs (docker-registry from apt, .venv from requirements.lock): "
        "a few minutes on a fresh machine, seconds once done",
        "SETUP",
        "DEMO scripts/demo.py",
    ]


# --- scripts/setup on a fresh Debian 12 --------------------------------------------------------------

# The system python3 as a fresh Debian has it before python3-venv: no ensurepip. It logs every call.
FRESH_PYTHON = """#!/bin/sh
printf '%s\\n' "$*" >>"$STUBS/python3.log"
case "$*" in *"import ensurepip"*) [ -e "$STUBS/python3-venv" ] || exit 1 ;; esac
exec /usr/bin/python3 "$@"
"""
APT_GET = """#!/bin/sh
printf '%s\\n' "$*" >>"$STUBS/apt-get.log"
case "$*" in install*python3-venv*) : >"$STUBS/python3-venv" ;; esac
"""
DPKG = """#!/bin/sh
echo "python3.11-minimal: $2"
"""


def test_setup_without_uv_installs_python3_venv_and_leaves_the_system_python_alone(tmp_path: Path) -> None:
    # Debian's python3 is externally managed (PEP 668) and may have no pip: setup must neither pip
    # install into it nor need it, but make .venv with the venv module and bring uv into .venv.
    if shutil.which("uv", path="/usr/bin:/bin"):
        pytest.fail("this test needs a PATH without uv: /usr/bin or /bin has one")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("python3", FRESH_PYTHON), ("apt-get", APT_GET), ("dpkg", DPKG)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    for tool in ("kubectl", "docker-registry"):
        found = shutil.which(tool)
        assert found, f"{tool} must be on PATH"
        (stubs / tool).symlink_to(found)
    # The project as a clone has it, with a lock of uv alone: the install of every package is uv's
    # business, and the bootstrap of uv is what this test is about.
    tree = tmp_path / "clone"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tree / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup", tree / "scripts" / "setup")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    (uv_pin,) = [
        line for line in (ROOT / "requirements.lock").read_text().splitlines() if line.startswith("uv==")
    ]
    (tree / "requirements.lock").write_text(uv_pin + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON", "UV")}
    env.update(PATH=f"{stubs}:/usr/bin:/bin", STUBS=str(stubs))

    def setup() -> list[str]:
        result = subprocess.run(
            [str(tree / "scripts" / "setup")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [line for line in result.stdout.splitlines() if line.startswith("setup: ")]

    # It says what it does in its long steps (review-newcomer N1: minutes without a word).
    assert setup() == [
        "setup: installing python3-venv from apt",
        "setup: making .venv (a virtual environment for payloadtags and its tests)",
        "setup: installing the packages of requirements.lock and payloadtags into .venv",
    ]
    assert (stubs / "apt-get.log").read_text().splitlines() == [
        "update -qq",
        "install -y -qq python3-venv",
    ]
    system_python = (stubs / "python3.log").read_text().splitlines()
    assert "-m venv .venv" in system_python
    assert not [call for call in system_python if call.startswith("-m pip")], system_python
    version = subprocess.run(
        [tree / ".venv" / "bin" / "uv", "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert version.stdout.split()[:2] == ["uv", uv_pin.removeprefix("uv==")]
    subprocess.run([tree / ".venv" / "bin" / "python", "-c", "import payloadtags"], check=True, timeout=60)

    # Again: with the uv now in .venv, and nothing more from apt.
    assert setup() == ["setup: installing the packages of requirements.lock and payloadtags into .venv"]
    assert len((stubs / "apt-get.log").read_text().splitlines()) == 2
