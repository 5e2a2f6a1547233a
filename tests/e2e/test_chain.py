"""ferry as the first plugin of a chain, followed by the reference `tuning` plugin, driven
the way libcni drives a conflist (chain_runtime.Runtime)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chain_runtime import ChainError, Runtime
from harness import (
    Node,
    Pod,
    ping,
    snapshot_diff,
    tcp_roundtrip,
)

TUNING_VERSIONS = ["0.4.0", "1.0.0"]  # CHECK needs 0.4.0; the reference tuning stops at 1.0.0
SYSCTLS = {
    # per-interface sysctls that exist in every network namespace; defaults 0 and 1
    "net.ipv4.conf.eth0.log_martians": "1",
    "net.ipv6.conf.eth0.accept_ra": "0",
}


def conflist(node: Node, version: str, sysctl: dict[str, str] | None = None) -> dict[str, Any]:
    ferry = node.conf(version)
    for key in ("cniVersion", "name"):  # the conflist carries them, not the plugin entries
        del ferry[key]
    return {"cniVersion": version, "name": node.network,
            "plugins": [ferry, {"type": "tuning", "sysctl": sysctl or SYSCTLS}]}


def in_service(node: Node) -> tuple[Pod, dict[str, str]]:
    """A node already running a pod of this network (forwarding on, IPAM and state dirs
    there), and its snapshot: what a chain's ADD then DEL must leave exactly as it was."""
    base = node.add_pod("baseline")
    return base, node.snapshot()


def assert_unchanged(node: Node, before: dict[str, str], base: Pod) -> None:
    diff = snapshot_diff(before, node.snapshot())
    assert not diff, f"the node changed:\n{diff}"
    assert ping(base.ns, node.ext_ip4), "the baseline pod lost its connectivity"


def sysctl(pod: Pod, key: str) -> str:
    return pod.ns.run("sysctl", "-n", key).strip()


def pod_links(pod: Pod) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(pod.ns.ip("-j", "link", "show")))


def held_ips(node: Node) -> list[str]:
    d = node.tmp / "ipam" / node.network
    return sorted(p.name for p in d.iterdir()
                  if p.name[0].isdigit() or ":" in p.name) if d.is_dir() else []


@pytest.mark.parametrize("version", TUNING_VERSIONS)
def test_ferry_then_tuning(node: Node, version: str) -> None:
    rt = Runtime(node, conflist(node, version))
    base, before = in_service(node)
    a, b = node.new_pod("chain-a"), node.new_pod("chain-b")

    final_a = rt.add(a)
    rt.add(b)
    assert final_a["cniVersion"] == version
    # The chain's result keeps what ferry answered (tuning has no mac/mtu to change here).
    ferry_result = rt.steps[a.container_id][0]
    host, cont = ferry_result["interfaces"]
    assert host["name"].startswith("fry") and "sandbox" not in host
    assert (cont["name"], cont["sandbox"]) == ("eth0", a.ns.path)
    assert len(ferry_result["ips"]) == 2
    for key in ("interfaces", "ips", "routes"):
        assert final_a[key] == ferry_result[key], key
    # ...and that is what the pod really has.
    addrs = json.loads(a.ns.ip("-j", "addr", "show", "dev", "eth0"))[0]["addr_info"]
    assert {f"{x['local']}/{x['prefixlen']}" for x in addrs if x["scope"] == "global"} == \
        {ip["address"] for ip in final_a["ips"]}

    # tuning did its part inside the pod.
    for key, value in SYSCTLS.items():
        assert sysctl(a, key) == value
    assert sysctl(a, "net.ipv4.conf.default.log_martians") == "0"  # i.e. it was changed

    # The chained pods work.
    assert ping(a.ns, b.ips(4)[0]) and ping(b.ns, a.ips(6)[0])
    assert tcp_roundtrip(a.ns, node.ext, node.ext_ip4) == a.ips(4)[0]

    for plugin, call in rt.check(a) + rt.check(b):
        assert call.rc == 0, f"CHECK of {plugin}: {call.stdout} {call.stderr}"

    rt.delete(a)
    rt.delete(b)
    assert pod_links(a) == ["lo"] and pod_links(b) == ["lo"]
    assert len(held_ips(node)) == 2  # the baseline pod's
    assert_unchanged(node, before, base)


def test_chain_check_runs_every_plugin(node: Node) -> None:
    """CHECK of the list reaches tuning too: a drifted sysctl fails tuning's CHECK, while
    ferry's own CHECK of the same pod still passes."""
    rt = Runtime(node, conflist(node, "1.0.0"))
    pod = node.new_pod()
    rt.add(pod)
    pod.ns.run("sysctl", "-q", "-w", "net.ipv4.conf.eth0.log_martians=0")
    results = dict(rt.check(pod))
    assert results["ferry"].rc == 0, results["ferry"].stdout
    assert results["tuning"].rc != 0
    assert "log_martians" in results["tuning"].stdout
    rt.delete(pod)
    assert pod_links(pod) == ["lo"] and held_ips(node) == []


def test_second_plugin_fails_then_runtime_dels(node: Node) -> None:
    """tuning fails after ferry wired the pod; the runtime (kubelet/CRI) then DELs the list
    without a cached result. ferry must find and remove everything by container id."""
    rt = Runtime(node, conflist(node, "1.0.0", {"net.ipv4.conf.eth0.no_such_knob": "1"}))
    base, before = in_service(node)
    pod = node.new_pod()
    with pytest.raises(ChainError) as failed:
        rt.add(pod)
    assert failed.value.plugin == "tuning"
    assert pod_links(pod) == ["eth0", "lo"]  # ferry's part is in place until the DEL
    assert len(held_ips(node)) == 4
    rt.delete(pod)
    assert pod_links(pod) == ["lo"]
    assert len(held_ips(node)) == 2
    assert_unchanged(node, before, base)
