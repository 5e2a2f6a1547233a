"""Directories a request creates, and their removal when the request is undone: a failed ADD
on a new dataDir or stateDir leaves the file system as it found it."""

from __future__ import annotations

import contextlib
from pathlib import Path


def missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_empty(dirs: list[Path]) -> None:
    """rmdir each of `dirs` (deepest first) that is empty; one still in use stays."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()
