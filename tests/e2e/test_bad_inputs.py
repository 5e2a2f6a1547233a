"""Bad requests: each must get the spec's error object (JSON on stdout with cniVersion, code,
msg and details; non-zero exit) with the exact code, and must leave the node exactly as it
was: same links, addresses, routes, rules and files (no new veth, no IP reservation, no state
record), while the pod already running on the node keeps working.

Every request is exec'd with the CNI_* variables a runtime sets, inside the node's netns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    wait_settled,
)

VERSION = "1.0.0"  # what the configs say: errors about them must echo it
LATEST = "1.1.0"   # what errors carry when the config could not be read


@dataclass
class Busy:
    """A node in service: one pod of the network up, and the node's snapshot."""

    node: Node
    base: Pod
    before: dict[str, str]


def in_service(node: Node) -> Busy:
    base = node.add_pod("baseline", conf=node.conf(VERSION))
    return Busy(node, base, node.snapshot())


@pytest.fixture
def busy(node: Node) -> Busy:
    return in_service(node)


@pytest.fixture(scope="module")
def _shared() -> Iterator[Busy]:
    with Node.create() as node:
        yield in_service(node)


@pytest.fixture
def shared_busy(_shared: Busy) -> Iterator[Busy]:
    """The module's node in service, for requests that must not change it: the snapshot is
    taken afresh per test (one failure does not cascade), and the pods a test made are
    deleted after it, whatever its outcome."""
    node = _shared.node
    known = len(node.pods)
    try:
        yield Busy(node, _shared.base, node.snapshot())
    finally:
        for pod in node.pods[known:]:
            pod.ns.delete()
        del node.pods[known:]


def ip_files(node: Node) -> dict[str, str]:
    """Reserved IP -> file content ("<containerID>\\r\\n<ifname>")."""
    d = node.tmp / "ipam" / node.network
    return {p.name: p.read_bytes().decode() for p in d.iterdir()
            if p.name[0].isdigit() or ":" in p.name} if d.is_dir() else {}


def pod_links(pod: Pod) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(pod.ns.ip("-j", "link", "show")))


def assert_cni_error(call: CniCall, code: int, msg: str, version: str) -> dict[str, Any]:
    """The spec's error: non-zero exit and exactly the four keys; `msg` is a regex."""
    assert call.rc != 0, f"expected an error, got rc=0: {call.stdout}"
    try:
        err = json.loads(call.stdout)
    except ValueError:
        raise AssertionError(f"stdout is not JSON: {call.stdout!r} {call.stderr}") from None
    assert isinstance(err, dict) and set(err) == {"cniVersion", "code", "msg", "details"}, err
    assert err["code"] == code, f"expected code {code}: {err}"
    assert err["cniVersion"] == version, err
    assert isinstance(err["details"], str), err
    assert re.fullmatch(msg, err["msg"]), f"msg {err['msg']!r} does not match {msg!r}"
    return err


def assert_untouched(b: Busy, *pods: Pod) -> None:
    diff = snapshot_diff(b.before, b.node.snapshot())
    assert not diff, f"the failed request changed the node:\n{diff}"
    for pod in pods:
        assert pod_links(pod) == ["lo"], f"{pod.name} got interfaces"
        assert not [ip for ip, owner in ip_files(b.node).items()
                    if owner.startswith(pod.container_id)], "an IP stayed reserved"
    owned = {ip for ip, owner in ip_files(b.node).items()
             if owner == f"{b.base.container_id}\r\neth0"}
    assert owned == set(b.base.ips(4) + b.base.ips(6)), "the running pod lost its IPs"
    assert ping(b.base.ns, b.node.ext_ip4), "the running pod lost its connectivity"


# --- one table of bad requests --------------------------------------------------------------

Call = Callable[[Node, Pod], CniCall]


def conf_call(mutate: Callable[[dict[str, Any]], Any] | None = None, **kw: Any) -> Call:
    """ADD with the node's config (optionally mutated in place)."""
    def call(node: Node, pod: Pod) -> CniCall:
        conf = node.conf(VERSION)
        if mutate is not None:
            mutate(conf)
        return node.cni("ADD", pod, conf, **kw)
    return call


def stdin_call(stdin: str | bytes) -> Call:
    """ADD with this exact stdin (the harness passes str and bytes through as they are)."""
    return lambda node, pod: exec_plugin(FERRY, "ADD", stdin, node=node.ns,
                                         container_id=pod.container_id, netns=pod.ns.path,
                                         args=pod.args)


def env_call(command: str = "ADD", **kw: Any) -> Call:
    """ADD with a good config but CNI_* variables changed (container_id, netns, ifname...)."""
    def call(node: Node, pod: Pod) -> CniCall:
        args: dict[str, Any] = {"node": node.ns, "container_id": pod.container_id,
                                "netns": pod.ns.path, "ifname": "eth0", "args": pod.args}
        args.update(kw)
        return exec_plugin(FERRY, command, node.conf(VERSION), **args)
    return call


def ipam(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda conf: conf["ipam"].update(fields)


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda conf: conf.pop(key)


@dataclass
class Case:
    id: str
    call: Call
    code: int
    msg: str
    version: str = VERSION


V4, V6 = "10.20.0.0/24", "fd20::/120"
CASES = [
    # 6: the config cannot be decoded
    Case("bad-json", stdin_call('{"cniVersion": "1.0.0", "name": '), 6,
         r"error decoding network config", LATEST),
    Case("not-utf8", stdin_call(b'{"cniVersion": "1.0.0", "name": "\xff"}'), 6,
         r"error decoding network config", LATEST),
    Case("empty-stdin", stdin_call(""), 6, r"no network config on stdin", LATEST),
    Case("blank-stdin", stdin_call(" \n\t"), 6, r"no network config on stdin", LATEST),
    Case("config-array", stdin_call('[{"cniVersion": "1.0.0"}]'), 6,
         r"network config is not a JSON object", LATEST),
    Case("config-string", stdin_call('"ferry"'), 6, r"network config is not a JSON object",
         LATEST),
    Case("config-null", stdin_call("null"), 6, r"network config is not a JSON object", LATEST),
    Case("malformed-version", conf_call(lambda c: c.update(cniVersion="1.0")), 6,
         r"invalid cniVersion '1\.0'", LATEST),
    Case("numeric-version", conf_call(lambda c: c.update(cniVersion=1.0)), 6,
         r"invalid cniVersion 1\.0", LATEST),
    # 1: a version ferry does not speak
    Case("unknown-version", conf_call(lambda c: c.update(cniVersion="0.2.0")), 1,
         r"incompatible CNI versions", LATEST),
    Case("no-version", conf_call(drop("cniVersion")), 1, r"incompatible CNI versions", LATEST),
    # 7: the network name
    Case("missing-name", conf_call(drop("name")), 7, r"missing network name"),
    Case("empty-name", conf_call(lambda c: c.update(name="")), 7, r"missing network name"),
    Case("name-slash", conf_call(lambda c: c.update(name="a/b")), 7,
         r"invalid characters in network name"),
    Case("name-dotdot", conf_call(lambda c: c.update(name="../../etc")), 7,
         r"invalid characters in network name"),
    Case("name-space", conf_call(lambda c: c.update(name="my net")), 7,
         r"invalid characters in network name"),
    # 4: the environment
    Case("no-command", env_call(omit=("CNI_COMMAND",)), 4,
         r"required env variables \[CNI_COMMAND\] missing"),
    Case("unknown-command", env_call("ATTACH"), 4, r"unknown CNI_COMMAND: ATTACH"),
    Case("lowercase-command", env_call("add"), 4, r"unknown CNI_COMMAND: add"),
    *[Case(f"no-{var[4:].lower()}", env_call(omit=(var,)), 4,
           rf"required env variables \[{var}\] missing")
      for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")],
    Case("containerid-slash", env_call(container_id="abc/../def"), 4,
         r"invalid characters in containerID"),
    Case("containerid-space", env_call(container_id="abc def"), 4,
         r"invalid characters in containerID"),
    Case("ifname-too-long", env_call(ifname="eth0123456789012"), 4,
         r"interface name is too long"),
    Case("ifname-slash", env_call(ifname="eth/0"), 4,
         r"interface name contains an invalid character"),
    Case("ifname-dotdot", env_call(ifname=".."), 4,
         r"interface name contains an invalid character"),
    Case("ifname-colon", env_call(ifname="eth0:1"), 4,
         r"interface name contains an invalid character"),
    Case("bad-cni-args", env_call(args="K8S_POD_NAME"), 4, r"invalid CNI_ARGS pair"),
    Case("netns-missing", env_call(netns="/run/netns/ferry-no-such-ns"), 4,
         r"network namespace does not exist"),
    Case("netns-not-a-netns", env_call(netns="/etc/hostname"), 4,
         r"cannot (open|enter) network namespace"),
    # 7: the network config
    Case("bad-subnet", conf_call(ipam(ranges=[[{"subnet": "10.300.0.0/24"}]])), 7,
         r"invalid network config: ipam\.ranges\.0\.0\.subnet: .*"),
    Case("subnet-not-cidr", conf_call(ipam(ranges=[[{"subnet": "pods"}]])), 7,
         r"invalid network config: ipam\.ranges\.0\.0\.subnet: .*"),
    Case("rangestart-outside", conf_call(ipam(ranges=[[{"subnet": V4,
                                                        "rangeStart": "10.21.0.5"}]])), 7,
         r"invalid network config: ipam\.ranges\.0\.0: .*range_start 10\.21\.0\.5 is outside "
         r"subnet 10\.20\.0\.0/24"),
    Case("gateway-outside", conf_call(ipam(ranges=[[{"subnet": V4, "gateway": "10.9.0.1"}]])),
         7, r"invalid network config: ipam\.ranges\.0\.0: .*gateway 10\.9\.0\.1 is outside.*"),
    Case("rangestart-after-end", conf_call(ipam(ranges=[[{"subnet": V4,
                                                          "rangeStart": "10.20.0.50",
                                                          "rangeEnd": "10.20.0.10"}]])), 7,
         r"rangeStart is after rangeEnd in 10\.20\.0\.0/24"),
    Case("overlapping-ranges", conf_call(ipam(ranges=[[{"subnet": V4}],
                                                      [{"subnet": "10.20.0.128/25"}]])), 7,
         r"invalid network config: ipam: .*range 10\.20\.0\.128/25 overlaps 10\.20\.0\.0/24"),
    Case("mixed-family-set", conf_call(ipam(ranges=[[{"subnet": V4}, {"subnet": V6}]])), 7,
         r"invalid network config: ipam: .*mixes IPv4 and IPv6.*"),
    Case("no-ranges", conf_call(ipam(ranges=[])), 7,
         r"invalid network config: ipam: .*at least one non-empty range set.*"),
    Case("mtu-too-small", conf_call(lambda c: c.update(mtu=100)), 7,
         r"invalid network config: mtu: .*576.*"),
    Case("mtu-too-big", conf_call(lambda c: c.update(mtu=70000)), 7,
         r"invalid network config: mtu: .*65535.*"),
    Case("mtu-not-int", conf_call(lambda c: c.update(mtu="big")), 7,
         r"invalid network config: mtu: .*"),
    Case("vethprefix-too-long", conf_call(lambda c: c.update(vethPrefix="ferry")), 7,
         r"invalid network config: vethPrefix: .*at most 4 characters.*"),
    Case("vethprefix-bad-chars", conf_call(lambda c: c.update(vethPrefix="f/y")), 7,
         r"invalid network config: vethPrefix: .*"),
    Case("unknown-dataplane", conf_call(lambda c: c.update(dataplane="xdp")), 7,
         r"invalid network config: dataplane: .*'auto'.*"),
    Case("missing-ipam", conf_call(drop("ipam")), 7, r"invalid network config: ipam: .*"),
    Case("ipam-no-type", conf_call(lambda c: c["ipam"].pop("type")), 7,
         r"invalid network config: ipam\.type: .*"),
    Case("ipam-plugin-not-found", conf_call(ipam(type="no-such-ipam")), 7,
         r"IPAM plugin 'no-such-ipam' not found in CNI_PATH"),
    Case("requested-ip-garbage", conf_call(lambda c: c.update(
        runtimeConfig={"ips": ["not-an-ip"]})), 7, r"invalid requested IP"),
    Case("two-requested-ips-one-set", conf_call(lambda c: c.update(
        runtimeConfig={"ips": ["10.20.0.40", "10.20.0.41"]})), 7,
         r"more than one requested IP in a range set"),
    # 102: the requested address
    Case("requested-ip-outside", conf_call(lambda c: c.update(
        runtimeConfig={"ips": ["10.30.0.5/24"]})), 102, r"requested IP is not in any range"),
    Case("requested-ip-via-cni-args", env_call(args="IgnoreUnknown=1;IP=10.31.0.9"), 102,
         r"requested IP is not in any range"),
    Case("requested-gateway", conf_call(lambda c: c.update(runtimeConfig={"ips": ["10.20.0.1"]})),
         102, r"requested IP address 10\.20\.0\.1 is not available"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_is_refused_and_changes_nothing(shared_busy: Busy, case: Case) -> None:
    pod = shared_busy.node.new_pod()
    call = case.call(shared_busy.node, pod)
    assert_cni_error(call, case.code, case.msg, case.version)
    assert_untouched(shared_busy, pod)


def test_requested_ip_already_taken(busy: Busy) -> None:
    taken = busy.base.ips(4)[0]
    owner_before = ip_files(busy.node)[taken]
    pod = busy.node.new_pod()
    call = busy.node.cni("ADD", pod, busy.node.conf(VERSION, runtimeConfig={"ips": [taken]}))
    err = assert_cni_error(call, 102, rf"requested IP address {re.escape(taken)} is not "
                           r"available", VERSION)
    assert "range set 0" in err["details"]
    assert_untouched(busy, pod)
    assert ip_files(busy.node)[taken] == owner_before == f"{busy.base.container_id}\r\neth0"


def test_ifname_already_in_the_pod(busy: Busy) -> None:
    """eth0 exists in the pod already (another plugin's): ADD fails, and neither the node nor
    that interface is touched (a rollback must not delete what it did not create)."""
    node, pod = busy.node, busy.node.new_pod()
    pod.ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    pod.ns.ip("addr", "add", "10.77.7.7/24", "dev", "eth0")
    pod.ns.ip("link", "set", "eth0", "up")
    theirs = pod.ns.ip("-d", "addr", "show", "dev", "eth0")
    call = node.cni("ADD", pod, node.conf(VERSION))
    err = assert_cni_error(call, 4, r"interface eth0 already exists in the container", VERSION)
    assert pod.ns.path in err["details"]
    assert pod.ns.ip("-d", "addr", "show", "dev", "eth0") == theirs
    assert pod_links(pod) == ["eth0", "lo", "other0"]
    diff = snapshot_diff(busy.before, node.snapshot())
    assert not diff, diff
    assert set(ip_files(node)) == set(busy.base.ips(4) + busy.base.ips(6))


def test_ipam_exhausted_keeps_the_first_pod(node: Node) -> None:
    """A /30 holds one pod after the gateway: the second ADD fails with 101, changing
    nothing, and the first pod keeps its address and its traffic."""
    conf = node.conf(VERSION, ipam={"ranges": [[{"subnet": "10.20.0.0/30"}]]})
    first = node.add_pod("only-one", conf=conf)
    assert first.ips(4) == ["10.20.0.2"] and first.ips(6) == []
    before = node.snapshot()
    second = node.new_pod()
    call = node.cni("ADD", second, conf)
    err = assert_cni_error(call, 101, r"no IP addresses available in range set", VERSION)
    assert "10.20.0.0/30" in err["details"]
    diff = snapshot_diff(before, node.snapshot())
    assert not diff, diff
    assert pod_links(second) == ["lo"]
    assert ip_files(node) == {"10.20.0.2": f"{first.container_id}\r\neth0"}
    assert ping(first.ns, node.node_ip4) and ping(first.ns, node.ext_ip4)
    node.cni("CHECK", first, {**conf, "prevResult": first.result}).ok()


def test_second_add_of_same_attachment_keeps_the_first(busy: Busy) -> None:
    """The runtime repeats ADD for a container/ifname that is attached: refused, and the
    first attachment (its veth, IPs, routes, record) is exactly as it was."""
    node, base = busy.node, busy.base
    conf = node.conf(VERSION)
    held = ip_files(node)
    wait_settled(base.ns)
    pod_view = base.ns.ip("-d", "addr", "show")
    # Same container and ifname, even in another namespace: the attachment exists.
    for netns in (base.ns.path, node.new_pod().ns.path):
        call = exec_plugin(FERRY, "ADD", conf, node=node.ns, container_id=base.container_id,
                           netns=netns, ifname="eth0", args=base.args)
        err = assert_cni_error(call, 4, r"container is already attached to this network",
                               VERSION)
        assert base.container_id in err["details"]
    diff = snapshot_diff(busy.before, node.snapshot())
    assert not diff, diff
    assert ip_files(node) == held
    assert base.ns.ip("-d", "addr", "show") == pod_view
    assert ping(base.ns, node.ext_ip4) and ping(base.ns, node.ext_ip6)
    node.cni("CHECK", base, {**conf, "prevResult": base.result}).ok()
    # And it can still be removed cleanly.
    node.cni("DEL", base, conf).ok()
    assert ip_files(node) == {} and pod_links(base) == ["lo"]
