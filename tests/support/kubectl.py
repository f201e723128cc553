"""Run the real kubectl binary against the server, without blocking the reactor it runs on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import utils

from tests.support.pki import Issued

KUBECTL = shutil.which("kubectl") or "kubectl"


def version_with(
    kubeconfig: Path, request_timeout: str, hang_guard: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """The real kubectl's `get --raw /version` with this kubeconfig, run to its end (for tests that
    compare what kubectl takes or refuses in a kubeconfig with what payloadtags does)."""
    return subprocess.run(
        [
            KUBECTL,
            "--kubeconfig",
            str(kubeconfig),
            f"--request-timeout={request_timeout}",
            "get",
            "--raw",
            "/version",
        ],
        capture_output=True,
        text=True,
        timeout=hang_guard,
        check=False,
    )


@attrs.frozen
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.out.strip().splitlines()]


@attrs.frozen
class Kubectl:
    kubeconfig: Path
    cache_dir: Path
    binary: str = KUBECTL

    @classmethod
    def write(
        cls,
        directory: Path,
        server_url: str,
        ca_file: Path,
        user: Issued,
        name: str = "admin",
        binary: str = KUBECTL,
    ) -> Kubectl:
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "payloadtags",
                    "cluster": {"server": server_url, "certificate-authority": str(ca_file)},
                }
            ],
            "users": [
                {
                    "name": name,
                    "user": {"client-certificate": str(user.cert_file), "client-key": str(user.key_file)},
                }
            ],
            "contexts": [
                {"name": name, "context": {"cluster": "payloadtags", "user": name, "namespace": "default"}}
            ],
            "current-context": name,
        }
        path = directory / f"kubeconfig-{name}"
        path.write_text(json.dumps(config))
        return cls(path, directory / f"cache-{name}", binary)

    async def __call__(self, *args: str, editor: str | None = None) -> Result:
        """``editor``: the program `kubectl edit` runs on the file it opens (KUBE_EDITOR)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.cache_dir),
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.cache_dir),
        }
        if editor is not None:
            env["KUBE_EDITOR"] = editor
            # Where kubectl edit leaves the file it opened when the change is refused.
            env["TMPDIR"] = str(self.kubeconfig.parent)
        out, err, code = await utils.getProcessOutputAndValue(
            self.binary, ["--cache-dir", str(self.cache_dir), "--request-timeout=20s", *args], env=env
        )
        return Result(code, out.decode(), err.decode())


def read_yaml_locally(text: bytes) -> Any:
    """A YAML document as kubectl reads a file (sigs.k8s.io/yaml over go-yaml), as JSON: ``kubectl
    annotate --local``, no server. The document is read nested, indented under a field of an object
    of its own, so that kubectl takes a list (a ...List, a Table) as one value and not as the objects
    to annotate. Blocking: a test on the reactor runs it in a thread."""
    nested = b"".join(b"  " + line for line in text.splitlines(keepends=True))
    wrapper = b"apiVersion: v1\nkind: Wrapper\nmetadata:\n  name: read\ndocument:\n" + nested
    done = subprocess.run(
        [KUBECTL, "annotate", "--local", "-f", "-", "payloadtags.test/read=yes", "-o", "json"],
        input=wrapper,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout)["document"]


_SERVICE = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: oracle\nspec:\n  selector:\n    app: a\n"


def upstream_label_selector_error(selector: str) -> str | None:
    """Why upstream's label selector parser (labels.Parse, as kubectl vendors it) refuses ``selector``,
    or None when it accepts it: ``kubectl set selector --local`` parses it so, no server. (An accepted
    set-based selector is then refused as unsupported on a Service, which is not a parse error.)
    Blocking."""
    done = subprocess.run(
        [KUBECTL, "set", "selector", "--local", "-f", "-", "-o", "name", "--", selector],
        input=_SERVICE,
        capture_output=True,
        timeout=60,
    )
    error = done.stderr.decode()
    return error if "couldn't parse the selector string" in error else None
