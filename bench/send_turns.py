"""The reactor's CPU per HTTPS request in process, with a whole response sent in the turn that ends it
(``GuardedTLS.send_response``) and without, alternated batch by batch in one process.

``request_cpu.py --before`` compares two trees' servers as separate processes: on a loaded machine the
two processes' figures move apart by more than a change of some 10-30 us in a request's 0.3-0.8 ms.
Here one server runs in this process (the real server: ``payloadtags.server.start`` from this tree,
real TLS on 127.0.0.1, a real ``docker-registry``, AlwaysAllow, the front proxy's certificate with
``X-Remote-User`` as ``request_cpu.py`` sends it), and its TLS layer's ``send_response`` is switched off
and on between batches: off, a response waits in the TLS layer for the reactor's next turn and is
then sent once the reactor finds the socket writable, as Twisted's BufferingTLSTransport does (the
code before the change). The client is another process (``request_cpu.py``'s ``Connection``), so
that it takes no turn of this process's interpreter. Measured: the CPU time of the reactor's thread
(``/proc/self/task/<tid>/schedstat``, ns) per request over a batch; reported: the minimum and the
median of the batches per mode and kind, and the median of the paired batches' ratio.

Kinds (``request_cpu.py``'s): ``discovery``, ``pipelined`` (discovery written 32 at a time), ``page``
(walks with ``--limit``: with the default 1, a page of one tag: a page's fixed cost).

Usage: .venv/bin/python bench/send_turns.py [--batches 40] [--requests 200] [--kinds discovery,pipelined,page]
       [--tags 2000] [--limit 1] [--json FILE] [--calls]

``--calls`` first runs one batch per kind and mode under cProfile and reports the Python calls the
reactor's thread made per request: a count the machine's load does not move.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from list_latency import report, run_with_registry  # noqa: E402
from list_scale import seed_image, tag_names, write_repository  # noqa: E402
from request_cpu import NAMESPACE  # noqa: E402
from tests.support.harness import Pki, start_server  # noqa: E402
from tests.support.pki import Authority, Issued  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402

from payloadtags.http.channel import GuardedTLS  # noqa: E402

MODES = ("turn later", "same turn")  # send_response off (the code before), on

# The client process: request_cpu.py's Connection and kinds, driven by lines on its stdin.
CLIENT = """
import sys
sys.path.insert(0, sys.argv[1])
from types import SimpleNamespace
from request_cpu import Connection, requests_of
url, ca, cert, key, limit, tags = sys.argv[2:8]
identity = SimpleNamespace(cert_file=cert, key_file=key)  # what Connection reads of an Issued
for line in sys.stdin:
    kind, n = line.split()
    connection = Connection(url, ca, identity)
    send = requests_of(kind, connection, int(limit), int(tags))
    send(max(2, int(n) // 20))
    print("ready", flush=True)
    sys.stdin.readline()
    sent = send(int(n))
    connection.close()
    print(sent, flush=True)
"""


def thread_seconds(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def start_client(url: str, pki: Pki, proxy: Issued, args: argparse.Namespace) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLIENT,
            str(ROOT / "bench"),
            url,
            str(pki.server_ca.cert_file),
            str(proxy.cert_file),
            str(proxy.key_file),
            str(args.limit),
            str(args.tags),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"},
        text=True,
    )


async def run(
    reactor: Any,
    args: argparse.Namespace,
    registry: RegistryServer,
    work: Path,
    started: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    manifest, blobs = await seed_image(registry.url)
    await deferToThread(
        write_repository, registry.root, f"{NAMESPACE}/app", tag_names(args.tags), blobs, manifest
    )
    pki = await deferToThread(Pki.create, work / "pki")
    proxy_ca = await deferToThread(Authority.create, work / "pki" / "front-proxy", "front-proxy")
    proxy = await deferToThread(proxy_ca.client, "front-proxy-client", (), "front-proxy-client")
    server = await start_server(
        reactor,
        pki,
        registry.url,
        requestheader_client_ca_file=str(proxy_ca.cert_file),
        requestheader_allowed_names=("front-proxy-client",),
    )
    reactor_thread = threading.get_native_id()
    client = start_client(server.url, pki, proxy, args)
    started.append(client)  # type: ignore[arg-type]
    send_response = GuardedTLS.send_response
    kinds = args.kinds.split(",")
    batches: list[dict[str, dict[str, float]]] = []

    def batch(kind: str) -> tuple[float, int]:
        """Asks the client for a batch of ``kind``; the reactor thread's CPU over it, and its requests."""
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(f"{kind} {args.requests}\n")
        client.stdin.flush()
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("the client failed")
        before = thread_seconds(reactor_thread)
        client.stdin.write("go\n")
        client.stdin.flush()
        sent = int(client.stdout.readline())
        return thread_seconds(reactor_thread) - before, sent

    def switch(mode: str) -> None:
        # Between batches, on the reactor's thread (no response is being sent).
        if mode == "same turn":
            GuardedTLS.send_response = send_response  # type: ignore[method-assign]
        else:
            GuardedTLS.send_response = lambda self: None  # type: ignore[method-assign]

    calls: dict[str, dict[str, float]] = {}
    try:
        if args.calls:
            # Python calls the reactor's thread makes per request: a count the machine's load does not
            # move (cProfile counts the thread that enables it).
            for kind in kinds:
                for mode in MODES:
                    switch(mode)
                    profile = cProfile.Profile()
                    profile.enable()
                    _cpu, sent = await deferToThread(batch, kind)
                    profile.disable()
                    calls.setdefault(kind, {})[mode] = pstats.Stats(profile).total_calls / sent  # type: ignore[attr-defined]
        for i in range(args.batches):
            figures: dict[str, dict[str, float]] = {}
            order = MODES if i % 2 == 0 else MODES[::-1]
            for kind in kinds:
                for mode in order:
                    switch(mode)
                    cpu, sent = await deferToThread(batch, kind)
                    figures.setdefault(kind, {})[mode] = cpu * 1e6 / sent
            batches.append(figures)
            print(
                f"# batch {i + 1}: "
                + "; ".join(
                    f"{k} " + ", ".join(f"{m} {v:.1f}" for m, v in f.items()) for k, f in figures.items()
                ),
                flush=True,
            )
    finally:
        GuardedTLS.send_response = send_response  # type: ignore[method-assign]
        assert client.stdin is not None
        client.stdin.close()
        client.wait()
        await server.stop()
    return {
        "requests": args.requests,
        "tags": args.tags,
        "limit": args.limit,
        "batches": batches,
        "calls": calls,
    }


def summarize(results: dict[str, Any]) -> str:
    batches = results["batches"]
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        f"{len(batches)} batches of {results['requests']} requests per kind and mode, alternated; pages of "
        f"{results['limit']} of {results['tags']} tags; the reactor thread's CPU per request, us",
        "",
        "| kind | "
        + " | ".join(f"{m}: min, median" for m in MODES)
        + " | same / later: mins; medians; paired batches (median) |",
        "|---|" + "---:|" * (len(MODES) + 1),
    ]
    for kind in batches[0]:
        values = {mode: [b[kind][mode] for b in batches] for mode in MODES}
        paired = statistics.median(b[kind]["same turn"] / b[kind]["turn later"] for b in batches)
        lo = {m: min(v) for m, v in values.items()}
        med = {m: statistics.median(v) for m, v in values.items()}
        lines.append(
            f"| {kind} | "
            + " | ".join(f"{lo[m]:.1f}, {med[m]:.1f}" for m in MODES)
            + f" | {lo['same turn'] / lo['turn later']:.3f}; {med['same turn'] / med['turn later']:.3f}; "
            f"{paired:.3f} |"
        )
    for kind, per_mode in results.get("calls", {}).items():
        lines.append(
            f"- {kind}: Python calls per request " + ", ".join(f"{m} {n:.1f}" for m, n in per_mode.items())
        )
    lines.append(f"total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40, help="per kind and mode")
    parser.add_argument("--requests", type=int, default=200, help="per batch")
    parser.add_argument("--kinds", default="discovery,pipelined,page")
    parser.add_argument("--tags", type=int, default=2000, help="tags of the walked repository")
    parser.add_argument("--limit", type=int, default=1, help="page size of the walks")
    parser.add_argument("--json", type=Path, help="also write raw figures here")
    parser.add_argument(
        "--calls", action="store_true", help="first count Python calls per request (cProfile)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run_with_registry(
        "payloadtags-send-turns-",
        lambda reactor, registry, work, processes: run(reactor, args, registry, work, processes),
    )
    if results is not None:
        results["wall_seconds"] = time.monotonic() - started
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
