"""The ELF backend: load the prebuilt objects (loader/objects.py) with pyelftools and bpf(2).

No compiler and no kernel headers on the node, and no LLVM in the process. Per object:
 - the BTF (.BTF) is loaded with BPF_BTF_LOAD after the fix-ups libbpf does too (clang
   leaves DATASEC sizes and variable offsets zero: they come from the ELF's sections and
   symbols), so maps carry their key/value types and programs their source lines;
 - maps are the BTF-defined ones of `.maps` (type, sizes, max_entries, flags read from BTF),
   created once for all objects by name and checked against loader/layouts.py;
 - every global function of a program section is a program; its map references (the
   `BPF_LD_IMM64` at each R_BPF_64_64 relocation) become src_reg = BPF_PSEUDO_MAP_FD,
   imm = the map's fd; func and line info come from .BTF.ext;
 - each program is loaded with the object's license; a refusal carries the verifier's log.
Then programs and maps are pinned under <stage>/{progs,maps} exactly like the bcc backend.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from elftools.elf.elffile import ELFFile

from loader import syscall
from loader.layouts import MAPS, PROGRAMS

BPF_PSEUDO_MAP_FD = 1
LD_IMM64 = 0x18
PROG_SECTIONS = {"tc": syscall.PROG_TYPE_SCHED_CLS, "classifier": syscall.PROG_TYPE_SCHED_CLS}
# BTF kinds (include/uapi/linux/btf.h) and the size of what follows each type record.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


class ElfError(RuntimeError):
    """An object this loader cannot load (not a ferry build, or a feature it lacks)."""


def _vlen_size(kind: int, vlen: int) -> int:
    if kind in (INT, VAR, DECL_TAG):
        return 4
    if kind == ARRAY:
        return 12
    if kind in (STRUCT, UNION, DATASEC, ENUM64):
        return 12 * vlen
    if kind in (ENUM, FUNC_PROTO):
        return 8 * vlen
    return 0


@dataclass
class _Type:
    kind: int
    name: str
    vlen: int
    size_or_type: int
    at: int  # offset of the record in the type section
    extra: int  # offset of its trailing data


class Btf:
    """The .BTF blob of one object: enough of it to find the map definitions, patch the
    DATASECs and hand it to the kernel."""

    def __init__(self, data: bytes) -> None:
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data)
        if magic != 0xEB9F:
            raise ElfError("not a little-endian BTF blob")
        self.data = bytearray(data)
        self.type_base = hdr_len + type_off
        self.strings = bytes(data[hdr_len + str_off:hdr_len + str_off + str_len])
        self.types: list[_Type | None] = [None]  # type ids start at 1
        pos, end = self.type_base, self.type_base + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self.types.append(_Type(kind, self.string(name_off), vlen, size_or_type, pos,
                                    pos + 12))
            pos += 12 + _vlen_size(kind, vlen)

    def string(self, off: int) -> str:
        return self.strings[off:self.strings.index(b"\0", off)].decode()

    def type(self, tid: int) -> _Type:
        t = self.types[tid]
        assert t is not None
        return t

    def skip_modifiers(self, tid: int) -> int:
        while self.type(tid).kind in _MODIFIERS:
            tid = self.type(tid).size_or_type
        return tid

    def size(self, tid: int) -> int:
        t = self.type(self.skip_modifiers(tid))
        if t.kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self.data, t.extra)
            return nelems * self.size(elem)
        if t.kind == PTR:
            return 8
        return t.size_or_type

    def members(self, tid: int) -> Iterator[tuple[str, int]]:
        t = self.type(tid)
        for i in range(t.vlen):
            name_off, mtype, _offset = struct.unpack_from("<III", self.data, t.extra + 12 * i)
            yield self.string(name_off), mtype

    def datasec(self, name: str) -> _Type | None:
        return next((t for t in self.types if t and t.kind == DATASEC and t.name == name), None)

    def datasec_vars(self, sec: _Type) -> Iterator[tuple[int, int]]:
        """(index in the DATASEC, the VAR's type id)."""
        for i in range(sec.vlen):
            yield i, struct.unpack_from("<I", self.data, sec.extra + 12 * i)[0]

    def fix_datasecs(self, sec_sizes: dict[str, int], sym_offsets: dict[str, int]) -> None:
        """DATASEC sizes from their sections, each variable's offset from its symbol."""
        for t in self.types:
            if not t or t.kind != DATASEC or t.name not in sec_sizes:
                continue
            struct.pack_into("<I", self.data, t.at + 8, sec_sizes[t.name])
            for i, var in self.datasec_vars(t):
                name = self.type(var).name
                if name in sym_offsets:
                    struct.pack_into("<I", self.data, t.extra + 12 * i + 4, sym_offsets[name])


@dataclass
class MapDef:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    btf_key: int
    btf_value: int
    obj: ElfObject


@dataclass
class Program:
    name: str
    prog_type: int
    insns: bytes
    relocs: list[tuple[int, str]]  # (instruction index, map name)
    func_info: bytes = b""
    line_info: bytes = b""


@dataclass
class ElfObject:
    path: Path
    license: str
    btf: Btf
    func_rec: int = 0
    line_rec: int = 0
    maps: dict[str, MapDef] = field(default_factory=dict)
    programs: dict[str, Program] = field(default_factory=dict)


@dataclass(frozen=True)
class _Sym:
    name: str
    kind: int  # STT_*
    bind: int  # STB_*
    section: str  # the name of the section it is defined in ("" if none)
    value: int
    size: int


STT_OBJECT, STT_FUNC, STB_GLOBAL = 1, 2, 1


def _symbols(sections: list, names: list[str]) -> list[_Sym]:  # type: ignore[type-arg]
    """.symtab by struct (Elf64_Sym): pyelftools' per-symbol parse is most of a load's time."""
    symtab = sections[names.index(".symtab")]
    strtab = sections[symtab["sh_link"]].data()
    out = []
    for name_off, info, _other, shndx, value, size in struct.iter_unpack(
            "<IBBHQQ", symtab.data()):
        name = strtab[name_off:strtab.index(b"\0", name_off)].decode()
        out.append(_Sym(name, info & 0xF, info >> 4,
                        names[shndx] if 0 < shndx < len(names) else "", value, size))
    return out


def _relocations(data: bytes) -> list[tuple[int, int]]:
    """(offset, symbol index) of each Elf64_Rel."""
    return [(off, info >> 32) for off, info in struct.iter_unpack("<QQ", data)]


def parse(path: Path) -> ElfObject:
    """Read one object: its license, BTF, map definitions and programs with relocations."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_BPF" or not elf.little_endian:
            raise ElfError(f"{path}: not a little-endian BPF object")
        sections = list(elf.iter_sections())
        names = [s.name for s in sections]
        secs = {s.name: s for s in sections}
        for need in (".BTF", "license", ".symtab"):
            if need not in secs:
                raise ElfError(f"{path}: no {need} section (build it with loader/objects.py)")
        license_ = secs["license"].data().split(b"\0", 1)[0].decode()
        symbols = _symbols(sections, names)
        btf = Btf(secs[".BTF"].data())
        btf.fix_datasecs({name: s["sh_size"] for name, s in secs.items()},
                         {s.name: s.value for s in symbols if s.kind == STT_OBJECT})
        obj = ElfObject(path, license_, btf)
        _read_maps(obj, path)
        for sec_name, prog_type in PROG_SECTIONS.items():
            if sec_name in secs:
                rel = secs.get(f".rel{sec_name}")
                _read_programs(obj, secs[sec_name].data(),
                               _relocations(rel.data()) if rel is not None else [],
                               sec_name, prog_type, symbols)
        if ".BTF.ext" in secs:
            _read_ext(obj, secs[".BTF.ext"].data(), symbols)
    return obj


def _read_maps(obj: ElfObject, path: Path) -> None:
    btf = obj.btf
    sec = btf.datasec(".maps")
    if sec is None:
        return
    for _i, var in btf.datasec_vars(sec):
        name = btf.type(var).name
        attrs: dict[str, int] = {}
        for member, mtype in btf.members(btf.skip_modifiers(btf.type(var).size_or_type)):
            target = btf.type(mtype).size_or_type  # every field is a pointer
            if member in ("key", "value"):
                attrs[member] = target
            else:  # __uint(name, n): int (*name)[n]
                attrs[member] = struct.unpack_from("<III", btf.data, btf.type(target).extra)[2]
        if not {"type", "key", "value", "max_entries"} <= set(attrs):
            raise ElfError(f"{path}: map {name} lacks type, key, value or max_entries")
        obj.maps[name] = MapDef(name, attrs["type"], btf.size(attrs["key"]),
                                btf.size(attrs["value"]), attrs["max_entries"],
                                attrs.get("map_flags", 0), attrs["key"], attrs["value"], obj)


def _read_programs(obj: ElfObject, code: bytes, relocs: list[tuple[int, int]], sec_name: str,
                   prog_type: int, symbols: list[_Sym]) -> None:
    for sym in symbols:
        if (sym.kind, sym.bind, sym.section) != (STT_FUNC, STB_GLOBAL, sec_name):
            continue
        start, size = sym.value, sym.size
        prog = Program(sym.name, prog_type, code[start:start + size], [])
        for offset, index in relocs:
            if not start <= offset < start + size:
                continue
            target = symbols[index]
            if target.section != ".maps":
                raise ElfError(f"{obj.path}: {sym.name}: relocation to {target.name!r} is not "
                               "a map (calls and global data are not supported: inline them)")
            prog.relocs.append(((offset - start) // 8, target.name))
        obj.programs[sym.name] = prog


def _read_ext(obj: ElfObject, data: bytes, symbols: list[_Sym]) -> None:
    """func_info and line_info of .BTF.ext, cut per program: the records of a section are
    byte offsets from the section's start; the kernel wants instruction indexes from the
    program's."""
    _magic, _ver, _flags, hdr_len, func_off, func_len, line_off, line_len = struct.unpack_from(
        "<HBBIIIII", data)
    spans = sorted((s.value, s.value + s.size, s.name) for s in symbols
                   if s.name in obj.programs)
    for kind, off, length in (("func", func_off, func_len), ("line", line_off, line_len)):
        if not length:
            continue
        pos, end = hdr_len + off, hdr_len + off + length
        rec_size = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        while pos < end:
            sec_off, count = struct.unpack_from("<II", data, pos)
            pos += 8
            block, pos = data[pos:pos + count * rec_size], pos + count * rec_size
            if obj.btf.string(sec_off) not in PROG_SECTIONS:
                continue
            cut: dict[str, list[bytes]] = {}
            for i in range(0, len(block), rec_size):
                insn_off = struct.unpack_from("<I", block, i)[0]
                where = bisect.bisect_right(spans, (insn_off, 1 << 62)) - 1
                if where < 0 or insn_off >= spans[where][1]:
                    continue
                start, _end, name = spans[where]
                cut.setdefault(name, []).append(
                    struct.pack("<I", (insn_off - start) // 8) + block[i + 4:i + rec_size])
            for name, recs in cut.items():
                prog = obj.programs[name]
                if kind == "func":
                    obj.func_rec, prog.func_info = rec_size, prog.func_info + b"".join(recs)
                else:
                    obj.line_rec, prog.line_info = rec_size, prog.line_info + b"".join(recs)


def _patched(prog: Program, fds: dict[str, int]) -> bytes:
    insns = bytearray(prog.insns)
    for index, name in prog.relocs:
        at = index * 8
        if insns[at] != LD_IMM64:
            raise ElfError(f"{prog.name}: map relocation at insn {index} is not a BPF_LD_IMM64")
        insns[at + 1] = (insns[at + 1] & 0x0F) | (BPF_PSEUDO_MAP_FD << 4)  # src_reg
        struct.pack_into("<i", insns, at + 4, fds[name])
    return bytes(insns)


def _check_layout(maps: dict[str, MapDef]) -> None:
    """The objects must be a build of this layout: same maps, sizes and capacities."""
    if set(maps) != set(MAPS):
        raise ElfError(f"objects define maps {sorted(maps)}, the layout {sorted(MAPS)}")
    for name, spec in MAPS.items():
        m = maps[name]
        want = (spec.key_size, spec.value_size, spec.max_entries)
        if (m.key_size, m.value_size, m.max_entries) != want:
            raise ElfError(f"map {name}: the object has key/value/max {m.key_size}/"
                           f"{m.value_size}/{m.max_entries}, the layout {want}: rebuild")


class _Fds:
    """Every fd the load opens; all closed at the end (the pins hold the objects)."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def load_and_pin(paths: Iterable[Path], stage: str, skip: Iterable[str] = (),
                 sizes: Mapping[str, int] | None = None) -> float:
    """Load the objects' maps and programs (all of PROGRAMS but `skip`) and pin them under
    `stage`/{progs,maps}; `sizes`: max_entries by map name for the maps whose size the
    configuration sets (MapSpec.size_macro), instead of the objects' default. Returns the load
    time in seconds (parse to last program)."""
    started = time.monotonic()
    objs = [parse(Path(p)) for p in paths]
    maps: dict[str, MapDef] = {}
    for obj in objs:
        for name, m in obj.maps.items():
            first = maps.setdefault(name, m)
            if (first.map_type, first.key_size, first.value_size, first.max_entries,
                    first.flags) != (m.map_type, m.key_size, m.value_size, m.max_entries,
                                     m.flags):
                raise ElfError(f"map {name} is defined differently in {first.obj.path.name} "
                               f"and {obj.path.name}")
    _check_layout(maps)
    for name, n in (sizes or {}).items():
        if not MAPS[name].size_macro:
            raise ElfError(f"map {name} has a fixed size ({MAPS[name].max_entries})")
        maps[name] = replace(maps[name], max_entries=n)
    wanted = [p for p in PROGRAMS if p not in set(skip)]
    found = {name: (obj, prog) for obj in objs for name, prog in obj.programs.items()}
    missing = [p for p in wanted if p not in found]
    if missing:
        raise ElfError(f"programs {missing} are in none of {[o.path.name for o in objs]}")
    fds = _Fds()

    def create(m: MapDef) -> int:
        return fds.keep(syscall.map_create(m.map_type, m.key_size, m.value_size, m.max_entries,
                                           m.flags, m.name, btf_fds[id(m.obj)], m.btf_key,
                                           m.btf_value))

    def load(name: str) -> int:
        obj, prog = found[name]
        return fds.keep(syscall.prog_load(syscall.ProgSpec(
            name, _patched(prog, map_fds), obj.license, prog.prog_type, btf_fds[id(obj)],
            prog.func_info, obj.func_rec, prog.line_info, obj.line_rec)))

    try:
        btf_fds = {id(obj): fds.keep(syscall.btf_load(bytes(obj.btf.data))) for obj in objs}
        # The kernel's work (preallocating the LRU maps, verifying) runs in parallel: bpf(2)
        # through ctypes releases the GIL. Largest first, so the slowest start first.
        with ThreadPoolExecutor(max_workers=4) as pool:
            order = sorted(maps.values(), key=lambda m: -m.max_entries * m.value_size)
            map_fds = dict(zip((m.name for m in order), pool.map(create, order), strict=True))
            by_size = sorted(wanted, key=lambda n: -len(found[n][1].insns))
            prog_fds = dict(zip(by_size, pool.map(load, by_size), strict=True))
        elapsed = time.monotonic() - started
        for sub in ("progs", "maps"):
            os.makedirs(os.path.join(stage, sub), mode=0o700, exist_ok=True)
        for name, fd in prog_fds.items():
            syscall.obj_pin(fd, os.path.join(stage, "progs", name))
        for name, fd in map_fds.items():
            syscall.obj_pin(fd, os.path.join(stage, "maps", name))
    finally:
        fds.close()
    return elapsed
