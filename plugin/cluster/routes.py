"""Routes between nodes: every block of another node is routed to that node.

host-gw (`encap: none`, nodes on one L2): `<block> via <node IP>` on the main table.
VXLAN (`encap: vxlan`, nodes in different subnets): a VXLAN device `ferry.vxlan` on every
node; `<block> via <node IP> dev ferry.vxlan onlink`, a permanent neighbour entry mapping
that node IP to the peer's VXLAN MAC and an FDB entry sending that MAC to the peer's node
IP (the outer header), as Calico's VXLAN mode does with its tunnel addresses.

Everything ferry installs carries protocol RTPROT_FERRY, so a sync is a diff against the
kernel: routes of blocks that moved or of nodes that went are removed, nothing else is
touched.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from plugin.datastore import Block, NodeInfo
from plugin.log import log

RTPROT_FERRY = 243
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4
VXLAN_DEVICE = "ferry.vxlan"
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02  # the FDB of the VXLAN device itself (it is no bridge port)


@dataclass(frozen=True)
class Want:
    dst: str       # the block
    via: str       # the owner's node IP of the block's family
    vxlan: bool


def desired(me: str, blocks: list[Block], nodes: list[NodeInfo], vxlan: bool) -> set[Want]:
    """The routes this node needs: one per block of another node whose address of the
    block's family is known."""
    by_name = {n.name: n for n in nodes}
    out = set()
    for b in blocks:
        node = by_name.get(b.node)
        if b.node == me or node is None:
            continue
        via = node.ip6 if ":" in b.cidr else node.ip4
        if via:
            out.add(Want(b.cidr, via, vxlan))
    return out


def _family(cidr: str) -> int:
    return socket.AF_INET6 if ":" in cidr else socket.AF_INET


def installed(ipr: IPRoute) -> dict[str, object]:
    """ferry's routes in the main table, by destination."""
    out: dict[str, object] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
            if r["proto"] != RTPROT_FERRY:
                continue
            out[f"{r.get_attr('RTA_DST')}/{r['dst_len']}"] = r
    return out


def _stale(r: object, w: Want | None, vxlan_dev: int | None) -> bool:
    if w is None:
        return True
    via = r.get_attr("RTA_GATEWAY")  # type: ignore[attr-defined]
    on_vxlan = r.get_attr("RTA_OIF") == vxlan_dev  # type: ignore[attr-defined]
    return via != w.via or on_vxlan != (vxlan_dev is not None)


def sync(me: str, blocks: list[Block], nodes: list[NodeInfo],
         vxlan_dev: int | None = None) -> dict[str, int]:
    """Make the kernel's ferry routes (and, with VXLAN, neighbour and FDB entries) equal
    to what the blocks and nodes ask for; {"routes": n, "added": a, "removed": r}."""
    want = {w.dst: w for w in desired(me, blocks, nodes, vxlan_dev is not None)}
    added = removed = 0
    with IPRoute() as ipr:
        have = installed(ipr)
        for dst, r in have.items():
            if _stale(r, want.get(dst), vxlan_dev):
                with contextlib.suppress(NetlinkError):
                    ipr.route("del", dst=dst, table=RT_TABLE_MAIN, proto=RTPROT_FERRY,
                              family=_family(dst))
                removed += 1
        if vxlan_dev is not None:
            _sync_vxlan_peers(ipr, vxlan_dev, me, nodes)  # neighbours before onlink routes
        have = installed(ipr)
        for w in want.values():
            if w.dst in have:
                continue
            kw: dict[str, object] = {"dst": w.dst, "gateway": w.via, "proto": RTPROT_FERRY,
                                     "table": RT_TABLE_MAIN, "family": _family(w.dst)}
            if vxlan_dev is not None:
                kw.update(oif=vxlan_dev, flags=RTNH_F_ONLINK)
            try:
                ipr.route("replace", **kw)
                added += 1
            except NetlinkError as e:
                log.warning("cannot route block %s via %s: %s", w.dst, w.via, e)
    return {"routes": len(want), "added": added, "removed": removed}


def remove_all() -> int:
    """Every route ferry installed (a node leaving the cluster); how many went."""
    with IPRoute() as ipr:
        have = installed(ipr)
        for dst in have:
            with contextlib.suppress(NetlinkError):
                ipr.route("del", dst=dst, table=RT_TABLE_MAIN, proto=RTPROT_FERRY,
                          family=_family(dst))
    return len(have)


def ensure_vxlan(vni: int, port: int, local: str, uplink: int) -> tuple[int, str]:
    """The node's VXLAN device (created once, up, MTU the uplink's minus the 50 bytes of
    outer headers): (ifindex, MAC). No learning: ferry writes every peer's FDB and
    neighbour entry itself."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=VXLAN_DEVICE)
        if not found:
            mtu = ipr.get_links(uplink)[0].get_attr("IFLA_MTU")
            ipr.link("add", ifname=VXLAN_DEVICE, kind="vxlan", vxlan_id=vni, vxlan_port=port,
                     vxlan_local=local, vxlan_link=uplink, vxlan_learning=0, mtu=mtu - 50)
            found = ipr.link_lookup(ifname=VXLAN_DEVICE)
        idx = found[0]
        ipr.link("set", index=idx, state="up")
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    return idx, mac


def _sync_vxlan_peers(ipr: IPRoute, dev: int, me: str, nodes: list[NodeInfo]) -> None:
    """Per peer: neighbour <node IP> -> <peer VTEP MAC> and FDB <MAC> -> <peer node IP>;
    the entries of peers that are gone are removed."""
    peers = [n for n in nodes if n.name != me and n.vtep_mac and n.ip4]
    keep_macs = {n.vtep_mac for n in peers}
    for n in peers:
        for ip in (n.ip4, n.ip6):
            if ip:
                ipr.neigh("replace", dst=ip, lladdr=n.vtep_mac, ifindex=dev,
                          state=NUD_PERMANENT, family=_family(ip))
        ipr.fdb("replace", ifindex=dev, lladdr=n.vtep_mac, dst=n.ip4,
                state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
    for family in (socket.AF_INET, socket.AF_INET6):
        for nb in ipr.get_neighbours(family=family, ifindex=dev):
            mac = nb.get_attr("NDA_LLADDR")
            if mac and mac not in keep_macs:
                with contextlib.suppress(NetlinkError):
                    ipr.neigh("del", dst=nb.get_attr("NDA_DST"), ifindex=dev, family=family)
    for entry in ipr.fdb("dump", ifindex=dev):
        mac = entry.get_attr("NDA_LLADDR")
        if entry.get_attr("NDA_DST") and mac not in keep_macs:
            with contextlib.suppress(NetlinkError):
                ipr.fdb("del", ifindex=dev, lladdr=mac, dst=entry.get_attr("NDA_DST"),
                        flags=NTF_SELF)
