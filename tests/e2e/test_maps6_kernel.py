"""The IPv6 layouts in the real kernel's maps (hash, LPM trie, LRU) over raw bpf(2), as the DEL
purge uses them."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from loader import pins
from loader.layouts import (
    Endpoint,
    Excluded,
    Ip6Key,
    Lpm6Key,
    NatConfig,
    NatEntry6,
    NatTuple6,
    ip6,
    ip6_str,
    port,
)
from loader.maps import open_map
from plugin.dataplane.ebpf import V6, _purge_nat, _reverse_key


@pytest.fixture(scope="module")
def loaded() -> Iterator[str]:
    root = f"/sys/fs/bpf/ferry-unit6-{os.urandom(3).hex()}"
    try:
        yield pins.load(root, "six").dir
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_endpoint6_and_lpm6_in_the_kernel(loaded: str) -> None:
    with open_map(loaded, "ferry_endpoint6") as eps:
        eps.put(Ip6Key(ip6("fd20::7")), Endpoint(ifindex=9, flags=0))
        got = eps.get(Ip6Key(ip6("fd20::7")))
        assert got is not None and got.ifindex == 9
        assert [ip6_str(k.addr) for k in eps.keys()] == ["fd20::7"]  # noqa: SIM118
        assert eps.delete(Ip6Key(ip6("fd20::7")))
    with open_map(loaded, "ferry_snat_ex6") as ex:
        ex.put(Lpm6Key(prefixlen=48, addr=ip6("fd97::")), Excluded(reason=1))
        ex.put(Lpm6Key(prefixlen=64, addr=ip6("fd97::")), Excluded(reason=2))
        # A /128 lookup is what the program does: the longest prefix wins.
        hit = ex.get(Lpm6Key(prefixlen=128, addr=ip6("fd97::5")))
        assert hit is not None and hit.reason == 2
        hit = ex.get(Lpm6Key(prefixlen=128, addr=ip6("fd97:0:0:1::5")))
        assert hit is not None and hit.reason == 1
        assert ex.get(Lpm6Key(prefixlen=128, addr=ip6("fd98::5"))) is None
    with open_map(loaded, "ferry_nat_cfg") as cfg:
        cfg.put(ctypes.c_uint32(0), NatConfig(port_min=61000, port_max=65535,
                                              node_ip6=ip6("fd99::1")))
    dump = json.loads(subprocess.run(
        ["bpftool", "-j", "map", "dump", "pinned", f"{loaded}/maps/ferry_nat_cfg"],
        capture_output=True, text=True, check=True).stdout)
    # BTF names the new field; the words are the packet's bytes read as host-order u32s.
    words = dump[0]["formatted"]["value"]["node_ip6"]
    assert b"".join(w.to_bytes(4, "little") for w in words) == socket.inet_pton(
        socket.AF_INET6, "fd99::1")


def _flow(fwd: object, rev: object, pod: str, sport: int, nat_port: int, proto: int) -> None:
    k = NatTuple6(saddr=ip6(pod), daddr=ip6("fd99::2"), sport=port(sport),
                  dport=0 if proto == socket.IPPROTO_ICMPV6 else port(80), proto=proto)
    v = NatEntry6(addr=ip6("fd99::1"), port=port(nat_port))
    fwd.put(k, v)  # type: ignore[attr-defined]
    rev.put(_reverse_key(V6, k, v),  # type: ignore[attr-defined]
            NatEntry6(addr=ip6(pod), port=port(sport)))


def test_reverse_key_and_purge_of_one_pod(loaded: str) -> None:
    k = NatTuple6(saddr=ip6("fd20::2"), daddr=ip6("fd99::2"), sport=port(7), dport=0,
                  proto=socket.IPPROTO_ICMPV6)
    rk = _reverse_key(V6, k, NatEntry6(addr=ip6("fd99::1"), port=port(61001)))
    assert (ip6_str(rk.saddr), ip6_str(rk.daddr)) == ("fd99::2", "fd99::1")
    assert (rk.sport, rk.dport) == (0, port(61001))  # the echo id travels in dport
    with open_map(loaded, "ferry_nat_fwd6") as fwd, open_map(loaded, "ferry_nat_rev6") as rev:
        _flow(fwd, rev, "fd20::2", 40000, 61000, socket.IPPROTO_TCP)
        _flow(fwd, rev, "fd20::2", 7, 61001, socket.IPPROTO_ICMPV6)
        _flow(fwd, rev, "fd20::3", 40000, 61002, socket.IPPROTO_UDP)
        _purge_nat(loaded, ["10.20.0.2/24", "fd20:0::2/120"])  # any spelling of the address
        assert [ip6_str(k.saddr) for k in fwd.keys()] == ["fd20::3"]  # noqa: SIM118
        assert [ip6_str(v.addr) for _, v in rev.items()] == ["fd20::3"]
        _purge_nat(loaded, ["fd20::3/120"])
        assert list(fwd.keys()) == [] and list(rev.keys()) == []
