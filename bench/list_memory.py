"""What a server keeps after big lists: its memory fresh, warm, after the lists and idle past the caches.

Starts a registry with namespaces ``s1000`` (1,000 tags) and ``sN`` (``--tags``, 100 repositories),
and a payloadtags server under a launcher of this bench's own (never the product's code) that writes,
on SIGUSR1 (after a full collection), its memory by kind: VmRSS and /proc/<pid>/smaps_rollup, glibc's
heap (``mallinfo2``: bytes in use and free), Python's allocator (``sys._debugmallocstats``: arenas of
1 MiB, bytes of blocks in use, wholly free pools), the objects gc tracks counted by type, and with
``--trace N`` a tracemalloc snapshot (N frames, tracing from the first phase on; ``--keep DIR`` keeps
them). Phases:

1. ``fresh``: the server ready, idle 5 s;
2. ``warmed``: one small request of each kind (discovery, the OpenAPI document, one tag's GET, a list
   of 1,000 tags in JSON and as a Table, a walk of it in pages of 500, a watch of it that ends after
   1 s); ``warm idle``: then idle past the caches' lifetimes (``--settle``, default 200 s: walks live
   60 s after their last page, list records 120 s unused);
3. ``--rounds`` times: the big lists (of ``sN``: an unpaged JSON list, an unpaged Table list, a walk in
   pages of 500, with ``--watch S`` a watch of S seconds from no resourceVersion (an event per tag),
   ``--concurrent`` unpaged JSON lists at once; with ``--during S`` a dump S seconds into those), the
   dump right after them (``after``),
   then idle ``--settle`` seconds (``settled``). With ``--trim``, after the last: glibc's
   ``malloc_trim(0)`` and the RSS after it (what glibc could give back). With ``--map``, after the last:
   which blocks keep Python's arenas (bench/arena_map.py), into ``N.arenas.json`` among the dumps.

With ``--variant LABEL=NAME=VALUE[,NAME=VALUE]`` (repeatable) another server, with those environment
variables (``PYTHONMALLOC=malloc``, an ``LD_PRELOAD``), goes through the same phases at the same time as
main's, on the same registry: each row names its server.

Usage: .venv/bin/python bench/list_memory.py [--tags 100000] [--rounds 3] [--settle 200]
       [--concurrent 10] [--during S] [--watch S] [--trim] [--map] [--trace N] [--keep DIR] [--json FILE]
       [--variant LABEL=NAME=VALUE[,NAME=VALUE]]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

import arena_map  # noqa: E402
from list_latency import GROUP_PATH, _get, report, run_with_registry, start_server, stop_process, wait_ready  # noqa: E402
from list_scale import Server, layouts, seed_image, write_repository  # noqa: E402
from tests.support.harness import Pki  # noqa: E402

from payloadtags.names import encode_name  # noqa: E402

# How long a dump may take the server before the bench gives up (it also stops waiting when the server
# exits).
DUMP_SECONDS = 300.0

# The server's launcher: payloadtags' own main, with a SIGUSR1 handler that writes the dump named
# by a counter into the directory given first.
LAUNCHER = r"""
import collections, ctypes, gc, json, os, signal, sys, tracemalloc
libc = ctypes.CDLL("libc.so.6")

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc.mallinfo2.restype = Mallinfo2

def mallinfo():
    info = libc.mallinfo2()
    return {name: getattr(info, name) for name, _ in Mallinfo2._fields_}
out, frames = sys.argv[1], int(os.environ.get("LIST_MEMORY_TRACE", "0"))
sys.argv = ["payloadtags", *sys.argv[2:]]

def trace(signum, frame):  # from here on: tracing from the start makes the server too slow to start
    tracemalloc.start(frames)
dumps = [0]

def rss():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (l.partition(":") for l in f) if k in ("VmRSS", "VmHWM")}

def dump(signum, frame):
    dumps[0] += 1
    base = os.path.join(out, str(dumps[0]))
    before_gc = rss()
    collected = gc.collect()
    counts = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    with open("/proc/self/smaps_rollup") as f:
        rollup = f.read()
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(base + ".snap")
    saved = os.dup(2)
    with open(base + ".malloc", "w") as f:
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    with open(base + ".json.tmp", "w") as f:
        json.dump({"rss_before_gc": before_gc, "rss": rss(), "collected": collected,
                   "gc_objects": sum(counts.values()), "types": counts.most_common(60),
                   "smaps_rollup": rollup, "modules": len(sys.modules),
                   "mallinfo": mallinfo()}, f)
    if os.path.exists(os.path.join(out, "trim")):  # what glibc gives back when asked
        heap = mallinfo()
        libc.malloc_trim(0)
        with open(base + ".trim", "w") as f:
            json.dump({"rss": rss(), "mallinfo": heap, "mallinfo_after": mallinfo()}, f)
    if os.path.exists(os.path.join(out, "map")):  # the arenas and the blocks that keep them
        sys.path.insert(0, os.environ["LIST_MEMORY_BENCH"])
        import arena_map
        arena_map.map_arenas(base + ".arenas.json")
    os.rename(base + ".json.tmp", base + ".json")

signal.signal(signal.SIGUSR1, dump)
signal.signal(signal.SIGUSR2, trace)
from payloadtags.cli import main
main()
"""


def start(
    work: Path, pki: Pki, registry_url: str, frames: int, environ: dict[str, str]
) -> tuple[Any, str, Path]:
    work.mkdir(exist_ok=True)
    dumps = work / "dumps"
    dumps.mkdir()
    os.environ["LIST_MEMORY_TRACE"] = str(frames)
    os.environ["LIST_MEMORY_BENCH"] = str(ROOT / "bench")
    process, url = start_server(work, pki, registry_url, profile=dumps, launcher=LAUNCHER, environ=environ)
    return process, url, dumps


async def dump(reactor: Any, process: Any, dumps: Path, count: int) -> dict[str, Any]:
    process.send_signal(signal.SIGUSR1)
    target = dumps / f"{count}.json"
    deadline = time.monotonic() + DUMP_SECONDS
    while not target.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"no dump {target.name} from the server: "
                + (
                    f"it exited ({process.returncode})"
                    if process.returncode is not None
                    else f"{DUMP_SECONDS:.0f} s"
                )
            )
        await deferLater(reactor, 0.2, lambda: None)
    data: dict[str, Any] = json.loads(target.read_text())
    data["malloc"] = (dumps / f"{count}.malloc").read_text()
    return data


def malloc_summary(text: str) -> dict[str, int]:
    """The totals of ``sys._debugmallocstats``: arenas, bytes in allocated and in free blocks, unused
    pools."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if not equals or not value.strip().replace(",", "").isdigit():
            continue
        number = int(value.strip().replace(",", ""))
        name = name.strip().removeprefix("# ").strip()
        if name.endswith("unused pools * 16384 bytes"):
            found["unused_pools"] = int(name.split()[0])
        elif name in (
            "arenas allocated total",
            "arenas reclaimed",
            "arenas highwater mark",
            "arenas allocated current",
            "bytes in allocated blocks",
            "bytes in available blocks",
        ):
            found[name.replace(" ", "_")] = number
    return found


def rollup_summary(text: str) -> dict[str, int]:
    found = {}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            found[key.strip()] = int(value.split()[0])
    return found


def variants(given: list[str]) -> dict[str, dict[str, str]]:
    """``main`` (this tree's server as it is) and each ``--variant LABEL=NAME=VALUE[,NAME=VALUE]``."""
    found: dict[str, dict[str, str]] = {"main": {}}
    for text in given:
        label, _, settings = text.partition("=")
        found[label] = dict(setting.split("=", 1) for setting in settings.split(",") if setting)
    return found


async def run(
    reactor: Any, args: argparse.Namespace, registry: Any, work: Path, started: list[Any]
) -> dict[str, Any]:
    results: dict[str, Any] = {"phases": []}
    manifest, blobs = await seed_image(registry.url)
    small, big = layouts([1000, args.tags], 0)

    def fill() -> None:
        for layout in (small, big):
            for path, tags in layout.repositories.items():
                write_repository(registry.root, f"{layout.namespace}/{path}", tags, blobs, manifest)

    await deferToThread(fill)
    pki = await deferToThread(Pki.create, work / "pki")
    began = time.monotonic()

    async def serve(label: str, environ: dict[str, str]) -> None:
        """One server's phases; each variant's server goes through them at the same time as the others,
        on the same registry."""
        process, url, dumps = start(work / label, pki, registry.url, args.trace, environ)
        started.append(process)
        ca_file = str(pki.server_ca.cert_file)
        await deferToThread(wait_ready, url, ca_file, process, work / label / "payloadtags.log")
        server = Server(reactor, url, pki)
        try:
            await phases(label, process, url, dumps, server)
        finally:
            await server.pool.closeCachedConnections()
            await deferToThread(stop_process, process)
            if args.keep:
                import shutil

                shutil.copytree(dumps, args.keep / label, dirs_exist_ok=True)

    async def phases(label: str, process: Any, url: str, dumps: Path, server: Server) -> None:
        count = 0

        async def phase(name: str) -> None:
            nonlocal count
            count += 1
            data = await dump(reactor, process, dumps, count)
            summary = {
                "server": label,
                "phase": name,
                "at_s": round(time.monotonic() - began),
                "rss_kib": data["rss"],
                "rss_before_gc_kib": data["rss_before_gc"],
                "pymalloc": malloc_summary(data["malloc"]),
                "rollup": rollup_summary(data["smaps_rollup"]),
                "gc_objects": data["gc_objects"],
                "modules": data["modules"],
                "types": data["types"],
                "mallinfo": data["mallinfo"],
            }
            results["phases"].append(summary)
            print("# " + row(summary), flush=True)

        async def idle() -> None:
            await deferLater(reactor, args.settle, lambda: None)

        await deferLater(reactor, 5, lambda: None)
        await phase("fresh")
        if args.trace:
            process.send_signal(signal.SIGUSR2)
        # One small request of each kind.
        for path in ("/apis", f"{GROUP_PATH}", "/openapi/v2", "/version"):
            await _get(server._http, reactor, url + path, {"Accept": "application/json"})
        name = encode_name("app-000", "v000000")
        code, _, body = await _get(
            server._http, reactor, f"{url}{GROUP_PATH}/namespaces/s1000/payloadrepositorytags/{name}"
        )
        if code != 200:
            raise RuntimeError(f"GET answered {code}: {body[:200]!r}")
        expected = small.pairs()
        for fn in (
            lambda: server.list("s1000"),
            lambda: server.list("s1000", table=True),
            lambda: server.walk("s1000"),
        ):
            if await fn() != expected:
                raise RuntimeError("a small list saw different tags")
        await _get(
            server._http,
            reactor,
            f"{url}{GROUP_PATH}/namespaces/s1000/payloadrepositorytags?watch=1&timeoutSeconds=1",
        )
        await phase("warmed")
        await idle()
        await phase("warm idle")
        expected = big.pairs()
        for round_ in range(args.rounds):
            for fn in (
                lambda: server.list(big.namespace),
                lambda: server.list(big.namespace, table=True),
                lambda: server.walk(big.namespace),
            ):
                if await fn() != expected:
                    raise RuntimeError("a big list saw different tags")
            if args.watch:  # its first events: one ADDED per tag of the namespace
                await _get(
                    server._http,
                    reactor,
                    f"{url}{GROUP_PATH}/namespaces/{big.namespace}/payloadrepositorytags"
                    f"?watch=1&timeoutSeconds={args.watch}",
                )
            pending = gatherResults(
                [Deferred.fromCoroutine(server.list(big.namespace)) for _ in range(args.concurrent)]
            )
            if args.during:  # the dump while the concurrent lists are being served
                await deferLater(reactor, args.during, lambda: None)
                await phase(f"during {round_ + 1}")
            outcomes = await pending
            if any(o != expected for o in outcomes):
                raise RuntimeError("a concurrent list saw different tags")
            await phase(f"after {round_ + 1}")
            await idle()
            if args.trim and round_ + 1 == args.rounds:
                (dumps / "trim").touch()
            if args.map and round_ + 1 == args.rounds:
                (dumps / "map").touch()
            await phase(f"settled {round_ + 1}")
            if args.trim and round_ + 1 == args.rounds:
                trimmed = json.loads((dumps / f"{count}.trim").read_text())
                results.setdefault("trimmed", {})[label] = trimmed
                print(f"# {label}: malloc_trim(0): RSS {trimmed['rss']['VmRSS'] / 1024:.1f} MiB", flush=True)

    await gatherResults(
        [Deferred.fromCoroutine(serve(label, environ)) for label, environ in variants(args.variant).items()],
        consumeErrors=True,
    )
    return results


MiB = 1 << 20
COLUMNS = (
    "| server | phase | at (s) | RSS (MiB) | anonymous | C heap: in use, free | Python arenas | "
    "their blocks in use, free pools (MiB) | gc objects |"
)


def row(p: dict[str, Any]) -> str:
    """One phase: RSS; anonymous memory; glibc's heap (mallinfo2: in use, free); pymalloc's arenas (1 MiB
    each), the bytes of their blocks in use and their wholly free pools; the objects gc sees."""
    heap, py = p["mallinfo"], p["pymalloc"]
    arenas, in_use = py.get("arenas_allocated_current"), py.get("bytes_in_allocated_blocks", 0) / MiB
    return (
        f"| {p.get('server', 'main')} | {p['phase']} | {p['at_s']} | {p['rss_kib']['VmRSS'] / 1024:.1f} | "
        f"{p['rollup'].get('Anonymous', 0) / 1024:.1f} | "
        f"{heap['uordblks'] / MiB:.1f}, {heap['fordblks'] / MiB:.1f} | {arenas} | "
        f"{in_use:.1f}, {py.get('unused_pools', 0) * 16384 / MiB:.1f} | "
        f"{p['gc_objects']:,} |"
    )


def summarize(results: dict[str, Any]) -> str:
    lines = [COLUMNS, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = list(dict.fromkeys(p.get("server", "main") for p in results["phases"]))
    lines += [row(p) for label in order for p in results["phases"] if p.get("server", "main") == label]
    for label in order:
        peak = max(p["rss_kib"]["VmHWM"] for p in results["phases"] if p.get("server", "main") == label)
        lines.append(f"{label}: peak RSS {peak / 1024:.1f} MiB")
    for label, trimmed in results.get("trimmed", {}).items():
        lines.append(f"{label}: after malloc_trim(0): RSS {trimmed['rss']['VmRSS'] / 1024:.1f} MiB")
    lines.append(f"load: {results.get('load')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=200.0)
    parser.add_argument("--concurrent", type=int, default=10, help="unpaged lists at once, per round")
    parser.add_argument(
        "--watch", type=int, default=0, help="each round also watches sN this many seconds (0: no watch)"
    )
    parser.add_argument(
        "--during", type=float, default=0.0, help="also dump this many seconds into the concurrent lists"
    )
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    parser.add_argument(
        "--trim", action="store_true", help="after the last idle phase, malloc_trim(0) and the RSS after it"
    )
    parser.add_argument(
        "--map", action="store_true", help="after the last idle phase, map the arenas (bench/arena_map.py)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=NAME=VALUE[,NAME=VALUE]",
        help="also a server with these environment variables, beside main's, on the same registry",
    )
    parser.add_argument("--keep", type=Path, help="copy the server's dumps there")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.map and (refused := arena_map.refusal()) is not None:
        parser.error(refused)  # before the minutes of lists, not in the last dump
    results = run_with_registry(
        "payloadtags-memory-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
    )
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
