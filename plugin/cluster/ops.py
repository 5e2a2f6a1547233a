"""Operating a cluster: `ferryctl nodes|endpoints|node remove`, ferryd's FerryCluster gRPC
service and its Prometheus gauges. All read the datastore; none needs ferryd to run except
the service and the gauges, which report ferryd's own view too."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from plugin.config import NetConf
from plugin.datastore import Datastore, DatastoreUnavailable, NodeInfo, record
from plugin.datastore.connect import shared

if TYPE_CHECKING:
    from plugin.cluster.agent import ClusterAgent

COMMANDS = ("nodes", "endpoints", "node")


def nodes(ds: Datastore, lease_ttl: int) -> list[dict[str, Any]]:
    blocks: dict[str, list[str]] = {}
    for b in ds.blocks():
        blocks.setdefault(b.node, []).append(b.cidr)
    out = []
    for n in sorted(ds.nodes(), key=lambda n: n.name):
        out.append({**record(n), "blocks": sorted(blocks.pop(n.name, [])),
                    "alive": _alive(n, lease_ttl)})
    # Blocks whose node record is gone (a node removed by hand, half-way): show them.
    for name, cidrs in sorted(blocks.items()):
        out.append({**record(NodeInfo(name=name)), "blocks": sorted(cidrs), "alive": False})
    return out


def _alive(n: NodeInfo, ttl: int) -> bool:
    return n.lease_age is not None and n.lease_age <= ttl


def add_parsers(sub: Any) -> None:
    for name, help_text in (("nodes", "the cluster's nodes: IPs, blocks, lease age"),
                            ("endpoints", "workload endpoints across the cluster")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True)
        p.add_argument("--json", action="store_true")
    p = sub.add_parser("node", help="node maintenance: `node remove NAME`")
    p.add_argument("action", choices=["remove"])
    p.add_argument("name")
    p.add_argument("--config", required=True)
    p.add_argument("--json", action="store_true")


def main(args: argparse.Namespace, conf: NetConf) -> int:
    if conf.datastore is None or conf.cluster is None:
        print(f"ferryctl {args.cmd}: network {conf.name} has no datastore (not cluster mode)",
              file=sys.stderr)
        return 1
    ds = shared(conf.datastore)
    try:
        if args.cmd == "nodes":
            rows = nodes(ds, conf.cluster.lease_ttl)
            text = _table("nodes", rows, ["name", "ip4", "ip6", "blocks", "lease"], lambda r: {
                **r, "blocks": " ".join(r["blocks"]) or "-",
                "lease": f"{r['lease_age']:.0f}s ago" if r["alive"] else "expired"})
        elif args.cmd == "endpoints":
            rows = [record(ep) for ep in sorted(ds.endpoints(), key=lambda e: (e.node, e.key))]
            cols = ["node", "pod", "container", "ifname", "hostVeth", "ips"]
            text = _table("endpoints", rows, cols,
                          lambda r: {**r, "pod": f"{r['pod_namespace']}/{r['pod_name']}"
                                     if r["pod_name"] else "-",
                                     "container": r["container_id"][:12],
                                     "hostVeth": r["host_veth"], "ips": " ".join(r["ips"])})
        else:
            released = ds.remove_node(args.name)
            rows = [{"node": args.name, **released}]
            text = (f"node {args.name} removed: {released['blocks']} blocks released, "
                    f"{released['endpoints']} endpoints deleted\n")
    except DatastoreUnavailable as e:
        print(f"ferryctl {args.cmd}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(rows, indent=2) + "\n" if args.json else text)
    return 0


def _table(title: str, rows: list[dict[str, Any]], cols: list[str], shape: Any) -> str:
    from plugin.text import table

    return table(title, [shape(r) for r in rows], cols)


def status(agent: ClusterAgent) -> Any:
    """The FerryCluster.GetClusterStatus reply."""
    from plugin.cluster import cluster_pb2 as pb

    st = agent.status
    reply = pb.ClusterStatus(node=agent.name, datastore_up=st.datastore_up,
                             registered=st.registered, blocks=st.blocks, routes=st.routes,
                             endpoints=st.endpoints, syncs=st.syncs,
                             last_sync_unix=st.last_sync, last_error=st.last_error)
    try:
        for n in nodes(agent.ds, agent.cluster.lease_ttl):
            reply.nodes.append(pb.NodeStatus(name=n["name"], ip4=n["ip4"] or "",
                                             ip6=n["ip6"] or "", blocks=n["blocks"],
                                             alive=n["alive"],
                                             lease_age_seconds=n["lease_age"] or 0.0))
        reply.cluster_endpoints = len(agent.ds.endpoints())
    except DatastoreUnavailable as e:
        reply.datastore_up, reply.last_error = False, str(e)
    return reply


def add_service(server: Any, agent: ClusterAgent) -> None:
    from plugin.cluster import cluster_pb2_grpc as pb_grpc

    class Service(pb_grpc.FerryClusterServicer):
        def GetClusterStatus(self, request: Any, context: Any) -> Any:
            return status(agent)

    pb_grpc.add_FerryClusterServicer_to_server(Service(), server)


class ClusterCollector:
    """ferry_cluster_* gauges from ferryd's last sync (no datastore call per scrape)."""

    def __init__(self, agent: ClusterAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.agent.status
        up = GaugeMetricFamily("ferry_datastore_up", "1 when the last datastore call worked")
        up.add_metric([], 1.0 if st.datastore_up else 0.0)
        blocks = GaugeMetricFamily("ferry_cluster_blocks", "IPAM blocks this node holds",
                                   labels=["pool"])
        for pool, n in self.agent.pools_in_use().items():
            blocks.add_metric([pool], n)
        eps = GaugeMetricFamily("ferry_cluster_endpoints", "Workload endpoints of this node")
        eps.add_metric([], st.endpoints)
        routes = GaugeMetricFamily("ferry_cluster_routes", "Routes to other nodes' blocks")
        routes.add_metric([], st.routes)
        syncs = CounterMetricFamily("ferry_cluster_syncs", "Completed cluster syncs")
        syncs.add_metric([], st.syncs)
        yield from (up, blocks, eps, routes, syncs)
