"""Pod-ENI redirection by policy routing (IPv4): the iptables dataplane's way, and the eBPF
one's where the kernel lacks bpf_redirect_peer/neigh.

Per ENI a route table TABLE_BASE + ENI ifindex holding `default via <gw> dev <eni> onlink` and
a /32 to each of its pods' host veths; rules `from <pod> to <pod CIDR> lookup main` (pod-to-pod
stays local), `from <pod> lookup <table>` and `iif <eni> lookup <table>`. Over plugin/rtnl.py,
as the rest of ADD and DEL.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from plugin.config import NetConf
from plugin.dataplane.base import RedirectEntry
from plugin.protocol import CniError, Code
from plugin.rtnl import RT_TABLE_MAIN, Rtnl, ifindex
from plugin.state import Attachment

TABLE_BASE = 0xF3E000  # per-ENI route tables: base + ENI ifindex
PRIO_POD_CIDR, PRIO_FROM, PRIO_IIF = 3900, 3901, 3902  # ahead of main (32766)
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTPROT_STATIC = 0, 253, 4
DEFAULT = ipaddress.IPv4Network("0.0.0.0/0")


def ipv4s(att: Attachment) -> list[str]:
    """The attachment's IPv4 addresses, without prefix length."""
    return [str(ipaddress.ip_interface(ip).ip) for ip in att.ips
            if ipaddress.ip_interface(ip).version == 4]


def _eni_table(device: str) -> tuple[int, int]:
    found = ifindex(device)
    if found is None:
        raise CniError(Code.INVALID_CONFIG, f"pod ENI device {device} does not exist",
                       "podENI.device must name a device in the node's namespace")
    return found, TABLE_BASE + found


def _eni_rules(conf: NetConf, ip: str, table: int) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"priority": PRIO_POD_CIDR, "src": ip, "dst": n, "table": RT_TABLE_MAIN}
        for n in conf.pod_cidrs if n.version == 4]
    rules.append({"priority": PRIO_FROM, "src": ip, "table": table})
    return rules


def attach_eni_routing(conf: NetConf, att: Attachment) -> None:
    assert att.pod_eni is not None
    gateway = att.pod_eni.get("gateway")
    with Rtnl() as rt:
        eni_idx, table = _eni_table(att.pod_eni["device"])
        host = ifindex(att.host_veth)
        if host is None:
            raise CniError(Code.INTERNAL, f"host veth {att.host_veth} is missing")
        if gateway:  # onlink: the gateway is not in this table
            rt.add_route(DEFAULT, eni_idx, RT_SCOPE_UNIVERSE, RTPROT_STATIC,
                         ipaddress.IPv4Address(gateway), replace=True, table=table,
                         onlink=True)
        else:
            rt.add_route(DEFAULT, eni_idx, RT_SCOPE_LINK, RTPROT_STATIC, replace=True,
                         table=table)
        for ip in ipv4s(att):
            rt.add_route(ipaddress.IPv4Network(f"{ip}/32"), host, RT_SCOPE_LINK, RTPROT_STATIC,
                         replace=True, table=table)
            for rule in _eni_rules(conf, ip, table):
                rt.rule(True, **rule)
        rt.rule(True, PRIO_IIF, table, iifname=att.pod_eni["device"])


def detach_eni_routing(conf: NetConf, att: Attachment) -> bool:
    """Remove the pod's rules and /32; the ENI's own rule and default route go with its last
    pod. True if anything was removed."""
    assert att.pod_eni is not None
    removed = False
    with Rtnl() as rt:
        found = ifindex(att.pod_eni["device"])
        tables = {TABLE_BASE + found} if found is not None else set()
        # The device may be gone: find its table from the pod's own rule.
        ips = ipv4s(att)
        tables |= {r.table for r in rt.rules() if r.priority == PRIO_FROM and r.src in ips}
        for table in tables:
            for ip in ips:
                for rule in _eni_rules(conf, ip, table):
                    removed |= rt.rule(False, **rule)
                # scope: the kernel matches it on delete
                removed |= rt.del_route(ipaddress.IPv4Network(f"{ip}/32"), table, RT_SCOPE_LINK)
            left = [r for r in rt.routes(table) if r.dst.endswith("/32") and ":" not in r.dst]
            if not left:
                removed |= rt.rule(False, PRIO_IIF, table, iifname=att.pod_eni["device"])
                for scope in (RT_SCOPE_UNIVERSE, RT_SCOPE_LINK):  # via the gateway, or on-link
                    rt.del_route(DEFAULT, table, scope)
    return removed


def eni_routing_rows(att: Attachment) -> list[RedirectEntry]:
    """What inspect shows of a pod ENI routed by policy (one row per IPv4 address)."""
    assert att.pod_eni is not None
    eni_idx = ifindex(att.pod_eni["device"])
    if not eni_idx:
        return []
    return [RedirectEntry(ip=ip, host_veth=att.host_veth, eni=att.pod_eni["device"],
                          gateway=att.pod_eni.get("gateway") or "", table=TABLE_BASE + eni_idx)
            for ip in ipv4s(att)]

