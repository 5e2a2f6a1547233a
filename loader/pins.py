"""BPF lifecycle: bpffs, the pin directory of a network, the build hash, load and unload.

Layout: <bpffsRoot>/<network>/{progs/<prog>, maps/<map>}. bpffs holds no regular files, so
the build record (the build hash, which loader pinned it, the kernel features found missing)
lives in the pinned map ferry_meta. A load whose hash matches the pinned record reopens the
pins and loads nothing; any other load builds into a staging directory and swaps it in by
rename, so a concurrent CNI ADD sees either the old set or the new one, never half of each.

Two loaders (`loader` of the network config): "elf" loads the prebuilt objects of
loader/objects.py (loader/elf.py: pyelftools and bpf(2), no compiler), "bcc" compiles the
sources on the node (loader/bcc_backend.py, the development path); "auto" takes the objects
when they are there and current for these sources and layout, else bcc.
Build hash: bcc, of the sources, flags and kernel release; elf, of the objects' bytes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loader import objects, probes, syscall
from loader.layouts import (
    LAYOUT_VERSION,
    LOADERS,
    MAPS,
    NAT_MAX,
    PROGRAMS,
    Meta,
    c_header,
    map_sizes,
)
from loader.maps import PinnedMap

# The `bpf` package holds the sources and the prebuilt objects as package data: beside loader/
# in a checkout, in site-packages after a wheel install.
BPF_DIR = objects.BPF_DIR
OBJECT_DIR = BPF_DIR
LOADER_CHOICES = ("auto", "elf", "bcc")
SOURCES = ("common.h", "snat.c", "redirect.c")  # one unit: the programs share the maps
BPFFS_MAGIC = 0xCAFE4A11


class LoaderUnavailable(Exception):
    """The requested loader cannot run here (no objects for `elf`, no bcc for `bcc`)."""


@dataclass
class LoadResult:
    dir: str
    hash: str
    compiled: bool  # a new build was loaded (False: the pins were reopened)
    seconds: float
    prog_ids: dict[str, int] = field(default_factory=dict)
    loader: str = ""  # "elf" or "bcc": the loader of the pinned build
    why: str = ""  # why that loader
    missing: int = 0  # probes bits the pinned build found missing (their programs skipped)
    carried: dict[str, int] = field(default_factory=dict)  # flow entries kept, by map


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
    """bcc's compile unit: generated layouts, then the sources, headers inlined: bcc rewrites
    map calls (m.lookup(...)) only in the main text, never in an #included file."""
    parts = [c_header("bcc")]
    for name in SOURCES:
        text = (bpf_dir / name).read_text().replace('#include "common.h"', "/* common.h */")
        parts.append(f"\n/* ---- {name} ---- */\n{text}")
    return "".join(parts)


def choose_loader(requested: str = "auto", bpf_dir: Path = BPF_DIR,
                  obj_dir: Path = OBJECT_DIR, cflags: tuple[str, ...] = ()) -> tuple[str, str]:
    """(loader, why) for a load: `elf`/`bcc` as asked if they can run, `auto` prefers the
    prebuilt objects. Raises LoaderUnavailable with the reason otherwise."""
    if requested not in LOADER_CHOICES:
        raise LoaderUnavailable(f"unknown loader {requested!r} (one of {LOADER_CHOICES})")
    if requested in ("auto", "elf") and not cflags:
        ok, why = objects.current(obj_dir, bpf_dir)
        if ok:
            return "elf", why
        if requested == "elf":
            raise LoaderUnavailable(f"loader elf: {why}")
    elif requested == "elf":
        raise LoaderUnavailable("loader elf: compile flags need the bcc loader")
    else:
        why = "compile flags given" if cflags else ""
    ok_bcc, why_bcc = bcc_available()
    if not ok_bcc:
        raise LoaderUnavailable(f"loader {requested}: {why}; and {why_bcc}" if why
                                else f"loader bcc: {why_bcc}")
    return "bcc", (f"{why}: bcc compiles on the node" if why else why_bcc)


def bcc_available() -> tuple[bool, str]:
    """bcc can compile here: importable, and kernel headers where it looks for them."""
    import importlib.util

    if importlib.util.find_spec("bcc") is None:
        return False, "bcc (python3-bpfcc) is not importable"
    release = platform.release()
    if not any(Path(f"/lib/modules/{release}/{d}/include").is_dir()
               for d in ("build", "source")):
        return False, f"no kernel headers under /lib/modules/{release}/build"
    return True, "bcc and kernel headers present"


def build_hash(bpf_dir: Path = BPF_DIR, cflags: tuple[str, ...] = (), loader: str = "bcc",
               obj_dir: Path = OBJECT_DIR, skip: tuple[str, ...] = (),
               nat_max: int = NAT_MAX) -> str:
    h = hashlib.sha256()
    h.update(f"layout={LAYOUT_VERSION}\nloader={loader}\nskip={','.join(skip)}\n"
             f"nat_max={nat_max}\n".encode())
    if loader == "elf":
        for name in sorted(objects.OBJECTS):
            h.update(f"{name}\0".encode())
            h.update((obj_dir / name).read_bytes())
        return h.hexdigest()
    h.update(f"kernel={platform.release()}\n".encode())
    h.update(("\0".join(cflags) + "\n").encode())
    h.update(source_text(bpf_dir).encode())
    return h.hexdigest()


def pinned_meta(pins: str) -> Meta | None:
    """The record of the complete build pinned at `pins`; None if there is none."""
    if not all(os.path.exists(map_path(pins, m)) for m in MAPS):
        return None
    try:
        with PinnedMap(map_path(pins, "ferry_meta"), MAPS["ferry_meta"]) as meta:
            rec = meta.get(ctypes.c_uint32(0))
    except OSError:
        return None
    if rec is None or rec.layout_version != LAYOUT_VERSION:
        return None
    skipped = probes.Features(rec.missing).skipped_programs()
    if not all(os.path.exists(prog_path(pins, p)) for p in PROGRAMS if p not in skipped):
        return None
    return rec


def prog_ids(pins: str) -> dict[str, int]:
    out = {}
    for name in PROGRAMS:
        if not os.path.exists(prog_path(pins, name)):
            continue  # not loaded: a kernel feature it needs is missing (ferry_meta says)
        fd = syscall.obj_get(prog_path(pins, name))
        try:
            out[name] = syscall.prog_info(fd)[0]
        finally:
            os.close(fd)
    return out


def load(root: str, network: str, bpf_dir: Path = BPF_DIR, cflags: tuple[str, ...] = (),
         loader: str = "auto", obj_dir: Path = OBJECT_DIR,
         features: probes.Features | None = None, nat_max: int = NAT_MAX) -> LoadResult:
    """Reopen the network's pins if they hold this build, else load it (from the prebuilt
    objects or by bcc, see choose_loader) and pin it. Programs whose kernel features are
    missing (`features`, probed when not given) are not loaded; ferry_meta records which.
    `nat_max` sizes the NAT maps (natMaxEntries): part of the build, so another size is a new
    load; either way the flow state of the build it replaces is carried over (carry_state)."""
    started = time.monotonic()
    ensure_bpffs(root)
    pins = pin_dir(root, network)
    chosen, why = choose_loader(loader, bpf_dir, obj_dir, cflags)
    feats = features if features is not None else probes.probe()
    skip = feats.skipped_programs()
    digest = build_hash(bpf_dir, cflags, chosen, obj_dir, skip, nat_max)
    code = next(k for k, v in LOADERS.items() if v == chosen)
    pinned = pinned_meta(pins)
    if pinned is not None and bytes(pinned.hash).hex() == digest:
        return LoadResult(pins, digest, False, time.monotonic() - started, prog_ids(pins),
                          chosen, why, pinned.missing)

    stage = f"{pins}-stage{os.getpid()}"
    _remove(stage)
    try:
        if chosen == "elf":
            from loader import elf

            elf.load_and_pin([obj_dir / o for o in objects.OBJECTS], stage, skip,
                             map_sizes(nat_max))
        else:
            from loader import bcc_backend

            size_flags = [f"-DFERRY_NAT_MAX={nat_max}"] if nat_max != NAT_MAX else []
            bcc_backend.compile_and_pin(source_text(bpf_dir), [*cflags, *size_flags], stage,
                                        skip)
        carried = carry_state(pins, stage) if pinned is not None else {}
        with PinnedMap(map_path(stage, "ferry_meta"), MAPS["ferry_meta"]) as meta:
            rec = Meta(layout_version=LAYOUT_VERSION, compiled_at=time.time_ns(), loader=code,
                       missing=feats.missing)
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
    return LoadResult(pins, digest, True, time.monotonic() - started, prog_ids(pins), chosen,
                      why, feats.missing, carried)


def carry_state(old: str, new: str) -> dict[str, int]:
    """Copy the flow state the programs wrote (MapSpec.carried: NAT flows, fragments) from the
    build pinned at `old` into the fresh maps of `new`, so that a reload (another build, or
    another natMaxEntries) keeps established flows and their ports. Both are builds of this
    layout (pinned_meta checked it). A smaller map keeps what fits: an LRU map evicts its least
    recently used entries. Flows that start between the copy and the swap (milliseconds) are
    not carried; a retransmission of their packet allocates again. Entries copied, by map."""
    copied: dict[str, int] = {}
    for spec in MAPS.values():
        if not spec.carried:
            continue
        with PinnedMap(map_path(old, spec.name), spec) as src, \
                PinnedMap(map_path(new, spec.name), spec) as dst:
            n = 0
            for key, value in src.items():
                dst.put(key, value)
                n += 1
            copied[spec.name] = n
    return copied


def pinned_loader(pins: str) -> str:
    """"elf" or "bcc": which loader pinned the build at `pins` ("" if none)."""
    rec = pinned_meta(pins)
    return LOADERS.get(rec.loader, "") if rec is not None else ""


def unload(root: str, network: str) -> bool:
    """Remove the network's pins (programs stay alive while a tc filter still holds them)."""
    pins = pin_dir(root, network)
    existed = os.path.exists(pins)
    _remove(pins)
    return existed


def _remove(path: str) -> None:
    # bpffs: unlink each pin, then rmdir (shutil.rmtree does exactly that).
    shutil.rmtree(path, ignore_errors=True)
