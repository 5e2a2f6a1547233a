"""The rtnetlink of every per-pod step, over a plain netlink socket: links, addresses,
routes (any table), neighbours, policy rules, the clsact qdisc and cls_bpf filters.

Why not pyroute2 here: a pod ADD is ~20 netlink requests, and each costs ~0.8 ms of
pyroute2's request machinery (an asyncio loop turn, message classes, argument processing)
against ~0.05 ms for the kernel; with struct-packed messages and a blocking socket the
whole ADD's netlink work takes about a millisecond. ADD and DEL (wiring, the dataplanes'
attach/detach, node discovery) use this module only, so they have one error type.
pyroute2 stays where the work is rare and rich: conntrack (ctnetlink), cluster routes and
the tests' own set-up.

Each request is sent with NLM_F_ACK and answered before the next one goes out, so a
failure names its step. Errors are NetlinkError, an OSError with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH = 28
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_NEWQDISC, RTM_DELQDISC = 36, 37
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_OPERSTATE = 1, 3, 4, 16
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_GROUP, IFLA_NET_NS_FD = 18, 20, 27, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_TABLE = 1, 2, 3, 6, 15
FR_ACT_TO_TBL, RT_TABLE_COMPAT = 1, 252
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 3, 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT, CLSACT_HANDLE = 0xFFFFFFF1, 0xFFFF0000
ETH_P_ALL = 0x0003
IFF_UP = 0x1
RT_TABLE_MAIN, RTN_UNICAST, RTNH_F_ONLINK = 254, 1, 4
NUD_PERMANENT = 0x80
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
_TCMSG = struct.Struct("=BxxxiIII")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NetlinkError(OSError):
    """The kernel refused a request; .errno is its error code."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    flags: int
    group: int
    operstate: str
    alias: str = ""  # IFLA_IFALIAS: ferry tags its host veths with their owner


@dataclass(frozen=True)
class RouteEntry:
    dst: str  # "10.0.0.0/24", "0.0.0.0/0"
    gateway: str | None
    oif: int | None
    table: int


@dataclass(frozen=True)
class AddrEntry:
    index: int
    ip: IPAddress
    prefixlen: int
    scope: int  # 0: global


@dataclass(frozen=True)
class RuleEntry:
    """An IPv4 policy rule, as far as ferry reads them."""

    priority: int
    src: str | None
    table: int


@dataclass(frozen=True)
class TcFilter:
    kind: str
    handle: int
    name: str  # TCA_BPF_NAME for bpf filters, else ""


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, _U32.pack(value))


def _name(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _attrs(data: bytes) -> dict[int, bytes]:
    """Top-level attributes of a message body (nested ones stay packed)."""
    out: dict[int, bytes] = {}
    at = 0
    while at + _RTATTR.size <= len(data):
        size, kind = _RTATTR.unpack_from(data, at)
        if size < _RTATTR.size:
            break
        out[kind & 0x3FFF] = data[at + _RTATTR.size:at + size]  # without NLA_F_NESTED etc.
        at += (size + 3) & ~3
    return out


def _table8(table: int) -> int:
    """rtm_table / fib_rule_hdr.table: the table itself below 256, else RT_TABLE_COMPAT (the
    RTA_TABLE / FRA_TABLE attribute then carries it, as iproute2 sends it)."""
    return table if table < 256 else RT_TABLE_COMPAT


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _parse_link(body: bytes) -> Link:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
    a = _attrs(body[_IFINFOMSG.size:])
    operstate = a[IFLA_OPERSTATE][0] if IFLA_OPERSTATE in a else 0
    return Link(index=index, name=a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
                mac=_mac(a.get(IFLA_ADDRESS, b"")), mtu=_U32.unpack(a[IFLA_MTU])[0],
                flags=flags, group=_U32.unpack(a[IFLA_GROUP])[0] if IFLA_GROUP in a else 0,
                operstate=OPERSTATES[operstate] if operstate < len(OPERSTATES) else "UNKNOWN",
                alias=a.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace"))


def ifindex(name: str) -> int | None:
    """The ifindex of link `name` in this thread's namespace, or None (an ioctl: no dump)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind fd."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Rtnl:
    """One NETLINK_ROUTE socket, bound to the namespace of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    @classmethod
    def in_netns(cls, fd: int) -> Rtnl:
        """A socket inside another network namespace: the calling thread enters it just long
        enough to open the socket (~0.1 ms; pyroute2's netns support forks a helper)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
            try:
                return cls()
            finally:
                setns(home)  # if this failed the thread would be lost in the pod: let it raise
        finally:
            os.close(home)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind,
                                      NLM_F_REQUEST | flags, self._seq, 0) + body)
        return self._seq

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """(type, body) of the answers to request `seq` until its ACK or dump end."""
        while True:
            data = self.sock.recv(1 << 16)
            at = 0
            while at + _NLMSGHDR.size <= len(data):
                size, kind, _, mseq, _ = _NLMSGHDR.unpack_from(data, at)
                body = data[at + _NLMSGHDR.size:at + size]
                at += (size + 3) & ~3
                if mseq != seq:
                    continue  # a late answer to an earlier, abandoned request
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return
                yield kind, body

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[bytes]:
        """Send one request, wait for its ACK; the bodies of any answers before it."""
        return [b for _, b in self._replies(self._send(kind, flags | NLM_F_ACK, body))]

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        return [b for _, b in self._replies(self._send(kind, NLM_F_DUMP, body))]

    # --- links ---------------------------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """The link called `name`, or None. The kernel looks the name up: no dump."""
        try:
            bodies = self.request(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0)
                                  + _name(IFLA_IFNAME, name))
        except NetlinkError as e:
            if e.errno == 19:  # ENODEV
                return None
            raise
        return _parse_link(bodies[0])

    def links(self) -> list[Link]:
        return [_parse_link(b) for b in self.dump(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0))]

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int) -> None:
        """A veth pair: `name` here, `peer` in the namespace behind peer_netns_fd; both down."""
        peer_info = (_IFINFOMSG.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, peer)
                     + _u32(IFLA_MTU, mtu) + _u32(IFLA_NET_NS_FD, peer_netns_fd))
        info = _name(IFLA_INFO_KIND, "veth") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        self.request(RTM_NEWLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, name)
                     + _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO, info),
                     NLM_F_CREATE | NLM_F_EXCL)

    def set_link(self, index: int, up: bool, group: int | None = None,
                 alias: str | None = None) -> None:
        body = _IFINFOMSG.pack(0, 0, index, IFF_UP if up else 0, IFF_UP)
        if group is not None:
            body += _u32(IFLA_GROUP, group)
        if alias is not None:
            body += _name(IFLA_IFALIAS, alias)
        self.request(RTM_NEWLINK, body)

    def del_link(self, index: int) -> None:
        self.request(RTM_DELLINK, _IFINFOMSG.pack(0, 0, index, 0, 0))

    def del_group(self, group: int) -> bool:
        """Delete every link in `group` at once: the kernel unregisters them as one batch
        (one set of RCU grace periods for all). False if the group had no links."""
        try:
            self.request(RTM_DELLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0) + _u32(IFLA_GROUP, group))
        except NetlinkError as e:
            if e.errno == 19:  # ENODEV
                return False
            raise
        return True

    # --- addresses, routes, neighbours ---------------------------------------------------------

    def add_addr(self, index: int, ip: IPAddress, prefixlen: int, flags: int) -> None:
        raw = ip.packed
        attrs = _attr(IFA_ADDRESS, raw) + _u32(IFA_FLAGS, flags)
        if ip.version == 4:
            attrs += _attr(IFA_LOCAL, raw)
        self.request(RTM_NEWADDR, _IFADDRMSG.pack(_FAMILY[ip.version], prefixlen, flags & 0xFF,
                                                  0, index) + attrs,
                     NLM_F_CREATE | NLM_F_EXCL)

    def addrs(self, index: int) -> set[tuple[str, int]]:
        """(address, prefixlen) of every address on link `index`."""
        out = set()
        for body in self.dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0)):
            _, prefixlen, _, _, idx = _IFADDRMSG.unpack_from(body)
            if idx == index:
                a = _attrs(body[_IFADDRMSG.size:])
                out.add((_ip(a.get(IFA_LOCAL) or a[IFA_ADDRESS]), prefixlen))
        return out

    def addresses(self, family: int = 0) -> list[AddrEntry]:
        """Every address of this namespace (of `family`, 0: both), in the kernel's order."""
        out = []
        for body in self.dump(RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, 0)):
            fam, prefixlen, _, scope, idx = _IFADDRMSG.unpack_from(body)
            if family and fam != family:
                continue
            a = _attrs(body[_IFADDRMSG.size:])
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw:
                out.append(AddrEntry(idx, ipaddress.ip_address(raw), prefixlen, scope))
        return out

    def add_route(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int,
                  scope: int, proto: int, gateway: IPAddress | None = None,
                  replace: bool = False, table: int = RT_TABLE_MAIN,
                  onlink: bool = False) -> None:
        body = _RTMSG.pack(_FAMILY[dst.version], dst.prefixlen, 0, 0, _table8(table), proto,
                           scope, RTN_UNICAST, RTNH_F_ONLINK if onlink else 0) \
            + _u32(RTA_OIF, oif) + _u32(RTA_TABLE, table)
        if dst.prefixlen:
            body += _attr(RTA_DST, dst.network_address.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        self.request(RTM_NEWROUTE, body,
                     NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL))

    def del_route(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, table: int,
                  scope: int) -> bool:
        """Delete the route to dst of `table` with that scope; False if there is none."""
        body = _RTMSG.pack(_FAMILY[dst.version], dst.prefixlen, 0, 0, _table8(table), 0, scope,
                           0, 0) + _u32(RTA_TABLE, table)
        if dst.prefixlen:
            body += _attr(RTA_DST, dst.network_address.packed)
        try:
            self.request(RTM_DELROUTE, body)
        except NetlinkError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT):
                return False
            raise
        return True

    def default_oif(self, family: int = socket.AF_INET) -> int | None:
        """The device of the main table's default route (the first one), or None."""
        for r in self.routes():
            if r.dst == ("0.0.0.0/0" if family == socket.AF_INET else "::/0") and r.oif:
                return r.oif
        return None

    def routes(self, table: int = RT_TABLE_MAIN) -> list[RouteEntry]:
        """Every IPv4 and IPv6 route of `table`."""
        out = []
        for body in self.dump(RTM_GETROUTE, _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)):
            family, dst_len, _, _, tbl, _, _, _, _ = _RTMSG.unpack_from(body)
            a = _attrs(body[_RTMSG.size:])
            if RTA_TABLE in a:
                tbl = _U32.unpack(a[RTA_TABLE])[0]
            if tbl != table:
                continue
            dst = _ip(a[RTA_DST]) if RTA_DST in a else \
                ("0.0.0.0" if family == socket.AF_INET else "::")
            out.append(RouteEntry(
                dst=f"{dst}/{dst_len}", gateway=_ip(a[RTA_GATEWAY]) if RTA_GATEWAY in a else None,
                oif=_U32.unpack(a[RTA_OIF])[0] if RTA_OIF in a else None, table=tbl))
        return out

    def add_neigh(self, index: int, ip: IPAddress, mac: str) -> None:
        """A permanent neighbour entry ip -> mac on link `index`."""
        self.request(RTM_NEWNEIGH, _NDMSG.pack(_FAMILY[ip.version], index, NUD_PERMANENT, 0, 0)
                     + _attr(NDA_DST, ip.packed) + _attr(NDA_LLADDR, bytes.fromhex(
                         mac.replace(":", ""))), NLM_F_CREATE | NLM_F_EXCL)


    # --- policy rules (IPv4) ---------------------------------------------------------------

    def rule(self, add: bool, priority: int, table: int, src: str | None = None,
             dst: ipaddress.IPv4Network | None = None, iifname: str | None = None) -> bool:
        """Add or delete one IPv4 rule `priority: [from src] [to dst] [iif X] lookup table`;
        False if it was already there (add) or not there (delete)."""
        body = _FIB_RULE_HDR.pack(socket.AF_INET, dst.prefixlen if dst else 0,
                                  32 if src else 0, 0, _table8(table), 0, 0, FR_ACT_TO_TBL, 0)
        body += _u32(FRA_PRIORITY, priority) + _u32(FRA_TABLE, table)
        if src:
            body += _attr(FRA_SRC, ipaddress.IPv4Address(src).packed)
        if dst is not None:
            body += _attr(FRA_DST, dst.network_address.packed)
        if iifname:
            body += _name(FRA_IIFNAME, iifname)
        try:
            self.request(RTM_NEWRULE if add else RTM_DELRULE, body,
                         NLM_F_CREATE | NLM_F_EXCL if add else 0)
        except NetlinkError as e:
            if e.errno == (errno.EEXIST if add else errno.ENOENT):
                return False
            raise
        return True

    def rules(self) -> list[RuleEntry]:
        out = []
        for body in self.dump(RTM_GETRULE, _FIB_RULE_HDR.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0,
                                                               0, 0)):
            tbl = _FIB_RULE_HDR.unpack_from(body)[4]
            a = _attrs(body[_FIB_RULE_HDR.size:])
            out.append(RuleEntry(
                priority=_U32.unpack(a[FRA_PRIORITY])[0] if FRA_PRIORITY in a else 0,
                src=_ip(a[FRA_SRC]) if FRA_SRC in a else None,
                table=_U32.unpack(a[FRA_TABLE])[0] if FRA_TABLE in a else tbl))
        return out

    # --- tc: the clsact qdisc and cls_bpf filters -------------------------------------------

    def add_clsact(self, index: int) -> bool:
        """Add the clsact qdisc; False if the device already has one."""
        try:
            self.request(RTM_NEWQDISC, _TCMSG.pack(0, index, CLSACT_HANDLE, TC_H_CLSACT, 0)
                         + _name(TCA_KIND, "clsact"), NLM_F_CREATE | NLM_F_EXCL)
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        return True

    def del_clsact(self, index: int) -> None:
        self.request(RTM_DELQDISC, _TCMSG.pack(0, index, CLSACT_HANDLE, TC_H_CLSACT, 0)
                     + _name(TCA_KIND, "clsact"))

    def replace_bpf_filter(self, index: int, parent: int, prio: int, handle: int, fd: int,
                           name: str) -> None:
        """Install (or replace) a direct-action cls_bpf filter running program `fd`, for
        every protocol, named `name` (what `tc filter show` prints)."""
        options = (_u32(TCA_BPF_FD, fd) + _name(TCA_BPF_NAME, name)
                   + _u32(TCA_BPF_CLASSID, 1) + _u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT))
        self.request(RTM_NEWTFILTER, _tc_filter_msg(index, parent, prio, handle)
                     + _name(TCA_KIND, "bpf") + _attr(TCA_OPTIONS, options),
                     NLM_F_CREATE | NLM_F_REPLACE)

    def del_bpf_filter(self, index: int, parent: int, prio: int, handle: int) -> None:
        self.request(RTM_DELTFILTER, _tc_filter_msg(index, parent, prio, handle)
                     + _name(TCA_KIND, "bpf"))

    def tc_filters(self, index: int, parent: int) -> list[TcFilter]:
        """The filters on hook `parent` of device `index` (not the per-preference headers)."""
        out = []
        for body in self.dump(RTM_GETTFILTER, _TCMSG.pack(0, index, 0, parent, 0)):
            handle = _TCMSG.unpack_from(body)[2]
            a = _attrs(body[_TCMSG.size:])
            kind = a.get(TCA_KIND, b"").rstrip(b"\0").decode()
            if not kind or handle == 0:
                continue
            opts = _attrs(a.get(TCA_OPTIONS, b""))
            out.append(TcFilter(kind, handle,
                                opts.get(TCA_BPF_NAME, b"").rstrip(b"\0").decode()))
        return out


def _tc_filter_msg(index: int, parent: int, prio: int, handle: int) -> bytes:
    """tcmsg of a filter for every protocol: tcm_info is priority << 16 | protocol (big
    endian)."""
    return _TCMSG.pack(0, index, handle, parent, prio << 16 | socket.htons(ETH_P_ALL))
