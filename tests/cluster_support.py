"""Cluster mode in the tests: a node's config, and a simulated cluster (nodes in network
namespaces with their uplinks on one bridge, ferryd on each, a private etcd)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcd_support import Etcd
from harness import (
    FERRY,
    Agent,
    CniCall,
    Netns,
    Pod,
    exec_plugin,
    reservation_files,
    sh,
    uid,
)

POOL4 = "10.32.0.0/16"
POOL6 = "fd32::/48"
ETCD_HOST = "10.99.0.250"  # the fabric bridge's address, where a Cluster's etcd listens


def cluster_conf(network: str, node: str, endpoints: list[str], tmp: Path, *,
                 prefix: str = "/ferry", block4: int = 26, block6: int = 122,
                 **cluster: Any) -> dict[str, Any]:
    """ferry's config for `node` in cluster mode; `cluster` overrides cluster.* fields."""
    return {
        "cniVersion": "1.0.0", "name": network, "type": "ferry", "mtu": 1400,
        "stateDir": str(tmp / "state"),
        "log": {"file": str(tmp / "log" / "ferry.log"), "level": "debug"},
        "datastore": {"type": "etcd", "endpoints": endpoints, "prefix": prefix},
        "cluster": {"nodeName": node, "pools": [{"cidr": POOL4, "blockSize": block4},
                                                {"cidr": POOL6, "blockSize": block6}],
                    **cluster},
        "ipam": {"type": "ferry-cluster", "dataDir": str(tmp / "ipam")},
    }


@dataclass
class ClusterNode:
    """A simulated node of the cluster: its netns with uplink0 on the fabric bridge, its temp
    dir, its config, its ferryd. Quacks like harness.Node for harness.Agent."""

    name: str
    ns: Netns
    tmp: Path
    ip4: str
    ip6: str
    conf: dict[str, Any]
    agent: Agent | None = None
    pods: list[Pod] = field(default_factory=list)

    def start(self) -> Agent:
        self.agent = Agent(self, self.conf).start()  # type: ignore[arg-type]
        return self.agent

    def stop(self, sig: int = 15) -> None:
        if self.agent is not None and self.agent.proc is not None:
            self.agent.stop(sig)
        self.agent = None

    def cni(self, command: str, pod: Pod, **kw: Any) -> CniCall:
        return exec_plugin(FERRY, command, self.conf, node=self.ns,  # type: ignore[arg-type]
                           container_id=pod.container_id, netns=pod.ns.path,
                           ifname=pod.ifname, args=pod.args, **kw)

    def new_pod(self, name: str | None = None) -> Pod:
        """A pod netns (cleaned up with the cluster), not yet added."""
        pod = Pod(name=name or f"pod-{uid()}", ns=Netns("fcpod"),
                  container_id=f"ctr{uid()}{uid()}")
        self.pods.append(pod)
        return pod

    def add_pod(self, name: str | None = None) -> Pod:
        pod = self.new_pod(name)
        pod.result = self.cni("ADD", pod).ok()
        return pod

    def del_pod(self, pod: Pod) -> None:
        self.cni("DEL", pod).ok()
        self.pods.remove(pod)
        pod.ns.delete()

    def reservations(self) -> dict[str, bytes]:
        return reservation_files(self.tmp / "ipam" / self.conf["name"])

    def cached_blocks(self) -> list[str]:
        path = self.tmp / "ipam" / f"{self.conf['name']}.blocks.json"
        return sorted(json.loads(path.read_text())["blocks"]) if path.exists() else []

    def ferry_routes(self) -> list[str]:
        """The routes ferryd installed (protocol 243), both families, as `ip` prints them."""
        out = self.ns.ip("route", "show", "proto", "243").splitlines()
        return out + self.ns.ip("-6", "route", "show", "proto", "243").splitlines()


@dataclass
class Cluster:
    """N nodes in netns on one bridge (in a fabric netns), an 'ext' host on the same bridge
    that does not route the pools (it can answer a pod only when the pod was SNATed), and a
    private etcd."""

    etcd: Etcd
    fabric: Netns
    ext: Netns
    network: str
    nodes: list[ClusterNode] = field(default_factory=list)
    ext_ip4: str = "10.99.0.2"
    ext_ip6: str = "fd99::2"

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
        """Until cond() holds: the agents converge on their own schedule (the deadline
        only keeps a broken agent from hanging the suite)."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"not converged after {timeout}s: {what}")
            time.sleep(0.1)

    def routes_converged(self) -> bool:
        """Every node routes every block of every other node (both families)."""
        blocks = self.block_owners()
        for n in self.nodes:
            if n.agent is None:
                continue
            have = {line.split()[0] for line in n.ferry_routes()}
            want = {b for b, owner in blocks.items() if owner != n.name}
            if have != want:
                return False
        return True

    def block_owners(self) -> dict[str, str]:
        out = {}
        for line in self.etcd.ctl("get", "--prefix", "/ferry/ipam/blocks/",
                                  "--print-value-only").splitlines():
            if line.strip():
                b = json.loads(line)
                out[b["cidr"]] = b["node"]
        return out

    def add_node(self, name: str, index: int, dataplane: str, routed: bool = False,
                 **cluster: Any) -> ClusterNode:
        """On the bridge (10.99.0.1x), or `routed`: in a subnet of its own (10.98.<i>.2) that
        the fabric routes, as nodes in different racks or zones."""
        ns = Netns(f"fc{name}")
        port = f"fp{uid()}"
        sh("ip", "link", "add", "uplink0", "netns", ns.name, "type", "veth", "peer", "name",
           port, "netns", self.fabric.name)
        if routed:
            ip4, ip6 = f"10.98.{index}.2", f"fd98:{index}::2"
            self.fabric.ip("addr", "add", f"10.98.{index}.1/24", "dev", port)
            self.fabric.ip("-6", "addr", "add", f"fd98:{index}::1/64", "dev", port, "nodad")
            self.fabric.ip("link", "set", port, "up")
        else:
            ip4, ip6 = f"10.99.0.{10 + index}", f"fd99::{10 + index:x}"
            self.fabric.ip("link", "set", port, "master", "br0", "up")
        ns.ip("addr", "add", f"{ip4}/24", "dev", "uplink0")
        ns.ip("-6", "addr", "add", f"{ip6}/64", "dev", "uplink0", "nodad")
        ns.ip("link", "set", "uplink0", "up")
        if routed:
            ns.ip("route", "add", "default", "via", f"10.98.{index}.1")
            ns.ip("-6", "route", "add", "default", "via", f"fd98:{index}::1")
        tmp = Path(tempfile.mkdtemp(prefix=f"ferry-cluster-{name}-"))
        conf = cluster_conf(self.network, name, self.etcd.endpoints, tmp,
                            resyncSeconds=1, **cluster)
        conf.update({"agentSocket": str(tmp / "ferryd.sock"), "dataplane": dataplane,
                     "nodeIP": ip4, "uplink": "uplink0",
                     "bpffsRoot": f"/sys/fs/bpf/ferry-{self.network}-{name}"})
        node = ClusterNode(name, ns, tmp, ip4, ip6, conf)
        self.nodes.append(node)
        return node

    @classmethod
    @contextlib.contextmanager
    def create(cls, names: tuple[str, ...] = ("a", "b", "c"), dataplane: str = "iptables",
               start: bool = True, etcd_members: int = 1, routed: bool = False,
               **cluster: Any) -> Iterator[Cluster]:
        """The etcd runs in the fabric namespace, on the bridge's address (ETCD_HOST).
        `routed`: each node in a subnet of its own, the fabric routing between them (and not
        the pools: only VXLAN gets pod traffic across)."""
        fabric = Netns("fcfab")
        ext = Netns("fcext")
        try:
            fabric.ip("link", "add", "br0", "type", "bridge")
            fabric.ip("addr", "add", f"{ETCD_HOST}/24", "dev", "br0")
            fabric.ip("link", "set", "br0", "up")
            if routed:
                fabric.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
                fabric.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            sh("ip", "link", "add", "ext0", "netns", ext.name, "type", "veth", "peer", "name",
               "fpext", "netns", fabric.name)
            fabric.ip("link", "set", "fpext", "master", "br0", "up")
            ext.ip("addr", "add", "10.99.0.2/24", "dev", "ext0")
            ext.ip("-6", "addr", "add", "fd99::2/64", "dev", "ext0", "nodad")
            ext.ip("link", "set", "ext0", "up")
            if routed:  # ext reaches the nodes' subnets through the fabric, not the pools
                fabric.ip("-6", "addr", "add", "fd99::fa/64", "dev", "br0", "nodad")
                ext.ip("route", "add", "10.98.0.0/16", "via", ETCD_HOST)
                ext.ip("-6", "route", "add", "fd98::/16", "via", "fd99::fa")
            with Etcd.running(etcd_members, netns=fabric.name, host=ETCD_HOST) as etcd:
                c = cls(etcd, fabric, ext, f"cnet-{uid()}")
                try:
                    for i, name in enumerate(names):
                        c.add_node(name, i, dataplane, routed, **cluster)
                    if start:
                        for n in c.nodes:
                            n.start()
                    yield c
                finally:
                    c.cleanup()
        finally:
            ext.delete()
            fabric.delete()

    def cleanup(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.stop(9)
            for pod in n.pods:
                pod.ns.delete()
            n.ns.delete()
            shutil.rmtree(n.tmp, ignore_errors=True)
            shutil.rmtree(n.conf["bpffsRoot"], ignore_errors=True)


FERRYCTL = str(Path(__file__).resolve().parents[1] / ".venv/bin/ferryctl")


def ferryctl(node: ClusterNode, *args: str) -> str:
    """ferryctl with the node's config, inside the node's netns (where etcd is reachable)."""
    conflist = node.tmp / "ctl.conflist"
    plugin = {k: v for k, v in node.conf.items() if k not in ("name", "cniVersion")}
    conflist.write_text(json.dumps({"cniVersion": node.conf["cniVersion"],
                                    "name": node.conf["name"], "plugins": [plugin]}))
    return sh("nsenter", f"--net={node.ns.path}", FERRYCTL, *args, "--config", str(conflist))


def all_ips(pods: list[Pod]) -> list[str]:
    return [ip for p in pods for v in (4, 6) for ip in p.ips(v)]


def endpoint_records(etcd: Etcd) -> list[dict[str, Any]]:
    out = etcd.ctl("get", "--prefix", "/ferry/workloads/", "--print-value-only")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cluster_status(node: ClusterNode) -> Any:
    """The node's ferryd's FerryCluster.GetClusterStatus."""
    import grpc

    from plugin.cluster import cluster_pb2 as pb
    from plugin.cluster import cluster_pb2_grpc as pb_grpc

    assert node.agent is not None
    with grpc.insecure_channel(f"unix:{node.agent.grpc_socket}") as channel:
        return pb_grpc.FerryClusterStub(channel).GetClusterStatus(pb.ClusterStatusRequest())


def wait_syncs(cluster: Cluster, node: ClusterNode, more: int = 2) -> None:
    """Until the node's ferryd has completed `more` further syncs (it had its chance to act on
    whatever the test just did)."""
    start = cluster_status(node).syncs
    cluster.wait(f"{more} syncs of {node.name}", lambda: cluster_status(node).syncs >= start + more)
