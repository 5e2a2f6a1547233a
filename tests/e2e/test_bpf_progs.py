"""The programs' logic, without namespaces: BPF_PROG_TEST_RUN on the loaded programs (the
ELF objects, and the bcc build of the same source) with crafted frames, as Cilium's
bpf/tests. Every translated frame's checksums are recomputed (tests/packets.py)."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from packets import HOST_MAC, ICMP, ICMP6, POD_MAC, TCP, UDP, frame, parse

from loader import pins, syscall
from loader.layouts import (
    EP_F_POD_ENI,
    Endpoint,
    Excluded,
    Ip4Key,
    Ip6Key,
    Lpm4Key,
    Lpm6Key,
    NatConfig,
    NatEntry4,
    NatTuple4,
    Redirect,
    ip4,
    ip6,
    mac_bytes,
    port,
)
from loader.maps import open_map

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
NODE4, NODE6 = "10.99.0.1", "fd99::1"
POD4, POD6, OTHER_POD4 = "10.20.0.5", "fd20::5", "10.20.0.6"
EXT4, EXT6 = "172.16.5.9", "fd60::9"
EXCLUDED4, EXCLUDED6 = "10.1.2.3", "fd30::3"
LOW, HIGH = 61000, 65535
ENI_IFINDEX, HOST_IFINDEX = 1, 77  # eni_in compares with skb->ingress_ifindex: lo in test runs


@dataclass
class Loaded:
    dir: str
    loader: str
    progs: dict[str, int]

    def run(self, prog: str, data: bytes, ingress_ifindex: int = 0) -> tuple[int, bytes]:
        ctx = b""
        if ingress_ifindex:  # struct __sk_buff up to ingress_ifindex (offset 36)
            ctx = bytes(36) + struct.pack("<I", ingress_ifindex)
        return syscall.prog_test_run(self.progs[prog], data, ctx)

    def config(self, low: int = LOW, high: int = HIGH) -> None:
        with open_map(self.dir, "ferry_nat_cfg") as cfg:
            cfg.put(ctypes.c_uint32(0), NatConfig(node_ip=ip4(NODE4), port_min=low,
                                                  port_max=high, node_ip6=ip6(NODE6)))

    def clear_nat(self) -> None:
        for name in ("ferry_nat_fwd", "ferry_nat_rev", "ferry_nat_fwd6", "ferry_nat_rev6"):
            with open_map(self.dir, name) as m:
                for k in list(m.keys()):
                    m.delete(k)


@pytest.fixture(scope="module", params=["elf", "bcc"])
def loaded(request: pytest.FixtureRequest) -> Iterator[Loaded]:
    root = f"/sys/fs/bpf/ferry-progtest-{os.urandom(3).hex()}"
    fds: dict[str, int] = {}
    try:
        res = pins.load(root, "progs", loader=request.param)
        assert res.loader == request.param
        for name in res.prog_ids:
            fds[name] = syscall.obj_get(pins.prog_path(res.dir, name))
        lo = Loaded(res.dir, res.loader, fds)
        with open_map(res.dir, "ferry_endpoints") as eps:
            eps.put(Ip4Key(ip4(POD4)), Endpoint(ifindex=HOST_IFINDEX, flags=0))
            eps.put(Ip4Key(ip4(OTHER_POD4)), Endpoint(ifindex=78, flags=EP_F_POD_ENI))
        with open_map(res.dir, "ferry_endpoint6") as eps:
            eps.put(Ip6Key(ip6(POD6)), Endpoint(ifindex=HOST_IFINDEX, flags=0))
        with open_map(res.dir, "ferry_snat_excl") as ex:
            ex.put(Lpm4Key(prefixlen=8, addr=ip4("10.0.0.0")), Excluded(reason=1))
        with open_map(res.dir, "ferry_snat_ex6") as ex:
            ex.put(Lpm6Key(prefixlen=16, addr=ip6("fd30::")), Excluded(reason=1))
        yield lo
    finally:
        for fd in fds.values():
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bpf(loaded: Loaded) -> Loaded:
    loaded.config()
    loaded.clear_nat()
    return loaded


CASES = [  # (family, proto, echo request type, echo reply type)
    pytest.param(POD4, EXT4, NODE4, TCP, None, None, id="tcp4"),
    pytest.param(POD4, EXT4, NODE4, UDP, None, None, id="udp4"),
    pytest.param(POD4, EXT4, NODE4, ICMP, 8, 0, id="icmp4-echo"),
    pytest.param(POD6, EXT6, NODE6, TCP, None, None, id="tcp6"),
    pytest.param(POD6, EXT6, NODE6, UDP, None, None, id="udp6"),
    pytest.param(POD6, EXT6, NODE6, ICMP6, 128, 129, id="icmp6-echo"),
]


@pytest.mark.parametrize(("pod", "ext", "node", "proto", "req", "rep"), CASES)
def test_snat_round_trip(bpf: Loaded, pod: str, ext: str, node: str, proto: int,
                         req: int | None, rep: int | None) -> None:
    """Out: the pod's source becomes the node's with a port (echo id) in the range; back: the
    reply to that port is the pod's again. Checksums right both ways."""
    dport = 0 if req is not None else 443
    ret, out = bpf.run("ferry_snat_eg", frame(pod, ext, proto, 40000, dport, echo=req))
    assert ret == TC_ACT_OK
    got = parse(out)
    assert (got.src, got.dst, got.dport) == (node, ext, dport)
    assert LOW <= got.sport <= HIGH  # 40000 is outside the range: a random one
    again = parse(bpf.run("ferry_snat_eg", frame(pod, ext, proto, 40000, dport, echo=req))[1])
    assert again.sport == got.sport  # the flow's entry, not a new allocation

    reply = frame(ext, node, proto, dport if req is None else got.sport, got.sport, echo=rep)
    ret, back = bpf.run("ferry_snat_in", reply)
    assert ret == TC_ACT_OK
    b = parse(back)
    assert (b.src, b.dst) == (ext, pod)
    assert b.dport == 40000


def test_in_range_source_port_is_kept(bpf: Loaded) -> None:
    out = parse(bpf.run("ferry_snat_eg", frame(POD4, EXT4, TCP, 61500, 80))[1])
    assert (out.src, out.sport) == (NODE4, 61500)


def test_udp_without_checksum_stays_without(bpf: Loaded) -> None:
    out = parse(bpf.run("ferry_snat_eg", frame(POD4, EXT4, UDP, 5000, 53, udp_csum=False))[1])
    assert out.src == NODE4 and out.l4_csum == 0


@pytest.mark.parametrize(("src", "dst", "proto"), [
    pytest.param(POD4, EXCLUDED4, TCP, id="excluded-v4"),
    pytest.param(POD6, EXCLUDED6, UDP, id="excluded-v6"),
    pytest.param("10.20.0.99", EXT4, TCP, id="not-a-pod"),
    pytest.param(OTHER_POD4, EXT4, TCP, id="pod-eni-pod"),
    pytest.param(POD4, EXT4, 47, id="gre"),  # nothing to translate: not SNATed
])
def test_untouched_egress(bpf: Loaded, src: str, dst: str, proto: int) -> None:
    pkt = frame(src, dst, proto, 41000, 80)
    ret, out = bpf.run("ferry_snat_eg", pkt)
    assert (ret, out) == (TC_ACT_OK, pkt)
    with open_map(bpf.dir, "ferry_nat_fwd") as fwd, open_map(bpf.dir, "ferry_nat_fwd6") as f6:
        assert not list(fwd.keys()) and not list(f6.keys())


@pytest.mark.parametrize("dport", [61234, 22, 40000])
def test_reverse_miss_goes_to_the_stack_unchanged(bpf: Loaded, dport: int) -> None:
    """No entry (or a port outside the range: the node's own traffic): not dropped, not
    rewritten."""
    for src, node in ((EXT4, NODE4), (EXT6, NODE6)):
        pkt = frame(src, node, TCP, 443, dport)
        assert bpf.run("ferry_snat_in", pkt) == (TC_ACT_OK, pkt)


def _claim(bpf: Loaded, p: int) -> None:
    """Another flow (another pod, same destination) holds external port p."""
    with open_map(bpf.dir, "ferry_nat_rev") as rev:
        rev.put(NatTuple4(saddr=ip4(EXT4), daddr=ip4(NODE4), sport=port(80), dport=port(p),
                          proto=TCP), NatEntry4(addr=ip4("10.20.0.77"), port=port(p)))


def test_port_collision_moves_to_a_free_port(bpf: Loaded) -> None:
    _claim(bpf, 61500)
    out = parse(bpf.run("ferry_snat_eg", frame(POD4, EXT4, TCP, 61500, 80))[1])
    assert out.src == NODE4 and out.sport != 61500 and LOW <= out.sport <= HIGH


def test_retries_find_the_last_free_port(bpf: Loaded) -> None:
    """A range of four ports, three taken: the retries (random, then +1) reach the fourth."""
    bpf.config(61000, 61003)
    for p in (61000, 61001, 61003):
        _claim(bpf, p)
    out = parse(bpf.run("ferry_snat_eg", frame(POD4, EXT4, TCP, 61000, 80))[1])
    assert out.sport == 61002


def test_exhausted_range_drops(bpf: Loaded) -> None:
    bpf.config(61000, 61001)
    for p in (61000, 61001):
        _claim(bpf, p)
    ret, _ = bpf.run("ferry_snat_eg", frame(POD4, EXT4, TCP, 61000, 80))
    assert ret == TC_ACT_SHOT
    # Another destination has its own port space: the same ports are free there.
    ret, out = bpf.run("ferry_snat_eg", frame(POD4, "172.16.5.10", TCP, 61000, 80))
    assert ret == TC_ACT_OK and parse(out).sport == 61000


# --- pod-ENI redirection --------------------------------------------------------------------

@pytest.fixture
def eni(bpf: Loaded) -> Iterator[Loaded]:
    entry = Redirect(host_ifindex=HOST_IFINDEX, eni_ifindex=ENI_IFINDEX, gateway=ip4("10.98.0.1"))
    ctypes.memmove(entry.host_mac, mac_bytes("02:00:00:00:00:bb"), 6)
    ctypes.memmove(entry.pod_mac, mac_bytes("02:00:00:00:00:aa"), 6)
    with open_map(bpf.dir, "ferry_redirect") as rd:
        rd.put(Ip4Key(ip4(POD4)), entry)
        try:
            yield bpf
        finally:
            rd.delete(Ip4Key(ip4(POD4)))


def test_eni_egress_redirects_with_ttl_decremented(eni: Loaded) -> None:
    ret, out = eni.run("ferry_eni_eg", frame(POD4, EXT4, TCP, 40000, 80, ttl=64))
    assert ret == TC_ACT_REDIRECT  # bpf_redirect_neigh to the ENI
    got = parse(out)
    assert (got.src, got.sport, got.ttl) == (POD4, 40000, 63)  # no SNAT on an ENI


@pytest.mark.parametrize("dst", [OTHER_POD4, NODE4])
def test_eni_egress_leaves_node_local_traffic_to_routing(eni: Loaded, dst: str) -> None:
    pkt = frame(POD4, dst, TCP, 40000, 80)
    assert eni.run("ferry_eni_eg", pkt) == (TC_ACT_OK, pkt)


def test_eni_egress_ttl_one_goes_to_the_stack(eni: Loaded) -> None:
    pkt = frame(POD4, EXT4, UDP, 40000, 80, ttl=1)
    assert eni.run("ferry_eni_eg", pkt) == (TC_ACT_OK, pkt)


def test_eni_ingress_enters_the_pod_with_its_macs(eni: Loaded) -> None:
    pkt = frame(EXT4, POD4, TCP, 80, 40000, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6)
    ret, out = eni.run("ferry_eni_in", pkt, ingress_ifindex=ENI_IFINDEX)
    assert ret == TC_ACT_REDIRECT  # bpf_redirect_peer into the pod's namespace
    got = parse(out)
    assert (got.dst_mac, got.src_mac, got.ttl) == (POD_MAC, HOST_MAC, 63)
    # The same packet arriving on another device is not the ENI's: left alone.
    assert eni.run("ferry_eni_in", pkt, ingress_ifindex=HOST_IFINDEX) == (TC_ACT_OK, pkt)
