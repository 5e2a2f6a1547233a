"""Dataplanes: what happens to a pod's traffic beyond routing (SNAT, pod-ENI redirection).

One interface, one implementation per mode; the engine never branches on the mode itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from plugin.config import NetConf
from plugin.log import log
from plugin.state import Attachment


class Dataplane(Protocol):
    name: str

    # Node level: ferryd at start and `ferryctl load/unload/gc/inspect` by hand.
    def load(self, conf: NetConf, cflags: tuple[str, ...] = ()) -> dict[str, Any]:
        """Install the node-level state (idempotent) and re-sync recorded pods into it."""

    def unload(self, conf: NetConf) -> dict[str, Any]:
        """Remove every node-level and per-pod trace of this dataplane for the network."""

    def expire(self, conf: NetConf, idle_seconds: float | None = None) -> int:
        """Drop NAT state idle for longer than its natTimeouts (per protocol and TCP state),
        or than `idle_seconds` for every flow; how many flows went."""

    def nat_stats(self, conf: NetConf) -> dict[str, Any]:
        """NAT pressure (nat_summary's keys): flows per family, capacity, ports in use towards
        the busiest destination, allocation failures, translations and drops."""

    def inspect(self, conf: NetConf) -> dict[str, Any]:
        """What the dataplane holds: {"loaded", "pods", "nat", "redirects", "filters", ...}."""

    # Pod level: the CNI ADD and DEL.
    def attach(self, conf: NetConf, att: Attachment) -> None:
        """Install the pod's dataplane state; raise CniError on failure (ADD rolls back)."""

    def detach(self, conf: NetConf, att: Attachment) -> None:
        """Remove exactly what attach installed; a no-op when it is already gone."""


class RoutingOnly:
    """Plain routed pods: nothing beyond the veth and routes (mode "none")."""

    name = "none"

    def load(self, conf: NetConf, cflags: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"network": conf.name, "dataplane": self.name}

    def unload(self, conf: NetConf) -> dict[str, Any]:
        return {"network": conf.name, "dataplane": self.name}

    def expire(self, conf: NetConf, idle_seconds: float | None = None) -> int:
        return 0

    def nat_stats(self, conf: NetConf) -> dict[str, Any]:
        return nat_summary([], capacity=0)

    def inspect(self, conf: NetConf) -> dict[str, Any]:
        return {"network": conf.name, "dataplane": self.name, "loaded": True, "pods": [],
                "nat": [], "redirects": [], "filters": {}}

    def attach(self, conf: NetConf, att: Attachment) -> None:
        return None

    def detach(self, conf: NetConf, att: Attachment) -> None:
        return None


FAMILY_LABELS = ("ipv4", "ipv6")


def nat_summary(rows: list[dict[str, Any]], capacity: int,
                alloc_failures: dict[str, int] | None = None,
                translations: dict[str, int] | None = None,
                drops: dict[str, int] | None = None) -> dict[str, Any]:
    """The NAT pressure figures both dataplanes report, from their flow rows (inspect's "nat"
    rows: proto, dst "ip:port" or "[ip6]:port"). destPortsMax is Cilium's
    nat_endpoint_max_connection: the most external ports in use towards one destination
    (address, port, protocol), the figure that reaches the range's size before a pod's new
    flows to that destination fail."""
    entries = dict.fromkeys(FAMILY_LABELS, 0)
    per_dest: dict[tuple[str, str, str], int] = {}
    for row in rows:
        family = "ipv6" if row["dst"].startswith("[") else "ipv4"
        entries[family] += 1
        key = (family, row["proto"], row["dst"])
        per_dest[key] = per_dest.get(key, 0) + 1
    dest_max = dict.fromkeys(FAMILY_LABELS, 0)
    for (family, _, _), n in per_dest.items():
        dest_max[family] = max(dest_max[family], n)
    return {"entries": entries, "maxEntries": capacity, "destPortsMax": dest_max,
            "allocFailures": alloc_failures or dict.fromkeys(FAMILY_LABELS, 0),
            "translations": translations or {}, "drops": drops or {}}


def resync(dataplane: Dataplane, conf: NetConf) -> int:
    """Re-apply every complete attachment of the network (after a load that may have made
    fresh maps or chains); how many were applied. A pod that cannot be is logged, not fatal."""
    from plugin.protocol import CniError
    from plugin.state import StateStore

    synced = 0
    for att in StateStore(conf.state_dir, conf.name, conf.veth_prefix).all():
        if not att.complete:
            continue
        try:
            dataplane.attach(conf, att)
            synced += 1
        except (CniError, OSError) as e:
            log.warning("load: cannot re-sync %s/%s: %s", att.container_id, att.ifname, e)
    return synced


def select(conf: NetConf, loading: bool = False) -> Dataplane:
    """The dataplane for conf.dataplane; `auto` says in the log what it chose and why.
    `loading`: the caller is about to load the node-level state, so missing pins do not
    count against ebpf.

    ebpf: always the eBPF dataplane (its ADD fails with code 11 until `ferryctl load` ran).
    auto: ebpf when plugin.dataplane.ebpf.probe() passes, else the fallback below
    (iptables, or routing only when there is nothing to SNAT to).
    iptables: the fallback, plugin.dataplane.iptables.
    """
    if conf.dataplane == "none":
        return RoutingOnly()
    if conf.dataplane == "ebpf":
        from plugin.dataplane.ebpf import Ebpf

        return Ebpf()
    if conf.dataplane == "auto":
        from plugin.dataplane.ebpf import Ebpf, probe

        ok, why = probe(conf, need_pins=not loading)
        if ok:
            log.info("dataplane auto: ebpf (%s)", why)
            return Ebpf()
        log.info("dataplane auto: not ebpf (%s)", why)
    return fallback(conf)


def fallback(conf: NetConf) -> Dataplane:
    """The iptables dataplane: for mode iptables, and for auto where ebpf is not possible.
    auto on a node with no iptables or no SNAT target (no uplink, no node IP) routes only:
    the pods still work, and the log says why."""
    from plugin.dataplane.iptables import Iptables, probe

    if conf.dataplane == "auto":
        ok, why = probe(conf)
        if not ok:
            log.info("dataplane auto: routing only (%s)", why)
            return RoutingOnly()
        log.info("dataplane auto: iptables (%s)", why)
    return Iptables()
