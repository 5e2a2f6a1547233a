"""300 pods added 8-way in parallel across 3 nodes through the real `ferry` binary: no IP
handed out twice cluster-wide, an endpoint per pod; then DEL of all: no block, endpoint,
route or reservation left anywhere. Slow (netns per pod): ~1-2 min."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from cluster_support import Cluster, ClusterNode, all_ips, endpoint_records
from harness import Pod, ping

PODS = 300


def test_300_pods_8way_no_duplicate_then_nothing_left() -> None:
    with Cluster.create(blockReleaseSeconds=0) as c:
        jobs = [(c.nodes[i % 3], c.nodes[i % 3].new_pod()) for i in range(PODS)]

        def add(job: tuple[ClusterNode, Pod]) -> Pod:
            node, pod = job
            pod.result = node.cni("ADD", pod).ok()
            return pod

        with ThreadPoolExecutor(8) as pool:
            pods = list(pool.map(add, jobs))
        ips = all_ips(pods)
        assert len(ips) == 2 * PODS and len(set(ips)) == len(ips)
        owners = c.block_owners()
        assert len(owners) >= 12  # 100 pods a node: 2 blocks of 64 per family per node
        c.wait("an endpoint per pod", lambda: len(endpoint_records(c.etcd)) == PODS)
        c.wait("routes", c.routes_converged)
        # Spot check across nodes: the first pod of each node pings one of the next node's.
        firsts = {n.name: next(p for nn, p in jobs if nn is n) for n in c.nodes}
        for i, n in enumerate(c.nodes):
            far = firsts[c.nodes[(i + 1) % 3].name]
            assert ping(firsts[n.name].ns, far.ips(4)[0])
            assert ping(firsts[n.name].ns, far.ips(6)[0])

        def delete(job: tuple[ClusterNode, Pod]) -> None:
            node, pod = job
            node.cni("DEL", pod).ok()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(delete, jobs))
        for n in c.nodes:
            assert n.reservations() == {}, n.name
        c.wait("no endpoint left", lambda: endpoint_records(c.etcd) == [])
        c.wait("no block left", lambda: c.block_owners() == {})
        c.wait("no route left", lambda: all(n.ferry_routes() == [] for n in c.nodes))
        assert all(n.cached_blocks() == [] for n in c.nodes)
