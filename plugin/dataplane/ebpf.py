"""The eBPF dataplane: tc programs from bpf/snat.c and bpf/redirect.c, pinned per network.

Node level (`load_node`, run once by `ferryctl load` or the node agent): load (prebuilt ELF
objects, or bcc: the network's `loader`) or reopen the pins, write the SNAT config and
exclusion CIDRs, attach ferry_snat_eg / ferry_snat_in on the uplink's clsact, and re-sync
every recorded attachment into the (possibly new) maps.
Pod level (`Ebpf.attach`, the CNI ADD): map updates only, plus for a pod with a pod ENI one
filter on its host veth (what it sends) and one on its ENI (what it receives). The ADD path
opens pins with raw bpf(2): it never imports bcc and never compiles.
Kernel features are probed at load (loader/probes.py); where pod-ENI redirection's helpers
are missing the ENI programs are not loaded (ferry_meta records it) and pod ENIs get the
iptables dataplane's policy routing instead, while SNAT stays in eBPF.

SNAT covers IPv4 and IPv6 (one map set per family, see _Family); pod-ENI redirection is IPv4
only: a pod ENI pod's IPv6 traffic is routed through the node and SNATed like any pod's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader import pins, probes, syscall
from loader.layouts import (
    EP_F_POD_ENI,
    RANDOMIZE,
    STATS,
    TCP_FIN,
    TCP_RST,
    Counter,
    Endpoint,
    Excluded,
    Ip4Key,
    Ip6Key,
    Lpm4Key,
    Lpm6Key,
    NatConfig,
    NatTuple4,
    NatTuple6,
    Redirect,
    as_dict,
    ip4,
    ip4_str,
    ip6,
    ip6_str,
    mac_bytes,
    mac_str,
    port_host,
)
from loader.maps import open_map
from plugin import wiring
from plugin.config import NetConf
from plugin.dataplane import tc
from plugin.dataplane.base import (
    FAMILY_LABELS,
    Inspection,
    NatFlow,
    PodEntry,
    ProgramEntry,
    RedirectEntry,
    nat_summary,
    resync,
)
from plugin.dataplane.eni_routing import (
    attach_eni_routing,
    detach_eni_routing,
    eni_routing_rows,
)
from plugin.dataplane.node import discover
from plugin.log import log
from plugin.protocol import CniError, Code
from plugin.rtnl import Rtnl, ifindex
from plugin.state import Attachment, StateStore
from plugin.undo import Undo

PROTOS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp",
          socket.IPPROTO_ICMPV6: "icmp6"}
EXCLUDED_BY_CONFIG, EXCLUDED_POD_CIDR = 1, 2


@dataclass(frozen=True)
class _Family:
    """The maps and conversions of one address family: the v4 and v6 code paths below are the
    same code over this table."""

    version: int
    endpoints: str
    exclusions: str
    fwd: str
    rev: str
    key: type[Ip4Key] | type[Ip6Key]
    lpm: type[Lpm4Key] | type[Lpm6Key]
    nat_tuple: type[NatTuple4] | type[NatTuple6]
    raw: Callable[[Any], Any]  # address text -> the map's representation
    text: Callable[[Any], str]  # and back
    icmp: int

    def addrs(self, ips: list[str]) -> list[str]:
        """This family's addresses of an attachment's "addr/len" list, canonical text."""
        return [str(ipaddress.ip_interface(ip).ip) for ip in ips
                if ipaddress.ip_interface(ip).version == self.version]

    def endpoint(self, addr: Any, port: int) -> str:
        """'ip:port' or '[ip6]:port': rpartition(':') splits either."""
        text = self.text(addr)
        return f"{text}:{port_host(port)}" if self.version == 4 else f"[{text}]:{port_host(port)}"


V4 = _Family(4, "ferry_endpoints", "ferry_snat_excl", "ferry_nat_fwd", "ferry_nat_rev",
             Ip4Key, Lpm4Key, NatTuple4, ip4, ip4_str, socket.IPPROTO_ICMP)
V6 = _Family(6, "ferry_endpoint6", "ferry_snat_ex6", "ferry_nat_fwd6", "ferry_nat_rev6",
             Ip6Key, Lpm6Key, NatTuple6, ip6, ip6_str, socket.IPPROTO_ICMPV6)
FAMILIES = (V4, V6)


def pin_dir(conf: NetConf) -> str:
    return pins.pin_dir(conf.bpffs_root, conf.name)


def probe(conf: NetConf, need_pins: bool = True) -> tuple[bool, str]:
    """Can this node run the eBPF dataplane for `conf` right now? (ok, why).
    need_pins (the CNI ADD): the network's complete pins are the answer (their load checked
    the rest), a few stat calls and one map read. Otherwise (a load is coming): bpffs, the
    kernel's features (probed) and a loader that can run (loader/pins.choose_loader)."""
    if need_pins:
        rec = pins.pinned_meta(pin_dir(conf))
        if rec is None:
            return False, f"no loaded programs under {pin_dir(conf)} (run `ferryctl load`)"
        return True, f"{pins.pinned_loader(pin_dir(conf))} build pinned under {pin_dir(conf)}"
    if not pins.is_bpffs("/sys/fs/bpf"):
        return False, "bpffs is not mounted at /sys/fs/bpf"
    feats = probes.probe()
    if not feats.has(probes.CLSACT):
        return False, "the kernel has no clsact qdisc"
    try:
        loader, why = pins.choose_loader(conf.loader)
    except pins.LoaderUnavailable as e:
        return False, str(e)
    return True, f"loader {loader} ({why}){_missing_text(feats)}"


def _missing_text(feats: probes.Features) -> str:
    names = feats.missing_names()
    return f"; kernel lacks {', '.join(names)}" if names else ""


def eni_by_routing(missing: int) -> str:
    """'' when the pinned build redirects pod ENIs in eBPF, else why policy routing does."""
    feats = probes.Features(missing)
    if not feats.skipped_programs():
        return ""
    lacking = [probes.NAMES[b] for b in (probes.REDIRECT_PEER, probes.REDIRECT_NEIGH)
               if not feats.has(b)]
    return f"the kernel lacks {', '.join(lacking)}: pod ENIs use policy routing"


class Ebpf:
    name = "ebpf"

    def load(self, conf: NetConf, cflags: tuple[str, ...] = ()) -> dict[str, Any]:
        return load_node(conf, cflags)

    def unload(self, conf: NetConf) -> dict[str, Any]:
        return unload_node(conf)

    def expire(self, conf: NetConf, idle_seconds: float | None = None) -> int:
        return gc_nat(conf, idle_seconds)

    def nat_stats(self, conf: NetConf) -> dict[str, Any]:
        return nat_stats(conf)

    def inspect(self, conf: NetConf) -> Inspection:
        return inspect(conf)

    def attach(self, conf: NetConf, att: Attachment) -> None:
        d = pin_dir(conf)
        rec = pins.pinned_meta(d)
        if rec is None:
            raise CniError(Code.TRY_AGAIN_LATER,
                           f"the eBPF dataplane of network {conf.name} is not loaded",
                           f"no complete pins under {d}: run `ferryctl load --config "
                           "<this network's config file>` on the node, then retry")
        v4 = V4.addrs(att.ips)
        with Undo() as undo:  # the engine undoes only attaches that returned
            undo.push(lambda: self.detach(conf, att))
            host_idx = ifindex(att.host_veth)
            if host_idx is None:
                raise CniError(Code.INTERNAL, f"host veth {att.host_veth} is missing")
            for fam in FAMILIES:
                # The pod ENI flag (no SNAT) only where redirection exists: IPv4.
                flags = EP_F_POD_ENI if att.pod_eni and fam is V4 else 0
                with open_map(d, fam.endpoints) as eps:
                    for ip in fam.addrs(att.ips):
                        eps.put(fam.key(fam.raw(ip)), Endpoint(ifindex=host_idx, flags=flags))
            if att.pod_eni and eni_by_routing(rec.missing):
                attach_eni_routing(conf, att)
            elif att.pod_eni:
                with Rtnl() as rt:
                    self._attach_eni(d, att, rt, host_idx, v4)

    @staticmethod
    def _attach_eni(d: str, att: Attachment, rt: Rtnl, host_idx: int, v4: list[str]) -> None:
        assert att.pod_eni is not None
        device, gateway = att.pod_eni["device"], att.pod_eni.get("gateway")
        eni_idx = ifindex(device)
        if eni_idx is None:
            raise CniError(Code.INVALID_CONFIG, f"pod ENI device {device} does not exist",
                           "podENI.device must name a device in the node's namespace")
        host_mac, pod_mac = att.host_mac, att.pod_mac  # as wiring.setup made the pair
        if not (host_mac and pod_mac):
            host_mac, pod_mac = _read_macs(att, rt)  # a record from before they were kept
        entry = Redirect(host_ifindex=host_idx, eni_ifindex=eni_idx,
                         gateway=ip4(gateway) if gateway else 0)
        ctypes.memmove(entry.host_mac, mac_bytes(host_mac), 6)
        ctypes.memmove(entry.pod_mac, mac_bytes(pod_mac), 6)
        with open_map(d, "ferry_redirect") as rd:
            for ip in v4:
                rd.put(Ip4Key(ip4(ip)), entry)
        tc.attach(rt, host_idx, "ingress", pins.prog_path(d, "ferry_eni_eg"), "ferry_eni_eg")
        tc.attach(rt, eni_idx, "ingress", pins.prog_path(d, "ferry_eni_in"), "ferry_eni_in")

    def detach(self, conf: NetConf, att: Attachment) -> None:
        """Remove the pod's map entries and filters; whatever is already gone is skipped."""
        d = pin_dir(conf)
        for fam, name in ((V4, "ferry_redirect"), *((f, f.endpoints) for f in FAMILIES)):
            with contextlib.suppress(OSError), open_map(d, name) as m:
                for ip in fam.addrs(att.ips):
                    m.delete(fam.key(fam.raw(ip)))
        with contextlib.suppress(OSError):
            _purge_nat(d, att.ips)
        if not att.pod_eni:
            return  # the pod's filters are the ENI ones; the endpoint entry is all there is
        detach_eni_routing(conf, att)  # attached so when the kernel lacked the helpers
        with Rtnl() as rt:
            host_idx = ifindex(att.host_veth)
            if host_idx is not None:
                tc.detach(rt, host_idx, "ingress")
            eni_idx = ifindex(att.pod_eni["device"])
            if eni_idx is not None and not _eni_shared(conf, att):
                tc.detach(rt, eni_idx, "ingress")
                tc.drop_clsact_if_empty(rt, eni_idx)


def _read_macs(att: Attachment, rt: Rtnl) -> tuple[str, str]:
    """The host veth's and the pod interface's MACs read from the links, for a record that
    does not hold them (written before Attachment kept them)."""
    host_link = rt.link(att.host_veth)
    if host_link is None:
        raise CniError(Code.INTERNAL, f"host veth {att.host_veth} is missing")
    with wiring.pod_netns(att.netns) as (pod, _):
        pod_link = pod.link(att.ifname)
        if pod_link is None:
            raise CniError(Code.INTERNAL, f"{att.ifname} is missing in the container")
        return host_link.mac, pod_link.mac


def _eni_shared(conf: NetConf, att: Attachment) -> bool:
    """Whether another attachment uses att's pod ENI (the pod's newer sandbox, which took
    the pod over before att's DEL): its filter on the ENI then stays."""
    assert att.pod_eni is not None
    return any(o.pod_eni and o.pod_eni["device"] == att.pod_eni["device"]
               and (o.container_id, o.ifname) != (att.container_id, att.ifname)
               for o in StateStore(conf.state_dir, conf.name, conf.veth_prefix).all())


def load_node(conf: NetConf, cflags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Compile or reopen, configure, attach on the uplink and re-sync the pods. Idempotent:
    the node agent calls it at every start, `ferryctl load` by hand."""
    with Rtnl() as rt:
        # Resolve first: a node with nothing to SNAT to must not cost a compile and pins.
        node = discover(conf, rt)
        uplink, idx, node_ip, node_ip6 = node.uplink, node.index, node.ip4, node.ip6
        try:
            res = pins.load(conf.bpffs_root, conf.name, cflags=cflags, loader=conf.loader,
                            nat_max=conf.nat_max_entries)
        except pins.LoaderUnavailable as e:
            raise CniError(Code.INTERNAL, f"cannot load the eBPF dataplane: {e}",
                           "install the prebuilt objects (loader elf) or bcc with kernel "
                           "headers (loader bcc), or use dataplane iptables") from None
        low, high = conf.snat_ports
        with open_map(res.dir, "ferry_nat_cfg") as cfg:
            cfg.put(ctypes.c_uint32(0), NatConfig(
                node_ip=ip4(node_ip), port_min=low, port_max=high, uplink_ifindex=idx,
                node_ip6=ip6(node_ip6 or "::"), randomize=RANDOMIZE[conf.randomize_snat],
                hash_seed=secrets.randbits(32)))
        _fill_exclusions(conf, res.dir)
        hook: tc.Hook = "tcx" if conf.tc_attach == "tcx" and tc.tcx_supported() else "clsact"
        tc.attach(rt, idx, "egress", pins.prog_path(res.dir, "ferry_snat_eg"), "ferry_snat_eg",
                  hook)
        tc.attach(rt, idx, "ingress", pins.prog_path(res.dir, "ferry_snat_in"), "ferry_snat_in",
                  hook)
    synced = resync(Ebpf(), conf)
    summary = {"network": conf.name, "pins": res.dir, "compiled": res.compiled,
               "seconds": round(res.seconds, 4), "hash": res.hash[:16], "uplink": uplink,
               "nodeIP": str(node_ip), "nodeIPv6": str(node_ip6 or ""),
               "snatPorts": f"{low}-{high}", "randomizeSNAT": conf.randomize_snat,
               "natMaxEntries": conf.nat_max_entries, "carried": res.carried, "tcAttach": hook,
               "progIds": res.prog_ids,
               "loader": res.loader, "loaderWhy": res.why,
               "missingFeatures": probes.Features(res.missing).missing_names(),
               "podENI": eni_by_routing(res.missing) or "ebpf", "synced": synced}
    log.info("ebpf dataplane %s by the %s loader (%s)%s",
             "loaded and pinned" if res.compiled else "reused from pins (nothing loaded)",
             res.loader, res.why, f"; {eni_by_routing(res.missing)}"
             if eni_by_routing(res.missing) else "", extra=summary)
    return summary


def _fill_exclusions(conf: NetConf, d: str) -> None:
    """snatExcludeCidrs plus the pod CIDRs (pod-to-pod traffic between nodes keeps pod IPs),
    each family into its own trie."""
    for fam in FAMILIES:
        want: dict[tuple[int, str], int] = {}
        for net in conf.snat_exclude_cidrs:
            if net.version == fam.version:
                want[(net.prefixlen, str(net.network_address))] = EXCLUDED_BY_CONFIG
        for net in conf.pod_cidrs:
            if net.version == fam.version:
                want.setdefault((net.prefixlen, str(net.network_address)), EXCLUDED_POD_CIDR)
        with open_map(d, fam.exclusions) as ex:
            for k in list(ex.keys()):
                if (k.prefixlen, fam.text(k.addr)) not in want:
                    ex.delete(k)
            for (plen, addr), reason in want.items():
                ex.put(fam.lpm(prefixlen=plen, addr=fam.raw(addr)), Excluded(reason=reason))


def unload_node(conf: NetConf) -> dict[str, Any]:
    """Detach everything ferry put on devices for this network, then remove the pins."""
    removed: list[str] = []
    with Rtnl() as rt, contextlib.suppress(CniError):
        node = discover(conf, rt)
        for direction in ("egress", "ingress"):
            if tc.detach(rt, node.index, direction):  # type: ignore[arg-type]
                removed.append(f"{node.uplink} {direction}")
        tc.drop_clsact_if_empty(rt, node.index)
    dataplane = Ebpf()
    for att in StateStore(conf.state_dir, conf.name).all():
        if att.pod_eni:
            dataplane.detach(conf, att)
            removed.append(f"pod ENI {att.pod_eni['device']} of {att.container_id}")
    existed = pins.unload(conf.bpffs_root, conf.name)
    return {"network": conf.name, "pins": pin_dir(conf), "removedPins": existed,
            "detached": removed}


def inspect(conf: NetConf) -> Inspection:
    """Pods, NAT entries, redirects and filters, decoded with the shared layouts."""
    d = pin_dir(conf)
    out = Inspection(network=conf.name, dataplane=Ebpf.name, pins=d)
    rec = pins.pinned_meta(d)
    if rec is None:
        return out
    out.loaded, out.hash = True, bytes(rec.hash).hex()[:16]
    out.loader = pins.pinned_loader(d)
    out.features = probes.Features(rec.missing).describe()
    out.pod_eni_mode = eni_by_routing(rec.missing) or "ebpf"
    out.prog_ids = pins.prog_ids(d)
    out.programs = [ProgramEntry(name=name, id=prog_id, pin=pins.prog_path(d, name))
                    for name, prog_id in out.prog_ids.items()]
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for fam in FAMILIES:
        with open_map(d, fam.endpoints) as eps:
            for k, v in eps.items():
                out.pods.append(PodEntry(ip=fam.text(k.addr), device=_ifname(v.ifindex),
                                         ifindex=v.ifindex,
                                         pod_eni=bool(v.flags & EP_F_POD_ENI)))
        with open_map(d, fam.fwd) as fwd:
            for k, v in fwd.items():
                out.nat.append(_nat_row(fam, k, v, now))
    out.nat_stats = nat_stats(conf)
    with open_map(d, "ferry_redirect") as rd:
        for k, r in rd.items():
            raw = as_dict(r)
            out.redirects.append(RedirectEntry(
                ip=ip4_str(k.addr), host_veth=_ifname(r.host_ifindex),
                eni=_ifname(r.eni_ifindex), gateway=ip4_str(r.gateway) if r.gateway else "",
                host_mac=mac_str(raw["host_mac"]), pod_mac=mac_str(raw["pod_mac"])))  # type: ignore[arg-type]
    if out.pod_eni_mode != "ebpf":
        for att in StateStore(conf.state_dir, conf.name).all():
            if att.pod_eni:
                out.redirects += eni_routing_rows(att)
    with Rtnl() as rt, contextlib.suppress(CniError):
        node = discover(conf, rt)
        out.uplink, out.node_ip, out.node_ip6 = node.uplink, str(node.ip4), str(node.ip6 or "")
        out.filters[node.uplink] = {dr: tc.filters(rt, node.index, dr)  # type: ignore[arg-type]
                                    for dr in ("ingress", "egress")}
    return out


def _nat_row(fam: _Family, k: Any, v: Any, now: int) -> NatFlow:
    return NatFlow(proto=PROTOS.get(k.proto, str(k.proto)), pod=fam.endpoint(k.saddr, k.sport),
                   dst=fam.endpoint(k.daddr, k.dport), nat=fam.endpoint(v.addr, v.port),
                   idle_seconds=round(max(0, now - v.last_used) / 1e9, 1))


def _ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"#{index}"


def tcp_closed(entry: Any) -> bool:
    """A reverse entry's TCP flow is over: a RST either way, or a FIN both ways (bpf/snat.c
    tcp_closed)."""
    return TCP_RST in (entry.tcp_out, entry.tcp_in) or entry.tcp_out == entry.tcp_in == TCP_FIN


def _idle_limit(conf: NetConf, proto: int, back: Any,
                idle_seconds: float | None) -> float:
    if idle_seconds is not None:
        return idle_seconds
    t = conf.nat_timeouts
    if proto == socket.IPPROTO_TCP:
        return t.tcp_closed if back is not None and tcp_closed(back) else t.tcp_established
    return t.udp if proto == socket.IPPROTO_UDP else t.icmp


def gc_nat(conf: NetConf, idle_seconds: float | None = None) -> int:
    """Expire NAT pairs idle past their natTimeouts (TCP by state: closed flows soon,
    established ones after hours; UDP and ICMP by idle time), or past `idle_seconds` for all,
    both directions and families; returns how many flows were removed. The LRU maps also
    evict under pressure, and a new flow takes over a closed TCP flow's port by itself: this
    keeps the maps small and the idle UDP/ICMP ports free."""
    d = pin_dir(conf)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    removed = 0
    for fam in FAMILIES:
        with open_map(d, fam.fwd) as fwd, open_map(d, fam.rev) as rev:
            for k, v in fwd.items():
                rk = _reverse_key(fam, k, v)
                back = rev.get(rk)
                last = max(v.last_used, back.last_used if back is not None else 0)
                limit = _idle_limit(conf, k.proto, back, idle_seconds)
                if now - last > limit * 1e9:
                    fwd.delete(k)
                    rev.delete(rk)
                    removed += 1
            for k, v in rev.items():  # reverse entries whose forward half the LRU evicted
                limit = _idle_limit(conf, k.proto, v, idle_seconds)
                if now - v.last_used > limit * 1e9 and not _has_forward(fam, fwd, k, v):
                    rev.delete(k)
    return removed


def _has_forward(fam: _Family, fwd: Any, rk: Any, v: Any) -> bool:
    fk = fam.nat_tuple(saddr=v.addr, daddr=rk.saddr,
                       sport=v.port, dport=0 if rk.proto == fam.icmp else rk.sport,
                       proto=rk.proto)
    return fwd.get(fk) is not None


def nat_stats(conf: NetConf) -> dict[str, Any]:
    """NAT pressure from the maps (flows per family, ports per destination from the reverse
    map, which holds one entry per external port in use) and the per-CPU counters of
    ferry_stats, summed."""
    d = pin_dir(conf)
    rows = []
    for fam in FAMILIES:
        with open_map(d, fam.rev) as rev:
            claims = list(rev.keys())
        rows += [{"proto": PROTOS.get(k.proto, str(k.proto)),
                  "dst": fam.endpoint(k.saddr, k.sport)} for k in claims]
    counts = stats_counters(d)
    out = nat_summary(rows, capacity=conf.nat_max_entries,
                      alloc_failures={"ipv4": counts["alloc_fail4"],
                                      "ipv6": counts["alloc_fail6"]},
                      translations={f"{direction}_{family}": counts[f"xlate_{direction}{v}"]
                                    for family, v in zip(FAMILY_LABELS, "46", strict=True)
                                    for direction in ("eg", "in")},
                      drops={"port_exhausted": counts["alloc_fail4"] + counts["alloc_fail6"],
                             "rewrite_failed": counts["drop_rewrite"]})
    out["counters"] = counts
    return out


def _possible_cpus() -> int:
    """How many values a per-CPU map returns: one per possible CPU ("0-3" or "0,2-5")."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        n += int(high or low) - int(low) + 1
    return n or (os.cpu_count() or 1)


def stats_counters(d: str) -> dict[str, int]:
    """ferry_stats summed over the CPUs, by name (layouts.STATS). Raw bpf(2): a per-CPU map's
    lookup fills one value per possible CPU, more than PinnedMap.get's buffer holds."""
    values = (Counter * _possible_cpus())()
    out = {}
    with open_map(d, "ferry_stats") as m:
        for i, name in enumerate(STATS):
            found = syscall.map_lookup(m.fd, ctypes.c_uint32(i), values)
            out[name] = sum(v.packets for v in values) if found else 0
    return out


def _purge_nat(d: str, ips: list[str]) -> None:
    """Drop the NAT flows of a deleted pod (both families), so that its IP's next owner starts
    clean. A walk of the tables: DEL pays for it, the packet path does not."""
    for fam in FAMILIES:
        addrs = set(fam.addrs(ips))
        if not addrs:
            continue
        with open_map(d, fam.fwd) as fwd, open_map(d, fam.rev) as rev:
            for k, v in fwd.items():
                if fam.text(k.saddr) in addrs:
                    fwd.delete(k)
                    rev.delete(_reverse_key(fam, k, v))
            for k, v in rev.items():
                if fam.text(v.addr) in addrs:
                    rev.delete(k)


def _reverse_key(fam: _Family, k: Any, v: Any) -> Any:
    """The reply's tuple for a forward entry (ICMP/ICMPv6 echo: the id travels in dport)."""
    return fam.nat_tuple(saddr=k.daddr, daddr=v.addr,
                         sport=0 if k.proto == fam.icmp else k.dport, dport=v.port,
                         proto=k.proto)
