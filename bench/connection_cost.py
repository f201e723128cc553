"""The server's CPU per hostile connection, for each kind of connection the floods of hostile.py make.

A figure steadier than a p99 on a shared machine: connections are made one at a time, each from the
next of 100 source addresses (127.0.0.10 to 127.0.0.109, so that no address's handshake tokens run
out and no connection waits for one), and the server's CPU (user + system, /proc) over a batch is
divided by the batch's connections. The batches of the kinds are interleaved, ``--rounds`` times; the
median per kind is reported with the spread of the rounds.

What it does (all on 127.0.0.1; everything it starts is stopped at the end): a real ``docker-registry``
with the namespace ``bench`` (5 repositories of 2 tags), ``.venv/bin/payloadtags serve`` with its
default limits as hostile.py runs it, then per round and kind a batch of ``--connections`` connections:

- ``handshake``: a TLS handshake without a certificate, then closed (the connections flood);
- ``livez``: anonymous ``GET /livez``, answered 200 (what a served request costs, for comparison);
- ``unauthenticated``: a DELETE head announcing 3 MiB without a certificate, answered 401 on its head
  (the unauthenticated-bodies flood, without the body it streams);
- ``unauthenticated-3mib``: the same, with the 3 MiB body streamed after the head whatever the answer
  (as the flood does);
- ``oversized``: an administrator's DELETE head announcing 100 MiB, answered 413 on its head;
- ``bad-request-line``: an administrator's garbage request line, answered 400 by the HTTP layer;
- ``bad-selector``: an administrator's list with an invalid label selector, answered 400 by the API.

Usage: .venv/bin/python bench/connection_cost.py [--connections N] [--rounds R] [--json FILE]
       [--server-src DIR] [--compare-src DIR] [--profile FILE] [--kinds KIND ...]

``--compare-src DIR`` runs a second server from another tree's src/ (e.g. main's, from ``git archive``)
next to this one, and alternates the batches between the two: before/after on the same machine load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from hostile import LIST, cpu_seconds, wait_ready  # noqa: E402 (bench/ is on sys.path: run as a script)
from single_get import PROFILER  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.raw import Target, read_reply, request_bytes  # noqa: E402
from tests.support.registry_server import RegistryServer, free_port  # noqa: E402

ADDRESSES = [f"127.0.0.{n}" for n in range(10, 110)]


def _exchange(target: Target, source: str, user: Any, data: bytes, expect: int) -> None:
    with target.connect(user, timeout=10, source=source) as sock:
        sock.sendall(data)
        reply = read_reply(sock)
    if reply.code != expect:
        raise RuntimeError(f"expected {expect}, got {reply.code}: {reply.body[:200]!r}")


def _streamed_body(target: Target, source: str, user: Any) -> None:
    """As the unauthenticated-bodies flood: the 3 MiB body streamed whatever the answer."""
    with target.connect(timeout=10, source=source) as sock:
        sock.sendall(request_bytes("DELETE", f"{LIST}/x", {"Content-Length": str((3 << 20) - 1)}))
        with contextlib.suppress(OSError):
            for _ in range(48):
                sock.sendall(b"x" * 65536)
        reply = read_reply(sock)
    if reply.code != 401:
        raise RuntimeError(f"expected 401, got {reply.code}")


def _handshake(target: Target, source: str, user: Any) -> None:
    with target.connect(timeout=10, source=source):
        pass


KINDS: dict[str, Callable[[Target, str, Any], None]] = {
    "handshake": _handshake,
    "livez": lambda t, s, u: _exchange(t, s, None, request_bytes("GET", "/livez"), 200),
    "unauthenticated": lambda t, s, u: _exchange(
        t, s, None, request_bytes("DELETE", f"{LIST}/x", {"Content-Length": str((3 << 20) - 1)}), 401
    ),
    "unauthenticated-3mib": _streamed_body,
    "oversized": lambda t, s, u: _exchange(
        t, s, u, request_bytes("DELETE", f"{LIST}/x", {"Content-Length": str(100 << 20)}), 413
    ),
    "bad-request-line": lambda t, s, u: _exchange(t, s, u, b"\x16\x03\x01 nonsense\r\n\r\n", 400),
    "bad-selector": lambda t, s, u: _exchange(
        t, s, u, request_bytes("GET", f"{LIST}?labelSelector=a%20in%20("), 400
    ),
}


def _system_seconds(pid: int) -> float:
    """The kernel's share of cpu_seconds (field 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(
        self, name: str, source: str | None, pki: Pki, registry_url: str, work: Path, profile: str | None
    ):
        self.name = name
        port = free_port()
        # This tree's src first on PYTHONPATH (also where .venv is another tree's), or ``source``'s.
        env = {**os.environ, "PYTHONPATH": str(Path(source or ROOT / "src").resolve())}
        # CPU time, not wall time (see single_get.py).
        command = (
            [sys.executable, "-c", PROFILER, str(Path(profile).resolve())]
            if profile
            else [str(ROOT / ".venv" / "bin" / "payloadtags")]
        )
        self.log = (work / f"{name}.log").open("wb")
        self.process = subprocess.Popen(
            [*command, "serve", *pki.standalone_args(port, registry_url)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
            env=env,
        )
        self.target = Target(port, str(pki.server_ca.cert_file))
        wait_ready(self.target, self.process)
        self.next_address = 0

    def batch(self, kind: str, count: int, user: Any) -> float:
        """Server CPU (ms) per connection over ``count`` connections of ``kind``."""
        one = KINDS[kind]
        time.sleep(0.3)  # what the previous batch left (lingers, closes) is done
        before, system_before = cpu_seconds(self.process.pid), _system_seconds(self.process.pid)
        for _ in range(count):
            source = ADDRESSES[self.next_address % len(ADDRESSES)]
            self.next_address += 1
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                one(self.target, source, user)
        # Refused connections linger 0.5 s before the server closes them: their close is part of the cost.
        time.sleep(0.8)
        self.system_ms = (_system_seconds(self.process.pid) - system_before) / count * 1000
        return (cpu_seconds(self.process.pid) - before) / count * 1000

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=200, help="connections per batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--server-src", help="run the (first) server from this src/ directory")
    parser.add_argument("--compare-src", help="also run a server from this src/ directory, alternated")
    parser.add_argument("--profile", help="run the (first) server under cProfile, write its profile here")
    parser.add_argument("--json", help="write every batch's figure here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-conncost-") as directory, RegistryServer() as registry:
        work = Path(directory)
        for i in range(5):
            for tag in ("v1", "v2"):
                images.push_oci_image(registry, f"bench/app-{i}", tag, seed=f"{i}-{tag}")
        pki = Pki.create(work / "pki")
        user = pki.admin
        servers = [Server("this", args.server_src, pki, registry.url, work, args.profile)]
        try:
            if args.compare_src:
                servers.append(Server("compared", args.compare_src, pki, registry.url, work, None))
            for server in servers:  # warm-up
                for kind in args.kinds:
                    server.batch(kind, 20, user)
            figures: dict[str, dict[str, list[float]]] = {
                s.name: {k: [] for k in args.kinds} for s in servers
            }
            kernel: dict[str, dict[str, list[float]]] = {s.name: {k: [] for k in args.kinds} for s in servers}
            loads: list[float] = []
            for round_number in range(args.rounds):
                loads.append(os.getloadavg()[0])
                order = servers if round_number % 2 == 0 else servers[::-1]
                for kind in args.kinds:
                    for server in order:
                        figures[server.name][kind].append(server.batch(kind, args.connections, user))
                        kernel[server.name][kind].append(server.system_ms)
                print(
                    f"round {round_number + 1}: "
                    + "  ".join(
                        f"{s.name} {k} {figures[s.name][k][-1]:.2f}" for k in args.kinds for s in servers
                    ),
                    flush=True,
                )
        finally:
            for server in servers:
                server.stop()
    print(
        f"\nserver CPU per connection, ms (median of {args.rounds} rounds [min-max]); load average "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    for kind in args.kinds:
        cells = []
        for name, by_kind in figures.items():
            values = by_kind[kind]
            cells.append(
                f"{name} {statistics.median(values):5.2f} [{min(values):.2f}-{max(values):.2f}] "
                f"(kernel {statistics.median(kernel[name][kind]):.2f})"
            )
        print(f"  {kind:18s} " + "   ".join(cells))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"figures": figures, "kernel": kernel, "load_averages": loads}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
