"""IPAM interoperability with the reference plugins (containernetworking/plugins v1.1.1).

- ferry-host-local and the reference host-local share ONE dataDir: each skips what the other
  reserved, continues the other's round-robin, releases the other's reservations, and writes
  the same bytes.
- The ferry binary (built-in IPAM) and the reference ptp + host-local wire pods side by side
  on one node from one dataDir.
- The reference ptp exec's ferry-host-local from CNI_PATH: a drop-in IPAM plugin.
- ferry delegates to an IPAM plugin it does not build in (the reference `static`), found in
  CNI_PATH under whatever name the config gives.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    CNI_PATH,
    FERRY,
    FERRY_IPAM,
    REF_HOST_LOCAL,
    REF_PTP,
    CniCall,
    Netns,
    Node,
    Pod,
    exec_plugin,
    ping,
    plugin_dir,
    reservation_files,
)

pytestmark = pytest.mark.skipif(
    not (os.access(REF_HOST_LOCAL, os.X_OK) and os.access(REF_PTP, os.X_OK)),
    reason="reference plugins missing")

VERSION = "1.0.0"  # the newest the reference v1.1.1 plugins speak
NET = "interop"
REF_STATIC = "/usr/lib/cni/static"
# Four addresses per family (.10 .11 .13 .14): the gateway sits inside the range.
RANGES = [[{"subnet": "10.50.0.0/24", "rangeStart": "10.50.0.10", "rangeEnd": "10.50.0.14",
            "gateway": "10.50.0.12"}],
          [{"subnet": "fd50::/64", "rangeStart": "fd50::10", "rangeEnd": "fd50::14",
            "gateway": "fd50::12"}]]
PLUGINS = {"ref": REF_HOST_LOCAL, "ferry": FERRY_IPAM}


def ipam_conf(plugin: str, data_dir: Path, ranges: list[Any] = RANGES,
              **extra: Any) -> dict[str, Any]:
    kind = "host-local" if plugin == REF_HOST_LOCAL else "ferry-host-local"
    return {"cniVersion": VERSION, "name": NET, "type": "ptp",
            "ipam": {"type": kind, "dataDir": str(data_dir), "ranges": ranges, **extra}}


def ipam(plugin: str, command: str, cid: str, data_dir: Path, ifname: str = "eth0",
         args: str = "", **kw: Any) -> CniCall:
    """An IPAM-only exec: host-local never enters the netns, so any path will do."""
    return exec_plugin(plugin, command, ipam_conf(plugin, data_dir, **kw), container_id=cid,
                       netns="/run/netns/not-used-by-ipam", ifname=ifname, args=args)


def add(plugin: str, cid: str, data_dir: Path, **kw: Any) -> list[str]:
    out = ipam(plugin, "ADD", cid, data_dir, **kw).ok()
    return [ip["address"] for ip in out["ips"]]


def ip_files(data_dir: Path) -> dict[str, bytes]:
    return reservation_files(data_dir / NET)


def cursors(data_dir: Path) -> tuple[str, str]:
    return ((data_dir / NET / "last_reserved_ip.0").read_text(),
            (data_dir / NET / "last_reserved_ip.1").read_text())


def owned(*pairs: tuple[str, str]) -> dict[str, bytes]:
    """Expected files: for (cid, suffix) both 10.50.0.<suffix> and fd50::<suffix>."""
    return {ip: f"{cid}\r\neth0".encode() for cid, n in pairs
            for ip in (f"10.50.0.{n}", f"fd50::{n}")}


@pytest.mark.parametrize("first", ["ref", "ferry"])
def test_shared_data_dir_alternating(first: str, tmp_path: Path) -> None:
    """Two plugins take turns on one dataDir; each sees and continues the other's state."""
    a = PLUGINS[first]
    b = PLUGINS["ferry" if first == "ref" else "ref"]

    assert add(a, "c1", tmp_path) == ["10.50.0.10/24", "fd50::10/64"]
    assert add(b, "c2", tmp_path) == ["10.50.0.11/24", "fd50::11/64"]   # skips a's .10
    assert cursors(tmp_path) == ("10.50.0.11", "fd50::11")
    assert add(a, "c3", tmp_path) == ["10.50.0.13/24", "fd50::13/64"]   # after b's .11, gw skipped
    assert ip_files(tmp_path) == owned(("c1", 10), ("c2", 11), ("c3", 13))

    ipam(b, "DEL", "c1", tmp_path).ok()                                  # b frees a's IPs
    assert ip_files(tmp_path) == owned(("c2", 11), ("c3", 13))
    assert add(b, "c4", tmp_path) == ["10.50.0.14/24", "fd50::14/64"]   # round-robin, not .10
    assert add(a, "c5", tmp_path) == ["10.50.0.10/24", "fd50::10/64"]   # wraps to the hole

    before = ip_files(tmp_path)
    for plugin in (a, b):                                                # both see it full
        err = ipam(plugin, "ADD", "c6", tmp_path).error()
        assert "no IP addresses available" in err["msg"], err
    assert ip_files(tmp_path) == before

    ipam(a, "DEL", "c2", tmp_path).ok()                                  # a frees b's IPs
    assert add(b, "c7", tmp_path) == ["10.50.0.11/24", "fd50::11/64"]
    assert ip_files(tmp_path) == owned(("c3", 13), ("c4", 14), ("c5", 10), ("c7", 11))

    for cid, plugin in (("c3", b), ("c4", a), ("c5", b), ("c7", a)):
        ipam(plugin, "DEL", cid, tmp_path).ok()
    assert ip_files(tmp_path) == {}


def test_same_bytes_on_disk_and_same_result(tmp_path: Path) -> None:
    """Each plugin on its own dataDir, same requests: identical results and directories."""
    dirs = {name: tmp_path / name for name in PLUGINS}
    for cid, ifname in (("ctr-a", "eth0"), ("ctr-a", "net1"), ("ctr-b", "eth0")):
        outs = {name: ipam(p, "ADD", cid, dirs[name], ifname=ifname,
                           routes=[{"dst": "10.96.0.0/12"}]).ok()
                for name, p in PLUGINS.items()}
        assert outs["ferry"] == outs["ref"]
    listing = {name: {p.name: p.read_bytes() for p in (d / NET).iterdir() if p.name != "lock"}
               for name, d in dirs.items()}
    assert listing["ferry"] == listing["ref"]
    assert listing["ref"]["10.50.0.11"] == b"ctr-a\r\nnet1"
    assert (dirs["ferry"] / NET / "lock").is_file() and (dirs["ref"] / NET / "lock").is_file()

    for name, p in PLUGINS.items():
        ipam(p, "DEL", "ctr-a", dirs[name], ifname="net1").ok()
    after = {name: sorted(ip_files(d)) for name, d in dirs.items()}
    assert after["ferry"] == after["ref"] == sorted(owned(("ctr-a", 10), ("ctr-b", 13)))


@pytest.mark.parametrize("name", ["ref", "ferry"])
def test_old_format_files(name: str, tmp_path: Path) -> None:
    """Files of pre-ifname host-local hold the id alone: they count as held by that container,
    and DEL frees them, but only when no "<id>\\r\\n<ifname>" file matches first.

    One range set here: the reference's DEL calls ReleaseByID once per range set, so with two
    sets its second call finds no "<id>\\r\\n<ifname>" file left and frees the id-only ones
    anyway. ferry keeps them (they may be another interface's) until that interface's DEL."""
    plugin = PLUGINS[name]
    d = tmp_path / NET
    d.mkdir()
    (d / "10.50.0.10").write_bytes(b"old")
    (d / "10.50.0.11").write_bytes(b"old\r\neth1")
    v4 = RANGES[:1]

    err = ipam(plugin, "ADD", "old", tmp_path, ranges=v4).error()  # "old" holds .10 already
    assert "duplicate" in err["msg"] or "duplicate" in err["details"], err
    assert add(plugin, "new", tmp_path, ranges=v4) == ["10.50.0.13/24"]

    ipam(plugin, "DEL", "old", tmp_path, ifname="eth1", ranges=v4).ok()
    assert sorted(ip_files(tmp_path)) == ["10.50.0.10", "10.50.0.13"]
    ipam(plugin, "DEL", "old", tmp_path, ifname="eth0", ranges=v4).ok()
    assert sorted(ip_files(tmp_path)) == ["10.50.0.13"]


@pytest.mark.parametrize("holder", ["ref", "ferry"])
def test_requested_ip_held_by_the_other(holder: str, tmp_path: Path) -> None:
    a = PLUGINS[holder]
    b = PLUGINS["ferry" if holder == "ref" else "ref"]
    assert add(a, "c1", tmp_path, args="IP=10.50.0.13") == ["10.50.0.13/24", "fd50::10/64"]
    before = ip_files(tmp_path)
    ipam(b, "ADD", "c2", tmp_path, args="IgnoreUnknown=1;IP=10.50.0.13").error()
    assert ip_files(tmp_path) == before
    assert add(b, "c2", tmp_path, args="IgnoreUnknown=1;IP=10.50.0.14") == \
        ["10.50.0.14/24", "fd50::11/64"]


# --- pods on a node -------------------------------------------------------------------------

def node_conf(node: Node) -> dict[str, Any]:
    """The node's ferry config, with an agent socket of its own: ferry runs standalone in the
    node's netns even if some ferryd listens on the default socket of this machine."""
    return node.conf(VERSION, agentSocket=str(node.tmp / "no-ferryd.sock"))


def ptp_conf(node: Node, ipam_type: str) -> dict[str, Any]:
    conf = node_conf(node)
    return {"cniVersion": VERSION, "name": node.network, "type": "ptp", "ipMasq": False,
            "mtu": 1400, "agentSocket": conf["agentSocket"],
            # ptp routes only the subnet by itself: the node is reached by the IPAM's routes.
            "ipam": {**conf["ipam"], "type": ipam_type,
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}


def ping_soon(ns: Netns, dst: str, timeout: float = 6.0) -> bool:
    """ptp puts the gateway address on its host veth: for IPv6 that address is tentative
    (DAD, ~1-2 s) after ADD, and the pod's neighbour solicitations go unanswered until then."""
    deadline = time.monotonic() + timeout
    while not ping(ns, dst):
        if time.monotonic() > deadline:
            return False
    return True


def ips_of(result: dict[str, Any]) -> list[str]:
    return [ip["address"].split("/")[0] for ip in result["ips"]]


def node_files(node: Node) -> dict[str, bytes]:
    return reservation_files(node.tmp / "ipam" / node.network)


def test_ferry_and_reference_host_local_side_by_side(node: Node) -> None:
    """ferry (built-in IPAM) and ptp + reference host-local wire pods from one dataDir, and
    the reference host-local binary reserves and releases in it too."""
    conf = node_conf(node)
    ref_conf = ptp_conf(node, "host-local")

    def ref_ipam(command: str, cid: str) -> CniCall:
        return exec_plugin(REF_HOST_LOCAL, command, ref_conf, container_id=cid,
                           netns="/run/netns/not-used-by-ipam")

    a = node.add_pod("side-a", conf)
    r = node.new_pod("side-ref")
    r.result = node.cni("ADD", r, ref_conf, plugin=REF_PTP).ok()
    b = node.add_pod("side-b", conf)
    x = ref_ipam("ADD", "ctr-ipam-only").ok()

    assert [a.ips(4), r.ips(4), b.ips(4)] == [["10.20.0.2"], ["10.20.0.3"], ["10.20.0.4"]]
    assert [a.ips(6), r.ips(6), b.ips(6)] == [["fd20::2"], ["fd20::3"], ["fd20::4"]]
    assert ips_of(x) == ["10.20.0.5", "fd20::5"]
    expected = {ip: f"{p.container_id}\r\neth0".encode()
                for p in (a, r, b) for ip in p.ips(4) + p.ips(6)}
    expected |= {"10.20.0.5": b"ctr-ipam-only\r\neth0", "fd20::5": b"ctr-ipam-only\r\neth0"}
    assert node_files(node) == expected
    for pod in (a, r, b):
        reach = ping_soon if pod is r else ping  # ferry pods must answer at once
        assert reach(pod.ns, node.node_ip4), pod.name
        assert reach(pod.ns, node.node_ip6), pod.name

    # The reference host-local releases what the ferry binary reserved (by id + ifname)...
    ref_ipam("DEL", a.container_id).ok()
    for ip in a.ips(4) + a.ips(6):
        del expected[ip]
    assert node_files(node) == expected
    # ...after which ferry's DEL still removes its veth and state, and nothing else.
    node.cni("DEL", a, conf).ok()
    assert node_files(node) == expected
    assert b.result is not None
    assert node.pod_links() == [b.result["interfaces"][0]["name"]]
    # The ferry binary releases what the reference host-local reserved.
    exec_plugin(FERRY, "DEL", conf, node=node.ns, container_id="ctr-ipam-only").ok()
    del expected["10.20.0.5"], expected["fd20::5"]
    assert node_files(node) == expected
    node.cni("DEL", r, ref_conf, plugin=REF_PTP).ok()
    assert sorted(node_files(node)) == sorted(b.ips(4) + b.ips(6))

    c = node.add_pod("side-c", conf)
    assert c.ips(4) == ["10.20.0.6"] and c.ips(6) == ["fd20::6"], \
        "ferry continues round-robin after the reference's last reserved IP"
    assert ping(c.ns, node.node_ip4) and ping(b.ns, c.ips(4)[0]) and ping(c.ns, b.ips(6)[0])
    for pod in (b, c):
        node.cni("DEL", pod, conf).ok()
    assert node_files(node) == {} and node.pod_links() == []


def test_reference_ptp_with_ferry_host_local(node: Node) -> None:
    """ptp exec's ferry-host-local from CNI_PATH for ADD, CHECK and DEL: a drop-in IPAM."""
    assert os.access(os.path.join(CNI_PATH, "ferry-host-local"), os.X_OK)
    conf = ptp_conf(node, "ferry-host-local")
    pods: list[Pod] = []
    for name in ("ptp-a", "ptp-b"):
        pod = node.new_pod(name)
        pod.result = node.cni("ADD", pod, conf, plugin=REF_PTP).ok()
        pods.append(pod)
    a, b = pods
    assert a.result is not None and b.result is not None
    assert (ips_of(a.result), ips_of(b.result)) == (["10.20.0.2", "fd20::2"],
                                                    ["10.20.0.3", "fd20::3"])
    assert a.result["ips"][0]["gateway"] == "10.20.0.1"
    assert node_files(node) == {ip: f"{p.container_id}\r\neth0".encode()
                                for p in pods for ip in ips_of(p.result or {})}
    eth0 = json.loads(a.ns.ip("-j", "addr", "show", "dev", "eth0"))
    assert {x["local"] for x in eth0[0]["addr_info"] if x["scope"] == "global"} == \
        {"10.20.0.2", "fd20::2"}
    for pod in pods:
        assert ping_soon(pod.ns, node.node_ip4), pod.name
        assert ping_soon(pod.ns, node.node_ip6), pod.name

    node.cni("CHECK", a, {**conf, "prevResult": a.result}, plugin=REF_PTP).ok()
    # CHECK reaches ferry-host-local: an IP the store does not hold fails it.
    (node.tmp / "ipam" / node.network / "10.20.0.2").unlink()
    bad = node.cni("CHECK", a, {**conf, "prevResult": a.result}, plugin=REF_PTP)
    assert bad.rc != 0 and "10.20.0.2" in bad.stdout, bad
    (node.tmp / "ipam" / node.network / "10.20.0.2").write_bytes(
        f"{a.container_id}\r\neth0".encode())

    for pod in pods:
        node.cni("DEL", pod, conf, plugin=REF_PTP).ok()
        node.cni("DEL", pod, conf, plugin=REF_PTP).ok()  # DEL is idempotent
    assert node_files(node) == {}
    veths = [link["ifname"] for link in json.loads(node.ns.ip("-j", "link", "show"))
             if link["ifname"].startswith("veth")]
    assert veths == []


def static_ipam(v4: str, v6: str) -> dict[str, Any]:
    return {"type": "fixedip", "addresses": [{"address": f"{v4}/24", "gateway": "10.20.0.1"},
                                             {"address": f"{v6}/120", "gateway": "fd20::1"}]}


@pytest.fixture
def static_path(tmp_path: Path) -> Path:
    """A CNI_PATH of its own holding the reference `static` under another name."""
    return plugin_dir(tmp_path, "fixedip", REF_STATIC)


def test_ferry_delegates_to_static_ipam(node: Node, static_path: Path) -> None:
    conf = {**node_conf(node), "ipam": static_ipam("10.20.0.77", "fd20::77")}
    pod = node.new_pod("static-a")
    pod.result = node.cni("ADD", pod, conf, path=str(static_path)).ok()
    assert pod.ips(4) == ["10.20.0.77"] and pod.ips(6) == ["fd20::77"]
    assert pod.result["ips"][0] == {"address": "10.20.0.77/24", "gateway": "10.20.0.1",
                                    "interface": 1}
    assert ping(pod.ns, node.node_ip4) and ping(pod.ns, node.node_ip6)
    assert not (node.tmp / "ipam").exists(), "delegated IPAM must not touch a host-local store"
    check = node.cni("CHECK", pod, {**conf, "prevResult": pod.result}, path=str(static_path))
    check.ok()
    node.cni("DEL", pod, conf, path=str(static_path)).ok()
    assert node.pod_links() == []
    assert list((node.tmp / "state").rglob("*.json")) == []


def test_ferry_delegation_failures_leave_nothing(node: Node, static_path: Path) -> None:
    pod = node.new_pod("static-bad")
    links_before = node.ns.ip("-o", "link", "show")
    # Not in CNI_PATH (the default CNI_PATH has no "fixedip"): a config error.
    missing = node.cni("ADD", pod, {**node_conf(node), "ipam": static_ipam("10.20.0.8",
                                                                              "fd20::8")})
    missing.error(7)
    # Found, but the plugin itself refuses: its code and message come through.
    bad = {**node_conf(node), "ipam": {"type": "fixedip",
                                          "addresses": [{"address": "not-an-ip"}]}}
    refused = node.cni("ADD", pod, bad, path=str(static_path))
    err = refused.error()
    assert "fixedip" in err["msg"], err
    assert node.ns.ip("-o", "link", "show") == links_before
    assert json.loads(pod.ns.ip("-j", "link", "show"))[0]["ifname"] == "lo"
    assert len(json.loads(pod.ns.ip("-j", "link", "show"))) == 1
    assert list((node.tmp / "state").rglob("*.json")) == []
