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

    def expire(self, conf: NetConf, idle_seconds: float) -> int:
        """Drop NAT state idle for longer than `idle_seconds`; how many flows went."""

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

    def expire(self, conf: NetConf, idle_seconds: float) -> int:
        return 0

    def inspect(self, conf: NetConf) -> dict[str, Any]:
        return {"network": conf.name, "dataplane": self.name, "loaded": True, "pods": [],
                "nat": [], "redirects": [], "filters": {}}

    def attach(self, conf: NetConf, att: Attachment) -> None:
        return None

    def detach(self, conf: NetConf, att: Attachment) -> None:
        return None


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
