"""The server's own CPU per HTTPS request on one kept-alive connection, for cheap requests.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry`` and writes the namespace ``bench`` into its storage: one repository
   ``app`` of ``--tags`` tags (all links to one manifest; or ``--repositories`` repositories
   ``app-NNN`` sharing them), and pushes one real OCI image ``bench-get/img:v1``;
2. runs ``payloadtags serve`` (client certificates, a front proxy, ``--authorization-mode=AlwaysAllow``)
   from this tree, and with ``--before DIR`` a second one from another tree's ``src`` (``PYTHONPATH``);
3. per repetition, for each server (alternating which goes first), sends ``--requests`` requests of each
   kind one after another on one kept-alive HTTPS connection (Python's ``http.client``), and reads the
   server's CPU time (user + system, ``/proc/<pid>/stat``) before and after:
   - ``discovery``: ``GET /apis/<group>/<version>`` with the front proxy's certificate and
     ``X-Remote-User`` (authentication, routing, a response cached by the server: no registry read);
   - ``discovery-cert``: the same with a client certificate as the identity;
   - ``pipelined``: ``discovery`` sent ``PIPELINED`` at a time before any answer is read (HTTP/1.1
     pipelining): the server's own work per request, without the round trip and the wait between
     requests that each of the others has;
   - ``get``: ``GET …/payloadrepositorytags/<name>`` of ``bench-get/img:v1``, front-proxied (one manifest
     read from the registry per GET; the image config is kept by the server);
   - ``page``: walks of the namespace ``bench`` with ``limit=--limit`` (front-proxied), page after
     page, counted per page; a walk's pages after its first are served from the walk cache (no
     registry read);
   - ``list``: the whole namespace ``bench`` unpaged (as many tags in all as the pages had), per list;
   - ``page-idle``: ``page`` with the client waiting ``IDLE`` (5 ms) after each page before it asks for
     the next: the server idle between requests for longer than a client that only reads and parses
     each page leaves it, the same requests and instructions served after a longer sleep.

With ``page`` and ``list`` both, the summary also gives a walk's server CPU over an unpaged list's
(``page`` times pages per walk / ``list``).

Reported per kind and server: the median of the repetitions' server CPU per request (ms) and their
spread, and the ratio of the two servers. CPU time, not wall time: other processes' turns on a busy
machine are not charged to the server. The clock tick is 10 ms, so a kind's CPU per repetition is only
read to within 10 ms: ``--requests`` keeps that a small part. With ``--fine`` it is read from the
scheduler's count in nanoseconds (``/proc/<pid>/task/*/schedstat``), so that short batches, many
repetitions and their minimum can be compared (the ``(kernel)`` rows stay in ticks). ``--syscalls``
then counts the server's system calls per request (``strace -c``) in one more batch per kind and
server: a figure the machine's load does not move. ``--instructions`` runs each server under
valgrind's callgrind instead, with nothing counted but one batch per kind (``--requests``; a list's is
the same tags as a walk of that many pages, at least one list), counted from the first request to the
last answer (``callgrind_control``): the user-space instructions every thread of the server ran per
request (not the kernel's, for its system calls), a count the load does not move either (no CPU is
read then; callgrind runs the server some 50 times slower: a walk of 100,000 tags takes minutes).

Usage: .venv/bin/python bench/request_cpu.py [--requests 1000] [--reps 3] [--tags 2000] [--repositories 1]
       [--limit 500] [--kinds discovery,discovery-cert,pipelined,get,page,list] [--table] [--before SRC]
       [--after SRC] [--before-env NAME=VALUE] [--after-env NAME=VALUE] [--profile FILE] [--json FILE]
       [--pin] [--fine] [--syscalls] [--instructions]

``--pin`` puts the servers on the first CPU and the registry and this client on the others, as a
deployment separates them (the server's pod, the registry, kube-apiserver).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from list_latency import (  # noqa: E402
    GROUP_PATH,
    cpu_seconds,
    report,
    run_with_registry,
    wait_ready,
)
from list_scale import seed_image, tag_names, write_repository  # noqa: E402
from single_get import start_server  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.pki import Authority, Issued  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402

from payloadtags.names import encode_name  # noqa: E402

NAMESPACE = "bench"
GET_NAMESPACE = "bench-get"
KINDS = ("discovery", "discovery-cert", "pipelined", "get", "page", "list", "page-idle")
PIPELINED = 32  # requests sent at once by the pipelined kind (the server holds up to 16 kB of them)
IDLE = 0.005  # seconds the client of page-idle waits after each page
PROXIED = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters", "Accept": "application/json"}
# What kubectl get asks for a list (`--table`): the pages and lists as Tables.
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


class Connection:
    """One kept-alive HTTPS connection with a client certificate (blocking; used from a thread)."""

    def __init__(self, url: str, ca_file: str, identity: Issued) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        context.check_hostname = False
        context.load_cert_chain(str(identity.cert_file), str(identity.key_file))
        target = urllib.parse.urlsplit(url)
        assert target.hostname is not None and target.port is not None
        self._connection = http.client.HTTPSConnection(target.hostname, target.port, context=context)
        self._reader: _KeptOpen | None = None

    def get(self, path: str, headers: dict[str, str]) -> bytes:
        self._connection.request("GET", path, headers=headers)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return body

    def pipelined(self, path: str, headers: dict[str, str], count: int) -> None:
        """``count`` GETs of ``path`` written at once, then their answers read in order."""
        connection = self._connection
        if connection.sock is None:
            connection.connect()
        fields = [f"Host: {connection.host}", *(f"{k}: {v}" for k, v in headers.items())]
        lines = [f"GET {path} HTTP/1.1", *fields]
        connection.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() * count)
        if self._reader is None:
            self._reader = _KeptOpen(connection.sock.makefile("rb"))
        for _ in range(count):
            response = http.client.HTTPResponse(self._reader)  # type: ignore[arg-type]
            response.begin()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")

    def close(self) -> None:
        self._connection.close()


class _KeptOpen:
    """One reader of a connection for answer after answer: HTTPResponse asks its socket for a reader
    (``makefile``) and closes it once the answer is read."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def makefile(self, mode: str) -> _KeptOpen:
        return self

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def requests_of(
    kind: str, connection: Connection, limit: int, tags: int, table: bool = False
) -> Callable[[int], int]:
    """A function sending ``n`` requests of ``kind``; it returns how many requests it sent. ``table``:
    pages and lists asked for as Tables, as kubectl get asks."""
    collection = f"{GROUP_PATH}/namespaces/{NAMESPACE}/payloadrepositorytags"
    listed = {**PROXIED, "Accept": TABLE} if table else PROXIED
    field = "rows" if table else "items"
    if kind in ("discovery", "discovery-cert"):
        headers = PROXIED if kind == "discovery" else {"Accept": "application/json"}

        def discovery(n: int) -> int:
            for _ in range(n):
                connection.get(GROUP_PATH, headers)
            return n

        return discovery
    if kind == "pipelined":

        def pipelined(n: int) -> int:
            for sent in range(0, n, PIPELINED):
                connection.pipelined(GROUP_PATH, PROXIED, min(PIPELINED, n - sent))
            return n

        return pipelined
    if kind == "get":
        path = f"{GROUP_PATH}/namespaces/{GET_NAMESPACE}/payloadrepositorytags/{encode_name('img', 'v1')}"

        def get(n: int) -> int:
            for _ in range(n):
                if json.loads(connection.get(path, PROXIED))["spec"]["tag"] != "v1":
                    raise RuntimeError("the GET answered another tag")
            return n

        return get
    if kind in ("page", "page-idle"):
        idle = IDLE if kind == "page-idle" else 0.0

        def pages(n: int) -> int:
            sent = 0
            token = ""
            while sent < n or token:
                query = f"?limit={limit}"
                if token:
                    query += "&continue=" + urllib.parse.quote(token)
                document = json.loads(connection.get(collection + query, listed))
                token = document["metadata"].get("continue", "")
                sent += 1
                if idle:
                    time.sleep(idle)
            return sent

        return pages
    if kind == "list":

        def lists(n: int) -> int:
            for _ in range(n):
                if len(json.loads(connection.get(collection, listed))[field]) != tags:
                    raise RuntimeError("the list is not the whole repository")
            return n

        return lists
    raise ValueError(kind)


def system_seconds(pid: int) -> float:
    """Kernel CPU time of a process (TLS records go out and come in through loopback sockets there)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[12]) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Page faults of a process that took no disk read (memory the kernel mapped on first touch)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[7])


def run_seconds(pid: int) -> float:
    """CPU time of a process's threads (user + system) to the nanosecond, as the scheduler counts it
    (``/proc/<pid>/task/*/schedstat``): a thread that ends between two readings takes its time along."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def measure(pid: int, send: Callable[[int], int], n: int, fine: bool) -> tuple[float, float, float]:
    """Server CPU per request (ms) for ``n`` requests, the kernel's part of it (ticks only), and minor
    page faults per request."""
    cpu = run_seconds if fine else cpu_seconds
    before, system, faults = cpu(pid), system_seconds(pid), minor_faults(pid)
    sent = send(n)
    return (
        (cpu(pid) - before) * 1000 / sent,
        (system_seconds(pid) - system) * 1000 / sent,
        (minor_faults(pid) - faults) / sent,
    )


def count_syscalls(pid: int, send: Callable[[int], int], n: int, out: Path) -> dict[str, float]:
    """The server's system calls per request over ``n`` requests, by name (``strace -c`` attached to
    all its threads for the batch). strace slows the server: no CPU is read in these batches."""
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert tracer.stderr is not None
        tracer.stderr.readline()  # "strace: Process <pid> attached ...": traced from now on
        sent = send(n)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
    counts: dict[str, float] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"; the header, rules and total skipped
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3]) / sent
    return counts


def count_instructions(pid: int, send: Callable[[int], int], n: int, out: Path) -> float:
    """The instructions the server (run under ``valgrind --tool=callgrind --instr-atstart=no
    --callgrind-out-file=<out>``) ran per request over ``n`` requests: counting switched on after the
    warm-up, off after the last answer, then dumped and read (the dump's ``totals``)."""

    def control(*command: str) -> None:
        subprocess.run(["callgrind_control", *command, str(pid)], check=True, capture_output=True)

    control("--zero")
    control("--instr=on")
    sent = send(n)
    control("--instr=off")
    dumps = set(out.parent.glob(out.name + ".*"))
    control(f"--dump=batch-{len(dumps) + 1}")
    (dump,) = set(out.parent.glob(out.name + ".*")) - dumps
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1]) / sent
    raise RuntimeError(f"no totals in {dump}")


async def run(
    reactor: Any,
    args: argparse.Namespace,
    registry: RegistryServer,
    work: Path,
    started: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    manifest, blobs = await seed_image(registry.url)
    per = args.tags // args.repositories
    for index in range(args.repositories):
        path = "app" if args.repositories == 1 else f"app-{index:03d}"
        await deferToThread(
            write_repository, registry.root, f"{NAMESPACE}/{path}", tag_names(per), blobs, manifest
        )
    args.tags = per * args.repositories
    await deferToThread(images.push_oci_image, registry.url, f"{GET_NAMESPACE}/img", "v1", seed="request-cpu")
    pki = await deferToThread(Pki.create, work / "pki")
    proxy_ca = await deferToThread(Authority.create, work / "pki" / "front-proxy", "front-proxy")
    proxy = await deferToThread(proxy_ca.client, "front-proxy-client", (), "front-proxy-client")
    ca_file = str(pki.server_ca.cert_file)
    servers: dict[str, tuple[int, str]] = {}
    variants = {"after": args.after, **({"before": args.before} if args.before else {})}
    counted = {name: work / f"callgrind-{name}.out" for name in variants}
    for name, src in variants.items():
        wrapper = (
            ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={counted[name]}")
            if args.instructions
            else ()
        )
        process, url = start_server(
            work,
            pki,
            proxy_ca,
            registry.url,
            src,
            args.profile if name == "after" else None,
            name,
            wrapper=wrapper,
            environ=dict(setting.split("=", 1) for setting in getattr(args, f"{name}_env")),
        )
        started.append(process)
        # Under valgrind the server starts some five times slower.
        await deferToThread(
            wait_ready, url, ca_file, process, work / f"{name}.log", 600.0 if args.instructions else 30.0
        )
        servers[name] = (process.pid, url)
    if args.pin:
        # Deployed, the server does not share its CPU with the registry or the client (kube-apiserver);
        # here all three share the machine's CPUs unless pinned apart.
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs")
        for pid, _url in servers.values():
            pin(pid, {cpus[0]})
        assert registry.process is not None
        for pid in (registry.process.pid, os.getpid()):
            pin(pid, set(cpus[1:]))
    kinds = args.kinds.split(",")
    results: dict[str, Any] = {
        "requests": args.requests,
        "tags": args.tags,
        "repositories": args.repositories,
        "limit": args.limit,
        "pinned": args.pin,
        "table": args.table,
        "fine": args.fine,
        "reps": [],
    }

    @contextlib.contextmanager
    def warmed(kind: str, url: str) -> Iterator[tuple[Callable[[int], int], int]]:
        """A sender of ``kind`` requests to ``url`` and how many to measure, after a few unmeasured ones."""
        connection = Connection(url, ca_file, pki.admin if kind == "discovery-cert" else proxy)
        try:
            send = requests_of(kind, connection, args.limit, args.tags, args.table)
            n = args.requests if kind != "list" else max(1, args.requests * args.limit // args.tags)
            send(max(2, n // 20))  # handshake, caches and the walk cache warm
            yield send, n
        finally:
            connection.close()

    def one_rep(i: int) -> dict[str, dict[str, float]]:
        rep: dict[str, dict[str, float]] = {}  # kind -> server -> CPU per request, ms
        order = list(servers) if i % 2 == 0 else list(servers)[::-1]
        for kind in kinds:
            for name in order:
                pid, url = servers[name]
                with warmed(kind, url) as (send, n):
                    total, system, faults = measure(pid, send, n, args.fine)
                rep.setdefault(kind, {})[name] = total
                rep.setdefault(f"{kind} (kernel)", {})[name] = system
                rep.setdefault(f"{kind} (minor faults)", {})[name] = faults
        return rep

    def syscalls() -> dict[str, dict[str, dict[str, float]]]:
        counted: dict[str, dict[str, dict[str, float]]] = {}  # kind -> server -> syscall -> per request
        for kind in kinds:
            for name, (pid, url) in servers.items():
                with warmed(kind, url) as (send, n):
                    counted.setdefault(kind, {})[name] = count_syscalls(
                        pid, send, n, work / f"strace-{kind}-{name}.txt"
                    )
        return counted

    def instructions() -> dict[str, dict[str, float]]:
        counts: dict[str, dict[str, float]] = {}  # kind -> server -> instructions per request
        for kind in kinds:
            for name, (pid, url) in servers.items():
                with warmed(kind, url) as (send, n):
                    counts.setdefault(kind, {})[name] = count_instructions(pid, send, n, counted[name])
                print(f"# {kind}, {name}: {counts[kind][name]:,.0f} instructions per request", flush=True)
        return counts

    if args.instructions:
        results["instructions"] = await deferToThread(instructions)
        return results
    for i in range(args.reps):
        rep = await deferToThread(one_rep, i)
        results["reps"].append(rep)
        print(
            f"# rep {i + 1}: "
            + "; ".join(f"{k} " + ", ".join(f"{n} {v:.3f}" for n, v in r.items()) for k, r in rep.items()),
            flush=True,
        )
    if args.syscalls:
        results["syscalls"] = await deferToThread(syscalls)
    return results


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (an affinity is per thread; new threads inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def _head(
    results: dict[str, Any],
    names: list[str],
    *,
    run: str,
    column: str,
    ratio: str,
    load_note: str = "",
    setup: str = "",
) -> list[str]:
    """The lines a summary opens with: the machine, what ran on what data, and the head of its table (a
    ``column`` per server, then the ``ratio`` column when two ran)."""
    return [
        f"Machine: {results['machine']}; load average {results['load']}{load_note}",
        f"{run}; pages of {results['limit']} from {results['tags']} tags in {results['repositories']} "
        "repositories" + ("; as Tables" if results.get("table") else "") + setup,
        "",
        "| kind | "
        + " | ".join(f"{n}: {column}" for n in names)
        + (f" | {ratio} |" if len(names) > 1 else " |"),
        "|---|" + "---:|" * (len(names) + (1 if len(names) > 1 else 0)),
    ]


def summarize(results: dict[str, Any]) -> str:
    if "instructions" in results:
        return summarize_instructions(results)
    reps = results["reps"]
    names = list(reps[0][next(iter(reps[0]))])
    lines = _head(
        results,
        names,
        run=f"{results['requests']} requests per kind, server and repetition; {len(reps)} repetitions",
        setup="; the servers on a CPU of their own (--pin)" if results.get("pinned") else "",
        column="server CPU per request, ms (range)",
        ratio="after / before: medians; minimums; paired repetitions (median)",
    )
    for kind in reps[0]:
        cells = []
        medians = {}
        for name in names:
            values = [rep[kind][name] for rep in reps]
            medians[name] = statistics.median(values)
            cells.append(f"{medians[name]:.3f} ({min(values):.3f}-{max(values):.3f})")
        if len(names) > 1:
            # Below one clock tick a kind's CPU reads 0: no ratio then.
            lowest = min(rep[kind]["before"] for rep in reps)
            paired = [rep[kind]["after"] / rep[kind]["before"] for rep in reps if rep[kind]["before"]]
            cells.append(
                "-"
                if not medians["before"] or not lowest or not paired
                else f"{medians['after'] / medians['before']:.3f}; "
                f"{min(rep[kind]['after'] for rep in reps) / lowest:.3f}; {statistics.median(paired):.3f}"
            )
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if "page" in reps[0] and "list" in reps[0]:
        pages = -(-results["tags"] // results["limit"])
        for name in names:
            ratios = [pages * rep["page"][name] / rep["list"][name] for rep in reps if rep["list"][name]]
            if not ratios:
                continue
            lines.append(
                f"- {name}: a walk's server CPU / an unpaged list's: median {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )
    for kind, per_server in results.get("syscalls", {}).items():
        for name, counts in per_server.items():
            top = sorted(counts.items(), key=lambda item: -item[1])[:8]
            lines.append(
                f"- {kind}, {name}: {sum(counts.values()):.2f} system calls per request ("
                + ", ".join(f"{call} {count:.2f}" for call, count in top)
                + ")"
            )
    lines.append(f"total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


def summarize_instructions(results: dict[str, Any]) -> str:
    counts = results["instructions"]
    names = list(counts[next(iter(counts))])
    lines = _head(
        results,
        names,
        load_note=" (a count: the load does not move it)",
        run=f"{results['requests']} requests per kind and server under callgrind",
        column="instructions per request",
        ratio="after / before",
    )
    for kind, per_server in counts.items():
        cells = [f"{per_server[n]:,.0f}" for n in names]
        if len(names) > 1:
            cells.append(f"{per_server['after'] / per_server['before']:.4f}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if "page" in counts and "list" in counts:
        pages = -(-results["tags"] // results["limit"])
        for name in names:
            lines.append(
                f"- {name}: a walk's instructions / an unpaged list's: "
                f"{pages * counts['page'][name] / counts['list'][name]:.3f}; a page's beyond its share of "
                f"the list: {counts['page'][name] - counts['list'][name] / pages:,.0f}"
            )
    lines.append(f"total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="per kind, server and repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tags", type=int, default=2000, help="tags of the walked repository")
    parser.add_argument("--repositories", type=int, default=1, help="the tags spread over this many")
    parser.add_argument("--limit", type=int, default=500, help="page size of the walks")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"some of {','.join(KINDS)}")
    parser.add_argument("--table", action="store_true", help="pages and lists as Tables (kubectl get's)")
    parser.add_argument("--before", help="also run another tree's server code (its src, as PYTHONPATH)")
    parser.add_argument("--after", help="run another tree's server code as the one measured (its src)")
    for name in ("before", "after"):
        parser.add_argument(
            f"--{name}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable of the {name} server only (PYTHONMALLOC=malloc, say); repeatable",
        )
    parser.add_argument("--profile", help="run this tree's server under cProfile (CPU time), stats here")
    parser.add_argument("--json", type=Path, help="also write raw figures here")
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="then one more batch per kind and server with strace -c: the server's system calls per request",
    )
    parser.add_argument(
        "--fine",
        action="store_true",
        help="the server's CPU from the scheduler's count in ns, not /proc's 10 ms ticks (short batches)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="only count the servers' instructions per request under valgrind's callgrind (no CPU read)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the servers on the first CPU, the registry and the client on the others",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run_with_registry(
        "payloadtags-request-cpu-",
        lambda reactor, registry, work, processes: run(reactor, args, registry, work, processes),
    )
    if results is not None:
        results["wall_seconds"] = time.monotonic() - started
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
