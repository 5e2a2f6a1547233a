"""Every prebuilt object the package ships, through this kernel's verifier (as Calico's
TestPrecompiledBinariesAreLoadable), and what a refusal looks like."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from loader import elf, objects, pins, syscall
from loader.layouts import PROGRAMS, Endpoint, Ip4Key, ip4
from loader.maps import open_map


def test_every_shipped_object_passes_the_verifier() -> None:
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


def test_elf_programs_carry_btf_source_lines_and_maps_named_fields() -> None:
    """BTF from the objects: bpftool dumps the maps' named fields, and `prog dump xlated`
    shows the C source lines (.BTF.ext line info)."""
    root = f"/sys/fs/bpf/ferry-btf-{os.urandom(3).hex()}"
    try:
        res = pins.load(root, "btf", loader="elf")
        with open_map(res.dir, "ferry_endpoints") as eps:
            eps.put(Ip4Key(ip4("10.20.0.8")), Endpoint(ifindex=7, flags=0))
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "pinned",
                               f"{res.dir}/maps/ferry_endpoints"], capture_output=True,
                              text=True, check=True).stdout
        assert '"formatted":{"key":{"addr":' in dump.replace(" ", "")
        assert '"value":{"ifindex":7,"flags":0}' in dump.replace(" ", "")
        xlated = subprocess.run(["bpftool", "prog", "dump", "xlated", "pinned",
                                 pins.prog_path(res.dir, "ferry_snat_eg")],
                                capture_output=True, text=True, check=True).stdout
        assert "int ferry_snat_eg(struct __sk_buff * skb):" in xlated
        assert "; if (skb->protocol == bpf_htons(ETH_P_IPV6))" in xlated  # snat.c, line by line
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_verifier_refusal_carries_the_log_tail() -> None:
    """A program the verifier refuses (reads an uninitialised register): the error is the
    kernel's reason, not just EACCES/EINVAL."""
    bad = b"\xbf\x20\x00\x00\x00\x00\x00\x00" + b"\x95" + bytes(7)  # r0 = r2; exit
    with pytest.raises(syscall.VerifierError) as e:
        syscall.prog_load(syscall.ProgSpec("ferry_bad", bad))
    assert "R2 !read_ok" in str(e.value) and "R2 !read_ok" in e.value.log
