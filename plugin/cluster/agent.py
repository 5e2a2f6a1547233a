"""ferryd's part in cluster mode: register the node, keep its lease, follow the blocks.

Three threads: the lease keeper (registers the node, renews its lease every leaseTTL/3 s),
the watcher (etcd watch on blocks and nodes; any change wakes the syncer) and the syncer,
which on every wake-up and every resyncSeconds: reconciles the block cache with the
datastore, installs the routes to other nodes' blocks (host-gw or VXLAN), reconciles the
workload endpoints both ways and gives back blocks empty for blockReleaseSeconds. While the
datastore is unreachable, pods keep working (their routes and IPs are local), ADDs inside
the node's blocks keep working, and the syncer retries every second.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from plugin.cluster import endpoints, node_name, routes
from plugin.config import NetConf
from plugin.datastore import DatastoreUnavailable, NodeInfo
from plugin.datastore.connect import shared
from plugin.ipam.blocks import BlockAllocator
from plugin.log import log
from plugin.state import Attachment

RETRY_SECONDS = 1.0


@dataclass
class Status:
    """What ferryd reports about the cluster (gRPC, metrics, logs)."""

    datastore_up: bool = False
    registered: bool = False
    blocks: list[str] = field(default_factory=list)
    routes: int = 0
    endpoints: int = 0
    syncs: int = 0
    last_sync: float = 0.0          # unix time of the last complete sync
    last_error: str = ""


class ClusterAgent:
    def __init__(self, conf: NetConf) -> None:
        assert conf.cluster is not None and conf.datastore is not None
        self.conf = conf
        self.cluster = conf.cluster
        self.name = node_name(conf)
        self.ds = shared(conf.datastore)
        self.ipam = BlockAllocator(conf, self.ds)
        self.status = Status()
        self.info = self._node_info()
        self._vxlan_dev: int | None = None
        self._empty_since: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Endpoint writes handed over by ADD/DEL (key -> attachment, None: delete), newest
        # wins; the writer thread drains it, and keeps it while the datastore is down.
        self._pending: dict[str, Attachment | None] = {}
        self._pending_lock = threading.Lock()
        self._pending_added = threading.Event()
        self._threads: list[threading.Thread] = []

    def _node_info(self) -> NodeInfo:
        from plugin.dataplane.node import discover

        node = discover(self.conf)
        self._uplink_idx = node.index
        return NodeInfo(name=self.name, ip4=str(node.ip4), ip6=str(node.ip6) if node.ip6 else None)

    def start(self) -> None:
        if self.cluster.encap == "vxlan":
            self._vxlan_dev, mac = routes.ensure_vxlan(
                self.cluster.vxlan_vni, self.cluster.vxlan_port, str(self.info.ip4),
                self._uplink_idx)
            self.info.vtep_mac = mac
        endpoints.deferred[self.conf.name] = self.queue_endpoint
        for target, name in ((self._lease_loop, "cluster-lease"),
                             (lambda: self.ds.watch(self._wake.set, self._stop), "cluster-watch"),
                             (self._sync_loop, "cluster-sync"),
                             (self._writer_loop, "cluster-endpoints")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pending_added.set()
        endpoints.deferred.pop(self.conf.name, None)
        for t in self._threads:
            t.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def queue_endpoint(self, key: str, att: Attachment | None) -> None:
        with self._pending_lock:
            self._pending[key] = att
        self._pending_added.set()

    def _writer_loop(self) -> None:
        while not self._stop.is_set():
            self._pending_added.wait()
            self._pending_added.clear()
            with self._pending_lock:
                batch, self._pending = self._pending, {}
            for key, att in batch.items():
                try:
                    endpoints.write(self.conf, self.ds, key, att)
                except DatastoreUnavailable as e:
                    self.status.datastore_up = False
                    self.status.last_error = str(e)
                    with self._pending_lock:  # keep what is newer than this batch
                        self._pending = {**batch, **self._pending}
                    self._stop.wait(RETRY_SECONDS)
                    self._pending_added.set()
                    break

    def _lease_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.status.registered:
                    self.ds.register_node(self.info, self.cluster.lease_ttl)
                    self.status.registered = True
                    log.info("node registered", extra={"node": self.name, "ip4": self.info.ip4,
                                                       "ip6": self.info.ip6})
                    self._wake.set()
                else:
                    self.ds.renew_lease()
                pause = self.cluster.lease_ttl / 3
            except DatastoreUnavailable as e:
                self.status.datastore_up = False
                self.status.last_error = str(e)
                pause = RETRY_SECONDS
            self._stop.wait(pause)

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cluster.resync_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except DatastoreUnavailable as e:
                if self.status.datastore_up:
                    log.warning("datastore unreachable: %s", e)
                self.status.datastore_up = False
                self.status.last_error = str(e)
                self._stop.wait(RETRY_SECONDS)
                self._wake.set()  # retry: queued endpoint writes wait for this
            except Exception as e:  # keep syncing: a kernel refusal today may pass tomorrow
                log.exception("cluster sync failed")
                self.status.last_error = str(e)
                self._stop.wait(RETRY_SECONDS)

    def sync(self) -> dict[str, Any]:
        """One full pass; raises DatastoreUnavailable."""
        cache = self.ipam.sync()
        blocks, nodes = self.ds.blocks(), self.ds.nodes()
        if not any(n.name == self.name for n in nodes) and self.status.registered:
            self.status.registered = False  # removed (ferryctl node remove): register again
        routed = routes.sync(self.name, blocks, nodes, self._vxlan_dev)
        eps = endpoints.reconcile(self.conf, self.ds)
        released = self.ipam.release_empty(self._empty_since,
                                           self.cluster.block_release_seconds)
        self.status.datastore_up = True
        self.status.blocks = self.ipam.blocks()
        self.status.routes = routed["routes"]
        self.status.endpoints = eps["endpoints"]
        self.status.syncs += 1
        self.status.last_sync = time.time()
        out = {"blocks": cache, "routes": routed, "endpoints": eps, "released": released}
        if routed["added"] or routed["removed"] or released or any(cache.values()):
            log.info("cluster sync", extra={"node": self.name, **out})
        elif eps["written"] or eps["deleted"]:  # every ADD and DEL: not worth an info line
            log.debug("cluster sync", extra={"node": self.name, **out})
        return out

    def pools_in_use(self) -> dict[str, int]:
        """Blocks this node holds, per pool."""
        out = {str(p.cidr): 0 for p in self.cluster.pools}
        for b in self.status.blocks:
            net = ipaddress.ip_network(b)
            for p in self.cluster.pools:
                if net.version == p.cidr.version and net.subnet_of(p.cidr):  # type: ignore[arg-type]
                    out[str(p.cidr)] += 1
        return out
