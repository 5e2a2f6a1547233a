"""The dataplane interface, the typed structure `inspect` returns for every mode, and what the
modes share (the routing-only mode, NAT pressure figures, re-sync after a load).

The engine never branches on the mode itself; plugin/dataplane/mode.py chooses the dataplane.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugin.config import NetConf
from plugin.log import log
from plugin.protocol import CniError
from plugin.state import Attachment, StateStore


def _key(name: str) -> dict[str, str]:
    """A field's key in inspect's JSON where it is not the field's own name."""
    return {"json": name}


def as_json(value: Any) -> Any:
    """A dataclass of this module as inspect's JSON: fields under their JSON key, the optional
    ones left out while None (each dataplane fills what it has)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.metadata.get("json", f.name): as_json(getattr(value, f.name))
                for f in dataclasses.fields(value) if getattr(value, f.name) is not None}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class PodEntry:
    """A pod address the dataplane knows (eBPF endpoint map entry, iptables jump)."""

    ip: str
    device: str
    ifindex: int
    pod_eni: bool = field(metadata=_key("podENI"))
    chain: str | None = None  # iptables: the pod's nat chain


@dataclass(frozen=True)
class NatFlow:
    proto: str
    pod: str  # "ip:port" or "[ip6]:port" (ICMP: the echo id)
    dst: str
    nat: str
    idle_seconds: float = field(metadata=_key("idleSeconds"))


@dataclass(frozen=True)
class RedirectEntry:
    """A pod-ENI pod's address: redirected by eBPF (MACs), or policy-routed (table)."""

    ip: str
    host_veth: str = field(metadata=_key("hostVeth"))
    eni: str
    gateway: str
    host_mac: str = field(default="", metadata=_key("hostMAC"))
    pod_mac: str = field(default="", metadata=_key("podMAC"))
    table: int | None = None


@dataclass(frozen=True)
class ProgramEntry:
    name: str
    id: int
    pin: str


@dataclass
class Inspection:
    """What a dataplane holds for a network, the same structure for every mode; `ferryctl
    inspect` and ferryd's gRPC render it, `as_json` gives `inspect --json`."""

    network: str
    dataplane: str
    loaded: bool = False
    pods: list[PodEntry] = field(default_factory=list)
    nat: list[NatFlow] = field(default_factory=list)
    redirects: list[RedirectEntry] = field(default_factory=list)
    filters: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # dev -> hook -> names
    uplink: str | None = None
    node_ip: str | None = field(default=None, metadata=_key("nodeIP"))
    node_ip6: str | None = field(default=None, metadata=_key("nodeIPv6"))
    nat_stats: dict[str, Any] | None = field(default=None, metadata=_key("natStats"))
    # eBPF: the pinned build
    pins: str | None = None
    hash: str | None = None
    loader: str | None = None
    features: dict[str, bool] | None = None
    pod_eni_mode: str | None = field(default=None, metadata=_key("podENIMode"))
    prog_ids: dict[str, int] | None = field(default=None, metadata=_key("progIds"))
    programs: list[ProgramEntry] | None = None
    # iptables: the back end and the network's rules per family ("v4", "v6")
    backend: str | None = None
    rules: dict[str, list[str]] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = as_json(self)
        return out


class Dataplane(Protocol):
    name: str

    # Node level: ferryd at start and `ferryctl load/unload/gc/inspect` by hand.
    def load(self, conf: NetConf, cflags: tuple[str, ...] = ()) -> dict[str, Any]:
        """Install the node-level state (idempotent) and re-sync recorded pods into it. The
        other mode's state is plugin/dataplane/mode.load's to remove, not this method's."""

    def unload(self, conf: NetConf) -> dict[str, Any]:
        """Remove every node-level and per-pod trace of this dataplane for the network."""

    def expire(self, conf: NetConf, idle_seconds: float | None = None) -> int:
        """Drop NAT state idle for longer than its natTimeouts (per protocol and TCP state),
        or than `idle_seconds` for every flow; how many flows went."""

    def nat_stats(self, conf: NetConf) -> dict[str, Any]:
        """NAT pressure (nat_summary's keys): flows per family, capacity, ports in use towards
        the busiest destination, allocation failures, translations and drops."""

    def inspect(self, conf: NetConf) -> Inspection:
        """What the dataplane holds: pods, NAT flows, redirects, filters, and its own state."""

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

    def inspect(self, conf: NetConf) -> Inspection:
        return Inspection(network=conf.name, dataplane=self.name, loaded=True)

    def attach(self, conf: NetConf, att: Attachment) -> None:
        return None

    def detach(self, conf: NetConf, att: Attachment) -> None:
        return None


FAMILY_LABELS = ("ipv4", "ipv6")


def nat_summary(rows: list[dict[str, Any]], capacity: int,
                alloc_failures: dict[str, int] | None = None,
                translations: dict[str, int] | None = None,
                drops: dict[str, int] | None = None) -> dict[str, Any]:
    """The NAT pressure figures both dataplanes report, from their flow rows (proto, dst
    "ip:port" or "[ip6]:port"). destPortsMax is Cilium's nat_endpoint_max_connection: the
    most external ports in use towards one destination (address, port, protocol), the figure
    that reaches the range's size before a pod's new flows to that destination fail."""
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
    synced = 0
    states = StateStore(conf.state_dir, conf.name, conf.veth_prefix)
    for listed in states.all():
        if not listed.complete:
            continue
        # A DEL may be removing the pod (standalone binaries run while ferryd starts): it
        # is waited for, and a record it removed is not re-applied.
        with states.locked():
            att = states.load(listed.container_id, listed.ifname)
            if att is None or not att.complete:
                continue
            try:
                dataplane.attach(conf, att)
                synced += 1
            except (CniError, OSError) as e:
                log.warning("load: cannot re-sync %s/%s: %s", att.container_id, att.ifname, e)
    return synced
