"""The orders in which kubelet and the runtimes call ferry for one pod's sandboxes, each leaving
the newest sandbox fully working and the old one's resources released; standalone and
through ferryd, and for ferry-egress's veth.

Every sandbox of a pod shares the host veth name (prefix + sha1("<ns>.<pod>")), so a DEL
may only remove a link that carries its own owner tag (IFLA_IFALIAS), never one by name.
The orders, as containerd 1.6 and kubelet produce them:
- re-create: DEL(old), ADD(new), DEL(old) again with CNI_NETNS="" (RemovePodSandbox), or
  with the old netns path, or with libcni's cached prevResult of the old sandbox;
- ADD(new) while the old sandbox is still attached (kubelet after a runtime restart): the
  new sandbox takes the name over (as the AWS VPC CNI and Calico delete the old host veth);
- DEL of an id never seen carrying a live pod's K8S_* args; DEL twice; DEL after the netns
  is gone.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dataplane_support import (
    ENI_GW,
    ENI_NODE,
    add_eni,
    arrivals,
    client,
    dataplane_node,
    recorder,
    tc_show,
)
from dataplane_support import MODES as DATAPLANES
from harness import FERRY, Agent, Netns, Node, Pod, exec_plugin, ping, uid

MODES = ["standalone", "ferryd"]


@pytest.fixture(params=MODES)
def node_conf(request: pytest.FixtureRequest) -> Iterator[tuple[Node, dict[str, Any]]]:
    with Node.create() as node:
        if request.param == "standalone":
            yield node, node.conf()
        else:
            with Agent.running(node) as agent:
                yield node, agent.conf


def sandbox(node: Node, pod_name: str) -> Pod:
    """A new sandbox (netns, infra container id) of the Kubernetes pod default/<pod_name>."""
    pod = Pod(name=pod_name, ns=Netns("fpod"), container_id=f"sb{uid()}{uid()}")
    node.pods.append(pod)
    return pod


def cni(node: Node, conf: dict[str, Any], command: str, pod: Pod, netns: str | None = None,
        prev: dict[str, Any] | None = None) -> dict[str, Any] | None:
    args = f"{pod.args};K8S_POD_INFRA_CONTAINER_ID={pod.container_id}"
    call = exec_plugin(FERRY, command, {**conf, **({"prevResult": prev} if prev else {})},
                       node=node.ns, container_id=pod.container_id,
                       netns=pod.ns.path if netns is None else netns, args=args)
    out = call.ok()
    if command == "ADD":
        pod.result = out
    return out


def record(node: Node, conf: dict[str, Any], pod: Pod) -> Path:
    return Path(conf["stateDir"]) / conf["name"] / f"{pod.container_id}:eth0.json"


def held_ips(conf: dict[str, Any], pod: Pod) -> set[str]:
    d = Path(conf["ipam"]["dataDir"]) / conf["name"]
    return {p.name for p in d.iterdir()
            if p.read_bytes().split(b"\r\n")[0].decode() == pod.container_id}


def host_veth_of(node: Node, pod: Pod) -> dict[str, Any]:
    """The host link named in pod's ADD result (the first interface)."""
    assert pod.result is not None
    name = pod.result["interfaces"][0]["name"]
    out = json.loads(node.ns.ip("-j", "-d", "link", "show", name, check=False) or "[]")
    return out[0] if out else {}


def assert_working(node: Node, conf: dict[str, Any], pod: Pod) -> None:
    """pod's sandbox is fully wired: its host veth (tagged as its own), /32 and /128 routes,
    record, reservations, and traffic to the outside both ways."""
    link = host_veth_of(node, pod)
    assert link, "the sandbox's host veth is gone"
    assert link.get("ifalias", "").endswith(f"/{pod.container_id}/eth0"), link
    for version in (4, 6):
        ip = pod.ips(version)[0]
        route = node.ns.ip(f"-{version}", "route", "show", ip)
        assert f"dev {link['ifname']}" in route, f"host route to {ip} is gone: {route!r}"
    assert json.loads(record(node, conf, pod).read_text())["complete"]
    assert held_ips(conf, pod) == {pod.ips(4)[0], pod.ips(6)[0]}
    assert ping(pod.ns, node.ext_ip4), "the sandbox cannot reach the outside"
    assert ping(node.ext, pod.ips(4)[0]), "the outside cannot reach the sandbox"


def assert_released(node: Node, conf: dict[str, Any], pod: Pod) -> None:
    assert not record(node, conf, pod).exists(), "the old sandbox's record is left"
    assert held_ips(conf, pod) == set(), "the old sandbox's IPs are still reserved"


@pytest.mark.parametrize("second_del", ["no netns", "old netns", "old netns gone",
                                        "cached prevResult"])
def test_recreated_sandbox_survives_the_old_sandboxs_second_del(
        node_conf: tuple[Node, dict[str, Any]], second_del: str) -> None:
    """containerd's re-create: DEL(1), ADD(2), then RemovePodSandbox(1) DELs 1 again."""
    node, conf = node_conf
    old, new = sandbox(node, "web-0"), sandbox(node, "web-0")
    cni(node, conf, "ADD", old)
    cached = old.result
    cni(node, conf, "DEL", old)
    cni(node, conf, "ADD", new)
    assert_working(node, conf, new)
    if second_del == "old netns gone":
        old.ns.delete()
    cni(node, conf, "DEL", old, netns="" if second_del == "no netns" else None,
        prev=cached if second_del == "cached prevResult" else None)
    assert_working(node, conf, new)
    assert_released(node, conf, old)


def test_add_while_the_old_sandbox_is_still_attached(
        node_conf: tuple[Node, dict[str, Any]]) -> None:
    """kubelet after a runtime restart: ADD(2) while sandbox 1 still holds the veth name.
    The new sandbox takes the name over; 1 keeps its record and IPs until its DEL, which then
    leaves 2 alone, in either DEL form."""
    node, conf = node_conf
    old, new = sandbox(node, "web-0"), sandbox(node, "web-0")
    cni(node, conf, "ADD", old)
    cni(node, conf, "ADD", new)
    assert_working(node, conf, new)
    assert held_ips(conf, old), "the old sandbox lost its reservations before its DEL"
    assert not set(old.ips(4)) & set(new.ips(4)), "both sandboxes got the same IP"
    check = exec_plugin(FERRY, "CHECK", {**conf, "prevResult": old.result}, node=node.ns,
                        container_id=old.container_id, netns=old.ns.path, args=old.args)
    check.error(103)  # the old sandbox lost its pair: CHECK says so, kubelet re-creates
    cni(node, conf, "DEL", old)
    assert_working(node, conf, new)
    assert_released(node, conf, old)
    cni(node, conf, "DEL", old, netns="")
    assert_working(node, conf, new)
    cni(node, conf, "DEL", new)
    assert_released(node, conf, new)
    assert not host_veth_of(node, new), "the newest sandbox's veth survived its own DEL"


def test_del_of_an_unknown_id_with_a_live_pods_k8s_args(
        node_conf: tuple[Node, dict[str, Any]]) -> None:
    """A DEL of a container id ferry never saw, naming a live pod: nothing of the pod goes."""
    node, conf = node_conf
    live, ghost = sandbox(node, "web-0"), sandbox(node, "web-0")
    cni(node, conf, "ADD", live)
    for netns in (None, ""):
        cni(node, conf, "DEL", ghost, netns=netns)
        assert_working(node, conf, live)


def test_del_twice_and_after_the_netns_is_gone(node_conf: tuple[Node, dict[str, Any]]) -> None:
    node, conf = node_conf
    pod = sandbox(node, "web-0")
    cni(node, conf, "ADD", pod)
    pod.ns.delete()
    cni(node, conf, "DEL", pod)
    cni(node, conf, "DEL", pod, netns="")
    assert_released(node, conf, pod)
    assert not host_veth_of(node, pod)


def test_record_keys_of_dotted_ids_and_ifnames_do_not_collide(node: Node) -> None:
    """(ctrA, x.y) and (ctrA.x, y) were one record file (<cid>.<ifname>.json): a DEL of the
    second removed the first's record and veth, and an ADD of one was refused for the other."""
    conf = node.conf()
    a = Pod(name="p", ns=Netns("fpod"), container_id=f"ctr{uid()}", ifname="x.y")
    b = Pod(name="p", ns=Netns("fpod"), container_id=f"{a.container_id}.x", ifname="y")
    node.pods += [a, b]
    no_k8s = {"args": ""}
    call = node.cni("DEL", b, conf, **no_k8s)  # never added
    assert call.rc == 0, call.stdout
    a.result = node.cni("ADD", a, conf, **no_k8s).ok()
    node.cni("DEL", b, conf, **no_k8s).ok()
    assert a.result["interfaces"][0]["name"] in node.pod_links(), "DEL of b removed a's veth"
    assert ping(a.ns, node.ext_ip4)
    b.result = node.cni("ADD", b, conf, **no_k8s).ok()
    assert a.result["interfaces"][0]["name"] != b.result["interfaces"][0]["name"]
    assert ping(b.ns, node.ext_ip4) and ping(a.ns, node.ext_ip4)
    states = sorted(p.name for p in (node.tmp / "state" / node.network).iterdir())
    assert states == sorted([f"{a.container_id}:x.y.json", f"{b.container_id}:y.json"])
    for pod in (a, b):
        node.cni("DEL", pod, conf, **no_k8s).ok()
    assert node.pod_links() == []


def test_del_finds_a_record_of_the_old_naming_scheme(node: Node) -> None:
    """A node upgraded with pods running: their records are <cid>.<ifname>.json and their
    host veths untagged. DEL still finds and removes everything of the pod, and only that."""
    conf = node.conf()
    old, other = node.add_pod(conf=conf), node.add_pod(conf=conf)
    state = node.tmp / "state" / node.network
    for pod in (old, other):
        (state / f"{pod.container_id}:eth0.json").rename(state / f"{pod.container_id}.eth0.json")
        assert pod.result is not None
        node.ns.ip("link", "set", "dev", pod.result["interfaces"][0]["name"], "alias", "")
    node.cni("DEL", old, conf).ok()
    assert not (state / f"{old.container_id}.eth0.json").exists()
    assert old.result is not None and other.result is not None
    assert old.result["interfaces"][0]["name"] not in node.pod_links()
    assert ping(other.ns, node.ext_ip4)
    # A DEL with no record for another id of the same pod leaves the untagged link: its
    # name is claimed by another record.
    ghost = Pod(name=other.name, ns=Netns("fpod"), container_id=f"g{uid()}")
    node.pods.append(ghost)
    node.cni("DEL", ghost, conf).ok()
    assert ping(other.ns, node.ext_ip4)
    node.cni("DEL", other, conf).ok()
    assert node.pod_links() == [] and list(state.iterdir()) == []


def test_ferryd_start_keeps_a_sandbox_taken_over_and_releases_the_old(node: Node) -> None:
    """ferryd starts after ADD(2) took the name from a never-DELeted sandbox 1: reconcile
    releases 1 (its veth is another's now) and leaves 2 working."""
    conf = node.conf(agentSocket=str(node.tmp / "ferryd.sock"))
    old, new = sandbox(node, "web-0"), sandbox(node, "web-0")
    cni(node, conf, "ADD", old)
    cni(node, conf, "ADD", new)
    with Agent.running(node):
        assert_working(node, conf, new)
        assert_released(node, conf, old)


# --- ferry-egress's veth ------------------------------------------------------------------

@contextlib.contextmanager
def egress_chain(mode: str) -> Iterator[tuple[Node, list[dict[str, Any]]]]:
    """ferry (IPv6-only pods) + ferry-egress (egress-v4), standalone or through ferryd."""
    with Node.create() as node:
        v6_only = {"ipam": {"ranges": [[{"subnet": node.pod_cidr6}]]}, "dataplane": "none"}
        main = node.conf(**v6_only)
        egress = {"cniVersion": main["cniVersion"], "name": main["name"],
                  "type": "ferry-egress", "nodeIP": node.node_ip4, "dataplane": "none",
                  "stateDir": main["stateDir"], "log": main["log"],
                  "ipam": {"type": "host-local", "dataDir": str(node.tmp / "egress-ipam"),
                           "ranges": [[{"subnet": "169.254.172.0/22"}]],
                           "routes": [{"dst": "0.0.0.0/0"}]}}
        if mode == "standalone":
            yield node, [main, egress]
        else:
            with Agent.running(node, **v6_only) as a:
                egress["agentSocket"] = a.conf["agentSocket"]
                yield node, [a.conf, egress]


def chain_exec(node: Node, plugins: list[dict[str, Any]], command: str, pod: Pod,
               netns: str | None = None) -> dict[str, Any] | None:
    prev = None
    order = plugins if command == "ADD" else list(reversed(plugins))
    for conf in order:
        plugin = f"{Path(FERRY).parent}/{conf['type']}"
        full = {**conf, **({"prevResult": prev} if prev and command == "ADD" else {})}
        out = exec_plugin(plugin, command, full, node=node.ns, container_id=pod.container_id,
                          netns=pod.ns.path if netns is None else netns, args=pod.args).ok()
        prev = out if command == "ADD" else prev
    if command == "ADD":
        pod.result = prev
    return prev


def egress_veth(pod: Pod) -> str:
    assert pod.result is not None
    return next(i["name"] for i in pod.result["interfaces"]
                if "sandbox" not in i and i["name"] != pod.result["interfaces"][0]["name"])


@pytest.mark.parametrize("mode", MODES)
def test_egress_veth_of_the_recreated_sandbox_survives_the_old_del(mode: str) -> None:
    with egress_chain(mode) as (node, plugins):
        old, new = sandbox(node, "web-0"), sandbox(node, "web-0")
        chain_exec(node, plugins, "ADD", old)
        chain_exec(node, plugins, "DEL", old)
        chain_exec(node, plugins, "ADD", new)
        veth = egress_veth(new)
        chain_exec(node, plugins, "DEL", old, netns="")
        assert veth in node.ns.ip("-o", "link", "show"), "the old DEL removed the new egress veth"
        assert ping(new.ns, node.node_ip4), "the new sandbox lost its IPv4 egress"
        # ADD while the old sandbox is attached takes the egress name over, too.
        newer = sandbox(node, "web-0")
        chain_exec(node, plugins, "ADD", newer)
        chain_exec(node, plugins, "DEL", new)
        assert ping(newer.ns, node.node_ip4), "DEL of the older sandbox cut the newest off"
        chain_exec(node, plugins, "DEL", newer)


def test_ferryd_start_keeps_ferry_egress_veths() -> None:
    """ferry-egress's records live in <stateDir>/.egress/: ferryd's reconcile used to delete
    their veths as leaked."""
    with egress_chain("standalone") as (node2, plugins):
        pod = sandbox(node2, "web-0")
        chain_exec(node2, plugins, "ADD", pod)
        veth = egress_veth(pod)
        conf = plugins[0]
        with Agent.running(node2, ipam=conf["ipam"], dataplane="none"):
            assert veth in node2.ns.ip("-o", "link", "show")
            assert ping(pod.ns, node2.node_ip4)
        chain_exec(node2, plugins, "DEL", pod)


# --- a pod-ENI pod's sandbox re-created -------------------------------------------------------

@pytest.mark.parametrize("mode", DATAPLANES)
def test_pod_eni_of_the_recreated_sandbox_survives_the_old_del(mode: str) -> None:
    """ADD(2) while sandbox 1 of a pod-ENI pod is attached, then DEL(1): 2 still sends and
    receives through the ENI (1's DEL used to take the ENI's filter away)."""
    with dataplane_node(mode) as en:
        node = en.node
        add_eni(node)
        conf = {**en.conf, "runtimeConfig": {"podENI": {"device": "eni1", "gateway": ENI_GW}}}
        old, new = sandbox(node, "branch"), sandbox(node, "branch")
        cni(node, conf, "ADD", old)
        cni(node, conf, "ADD", new)
        cni(node, en.conf, "DEL", old)
        pod_ip = new.ips(4)[0]
        node.ext.ip("route", "add", f"{pod_ip}/32", "via", ENI_NODE, "dev", "vpc1")
        with recorder(node.ext, "tcp", node.ext_ip4, 8090) as srv:
            client(new.ns, "tcp", node.ext_ip4, 8090)
            [(src, _, dev)] = arrivals(srv, 1)
        assert (src, dev) == (pod_ip, "vpc1"), "the new sandbox no longer uses its ENI"
        assert [r["ip"] for r in en.inspect()["redirects"]] == [pod_ip]
        if mode == "ebpf":  # replies would still be routed without it: look at the filter
            assert "ferry_eni_in" in tc_show(node.ns, "eni1", "ingress")
        cni(node, en.conf, "DEL", new)
        assert en.inspect()["redirects"] == []
