"""ferry-egress end to end: a conflist of a main plugin (ferry, or the reference ptp) then
ferry-egress, run by chain_runtime.Runtime in a harness Node whose 'ext' host has no route to
any pod range (so it can only answer packets that left with the node's address).

egress-v4: an IPv6-only pod reaches the ext host's IPv4 through v4if0 (169.254.172.0/22) and
is seen there as the node's IPv4; egress-v6 is the mirror for an IPv4-only pod (v6if0,
fd00::ac:0/118, seen as the node's IPv6).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from chain_runtime import Runtime
from dataplane_support import MODES, DataplaneNode, dataplane_node
from harness import FERRY, Node, Pod, exec_plugin, snapshot_diff, tcp_roundtrip

EGRESS = FERRY.replace("/ferry", "/ferry-egress")
RANGES = {4: "169.254.172.0/22", 6: "fd00::ac:0/118"}
IFNAMES = {4: "v4if0", 6: "v6if0"}


@dataclass
class Chain:
    en: DataplaneNode
    rt: Runtime
    family: int  # the egress family; the pod's own is the other one
    conflist_path: str

    @property
    def node(self) -> Node:
        return self.en.node

    def egress(self) -> dict[str, Any]:
        return self.rt.conflist["plugins"][-1]

    def exec_egress(self, command: str, pod: Pod, prev: dict[str, Any] | None,
                    **changes: Any) -> Any:
        conf = {**self.egress(), "name": self.rt.conflist["name"],
                "cniVersion": self.rt.conflist["cniVersion"], **changes}
        if prev is not None:
            conf["prevResult"] = prev
        return self.node.cni(command, pod, conf, plugin=EGRESS)

    def snapshot(self) -> dict[str, str]:
        """Node.snapshot() plus the netfilter tables and the dataplane's pinned entries."""
        snap = self.node.snapshot()
        for tool in ("iptables-save", "ip6tables-save"):
            # Counters move with any traffic; the rules are what must not change.
            snap[tool] = re.sub(r"\[\d+:\d+\]", "", self.node.ns.run(tool))
            snap[tool] = "\n".join(x for x in snap[tool].splitlines() if not x.startswith("#"))
        info = self.en.inspect()
        for row in info["nat"]:
            row.pop("idleSeconds")  # moves with time, not with what DEL does
        snap["pinned"] = json.dumps({k: info.get(k) for k in ("pods", "nat", "redirects")},
                                    sort_keys=True, indent=1)
        return snap


def main_entry(node: Node, main: str, pod_family: int, mode: str, root: str) -> dict[str, Any]:
    cidr = node.pod_cidr4 if pod_family == 4 else node.pod_cidr6
    if main == "ptp":
        return {"type": "ptp", "mtu": 1400, "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": cidr}]],
                         "routes": [{"dst": "0.0.0.0/0" if pod_family == 4 else "::/0"}],
                         "dataDir": str(node.tmp / "ipam")}}
    conf = node.conf(dataplane=mode, nodeIP=node.node_ip4, bpffsRoot=root, uplink="uplink0",
                     ipam={"ranges": [[{"subnet": cidr}]]})
    for key in ("cniVersion", "name"):
        del conf[key]
    return conf


def egress_entry(node: Node, family: int, mode: str, root: str) -> dict[str, Any]:
    return {"type": "ferry-egress", "enabled": "true", "mtu": "1400",
            "nodeIP": node.node_ip4 if family == 4 else node.node_ip6,
            "randomizeSNAT": "prng", "dataplane": mode, "bpffsRoot": root, "uplink": "uplink0",
            "stateDir": str(node.tmp / "state"),
            "log": {"file": str(node.tmp / "log" / "egress.log"), "level": "debug"},
            "ipam": {"type": "host-local", "ranges": [[{"subnet": RANGES[family]}]],
                     "routes": [{"dst": "0.0.0.0/0" if family == 4 else "::/0"}],
                     "dataDir": str(node.tmp / "egress-ipam")}}


@contextlib.contextmanager
def chain(mode: str, family: int, main: str = "ferry", version: str = "1.0.0") -> Iterator[Chain]:
    """A node with the conflist <main> + ferry-egress written to a file and the dataplane
    loaded from that file by `ferryctl load --config` (its first ferry* entry)."""
    with dataplane_node(mode, load=False) as en:
        node = en.node
        pod_family = 10 - family
        conflist = {"cniVersion": version, "name": node.network,
                    "plugins": [main_entry(node, main, pod_family, mode, en.root),
                                egress_entry(node, family, mode, en.root)]}
        path = node.tmp / "egress.conflist"
        path.write_text(json.dumps(conflist))
        en.conf_path = path
        en.load()
        yield Chain(en=en, rt=Runtime(node, conflist), family=family, conflist_path=str(path))


def in_service(c: Chain) -> tuple[Pod, dict[str, str]]:
    """A baseline pod through the whole chain, with egress traffic (forwarding sysctls on,
    IPAM and state dirs made, NAT entries of its own), then the node's snapshot: what another
    pod's ADD then DEL must leave exactly as it was."""
    base = c.node.new_pod("baseline")
    c.rt.add(base)
    assert_egress_works(c, base)
    return base, c.snapshot()


def route_dev(pod: Pod, dst: str) -> str:
    return json.loads(pod.ns.ip("-j", "route", "get", dst))[0]["dev"]


def pod_links(pod: Pod) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(pod.ns.ip("-j", "link", "show")))


def held(node: Node, data_dir: str) -> list[str]:
    """The IPs reserved in a host-local dataDir of the node's network."""
    d = node.tmp / data_dir / node.network
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name) \
        if d.is_dir() else []


def egress_ips(node: Node) -> list[str]:
    return held(node, "egress-ipam")


def assert_egress_works(c: Chain, pod: Pod) -> None:
    node, fam = c.node, c.family
    ext_ip = node.ext_ip4 if fam == 4 else node.ext_ip6
    node_ip = node.node_ip4 if fam == 4 else node.node_ip6
    other_ext = node.ext_ip6 if fam == 4 else node.ext_ip4
    # The egress family leaves through the egress veth, the pod's own family stays on eth0.
    assert route_dev(pod, ext_ip) == IFNAMES[fam]
    assert route_dev(pod, other_ext) == "eth0"
    assert tcp_roundtrip(pod.ns, node.ext, ext_ip) == node_ip


def assert_result(c: Chain, pod: Pod, result: dict[str, Any]) -> None:
    main = c.rt.steps[pod.container_id][0]
    # prevResult plus the egress veth's two interfaces; its IP and routes are not reported.
    assert result["ips"] == main["ips"] and result.get("routes") == main.get("routes")
    assert result["interfaces"][:-2] == main["interfaces"]
    host, cont = result["interfaces"][-2:]
    assert "sandbox" not in host and host["name"].startswith("fry")
    assert (cont["name"], cont["sandbox"]) == (IFNAMES[c.family], pod.ns.path)
    addrs = json.loads(pod.ns.ip("-j", "addr", "show", "dev", IFNAMES[c.family]))[0]
    mine = [a["local"] for a in addrs["addr_info"] if a["scope"] == "global"]
    assert len(mine) == 1
    assert ipaddress.ip_address(mine[0]) in ipaddress.ip_network(RANGES[c.family])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", [4, 6], ids=["egress-v4", "egress-v6"])
def test_egress_after_ferry(mode: str, family: int) -> None:
    with chain(mode, family) as c:
        base, before = in_service(c)

        pod = c.node.new_pod("egress-a")
        result = c.rt.add(pod)
        assert_result(c, pod, result)
        assert_egress_works(c, pod)
        assert set(held(c.node, "egress-ipam")) <= {p["ip"] for p in c.en.inspect()["pods"]}

        for plugin, call in c.rt.check(pod):
            assert call.rc == 0, f"CHECK of {plugin}: {call.stdout} {call.stderr}"

        c.rt.delete(pod)
        assert pod_links(pod) == ["lo"]
        assert len(egress_ips(c.node)) == 1
        assert not (d := snapshot_diff(before, c.snapshot())), d
        assert_egress_works(c, base)


@pytest.mark.parametrize("mode", MODES)
def test_egress_after_reference_ptp(mode: str) -> None:
    """The egress plugin does not need ferry's main plugin: ptp wires eth0 (IPv6 only),
    ferry-egress adds IPv4 egress, and `ferryctl load` took the ferry-egress entry."""
    with chain(mode, 4, main="ptp") as c:
        pod = c.node.new_pod("ptp-egress")
        result = c.rt.add(pod)
        assert [i["name"] for i in result["interfaces"]][-1] == "v4if0"
        assert_egress_works(c, pod)
        for plugin, call in c.rt.check(pod):
            assert call.rc == 0, f"CHECK of {plugin}: {call.stdout} {call.stderr}"
        c.rt.delete(pod)
        assert pod_links(pod) == ["lo"] and egress_ips(c.node) == []
        assert c.en.inspect()["pods"] == []


@pytest.mark.parametrize("enabled", ["false", False])
def test_disabled_passes_prev_result_through(enabled: str | bool) -> None:
    with chain("ebpf", 4, version="0.4.0") as c:
        _, before = in_service(c)
        held_before = egress_ips(c.node)
        c.egress()["enabled"] = enabled
        del c.egress()["nodeIP"]  # a disabled entry need not be complete (AWS writes "")
        pod = c.node.new_pod()
        result = c.rt.add(pod)
        # Unchanged, in the 0.4.0 shape (ips carry "version").
        assert result == c.rt.steps[pod.container_id][0]
        assert all(ip["version"] == "6" for ip in result["ips"])
        assert pod_links(pod) == ["eth0", "lo"]
        assert egress_ips(c.node) == held_before
        for plugin, call in c.rt.check(pod):
            assert call.rc == 0, f"CHECK of {plugin}: {call.stdout}"
        c.rt.delete(pod)
        assert not (d := snapshot_diff(before, c.snapshot())), d


def test_dual_stack_pod_is_passed_through() -> None:
    """A pod that has the egress family already keeps its routes: no second default."""
    with chain("ebpf", 4) as c:
        pod = c.node.new_pod()
        prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": pod.ns.path}],
                "ips": [{"address": "10.20.0.9/24", "interface": 0}], "dns": {}}
        out = c.exec_egress("ADD", pod, prev).ok()
        assert out["interfaces"] == prev["interfaces"] and out["ips"] == prev["ips"]
        assert pod_links(pod) == ["lo"] and egress_ips(c.node) == []


def test_bad_inputs_change_nothing() -> None:
    with chain("ebpf", 4) as c:
        pod, before = in_service(c)
        prev = c.rt.cache[pod.container_id]
        fresh = c.node.new_pod()
        err = c.exec_egress("ADD", fresh, None).error(7)
        assert "chained" in err["msg"] and "prevResult" in err["details"]
        # egress-v6 with a link-local nodeIP: refused before anything is touched.
        v6 = egress_entry(c.node, 6, "ebpf", c.en.root)
        err = c.exec_egress("ADD", fresh, prev, **{**v6, "nodeIP": "fe80::1"}).error(7)
        assert "nodeIP fe80::1 is not a global unicast IPv6" in err["msg"]
        err = c.exec_egress("ADD", fresh, prev, **{**v6, "nodeIP": c.node.node_ip4}).error(7)
        assert "not IPv6" in err["msg"]
        err = c.exec_egress("ADD", fresh, prev, enabled="maybe").error(7)
        assert "enabled" in err["msg"]
        # CHECK of a container ferry-egress never saw.
        c.exec_egress("CHECK", fresh, prev).error()
        assert pod_links(fresh) == ["lo"]
        assert not (d := snapshot_diff(before, c.snapshot())), d


@pytest.mark.parametrize("mode", MODES)
def test_del_is_idempotent_and_works_with_the_netns_gone(mode: str) -> None:
    with chain(mode, 4) as c:
        base, before = in_service(c)
        pod = c.node.new_pod()
        c.rt.add(pod)
        assert_egress_works(c, pod)
        pod.ns.delete()  # the container died: the runtime DELs without a netns
        for _ in range(2):
            for p in reversed(c.rt.conflist["plugins"]):
                conf = {**p, "name": c.rt.conflist["name"], "cniVersion": "1.0.0"}
                exec_plugin(FERRY if p["type"] == "ferry" else EGRESS, "DEL", conf,
                            node=c.node.ns, container_id=pod.container_id, netns="",
                            args=pod.args).ok()
        assert not (d := snapshot_diff(before, c.snapshot())), d
        assert_egress_works(c, base)


def test_check_sees_a_missing_egress_route() -> None:
    with chain("ebpf", 4) as c:
        pod = c.node.new_pod()
        c.rt.add(pod)
        pod.ns.ip("route", "del", "default")
        results = dict(c.rt.check(pod))
        assert results["ferry"].rc == 0, results["ferry"].stdout
        err = results["ferry-egress"].error(103)
        assert "0.0.0.0/0" in err["details"]
        c.rt.delete(pod)


def test_gc_removes_the_egress_of_unlisted_containers() -> None:
    with chain("ebpf", 4, version="1.1.0") as c:
        keep, gone = c.node.new_pod("keep"), c.node.new_pod("gone")
        c.rt.add(keep)
        c.rt.add(gone)
        valid = [{"containerID": keep.container_id, "ifname": "eth0"}]
        c.exec_egress("GC", keep, None, **{"cni.dev/valid-attachments": valid}).ok()
        assert pod_links(gone) == ["eth0", "lo"]  # ferry's own part is ferry's GC's business
        assert pod_links(keep) == ["eth0", "lo", "v4if0"]
        assert len(egress_ips(c.node)) == 1
        pods = {p["ip"] for p in c.en.inspect()["pods"]}
        assert {ip for ip in pods if ":" not in ip} == set(egress_ips(c.node))
        assert_egress_works(c, keep)
        c.exec_egress("STATUS", keep, None).ok()
