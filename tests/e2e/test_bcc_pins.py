"""Both loaders against the real kernel: load once, pin, reopen, reload on change (bcc:
compile flags and sources; elf: the objects), typed map access over raw bpf(2), and BTF that
bpftool can print."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loader import pins
from loader.layouts import PROGRAMS, Endpoint, Ip4Key, ip4, ip4_str
from loader.maps import open_map


@pytest.fixture
def root() -> Iterator[str]:
    path = f"/sys/fs/bpf/ferry-unit-{os.urandom(3).hex()}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_load_reuses_pins_and_recompiles_on_change(root: str, tmp_path: Path) -> None:
    first = pins.load(root, "net.a", loader="bcc")
    assert first.compiled and set(first.prog_ids) == set(PROGRAMS)
    assert first.dir == f"{root}/net_a"  # bpffs refuses dots in names
    second = pins.load(root, "net.a", loader="bcc")
    assert not second.compiled and second.prog_ids == first.prog_ids
    assert second.hash == first.hash

    flagged = pins.load(root, "net.a", cflags=("-DFERRY_UNIT_VARIANT=1",))
    assert flagged.compiled and flagged.hash != first.hash
    assert set(flagged.prog_ids.values()).isdisjoint(first.prog_ids.values())

    # A copy of the sources with one comment changed is a different build too.
    src = tmp_path / "bpf"
    shutil.copytree(pins.BPF_DIR, src)
    (src / "snat.c").write_text((src / "snat.c").read_text() + "\n/* changed */\n")
    changed = pins.load(root, "net.a", bpf_dir=src, cflags=("-DFERRY_UNIT_VARIANT=1",))
    assert changed.compiled and changed.hash != flagged.hash
    assert not [p for p in os.listdir(root) if p != "net_a"], "staging dirs left behind"

    assert pins.unload(root, "net.a") and not os.path.exists(first.dir)


@pytest.mark.parametrize("loader", ["elf", "bcc"])
def test_typed_maps_and_btf(root: str, loader: str) -> None:
    res = pins.load(root, "typed", loader=loader)
    assert res.loader == loader
    with open_map(res.dir, "ferry_endpoints") as eps:
        eps.put(Ip4Key(ip4("10.20.0.7")), Endpoint(ifindex=42, flags=1))
        got = eps.get(Ip4Key(ip4("10.20.0.7")))
        assert got is not None and (got.ifindex, got.flags) == (42, 1)
        assert [ip4_str(k.addr) for k in eps.keys()]  # noqa: SIM118 == ["10.20.0.7"]
        assert eps.delete(Ip4Key(ip4("10.20.0.7")))
        assert eps.get(Ip4Key(ip4("10.20.0.7"))) is None
        eps.put(Ip4Key(ip4("10.20.0.8")), Endpoint(ifindex=7, flags=0))
    dump = json.loads(subprocess.run(
        ["bpftool", "-j", "map", "dump", "pinned", f"{res.dir}/maps/ferry_endpoints"],
        capture_output=True, text=True, check=True).stdout)
    # BTF from either loader: bpftool prints the named fields of the shared layout.
    assert dump and dump[0]["formatted"]["value"] == {"ifindex": 7, "flags": 0}
    assert set(dump[0]["formatted"]["key"]) == {"addr"}
    shown = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True,
                           check=True).stdout
    for name in PROGRAMS:
        assert f"name {name}" in shown


def test_elf_reload_when_the_objects_change(root: str, tmp_path: Path) -> None:
    """A different object (other bytes) is a different build; a source tree whose objects are
    stale makes auto compile with bcc instead, and explicit elf refuse."""
    from loader import objects

    first = pins.load(root, "obj", loader="elf")
    assert first.compiled and first.loader == "elf"
    src = tmp_path / "bpf"
    shutil.copytree(pins.BPF_DIR, src)
    (src / "snat.c").write_text((src / "snat.c").read_text() + "\n/* changed */\n")
    with pytest.raises(pins.LoaderUnavailable, match="other sources"):
        pins.load(root, "obj", bpf_dir=src, obj_dir=src, loader="elf")
    fallback = pins.load(root, "obj", bpf_dir=src, obj_dir=src)
    assert fallback.loader == "bcc" and "other sources" in fallback.why
    objects.build(src, bpf_dir=src)
    rebuilt = pins.load(root, "obj", bpf_dir=src, obj_dir=src)
    assert rebuilt.compiled and rebuilt.loader == "elf" and rebuilt.hash != first.hash
