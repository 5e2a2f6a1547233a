"""Cluster mode end to end: 3 simulated nodes (a netns each, uplinks on one bridge), ferryd
on each with a real etcd, pods added through the real `ferry` binary. Pods on different
nodes reach each other (ping and TCP, IPv4 and IPv6) with their own addresses; traffic to
a host outside the cluster leaves SNATed to the node's address."""

from __future__ import annotations

import pytest
from cluster_support import Cluster, ferryctl
from harness import Pod, ping, tcp_roundtrip


def assert_full_mesh(pods: dict[str, Pod]) -> None:
    """Every pod pings every pod of the other nodes and opens a TCP connection to it, v4 and
    v6; the far pod sees the near pod's own address (no SNAT inside the pools)."""
    for a, pa in pods.items():
        for b, pb in pods.items():
            if a == b:
                continue
            for v in (4, 6):
                dst = pb.ips(v)[0]
                assert ping(pa.ns, dst), f"{a} -> {b} v{v} ping {dst}"
                assert tcp_roundtrip(pa.ns, pb.ns, dst) == pa.ips(v)[0], f"{a}->{b} v{v}"


@pytest.mark.parametrize("dataplane", ["iptables", "ebpf"])
def test_full_mesh_between_nodes_and_snat_out(dataplane: str) -> None:
    with Cluster.create(dataplane=dataplane) as c:
        pods = {n.name: n.add_pod() for n in c.nodes}
        owners = c.block_owners()
        assert sorted(set(owners.values())) == ["a", "b", "c"]  # each node claimed its own
        c.wait("routes to every other node's blocks", c.routes_converged)
        assert_full_mesh(pods)
        for n in c.nodes:
            pod = pods[n.name]
            # ext has no route to the pools: it answers only because the pod was SNATed.
            assert tcp_roundtrip(pod.ns, c.ext, c.ext_ip4) == n.ip4
            assert tcp_roundtrip(pod.ns, c.ext, c.ext_ip6) == n.ip6


@pytest.mark.parametrize("dataplane", ["iptables", "ebpf"])
def test_vxlan_between_nodes_in_different_subnets(dataplane: str) -> None:
    """Each node in a subnet of its own, the fabric routing between the subnets but knowing
    nothing of the pools: pod traffic crosses only inside VXLAN (a device per node, an FDB
    and a neighbour entry per peer); pod addresses kept, egress to ext SNATed."""
    with Cluster.create(dataplane=dataplane, routed=True, encap="vxlan") as c:
        pods = {n.name: n.add_pod() for n in c.nodes}
        c.wait("routes to every other node's blocks", c.routes_converged)
        for n in c.nodes:
            assert all("dev ferry.vxlan" in r for r in n.ferry_routes()), n.ferry_routes()
            fdb = n.ns.run("bridge", "fdb", "show", "dev", "ferry.vxlan")
            peers = [m for m in c.nodes if m is not n]
            assert all(f"dst {m.ip4}" in fdb for m in peers), fdb
        assert_full_mesh(pods)
        for n in c.nodes:
            assert tcp_roundtrip(pods[n.name].ns, c.ext, c.ext_ip4) == n.ip4
        # A node removed: its routes, FDB and neighbour entries go from the others.
        a, gone = c.node("a"), c.node("c")
        gone.stop(9)
        ferryctl(a, "node", "remove", "c")
        c.wait("c's VXLAN peer entries gone from a", lambda: gone.ip4 not in (
            a.ns.run("bridge", "fdb", "show", "dev", "ferry.vxlan")
            + a.ns.ip("neigh", "show", "dev", "ferry.vxlan")
            + "\n".join(a.ferry_routes())))
        assert ping(pods["a"].ns, pods["b"].ips(4)[0])
