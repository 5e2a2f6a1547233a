"""The clang build of bpf/*.c: one ELF object (BPF bytecode + BTF) per program source.

Run where ferry is built (scripts/setup.sh, the wheel build, the Dockerfile's build stage),
never on the CNI path: `python -m loader.objects <out dir>` needs Debian's `clang` and
`libbpf-dev` (bpf_helpers.h) and the kernel's uapi headers (`linux-libc-dev`), no kernel tree.

The build is reproducible: the generated layouts header, the flags and the sources decide
the bytes, not the checkout's path or the time (relative file names, a fixed debug
compilation directory, the generated directory's path mapped away).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from loader.layouts import c_header

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
# object file -> its source; both include common.h and the generated ferry_layouts.h.
OBJECTS = {"snat.o": "snat.c", "redirect.o": "redirect.c"}
# -mcpu=v3: 32-bit jumps and ALU (kernel 5.1+; ferry needs 5.11): fixed, not clang's default.
CFLAGS = ("-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-fdebug-compilation-dir=.")


class BuildError(RuntimeError):
    pass


def clang() -> str | None:
    return shutil.which(os.environ.get("FERRY_CLANG", "clang"))


def _include_dir(gen: Path) -> None:
    """The generated headers: ferry_layouts.h, and an empty gnu/stubs-32.h. The uapi
    linux/icmp.h includes glibc's sys/socket.h, which for a target that is not x86_64
    (bpf) asks for the 32-bit stubs list; the list only names unimplemented libc functions,
    none of which BPF code can call anyway."""
    (gen / "gnu").mkdir(parents=True, exist_ok=True)
    (gen / "gnu" / "stubs-32.h").write_text("/* empty: see loader/objects.py */\n")
    (gen / "ferry_layouts.h").write_text(c_header("clang"))


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
        _include_dir(gen)
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
