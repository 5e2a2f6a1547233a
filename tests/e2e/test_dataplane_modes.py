"""The iptables dataplane at node level: idempotent load, switching a node between ebpf and
iptables cleans up the other mode, and after DEL of every pod (and after unload) netfilter
and the policy routing rules are byte for byte what they were, with either iptables back end."""

from __future__ import annotations

import json
import os

import pytest
from dataplane_support import (
    ENI_GW,
    add_eni,
    client,
    dataplane_node,
    netfilter_state,
    recorder,
    seen,
)
from harness import Netns


def _chains(ns: Netns) -> str:
    return ns.run("iptables-save") + ns.run("ip6tables-save")


def test_load_twice_is_one_chain_and_one_jump() -> None:
    with dataplane_node("iptables") as dp:
        first = netfilter_state(dp.node.ns)
        again = dp.load()
        assert again["backend"] == "nft" and again["dataplane"] == "iptables"
        assert netfilter_state(dp.node.ns) == first
        assert first["iptables-nft-save"].count("-j FERRY-POSTROUTING") == 1


def test_switching_modes_removes_the_other_modes_state() -> None:
    with dataplane_node("iptables", load=False) as dp:
        pod = dp.add_pod("switch")  # iptables needs no load: the ADD creates its chains
        assert "FERRY-POSTROUTING" in _chains(dp.node.ns)
        ebpf = {**dp.conf, "dataplane": "ebpf"}
        dp.conf_path.write_text(json.dumps(ebpf))
        out = dp.load()
        assert out["synced"] == 1
        assert "FERRY" not in _chains(dp.node.ns)
        assert "ferry_snat_eg" in dp.node.ns.run("tc", "filter", "show", "dev", "uplink0",
                                                 "egress")
        with recorder(dp.node.ext, "tcp", dp.node.ext_ip4, 8070) as srv:
            client(pod.ns, "tcp", dp.node.ext_ip4, 8070)
            [(src, _)] = seen(srv, 1)
        assert src == dp.node.node_ip4  # translated once, by eBPF
        dp.conf_path.write_text(json.dumps(dp.conf))  # back to iptables
        out = dp.load()
        assert out["ebpfRemoved"] is True and out["synced"] == 1
        assert not os.path.exists(dp.pin_dir)
        assert "ferry" not in dp.node.ns.run("tc", "filter", "show", "dev", "uplink0",
                                             "egress")
        assert [p["ip"] for p in dp.inspect()["pods"]] == pod.ips(4) + pod.ips(6)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_del_and_unload_restore_netfilter_and_rules_byte_for_byte(backend: str) -> None:
    with dataplane_node("iptables", load=False) as dp:
        ns = dp.node.ns
        if backend == "legacy":
            # A node whose existing rules live in legacy tables: ferry must join them there.
            ns.run("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-d", "10.55.0.0/16",
                   "-j", "RETURN")
            ns.run("ip6tables-legacy", "-t", "nat", "-A", "POSTROUTING", "-d", "fd55::/16",
                   "-j", "RETURN")
        add_eni(dp.node)
        before_load = netfilter_state(ns)
        assert dp.load()["backend"] == backend
        before_add = netfilter_state(ns)
        eni = {"runtimeConfig": {"podENI": {"device": "eni1", "gateway": ENI_GW}}}
        pods = [dp.add_pod(f"bytes-{i}", **(eni if i == 0 else {})) for i in range(3)]
        during = netfilter_state(ns)
        other = "legacy" if backend == "nft" else "nft"
        assert during[f"iptables-{other}-save"] == before_add[f"iptables-{other}-save"]
        assert during[f"iptables-{backend}-save"].count("-j SNAT") == 3 * 3
        assert "lookup" in during["ip rule"] and during["ip rule"] != before_add["ip rule"]
        for pod in pods:
            dp.node.cni("DEL", pod, dp.conf).ok()
        assert netfilter_state(ns) == before_add
        for pod in pods:  # DEL is idempotent
            dp.node.cni("DEL", pod, dp.conf).ok()
        assert netfilter_state(ns) == before_add
        dp.ctl("unload")
        assert netfilter_state(ns) == before_load
