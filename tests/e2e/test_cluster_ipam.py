"""Cluster IPAM against a real etcd: blocks claimed atomically per node, IPs allocated
locally inside them (no datastore needed while a block has room), claims racing across
nodes, empty blocks released, the local cache reconciled with the datastore."""

from __future__ import annotations

import ipaddress
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cluster_support import POOL4, POOL6, cluster_conf
from etcd_support import Etcd

from plugin.config import NetConf, parse
from plugin.datastore import Block
from plugin.ipam.blocks import BlockAllocator, block_span
from plugin.protocol import CniError, Code


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    with Etcd.running() as e:
        yield e


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ferry-cipam-"))
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def allocator(etcd: Etcd, tmp: Path, node: str, network: str = "cnet",
              **kw: object) -> BlockAllocator:
    conf = parse(NetConf, cluster_conf(network, node, etcd.endpoints, tmp / node, **kw))
    return BlockAllocator(conf)


def capacity(a: BlockAllocator, cidr: str) -> int:
    net = ipaddress.ip_network(cidr)
    pool = next(p for p in a.pools if p.cidr.version == net.version)
    span = block_span(pool, net)
    return span.end - span.start + 1 - (span.gateway in span)


def ips_of(result: object) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipc.address.ip for ipc in result.ips]  # type: ignore[attr-defined]


def test_blocks_claimed_as_they_fill_and_allocation_is_local(etcd: Etcd, tmp: Path) -> None:
    a = allocator(etcd, tmp, "a", block4=29, block6=125)
    got = [ips_of(a.allocate(f"c{i}", "eth0", [])) for i in range(7)]
    blocks = a.blocks()
    assert len(blocks) == 2, blocks  # one v4 /29 (8 addresses) and one v6 /125
    b4 = ipaddress.ip_network(next(b for b in blocks if "." in b))
    assert all(ip4 in b4 and ip6.version == 6 for ip4, ip6 in got)
    # The pod's address has the pool's prefix and the pool's first address as gateway.
    res = a.allocate("c7", "eth0", [])
    assert str(res.ips[0].address.network) == POOL4 and str(res.ips[0].gateway) == "10.32.0.1"
    assert str(res.ips[1].address.network) == POOL6 and str(res.ips[1].gateway) == "fd32::1"
    # With etcd down, the blocks' room still serves, without a datastore call...
    room = min(capacity(a, b) for b in blocks) - 8
    etcd.stop(etcd.members[0])
    for i in range(room):
        a.allocate(f"d{i}", "eth0", [])
    # ...and the first ADD that needs a new block is told to try again later.
    with pytest.raises(CniError) as err:
        a.allocate("full", "eth0", [])
    assert err.value.code == Code.TRY_AGAIN_LATER
    etcd.start(etcd.members[0])
    etcd.wait_healthy()
    a.allocate("e0", "eth0", [])
    assert len(a.blocks()) > 2
    owners = {b.cidr: b.node for b in a.datastore.blocks()}
    assert set(owners) == set(a.blocks()) and set(owners.values()) == {"a"}


def test_racing_nodes_never_share_an_ip_or_a_block(etcd: Etcd, tmp: Path) -> None:
    """3 nodes with 4 workers each allocate 240 pods at once in small blocks (/28, /124):
    every IP once cluster-wide, every block one owner, every node's IPs in its own blocks."""
    nodes = {n: [allocator(etcd, tmp, n, block4=28, block6=124) for _ in range(4)]
             for n in ("a", "b", "c")}
    jobs = [(n, w, i) for i in range(20) for n in nodes for w in range(4)]

    def add(job: tuple[str, int, int]) -> tuple[str, list]:
        n, w, i = job
        return n, ips_of(nodes[n][w].allocate(f"{n}-{w}-{i}", "eth0", []))

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(add, jobs))
    every = [ip for _, ips in results for ip in ips]
    assert len(every) == len(set(every)) == 2 * len(jobs)
    owners = {b.cidr: b.node for b in nodes["a"][0].datastore.blocks()}
    for n, ips in results:
        for ip in ips:
            (block,) = [c for c in owners if ip in ipaddress.ip_network(c)]
            assert owners[block] == n, (ip, block, owners[block], n)
    for n, allocs in nodes.items():
        assert set(allocs[0].blocks()) == {c for c, o in owners.items() if o == n}


def test_empty_blocks_released_after_grace_and_reclaimable(etcd: Etcd, tmp: Path) -> None:
    a = allocator(etcd, tmp, "a")
    b = allocator(etcd, tmp, "b")
    a.allocate("c1", "eth0", [])
    blocks = a.blocks()
    empty: dict[str, float] = {}
    assert a.release_empty(empty, grace=0) == []  # in use
    from plugin.ipam.allocator import Allocator

    Allocator(a.conf.ipam, a.conf.name).release("c1", "eth0")
    assert a.release_empty(empty, grace=3600) == [] and set(empty) == set(blocks)
    assert sorted(a.release_empty(empty, grace=0)) == blocks
    assert a.blocks() == [] and a.datastore.blocks() == []
    # Another node may now take them.
    b.allocate("x", "eth0", [])
    assert b.blocks()


def test_sync_adopts_reclaims_and_drops(etcd: Etcd, tmp: Path) -> None:
    a = allocator(etcd, tmp, "a")
    a.allocate("c1", "eth0", [])
    ds = a.datastore
    used = a.blocks()
    # The datastore lost our blocks (a restore): sync claims them back since pods use them.
    for cidr in used:
        ds.release_block(Block(cidr, "", "a"))
    assert a.sync()["reclaimed"] == 2
    assert sorted(b.cidr for b in ds.blocks()) == used
    # A block the datastore gives us that the cache does not know: adopted.
    assert ds.claim_block(Block("10.32.200.0/26", POOL4, "a"))
    assert a.sync()["adopted"] == 1 and "10.32.200.0/26" in a.blocks()
    # An unused block that another node owns now: dropped from the cache.
    ds.release_block(Block("10.32.200.0/26", POOL4, "a"))
    ds.claim_block(Block("10.32.200.0/26", POOL4, "b"))
    assert a.sync()["dropped"] == 1 and "10.32.200.0/26" not in a.blocks()
    assert POOL6  # both pools exercised by the allocations above


def test_max_blocks_per_host(etcd: Etcd, tmp: Path) -> None:
    a = allocator(etcd, tmp, "a", block4=30, block6=126, maxBlocksPerHost=2)
    with pytest.raises(CniError) as err:
        for i in range(20):
            a.allocate(f"c{i}", "eth0", [])
    assert err.value.code == Code.IPAM_EXHAUSTED and "maxBlocksPerHost" in err.value.msg
    assert len([b for b in a.blocks() if "." in b]) == 2
