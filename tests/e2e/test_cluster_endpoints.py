"""Workload endpoints and profiles in cluster mode, as Calico's CNI writes them: one record
per attachment (written by ADD, deleted by DEL, reconciled both ways by ferryd), the
network's profile created once, a repeated ADD answering from the existing endpoint; and the
operations on top: ferryctl nodes/endpoints/node remove, gRPC status, Prometheus gauges."""

from __future__ import annotations

import json

from cluster_support import Cluster, endpoint_records, ferryctl
from harness import sh


def test_endpoints_profiles_and_ferryctl() -> None:
    with Cluster.create() as c:
        pods = {n.name: n.add_pod() for n in c.nodes}
        c.wait("an endpoint per pod", lambda: len(endpoint_records(c.etcd)) == 3)
        by_cid = {e["container_id"]: e for e in endpoint_records(c.etcd)}
        for n in c.nodes:
            pod = pods[n.name]
            ep = by_cid[pod.container_id]
            res = pod.result or {}
            host, ctr = res["interfaces"][0], res["interfaces"][1]
            assert ep["node"] == n.name and ep["orchestrator"] == "k8s"
            assert (ep["pod_namespace"], ep["pod_name"]) == ("default", pod.name)
            assert ep["ifname"] == "eth0" and ep["host_veth"] == host["name"]
            assert ep["mac"] == ctr["mac"] and ep["profiles"] == [c.network]
            assert sorted(ep["ips"]) == sorted(ip["address"] for ip in res["ips"])
        profiles = c.etcd.ctl("get", "--prefix", "/ferry/profiles/", "--print-value-only")
        (profile,) = [json.loads(line) for line in profiles.splitlines() if line.strip()]
        assert profile["name"] == c.network
        assert profile["egress"] == [{"action": "Allow"}]
        assert profile["ingress"] == [{"action": "Allow"}]  # Kubernetes: policy does the rest

        # ADD again for an attached container: the existing endpoint, not a second wiring.
        a = c.node("a")
        links = a.ns.ip("-o", "link", "show")
        again = a.cni("ADD", pods["a"]).ok()
        assert again["ips"] == pods["a"].result["ips"]
        assert a.ns.ip("-o", "link", "show") == links
        assert len(endpoint_records(c.etcd)) == 3

        # ferryctl on node a sees the whole cluster.
        nodes = json.loads(ferryctl(a, "nodes", "--json"))
        assert [n["name"] for n in nodes] == ["a", "b", "c"]
        assert all(n["alive"] and n["blocks"] for n in nodes)
        assert {n["name"]: n["ip4"] for n in nodes} == {n.name: n.ip4 for n in c.nodes}
        eps = json.loads(ferryctl(a, "endpoints", "--json"))
        assert sorted(e["container_id"] for e in eps) == sorted(p.container_id
                                                                 for p in pods.values())
        assert "lease" in ferryctl(a, "nodes").lower()

        # Reconcile both ways: a lost record comes back, a record of no pod goes.
        key = f"/ferry/workloads/b/{c.network}.{pods['b'].container_id}.eth0"
        c.etcd.ctl("del", key)
        bogus = f"/ferry/workloads/b/{c.network}.ctrgone.eth0"
        c.etcd.ctl("put", bogus, json.dumps({**by_cid[pods["b"].container_id],
                                              "container_id": "ctrgone"}))
        c.wait("b's endpoints reconciled",
               lambda: sorted(c.etcd.keys("/ferry/workloads/b/")) == [key])

        # DEL deletes the endpoint.
        c.node("c").del_pod(pods["c"])
        c.wait("c's endpoint deleted", lambda: c.etcd.keys("/ferry/workloads/c/") == [])


def test_grpc_status_and_metrics() -> None:
    import grpc

    from plugin.cluster import cluster_pb2 as pb
    from plugin.cluster import cluster_pb2_grpc as pb_grpc

    with Cluster.create(names=("a", "b")) as c:
        c.node("a").add_pod()
        c.node("b").add_pod()
        c.wait("routes", c.routes_converged)
        a = c.node("a")
        assert a.agent is not None
        channel = grpc.insecure_channel(f"unix:{a.agent.grpc_socket}")
        st = pb_grpc.FerryClusterStub(channel).GetClusterStatus(pb.ClusterStatusRequest())
        assert st.node == "a" and st.datastore_up and st.registered
        assert len(st.blocks) == 2 and st.routes == 2 and st.endpoints == 1
        assert sorted(n.name for n in st.nodes) == ["a", "b"] and st.cluster_endpoints == 2
        channel.close()
        text = sh("ip", "netns", "exec", a.ns.name, "python3", "-c",
                  "import urllib.request;print(urllib.request.urlopen("
                  "'http://127.0.0.1:9661/metrics').read().decode())")
        assert "ferry_datastore_up 1.0" in text
        assert 'ferry_cluster_blocks{pool="10.32.0.0/16"} 1.0' in text
        assert "ferry_cluster_endpoints 1.0" in text and "ferry_cluster_routes 2.0" in text


def test_node_remove_releases_blocks_and_routes_everywhere() -> None:
    with Cluster.create() as c:
        for n in c.nodes:
            n.add_pod()
        c.wait("routes", c.routes_converged)
        dead = c.node("c")
        dead_blocks = {b for b, o in c.block_owners().items() if o == "c"}
        dead.stop(9)
        out = ferryctl(c.node("a"), "node", "remove", "c")
        assert "2 blocks released" in out and "1 endpoints deleted" in out
        assert "c" not in c.block_owners().values()
        assert c.etcd.keys("/ferry/workloads/c/") == [] and c.etcd.keys("/ferry/nodes/c") == []
        c.nodes.remove(dead)
        c.nodes.append(dead)  # cleaned up with the others
        live = [n for n in c.nodes if n.agent is not None]
        c.wait("routes to c gone everywhere", lambda: all(
            not any(line.split()[0] in dead_blocks for line in n.ferry_routes()) for n in live))
        # Its blocks can go to others now: a node asking for a block may take them.
        assert all(b not in c.block_owners() for b in dead_blocks)


def test_gc_releases_reservations_and_endpoints_of_invalid_attachments() -> None:
    from harness import FERRY, exec_plugin, wait_reaped

    with Cluster.create(names=("a",)) as c:
        a = c.node("a")
        keep, drop = a.add_pod(), a.add_pod()
        c.wait("two endpoints", lambda: len(endpoint_records(c.etcd)) == 2)
        conf = {**a.conf, "cniVersion": "1.1.0",
                "cni.dev/valid-attachments": [{"containerID": keep.container_id,
                                               "ifname": "eth0"}]}
        exec_plugin(FERRY, "GC", conf, node=a.ns).ok()
        assert sorted(a.reservations()) == sorted(keep.ips(4) + keep.ips(6))
        c.wait("the dropped pod's endpoint gone", lambda: [
            e["container_id"] for e in endpoint_records(c.etcd)] == [keep.container_id])
        assert drop.result is not None
        host_veth = drop.result["interfaces"][0]["name"]
        wait_reaped(a.ns)  # ferryd hands the pair to its reaper
        assert host_veth not in a.ns.ip("-o", "link", "show")


def test_standalone_binary_without_ferryd_and_del_without_datastore() -> None:
    """No ferryd on the node: the binary claims the block and writes the endpoint itself;
    with etcd down, DEL still releases everything local (the reservation files are the
    block's), and the endpoint is left for a ferryd's reconcile."""
    with Cluster.create(names=("a",), start=False) as c:
        a = c.node("a")
        pod = a.add_pod()
        assert len(c.block_owners()) == 2 and a.cached_blocks() == sorted(c.block_owners())
        (ep,) = endpoint_records(c.etcd)
        assert ep["container_id"] == pod.container_id and ep["node"] == "a"
        c.etcd.stop(c.etcd.members[0])
        a.del_pod(pod)
        assert a.reservations() == {}
        c.etcd.start(c.etcd.members[0])
        c.etcd.wait_healthy()
        assert len(endpoint_records(c.etcd)) == 1  # nobody to delete it yet...
        a.start()
        c.wait("...until ferryd reconciles", lambda: endpoint_records(c.etcd) == [])
