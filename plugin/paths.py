"""Directories a request creates, and their removal when the request is undone: a failed ADD
on a new dataDir or stateDir leaves the file system as it found it. And the umask under which
ferryd creates its sockets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Sockets are created 0600 from the start, not chmod-ed after a window."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


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
