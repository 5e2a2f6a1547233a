"""The bcc backend: compile bpf/*.c (with the generated layouts prepended) and pin the result.

The only module that imports bcc; the node-level load step calls it when the pinned build's
hash differs from the sources', never the CNI ADD path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from loader import syscall
from loader.layouts import MAPS, PROGRAMS


def compile_and_pin(source: str, cflags: list[str], stage: str,
                    skip: tuple[str, ...] = ()) -> float:
    """Compile `source`, load the programs (but `skip`), pin programs and maps under
    `stage`/{progs,maps}. Returns the compile+load time in seconds."""
    from bcc import BPF  # heavy (~1 s): imported only when a compile is needed

    started = time.monotonic()
    bpf = BPF(text=source.encode(), cflags=cflags)  # bcc warns on str
    try:
        progs = {name: bpf.load_func(name.encode(), BPF.SCHED_CLS) for name in PROGRAMS
                 if name not in skip}
        elapsed = time.monotonic() - started
        for sub in ("progs", "maps"):
            os.makedirs(os.path.join(stage, sub), mode=0o700, exist_ok=True)
        for name, fn in progs.items():
            syscall.obj_pin(fn.fd, str(Path(stage, "progs", name)))
        for name in MAPS:
            syscall.obj_pin(bpf.get_table(name.encode()).map_fd, str(Path(stage, "maps", name)))
    finally:
        bpf.cleanup()  # the pins hold the objects from here on
    return elapsed
