"""Node discovery: the uplink device and the node addresses that pods are SNATed to, from the
config or else from the node's addresses and default route. Both dataplanes use it (at load,
and iptables on every ADD), over plugin/rtnl.py: a handful of requests, no pyroute2."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from plugin.config import NetConf
from plugin.protocol import CniError, Code
from plugin.rtnl import IPAddress, Rtnl, ifindex


@dataclass(frozen=True)
class NodeAddrs:
    uplink: str
    ip4: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address | None  # None: no IPv6 SNAT (IPv6 is routed as it is)
    index: int = 0  # the uplink's ifindex


def discover(conf: NetConf, rt: Rtnl | None = None) -> NodeAddrs:
    """The uplink and node addresses of `conf` in this namespace; CniError (INVALID_CONFIG)
    when there is no uplink or no IPv4 address to SNAT to."""
    if rt is None:
        with Rtnl() as own:
            return discover(conf, own)
    idx = _uplink_index(conf, rt)
    node_ip = conf.node_ip if isinstance(conf.node_ip, ipaddress.IPv4Address) \
        else _first_global(rt, idx, socket.AF_INET)
    if node_ip is None:
        raise CniError(Code.INVALID_CONFIG, "the uplink has no IPv4 address to SNAT to",
                       "set `nodeIP`")
    assert isinstance(node_ip, ipaddress.IPv4Address)
    return NodeAddrs(socket.if_indextoname(idx), node_ip, _node_ip6(conf, rt, idx), idx)


def _uplink_index(conf: NetConf, rt: Rtnl) -> int:
    """Config first, else the device holding nodeIP, else the default route's device."""
    idx: int | None = None
    if conf.uplink:
        idx = ifindex(conf.uplink)
        if idx is None:
            raise CniError(Code.INVALID_CONFIG, f"uplink device {conf.uplink} does not exist")
    elif conf.node_ip is not None:
        idx = next((a.index for a in rt.addresses() if a.ip == conf.node_ip), None)
    else:
        idx = rt.default_oif(socket.AF_INET)
    if idx is None:
        raise CniError(Code.INVALID_CONFIG, "cannot tell the uplink device",
                       "set `uplink` (or `nodeIP`) in the network config")
    return idx


def _node_ip6(conf: NetConf, rt: Rtnl, idx: int) -> ipaddress.IPv6Address | None:
    """nodeIPv6, else an IPv6 nodeIP, else the uplink's first global IPv6."""
    if conf.node_ip6 is not None:
        return conf.node_ip6
    if isinstance(conf.node_ip, ipaddress.IPv6Address):
        return conf.node_ip
    found = _first_global(rt, idx, socket.AF_INET6)
    assert found is None or isinstance(found, ipaddress.IPv6Address)
    return found


def _first_global(rt: Rtnl, idx: int, family: int) -> IPAddress | None:
    """The device's first global-scope address of `family` (not link-local, not host)."""
    return next((a.ip for a in rt.addresses(family) if a.index == idx and a.scope == 0), None)
