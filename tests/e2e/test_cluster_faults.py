"""Cluster mode under faults: etcd stopped mid-burst and restarted, one member of a 3-member
etcd killed, a node's ferryd SIGKILLed and restarted, a dead node removed."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from cluster_support import (
    Cluster,
    ClusterNode,
    all_ips,
    endpoint_records,
    ferryctl,
    wait_syncs,
)
from harness import CniCall, Pod, ping, tcp_roundtrip


def test_etcd_stopped_mid_burst_and_restarted() -> None:
    """ADDs inside the nodes' blocks go on while etcd is down, an ADD that needs a new block
    gets code 11 and leaves nothing behind; once etcd is back the queued endpoints are
    written and the refused pods can be added: no IP twice, nothing leaked."""
    with Cluster.create(block4=28, block6=124, blockReleaseSeconds=0) as c:
        jobs = [(c.nodes[i % 3], c.nodes[i % 3].new_pod()) for i in range(75)]
        succeeded = 0
        lock = threading.Lock()
        etcd_down = threading.Event()

        def stop_etcd_after_some() -> None:
            c.wait("10 ADDs before stopping etcd", lambda: succeeded >= 10)
            c.etcd.stop(c.etcd.members[0], sig=9)
            etcd_down.set()

        def add(job: tuple[ClusterNode, Pod]) -> tuple[ClusterNode, Pod, CniCall, bool]:
            nonlocal succeeded
            node, pod = job
            call = node.cni("ADD", pod)
            if call.rc == 0:
                pod.result = call.json
                with lock:
                    succeeded += 1
            return node, pod, call, etcd_down.is_set()

        stopper = threading.Thread(target=stop_etcd_after_some)
        stopper.start()
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(add, jobs))
        stopper.join()
        ok = [p for _, p, call, _ in outcomes if call.rc == 0]
        refused = [(n, p) for n, p, call, _ in outcomes if call.rc != 0]
        for _, _, call, _ in outcomes:
            if call.rc != 0:
                call.error(11)  # only "try again later", nothing else
        assert refused, "20+ pods a node need a second /28: some ADDs had to claim with etcd down"
        assert any(down for _, _, call, down in outcomes if call.rc == 0), \
            "ADDs inside the blocks must go on with etcd down"
        # A refused ADD left nothing: the reservations are exactly the admitted pods'.
        for n in c.nodes:
            mine = [p for nn, p, call, _ in outcomes if nn is n and call.rc == 0]
            assert len(n.reservations()) == 2 * len(mine), n.name
            assert len(n.ns.ip("-o", "link", "show").splitlines()) == 2 + len(mine)

        c.etcd.start(c.etcd.members[0])
        c.etcd.wait_healthy()
        c.wait("queued endpoints written", lambda: len(endpoint_records(c.etcd)) == len(ok))
        for n, p in refused:
            p.result = n.cni("ADD", p).ok()
        pods = [p for _, p in jobs]
        ips = all_ips(pods)
        assert len(ips) == len(set(ips)) == 2 * len(pods)
        c.wait("every endpoint", lambda: len(endpoint_records(c.etcd)) == len(pods))
        owners = c.block_owners()
        for n in c.nodes:
            assert sorted(b for b, o in owners.items() if o == n.name) == n.cached_blocks()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda j: j[0].cni("DEL", j[1]).ok(), jobs))
        c.wait("no endpoint left", lambda: endpoint_records(c.etcd) == [])
        c.wait("no block left", lambda: c.block_owners() == {})
        assert all(n.reservations() == {} for n in c.nodes)


def test_one_etcd_member_killed_service_goes_on() -> None:
    with Cluster.create(names=("a", "b"), etcd_members=3, block4=29, block6=125) as c:
        a, b = c.nodes
        a.add_pod()
        b.add_pod()
        c.etcd.stop(c.etcd.members[0], sig=9)  # the member every node talks to first
        # 10 more pods a node: new blocks are claimed through the surviving members.
        pods = {n.name: [n.add_pod() for _ in range(10)] for n in c.nodes}
        assert len([o for o in c.block_owners().values() if o == "a"]) >= 4
        c.wait("every endpoint written", lambda: len(endpoint_records(c.etcd)) == 22)
        c.wait("routes", c.routes_converged)
        pa, pb = pods["a"][-1], pods["b"][-1]
        assert ping(pa.ns, pb.ips(4)[0]) and ping(pb.ns, pa.ips(6)[0])


def test_ferryd_sigkilled_pods_and_peers_keep_working_restart_resyncs() -> None:
    with Cluster.create() as c:
        pods = {n.name: n.add_pod() for n in c.nodes}
        c.wait("routes", c.routes_converged)
        a, b = c.node("a"), c.node("b")
        a_routes = sorted(a.ferry_routes())
        b.stop(9)
        # b's pods keep working, a keeps its routes to b (the node record outlives the lease).
        assert tcp_roundtrip(pods["a"].ns, pods["b"].ns, pods["b"].ips(4)[0]) == \
            pods["a"].ips(4)[0]
        wait_syncs(c, a)
        assert sorted(a.ferry_routes()) == a_routes
        assert ping(pods["b"].ns, pods["c"].ips(6)[0])
        # While b is down: its route to c's v4 block goes, its endpoint record goes.
        c_block = next(r.split()[0] for r in b.ferry_routes() if "via 10.99.0.12" in r)
        b.ns.ip("route", "del", c_block)
        key = f"/ferry/workloads/b/{c.network}.{pods['b'].container_id}.eth0"
        c.etcd.ctl("del", key)
        b.start()
        c.wait("b's routes re-synced", c.routes_converged)
        c.wait("b's endpoint written again", lambda: c.etcd.keys(key) == [key])
        nodes = json.loads(ferryctl(a, "nodes", "--json"))
        assert all(n["alive"] for n in nodes)


def test_dead_node_removed_its_blocks_reused_routes_follow() -> None:
    """Pools of two blocks a family: with a and c holding them, b cannot get one (code 101)
    until c, dead, is removed; b then takes c's block and a routes it via b."""
    pools = [{"cidr": "10.33.0.0/27", "blockSize": 28}, {"cidr": "fd33::/123", "blockSize": 124}]
    with Cluster.create(pools=pools) as c:
        a, b, dead = c.nodes
        a.add_pod()
        dead.add_pod()
        c.node("b").new_pod()
        refused = b.cni("ADD", b.pods[-1])
        refused.error(101)
        dead_blocks = sorted(blk for blk, o in c.block_owners().items() if o == "c")
        assert len(dead_blocks) == 2
        dead.stop(9)
        assert "2 blocks released" in ferryctl(a, "node", "remove", "c")
        pod = b.add_pod()
        taken = sorted(blk for blk, o in c.block_owners().items() if o == "b")
        assert taken == dead_blocks
        assert any(ip.startswith(dead_blocks[0].rsplit(".", 1)[0]) for ip in pod.ips(4))
        c.wait("a routes c's old blocks via b", lambda: all(
            any(r.startswith(blk) and f"via {b.ip4 if '.' in blk else b.ip6}" in r
                for r in a.ferry_routes()) for blk in dead_blocks))
