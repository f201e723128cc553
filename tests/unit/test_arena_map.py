"""bench/arena_map.py places the objects it finds in their pools: ordinary classes' instances too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"

# In a process of its own: the map unfreezes and walks every object of the process it runs in.
_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import arena_map

class Plain:  # a managed dict: two pointers before its GC header (CPython 3.11)
    pass

kept = [Plain() for _ in range(2000)], [{} for _ in range(2000)]
arena_map.map_arenas(sys.argv[2], detail_below=1 << 20)
"""


def test_instances_of_ordinary_classes_are_placed_as_dicts_are(tmp_path: Path) -> None:
    out = tmp_path / "arenas.json"
    subprocess.run([sys.executable, "-c", _PROBE, str(BENCH), str(out)], check=True, timeout=120)
    found = [o["what"] for arena in json.loads(out.read_text())["arenas"] for o in arena["objects"]]
    assert found.count("__main__.Plain") == 2000
    assert found.count("builtins.dict len 0") >= 2000


# Sparse arenas, as a server's after its lists: half of many small strings freed again.
_SPARSE = """
import sys
sys.path.insert(0, sys.argv[1])
import arena_map

kept = [str(i) * 3 for i in range(20000)]
del kept[::2]
arena_map.map_arenas(sys.argv[2], detail_below=1 << 20)
"""


def test_the_map_names_in_an_arena_no_more_objects_than_its_blocks_in_use(tmp_path: Path) -> None:
    # The blocks in use are counted before the map makes anything of its own; what it names in an
    # arena must be among them, not its own bookkeeping made afterwards in the free blocks counted
    # (review r10quiet F1: pool_of's tuples and ints, named as what kept the sparse arenas).
    out = tmp_path / "arenas.json"
    subprocess.run([sys.executable, "-c", _SPARSE, str(BENCH), str(out)], check=True, timeout=120)
    arenas = json.loads(out.read_text())["arenas"]
    over = [
        (a["index"], a["blocks_in_use"], a["objects_found"])
        for a in arenas
        if a["objects_found"] > a["blocks_in_use"]
    ]
    pools_in_use = sum(a["pools_in_use"] for a in arenas)
    # The map's pool_of: a dict of a key per pool in use.
    pool_of = f"builtins.dict len {pools_in_use} "
    held_by_the_map = [
        o for a in arenas for o in a["objects"] if o["held_by"][:1] and o["held_by"][0].startswith(pool_of)
    ]
    assert over == []
    assert held_by_the_map == []


def test_the_map_is_made_under_python_3_11_only() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import arena_map
    finally:
        sys.path.remove(str(BENCH))
    assert arena_map.refusal((3, 11)) is None
    assert arena_map.refusal((3, 11, 7)) is None
    assert arena_map.refusal((3, 12)) == (
        "arena_map reads CPython 3.11's obmalloc and object layout, not 3.12's: no map made"
    )


# As under another Python than the one whose layout the map reads (review r10quiet N4).
_OTHER_PYTHON = """
import sys
sys.path.insert(0, sys.argv[1])
import arena_map

arena_map.LAYOUT_OF = (3, 99)
if sys.argv[2] == "map":
    arena_map.map_arenas(sys.argv[3])
else:
    import list_memory

    list_memory.run_with_registry = lambda *args: sys.exit(3)  # no run: the map refused first
    list_memory.main(["--map", "--tags", "10"])
"""
_REFUSED = (
    f"arena_map reads CPython 3.99's obmalloc and object layout, not 3.{sys.version_info[1]}'s: no map made"
)


def test_under_another_python_the_map_says_why_it_made_none(tmp_path: Path) -> None:
    out = tmp_path / "arenas.json"
    subprocess.run(
        [sys.executable, "-c", _OTHER_PYTHON, str(BENCH), "map", str(out)], check=True, timeout=120
    )
    assert json.loads(out.read_text()) == {
        "error": _REFUSED,
        "arenas": [],
    }


def test_list_memory_refuses_a_map_it_cannot_make_before_it_starts() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _OTHER_PYTHON, str(BENCH), "bench"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].endswith(f"error: {_REFUSED}")
