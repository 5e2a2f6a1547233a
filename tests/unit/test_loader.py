"""The loader without the kernel: the generated C header agrees with the ctypes layouts, and
the CNI path never imports bcc."""

from __future__ import annotations

import ctypes
import subprocess
import sys

from loader.layouts import MAPS, NatTuple4, c_header


def test_header_matches_ctypes() -> None:
    header = c_header()
    for spec in MAPS.values():
        assert f"{spec.name}," in header
        if hasattr(spec.value, "c_name"):
            assert f"struct {spec.value.c_name} {{" in header
    assert f"sizeof(struct nat_tuple4) == {ctypes.sizeof(NatTuple4)}" in header


def test_cni_path_never_imports_bcc_or_the_elf_loader() -> None:
    code = ("import sys, plugin.engine, plugin.dataplane.ebpf, plugin.dataplane;"
            "assert 'bcc' not in sys.modules, 'bcc imported';"
            "assert 'loader.bcc_backend' not in sys.modules;"
            "assert 'elftools' not in sys.modules and 'loader.elf' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
