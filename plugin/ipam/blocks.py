"""Cluster IPAM: pools cut into blocks, each block affine to one node, IPs allocated locally.

A node allocates inside the blocks it owns with the host-local store (one reservation file
per IP under <dataDir>/<network>/, the same format and lock), so an ADD that finds a free
address makes no datastore call and a DEL never needs the datastore. When the node's blocks
of a pool are full it claims the next free block with an atomic datastore transaction
(another node racing for it makes the claim fail, and the walk goes on to the next block);
the datastore unreachable at that moment is code 11 (try again later). ferryd gives back
blocks that stayed empty for blockReleaseSeconds.

The node's blocks are cached in <dataDir>/<network>.blocks.json, written under the store's
lock; ferryd's sync() reconciles the cache with the datastore's affinities.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from plugin.cluster import node_name
from plugin.cluster.config import PoolConfig
from plugin.config import NetConf
from plugin.datastore import Block, Datastore, DatastoreUnavailable
from plugin.datastore.connect import shared
from plugin.ipam.allocator import Span, candidates, read_resolv_conf, release_invalid
from plugin.ipam.store import Store
from plugin.log import log
from plugin.protocol import Address, CniError, Code, IPConfig, Network, Result, Route
from plugin.undo import Undo


def block_span(pool: PoolConfig, cidr: Network) -> Span:
    """A block as a host-local range: the pool's prefix length and gateway (the pod routes
    the pool via its gateway), never the pool's network, gateway or broadcast address."""
    net = pool.cidr
    last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
    start = max(int(cidr.network_address), int(net.network_address) + 1)
    end = min(int(cidr.broadcast_address), last)
    return Span(subnet=net, start=start, end=end, gateway=pool.gateway)


def block_count(pool: PoolConfig) -> int:
    assert pool.block_size is not None
    return 1 << (pool.block_size - pool.cidr.prefixlen)


def nth_block(pool: PoolConfig, n: int) -> Network:
    assert pool.block_size is not None
    size = 1 << (pool.cidr.max_prefixlen - pool.block_size)
    return ipaddress.ip_network((int(pool.cidr.network_address) + n * size, pool.block_size))


def start_index(pool: PoolConfig, node: str) -> int:
    """Where a node starts looking for a free block: spread by a hash of its name, so nodes
    claiming at the same time mostly try different blocks."""
    digest = hashlib.sha256(f"{node}/{pool.cidr}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % block_count(pool)


@dataclass
class Affinity:
    """The node's blocks as it knows them locally (the cache file)."""

    blocks: dict[str, str] = field(default_factory=dict)  # block cidr -> pool cidr

    def of(self, pool: PoolConfig) -> list[Network]:
        return sorted((ipaddress.ip_network(b) for b, p in self.blocks.items()
                       if p == str(pool.cidr)), key=lambda n: int(n.network_address))


class BlockAllocator:
    def __init__(self, conf: NetConf, datastore: Datastore | None = None) -> None:
        assert conf.cluster is not None and conf.datastore is not None
        self.conf = conf
        self.node = node_name(conf)
        self.pools = conf.cluster.pools
        self.store = Store(conf.ipam.data_dir, conf.name)
        self.cache = Path(conf.ipam.data_dir) / f"{conf.name}.blocks.json"
        self._datastore = datastore

    @property
    def datastore(self) -> Datastore:
        if self._datastore is None:
            assert self.conf.datastore is not None
            self._datastore = shared(self.conf.datastore)
        return self._datastore

    # The cache file (callers hold the store lock).
    def load(self) -> Affinity:
        try:
            data = json.loads(self.cache.read_text())
        except (FileNotFoundError, ValueError):
            return Affinity()
        return Affinity(blocks=dict(data.get("blocks", {})))

    def save(self, aff: Affinity) -> None:
        tmp = self.cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"node": self.node, "blocks": aff.blocks}, sort_keys=True))
        tmp.replace(self.cache)

    # ADD: one IP per pool, all or nothing.
    def allocate(self, container_id: str, ifname: str, requested: list[Address]) -> Result:
        if requested:
            raise CniError(Code.INVALID_CONFIG, "requested IPs are not supported by "
                           "ferry-cluster IPAM", ", ".join(map(str, requested)))
        ips: list[IPConfig] = []
        with self.store.locked() as store:
            held = store.owned_by(container_id, ifname)
            if held:
                raise CniError(Code.IP_UNAVAILABLE, "duplicate allocation is not allowed",
                               f"{container_id}/{ifname} already holds "
                               f"{', '.join(map(str, held))}; DEL it first")
            aff = self.load()

            def give_back() -> None:  # the IPs taken so far
                for ipc in ips:
                    store.release(ipc.address.ip)

            with Undo() as undo:
                undo.push(give_back)
                for idx, pool in enumerate(self.pools):
                    ipc = self._next(store, idx, pool, aff.of(pool), container_id, ifname)
                    if ipc is None:
                        block = self._claim(pool, aff)
                        ipc = self._next(store, idx, pool, [block], container_id, ifname)
                    if ipc is None:  # a claimed block is empty by construction
                        raise CniError(Code.IPAM_EXHAUSTED, f"new block of {pool.cidr} is full")
                    ips.append(ipc)
        ipam = self.conf.ipam
        return Result(ips=ips, routes=[Route(dst=r.dst, gw=r.gw) for r in ipam.routes],
                      dns=read_resolv_conf(ipam.resolv_conf))

    @staticmethod
    def _next(store: Store, idx: int, pool: PoolConfig, blocks: list[Network], cid: str,
              ifname: str) -> IPConfig | None:
        spans = [block_span(pool, b) for b in blocks]
        if not spans:
            return None
        for span, ip in candidates(spans, store.last_reserved(idx)):
            if store.reserve(ip, cid, ifname, idx):
                return span.config(ip)
        return None

    def _claim(self, pool: PoolConfig, aff: Affinity) -> Network:
        """A new block of `pool` for this node (caller holds the store lock): one the
        datastore says is ours already (a lost cache), else the first free one won."""
        assert self.conf.cluster is not None
        limit = self.conf.cluster.max_blocks_per_host
        if len(aff.of(pool)) >= limit:
            raise CniError(Code.IPAM_EXHAUSTED, f"no free IP in this node's blocks of "
                           f"{pool.cidr} and maxBlocksPerHost ({limit}) reached")
        started = time.monotonic()
        try:
            claimed = {b.cidr: b for b in self.datastore.blocks()}
            mine = [b for b in claimed.values() if b.node == self.node
                    and b.pool == str(pool.cidr) and b.cidr not in aff.blocks]
            if mine:
                block = ipaddress.ip_network(mine[0].cidr)
            else:
                block = self._win_block(pool, set(claimed))
        except DatastoreUnavailable as e:
            raise CniError(Code.TRY_AGAIN_LATER, "cannot claim an IPAM block: datastore "
                           "unreachable", str(e)) from None
        aff.blocks[str(block)] = str(pool.cidr)
        self.save(aff)
        log.info("claimed block %s", block, extra={
            "node": self.node, "network": self.conf.name, "pool": str(pool.cidr),
            "ms": round((time.monotonic() - started) * 1000, 1)})
        return block

    def _win_block(self, pool: PoolConfig, claimed: set[str]) -> Network:
        total = block_count(pool)
        first = start_index(pool, self.node)
        tried = 0
        for k in range(total):
            block = nth_block(pool, (first + k) % total)
            if str(block) in claimed:
                continue
            tried += 1
            if self.datastore.claim_block(Block(str(block), str(pool.cidr), self.node)):
                return block
            if tried > 4096:  # every block we try is being taken under us: give up for now
                break
        raise CniError(Code.IPAM_EXHAUSTED, f"pool {pool.cidr} has no free block")

    # ferryd: reconcile with the datastore, give back empty blocks.
    def sync(self) -> dict[str, int]:
        """Make the cache agree with the datastore (raises DatastoreUnavailable): adopt blocks
        the datastore says are ours, re-claim ours that it lost while pods use them, drop the
        rest (owned by another node, or unused and no longer ours)."""
        out = {"adopted": 0, "reclaimed": 0, "dropped": 0}
        pools = {str(p.cidr) for p in self.pools}
        with self.store.locked() as store:
            aff = self.load()
            owners = {b.cidr: b for b in self.datastore.blocks()}
            used = self._used_blocks(store, aff)
            for cidr, b in owners.items():
                if b.node == self.node and b.pool in pools and cidr not in aff.blocks:
                    aff.blocks[cidr] = b.pool
                    out["adopted"] += 1
            for cidr, pool in list(aff.blocks.items()):
                owner = owners.get(cidr)
                if owner is not None and owner.node == self.node:
                    continue
                if owner is None and cidr in used and \
                        self.datastore.claim_block(Block(cidr, pool, self.node)):
                    out["reclaimed"] += 1
                    continue
                if owner is not None and cidr in used:
                    log.error("block %s is in use here but owned by node %s", cidr, owner.node)
                del aff.blocks[cidr]
                out["dropped"] += 1
            self.save(aff)
        return out

    def _used_blocks(self, store: Store, aff: Affinity) -> set[str]:
        nets = [ipaddress.ip_network(b) for b in aff.blocks]
        return {str(n) for ip in store.reservations() for n in nets if ip in n}

    def release_empty(self, empty_since: dict[str, float], grace: float) -> list[str]:
        """Give back blocks without a reservation for `grace` seconds (empty_since: the
        caller's memory of when each went empty). The cache drops the block before the
        datastore does, under the store lock, so no ADD allocates from a block that another
        node may already be claiming."""
        released = []
        now = time.monotonic()
        with self.store.locked() as store:
            aff = self.load()
            used = self._used_blocks(store, aff)
            for cidr in list(empty_since):
                if cidr not in aff.blocks or cidr in used:
                    del empty_since[cidr]
            for cidr, pool in list(aff.blocks.items()):
                if cidr in used:
                    continue
                if now - empty_since.setdefault(cidr, now) < grace:
                    continue
                del aff.blocks[cidr]
                self.save(aff)
                del empty_since[cidr]
                try:
                    self.datastore.release_block(Block(cidr, pool, self.node))
                except DatastoreUnavailable as e:
                    # Still ours in the datastore: the next sync() adopts it again.
                    log.warning("cannot release block %s: %s", cidr, e)
                    continue
                released.append(cidr)
        return released

    def blocks(self) -> list[str]:
        with self.store.locked():
            return sorted(self.load().blocks)

    def gc(self, valid: set[tuple[str, str]]) -> list[Address]:
        """CNI GC: release every reservation in the pools not held by a valid attachment."""
        return release_invalid(self.store, valid,
                               lambda ip: any(ip in p.cidr for p in self.pools))
