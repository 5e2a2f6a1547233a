"""Pod-ENI redirection: a pod given its own uplink device (a second veth from the node to the
'ext' namespace, the "VPC") sends and receives through it with its own IP, unSNATed, while
other pods keep leaving via the uplink with the node IP. In every mode of MODES; the tc
filters behind it are checked by the eBPF-only test."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from dataplane_support import (
    ENI_GW,
    ENI_NODE,
    MODES,
    DataplaneNode,
    add_eni,
    arrivals,
    client,
    dataplane_node,
    recorder,
    tc_show,
)
from harness import ping

from loader.probes import PRETEND_ENV

# eBPF on a kernel without bpf_redirect_peer: SNAT in eBPF, pod ENIs by policy routing. Such a
# kernel cannot run here; the probe is told to report the helper missing (PRETEND_ENV).
ROUTED_ENI = "ebpf-routed-eni"


@pytest.fixture(params=[*MODES, ROUTED_ENI])
def en(request: pytest.FixtureRequest) -> Iterator[DataplaneNode]:
    routed = request.param == ROUTED_ENI
    env = {PRETEND_ENV: "redirect_peer"} if routed else None
    with dataplane_node("ebpf" if routed else request.param, env=env) as n:
        node = n.node
        add_eni(node)
        yield n


def test_pod_eni_sends_and_receives_through_its_device(en: DataplaneNode) -> None:
    node = en.node
    eni_pod = en.add_pod("branch", runtimeConfig={"podENI": {"device": "eni1",
                                                             "gateway": ENI_GW}})
    plain = en.add_pod("plain")
    pod_ip = eni_pod.ips(4)[0]
    # The VPC knows the branch ENI's address: replies to it go back over vpc1 only.
    node.ext.ip("route", "add", f"{pod_ip}/32", "via", ENI_NODE, "dev", "vpc1")

    with recorder(node.ext, "tcp", node.ext_ip4, 8090) as srv:
        client(eni_pod.ns, "tcp", node.ext_ip4, 8090)
        client(plain.ns, "tcp", node.ext_ip4, 8090)
        (src_eni, _, dev_eni), (src_plain, _, dev_plain) = arrivals(srv, 2)
    assert (src_eni, dev_eni) == (pod_ip, "vpc1"), "SNATed, or left via the uplink"
    assert (src_plain, dev_plain) == (node.node_ip4, "ext0")
    with recorder(node.ext, "udp", node.ext_ip4, 8091) as srv:
        client(eni_pod.ns, "udp", node.ext_ip4, 8091, flows=5)
        assert {(s, d) for s, _, d in arrivals(srv, 5)} == {(pod_ip, "vpc1")}
    with recorder(node.ext, "icmp", "0.0.0.0") as srv:
        assert ping(eni_pod.ns, node.ext_ip4, count=1)
        assert [(s, d) for s, _, d in arrivals(srv, 1)] == [(pod_ip, "vpc1")]
    info = en.inspect()
    [redirect] = info["redirects"]
    assert redirect["ip"] == pod_ip and redirect["eni"] == "eni1"
    assert redirect["gateway"] == ENI_GW
    assert not [r for r in info["nat"] if r["pod"].startswith(pod_ip + ":")]

    # DEL finds the ENI from the attachment record (no podENI in the DEL's config).
    en.node.cni("DEL", eni_pod, en.conf).ok()
    info = en.inspect()
    assert info["redirects"] == [] and pod_ip not in [p["ip"] for p in info["pods"]]


@pytest.mark.parametrize("en", ["ebpf"], indirect=True)  # the tc filters are eBPF's
def test_ebpf_pod_eni_filters_come_and_go(en: DataplaneNode) -> None:
    node = en.node
    pod = en.add_pod("branch-tc", runtimeConfig={"podENI": {"device": "eni1",
                                                           "gateway": ENI_GW}})
    assert "ferry_eni_in" in tc_show(node.ns, "eni1", "ingress")
    host_veth = pod.result["interfaces"][0]["name"]  # type: ignore[index]
    assert "ferry_eni_eg" in tc_show(node.ns, host_veth, "ingress")
    en.node.cni("DEL", pod, en.conf).ok()
    assert "ferry" not in tc_show(node.ns, "eni1", "ingress")
    assert "clsact" not in node.ns.run("tc", "qdisc", "show", "dev", "eni1")


def test_pod_eni_by_cni_args_and_missing_device(en: DataplaneNode) -> None:
    node = en.node
    pod = node.new_pod("by-args")
    args = f"{pod.args};FERRY_POD_ENI=eni1;FERRY_POD_ENI_GW={ENI_GW}"
    pod.result = node.cni("ADD", pod, en.conf, args=args).ok()
    assert [r["eni"] for r in en.inspect()["redirects"]] == ["eni1"]
    node.cni("DEL", pod, en.conf, args=args).ok()
    assert en.inspect()["redirects"] == []
    bad = node.new_pod("no-eni")
    err = node.cni("ADD", bad, {**en.conf, "runtimeConfig": {"podENI": {"device": "eni9"}}})
    assert "eni9" in err.error(7)["msg"]
    assert en.inspect()["pods"] == []


@pytest.mark.parametrize("en", [ROUTED_ENI], indirect=True)
def test_missing_redirect_helper_routes_pod_enis_and_says_why(en: DataplaneNode) -> None:
    node = en.node
    loaded = en.load()  # the pins are reused; the summary still says how pod ENIs go
    assert "bpf_redirect_peer" in loaded["podENI"] and "policy routing" in loaded["podENI"]
    info = en.inspect()
    assert info["features"]["bpf_redirect_peer"] is False
    assert info["podENIMode"] == loaded["podENI"]
    assert set(info["progIds"]) == {"ferry_snat_eg", "ferry_snat_in"}  # SNAT stays eBPF
    pod = en.add_pod("routed", runtimeConfig={"podENI": {"device": "eni1", "gateway": ENI_GW}})
    pod_ip = pod.ips(4)[0]
    assert "ferry" not in tc_show(node.ns, "eni1", "ingress")
    assert f"from {pod_ip} lookup" in node.ns.ip("rule", "show")
    en.node.cni("DEL", pod, en.conf).ok()
    assert f"from {pod_ip} " not in node.ns.ip("rule", "show")


def test_pod_eni_add_and_del_use_one_netlink_layer(en: DataplaneNode) -> None:
    """A pod-ENI pod's standalone ADD and DEL (wiring, the dataplane's attach and detach, node
    discovery) speak netlink through plugin/rtnl.py only: the process never imports pyroute2.
    The record keeps the MACs wiring made, and the eBPF redirect carries those."""
    node = en.node
    seen = node.tmp / "pyroute2-imported"
    wrapper = node.tmp / "ferry-watched"
    wrapper.write_text(
        f"#!{sys.executable} -I\nimport atexit, sys\n"
        f"atexit.register(lambda: open({str(seen)!r}, 'a').write("
        "str('pyroute2' in sys.modules) + '\\n'))\n"
        "from plugin.cli import main\nmain()\n")
    wrapper.chmod(0o700)
    conf = {**en.conf, "agentSocket": str(node.tmp / "no-agent.sock"),
            "runtimeConfig": {"podENI": {"device": "eni1", "gateway": ENI_GW}}}
    pod = node.new_pod("one-layer")
    pod.result = node.cni("ADD", pod, conf, plugin=str(wrapper)).ok()
    host_itf, pod_itf = pod.result["interfaces"][:2]
    [record] = (node.tmp / "state" / node.network).glob("*.json")
    saved = json.loads(record.read_text())
    assert (saved["host_mac"], saved["pod_mac"]) == (host_itf["mac"], pod_itf["mac"])
    info = en.inspect()
    [redirect] = info["redirects"]
    if info.get("podENIMode") == "ebpf":  # eBPF's redirect map holds MACs; routing has none
        assert (redirect["hostMAC"], redirect["podMAC"]) == (host_itf["mac"], pod_itf["mac"])
    node.cni("DEL", pod, conf, plugin=str(wrapper)).ok()
    assert en.inspect()["redirects"] == []
    assert seen.read_text().split() == ["False", "False"]
