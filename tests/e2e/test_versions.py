"""Every CNI spec version ferry claims: the result shape of each, which commands each allows,
VERSION, and the refusal of versions it does not speak. The real binary is exec'd with the
CNI_* variables in a simulated node's netns, as a runtime does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import FERRY, Node, Pod, exec_plugin, ping

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
LEGACY = {"0.3.0", "0.3.1", "0.4.0"}  # ips carry "version"
CHECK_FROM = "0.4.0"
STATUS_GC_FROM = "1.1.0"


def vt(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def snapshot(node: Node) -> dict[str, str]:
    return node.snapshot()


def pod_addrs(pod: Pod) -> set[str]:
    """Global addresses on the pod's eth0, as 'ip/prefix'."""
    out = json.loads(pod.ns.ip("-j", "addr", "show", "dev", pod.ifname))
    return {f"{a['local']}/{a['prefixlen']}" for link in out for a in link["addr_info"]
            if a.get("scope") == "global"}


def pod_links(pod: Pod) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(pod.ns.ip("-j", "link", "show")))


def ip_files(node: Node) -> list[str]:
    d = node.tmp / "ipam" / node.network
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name) \
        if d.is_dir() else []


def state_files(node: Node) -> list[str]:
    d = node.tmp / "state" / node.network
    return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []


def assert_error(call: Any, code: int, version: str) -> dict[str, Any]:
    """The spec's error object: non-zero exit, JSON on stdout with all four keys."""
    err = call.error(code)
    assert set(err) == {"cniVersion", "code", "msg", "details"}, err
    assert err["cniVersion"] == version, err
    assert isinstance(err["msg"], str) and err["msg"], err
    return err


def check_result_shape(res: dict[str, Any], version: str, pod: Pod, mtu: int) -> None:
    assert res["cniVersion"] == version
    ifaces = res["interfaces"]
    assert len(ifaces) == 2
    host, cont = ifaces
    assert host["name"].startswith("fry") and "sandbox" not in host
    assert cont["name"] == "eth0" and cont["sandbox"] == pod.ns.path
    for i in ifaces:
        assert len(i["mac"].split(":")) == 6
        if vt(version) >= (1, 1, 0):
            assert i["mtu"] == mtu, i
        else:
            assert "mtu" not in i, i
    assert len(res["ips"]) == 2
    for ip, fam in zip(res["ips"], ("4", "6"), strict=True):
        assert ip["interface"] == 1  # index of the container interface
        if version in LEGACY:
            assert ip["version"] == fam, ip
        else:
            assert "version" not in ip, ip
        assert ("." in ip["address"]) == (fam == "4")
        assert ip["gateway"] in ("10.20.0.1", "fd20::1")
    dsts = {r["dst"] for r in res["routes"]}
    assert {"0.0.0.0/0", "::/0"} <= dsts
    assert isinstance(res.get("dns", {}), dict)


@pytest.mark.parametrize("version", SUPPORTED)
def test_add_check_del_in_each_version(node: Node, version: str) -> None:
    pod = node.new_pod()
    conf = node.conf(version)
    res = node.cni("ADD", pod, conf).ok()
    pod.result = res
    check_result_shape(res, version, pod, conf["mtu"])
    # What the result claims is what the kernel has.
    assert pod_addrs(pod) == {ip["address"] for ip in res["ips"]}
    assert ping(pod.ns, node.node_ip4) and ping(pod.ns, node.node_ip6)
    assert node.ns.ip("link", "show", res["interfaces"][0]["name"], check=False)

    check_conf = {**conf, "prevResult": res}
    chk = node.cni("CHECK", pod, check_conf)
    if vt(version) >= vt(CHECK_FROM):
        assert chk.rc == 0, chk.stdout
        assert chk.stdout.strip() == ""
    else:
        err = assert_error(chk, 1, version)
        assert "CHECK" in err["msg"] + err["details"]

    node.cni("DEL", pod, check_conf).ok()
    assert pod_links(pod) == ["lo"]
    assert ip_files(node) == [] and state_files(node) == []
    assert not node.ns.ip("link", "show", res["interfaces"][0]["name"], check=False)


@pytest.mark.parametrize("version", SUPPORTED)
def test_status_and_gc_only_from_1_1_0(node: Node, version: str) -> None:
    pod = node.add_pod(conf=node.conf(version))
    before = snapshot(node)
    valid = {"cni.dev/valid-attachments": [{"containerID": pod.container_id,
                                            "ifname": pod.ifname}]}
    status = exec_plugin(FERRY, "STATUS", node.conf(version), node=node.ns)
    gc = exec_plugin(FERRY, "GC", node.conf(version, **valid), node=node.ns)
    if vt(version) >= vt(STATUS_GC_FROM):
        assert status.rc == 0 and status.stdout.strip() == "", status.stdout
        assert gc.rc == 0 and gc.stdout.strip() == "", gc.stdout
    else:
        for call, cmd in ((status, "STATUS"), (gc, "GC")):
            err = assert_error(call, 1, version)
            assert cmd in err["msg"] + err["details"]
    # Neither may touch a valid (or, when refused, any) attachment.
    assert node.snapshot() == before
    assert len(ip_files(node)) == 2 and len(state_files(node)) == 1
    assert ping(pod.ns, node.node_ip4)


@pytest.mark.parametrize("stdin", [None, {"cniVersion": "0.3.1"}, {"cniVersion": "1.1.0"}],
                         ids=["no-stdin", "0.3.1", "1.1.0"])
def test_version_command(stdin: dict[str, str] | None) -> None:
    # VERSION needs no CNI_* variable but CNI_COMMAND (libcni's GetVersionInfo sends just that).
    call = exec_plugin(FERRY, "VERSION", stdin, ifname="", path="")
    out = call.ok()
    assert out["supportedVersions"] == SUPPORTED
    assert out["cniVersion"] in SUPPORTED


@pytest.mark.parametrize("bad", ["0.2.0", "0.1.0", "9.9.9", "1.2.0"])
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_unsupported_version_refused(node: Node, bad: str, command: str) -> None:
    pod = node.new_pod()
    before = snapshot(node)
    call = node.cni(command, pod, node.conf(bad))
    err = assert_error(call, 1, "1.1.0")  # a version ferry does not speak is not echoed
    assert err["msg"] == "incompatible CNI versions"
    assert bad in err["details"] and "1.1.0" in err["details"]
    assert node.snapshot() == before
    assert pod_links(pod) == ["lo"]


@pytest.mark.parametrize("bad", ["x.y", "1.0", "1.0.0-rc1", "", 1, None, ["1.0.0"]],
                         ids=["x.y", "two-parts", "suffix", "empty", "number", "null", "list"])
def test_malformed_version_refused(node: Node, bad: Any) -> None:
    pod = node.new_pod()
    before = snapshot(node)
    call = node.cni("ADD", pod, node.conf(bad))
    err = call.error()
    assert set(err) == {"cniVersion", "code", "msg", "details"}
    assert err["cniVersion"] == "1.1.0"
    if bad in ("", None):
        # An absent version means 0.1.0 (the spec's default), which ferry does not speak.
        assert err["code"] == 1, err
    else:
        assert err["code"] == 6, err  # not a version at all: the config cannot be decoded
        assert "cniVersion" in err["msg"]
    assert node.snapshot() == before
    assert pod_links(pod) == ["lo"]
    assert not Path(node.tmp, "state", node.network).exists()
