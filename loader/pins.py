"""BPF lifecycle: bpffs, the pin directory of a network, the build hash, load and unload.

Layout: <bpffsRoot>/<network>/{progs/<prog>, maps/<map>}. bpffs holds no regular files, so
the build record (hash of sources + flags + kernel release) lives in the pinned map
ferry_meta. A load whose hash matches the pinned record reopens the pins and compiles
nothing; any other load compiles into a staging directory and swaps it in by rename, so a
concurrent CNI ADD sees either the old set or the new one, never half of each.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loader import syscall
from loader.layouts import LAYOUT_VERSION, MAPS, PROGRAMS, Meta, c_header
from loader.maps import PinnedMap

DEFAULT_ROOT = "/sys/fs/bpf/ferry"
# The `bpf` package holds the sources as package data: beside loader/ in a checkout, in
# site-packages after a wheel install.
BPF_DIR = Path(str(importlib.resources.files("bpf")))
SOURCES = ("common.h", "snat.c", "redirect.c")  # one unit: the programs share the maps
BPFFS_MAGIC = 0xCAFE4A11


class NotLoaded(Exception):
    """The network's pins are missing or incomplete: `ferryctl load` has not run."""


@dataclass
class LoadResult:
    dir: str
    hash: str
    compiled: bool
    seconds: float
    prog_ids: dict[str, int] = field(default_factory=dict)


def pin_dir(root: str, network: str) -> str:
    # bpffs refuses names with a dot (EPERM); CNI network names may have them.
    return os.path.join(root, network.replace(".", "_"))


def prog_path(pins: str, name: str) -> str:
    return os.path.join(pins, "progs", name)


def map_path(pins: str, name: str) -> str:
    return os.path.join(pins, "maps", name)


def is_bpffs(path: str) -> bool:
    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

    buf = _Statfs()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BPFFS_MAGIC


def ensure_bpffs(root: str) -> None:
    """Mount bpffs at the first existing ancestor of `root` under /sys/fs/bpf if needed."""
    mnt = "/sys/fs/bpf" if root.startswith("/sys/fs/bpf") else root
    os.makedirs(mnt, exist_ok=True)
    if not is_bpffs(mnt):
        subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True, capture_output=True)
    os.makedirs(root, mode=0o700, exist_ok=True)


def source_text(bpf_dir: Path = BPF_DIR) -> str:
    """The compile unit: generated layouts, then the sources, headers inlined: bcc rewrites
    map calls (m.lookup(...)) only in the main text, never in an #included file."""
    parts = [c_header()]
    for name in SOURCES:
        text = (bpf_dir / name).read_text().replace('#include "common.h"', "/* common.h */")
        parts.append(f"\n/* ---- {name} ---- */\n{text}")
    return "".join(parts)


def build_hash(bpf_dir: Path = BPF_DIR, cflags: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    h.update(f"layout={LAYOUT_VERSION}\nkernel={platform.release()}\n".encode())
    h.update(("\0".join(cflags) + "\n").encode())
    h.update(source_text(bpf_dir).encode())
    return h.hexdigest()


def pinned_hash(pins: str) -> str | None:
    """The hash recorded by the build pinned at `pins`, None if there is no complete build."""
    if not all(os.path.exists(prog_path(pins, p)) for p in PROGRAMS):
        return None
    if not all(os.path.exists(map_path(pins, m)) for m in MAPS):
        return None
    try:
        with PinnedMap(map_path(pins, "ferry_meta"), MAPS["ferry_meta"]) as meta:
            rec = meta.get(ctypes.c_uint32(0))
    except OSError:
        return None
    if rec is None or rec.layout_version != LAYOUT_VERSION:
        return None
    return bytes(rec.hash).hex()


def prog_ids(pins: str) -> dict[str, int]:
    out = {}
    for name in PROGRAMS:
        fd = syscall.obj_get(prog_path(pins, name))
        try:
            out[name] = syscall.prog_info(fd)[0]
        finally:
            os.close(fd)
    return out


def load(root: str, network: str, bpf_dir: Path = BPF_DIR,
         cflags: tuple[str, ...] = ()) -> LoadResult:
    """Reopen the network's pins if they hold this build, else compile and pin it."""
    started = time.monotonic()
    ensure_bpffs(root)
    pins = pin_dir(root, network)
    digest = build_hash(bpf_dir, cflags)
    if pinned_hash(pins) == digest:
        return LoadResult(pins, digest, False, time.monotonic() - started, prog_ids(pins))

    from loader import bcc_backend

    stage = f"{pins}-stage{os.getpid()}"
    _remove(stage)
    try:
        bcc_backend.compile_and_pin(source_text(bpf_dir),
                                    list(cflags), stage)
        with PinnedMap(map_path(stage, "ferry_meta"), MAPS["ferry_meta"]) as meta:
            rec = Meta(layout_version=LAYOUT_VERSION, compiled_at=time.time_ns())
            ctypes.memmove(rec.hash, bytes.fromhex(digest), 32)
            meta.put(ctypes.c_uint32(0), rec)
        old = f"{pins}-old{os.getpid()}"
        if os.path.exists(pins):
            os.rename(pins, old)
        os.rename(stage, pins)
        _remove(old)
    except BaseException:
        _remove(stage)
        raise
    return LoadResult(pins, digest, True, time.monotonic() - started, prog_ids(pins))


def unload(root: str, network: str) -> bool:
    """Remove the network's pins (programs stay alive while a tc filter still holds them)."""
    pins = pin_dir(root, network)
    existed = os.path.exists(pins)
    _remove(pins)
    return existed


def _remove(path: str) -> None:
    # bpffs: unlink each pin, then rmdir (shutil.rmtree does exactly that).
    shutil.rmtree(path, ignore_errors=True)
