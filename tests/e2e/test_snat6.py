"""IPv6 egress SNAT end to end, for every dataplane in MODES: dual-stack pods wired by the real
`ferry` binary, the dataplane loaded by `ferryctl load`, an 'ext' host with no route to the
pod CIDRs (it can only answer packets that left with the node's IPv6 address) recording the
source address and port (ICMPv6: echo id) of what it receives. Addresses are ULA (fd00::/8):
TCP/UDP to documentation ranges is refused on these machines."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from dataplane_support import MODES, DataplaneNode, client, dataplane_node, recorder, seen
from harness import ping, sh, tcp_roundtrip

# A mode that does not translate leaves `seen()` waiting for ever: fail within 2 minutes,
# by pytest-timeout's signal (the fixtures' cleanup still runs; a killed pytest leaks netns).
pytestmark = pytest.mark.timeout(120)

PORTS = (61000, 65535)
EXCLUDED6 = "fd97::/64"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dp(mode: str) -> Iterator[DataplaneNode]:
    with dataplane_node(mode, snatExcludeCidrs=["10.97.0.0/24", EXCLUDED6]) as n:
        yield n


def in_range(port: int, low: int = PORTS[0], high: int = PORTS[1]) -> bool:
    return low <= port <= high


def test_tcp_udp_ping6_leave_with_node_ipv6(dp: DataplaneNode) -> None:
    node, pod = dp.node, dp.add_pod("snat6-a")
    [pod_ip6] = pod.ips(6)
    with recorder(node.ext, "tcp", node.ext_ip6, 8080) as srv:
        client(pod.ns, "tcp", node.ext_ip6, 8080)  # the echo proves the reply reached the pod
        [(src, port)] = seen(srv, 1)
    assert src == node.node_ip6 and in_range(port)
    with recorder(node.ext, "udp", node.ext_ip6, 8081) as srv:
        client(pod.ns, "udp", node.ext_ip6, 8081)
        [(src, port)] = seen(srv, 1)
    assert src == node.node_ip6 and in_range(port)
    with recorder(node.ext, "icmp", "::") as srv:
        assert ping(pod.ns, node.ext_ip6, count=2)  # replies back through the reverse NAT
        (src, ident), (src2, ident2) = seen(srv, 2)
    assert src == src2 == node.node_ip6 and ident2 == ident
    # ip6tables refuses an id range for ICMPv6 SNAT ("Need TCP, UDP, SCTP or DCCP with port
    # specification"): the iptables dataplane keeps the echo id; the eBPF one allocates it.
    assert in_range(ident) or dp.mode == "iptables"
    # IPv4 beside it still works (the same programs dispatch on the family).
    assert tcp_roundtrip(pod.ns, node.ext, node.ext_ip4, port=8082) == node.node_ip4
    if dp.mode == "ebpf":
        info = dp.inspect()
        assert info["nodeIPv6"] == node.node_ip6
        assert pod_ip6 in [p["ip"] for p in info["pods"]]
        nat6 = [r for r in info["nat"] if r["pod"].startswith("[")]
        assert {r["proto"] for r in nat6} == {"tcp", "udp", "icmp6"}
        assert all(r["pod"].startswith(f"[{pod_ip6}]:") for r in nat6)
        assert all(r["nat"].startswith(f"[{node.node_ip6}]:") for r in nat6)
        assert all(in_range(int(r["nat"].rpartition(":")[2])) for r in nat6)


def test_excluded_v6_cidr_and_pod_to_pod_keep_pod_ip(mode: str) -> None:
    with dataplane_node(mode, ext_routes_pods=True, snatExcludeCidrs=[EXCLUDED6]) as dp:
        node = dp.node
        node.ext.ip("-6", "addr", "add", "fd97::2/128", "dev", "ext0", "nodad")
        node.ns.ip("-6", "route", "add", EXCLUDED6, "via", node.ext_ip6)
        a, b = dp.add_pod("keep6-a"), dp.add_pod("keep6-b")
        [a6], [b6] = a.ips(6), b.ips(6)
        assert tcp_roundtrip(a.ns, node.ext, "fd97::2") == a6
        assert tcp_roundtrip(a.ns, node.ext, node.ext_ip6) == node.node_ip6  # not excluded
        assert tcp_roundtrip(a.ns, b.ns, b6) == a6
        assert tcp_roundtrip(a.ns, node.ns, node.node_ip6, port=8083) == a6
        if mode == "ebpf":
            nat = dp.inspect()["nat"]
            assert [r["dst"].rpartition(":")[0] for r in nat] == [f"[{node.ext_ip6}]"]


def test_reply_miss_goes_to_the_stack_v6(dp: DataplaneNode) -> None:
    # The node's own IPv6 connection (no NAT entry) and ext's connection to a node service on
    # a port inside the SNAT range must both pass the ingress untouched.
    node = dp.node
    assert tcp_roundtrip(node.ns, node.ext, node.ext_ip6, port=8084) == node.node_ip6
    assert tcp_roundtrip(node.ext, node.ns, node.node_ip6, port=62000) == node.ext_ip6


def test_50_concurrent_v6_flows_get_distinct_ports(mode: str) -> None:
    # 50 flows in a 101-port range: random picks collide, the in-program retry resolves them.
    low, high = 61000, 61100
    with dataplane_node(mode, snatPortRange=f"{low}-{high}") as dp:
        node = dp.node
        pods = [dp.add_pod(f"flows6-{i}") for i in range(2)]
        with recorder(node.ext, "tcp", node.ext_ip6, 9000) as srv:
            procs = [p.ns.popen("python3", "-c", CLIENT_HOLD, node.ext_ip6, "9000", "25")
                     for p in pods]
            try:
                flows = seen(srv, 50)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
        assert {src for src, _ in flows} == {node.node_ip6}
        ports = [port for _, port in flows]
        assert len(set(ports)) == 50, "two flows share an external port"
        assert all(low <= p <= high for p in ports), sorted(ports)


# Opens N TCP flows (create_connection picks the family) and holds them until killed.
CLIENT_HOLD = r"""
import socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((ip, port), timeout=10) for _ in range(n)]
time.sleep(60)
"""

V6_MAPS = ("ferry_endpoint6", "ferry_nat_fwd6", "ferry_nat_rev6")


def test_del_leaves_no_v6_entry(dp: DataplaneNode) -> None:
    node = dp.node
    pods = [dp.add_pod(f"gone6-{i}") for i in range(2)]
    with recorder(node.ext, "udp", node.ext_ip6, 8085) as srv:
        for p in pods:
            client(p.ns, "udp", node.ext_ip6, 8085)
        seen(srv, 2)
    for p in pods:
        assert ping(p.ns, node.ext_ip6)
    if dp.mode == "ebpf":
        before = dp.inspect()
        assert len([r for r in before["nat"] if r["pod"].startswith("[")]) == 4
        assert len([p for p in before["pods"] if ":" in p["ip"]]) == 2
    for p in pods:
        node.cni("DEL", p, dp.conf).ok()
    after = dp.inspect()
    assert after["pods"] == [] and after["nat"] == []
    if dp.mode == "ebpf":
        for name in V6_MAPS:
            # bpftool in the host namespaces: `ip netns exec` would mount a /sys without bpffs.
            dump = sh("bpftool", "-j", "map", "dump", "pinned", f"{dp.pin_dir}/maps/{name}")
            assert json.loads(dump) == [], f"{name} still holds {dump}"


def test_gc_expires_idle_v6_flows() -> None:
    with dataplane_node("ebpf") as dp:
        pod = dp.add_pod("gc6")
        with recorder(dp.node.ext, "udp", dp.node.ext_ip6, 8086) as srv:
            client(pod.ns, "udp", dp.node.ext_ip6, 8086, flows=3)
            seen(srv, 3)
        assert len(dp.inspect()["nat"]) == 3
        assert json.loads(dp.ctl("gc", "--json", "--idle", "3600").stdout)["expired"] == 0
        assert json.loads(dp.ctl("gc", "--json", "--idle", "0").stdout)["expired"] == 3
        assert dp.inspect()["nat"] == []
        dump = sh("bpftool", "-j", "map", "dump", "pinned", f"{dp.pin_dir}/maps/ferry_nat_rev6")
        assert json.loads(dump) == []


def test_explicit_node_ipv6(mode: str) -> None:
    # nodeIPv6 picks the source among the uplink's addresses (default: the first global one).
    with dataplane_node(mode, load=False, nodeIPv6="fd98::1") as dp:
        node = dp.node
        node.ns.ip("-6", "addr", "add", "fd98::1/64", "dev", "uplink0", "nodad")
        node.ext.ip("-6", "addr", "add", "fd98::2/64", "dev", "ext0", "nodad")
        dp.load()
        pod = dp.add_pod("explicit6")
        assert tcp_roundtrip(pod.ns, node.ext, node.ext_ip6, port=8087) == "fd98::1"


def test_checksums_hold_without_offloads(dp: DataplaneNode) -> None:
    # veth marks what it forwards CHECKSUM_UNNECESSARY (and passes CHECKSUM_PARTIAL along) when
    # offloads are on, so nobody would verify the rewritten checksums. With tx/rx checksumming
    # off on every hop, each sender computes full checksums and each receiver verifies them:
    # TCP, UDP and ICMPv6 (whose checksum has the pseudo-header too) must still get through.
    node, pod = dp.node, dp.add_pod("csum6")
    host_veth = pod.result["interfaces"][0]["name"]  # type: ignore[index]
    for ns, dev in ((pod.ns, "eth0"), (node.ns, host_veth), (node.ns, "uplink0"),
                    (node.ext, "ext0")):
        ns.run("ethtool", "-K", dev, "tx", "off", "rx", "off")
    with recorder(node.ext, "tcp", node.ext_ip6, 8088) as srv:
        client(pod.ns, "tcp", node.ext_ip6, 8088)
        assert seen(srv, 1)[0][0] == node.node_ip6
    with recorder(node.ext, "udp", node.ext_ip6, 8089) as srv:
        client(pod.ns, "udp", node.ext_ip6, 8089)
        assert seen(srv, 1)[0][0] == node.node_ip6
    assert ping(pod.ns, node.ext_ip6, count=2)
    for ns in (node.ext, pod.ns):
        errors = {k: v for k, v in (line.split() for line in
                                    ns.run("cat", "/proc/net/snmp6").splitlines())
                  if k.endswith("CsumErrors") and v != "0"}
        assert not errors, f"{ns.name}: {errors}"
