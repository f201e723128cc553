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
