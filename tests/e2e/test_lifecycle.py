"""Attachment lifecycle through the real binary: DEL idempotency (whatever is already gone),
CHECK against drift, ADD rollback on real kernel/IPAM failures (no mocks), GC and STATUS."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    FERRY,
    CniCall,
    Node,
    Pod,
    exec_plugin,
    ping,
    snapshot_diff,
    tcp_roundtrip,
    wait_settled,
)

VERSION = "1.1.0"


# --- observations ---------------------------------------------------------------------------

def host_veth(pod: Pod) -> str:
    """The name ferry gives the host side: prefix + sha1("<k8s namespace>.<pod>")[:11]."""
    return "fry" + hashlib.sha1(f"default.{pod.name}".encode()).hexdigest()[:11]


def node_has_link(node: Node, name: str) -> bool:
    return bool(node.ns.ip("link", "show", name, check=False).strip())


def pod_links(pod: Pod) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(pod.ns.ip("-j", "link", "show")))


def ip_files(node: Node) -> dict[str, str]:
    d = node.tmp / "ipam" / node.network
    return {p.name: p.read_bytes().decode() for p in d.iterdir()
            if p.name[0].isdigit() or ":" in p.name} if d.is_dir() else {}


def ips_of(node: Node, pod: Pod) -> set[str]:
    return {ip for ip, owner in ip_files(node).items()
            if owner.split("\r\n")[0] == pod.container_id}


def state_file(node: Node, pod: Pod) -> Path:
    return node.tmp / "state" / node.network / f"{pod.container_id}:{pod.ifname}.json"


def host_routes_to(node: Node, pod: Pod) -> str:
    return "".join(node.ns.ip(*fam, "route", "show", f"{ip}") for fam, ip in
                   ((("-4",), pod.ips(4)[0]), (("-6",), pod.ips(6)[0])))


def in_service(node: Node) -> tuple[Pod, dict[str, str]]:
    """A node already running a pod of the network (forwarding on, dirs made), and its
    snapshot: what an ADD then a DEL (or a failed ADD) must leave as it was."""
    base = node.add_pod("baseline", conf=node.conf(VERSION))
    wait_settled(node.ns)
    return base, node.snapshot()


def assert_unchanged(node: Node, before: dict[str, str], base: Pod | None = None) -> None:
    diff = snapshot_diff(before, node.snapshot())
    assert not diff, f"the node changed:\n{diff}"
    if base is not None:
        assert ping(base.ns, node.ext_ip4), "the running pod lost its connectivity"


def assert_fully_removed(node: Node, pod: Pod, veth: str) -> None:
    assert not node_has_link(node, veth), f"host veth {veth} is still there"
    assert ips_of(node, pod) == set(), "IP reservations left behind"
    assert not state_file(node, pod).exists(), "attachment record left behind"


def assert_error(call: CniCall, code: int, msg: str) -> dict[str, Any]:
    err = call.error(code)
    assert set(err) == {"cniVersion", "code", "msg", "details"}, err
    assert err["cniVersion"] == VERSION, err
    assert re.fullmatch(msg, err["msg"]), err
    return err


# --- DEL ----------------------------------------------------------------------------------------

def test_del_twice(node: Node) -> None:
    base, before = in_service(node)
    pod = node.add_pod(conf=node.conf(VERSION))
    veth = host_veth(pod)
    assert node_has_link(node, veth) and len(ips_of(node, pod)) == 2
    assert state_file(node, pod).exists()
    conf = {**node.conf(VERSION), "prevResult": pod.result}
    first = node.cni("DEL", pod, conf)
    assert first.rc == 0 and first.stdout.strip() == "", first.stdout
    assert_fully_removed(node, pod, veth)
    assert pod_links(pod) == ["lo"]
    assert_unchanged(node, before, base)
    second = node.cni("DEL", pod, conf)
    assert second.rc == 0 and second.stdout.strip() == "", second.stdout
    assert_unchanged(node, before, base)


def test_del_of_never_added_container(node: Node) -> None:
    base, before = in_service(node)
    ghost = node.new_pod()
    call = node.cni("DEL", ghost, node.conf(VERSION))
    assert call.rc == 0 and call.stdout.strip() == "", call.stdout
    # Also with a netns path that never existed (the runtime lost it), and without one.
    for netns in ("/run/netns/ferry-never-existed", ""):
        call = exec_plugin(FERRY, "DEL", node.conf(VERSION), node=node.ns,
                           container_id=ghost.container_id, netns=netns, args=ghost.args)
        assert call.rc == 0, call.stdout
    assert_unchanged(node, before, base)


def test_del_after_the_netns_is_gone(node: Node) -> None:
    """kubelet may DEL after the sandbox (and its netns) was destroyed: DEL still succeeds and
    finds the host side, the IPs and the record by container id."""
    base, before = in_service(node)
    pod = node.add_pod(conf=node.conf(VERSION))
    veth = host_veth(pod)
    assert node_has_link(node, veth)
    pod.ns.delete()
    assert not pod.ns.exists
    call = node.cni("DEL", pod, {**node.conf(VERSION), "prevResult": pod.result})
    assert call.rc == 0, call.stdout
    assert_fully_removed(node, pod, veth)
    assert_unchanged(node, before, base)


def test_del_without_cni_netns(node: Node) -> None:
    """CNI_NETNS is optional for DEL: the attachment record says where the pod was."""
    base, before = in_service(node)
    pod = node.add_pod(conf=node.conf(VERSION))
    veth = host_veth(pod)
    call = exec_plugin(FERRY, "DEL", node.conf(VERSION), node=node.ns,
                       container_id=pod.container_id, ifname="eth0", args=pod.args,
                       omit=("CNI_NETNS",))
    assert call.rc == 0, call.stdout
    assert_fully_removed(node, pod, veth)
    assert pod_links(pod) == ["lo"]
    assert_unchanged(node, before, base)


def test_del_without_the_attachment_record(node: Node) -> None:
    """The record is lost (state dir wiped): DEL falls back to the deterministic host veth
    name and the IPAM reservations of the container id."""
    base, before = in_service(node)
    pod = node.add_pod(conf=node.conf(VERSION))
    veth = host_veth(pod)
    state_file(node, pod).unlink()
    call = node.cni("DEL", pod, node.conf(VERSION))
    assert call.rc == 0, call.stdout
    assert_fully_removed(node, pod, veth)
    assert pod_links(pod) == ["lo"]
    assert_unchanged(node, before, base)


# --- CHECK ---------------------------------------------------------------------------------------

def _drop_default_route(node: Node, pod: Pod) -> str:
    pod.ns.ip("route", "del", "default")
    return "route 0.0.0.0/0 via 10.20.0.1 missing"


def _drop_default_route6(node: Node, pod: Pod) -> str:
    pod.ns.ip("-6", "route", "del", "default")
    return "route ::/0 via fd20::1 missing"


def _drop_host_route(node: Node, pod: Pod) -> str:
    ip = pod.ips(4)[0]
    node.ns.ip("route", "del", f"{ip}/32", "dev", host_veth(pod))
    return f"host route {ip}/32 dev {host_veth(pod)} missing"


def _change_mtu(node: Node, pod: Pod) -> str:
    pod.ns.ip("link", "set", "eth0", "mtu", "1300")
    return "eth0 mtu 1300 != 1400"


def _drop_address(node: Node, pod: Pod) -> str:
    ip = pod.ips(6)[0]
    pod.ns.ip("-6", "addr", "del", f"{ip}/120", "dev", "eth0")
    return f"address {ip}/120 missing on eth0"


def _release_ip(node: Node, pod: Pod) -> str:
    ip = pod.ips(4)[0]
    (node.tmp / "ipam" / node.network / ip).unlink()
    return ip


@pytest.mark.parametrize("drift", [_drop_default_route, _drop_default_route6, _drop_host_route,
                                   _change_mtu, _drop_address, _release_ip],
                         ids=["pod-default-route", "pod-default-route6", "host-route", "mtu",
                              "pod-address", "ipam-reservation"])
def test_check_detects_drift(node: Node, drift: Callable[[Node, Pod], str]) -> None:
    pod = node.add_pod(conf=node.conf(VERSION))
    conf = {**node.conf(VERSION), "prevResult": pod.result}
    ok = node.cni("CHECK", pod, conf)
    assert ok.rc == 0 and ok.stdout.strip() == "", ok.stdout  # no drift yet
    what = drift(node, pod)
    err = assert_error(node.cni("CHECK", pod, conf), 103, r".+")
    assert what in err["msg"] + " " + err["details"], err


def test_check_missing_pod_interface(node: Node) -> None:
    pod = node.add_pod(conf=node.conf(VERSION))
    conf = {**node.conf(VERSION), "prevResult": pod.result}
    node.ns.ip("link", "del", host_veth(pod))  # takes the pod's eth0 with it
    assert_error(node.cni("CHECK", pod, conf), 103, r"interface eth0 is missing in the container")


def test_check_needs_prev_result(node: Node) -> None:
    pod = node.add_pod(conf=node.conf(VERSION))
    assert_error(node.cni("CHECK", pod, node.conf(VERSION)), 7, r"CHECK needs prevResult")


def test_check_of_unknown_container(node: Node) -> None:
    """A prevResult that ferry never produced for this container id."""
    pod = node.add_pod(conf=node.conf(VERSION))
    other = node.new_pod()
    result = {**pod.result, "interfaces": [pod.result["interfaces"][0],
                                           {**pod.result["interfaces"][1],
                                            "sandbox": other.ns.path}]}
    err = assert_error(node.cni("CHECK", other, {**node.conf(VERSION), "prevResult": result}),
                       3, r"ferry has no attachment for this container")
    assert other.container_id in err["details"]


# --- ADD rollback on real failures ------------------------------------------------------------

def test_rollback_when_host_veth_name_is_taken(node: Node) -> None:
    """The host veth name is already used by a link ferry did not make: ADD fails after the
    IP was reserved and the record written; both are undone and the squatter is untouched."""
    base, _ = in_service(node)
    pod = node.new_pod()
    veth = host_veth(pod)
    node.ns.ip("link", "add", veth, "type", "veth", "peer", "name", "squat0")
    wait_settled(node.ns)
    squatter = node.ns.ip("-d", "link", "show", veth)
    before = node.snapshot()
    reserved_before = ip_files(node)
    call = node.cni("ADD", pod, node.conf(VERSION))
    err = assert_error(call, 100, rf"host interface {veth} already exists")
    assert err["details"]
    assert ips_of(node, pod) == set(), "the reserved IP was not released"
    assert ip_files(node) == reserved_before
    assert not state_file(node, pod).exists(), "the attachment record was not removed"
    assert pod_links(pod) == ["lo"]
    assert node.ns.ip("-d", "link", "show", veth) == squatter, "rollback touched the squatter"
    assert_unchanged(node, before, base)
    # The failed ADD is retried by the runtime once the name is free, and now works.
    node.ns.ip("link", "del", veth)
    pod.result = node.cni("ADD", pod, node.conf(VERSION)).ok()
    assert ping(pod.ns, node.ext_ip4)


def test_rollback_when_a_route_cannot_be_added(node: Node) -> None:
    """An IPAM route via a gateway the pod cannot reach on-link: the kernel refuses it after
    the veth pair was created, addressed and partly routed. Everything is rolled back."""
    base, before = in_service(node)
    pod = node.new_pod()
    conf = node.conf(VERSION, ipam={"routes": [{"dst": "10.77.0.0/16", "gw": "10.250.0.1"}]})
    call = node.cni("ADD", pod, conf)
    err = assert_error(call, 7, r"cannot add route 10\.77\.0\.0/16 via 10\.250\.0\.1 in the "
                       r"container")
    assert "10.250.0.1" in err["details"]
    assert pod_links(pod) == ["lo"]
    assert pod.ns.ip("route", "show").strip() == ""
    assert ips_of(node, pod) == set() and not state_file(node, pod).exists()
    assert not node_has_link(node, host_veth(pod))
    assert_unchanged(node, before, base)


def test_rollback_when_the_netns_is_not_a_netns(node: Node) -> None:
    """CNI_NETNS names a file that is not a network namespace: setns fails after IPAM."""
    base, before = in_service(node)
    pod = node.new_pod()
    bogus = node.tmp / "not-a-netns"
    bogus.write_text("")
    try:
        call = exec_plugin(FERRY, "ADD", node.conf(VERSION), node=node.ns,
                           container_id=pod.container_id, netns=str(bogus), args=pod.args)
        assert_error(call, 4, r"cannot (open|enter) network namespace")
        assert ips_of(node, pod) == set() and not state_file(node, pod).exists()
    finally:
        bogus.unlink()
    assert_unchanged(node, before, base)


# --- GC and STATUS ----------------------------------------------------------------------------

def test_gc_removes_all_but_the_valid_attachments(node: Node) -> None:
    keep, gone1, gone2 = (node.add_pod(n, conf=node.conf(VERSION))
                          for n in ("gc-keep", "gc-gone-1", "gc-gone-2"))
    # A reservation without any attachment (say, from a crashed ADD of a host-local user).
    orphan = node.tmp / "ipam" / node.network / "10.20.0.200"
    orphan.write_bytes(b"ctrorphan\r\neth0")
    for pod in (keep, gone1, gone2):
        assert node_has_link(node, host_veth(pod)) and state_file(node, pod).exists()
    wait_settled(keep.ns)
    keep_view = keep.ns.ip("-d", "addr", "show")
    keep_files = {ip: o for ip, o in ip_files(node).items() if ip in ips_of(node, keep)}

    conf = node.conf(VERSION, **{"cni.dev/valid-attachments": [
        {"containerID": keep.container_id, "ifname": "eth0"}]})
    call = exec_plugin(FERRY, "GC", conf, node=node.ns)
    assert call.rc == 0 and call.stdout.strip() == "", call.stdout

    for pod in (gone1, gone2):
        assert_fully_removed(node, pod, host_veth(pod))
        assert pod_links(pod) == ["lo"]
        assert host_routes_to(node, pod).strip() == ""
    assert not orphan.exists(), "GC kept a reservation no valid attachment holds"
    # The valid one is untouched and works.
    assert ip_files(node) == keep_files
    assert state_file(node, keep).exists() and node_has_link(node, host_veth(keep))
    assert keep.ns.ip("-d", "addr", "show") == keep_view
    assert tcp_roundtrip(keep.ns, node.ext, node.ext_ip4) == keep.ips(4)[0]
    node.cni("CHECK", keep, {**node.conf(VERSION), "prevResult": keep.result}).ok()


def test_gc_with_empty_valid_list_removes_everything(node: Node) -> None:
    pods = [node.add_pod(conf=node.conf(VERSION)) for _ in range(2)]
    call = exec_plugin(FERRY, "GC", node.conf(VERSION, **{"cni.dev/valid-attachments": []}),
                       node=node.ns)
    assert call.rc == 0, call.stdout
    for pod in pods:
        assert_fully_removed(node, pod, host_veth(pod))
    assert ip_files(node) == {}


def test_gc_malformed_valid_attachments(node: Node) -> None:
    base, before = in_service(node)
    conf = node.conf(VERSION, **{"cni.dev/valid-attachments": [{"containerID": "x"}]})
    assert_error(exec_plugin(FERRY, "GC", conf, node=node.ns), 7,
                 r"malformed cni\.dev/valid-attachments")
    assert_unchanged(node, before, base)


def test_status(node: Node) -> None:
    """STATUS is ready while the range has room, 50 once it is exhausted, ready again after
    a DEL frees an address."""
    conf = node.conf(VERSION, ipam={"ranges": [[{"subnet": "10.20.0.0/30"}]]})

    def status() -> CniCall:
        return exec_plugin(FERRY, "STATUS", conf, node=node.ns)

    ready = status()
    assert ready.rc == 0 and ready.stdout.strip() == "", ready.stdout
    pod = node.add_pod(conf=conf)
    err = assert_error(status(), 50, r"no free IP addresses")
    assert "10.20.0.0/30" in err["details"]
    node.cni("DEL", pod, conf).ok()
    again = status()
    assert again.rc == 0, again.stdout
