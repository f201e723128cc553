"""The reference tables in docs/ render as one table each: a blank line inside one ends it, and the rows
after it render as paragraphs of pipes (review-operations F13)."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", sorted(path.name for path in DOCS.glob("*.md")))
def test_no_table_row_stands_alone(name: str) -> None:
    lines = (DOCS / name).read_text().splitlines()
    in_fence = False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.startswith("|"):
            continue
        before = lines[number - 2] if number > 1 else ""
        after = lines[number] if number < len(lines) else ""
        # A row is inside a table when a row or the delimiter row is next to it.
        assert before.startswith("|") or after.startswith("|"), f"docs/{name}:{number} is cut off its table"
        if not before.startswith("|"):
            assert set(after.replace(" ", "")) <= set("|-:"), (
                f"docs/{name}:{number} starts a table without a delimiter row (|---|) under it"
            )
