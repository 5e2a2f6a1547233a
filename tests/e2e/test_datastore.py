"""The etcd v3 datastore against a real etcd (Debian's 3.4) started by the test: atomic block
claims under a race, node records and leases, endpoints, profiles, watch, member failover."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from etcd_support import Etcd

from plugin.cluster.config import DatastoreConfig
from plugin.datastore import Block, DatastoreUnavailable, Endpoint, NodeInfo, Profile
from plugin.datastore.connect import connect
from plugin.datastore.etcd import EtcdDatastore


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    with Etcd.running() as e:
        yield e


def store(etcd: Etcd, prefix: str = "/ferry-test") -> EtcdDatastore:
    ds = connect(DatastoreConfig(type="etcd", endpoints=etcd.endpoints, prefix=prefix))
    assert isinstance(ds, EtcdDatastore)
    return ds


def test_block_claim_race_has_one_winner(etcd: Etcd) -> None:
    """32 claimers (each its own client, as nodes are) race for each of 20 blocks: every
    block ends with exactly one owner, and that owner is the one claimer told it won."""
    clients = [store(etcd) for _ in range(8)]
    blocks = [f"10.32.{i}.0/26" for i in range(20)]

    def claim(args: tuple[int, str]) -> tuple[str, str, bool]:
        n, cidr = args
        node = f"node{n}"
        return cidr, node, clients[n % 8].claim_block(Block(cidr, "10.32.0.0/16", node))

    barrier_jobs = [(n, cidr) for cidr in blocks for n in range(32)]
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(claim, barrier_jobs))
    winners: dict[str, list[str]] = {}
    for cidr, node, won in outcomes:
        if won:
            winners.setdefault(cidr, []).append(node)
    assert sorted(winners) == sorted(blocks)
    assert all(len(w) == 1 for w in winners.values()), winners
    owners = {b.cidr: b.node for b in clients[0].blocks()}
    assert owners == {cidr: w[0] for cidr, w in winners.items()}
    # Only the owner releases; a claim after the release is possible again.
    cidr, (owner,) = next(iter(winners.items()))
    assert not clients[1].release_block(Block(cidr, "10.32.0.0/16", owner + "x"))
    assert clients[1].release_block(Block(cidr, "10.32.0.0/16", owner))
    assert clients[2].claim_block(Block(cidr, "10.32.0.0/16", "late"))


def test_nodes_leases_endpoints_profiles(etcd: Etcd) -> None:
    ds = store(etcd)
    ds.register_node(NodeInfo("a", ip4="10.99.0.1", ip6="fd99::1"), ttl=5)
    other = store(etcd)
    other.register_node(NodeInfo("b", ip4="10.99.0.2"), ttl=5)
    ds.renew_lease()
    nodes = {n.name: n for n in ds.nodes()}
    assert set(nodes) == {"a", "b"} and nodes["a"].ip6 == "fd99::1"
    assert nodes["a"].lease_age is not None and nodes["a"].lease_age < 5
    ep = Endpoint(node="b", orchestrator="k8s", network="net", container_id="c1", ifname="eth0",
                  pod_namespace="default", pod_name="p", ips=["10.32.0.5/16"],
                  profiles=["net"])
    other.put_endpoint(ep)
    assert ds.get_endpoint("b", ep.key) == ep
    assert ds.endpoints() == [ep] and ds.endpoints("a") == []
    assert ds.ensure_profile(Profile("net", egress=[{"action": "Allow"}]))
    assert not other.ensure_profile(Profile("net"))
    assert [p.egress for p in ds.profiles()] == [[{"action": "Allow"}]]
    other.claim_block(Block("10.32.1.0/26", "10.32.0.0/16", "b"))
    assert ds.remove_node("b") == {"blocks": 1, "endpoints": 1}
    assert [n.name for n in ds.nodes()] == ["a"] and ds.blocks() == [] and ds.endpoints() == []


def test_watch_reports_block_and_node_changes(etcd: Etcd) -> None:
    ds = store(etcd)
    changed = threading.Event()
    stop = threading.Event()
    t = threading.Thread(target=ds.watch, args=(changed.set, stop), daemon=True)
    t.start()
    try:
        writer = store(etcd)
        # Each prefix has its own stream, established in its own time: write until seen.
        writes = [lambda i: writer.claim_block(Block(f"10.32.{i}.0/26", "p", "w")),
                  lambda i: writer.register_node(NodeInfo("w", ip4=f"10.99.0.{i}"), ttl=5)]
        for write in writes:
            changed.clear()
            for i in range(100):
                write(i)
                if changed.wait(0.2):
                    break
            assert changed.is_set()
    finally:
        stop.set()
        t.join(timeout=10)
    assert not t.is_alive()


def test_unreachable_is_datastore_unavailable() -> None:
    from etcd_support import free_port

    ds = connect(DatastoreConfig(type="etcd", endpoints=[f"http://127.0.0.1:{free_port()}"],
                                 timeoutSeconds=1))
    with pytest.raises(DatastoreUnavailable):
        ds.blocks()
    assert not ds.healthy()


def test_three_members_one_killed_service_goes_on() -> None:
    with Etcd.running(members=3) as etcd:
        ds = store(etcd)
        assert ds.claim_block(Block("10.32.0.0/26", "p", "a"))
        # Kill the member the client talks to (the first) and one write later another.
        etcd.stop(etcd.members[0], sig=9)
        assert ds.claim_block(Block("10.32.0.64/26", "p", "b"))
        assert not ds.claim_block(Block("10.32.0.0/26", "p", "b"))
        assert {b.cidr for b in ds.blocks()} == {"10.32.0.0/26", "10.32.0.64/26"}
        assert ds.healthy()


def test_tls_with_client_certificates() -> None:
    from plugin.cluster.config import TLSConfig

    with Etcd.running(tls=True) as etcd:
        assert etcd.certs is not None and etcd.endpoints[0].startswith("https://")
        c = etcd.certs
        tls = TLSConfig(caFile=str(c / "ca.pem"), certFile=str(c / "client.pem"),
                        keyFile=str(c / "client-key.pem"))
        ds = connect(DatastoreConfig(type="etcd", endpoints=etcd.endpoints, tls=tls))
        assert ds.claim_block(Block("10.32.0.0/26", "p", "a"))
        assert [b.node for b in ds.blocks()] == ["a"]
        # Without a client certificate the server refuses: unavailable, not a crash.
        bare = connect(DatastoreConfig(type="etcd", endpoints=etcd.endpoints, timeoutSeconds=1,
                                       tls=TLSConfig(caFile=str(c / "ca.pem"))))
        assert not bare.healthy()
