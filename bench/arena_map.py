"""Which blocks keep pymalloc's arenas: the live objects mapped to their pools and arenas by address.

Loaded by list_memory.py's launcher inside the server (``--map``), never by the product. CPython 3.11's
obmalloc (Objects/obmalloc.c): arenas of 1 MiB (ARENA_BITS 20) hold pools of 16 KiB (POOL_BITS 14),
aligned to 16 KiB; a pool starts with a ``pool_header`` (``ref.count`` at 0: its blocks in use,
``arenaindex`` at 32, ``szidx`` at 36: blocks of ``(szidx + 1) * 16`` bytes), its blocks follow at 48.
An arena goes back to the system only once all its pools are free, so an arena with a handful of pools
in use is kept by the blocks in them. Objects are found as gc's objects and what they refer to (strings,
numbers and tuples gc does not track); blocks that are not objects (a dict's keys table, a list's
array) are counted, not named. The ``parent`` of an object is one container that refers to it.
"""

from __future__ import annotations

import array
import collections
import ctypes
import gc
import json
import sys
import tracemalloc
from typing import Any

POOL = 1 << 14
ARENA = 1 << 20
HEADER = 48
GC_HEAD = 16
HAVE_GC = 1 << 14
# An instance of a class with a managed dict (Py_TPFLAGS_MANAGED_DICT: every class without
# __slots__) has two pointers before its GC header too (_PyType_PreHeaderSize): its block starts
# GC_HEAD + PRE_HEADER before the object.
MANAGED_DICT = 1 << 4
PRE_HEADER = 16
# The only version whose layouts the constants above are: another's pool headers and object headers
# may differ (3.12 puts managed weak references before the GC header too), and its placements would
# be wrong without a sign of it.
LAYOUT_OF = (3, 11)


def refusal(version: tuple[int, ...] | None = None) -> str | None:
    """Why the map cannot be made under ``version`` (this Python's by default); None: it can."""
    running = tuple((version or sys.version_info)[:2])
    if running == LAYOUT_OF:
        return None
    made_for, this = ".".join(map(str, LAYOUT_OF)), ".".join(map(str, running))
    return f"arena_map reads CPython {made_for}'s obmalloc and object layout, not {this}'s: no map made"


def block_of(o: Any) -> int:
    """The address of the block ``o`` lives in: the object, after its headers."""
    flags = type(o).__flags__
    return id(o) - (GC_HEAD if flags & HAVE_GC else 0) - (PRE_HEADER if flags & MANAGED_DICT else 0)


def anonymous_ranges() -> list[tuple[int, int]]:
    found = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 and parts[1].startswith("rw"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                found.append((lo, hi))
    return sorted(found)


def within(ranges: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in ranges)


def header(pool: int) -> tuple[int, int, int, int, int]:
    """A pool's ``ref.count``, ``arenaindex``, ``szidx``, ``nextoffset`` and ``maxnextoffset``."""
    return (
        ctypes.c_uint.from_address(pool).value,
        ctypes.c_uint.from_address(pool + 32).value,
        ctypes.c_uint.from_address(pool + 36).value,
        ctypes.c_uint.from_address(pool + 40).value,
        ctypes.c_uint.from_address(pool + 44).value,
    )


def scan_pools(ranges: list[tuple[int, int]]) -> array.array[int]:
    """Every pool pymalloc set up, in the anonymous mappings, as (address, blocks in use, arena index,
    block size) in one flat array (no Python object per pool: read before the map makes any, which
    would take the free blocks and pools it is about to count). A pool is told by its header: blocks
    of ``(szidx + 1) * 16`` bytes, ``maxnextoffset`` is the pool's size less one block, ``nextoffset``
    lies on a block's start. A free pool counts 0 blocks."""
    found = array.array("Q")
    for lo, hi in ranges:
        pool = (lo + POOL - 1) & ~(POOL - 1)
        while pool + POOL <= hi:
            count, arena, szidx, nextoffset, maxnext = header(pool)
            size = (szidx + 1) * 16
            if (
                szidx < 32
                and maxnext == POOL - size
                and HEADER <= nextoffset <= POOL
                and (nextoffset - HEADER) % size == 0
                and count * size <= POOL - HEADER
                and arena < 1 << 16
            ):
                found.extend((pool, count, arena, size))
            pool += POOL
    return found


def describe(o: Any) -> str:
    t = type(o)
    name = f"{t.__module__}.{t.__qualname__}"
    if isinstance(o, (str, bytes)):
        return f"{name} {o[:60]!r} ({len(o)})"
    if isinstance(o, (int, float)):
        return f"{name} {o!r}"
    if isinstance(o, tuple):
        return f"{name} len {len(o)}: " + ", ".join(type(x).__name__ for x in o[:6])
    if isinstance(o, (dict, list, set)):
        return f"{name} len {len(o)}"
    if hasattr(o, "__name__") and isinstance(getattr(o, "__name__", None), str):
        return f"{name} {o.__name__}"
    return name


def holder(parent: Any, child: Any) -> str:
    text = describe(parent)
    if isinstance(parent, dict):
        for k, v in parent.items():
            if v is child:
                return f"{text} [{k!r:.60}]"
            if k is child:
                return f"{text} (a key)"
    return text


def by_size(used: dict[int, tuple[int, int]], pools: dict[int, list[Any]]) -> dict[int, list[int]]:
    sizes: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    for pool, (count, szidx) in used.items():
        sizes[(szidx + 1) * 16][0] += count
        sizes[(szidx + 1) * 16][1] += len(pools.get(pool, ()))
    return dict(sorted(sizes.items()))


def map_arenas(path: str, detail_below: int = 48) -> None:
    """Writes ``path``: per arena its pools and blocks in use, the objects found in it by kind, and for
    the sparse arenas (fewer than ``detail_below`` pools in use) each object with its holders and,
    when tracemalloc traced it, where it was made. Under another Python than 3.11 it writes only
    ``{"error": ...}`` (`refusal`): the dump it is part of still completes."""
    refused = refusal()
    if refused is not None:
        with open(path, "w") as f:
            json.dump({"error": refused, "arenas": []}, f)
        return
    gc.unfreeze()  # what the server froze at its start is objects too (the last dump: no harm)
    gc.collect()
    ranges = anonymous_ranges()
    scanned = scan_pools(ranges)
    # Before the map's own bookkeeping below, made in the free blocks just counted: else it is
    # placed and named among what keeps the arenas (pool_of's tuples and numbers, the sparse arenas'
    # most of all).
    tracked = gc.get_objects()
    # From here on the map's own objects take free blocks: the counts above are from before them.
    pool_of: dict[int, tuple[int, int, int]] = {}
    arenas: dict[int, dict[int, tuple[int, int]]] = collections.defaultdict(dict)
    free_pools: collections.Counter[int] = collections.Counter()
    for i in range(0, len(scanned), 4):
        pool, count, arena, size = scanned[i : i + 4]
        if count:
            pool_of[pool] = (count, arena, size)
            arenas[arena][pool] = (count, size // 16 - 1)
        else:
            free_pools[arena] += 1
    objects: dict[int, Any] = {id(o): o for o in tracked}
    parent: dict[int, Any] = {}
    for o in tracked:
        for r in gc.get_referents(o):
            objects.setdefault(id(r), r)
            parent.setdefault(id(r), o)
    pools: dict[int, list[Any]] = collections.defaultdict(list)
    for o in objects.values():
        block = block_of(o)
        pool = block & ~(POOL - 1)
        if pool not in pool_of or block - pool < HEADER:
            continue
        size = pool_of[pool][2]
        try:
            if sys.getsizeof(o) > size or (block - pool - HEADER) % size:
                continue
        except TypeError:
            continue
        pools[pool].append(o)
    out: dict[str, Any] = {"arenas": []}
    for arena, used in sorted(arenas.items(), key=lambda kv: len(kv[1])):
        blocks = sum(c for c, _ in used.values())
        in_use = sum(c * (s + 1) * 16 for c, s in used.values())
        found = [o for pool in used for o in pools.get(pool, ())]
        kinds = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in found)
        entry: dict[str, Any] = {
            "index": arena,
            "pools_in_use": len(used),
            "free_pools_seen": free_pools[arena],
            "blocks_in_use": blocks,
            "bytes_in_use": in_use,
            "objects_found": len(found),
            "kinds": kinds.most_common(12),
            # Per block size: blocks in use, and how many of them are objects found.
            "by_size": by_size(used, pools),
        }
        if len(used) < detail_below:
            entry["objects"] = []
            for o in found:
                holders, child = [], o
                for _ in range(4):
                    up = parent.get(id(child))
                    if up is None:
                        break
                    holders.append(holder(up, child))
                    child = up
                made = tracemalloc.get_object_traceback(o) if tracemalloc.is_tracing() else None
                where = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in made] if made else None
                entry["objects"].append(
                    {
                        "what": describe(o),
                        "held_by": holders,
                        "made": where,
                    }
                )
        out["arenas"].append(entry)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
