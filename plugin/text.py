"""Plain-text tables, as ferryctl prints them (its own views and `ferryctl cluster`'s)."""

from __future__ import annotations

from typing import Any


def table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return f"{title}: none\n"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    line = "  ".join(c.upper().ljust(widths[c]) for c in cols)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return f"{title} ({len(rows)}):\n  " + "\n  ".join([line, *body]) + "\n"
