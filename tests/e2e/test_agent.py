"""ferryd end to end: the relay, standalone fallback, crash recovery, gRPC introspection."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import Agent, CniCall, Node, Pod, ping, reaping, sh, tcp_roundtrip, uid, wait_reaped

from plugin.agent import ferry_pb2 as pb
from plugin.wiring import REAP_GROUP


def _served(agent: Agent) -> int:
    return agent.stub().Health(pb.Empty(), timeout=10).requests_served


def _shape(result: dict) -> dict:
    """A result without the values that differ between two pods (MACs, names, and the IPs
    themselves: round-robin hands the second pod the next address)."""
    return {"ips": [(ip["address"].split("/")[1], ip["gateway"]) for ip in result["ips"]],
            "routes": result["routes"], "cniVersion": result["cniVersion"],
            "interfaces": [sorted(i) for i in result["interfaces"]]}


def test_same_results_with_and_without_agent(node: Node) -> None:
    with Agent.running(node) as agent:
        via_agent = node.add_pod("via-agent", agent.conf)
        assert _served(agent) == 1  # the binary relayed, it did not run standalone
        node.cni("DEL", via_agent, agent.conf).ok()
        assert _served(agent) == 2
    # ferryd is gone: the same binary and config now run standalone, with the same outcome.
    standalone = node.add_pod("standalone", agent.conf)
    assert _shape(standalone.result) == _shape(via_agent.result)  # type: ignore[arg-type]
    assert ping(standalone.ns, node.node_ip4)
    node.cni("DEL", standalone, agent.conf).ok()


def test_agent_error_is_the_result(node: Node) -> None:
    with Agent.running(node) as agent:
        pod = node.new_pod()
        bad = dict(agent.conf, mtu=10)
        err = node.cni("ADD", pod, bad).error(7)
        assert "mtu" in err["msg"]
        assert _served(agent) == 1  # answered by ferryd, not by a silent standalone retry


def test_sockets_are_root_only_and_removed_on_sigterm(node: Node) -> None:
    agent = Agent(node, node.conf(agentSocket=str(node.tmp / "ferryd.sock"))).start()
    for path in (agent.socket, agent.grpc_socket):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    assert agent.stop() == 0
    assert not Path(agent.socket).exists() and not Path(agent.grpc_socket).exists()


def test_hundred_pods_eight_in_parallel_no_duplicates(node: Node) -> None:
    with Agent.running(node) as agent:
        pods = [node.new_pod(f"p{i}") for i in range(100)]
        with ThreadPoolExecutor(8) as pool:
            calls = list(pool.map(lambda p: node.cni("ADD", p, agent.conf), pods))
        for pod, call in zip(pods, calls, strict=True):
            pod.result = call.ok()
        for version in (4, 6):
            ips = [p.ips(version)[0] for p in pods]
            assert len(set(ips)) == 100
        assert _served(agent) == 100
        with ThreadPoolExecutor(8) as pool:
            for call in pool.map(lambda p: node.cni("DEL", p, agent.conf), pods):
                call.ok()
    assert "fry" not in node.ns.ip("link", "show")
    assert not [f for f in (node.tmp / "ipam" / node.network).iterdir() if f.name[0] in "1f"]


def test_sigkill_during_add_burst_then_reconcile(node: Node) -> None:
    """Kill -9 ferryd while ADDs are in flight. The runtime DELs half of the failed pods;
    ferryd's start-up reconcile must clean up after the rest: no duplicate IP, no leaked IP,
    link or record."""
    agent = Agent(node, node.conf(agentSocket=str(node.tmp / "ferryd.sock"))).start()
    pods = [node.new_pod(f"burst{i}") for i in range(40)]
    results: dict[str, CniCall] = {}

    def add(pod: Pod) -> None:
        results[pod.name] = node.cni("ADD", pod, agent.conf)

    threads = [threading.Thread(target=add, args=(p,)) for p in pods]
    # All at once, and the kill once an ADD has succeeded (not after a fixed time: a loaded
    # machine is slower): ferryd serves a few at a time, so most are still in flight then.
    # (Started 10 ms apart, a fast machine had finished them all before the kill.)
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not any(r.rc == 0 for r in list(results.values())) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert agent.proc is not None
    agent.proc.kill()
    for t in threads:
        t.join()
    agent.stop()
    ok = [p for p in pods if results[p.name].rc == 0]
    failed = [p for p in pods if results[p.name].rc != 0]
    assert ok, "no ADD finished before the kill: the test did not test anything"
    assert failed, "every ADD finished before the kill: the test did not test anything"
    for i, pod in enumerate(failed):
        if i % 2 == 0:
            node.cni("DEL", pod, agent.conf).ok()  # falls back to standalone: ferryd is dead

    agent.start()  # reconcile runs before the socket opens
    try:
        for pod in ok:
            pod.result = results[pod.name].json
        for version in (4, 6):
            ips = [p.ips(version)[0] for p in ok]
            assert len(set(ips)) == len(ips)
        # An ADD that ferryd completed just before the kill has a complete record and a live
        # pod, though its caller saw an error: the node is consistent, and the runtime's DEL
        # will remove it. Everything else of a failed, un-DELed pod must be gone.
        state = node.tmp / "state" / node.network
        records = {r.name: json.loads(r.read_text()) for r in state.iterdir()}
        assert all(rec["complete"] for rec in records.values()), records
        kept = {p.container_id for p in failed if f"{p.container_id}:eth0.json" in records}
        assert kept <= {p.container_id for p in failed[1::2]}, "a DELed pod came back"
        assert set(records) == {f"{cid}:eth0.json" for cid in
                                kept | {p.container_id for p in ok}}
        held = {f.name for f in (node.tmp / "ipam" / node.network).iterdir()
                if f.name[0].isdigit() or ":" in f.name}
        recorded = [ip.split("/")[0] for rec in records.values() for ip in rec["ips"]]
        assert len(recorded) == len(set(recorded)), "an IP is held twice"
        assert held == set(recorded)
        assert held >= {ip for p in ok for ip in p.ips(4) + p.ips(6)}
        assert node.ns.ip("-o", "link", "show").count("fry") == len(records)
        for pod in failed:
            assert ("eth0" in pod.ns.ip("-o", "link", "show")) == (pod.container_id in kept)
        assert ping(ok[0].ns, node.node_ip4)
    finally:
        agent.stop()


def test_grpc_introspection_matches_the_node(node: Node) -> None:
    with Agent.running(node) as agent:
        pods = [node.add_pod(f"intro{i}", agent.conf) for i in range(3)]
        stub = agent.stub()
        endpoints = stub.ListEndpoints(pb.Empty(), timeout=10).endpoints
        assert {e.pod_name for e in endpoints} == {p.name for p in pods}
        host_links = node.ns.ip("-o", "link", "show")
        for e in endpoints:
            assert e.host_veth in host_links and e.complete
            pod = next(p for p in pods if p.name == e.pod_name)
            assert {ip.split("/")[0] for ip in e.ips} == set(pod.ips(4) + pod.ips(6))
            route = node.ns.ip("route", "show", f"{pod.ips(4)[0]}/32")
            assert f"dev {e.host_veth}" in route
        pools = stub.GetIpamPools(pb.Empty(), timeout=10)
        files = {f.name for f in (node.tmp / "ipam" / node.network).iterdir()}
        reserved = {r.ip for pool in pools.pools for r in pool.reservations}
        assert reserved == {f for f in files if f[0].isdigit() or ":" in f}
        v4 = next(pool for pool in pools.pools if pool.subnets == node.pod_cidr4)
        assert (v4.total, v4.used, v4.free) == (253, 3, 250)
        health = stub.Health(pb.Empty(), timeout=10)
        assert health.ok and health.network == node.network
        reply = stub.AddNetwork(pb.NetworkRequest(
            container_id="grpcadd1", netns=node.new_pod("grpc").ns.path, ifname="eth0",
            k8s_pod_namespace="default", k8s_pod_name="grpc"), timeout=30)
        assert reply.success and reply.host_veth in node.ns.ip("-o", "link", "show")
        assert json.loads(reply.cni_json)["ips"][0]["address"] == reply.ips[0]
        reply = stub.DelNetwork(pb.NetworkRequest(container_id="grpcadd1", ifname="eth0",
                                                  k8s_pod_name="grpc",
                                                  k8s_pod_namespace="default"), timeout=30)
        assert reply.success
        metrics = node.ns.run("python3", "-c", "import urllib.request as u;print(u.urlopen("
                              "'http://127.0.0.1:9661/metrics').read().decode())")
        assert 'ferry_cni_requests_total{command="ADD",result="ok"} 4.0' in metrics
        assert 'ferry_ipam_ips_used{pool="10.20.0.0/24"} 3.0' in metrics


def test_snat_flow_survives_restart_and_grpc_matches_bpftool() -> None:
    """With the eBPF dataplane, ferryd loads the pins at start (the second start reuses
    them), a TCP flow through SNAT outlives a SIGKILL + restart, and the gRPC NAT table and
    program list are what bpftool reads from the pins."""
    root = f"/sys/fs/bpf/ferry-agent-{uid()}"
    try:
        with Node.create(ext_routes_pods=False) as node, Agent.running(
                node, dataplane="ebpf", nodeIP=node.node_ip4, uplink="uplink0",
                bpffsRoot=root) as agent:
            pod = node.add_pod("snat-steady", agent.conf)
            server, client = _steady_flow(node, pod)
            try:
                assert server.stdout.readline().strip() == node.node_ip4  # SNATed
                stub = agent.stub()
                nat = [e for e in stub.GetNatTable(pb.Empty(), timeout=10).entries
                       if e.proto == "tcp"]
                assert [(e.pod_addr, e.nat_addr, e.dst_port) for e in nat] == \
                    [(pod.ips(4)[0], node.node_ip4, 9090)]
                pin_dir = f"{root}/{node.network}"
                dump = json.loads(sh("bpftool", "-j", "map", "dump", "pinned",
                                     f"{pin_dir}/maps/ferry_nat_fwd"))
                assert len(dump) == len(stub.GetNatTable(pb.Empty(), timeout=10).entries)
                programs = stub.GetPrograms(pb.Empty(), timeout=10).programs
                for prog in programs:
                    shown = json.loads(sh("bpftool", "-j", "prog", "show", "pinned", prog.pin))
                    assert shown["id"] == prog.id and shown["name"] == prog.name
                assert {p.name for p in programs} >= {"ferry_snat_eg", "ferry_snat_in"}
                ids = {p.name: p.id for p in programs}

                agent.stop(9)
                agent.start()  # load again: same pins, no compile, NAT table intact
                assert {p.name: p.id for p in agent.stub().GetPrograms(
                    pb.Empty(), timeout=10).programs} == ids
                out, _ = client.communicate(timeout=30)
                assert out.strip() == "ok 30", out
            finally:
                server.kill()
                client.kill()
                server.wait()
            node.cni("DEL", pod, agent.conf).ok()
            assert agent.stub().GetNatTable(pb.Empty(), timeout=10).entries == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_restart_keeps_pods_working(node: Node) -> None:
    """Pods keep their connectivity while ferryd is down and after it comes back."""
    agent = Agent(node, node.conf(agentSocket=str(node.tmp / "ferryd.sock"))).start()
    try:
        pod = node.add_pod("steady", agent.conf)
        server, client = _steady_flow(node, pod)
        try:
            time.sleep(0.5)
            agent.stop(9)  # crash
            time.sleep(0.5)
            assert ping(pod.ns, node.node_ip4)
            agent.start()
            time.sleep(0.5)
            out, _ = client.communicate(timeout=30)
            assert out.strip() == "ok 30", out  # one TCP connection, 30 echoes, no reset
        finally:
            server.kill()
            client.kill()
            server.wait()
        assert tcp_roundtrip(pod.ns, node.ext, node.ext_ip4) == pod.ips(4)[0]
        node.cni("DEL", pod, agent.conf).ok()
    finally:
        if agent.proc is not None:
            agent.stop()


def test_del_cuts_the_pod_off_at_once_and_the_reaper_removes_the_pair(node: Node) -> None:
    """ferryd answers DEL before the kernel has unregistered the veth pair (its slow part);
    by then the pod must already be unreachable and its IP free."""
    with Agent.running(node) as agent:
        pod = node.add_pod("reaped", agent.conf)
        veth = pod.result["interfaces"][0]["name"]  # type: ignore[index]
        ip4, ip6 = pod.ips(4)[0], pod.ips(6)[0]
        assert ping(node.ns, ip4)
        node.cni("DEL", pod, agent.conf).ok()
        assert ip4 not in node.ns.ip("route", "show")
        assert ip6 not in node.ns.ip("-6", "route", "show")
        assert not (node.tmp / "ipam" / node.network / ip4).exists()
        left = node.ns.ip("-o", "link", "show", "dev", veth, check=False)
        assert not left or ("state DOWN" in left and f"group {REAP_GROUP}" in left), left
        assert not ping(node.ns, ip4)
        wait_reaped(node.ns)
        assert veth not in node.ns.ip("link", "show")
        assert "eth0" not in pod.ns.ip("link", "show")  # the pod's end went with it


def test_add_takes_over_a_same_named_pair_waiting_for_the_reaper(node: Node) -> None:
    """A pod deleted and created again under the same name before the reaper came by: its
    host veth name is taken by the old pair, which ADD removes itself."""
    old = node.add_pod("reborn")
    veth = old.result["interfaces"][0]["name"]  # type: ignore[index]
    node.cni("DEL", old).ok()
    assert veth not in node.ns.ip("link", "show")  # standalone DEL deletes at once
    # What a ferryd DEL leaves until the reaper runs: the old pair, down, in REAP_GROUP.
    node.ns.ip("link", "add", veth, "group", str(REAP_GROUP), "type", "veth", "peer", "name",
               "eth0", "netns", old.ns.name)
    new = node.add_pod("reborn")
    assert new.result["interfaces"][0]["name"] == veth  # type: ignore[index]
    assert ping(new.ns, node.node_ip4)
    assert "eth0" not in old.ns.ip("link", "show")
    node.cni("DEL", new).ok()


def test_same_named_link_outside_the_reap_group_is_not_taken_over(node: Node) -> None:
    old = node.add_pod("squatted")
    veth = old.result["interfaces"][0]["name"]  # type: ignore[index]
    node.cni("DEL", old).ok()
    node.ns.ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns",
               old.ns.name)
    before = node.snapshot()
    err = node.cni("ADD", node.new_pod("squatted")).error()
    assert "already exists" in err["msg"]
    assert node.snapshot() == before


def test_ferryd_start_reaps_pairs_a_killed_ferryd_left(node: Node) -> None:
    other = node.new_pod()
    node.ns.ip("link", "add", "leftover0", "group", str(REAP_GROUP), "type", "veth", "peer",
               "name", "x0", "netns", other.ns.name)
    node.ns.ip("link", "add", "bystander0", "type", "veth", "peer", "name", "x1", "netns",
               other.ns.name)
    with Agent.running(node):
        assert not reaping(node.ns)  # the first pass runs before ferryd says it is ready
        assert "bystander0" in node.ns.ip("link", "show")  # not in the group: not ours


def test_ferryd_start_repairs_host_routes_and_deletes_leaked_veths(node: Node) -> None:
    pod = node.add_pod("drifted")
    veth = pod.result["interfaces"][0]["name"]  # type: ignore[index]
    ip4, ip6 = pod.ips(4)[0], pod.ips(6)[0]
    node.ns.ip("route", "del", f"{ip4}/32")
    node.ns.ip("-6", "route", "del", f"{ip6}/128")
    other = node.new_pod()
    node.ns.ip("link", "add", "fry0123456789a", "type", "veth", "peer", "name", "x0", "netns",
               other.ns.name)  # ferry's name pattern, no record: leaked
    with Agent.running(node):
        assert f"{ip4} dev {veth}" in node.ns.ip("route", "show")
        assert f"{ip6} dev {veth}" in node.ns.ip("-6", "route", "show")
        assert "fry0123456789a" not in node.ns.ip("link", "show")
    assert ping(pod.ns, node.node_ip4)
    node.cni("DEL", pod).ok()


def _steady_flow(node: Node, pod: Pod) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """An echo server in ext and a pod client sending 30 echoes over ~3 s on one connection
    (it prints "ok 30" if the connection lived through all of them)."""
    server = node.ext.popen("python3", "-c", _ECHO_SERVER.format(ip=node.ext_ip4),
                            stdout=subprocess.PIPE, text=True)
    assert server.stdout and server.stdout.readline().strip() == "ready"
    client = pod.ns.popen("python3", "-c", _STEADY_CLIENT.format(ip=node.ext_ip4),
                          stdout=subprocess.PIPE, text=True)
    return server, client


_ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{ip}", 9090)); s.listen(1); print("ready", flush=True)
s.settimeout(30); c, peer = s.accept(); print(peer[0], flush=True)
while (data := c.recv(64)):
    c.sendall(data)
"""

_STEADY_CLIENT = """
import socket, time
c = socket.create_connection(("{ip}", 9090), timeout=10)
n = 0
for i in range(30):
    c.sendall(b"x%d" % i); assert c.recv(64) == b"x%d" % i; n += 1; time.sleep(0.1)
print("ok", n)
"""

