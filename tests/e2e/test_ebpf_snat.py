"""eBPF SNAT end to end: pods wired by the real `ferry` binary, the dataplane loaded by
`ferryctl load`, an 'ext' host that has no route to the pod CIDR (so it can only answer
packets that left with the node IP) recording the source address and port of what it gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ebpf_support import EbpfNode, client, ebpf_node, recorder, seen, tc_show
from harness import ping

PORTS = (61000, 65535)


@pytest.fixture
def en() -> Iterator[EbpfNode]:
    with ebpf_node(snatExcludeCidrs=["10.97.0.0/24"]) as n:
        yield n


def in_range(port: int, low: int = PORTS[0], high: int = PORTS[1]) -> bool:
    return low <= port <= high


def test_uplink_has_named_filters(en: EbpfNode) -> None:
    assert "ferry_snat_eg" in tc_show(en.node.ns, "uplink0", "egress")
    assert "ferry_snat_in" in tc_show(en.node.ns, "uplink0", "ingress")


def test_tcp_udp_ping_leave_with_node_ip(en: EbpfNode) -> None:
    pod = en.add_pod("snat-a")
    ext = en.node.ext
    with recorder(ext, "tcp", en.node.ext_ip4, 8080) as srv:
        client(pod.ns, "tcp", en.node.ext_ip4, 8080)
        [(src, port)] = seen(srv, 1)
    assert src == en.node.node_ip4 and in_range(port)
    with recorder(ext, "udp", en.node.ext_ip4, 8081) as srv:
        client(pod.ns, "udp", en.node.ext_ip4, 8081)
        [(src, port)] = seen(srv, 1)
    assert src == en.node.node_ip4 and in_range(port)
    with recorder(ext, "icmp", "0.0.0.0") as srv:
        assert ping(pod.ns, en.node.ext_ip4, count=2)
        (src, ident), _ = seen(srv, 2)
    assert src == en.node.node_ip4 and in_range(ident)
    nat = en.inspect()["nat"]
    assert {r["proto"] for r in nat} == {"tcp", "udp", "icmp"}
    assert all(r["pod"].startswith(pod.ips(4)[0] + ":") for r in nat)
    assert all(r["nat"].startswith(en.node.node_ip4 + ":") for r in nat)
