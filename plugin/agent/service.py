"""ferryd's gRPC service: CNI add/del for callers that speak gRPC, and introspection that
reads what the node really holds (attachment records, the IPAM store, the dataplane)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc

from plugin import VERSION, ipam
from plugin.agent import ferry_pb2 as pb
from plugin.agent import ferry_pb2_grpc as pb_grpc
from plugin.config import NetConf
from plugin.engine import cni_path
from plugin.paths import private_umask
from plugin.state import StateStore

if TYPE_CHECKING:
    from plugin.agent.daemon import Agent


def _split_endpoint(text: str) -> tuple[str, int]:
    """'10.0.0.1:80' or '[fd00::1]:80' -> (address, port)."""
    addr, _, port = text.rpartition(":")
    return addr.strip("[]"), int(port or 0)


def ipam_pools(conf: NetConf) -> pb.IpamPools:
    return pb.IpamPools(network=conf.name, data_dir=conf.ipam.data_dir, pools=[
        pb.IpamPool(subnets=pool.subnets, total=pool.total, used=pool.used, free=pool.free,
                    reservations=[pb.Reservation(ip=str(ip), container_id=cid, ifname=ifn)
                                  for ip, cid, ifn in pool.reservations])
        for pool in ipam.pools(conf)])


class FerryService(pb_grpc.FerryServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def _cni(self, command: str, req: pb.NetworkRequest) -> pb.NetworkReply:
        args = ";".join(f"{k}={v}" for k, v in (("K8S_POD_NAMESPACE", req.k8s_pod_namespace),
                                                ("K8S_POD_NAME", req.k8s_pod_name)) if v)
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": req.container_id,
               "CNI_NETNS": req.netns, "CNI_IFNAME": req.ifname or "eth0",
               "CNI_ARGS": args, "CNI_PATH": ":".join(cni_path())}
        stdin = (req.network_config_json or json.dumps(self.agent.raw_conf)).encode()
        code, out = self.agent.handle({k: v for k, v in env.items() if v}, stdin)
        reply = pb.NetworkReply(success=code == 0, cni_json=out.decode())
        body: dict[str, Any] = json.loads(out) if out.strip() else {}
        if code:
            reply.error_code, reply.error_msg = int(body.get("code", 0)), body.get("msg", "")
        else:
            reply.ips.extend(ip["address"] for ip in body.get("ips", []))
            reply.host_veth = next((i["name"] for i in body.get("interfaces", [])
                                    if not i.get("sandbox")), "")
        return reply

    def AddNetwork(self, request: pb.NetworkRequest, context: Any) -> pb.NetworkReply:
        return self._cni("ADD", request)

    def DelNetwork(self, request: pb.NetworkRequest, context: Any) -> pb.NetworkReply:
        return self._cni("DEL", request)

    def ListEndpoints(self, request: pb.Empty, context: Any) -> pb.Endpoints:
        conf = self.agent.conf
        out = pb.Endpoints()
        for att in StateStore(conf.state_dir, conf.name).all():
            ns, pod = att.k8s_pod or ("", "")
            eni = getattr(att, "pod_eni", None) or {}
            out.endpoints.append(pb.Endpoint(
                pod_namespace=ns, pod_name=pod, container_id=att.container_id,
                ifname=att.ifname, ips=att.ips, host_veth=att.host_veth,
                pod_eni=eni.get("device", "") if isinstance(eni, dict) else str(eni),
                dataplane=self.agent.dataplane.name, netns=att.netns, complete=att.complete))
        return out

    def GetNatTable(self, request: pb.Empty, context: Any) -> pb.NatTable:
        table = pb.NatTable(dataplane=self.agent.dataplane.name)
        for flow in self.agent.inspect().nat:
            pod_addr, pod_port = _split_endpoint(flow.pod)
            dst_addr, dst_port = _split_endpoint(flow.dst)
            nat_addr, nat_port = _split_endpoint(flow.nat)
            table.entries.append(pb.NatEntry(
                proto=flow.proto, pod_addr=pod_addr, pod_port=pod_port, dst_addr=dst_addr,
                dst_port=dst_port, nat_addr=nat_addr, nat_port=nat_port,
                idle_seconds=flow.idle_seconds))
        return table

    def GetRedirects(self, request: pb.Empty, context: Any) -> pb.Redirects:
        out = pb.Redirects(dataplane=self.agent.dataplane.name)
        for r in self.agent.inspect().redirects:
            out.redirects.append(pb.Redirect(pod_addr=r.ip, host_veth=r.host_veth, eni=r.eni))
        return out

    def GetIpamPools(self, request: pb.Empty, context: Any) -> pb.IpamPools:
        return ipam_pools(self.agent.conf)

    def GetPrograms(self, request: pb.Empty, context: Any) -> pb.Programs:
        """The loaded programs and where they hang (none for a dataplane without any)."""
        info = self.agent.inspect()
        attached = {name: f"{dev} {hook}" for dev, hooks in info.filters.items()
                    for hook, names in hooks.items() for name in names}
        return pb.Programs(dataplane=info.dataplane, pin_dir=info.pins or "", programs=[
            pb.Program(name=p.name, kind="sched_cls", pin=p.pin, id=p.id,
                       attached_to=attached.get(p.name, ""))
            for p in info.programs or []])

    def Health(self, request: pb.Empty, context: Any) -> pb.HealthReply:
        return pb.HealthReply(ok=True, version=VERSION,
                              uptime_seconds=time.monotonic() - self.agent.started,
                              network=self.agent.conf.name,
                              dataplane=self.agent.dataplane.name,
                              requests_served=self.agent.served)


def start_grpc(agent: Agent, path: str) -> grpc.Server:
    server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpc"))
    pb_grpc.add_FerryServicer_to_server(FerryService(agent), server)
    if agent.cluster is not None:
        from plugin.cluster.ops import add_service

        add_service(server, agent.cluster)
    with private_umask():
        server.add_insecure_port(f"unix:{path}")
        server.start()
    return server
