"""The clang build of bpf/*.c: both objects build, carry the sections the ELF loader reads,
come out byte for byte the same from the same source (wherever the checkout lives), and
every shipped object passes this kernel's verifier."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from loader import elf, objects, pins, syscall
from loader.layouts import MAPS, PROGRAMS


def _sections_and_symbols(path: Path) -> tuple[set[str], set[str]]:
    with path.open("rb") as f:
        elf = ELFFile(f)
        sections = {s.name for s in elf.iter_sections()}
        symtab = elf.get_section_by_name(".symtab")
        symbols = {s.name for s in symtab.iter_symbols()}  # type: ignore[union-attr]
    return sections, symbols


def test_objects_have_programs_maps_btf_and_license(tmp_path: Path) -> None:
    built = objects.build(tmp_path / "out")
    assert sorted(p.name for p in built) == sorted(objects.OBJECTS)
    programs: set[str] = set()
    for path in built:
        sections, symbols = _sections_and_symbols(path)
        assert {"tc", "license", ".maps", ".BTF", ".BTF.ext"} <= sections, path
        assert set(MAPS) <= symbols  # every map declared once, in every object
        programs |= symbols & set(PROGRAMS)
    assert programs == set(PROGRAMS)


def test_build_is_reproducible_across_checkouts(tmp_path: Path) -> None:
    first = objects.build(tmp_path / "a")
    copy = tmp_path / "elsewhere" / "bpf"
    shutil.copytree(objects.BPF_DIR, copy, ignore=shutil.ignore_patterns("*.o"))
    second = objects.build(tmp_path / "b", bpf_dir=copy)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    (copy / "snat.c").write_text((copy / "snat.c").read_text() + "\n/* changed */\n")
    third = objects.build(tmp_path / "c", bpf_dir=copy)
    assert first[0].read_bytes() != third[0].read_bytes()  # the source decides the bytes


def test_every_shipped_object_passes_the_verifier(tmp_path: Path) -> None:
    """As Calico's TestPrecompiledBinariesAreLoadable: each object the package ships, on its
    own, through this kernel's verifier (a refusal fails with the verifier log's tail)."""
    ok, why = objects.current(pins.OBJECT_DIR)
    assert ok, why  # the shipped objects are the build of these sources
    root = f"/sys/fs/bpf/ferry-verify-{os.urandom(3).hex()}"
    try:
        for obj in objects.OBJECTS:
            path = pins.OBJECT_DIR / obj
            mine = set(elf.parse(path).programs)
            assert mine
            stage = f"{root}/{obj.replace('.', '_')}"
            elf.load_and_pin([path], stage, skip=[p for p in PROGRAMS if p not in mine])
            assert sorted(os.listdir(f"{stage}/progs")) == sorted(mine)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_verifier_refusal_carries_the_log_tail(tmp_path: Path) -> None:
    """A program the verifier refuses (reads an uninitialised register): the error is the
    kernel's reason, not just EACCES/EINVAL."""
    bad = b"\xbf\x20\x00\x00\x00\x00\x00\x00" + b"\x95" + bytes(7)  # r0 = r2; exit
    with pytest.raises(syscall.VerifierError) as e:
        syscall.prog_load(syscall.ProgSpec("ferry_bad", bad))
    assert "R2 !read_ok" in str(e.value) and "R2 !read_ok" in e.value.log
