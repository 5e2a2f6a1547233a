"""plugin.rtnl against the kernel: every request it builds, checked with iproute2's view."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import socket
from collections.abc import Iterator

import pytest
from harness import Netns

from plugin.rtnl import IFF_UP, Link, NetlinkError, Rtnl


@contextlib.contextmanager
def pair() -> Iterator[tuple[Netns, Netns, Rtnl, Rtnl, int]]:
    """Two namespaces ("host", "pod"), a socket in each, and an fd of the pod's."""
    host, pod = Netns("frt-host"), Netns("frt-pod")
    fd = os.open(pod.path, os.O_RDONLY)
    try:
        with open(host.path) as h:
            host_nl = Rtnl.in_netns(h.fileno())
        with host_nl, Rtnl.in_netns(fd) as pod_nl:
            yield host, pod, host_nl, pod_nl, fd
    finally:
        os.close(fd)
        host.delete()
        pod.delete()


def veth_up(host_nl: Rtnl, fd: int, side: Rtnl, name: str) -> Link:
    """The pair rtA (host) / rtB (pod), with `name` on `side` set up."""
    host_nl.add_veth("rtA", "rtB", fd, 1500)
    link = side.link(name)
    assert link is not None
    side.set_link(link.index, up=True)
    return link


def ip_json(ns: Netns, *args: str) -> list[dict]:
    return json.loads(ns.ip("-j", *args) or "[]")


def test_veth_pair_link_lookup_and_flags() -> None:
    with pair() as (host, pod, host_nl, pod_nl, fd):
        host_nl.add_veth("rtA", "rtB", fd, 1400)
        a, b = host_nl.link("rtA"), pod_nl.link("rtB")
        assert a is not None and b is not None
        seen_a = ip_json(host, "link", "show", "rtA")[0]
        seen_b = ip_json(pod, "link", "show", "rtB")[0]
        assert (a.index, a.mac, a.mtu) == (seen_a["ifindex"], seen_a["address"], 1400)
        assert (b.index, b.mac, b.mtu) == (seen_b["ifindex"], seen_b["address"], 1400)
        assert not a.flags & IFF_UP and "UP" not in seen_a["flags"]
        assert host_nl.link("rtB") is None  # the peer went to the other namespace
        with pytest.raises(NetlinkError) as exc:
            host_nl.add_veth("rtA", "rtC", fd, 1400)
        assert exc.value.errno == errno.EEXIST

        host_nl.set_link(a.index, up=True)
        assert "UP" in ip_json(host, "link", "show", "rtA")[0]["flags"]
        host_nl.set_link(a.index, up=False, group=4242)
        seen = ip_json(host, "-d", "link", "show", "rtA")[0]
        assert "UP" not in seen["flags"] and seen["group"] == "4242"
        assert host_nl.link("rtA").group == 4242  # type: ignore[union-attr]
        assert {link.name for link in host_nl.links()} == {"lo", "rtA"}

        host_nl.del_link(a.index)
        assert host_nl.link("rtA") is None and pod_nl.link("rtB") is None


def test_group_delete_is_one_batch_and_only_the_group() -> None:
    with pair() as (host, pod, host_nl, _pod_nl, fd):
        for i in range(4):
            host_nl.add_veth(f"rtg{i}", f"rtp{i}", fd, 1500)
        for i in range(3):
            host_nl.set_link(host_nl.link(f"rtg{i}").index, up=False, group=77)  # type: ignore
        assert host_nl.del_group(77)
        names = {link["ifname"] for link in ip_json(host, "link", "show")}
        assert names == {"lo", "rtg3"}
        assert {link["ifname"] for link in ip_json(pod, "link", "show")} == {"lo", "rtp3"}
        assert not host_nl.del_group(77)  # empty group: nothing to do, no error


def test_addresses_routes_neighbours() -> None:
    with pair() as (_host, pod, host_nl, pod_nl, fd):
        b = veth_up(host_nl, fd, pod_nl, "rtB")
        v4, v6 = ipaddress.ip_address("10.9.0.5"), ipaddress.ip_address("fd09::5")
        gw4, gw6 = ipaddress.ip_address("10.9.0.1"), ipaddress.ip_address("fd09::1")
        pod_nl.add_addr(b.index, v4, 24, 0x200)  # IFA_F_NOPREFIXROUTE
        pod_nl.add_addr(b.index, v6, 64, 0x200 | 0x02)  # + IFA_F_NODAD
        assert pod_nl.addrs(b.index) == {("10.9.0.5", 24), ("fd09::5", 64)}
        flags = {a["local"]: a for a in ip_json(pod, "addr", "show", "rtB")[0]["addr_info"]}
        assert flags["10.9.0.5"].get("noprefixroute") and flags["fd09::5"].get("nodad")
        with pytest.raises(NetlinkError) as exc:
            pod_nl.add_addr(b.index, v4, 24, 0)
        assert exc.value.errno == errno.EEXIST

        for gw in (gw4, gw6):
            pod_nl.add_route(ipaddress.ip_network(f"{gw}/{gw.max_prefixlen}"), b.index, 253, 4)
            pod_nl.add_neigh(b.index, gw, "02:00:00:00:00:01")
        pod_nl.add_route(ipaddress.ip_network("0.0.0.0/0"), b.index, 0, 4, gw4)
        pod_nl.add_route(ipaddress.ip_network("::/0"), b.index, 0, 4, gw6)
        with pytest.raises(NetlinkError) as exc:  # not on-link: only the gateways are
            pod_nl.add_route(ipaddress.ip_network("192.0.2.0/24"), b.index, 0, 4,
                             ipaddress.ip_address("10.99.0.1"))
        assert exc.value.errno == errno.ENETUNREACH

        mine = {(r.dst, r.gateway) for r in pod_nl.routes() if r.oif == b.index}
        assert {("10.9.0.1/32", None), ("0.0.0.0/0", "10.9.0.1"), ("fd09::1/128", None),
                ("::/0", "fd09::1")} <= mine
        assert "default via 10.9.0.1 dev rtB proto static" in pod.ip("route", "show")
        neigh = {n["dst"]: n for n in ip_json(pod, "neigh", "show", "dev", "rtB")}
        for gw in ("10.9.0.1", "fd09::1"):
            assert neigh[gw]["lladdr"] == "02:00:00:00:00:01"
            assert neigh[gw]["state"] == ["PERMANENT"]

        pod_nl.add_route(ipaddress.ip_network("10.9.0.1/32"), b.index, 253, 4, replace=True)


def test_namespace_socket_stays_in_its_namespace() -> None:
    """The thread that opened a socket in a pod namespace is back in its own afterwards."""
    before = os.readlink("/proc/thread-self/ns/net")
    with pair() as (_host, _pod, _host_nl, pod_nl, _fd):
        assert os.readlink("/proc/thread-self/ns/net") == before
        assert {link.name for link in pod_nl.links()} == {"lo"}


def test_policy_rules_and_routes_in_a_numbered_table() -> None:
    """What pod-ENI policy routing sends: rules by source, destination and input device,
    routes in a table above 255 (RTA_TABLE / FRA_TABLE), on-link gateway, deletes by scope."""
    with pair() as (host, _pod, host_nl, _pod_nl, fd):
        a = veth_up(host_nl, fd, host_nl, "rtA")
        table, pod_ip = 0xF3E000 + a.index, "10.9.0.5"
        cidr = ipaddress.IPv4Network("10.9.0.0/16")
        assert host_nl.rule(True, 3900, 254, src=pod_ip, dst=cidr)
        assert host_nl.rule(True, 3901, table, src=pod_ip)
        assert host_nl.rule(True, 3902, table, iifname="rtA")
        assert not host_nl.rule(True, 3901, table, src=pod_ip)  # there already: no duplicate
        shown = {r["priority"]: r for r in ip_json(host, "rule", "show")}
        assert shown[3900]["src"] == pod_ip and shown[3900]["dst"] == "10.9.0.0"
        assert shown[3900]["dstlen"] == 16 and shown[3900]["table"] == "main"
        assert shown[3901]["table"] == str(table) and shown[3902]["iif"] == "rtA"
        assert {(r.priority, r.src, r.table) for r in host_nl.rules()} >= {
            (3900, pod_ip, 254), (3901, pod_ip, table), (3902, None, table)}

        default = ipaddress.IPv4Network("0.0.0.0/0")
        host_nl.add_route(default, a.index, 0, 4, ipaddress.IPv4Address("10.77.0.1"),
                          replace=True, table=table, onlink=True)
        host_nl.add_route(ipaddress.IPv4Network(f"{pod_ip}/32"), a.index, 253, 4,
                          replace=True, table=table)
        text = host.ip("route", "show", "table", str(table))
        assert "default via 10.77.0.1 dev rtA proto static onlink" in text
        assert f"{pod_ip} dev rtA proto static scope link" in text
        assert {r.dst for r in host_nl.routes(table)} == {"0.0.0.0/0", f"{pod_ip}/32"}
        assert not host_nl.del_route(ipaddress.IPv4Network(f"{pod_ip}/32"), table, 0)  # scope
        assert host_nl.del_route(ipaddress.IPv4Network(f"{pod_ip}/32"), table, 253)
        assert host_nl.del_route(default, table, 0)
        assert host.ip("route", "show", "table", str(table)) == ""

        for prio, rtable, kw in ((3900, 254, {"src": pod_ip, "dst": cidr}),
                                 (3901, table, {"src": pod_ip}),
                                 (3902, table, {"iifname": "rtA"})):
            assert host_nl.rule(False, prio, rtable, **kw)  # type: ignore[arg-type]
            assert not host_nl.rule(False, prio, rtable, **kw)  # type: ignore[arg-type]
        assert not {3900, 3901, 3902} & {r["priority"] for r in ip_json(host, "rule", "show")}


def test_clsact_and_direct_action_bpf_filters() -> None:
    """The tc requests of the eBPF dataplane: clsact, a named direct-action cls_bpf filter
    at ferry's preference (replaced in place), listing, deleting, and the qdisc's removal."""
    from loader import syscall
    from plugin.dataplane import tc

    prog = syscall.prog_load(syscall.ProgSpec(
        "rt_pass", bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])))  # r0 = 0
    try:
        with pair() as (host, _pod, host_nl, _pod_nl, fd):
            host_nl.add_veth("rtA", "rtB", fd, 1500)
            idx = host_nl.link("rtA").index  # type: ignore[union-attr]
            assert tc.ensure_clsact(host_nl, idx) and not tc.ensure_clsact(host_nl, idx)
            assert "qdisc clsact" in host.run("tc", "qdisc", "show", "dev", "rtA")
            for _ in range(2):  # the second one replaces the first
                host_nl.replace_bpf_filter(idx, tc.PARENT["ingress"], tc.PREF, tc.HANDLE,
                                           prog, "rt_pass")
            shown = host.run("tc", "filter", "show", "dev", "rtA", "ingress")
            assert shown.count("handle 0x1") == 1 and f"pref {tc.PREF}" in shown
            assert "rt_pass" in shown and "direct-action" in shown and "protocol all" in shown
            assert tc.filters(host_nl, idx, "ingress") == ["rt_pass"]
            assert tc.filters(host_nl, idx, "egress") == []
            tc.drop_clsact_if_empty(host_nl, idx)  # a filter is left: the qdisc stays
            assert "clsact" in host.run("tc", "qdisc", "show", "dev", "rtA")
            assert tc.detach(host_nl, idx, "ingress") and not tc.detach(host_nl, idx, "ingress")
            assert "rt_pass" not in host.run("tc", "filter", "show", "dev", "rtA", "ingress")
            tc.drop_clsact_if_empty(host_nl, idx)
            assert "clsact" not in host.run("tc", "qdisc", "show", "dev", "rtA")
            assert tc.filters(host_nl, 999999, "ingress") == []  # no such device
    finally:
        os.close(prog)


def test_address_dump_and_default_route_device() -> None:
    """What node discovery reads: every address with its scope, the default route's device."""
    with pair() as (_host, _pod, host_nl, _pod_nl, fd):
        a = veth_up(host_nl, fd, host_nl, "rtA")
        host_nl.add_addr(a.index, ipaddress.ip_address("fe80::2"), 64, 0x02)  # scope link
        host_nl.add_addr(a.index, ipaddress.ip_address("10.9.0.2"), 24, 0)
        host_nl.add_addr(a.index, ipaddress.ip_address("fd09::2"), 64, 0x02)
        assert host_nl.default_oif() is None
        host_nl.add_route(ipaddress.IPv4Network("0.0.0.0/0"), a.index, 0, 4,
                          ipaddress.IPv4Address("10.9.0.1"))
        assert host_nl.default_oif() == a.index
        mine = {(str(x.ip), x.prefixlen, x.scope) for x in host_nl.addresses()
                if x.index == a.index}
        assert {("10.9.0.2", 24, 0), ("fd09::2", 64, 0)} <= mine
        assert ("fe80::2", 64, 253) in mine
        assert all(x.ip.version == 4 for x in host_nl.addresses(socket.AF_INET))
        assert ("127.0.0.1", 8, 254) in {(str(x.ip), x.prefixlen, x.scope)
                                         for x in host_nl.addresses()}
