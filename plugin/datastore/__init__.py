"""The cluster datastore: one interface for what cluster mode keeps outside the node.

Cluster mode (a network config with `datastore`) shares four kinds of record between nodes:
block affinities (which node owns which IPAM block), nodes (name and addresses, persistent,
plus a lease that says the node's ferryd is alive), workload endpoints (one per pod
attachment, as Calico's WorkloadEndpoint) and profiles (one per network). The engine, the
cluster IPAM and ferryd speak only this interface; `etcd` (etcd v3) is the one backend
today, and a Kubernetes backend (Node podCIDR, custom resources) would be another class
with the same methods. plugin.datastore.connect picks the backend (and shares connections).

Every method raises DatastoreUnavailable when the datastore cannot be reached: callers
decide whether that is fatal (a block claim: code 11) or queued (an endpoint write).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class DatastoreUnavailable(Exception):
    """The datastore did not answer (down, no quorum, timeout, TLS refused)."""


@dataclass
class Block:
    """An IPAM block and the node it is affine to."""

    cidr: str
    pool: str
    node: str


@dataclass
class NodeInfo:
    name: str
    ip4: str | None = None
    ip6: str | None = None
    # VXLAN tunnel endpoint: the device's MAC (FDB entries point at it) and the node's
    # address on the overlay (the next hop of routes through the VXLAN device).
    vtep_mac: str | None = None
    vtep_ip4: str | None = None
    vtep_ip6: str | None = None
    # Filled in on reads: seconds since the node's ferryd last renewed its lease
    # (None: no live lease, the agent is down or gone).
    lease_age: float | None = None


@dataclass
class Endpoint:
    """A workload endpoint, as the one Calico's CNI plugin writes per pod attachment."""

    node: str
    orchestrator: str           # "k8s" (K8S_POD_* args given) or "cni"
    network: str
    container_id: str
    ifname: str
    pod_namespace: str = ""
    pod_name: str = ""
    host_veth: str = ""
    mac: str = ""
    ips: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.network}.{self.container_id}.{self.ifname}"


@dataclass
class Profile:
    name: str
    # Rules as Calico's CNI plugin creates them for a new network profile.
    ingress: list[dict[str, Any]] = field(default_factory=list)
    egress: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


def record(obj: Any) -> dict[str, Any]:
    return asdict(obj)


class Datastore(Protocol):
    # IPAM blocks.
    def blocks(self) -> list[Block]:
        """Every claimed block of the cluster."""

    def claim_block(self, block: Block) -> bool:
        """Make block.node the block's owner if nobody owns it: atomic, so of two nodes
        racing for one block exactly one wins (True) and the other sees False."""

    def release_block(self, block: Block) -> bool:
        """Drop the affinity if block.node still owns it; False when it does not."""

    # Nodes.
    def register_node(self, node: NodeInfo, ttl: int) -> None:
        """Write the node record and start (or renew) its lease."""

    def renew_lease(self) -> None:
        """Keep the registered node's lease alive (call every ttl/3 s or so)."""

    def nodes(self) -> list[NodeInfo]:
        """Every node record, with lease_age filled in."""

    def remove_node(self, name: str) -> dict[str, int]:
        """Delete a node with its blocks and endpoints: {"blocks": n, "endpoints": m}."""

    # Workload endpoints and profiles.
    def put_endpoint(self, ep: Endpoint) -> None: ...

    def get_endpoint(self, node: str, key: str) -> Endpoint | None: ...

    def delete_endpoint(self, node: str, key: str) -> None: ...

    def endpoints(self, node: str | None = None) -> list[Endpoint]:
        """The endpoints of one node, or of the whole cluster."""

    def ensure_profile(self, profile: Profile) -> bool:
        """Create the profile unless it exists; True when this call created it."""

    def profiles(self) -> list[Profile]: ...

    # Change notification and health.
    def watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Call on_change() whenever a block or a node changes, until `stop` is set (blocks
        the calling thread; reconnects by itself, and calls on_change() after a reconnect,
        since events may have been missed)."""

    def healthy(self) -> bool: ...

    def close(self) -> None: ...
