"""The randomized interleaving of `tests.support.interleaving` with two real `payloadtags serve` processes.

What differs from the in-process run:

- each replica is a `payloadtags serve` OS process with the cluster API double (`tests.support.kubeapi`)
  as its cluster: leader election on a Lease, the namespace watch and the elected leader's cascade,
  deletecollection of a Terminating namespace by digest; each talks to the real registry through a
  fault proxy of its own;
- users delete single tags over HTTPS with a client certificate, as kubectl does; the namespace
  controller, through the front proxy (request-header authentication), calls deletecollection on
  both replicas in parallel and again until each answers 200, then finalizes the namespace;
- a namespace deletion starts by deleting the Namespace in the cluster double (Terminating), so the
  elected leader's cascade runs beside the controller's calls;
- kills are SIGKILL of a replica process while it has a registry request in flight, then a restart
  (leader election passes the Lease on when the leader is the one killed).

The checks are the same (`Run.check`); the failure message prints the command that reruns a seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.internet.task import deferLater

from payloadtags.names import TagRef
from tests.support.client import ApiClient
from tests.support.harness import Pki
from tests.support.interleaving import Config, Delete, Replica, Report, Run
from tests.support.kubeapi.resources import NAMESPACES
from tests.support.kubeapi.server import KubeApiDouble
from tests.support.pki import Authority, Issued
from tests.support.process import ServerProcess
from tests.support.registry_server import RegistryServer, free_port

GROUP_VERSION = "/apis/payload-registry.deckhouse.io/v1alpha1"
SERVING = "serving payload-registry.deckhouse.io/v1alpha1"
# The namespace controller as the aggregator forwards it: the front proxy's certificate and the user
# in request headers.
CONTROLLER_HEADERS = {
    "X-Remote-User": "system:serviceaccount:kube-system:namespace-controller",
    "X-Remote-Group": "system:serviceaccounts",
}


def collection(namespace: str) -> str:
    return f"{GROUP_VERSION}/namespaces/{namespace}/payloadrepositorytags"


class ProcessRun(Run):
    """`Run` with replicas that are `payloadtags serve` processes, driven over HTTPS."""

    def __init__(
        self,
        reactor: Any,
        registry: RegistryServer,
        config: Config,
        stem: str,
        kube: KubeApiDouble,
        pki: Pki,
        directory: Path,
    ) -> None:
        super().__init__(reactor, registry, config, stem)
        self.report.rerun = "tests/integration/test_interleaving_processes.py::test_one_process_seed"
        self.kube = kube
        self.pki = pki
        directory.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = kube.write_kubeconfig(directory / "kubeconfig")
        self.front_proxy_ca = Authority.create(directory, "front-proxy")
        self.front_proxy: Issued = self.front_proxy_ca.client("front-proxy-client")
        self.ports = [free_port() for _ in self.proxies]
        self.processes: list[ServerProcess | None] = [None for _ in self.proxies]
        # A replica is killed only once it serves, and one kill at a time: never while starting.
        self.serving = [False for _ in self.proxies]
        self.restarts = [DeferredLock() for _ in self.proxies]
        # When each replica's process was started: its requests before then are a killed process's.
        self.launched = [float("-inf") for _ in self.proxies]
        self.logs: list[str] = []  # of processes killed or stopped
        # Kills planned at steps of the plan: the step, and which replica.
        self.kill_at: dict[int, int] = {}
        kills = max(1, round(config.operations * config.kill_rate / 2))
        for _ in range(kills):
            self.kill_at[self.rng.randrange(config.operations)] = self.rng.randrange(len(self.proxies))

    def make_replicas(self) -> list[Replica]:
        return []

    # -- the processes --------------------------------------------------------------------------------

    def args(self, slot: int) -> list[str]:
        return [
            *self.pki.standalone_args(self.ports[slot], self.proxies[slot].url),
            f"--kubeconfig={self.kubeconfig}",
            f"--requestheader-client-ca-file={self.front_proxy_ca.cert_file}",
            "--requestheader-allowed-names=front-proxy-client",
            f"--registry-timeout={self.config.timeout}s",
            "--namespace-sweep-period=0s",
            "--leader-elect-lease-duration=2s",
            "--leader-elect-renew-deadline=1.2s",
            "--leader-elect-retry-period=0.25s",
            "--leader-elect-resource-namespace=kube-system",
            "--shutdown-grace-period=1s",
        ]

    async def launch(self, slot: int) -> None:
        for attempt in range(5):
            process = ServerProcess(self.reactor, self.args(slot))
            self.launched[slot] = self.now()  # the previous process (if any) is dead by now
            process.start()
            self.processes[slot] = process
            try:
                await process.wait_for_log(SERVING, within=180.0)
            except AssertionError as error:
                # Between runs of a replica another process on the machine (a parallel test run) may
                # take its port: it comes back on another, as a rescheduled pod gets a new address.
                if "address already in use" not in str(error) or attempt == 4:
                    raise
                self.ports[slot] = free_port()
                continue
            self.serving[slot] = True
            return

    async def start(self) -> None:
        for namespace in self.live + self.doomed:
            if not self.kube.store.exists(NAMESPACES, namespace):
                self.kube.store.create(NAMESPACES, {"metadata": {"name": namespace}})
        await gatherResults([Deferred.fromCoroutine(self.launch(slot)) for slot in range(len(self.proxies))])

    async def stop(self) -> None:
        for process in self.processes:
            if process is not None:
                await process.kill()
                self.logs.append(process.log)

    def born(self, replica: int) -> float:
        # A killed process's writes are another process's: the restarted one has no record of them.
        return self.launched[replica]

    def alive(self, slot: int) -> bool:
        process = self.processes[slot]
        return self.serving[slot] and process is not None and process.running

    def at_step(self, step: int) -> list[Deferred[None]]:
        if step not in self.kill_at:
            return []
        return [Deferred.fromCoroutine(self.kill_and_restart(self.kill_at[step], self.rng.uniform(0.1, 0.4)))]

    async def kill_and_restart(self, slot: int, down_for: float) -> None:
        """SIGKILL the replica while one of its registry requests is in flight (or after a while),
        then start it again, as a node failure and the Deployment's restart do."""
        async with self.restarts[slot]:
            for _ in range(100):
                if self.proxies[slot].in_flight:
                    break
                await deferLater(self.reactor, 0.01, lambda: None)
            process = self.processes[slot]
            if process is None or not self.serving[slot]:
                return
            self.report.kills += 1
            self.serving[slot] = False
            await process.kill()
            self.logs.append(process.log)
            self.processes[slot] = None
            await deferLater(self.reactor, down_for, lambda: None)
            await self.launch(slot)

    def step_pause(self) -> float:
        # Slower than in one process: operations spread over the kills and restarts.
        return self.rng.uniform(0.0, 0.08)

    def client(self, slot: int, controller: bool = False) -> ApiClient:
        url = f"https://127.0.0.1:{self.ports[slot]}"
        ca = str(self.pki.server_ca.cert_file)
        return ApiClient(url, ca, self.front_proxy if controller else self.pki.admin, self.reactor)

    def pick(self) -> int:
        """A replica for the next request, as the Service picks among ready endpoints."""
        slot = self.rng.randrange(len(self.proxies))
        if not self.alive(slot) and self.alive(1 - slot):
            return 1 - slot
        return slot

    # -- operations over HTTPS -----------------------------------------------------------------------

    def answered(self, code: int, body: bytes, what: str) -> str:
        """The Status message; a 500 from payloadtags (a bug, never a registry fault) is a violation."""
        try:
            message = str(json.loads(body).get("message", ""))
        except ValueError:
            message = body[:200].decode("utf-8", "replace")
        if code == 500:
            self.report.violations.append(f"{what}: payloadtags answered 500: {message}")
        return message

    async def delete_one(
        self, namespace: str, repository: str, tag: str, kill: Deferred[None] | None = None
    ) -> None:
        # ``kill`` is not taken: a process's delete stops only with its process (`kill_and_restart`).
        record = Delete(self.now())
        self.deletes[(repository, tag)].append(record)
        ref = TagRef(namespace, repository.split("/", 1)[1], tag)
        self.report.operations["delete"] += 1
        try:
            response = await self.client(self.pick()).delete(f"{collection(namespace)}/{ref.name}")
        except Exception:
            # Refused (the replica is down: nothing was sent) or cut mid-request (killed).
            record.outcome = "killed"
        else:
            record.outcome = {200: "ok", 404: "not-found", 409: "conflict"}.get(response.code, "error")
            message = self.answered(response.code, response.body, f"DELETE {repository}:{tag}")
            if record.outcome in ("error", "conflict"):  # what the delete told its user
                record.message = message
        finally:
            record.end = self.now()

    async def remove_namespace(self, namespace: str) -> None:
        """A namespace deletion: the Namespace goes Terminating (the leader's cascade starts), the
        namespace controller calls deletecollection on both replicas at once until each answers 200,
        and once more, then finalizes the namespace."""
        started = self.begin_removal(namespace)
        self.kube.store.delete(NAMESPACES, namespace)

        async def controller(slot: int) -> None:
            for _attempt in range(400):
                # A replica being restarted is waited for, however slowly the machine starts it.
                down = 0
                while not self.alive(slot) and down < 3000:
                    await deferLater(self.reactor, 0.1, lambda: None)
                    down += 1
                if not self.alive(slot):
                    self.report.violations.append(f"replica {slot} did not come back within 300s")
                    return
                self.report.operations["deletecollection"] += 1
                # The process decides its 200 after this, and before it is here. The checker takes
                # this as the decision time (`Answer.decided`), the latest it can know of without the
                # process telling it: `check_own_writes` then checks the writes sent before the
                # request, not those of the call itself (the in-process run does).
                asked = self.now()
                try:
                    response = await self.client(slot, controller=True).delete(
                        collection(namespace), headers=CONTROLLER_HEADERS
                    )
                except Exception:
                    await deferLater(self.reactor, 0.05, lambda: None)
                    continue
                self.answered(response.code, response.body, f"deletecollection of {namespace}")
                if response.code != 200:
                    await deferLater(self.reactor, 0.05, lambda: None)
                    continue
                await self.after_200(namespace, slot, decided=asked)
                return
            self.report.violations.append(f"deletecollection of {namespace} never answered 200")

        for _round in range(2):  # parallel, then repeated: the controller lists again and retries
            await gatherResults([Deferred.fromCoroutine(controller(s)) for s in range(len(self.proxies))])
        self.kube.store.finalize_namespace(namespace)
        self.report.operations["namespace deleted"] += 1
        self.report.doomed_seconds.append(self.now() - started)

    def check(self) -> None:
        super().check()
        for log in self.logs:
            if "Traceback" in log:
                self.report.violations.append(f"a replica logged a traceback:\n{log[-3000:]}")


async def run_process_seed(
    reactor: Any,
    registry: RegistryServer,
    config: Config,
    kube: KubeApiDouble,
    pki: Pki,
    directory: Path,
    stem: str | None = None,
) -> Report:
    run = ProcessRun(reactor, registry, config, stem or f"ip{config.seed}x", kube, pki, directory)
    return await run.go()


__all__ = ["ProcessRun", "run_process_seed"]
