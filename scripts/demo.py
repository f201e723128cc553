"""The demo: a local registry with sample images, payloadtags in front of it, and real kubectl output.

Run by ``scripts/demo`` after setup. Everything it starts binds to 127.0.0.1 and is stopped at the end,
or when the demo is stopped (Ctrl-C, SIGTERM, SIGHUP, or a reader of its output that left, as
``scripts/demo | head`` does): then too its files (private keys) are removed.
"""

from __future__ import annotations

# ruff: noqa: E402 (the imports come after the line that makes a Ctrl-C during them end the demo quietly)
import signal

if __name__ == "__main__":
    # Until the demo handles the stop signals, after its imports (a second: tests.support imports
    # Twisted), it has started nothing: a Ctrl-C then ends it at once, as it ends any program that
    # handles no signal, rather than with a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import images
from tests.support.harness import Pki
from tests.support.registry_server import RegistryServer, die_with_parent, free_port

REGISTRY_HOST = "payload-registry.PUBLIC.DOMAIN"

# A failed start shows this many lines of payloadtags' log; a longer log is kept in KEPT_LOG, in the
# temporary directory (TMPDIR, else /tmp).
SHOWN_LINES = 20
KEPT_LOG = "payloadtags-demo.log"

# Ctrl-C, `kill`/a service manager/`timeout`, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived, or the reader of the demo's output left (`show`: as SIGPIPE). Raised where
    the demo is, so that everything it started is stopped and removed on the way out; a BaseException,
    as KeyboardInterrupt, so that no `except Exception` keeps it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """Turns the first stop signal into `Stopped`, except inside `held()`, which raises it at its end."""

    def __init__(self) -> None:
        self._came: list[int] | None = None  # a list while held

    def install(self) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # The way out stops two servers and takes a few seconds: a second Ctrl-C must not cut it short
        # and leave the keys behind.
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        if self._came is not None:
            self._came.append(signum)
            return
        raise Stopped(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Around starting something and noting how to stop it: raised in between (after Popen's fork,
        before it returns), `Stopped` would leave a process or directory nothing stops or removes."""
        self._came = []
        try:
            yield
        finally:
            came, self._came = self._came, None
        if came:
            raise Stopped(came[0])


SIGNALS = StopSignals()


class Started(contextlib.ExitStack):
    """What the demo started, stopped and removed in reverse order on the way out, a signal or not;
    a signal during that waits for its end."""

    def __exit__(self, *exc: Any) -> bool | None:
        with SIGNALS.held():
            return super().__exit__(*exc)


def push_samples(registry: RegistryServer) -> None:
    # The three repositories of the module's documentation, then a few more kinds of content.
    for path in ("http-echo", "test/http-echo", "test/http-echo2"):
        images.push_oci_image(registry, f"d8-system/{path}", "latest", seed=path, layers=2)
    digest = images.push_docker_image(registry, "team-a/backend", "v1.0.0", seed="backend-1")
    images.tag_manifest(registry, "team-a/backend", digest, "stable")
    images.push_docker_image(registry, "team-a/backend", "v1.1.0", seed="backend-2")
    images.push_oci_index(registry, "team-a/tools/multiarch", "1.0", architectures=("amd64", "arm64"))
    images.push_artifact(registry, "team-b/charts/web", "0.3.0")


def show(line: str = "") -> None:
    """Print a line of the demo's output now. A reader of it that left (`scripts/demo | head`) stops the
    demo as SIGPIPE stops a program that does not ignore it (Python does): everything started is stopped
    and removed, and the demo dies of SIGPIPE, which a shell shows as 141."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise Stopped(signal.SIGPIPE) from None


def say(text: str) -> None:
    """What the demo is doing, told apart from the commands and their output."""
    show(f"demo: {text}")


def wait_ready(
    url: str,
    server: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once payloadtags answers /readyz; otherwise exit with its reason, as soon as it exited."""
    import ssl

    context = ssl._create_unverified_context()  # the probe only waits for the port; kubectl verifies TLS
    deadline = clock() + timeout
    while server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if clock() >= deadline:
            break
        sleep(0.2)
    raise SystemExit(not_started(server, log, timeout))


def not_started(server: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    """Why payloadtags did not start, from its log: every start-up problem is a line there naming the
    flag to fix. The message shows the whole log when it is short, as it is for every start-up error;
    only a longer one is kept too, outside the demo's directory, which is removed (it holds private keys)."""
    lines = log.read_text(errors="replace").splitlines()
    if server.returncode is None:
        what = f"payloadtags did not become ready within {timeout:g} s"
    else:
        what = f"payloadtags exited with code {server.returncode} at start"
    if not lines:
        return f"{what}; its log is empty"
    if len(lines) <= SHOWN_LINES:
        said = f"{what}; its log:"
    else:
        said = f"{what}; the last {SHOWN_LINES} lines of its log ({keep(log)}):"
    return "\n".join([said, *(f"  {line}" for line in lines[-SHOWN_LINES:])])


def keep(log: Path) -> str:
    """Copy `log` to the one kept log, replacing an earlier run's, so that runs failing again and again
    keep one file, not one each; says where it is, or why it could not be kept."""
    kept = Path(tempfile.gettempdir()) / KEPT_LOG
    # Written aside and renamed over it: a rename replaces whatever is there, even a symlink planted
    # by another user of /tmp, without following it, and the copy is only ever readable by its owner.
    handle, aside = tempfile.mkstemp(prefix="payloadtags-demo-", suffix=".log")
    try:
        with os.fdopen(handle, "wb") as copy:
            copy.write(log.read_bytes())
        os.replace(aside, kept)
    except OSError as error:  # e.g. another user's file by that name in /tmp
        os.unlink(aside)
        return f"not kept: {kept}: {error.strerror}"
    return f"all of it in {kept} until a later failed start replaces it"


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run(args: list[str], **popen: Any) -> subprocess.CompletedProcess[bytes]:
    """subprocess.run, except that a stop signal never leaves the child running on its own."""
    with contextlib.ExitStack() as stack:
        with SIGNALS.held():
            process = stack.enter_context(subprocess.Popen(args, **popen))
            stack.callback(kill, process)
        out, err = process.communicate()
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def kubectl_config(kubectl: str, kubeconfig: Path, *args: str) -> None:
    done = run(
        [kubectl, "config", *args, f"--kubeconfig={kubeconfig}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if done.returncode != 0:
        raise SystemExit(f"kubectl config {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")


def main() -> int:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit("kubectl is not on PATH")
    with Started() as started:
        with SIGNALS.held():
            work = Path(tempfile.mkdtemp(prefix="payloadtags-demo-"))
            started.callback(shutil.rmtree, work, ignore_errors=True)  # it holds the CAs' private keys
        pki = Pki.create(work / "pki")
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        say(
            "starting a local registry (docker-registry on 127.0.0.1) and pushing sample images: the module "
            "documentation's d8-system/http-echo, d8-system/test/http-echo and d8-system/test/http-echo2, "
            "and a few in team-a and team-b"
        )
        with SIGNALS.held():
            registry = started.enter_context(RegistryServer())
        push_samples(registry)
        say(
            f"starting payloadtags in standalone mode on {url} in front of it, with "
            "--authorization-mode=AlwaysAllow: any client with a certificate of the demo's own CA may see "
            "and delete every tag"
        )
        log = work / "payloadtags.log"
        with log.open("wb") as output, SIGNALS.held():
            server = subprocess.Popen(
                [
                    str(ROOT / ".venv" / "bin" / "payloadtags"),
                    "serve",
                    *pki.standalone_args(port, registry.url),
                    f"--registry-host={REGISTRY_HOST}",
                ],
                stdin=subprocess.DEVNULL,
                # Not the demo's stdout: a reader of it through a pipe (`scripts/demo | tee`) waits for
                # its end, which a server still holding it would put off.
                stdout=output,
                stderr=output,
                # Out of the terminal's process group: the demo stops it, once, gracefully (a Ctrl-C of
                # its own first would make the demo's SIGTERM a second signal: exit at once).
                start_new_session=True,
                # Even a demo killed by SIGKILL does not leave it serving.
                preexec_fn=die_with_parent(),
            )
            started.callback(stop, server)
        wait_ready(url, server, log)
        kubeconfig = work / "kubeconfig"
        kubectl_config(
            kubectl,
            kubeconfig,
            "set-cluster",
            "demo",
            f"--server={url}",
            f"--certificate-authority={pki.server_ca.cert_file}",
        )
        kubectl_config(
            kubectl,
            kubeconfig,
            "set-credentials",
            "admin",
            f"--client-certificate={pki.admin.cert_file}",
            f"--client-key={pki.admin.key_file}",
        )
        kubectl_config(
            kubectl,
            kubeconfig,
            "set-context",
            "demo",
            "--cluster=demo",
            "--user=admin",
            "--namespace=d8-system",
        )
        kubectl_config(kubectl, kubeconfig, "use-context", "demo")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(work)}
        say(
            "kubectl runs with a kubeconfig of its own whose context namespace is d8-system: "
            "the commands without -n show d8-system"
        )
        show()
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
            show(f"$ kubectl {' '.join(args)}")
            run([kubectl, *args], env=env)
            show()
    say(
        f"done. It ran a sample registry ({registry.url}), payloadtags standalone ({url}) where any "
        "client of its CA could see and delete everything (AlwaysAllow), and kubectl with d8-system as "
        "its default namespace; all of it is stopped and removed now. To run payloadtags yourself: "
        'docs/install.md, "Standalone mode"; in a cluster: docs/install.md from the top'
    )
    return 0


def stopped(signum: int) -> NoReturn:
    """End as a program stopped by `signum` does: killed by it. A shell then shows 128+N (130 for
    Ctrl-C, 143 for SIGTERM), and a script running the demo stops on Ctrl-C rather than going on with
    its next command, which an ordinary exit status would tell it to do. After SIGPIPE (its reader
    left) it says nothing, as any program whose reader left."""
    # OSError: after SIGHUP the terminal may be gone; Stopped: the reader may have left since.
    with contextlib.suppress(OSError, Stopped):
        if signum != signal.SIGPIPE:
            name = signal.Signals(signum).name
            say(f"stopped by {name}: the registry and payloadtags are stopped, their files removed")
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # not reached: the signal's default action ends the process


if __name__ == "__main__":
    SIGNALS.install()
    try:
        code = main()
    except Stopped as signalled:
        stopped(signalled.signum)
    sys.exit(code)
