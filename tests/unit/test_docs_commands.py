"""Commands one page gives that depend on another page's steps."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def test_the_readmes_standalone_command_names_the_files_install_md_makes() -> None:
    """review-newcomer L4: README's command named serving.crt and serving.key, which docs/install.md (where
    the README sends the reader for "the certificates") never makes: it uses --cert-dir."""
    [command] = [b for b in _sh_blocks((ROOT / "README.md").read_text()) if "payloadtags serve" in b]
    standalone = (ROOT / "docs" / "install.md").read_text().split("## Standalone mode", 1)[1]
    steps = _sh_blocks(standalone)[0]
    made = set(re.findall(r"-out (\S+)", steps)) | set(re.findall(r"--cert-dir=(\S+)", steps))
    named = re.findall(r"--(?:client-ca-file|cert-dir|tls-cert-file|tls-private-key-file)=(\S+)", command)
    assert named, command
    assert set(named) <= made, (named, made)
