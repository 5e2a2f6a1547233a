"""eBPF SNAT end to end: pods wired by the real `ferry` binary, the dataplane loaded by
`ferryctl load`, an 'ext' host that has no route to the pod CIDR (so it can only answer
packets that left with the node IP) recording the source address and port of what it gets.
Every test runs against each dataplane in MODES unless it uses `ebpf_en` (pins, maps, tc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataplane_support import (
    MODES,
    DataplaneNode,
    client,
    dataplane_node,
    ebpf_node,
    recorder,
    seen,
    tc_show,
)
from harness import ping, sh, tcp_roundtrip

PORTS = (61000, 65535)


@pytest.fixture(params=MODES)
def en(request: pytest.FixtureRequest) -> Iterator[DataplaneNode]:
    with dataplane_node(request.param, snatExcludeCidrs=["10.97.0.0/24"]) as n:
        yield n


@pytest.fixture
def ebpf_en() -> Iterator[DataplaneNode]:
    with ebpf_node(snatExcludeCidrs=["10.97.0.0/24"]) as n:
        yield n


def in_range(port: int, low: int = PORTS[0], high: int = PORTS[1]) -> bool:
    return low <= port <= high


def test_uplink_has_named_filters(ebpf_en: DataplaneNode) -> None:
    assert "ferry_snat_eg" in tc_show(ebpf_en.node.ns, "uplink0", "egress")
    assert "ferry_snat_in" in tc_show(ebpf_en.node.ns, "uplink0", "ingress")


def test_tcp_udp_ping_leave_with_node_ip(en: DataplaneNode) -> None:
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


@pytest.mark.parametrize("mode", MODES)
def test_200_concurrent_flows_get_distinct_ports_in_range(mode: str) -> None:
    # A 301-port range for 200 flows to one destination: the random picks collide and the
    # in-program retry (BPF_NOEXIST on the reverse entry, then +1) must resolve every one.
    low, high = 61000, 61300
    with dataplane_node(mode, snatPortRange=f"{low}-{high}") as en:
        pods = [en.add_pod(f"flows-{i}") for i in range(4)]
        with recorder(en.node.ext, "tcp", en.node.ext_ip4, 9000) as srv:
            procs = [p.ns.popen("python3", "-c", CLIENT_HOLD, en.node.ext_ip4, "9000", "50")
                     for p in pods]
            try:
                flows = seen(srv, 200)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
        assert {src for src, _ in flows} == {en.node.node_ip4}
        ports = [port for _, port in flows]
        assert len(set(ports)) == 200, "two flows share an external port"
        assert all(low <= p <= high for p in ports), sorted(ports)
        assert len(en.inspect()["nat"]) >= 200


# Opens N TCP flows and holds them until killed (so that all 200 are live at once).
CLIENT_HOLD = r"""
import socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((ip, port), timeout=10) for _ in range(n)]
time.sleep(60)
"""


@pytest.mark.parametrize("mode", MODES)
def test_excluded_cidr_and_pod_to_pod_keep_pod_ip(mode: str) -> None:
    with dataplane_node(mode, ext_routes_pods=True, snatExcludeCidrs=["10.97.0.0/24"]) as en:
        node = en.node
        node.ext.ip("addr", "add", "10.97.0.2/32", "dev", "ext0")
        node.ns.ip("route", "add", "10.97.0.0/24", "via", node.ext_ip4)
        a, b = en.add_pod("keep-a"), en.add_pod("keep-b")
        assert tcp_roundtrip(a.ns, node.ext, "10.97.0.2") == a.ips(4)[0]
        assert tcp_roundtrip(a.ns, node.ext, node.ext_ip4) == node.node_ip4  # not excluded
        assert tcp_roundtrip(a.ns, b.ns, b.ips(4)[0]) == a.ips(4)[0]
        assert tcp_roundtrip(a.ns, node.ns, node.node_ip4, port=8082) == a.ips(4)[0]
        nat = en.inspect()["nat"]
        assert [r["dst"].split(":")[0] for r in nat] == [node.ext_ip4]


def test_reply_miss_goes_to_the_stack(en: DataplaneNode) -> None:
    # The node's own connection to ext (no NAT entry) and ext's connection to a node
    # service on a port inside the SNAT range must both pass ferry_snat_in untouched.
    node = en.node
    assert tcp_roundtrip(node.ns, node.ext, node.ext_ip4, port=8083) == node.node_ip4
    assert tcp_roundtrip(node.ext, node.ns, node.node_ip4, port=62000) == node.ext_ip4


def test_del_removes_the_pods_dataplane_state(en: DataplaneNode) -> None:
    pods = [en.add_pod(f"del-{i}") for i in range(2)]
    with recorder(en.node.ext, "udp", en.node.ext_ip4, 8084) as srv:
        for p in pods:
            client(p.ns, "udp", en.node.ext_ip4, 8084)
        seen(srv, 2)
    before = en.inspect()
    assert len(before["pods"]) == 4 and len(before["nat"]) == 2  # dual-stack pods
    for p in pods:
        en.node.cni("DEL", p, en.conf).ok()
        en.node.cni("DEL", p, en.conf).ok()  # idempotent
    after = en.inspect()
    assert after["pods"] == [] and after["nat"] == [] and after["redirects"] == []
    assert after["loaded"] is True  # the node-level state stays for the next pod


def test_del_leaves_no_entry_filter_or_pin_of_the_pod(ebpf_en: DataplaneNode) -> None:
    en = ebpf_en
    pods = [en.add_pod(f"gone-{i}") for i in range(2)]
    with recorder(en.node.ext, "udp", en.node.ext_ip4, 8084) as srv:
        for p in pods:
            client(p.ns, "udp", en.node.ext_ip4, 8084)
        seen(srv, 2)
    before = en.inspect()
    # one row per pod address: dual-stack pods, both families' endpoints
    assert len(before["pods"]) == 4 and len(before["nat"]) == 2
    pin_files = sorted(_walk(en.pin_dir))
    for p in pods:
        en.node.cni("DEL", p, en.conf).ok()
    after = en.inspect()
    assert after["pods"] == [] and after["nat"] == [] and after["redirects"] == []
    for name in ("ferry_endpoints", "ferry_nat_fwd", "ferry_nat_rev", "ferry_redirect",
                 "ferry_endpoint6", "ferry_nat_fwd6", "ferry_nat_rev6"):
        # bpftool in the host namespaces: `ip netns exec` would mount a /sys without bpffs.
        dump = sh("bpftool", "-j", "map", "dump", "pinned", f"{en.pin_dir}/maps/{name}")
        assert json.loads(dump) == [], f"{name} still holds {dump}"
    assert sorted(_walk(en.pin_dir)) == pin_files  # node-level pins only, none per pod
    links = en.node.ns.ip("-o", "link", "show")
    assert "fry" not in links  # host veths gone, and their filters with them
    assert after["filters"]["uplink0"] == {"ingress": ["ferry_snat_in"],
                                          "egress": ["ferry_snat_eg"]}


def _walk(root: str) -> list[str]:
    return [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]


def test_gc_expires_idle_flows_only(en: DataplaneNode) -> None:
    pod = en.add_pod("gc")
    with recorder(en.node.ext, "udp", en.node.ext_ip4, 8085) as srv:
        client(pod.ns, "udp", en.node.ext_ip4, 8085, flows=3)
        seen(srv, 3)
    assert len(en.inspect()["nat"]) == 3
    kept = json.loads(en.ctl("gc", "--json", "--idle", "3600").stdout)
    assert kept["expired"] == 0 and len(en.inspect()["nat"]) == 3
    gone = json.loads(en.ctl("gc", "--json", "--idle", "0").stdout)
    assert gone["expired"] == 3 and en.inspect()["nat"] == []


def test_gc_empties_both_nat_maps(ebpf_en: DataplaneNode) -> None:
    pod = ebpf_en.add_pod("gc-maps")
    with recorder(ebpf_en.node.ext, "udp", ebpf_en.node.ext_ip4, 8086) as srv:
        client(pod.ns, "udp", ebpf_en.node.ext_ip4, 8086, flows=2)
        seen(srv, 2)
    ebpf_en.ctl("gc", "--idle", "0")
    for name in ("ferry_nat_fwd", "ferry_nat_rev"):
        dump = sh("bpftool", "-j", "map", "dump", "pinned", f"{ebpf_en.pin_dir}/maps/{name}")
        assert json.loads(dump) == [], f"{name} still holds {dump}"


TCX_NAMES = r"""
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from plugin.dataplane.tc import tcx_programs
print(json.dumps([name for _, name in tcx_programs(socket.if_nametoindex("uplink0"), sys.argv[2])]))
"""


def tcx_names(dp: DataplaneNode, direction: str) -> list[str]:
    """The programs on uplink0's tcx hook (BPF_PROG_QUERY: Debian 12's bpftool 7.1 predates
    tcx; the traffic below is what shows that they run)."""
    root = str(Path(__file__).resolve().parents[2])
    return json.loads(subprocess.run(
        ["nsenter", f"--net={dp.node.ns.path}", sys.executable, "-c", TCX_NAMES, root,
         direction], capture_output=True, text=True, check=True).stdout)


def test_tcx_hook_translates_and_switches_with_clsact_without_a_gap_or_a_leftover() -> None:
    # tcAttach tcx: the SNAT programs on the uplink's tcx hooks, none under clsact; a reload
    # with clsact moves them there and off tcx (and back); unload leaves neither.
    with ebpf_node(tcAttach="tcx") as dp:
        def hooks() -> dict[str, list[str]]:
            return {"tcx": tcx_names(dp, "egress") + tcx_names(dp, "ingress"),
                    "clsact": [n for n in ("ferry_snat_eg", "ferry_snat_in")
                               if n in tc_show(dp.node.ns, "uplink0", "egress")
                               + tc_show(dp.node.ns, "uplink0", "ingress")]}

        assert hooks() == {"tcx": ["ferry_snat_eg", "ferry_snat_in"], "clsact": []}
        pod = dp.add_pod("tcx")
        for proto, port in (("tcp", 8090), ("udp", 8091)):
            with recorder(dp.node.ext, proto, dp.node.ext_ip4, port) as srv:
                client(pod.ns, proto, dp.node.ext_ip4, port)
                [(src, sport)] = seen(srv, 1)
            assert src == dp.node.node_ip4 and in_range(sport), proto
        assert dp.inspect()["filters"]["uplink0"] == {"ingress": ["ferry_snat_in"],
                                                    "egress": ["ferry_snat_eg"]}
        assert dp.load()["tcAttach"] == "tcx"  # a reload replaces in place: still one each
        assert hooks() == {"tcx": ["ferry_snat_eg", "ferry_snat_in"], "clsact": []}
        for hook in ("clsact", "tcx"):
            dp.conf_path.write_text(json.dumps({**dp.conf, "tcAttach": hook}))
            assert dp.load()["tcAttach"] == hook
            want = ["ferry_snat_eg", "ferry_snat_in"]
            assert hooks() == {"tcx": want if hook == "tcx" else [],
                               "clsact": want if hook == "clsact" else []}
            seen_as = tcp_roundtrip(pod.ns, dp.node.ext, dp.node.ext_ip4, 8092)
            assert seen_as == dp.node.node_ip4, hook
        dp.ctl("unload")
        assert hooks() == {"tcx": [], "clsact": []}
