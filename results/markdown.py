"""The one way this project writes a markdown table (sweep summary, speedup tables, reports, experiments).

Pipe tables as GitHub and pandoc render them: cells escaped (``|`` and line
breaks would end a cell), an alignment row that right-aligns numbers where the
caller says so. Kept free of pandas so that light callers need not import it.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

_ALIGN_ROW = {"left": ":---", "right": "---:", "center": ":---:"}


def escape(cell: Any) -> str:
    """A cell's text with the characters that would break a pipe table escaped."""
    return str(cell).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A pipe table; `align` gives "left", "right" or "center" per column (default: all left)."""
    align = list(align) if align is not None else ["left"] * len(header)
    if len(align) != len(header):
        raise ValueError(f"{len(align)} alignments for {len(header)} columns")
    lines = ["| " + " | ".join(escape(h) for h in header) + " |",
             "|" + "|".join(_ALIGN_ROW[a] for a in align) + "|"]
    for row in rows:
        cells = [escape(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"a row of {len(cells)} cells under {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
