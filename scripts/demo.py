"""The demo: a local registry with sample images, payloadtags in front of it, and real kubectl output.

Run by ``scripts/demo`` after setup. Everything it starts binds to 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import images  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.registry_server import RegistryServer, free_port  # noqa: E402

REGISTRY_HOST = "payload-registry.PUBLIC.DOMAIN"


def push_samples(registry: RegistryServer) -> None:
    # The three repositories of the module's documentation, then a few more kinds of content.
    for path in ("http-echo", "test/http-echo", "test/http-echo2"):
        images.push_oci_image(registry, f"d8-system/{path}", "latest", seed=path, layers=2)
    digest = images.push_docker_image(registry, "team-a/backend", "v1.0.0", seed="backend-1")
    images.tag_manifest(registry, "team-a/backend", digest, "stable")
    images.push_docker_image(registry, "team-a/backend", "v1.1.0", seed="backend-2")
    images.push_oci_index(registry, "team-a/tools/multiarch", "1.0", architectures=("amd64", "arm64"))
    images.push_artifact(registry, "team-b/charts/web", "0.3.0")


def say(text: str) -> None:
    """What the demo is doing, told apart from the commands and their output."""
    print(f"demo: {text}", flush=True)


def wait_ready(url: str, timeout: float = 15.0) -> None:
    import ssl

    context = ssl._create_unverified_context()  # the probe only waits for the port; kubectl verifies TLS
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("payloadtags did not become ready")


def main() -> int:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit("kubectl is not on PATH")
    work = Path(tempfile.mkdtemp(prefix="payloadtags-demo-"))
    pki = Pki.create(work / "pki")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    say(
        "starting a local registry (docker-registry on 127.0.0.1) and pushing sample images: the module "
        "documentation's d8-system/http-echo, d8-system/test/http-echo and d8-system/test/http-echo2, "
        "and a few in team-a and team-b"
    )
    with RegistryServer() as registry:
        push_samples(registry)
        say(
            f"starting payloadtags in standalone mode on {url} in front of it, with "
            "--authorization-mode=AlwaysAllow: any client with a certificate of the demo's own CA may see "
            "and delete every tag"
        )
        server = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "payloadtags"),
                "serve",
                *pki.standalone_args(port, registry.url),
                f"--registry-host={REGISTRY_HOST}",
            ],
            stderr=open(work / "payloadtags.log", "w"),
        )
        try:
            wait_ready(url)
            kubeconfig = work / "kubeconfig"
            subprocess.run(
                [
                    kubectl,
                    "config",
                    "set-cluster",
                    "demo",
                    f"--server={url}",
                    f"--certificate-authority={pki.server_ca.cert_file}",
                    f"--kubeconfig={kubeconfig}",
                ],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [
                    kubectl,
                    "config",
                    "set-credentials",
                    "admin",
                    f"--client-certificate={pki.admin.cert_file}",
                    f"--client-key={pki.admin.key_file}",
                    f"--kubeconfig={kubeconfig}",
                ],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [
                    kubectl,
                    "config",
                    "set-context",
                    "demo",
                    "--cluster=demo",
                    "--user=admin",
                    "--namespace=d8-system",
                    f"--kubeconfig={kubeconfig}",
                ],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [kubectl, "config", "use-context", "demo", f"--kubeconfig={kubeconfig}"],
                check=True,
                capture_output=True,
            )
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(work)}
            say(
                "kubectl runs with a kubeconfig of its own whose context namespace is d8-system: "
                "the commands without -n show d8-system"
            )
            print(flush=True)
            commands = [
                ["api-resources", "--api-group=payload-registry.deckhouse.io"],
                ["get", "payloadrepositorytags.payload-registry.deckhouse.io"],
                ["get", "payloadrepositorytags.payload-registry.deckhouse.io", "-o", "wide"],
                ["get", "prt", "-A"],
                [
                    "get",
                    "payloadrepositorytags.payload-registry.deckhouse.io",
                    "nb2hi4bnmvrwq3z2nrqxizltoq",
                    "-o",
                    "yaml",
                ],
                ["explain", "prt.spec"],
                [
                    "delete",
                    "payloadrepositorytags.payload-registry.deckhouse.io",
                    "nb2hi4bnmvrwq3z2nrqxizltoq",
                ],
                ["get", "prt"],
            ]
            for args in commands:
                if args[0] == "delete":
                    say("the delete is real: the tag leaves the sample registry, its siblings stay")
                print(f"$ kubectl {' '.join(args)}", flush=True)
                subprocess.run([kubectl, *args], env=env, check=False)
                print(flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)
    say(
        f"done. It ran a sample registry ({registry.url}), payloadtags standalone ({url}) where any "
        "client of its CA could see and delete everything (AlwaysAllow), and kubectl with d8-system as "
        "its default namespace; all of it is stopped and removed now. To run payloadtags yourself: "
        'docs/install.md, "Standalone mode"; in a cluster: docs/install.md from the top'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
