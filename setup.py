"""The wheel build's one addition to pyproject.toml: compile the prebuilt BPF objects
(loader/objects.py, clang + libbpf-dev) into the built `bpf` package, so every wheel ships them
as package data. Without clang the wheel still builds, with no objects: `loader: auto` then
falls back to bcc on the node."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithBpfObjects(build_py):
    def run(self) -> None:
        super().run()
        sys.path.insert(0, str(HERE))
        from loader import objects

        out = Path(self.build_lib) / "bpf"
        try:
            built = objects.build(out, bpf_dir=HERE / "bpf")
        except objects.BuildError as e:
            for obj in objects.OBJECTS:  # objects copied from the tree may be of other sources
                (out / obj).unlink(missing_ok=True)
            print(f"ferry: wheel without prebuilt BPF objects: {e}", file=sys.stderr)
            return
        print(f"ferry: prebuilt BPF objects {[p.name for p in built]}", file=sys.stderr)


setup(cmdclass={"build_py": BuildPyWithBpfObjects})
