"""What a list costs in registry requests now that lists and watches share the watch machinery.

On 127.0.0.1 (everything it starts is stopped at the end): a real ``docker-registry`` (distribution 2.8,
filesystem storage, access log on) holding namespaces of 10,000 tags in 100 repositories, and
``payloadtags serve`` in front of it. Counted from the registry's access log:

1. one unpaged list of a namespace nobody listed or watched before ("cold");
2. the registry requests in the ``--idle`` seconds after it (default 65: two resync periods), with no
   request to payloadtags at all;
3. ``kubectl get prt -n <ns>`` (chunks of 500) of another cold namespace;
4. a list of a third cold namespace followed by a watch from its resourceVersion (what ``kubectl get -w``
   and informers do), the watch ended by ``timeoutSeconds=1``: the requests of the list, of the watch;
5. one more list of that third namespace, whose scope the watch left behind (kept for
   ``--watch-scope-idle-timeout``).

Usage: .venv/bin/python bench/list_watch_cost.py [--tags 10000] [--idle 65] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from list_latency import GROUP_PATH, _get, run_reactor, start_server, stop_process, wait_ready  # noqa: E402
from list_scale import (  # noqa: E402
    AccessLog,
    Layout,
    Server,
    run_kubectl,
    seed_image,
    tag_names,
    write_repository,
)
from tests.support.harness import Pki  # noqa: E402
from tests.support.kubectl import Kubectl  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402


async def measure(
    reactor: Any, args: argparse.Namespace, registry: RegistryServer, work: Path
) -> dict[str, Any]:
    manifest, blobs = await seed_image(registry.url)
    per = args.tags // 100
    chosen = [
        Layout(name, {f"app-{i:03d}": tag_names(per) for i in range(100)}) for name in ("c1", "c2", "c3")
    ]

    def fill() -> None:
        for layout in chosen:
            for path, tags in layout.repositories.items():
                write_repository(registry.root, f"{layout.namespace}/{path}", tags, blobs, manifest)

    await deferToThread(fill)
    pki = await deferToThread(Pki.create, work / "pki")
    process, url = start_server(work, pki, registry.url)
    results: dict[str, Any] = {"tags": args.tags}
    try:
        await deferToThread(wait_ready, url, str(pki.server_ca.cert_file), process, work / "payloadtags.log")
        server = Server(reactor, url, pki)
        kubectl = Kubectl.write(work / "kubectl", url, pki.server_ca.cert_file, pki.admin)
        assert registry.log_file is not None
        access = AccessLog(registry.log_file)

        access.mark()
        await server.list("c1")
        results["cold list"] = access.counts()
        access.mark()
        began = time.monotonic()
        await deferLater(reactor, args.idle, lambda: None)
        results[f"idle {args.idle:.0f}s after it"] = access.counts()
        results["idle seconds"] = time.monotonic() - began

        await deferToThread(run_kubectl, kubectl, "c0")  # discovery cache, an empty namespace
        access.mark()
        await deferToThread(run_kubectl, kubectl, "c2")
        results["kubectl get, cold"] = access.counts()

        access.mark()
        path = f"{GROUP_PATH}/namespaces/c3/payloadrepositorytags"
        code, _, body = await _get(server._http, reactor, url + path, {"Accept": "application/json"})
        assert code == 200
        rv = json.loads(body)["metadata"]["resourceVersion"]
        results["list before a watch, cold"] = access.counts()
        access.mark()
        code, _, body = await _get(
            server._http, reactor, url + path + f"?watch=true&resourceVersion={rv}&timeoutSeconds=1"
        )
        results["watch from that list"] = {**access.counts(), "events": body.count(b"\n")}

        access.mark()
        await server.list("c3")
        results["list of the watched scope"] = access.counts()
        await server.pool.closeCachedConnections()
    finally:
        await deferToThread(stop_process, process)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=65.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="payloadtags-listwatch-"))
    try:
        with RegistryServer(
            extra_config={"log": {"level": "warn", "accesslog": {"disabled": False}}}
        ) as registry:
            results = run_reactor(lambda reactor: measure(reactor, args, registry, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key, value in results.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
