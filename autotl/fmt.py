"""Short, stable text for values, durations and tables, shared by the CLI, progress and reports."""
from __future__ import annotations

from typing import Any, List, Optional


def fmt_value(value: Any) -> str:
    """A parameter or metric value in a few characters (``None`` is ``-``)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_seconds(seconds: Optional[float]) -> str:
    """``42s``, ``3m05s`` or ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def text_table(rows: List[List[Any]], header: List[str]) -> str:
    """Columns padded to their widest cell, for terminals."""
    cells = [header] + [[c if isinstance(c, str) else fmt_value(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
