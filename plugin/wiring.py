"""Pod wiring over netlink (pyroute2): the veth pair and the point-to-point routing.

Container side (as the AWS VPC CNI's setupContainerVethV4 and the reference ptp plugin):
  address ip/N without its prefix route (IFA_F_NOPREFIXROUTE, and IFA_F_NODAD for IPv6),
  gateway/32 (/128) scope link, a permanent neighbour entry gateway -> host veth MAC (so the
  pod never has to resolve the gateway: no proxy ARP, no address on the host veth), the
  subnet via the gateway, and the default route plus the IPAM routes via the gateway.
Host side: the veth named <prefix><hash>, up, DAD off, and a /32 (/128) route to each pod IP.
The process runs in the host (node) network namespace; the pod's is opened by path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from plugin.config import VETH_HASH_CHARS
from plugin.protocol import Address, CniError, Code, Interface, IPConfig, Result, Route

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253
RTPROT_STATIC = 4
DEFAULTS = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def host_veth_name(prefix: str, container_id: str, ifname: str,
                   k8s_pod: tuple[str, str] | None) -> str:
    """prefix + 11 hex chars of sha1("<namespace>.<pod>"), as the AWS VPC CNI names them.

    Without Kubernetes args the container id is hashed instead; a second interface of the same
    pod (ifname other than eth0) hashes its ifname too so that the names do not collide.
    """
    key = f"{k8s_pod[0]}.{k8s_pod[1]}" if k8s_pod else container_id
    if ifname != "eth0":
        key += f".{ifname}"
    return prefix + hashlib.sha1(key.encode()).hexdigest()[:VETH_HASH_CHARS]


@dataclass
class PodLinks:
    host: Interface
    container: Interface


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(path: str) -> Iterator[IPRoute]:
    """An RTNL socket inside the pod's network namespace (opened by path, never created).

    The calling thread enters the namespace just long enough to open the socket, which stays
    bound to it; about 1 ms, where pyroute2's own netns support forks a helper (~12 ms, and
    fork is unsafe in ferryd's threaded process).
    """
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CniError(Code.INVALID_ENV, "network namespace does not exist",
                       f"CNI_NETNS={path}") from None
    except OSError as e:
        raise CniError(Code.INVALID_ENV, "cannot open network namespace",
                       f"CNI_NETNS={path}: {e}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as e:
            raise CniError(Code.INVALID_ENV, "cannot enter network namespace",
                           f"CNI_NETNS={path}: {e}") from None
        try:
            ipr = IPRoute()
        finally:
            _setns(home)  # if this failed the thread would be lost in the pod: let it raise
    finally:
        os.close(target)
        os.close(home)
    try:
        yield ipr
    finally:
        ipr.close()


def _link(ipr: IPRoute, name: str):  # type: ignore[no-untyped-def]
    """The link message by name, or None. The kernel looks the name up (link_lookup would
    dump every link: O(pods) per call on a busy node)."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise


def link_index(ipr: IPRoute, name: str) -> int | None:
    link = _link(ipr, name)
    return link["index"] if link is not None else None


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys/net", path).write_text(value)


def setup(netns_path: str, ifname: str, host_veth: str, mtu: int, ips: list[IPConfig],
          routes: list[Route]) -> PodLinks:
    """Create and address the veth pair, all or nothing.

    If this raises, the pair it created is gone again, and a link it did not create (an
    interface of the same name already in the container, or on the host) is left untouched:
    the caller must not tear down by name after a failed setup.
    """
    with netns(netns_path) as pod, IPRoute() as host:
        if _link(pod, ifname) is not None:
            raise CniError(Code.INVALID_ENV, f"interface {ifname} already exists in the "
                           "container", netns_path)
        if _link(host, host_veth) is not None:
            raise CniError(Code.INTERNAL, f"host interface {host_veth} already exists",
                           "another attachment uses the same namespace/pod name")
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            host.link("add", ifname=host_veth, kind="veth", mtu=mtu,
                      peer={"ifname": ifname, "net_ns_fd": fd, "mtu": mtu})
        finally:
            os.close(fd)
        host_link = _link(host, host_veth)
        assert host_link is not None
        host_idx = host_link["index"]
        try:
            return _configure(pod, host, netns_path, ifname, host_veth, host_link, mtu, ips,
                              routes)
        except BaseException:
            # Deleting one end removes the pair, wherever the peer is.
            with contextlib.suppress(Exception):
                _ignore_gone(host.link, "del", index=host_idx)
            raise


def _configure(pod: IPRoute, host: IPRoute, netns_path: str, ifname: str, host_veth: str,
               host_link, mtu: int, ips: list[IPConfig],  # type: ignore[no-untyped-def]
               routes: list[Route]) -> PodLinks:
    """Bring the fresh pair up and address and route both sides."""
    families = {ip.address.version for ip in ips}
    pod_link = _link(pod, ifname)
    assert pod_link is not None
    pod_idx, pod_mac = pod_link["index"], pod_link.get_attr("IFLA_ADDRESS")
    host_idx, host_mac = host_link["index"], host_link.get_attr("IFLA_ADDRESS")
    if 6 in families:
        # The host veth's link-local address must be usable at once for neighbour
        # discovery towards the pod; there is nothing on a fresh veth to collide with.
        _sysctl(f"ipv6/conf/{host_veth}/accept_dad", "0")
        _sysctl("ipv6/conf/all/forwarding", "1")
    if 4 in families:
        _sysctl("ipv4/ip_forward", "1")
    host.link("set", index=host_idx, state="up")
    pod.link("set", index=pod_idx, state="up")

    for ip in ips:
        if ip.gateway is None:
            raise CniError(Code.INVALID_CONFIG, f"IPAM gave {ip.address} no gateway",
                           "point-to-point wiring routes everything via the gateway")
        _configure_pod_ip(pod, pod_idx, ip, host_mac)
    for route in _pod_routes(ips, routes):
        gw = route.gw or _gateway_for(ips, route.dst.version)
        try:
            pod.route("add", dst=str(route.dst), gateway=str(gw), oif=pod_idx,
                      proto=RTPROT_STATIC)
        except NetlinkError as e:
            if e.code != errno.ENETUNREACH:
                raise
            # The pod's only on-link neighbours are its gateways: a route via anything else
            # is a config error (an IPAM route whose gw is not a gateway of the pod).
            raise CniError(Code.INVALID_CONFIG,
                           f"cannot add route {route.dst} via {gw} in the container",
                           f"gateway {gw} is not on-link (only the pod's gateways are)") \
                from None
    for ip in ips:
        host.route("add", dst=f"{ip.address.ip}/{ip.address.max_prefixlen}", oif=host_idx,
                   scope=RT_SCOPE_LINK, proto=RTPROT_STATIC)
    return PodLinks(host=Interface(name=host_veth, mac=host_mac, mtu=mtu),
                    container=Interface(name=ifname, mac=pod_mac, sandbox=netns_path, mtu=mtu))


def _configure_pod_ip(pod: IPRoute, idx: int, ip: IPConfig, host_mac: str) -> None:
    flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if ip.address.version == 6 else 0)
    pod.addr("add", index=idx, address=str(ip.address.ip), prefixlen=ip.address.network.prefixlen,
             flags=flags)
    gw = str(ip.gateway)
    pod.route("add", dst=f"{gw}/{ip.address.max_prefixlen}", oif=idx, scope=RT_SCOPE_LINK,
              proto=RTPROT_STATIC)
    pod.neigh("add", dst=gw, lladdr=host_mac, ifindex=idx, state=NUD_PERMANENT)


def _pod_routes(ips: list[IPConfig], routes: list[Route]) -> list[Route]:
    """The subnet of every IP, then the IPAM routes, then a default per family if none."""
    out: list[Route] = []
    for ip in ips:
        subnet = ip.address.network
        if subnet.prefixlen < subnet.max_prefixlen:
            out.append(Route(dst=subnet, gw=ip.gateway))
    out += routes
    for ip in ips:
        default = DEFAULTS[ip.address.version]
        if all(r.dst != default for r in out):
            out.append(Route(dst=default, gw=ip.gateway))
    unique: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, Route] = {}
    for r in out:
        unique.setdefault(r.dst, r)
    return list(unique.values())


def _gateway_for(ips: list[IPConfig], version: int) -> Address:
    for ip in ips:
        if ip.address.version == version and ip.gateway is not None:
            return ip.gateway
    raise CniError(Code.INVALID_CONFIG, f"a route needs an IPv{version} gateway and the pod has "
                   f"no IPv{version} address")


def result_routes(ips: list[IPConfig], routes: list[Route]) -> list[Route]:
    """The routes reported in the result: those the pod got beyond its gateway host routes."""
    return [Route(dst=r.dst, gw=r.gw or _gateway_for(ips, r.dst.version))
            for r in _pod_routes(ips, routes)]


def teardown(netns_path: str, ifname: str, host_veth: str) -> None:
    """Remove the pair; each step tolerates what is already gone (DEL is idempotent)."""
    if netns_path:
        with contextlib.suppress(CniError), netns(netns_path) as pod:
            idx = link_index(pod, ifname)
            if idx is not None:
                _ignore_gone(pod.link, "del", index=idx)
    with IPRoute() as host:
        idx = link_index(host, host_veth)
        if idx is not None:
            _ignore_gone(host.link, "del", index=idx)


def _ignore_gone(op, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        op(*args, **kwargs)
    except NetlinkError as e:
        if e.code not in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
            raise


def check(netns_path: str, ifname: str, host_veth: str, mtu: int, prev: Result) -> None:
    """Compare the kernel's state with prevResult; raise CHECK_FAILED naming the drift."""
    ips = [ip for ip in prev.ips]
    problems: list[str] = []
    with netns(netns_path) as pod, IPRoute() as host:
        pod_idx = link_index(pod, ifname)
        host_idx = link_index(host, host_veth)
        if pod_idx is None:
            raise CniError(Code.CHECK_FAILED, f"interface {ifname} is missing in the container")
        if host_idx is None:
            raise CniError(Code.CHECK_FAILED, f"host veth {host_veth} is missing")
        link = pod.get_links(pod_idx)[0]
        if link.get_attr("IFLA_MTU") != mtu:
            problems.append(f"{ifname} mtu {link.get_attr('IFLA_MTU')} != {mtu}")
        if link.get_attr("IFLA_OPERSTATE") not in ("UP", "UNKNOWN", "LOWERLAYERDOWN") and \
                not link["flags"] & 1:
            problems.append(f"{ifname} is down")
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=pod_idx)}
        for ip in ips:
            if (str(ip.address.ip), ip.address.network.prefixlen) not in have:
                problems.append(f"address {ip.address} missing on {ifname}")
        pod_routes = {_route_key(r) for r in pod.get_routes(oif=pod_idx, table=254)}
        for r in result_routes(ips, prev.routes):
            if (str(r.dst), str(r.gw)) not in pod_routes:
                problems.append(f"route {r.dst} via {r.gw} missing in the container")
        host_routes = {_route_key(r)[0] for r in host.get_routes(oif=host_idx, table=254)}
        for ip in ips:
            want = f"{ip.address.ip}/{ip.address.max_prefixlen}"
            if want not in host_routes:
                problems.append(f"host route {want} dev {host_veth} missing")
    if problems:
        raise CniError(Code.CHECK_FAILED, "container network drifted from prevResult",
                       "; ".join(problems))


def _route_key(msg) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    family_default = "0.0.0.0" if msg["family"] == 2 else "::"
    dst = msg.get_attr("RTA_DST") or family_default
    return f"{dst}/{msg['dst_len']}", str(msg.get_attr("RTA_GATEWAY"))
