"""plugin.rtnl against the kernel: every request it builds, checked with iproute2's view."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
from collections.abc import Iterator

import pytest
from harness import Netns

from plugin.rtnl import IFF_UP, NetlinkError, Rtnl


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
        host_nl.add_veth("rtA", "rtB", fd, 1500)
        b = pod_nl.link("rtB")
        assert b is not None
        pod_nl.set_link(b.index, up=True)
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
