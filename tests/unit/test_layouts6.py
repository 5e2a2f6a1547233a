"""The IPv6 layouts: the C side agrees with ctypes and addresses convert both ways."""

from __future__ import annotations

import ctypes
import ipaddress
import socket

from loader.layouts import (
    MAPS,
    Ip6Key,
    Lpm6Key,
    NatConfig,
    NatEntry6,
    NatTuple6,
    c_header,
    ip6,
    ip6_str,
    port,
)
from plugin.dataplane.ebpf import V4, V6


def test_v6_structs_and_maps_in_the_header() -> None:
    header = c_header()
    for s in (Ip6Key, Lpm6Key, NatTuple6, NatEntry6, NatConfig):
        assert f"sizeof(struct {s.c_name}) == {ctypes.sizeof(s)}" in header
    assert "__u32 node_ip6[4];" in header and "__u32 saddr[4];" in header
    assert (ctypes.sizeof(Ip6Key), ctypes.sizeof(Lpm6Key)) == (16, 20)
    assert (ctypes.sizeof(NatTuple6), ctypes.sizeof(NatEntry6)) == (40, 40)
    for name in ("ferry_endpoint6", "ferry_snat_ex6", "ferry_nat_fwd6", "ferry_nat_rev6"):
        assert name in MAPS and f"{name}," in header
    assert all(len(name) <= 15 for name in MAPS)  # the kernel's object name limit


def test_ip6_conversion_is_the_packet_bytes() -> None:
    raw = ip6("fd20::2")
    assert bytes(raw) == ipaddress.IPv6Address("fd20::2").packed
    assert ip6_str(raw) == "fd20::2" and ip6_str(ip6("FD20:0::0:2")) == "fd20::2"
    assert bytes(Ip6Key(ip6("fd99::1"))) == socket.inet_pton(socket.AF_INET6, "fd99::1")


def test_endpoint_text_splits_with_rpartition() -> None:
    assert V6.endpoint(ip6("fd20::2"), port(443)) == "[fd20::2]:443"
    assert V4.endpoint(V4.raw("10.0.0.1"), port(80)) == "10.0.0.1:80"
    addr, _, p = V6.endpoint(ip6("fd20::2"), port(443)).rpartition(":")
    assert (addr.strip("[]"), int(p)) == ("fd20::2", 443)
    assert V6.addrs(["10.20.0.2/24", "fd20::2/120"]) == ["fd20::2"]
