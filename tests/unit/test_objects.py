"""The clang build of bpf/*.c (no kernel needed): both objects build, carry the sections the
ELF loader reads, and come out byte for byte the same from the same source (wherever the
checkout lives). The verifier check of the shipped objects is tests/e2e/test_objects_verifier."""

from __future__ import annotations

import shutil
from pathlib import Path

from elftools.elf.elffile import ELFFile

from loader import objects
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

