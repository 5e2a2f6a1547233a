"""Pod wiring over netlink (plugin.rtnl): the veth pair and the point-to-point routing.

Container side (as the AWS VPC CNI's setupContainerVethV4 and the reference ptp plugin):
  address ip/N without its prefix route (IFA_F_NOPREFIXROUTE, and IFA_F_NODAD for IPv6),
  gateway/32 (/128) scope link, a permanent neighbour entry gateway -> host veth MAC (so the
  pod never has to resolve the gateway: no proxy ARP, no address on the host veth), the
  subnet via the gateway, and the default route plus the IPAM routes via the gateway.
Host side: the veth named <prefix><hash>, up, DAD off, and a /32 (/128) route to each pod IP.
The process runs in the host (node) network namespace; the pod's is opened by path.

Removing a pair is the one slow step (~20-30 ms of RCU grace periods in the kernel, not CPU
and not under the RTNL lock). The node agent therefore defers it (teardown's `reap`, which the
engine gets from ferryd): DEL takes the host veth down, which flushes the pod's routes and
cuts its traffic at once, and moves it to REAP_GROUP; the agent's reaper then deletes the
whole group in one batch. The AWS VPC CNI does not delete the pair at all and leaves it to
the netns teardown.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from plugin.config import VETH_HASH_CHARS
from plugin.protocol import Address, CniError, Code, Interface, IPConfig, Result, Route
from plugin.rtnl import IFF_UP, Link, NetlinkError, Rtnl
from plugin.undo import Undo

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTPROT_STATIC = 4
DEFAULTS = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
# Link group of host veths whose pod was DELeted and that wait for the reaper ("fry" + 1).
REAP_GROUP = 0x66727901
_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH)


def host_veth_name(prefix: str, container_id: str, ifname: str,
                   k8s_pod: tuple[str, str] | None) -> str:
    """prefix + 11 hex chars of sha1("<namespace>.<pod>"), as the AWS VPC CNI names them.

    Without Kubernetes args the container id is hashed instead; a second interface of the same
    pod (ifname other than eth0) hashes its ifname too so that the names do not collide,
    joined by ":", which is in no pod name, container id or ifname (a "." made pod "a" +
    ifname "b.c" and pod "a.b" + ifname "c" share a name).
    """
    key = f"{k8s_pod[0]}.{k8s_pod[1]}" if k8s_pod else container_id
    if ifname != "eth0":
        key += f":{ifname}"
    return prefix + hashlib.sha1(key.encode()).hexdigest()[:VETH_HASH_CHARS]


@dataclass
class PodLinks:
    host: Interface
    container: Interface


@contextlib.contextmanager
def pod_netns(path: str) -> Iterator[tuple[Rtnl, int]]:
    """(netlink socket inside the pod's network namespace, an fd of that namespace). The
    namespace is opened by path, never created."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CniError(Code.INVALID_ENV, "network namespace does not exist",
                       f"CNI_NETNS={path}") from None
    except OSError as e:
        raise CniError(Code.INVALID_ENV, "cannot open network namespace",
                       f"CNI_NETNS={path}: {e}") from None
    try:
        try:
            nl = Rtnl.in_netns(fd)
        except OSError as e:
            raise CniError(Code.INVALID_ENV, "cannot enter network namespace",
                           f"CNI_NETNS={path}: {e}") from None
        with nl:
            yield nl, fd
    finally:
        os.close(fd)


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys/net", path).write_text(value)


def setup(netns_path: str, ifname: str, host_veth: str, owner: str, mtu: int,
          ips: list[IPConfig], routes: list[Route],
          replaceable: Callable[[Link], bool] = lambda link: False) -> PodLinks:
    """Create and address the veth pair, all or nothing; the host end carries `owner` (the
    attachment's state.owner_tag) in IFLA_IFALIAS, which is how DEL, GC and reconcile tell
    it from another sandbox's link of the same name.

    A link already holding the name is removed first if it waits for the reaper, or if
    `replaceable` says it is an older sandbox's of the same pod (kubelet re-creating the
    sandbox after a runtime restart, with the old one never DELeted); anything else is
    refused. If this raises, the pair it created is gone again, and a link it did not
    create (an interface of the same name already in the container, or on the host) is left
    untouched: the caller must not tear down by name after a failed setup.
    """
    with pod_netns(netns_path) as (pod, pod_fd), Rtnl() as host:
        if pod.link(ifname) is not None:
            raise CniError(Code.INVALID_ENV, f"interface {ifname} already exists in the "
                           "container", netns_path)
        old = host.link(host_veth)
        if old is not None:
            if old.group != REAP_GROUP and not replaceable(old):
                raise CniError(Code.INTERNAL, f"host interface {host_veth} already exists",
                               f"it is not ferry's or not this pod's (alias {old.alias!r})")
            # The same pod, DELeted and re-added before the reaper came by, or its older
            # sandbox: the newest sandbox of a pod is the one that gets the name.
            ignore_gone(host.del_link, old.index)
        host.add_veth(host_veth, ifname, pod_fd, mtu)
        host_link = host.link(host_veth)
        assert host_link is not None
        with Undo() as undo:
            # Deleting one end removes the pair, wherever the peer is.
            undo.push(lambda: ignore_gone(host.del_link, host_link.index))
            host.set_link(host_link.index, up=False, alias=owner)
            return _configure(pod, host, netns_path, ifname, host_link, mtu, ips, routes)


def _configure(pod: Rtnl, host: Rtnl, netns_path: str, ifname: str, host_link: Link,
               mtu: int, ips: list[IPConfig], routes: list[Route]) -> PodLinks:
    """Bring the fresh pair up and address and route both sides."""
    families = {ip.address.version for ip in ips}
    pod_link = pod.link(ifname)
    assert pod_link is not None
    if 6 in families:
        # The host veth's link-local address must be usable at once for neighbour
        # discovery towards the pod; there is nothing on a fresh veth to collide with.
        _sysctl(f"ipv6/conf/{host_link.name}/accept_dad", "0")
        _sysctl("ipv6/conf/all/forwarding", "1")
    if 4 in families:
        _sysctl("ipv4/ip_forward", "1")
    host.set_link(host_link.index, up=True)
    pod.set_link(pod_link.index, up=True)

    for ip in ips:
        if ip.gateway is None:
            raise CniError(Code.INVALID_CONFIG, f"IPAM gave {ip.address} no gateway",
                           "point-to-point wiring routes everything via the gateway")
        _configure_pod_ip(pod, pod_link.index, ip, host_link.mac)
    for route in _pod_routes(ips, routes):
        gw = route.gw or _gateway_for(ips, route.dst.version)
        try:
            pod.add_route(route.dst, pod_link.index, RT_SCOPE_UNIVERSE, RTPROT_STATIC, gw)
        except NetlinkError as e:
            if e.errno != errno.ENETUNREACH:
                raise
            # The pod's only on-link neighbours are its gateways: a route via anything else
            # is a config error (an IPAM route whose gw is not a gateway of the pod).
            raise CniError(Code.INVALID_CONFIG,
                           f"cannot add route {route.dst} via {gw} in the container",
                           f"gateway {gw} is not on-link (only the pod's gateways are)") \
                from None
    for ip in ips:
        host.add_route(host_net(ip.address.ip), host_link.index, RT_SCOPE_LINK, RTPROT_STATIC)
    return PodLinks(host=Interface(name=host_link.name, mac=host_link.mac, mtu=mtu),
                    container=Interface(name=ifname, mac=pod_link.mac, sandbox=netns_path,
                                        mtu=mtu))


def host_net(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) \
        -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def _configure_pod_ip(pod: Rtnl, idx: int, ip: IPConfig, host_mac: str) -> None:
    flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if ip.address.version == 6 else 0)
    pod.add_addr(idx, ip.address.ip, ip.address.network.prefixlen, flags)
    assert ip.gateway is not None
    pod.add_route(host_net(ip.gateway), idx, RT_SCOPE_LINK, RTPROT_STATIC)
    pod.add_neigh(idx, ip.gateway, host_mac)


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


def owned(link: Link, owner: str, untagged_ok: bool) -> bool:
    """Whether `link` belongs to the attachment `owner`: it carries that tag, or it carries
    none (made before ferry tagged its links, or an ADD killed before it tagged it) and the
    caller knows no other attachment claims it."""
    return link.alias == owner or (not link.alias and untagged_ok)


def teardown(netns_path: str, ifname: str, host_veth: str, owner: str,
             untagged_ok: bool, reap: Callable[[], None] | None = None) -> bool:
    """Remove the attachment's pair; each step tolerates what is already gone (DEL is
    idempotent). A link of that name owned by another attachment (the pod's newer sandbox)
    is left alone. True if the host end was ours (removed or handed to the reaper).
    reap: ferryd's reaper's wake-up; the pair is then left in REAP_GROUP for it to delete."""
    with Rtnl() as host:
        link = host.link(host_veth)
        if link is not None and owned(link, owner, untagged_ok):
            if reap is None:
                ignore_gone(host.del_link, link.index)
            else:
                # Down flushes the routes through it and cuts the pod off; the pair goes in
                # the reaper's next batch (the pod's end with it).
                ignore_gone(host.set_link, link.index, False, REAP_GROUP)
                reap()
            return True
    # No host end of ours (a half-done ADD, or a newer sandbox took the name over): the
    # pod's end may still be in this attachment's own netns.
    if netns_path:
        with contextlib.suppress(CniError), pod_netns(netns_path) as (pod, _):
            link = pod.link(ifname)
            if link is not None:
                try:
                    ignore_gone(pod.del_link, link.index)
                except NetlinkError as e:
                    if e.errno != errno.EOPNOTSUPP:  # lo, say: a device no ADD of ours made
                        raise
    return False


def ignore_gone(op: Callable[..., None], *args: object) -> None:
    try:
        op(*args)
    except NetlinkError as e:
        if e.errno not in _GONE:
            raise


def check(netns_path: str, ifname: str, host_veth: str, owner: str, mtu: int,
          prev: Result) -> None:
    """Compare the kernel's state with prevResult; raise CHECK_FAILED naming the drift."""
    ips = [ip for ip in prev.ips]
    problems: list[str] = []
    with pod_netns(netns_path) as (pod, _), Rtnl() as host:
        link = pod.link(ifname)
        host_link = host.link(host_veth)
        if link is None:
            raise CniError(Code.CHECK_FAILED, f"interface {ifname} is missing in the container")
        if host_link is None or host_link.group == REAP_GROUP:
            raise CniError(Code.CHECK_FAILED, f"host veth {host_veth} is missing")
        if not owned(host_link, owner, untagged_ok=True):
            raise CniError(Code.CHECK_FAILED, f"host veth {host_veth} belongs to another "
                           f"attachment ({host_link.alias})")
        if link.mtu != mtu:
            problems.append(f"{ifname} mtu {link.mtu} != {mtu}")
        if link.operstate not in ("UP", "UNKNOWN", "LOWERLAYERDOWN") and \
                not link.flags & IFF_UP:
            problems.append(f"{ifname} is down")
        have = pod.addrs(link.index)
        for ip in ips:
            if (str(ip.address.ip), ip.address.network.prefixlen) not in have:
                problems.append(f"address {ip.address} missing on {ifname}")
        pod_routes = {(r.dst, str(r.gateway)) for r in pod.routes() if r.oif == link.index}
        for r in result_routes(ips, prev.routes):
            if (str(r.dst), str(r.gw)) not in pod_routes:
                problems.append(f"route {r.dst} via {r.gw} missing in the container")
        host_routes = {r.dst for r in host.routes() if r.oif == host_link.index}
        for ip in ips:
            want = str(host_net(ip.address.ip))
            if want not in host_routes:
                problems.append(f"host route {want} dev {host_veth} missing")
    if problems:
        raise CniError(Code.CHECK_FAILED, "container network drifted from prevResult",
                       "; ".join(problems))
