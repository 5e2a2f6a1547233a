"""The clang build of bpf/*.c: one ELF object (BPF bytecode + BTF) per program source.

Run where ferry is built (scripts/setup.sh, the wheel build, the Dockerfile's build stage),
never on the CNI path: `python -m loader.objects <out dir>` needs Debian's `clang` and
`libbpf-dev` (bpf_helpers.h) and the kernel's uapi headers (`linux-libc-dev`), no kernel tree.

The build is reproducible: the generated layouts header, the flags and the sources decide
the bytes, not the checkout's path or the time (relative file names, a fixed debug
compilation directory, the generated directory's path mapped away). Each object carries the
digest of what it was built from (section `ferry_source`), so a loader can tell objects of
other sources or another layout from current ones without a compiler.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from loader.layouts import c_header

BPF_DIR = Path(str(importlib.resources.files("bpf")))  # the sources, and the objects' home
# object file -> its source; both include common.h and the generated ferry_layouts.h.
OBJECTS = {"snat.o": "snat.c", "redirect.o": "redirect.c"}
HEADERS = ("common.h",)
DIGEST_SECTION = "ferry_source"
# -mcpu=v3: 32-bit jumps and ALU (kernel 5.1+; ferry needs 5.11): fixed, not clang's default.
CFLAGS = ("-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-fdebug-compilation-dir=.")


class BuildError(RuntimeError):
    pass


def clang() -> str | None:
    return shutil.which(os.environ.get("FERRY_CLANG", "clang"))


def source_digest(bpf_dir: Path = BPF_DIR) -> str:
    """What an object build depends on: the generated layouts, the flags and the sources."""
    h = hashlib.sha256()
    h.update(c_header("clang").encode())
    h.update("\0".join(CFLAGS).encode())
    for name in (*HEADERS, *OBJECTS.values()):
        h.update(f"\0{name}\0".encode())
        h.update((bpf_dir / name).read_bytes())
    return h.hexdigest()


def _section(data: bytes, name: str) -> bytes | None:
    """One section of a little-endian ELF64 file, by name (the section headers read with
    struct: no pyelftools, so the build's own tools need only the standard library)."""
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at, names_size = headers[shstrndx][4], headers[shstrndx][5]
    names = data[names_at:names_at + names_size]
    want = name.encode()
    for sh_name, _type, _flags, _addr, offset, size in headers:
        if names[sh_name:names.index(b"\0", sh_name)] == want:
            return data[offset:offset + size]
    return None


def built_from(obj: Path) -> str | None:
    """The source digest an object was built from; None if it has none or is unreadable."""
    try:
        sec = _section(obj.read_bytes(), DIGEST_SECTION)
        return sec.split(b"\0", 1)[0].decode() if sec is not None else None
    except (OSError, struct.error, ValueError, IndexError):
        return None


def current(obj_dir: Path, bpf_dir: Path = BPF_DIR) -> tuple[bool, str]:
    """(usable, why): every object is in obj_dir and was built from these sources/layout."""
    missing = [o for o in OBJECTS if not (obj_dir / o).is_file()]
    if missing:
        return False, f"no prebuilt {', '.join(missing)} in {obj_dir}"
    try:
        want = source_digest(bpf_dir)
    except OSError as e:
        return False, f"cannot read the BPF sources: {e}"
    stale = [o for o in OBJECTS if built_from(obj_dir / o) != want]
    if stale:
        return False, (f"{', '.join(stale)} in {obj_dir} were built from other sources or "
                       "another layout (rebuild: python -m loader.objects)")
    return True, f"prebuilt objects in {obj_dir} match the sources"


def _include_dir(gen: Path, digest: str) -> None:
    """The generated headers: ferry_layouts.h, and an empty gnu/stubs-32.h. The uapi
    linux/icmp.h includes glibc's sys/socket.h, which for a target that is not x86_64
    (bpf) asks for the 32-bit stubs list; the list only names unimplemented libc functions,
    none of which BPF code can call anyway."""
    (gen / "gnu").mkdir(parents=True, exist_ok=True)
    (gen / "gnu" / "stubs-32.h").write_text("/* empty: see loader/objects.py */\n")
    (gen / "ferry_layouts.h").write_text(
        c_header("clang") + f'const char _ferry_source[] SEC("{DIGEST_SECTION}") = "{digest}";\n')


def build(out_dir: Path, bpf_dir: Path = BPF_DIR, compiler: str | None = None) -> list[Path]:
    """Compile every object of OBJECTS into out_dir; returns their paths."""
    cc = compiler or clang()
    if cc is None:
        raise BuildError("clang not found (Debian: apt-get install clang libbpf-dev)")
    out_dir.mkdir(parents=True, exist_ok=True)
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    built = []
    with tempfile.TemporaryDirectory(prefix="ferry-bpf-") as tmp:
        gen = Path(tmp)
        _include_dir(gen, source_digest(bpf_dir))
        for obj, src in OBJECTS.items():
            target = out_dir.resolve() / obj
            # Sources by relative name from their parent: the name clang records in DWARF and
            # BTF, and the path BTF's line info re-reads the source lines from.
            cmd = [cc, *CFLAGS, f"-fdebug-prefix-map={gen}=ferry-gen", f"-I{gen}",
                   f"-idirafter/usr/include/{multiarch}",
                   "-c", f"{bpf_dir.name}/{src}", "-o", str(target)]
            proc = subprocess.run(cmd, cwd=bpf_dir.resolve().parent, capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"{src}: clang failed:\n{proc.stderr.strip()}")
            built.append(target)
    return built


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loader.objects",
                                 description="Build ferry's BPF objects with clang.")
    ap.add_argument("out_dir", type=Path, nargs="?", default=BPF_DIR)
    args = ap.parse_args(argv)
    try:
        for path in build(args.out_dir):
            print(path)
    except BuildError as e:
        sys.exit(f"ferry: {e}")


if __name__ == "__main__":
    main()
