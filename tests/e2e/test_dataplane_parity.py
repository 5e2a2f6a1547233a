"""Differential: the same scripted traffic through each dataplane in MODES, compared flow by
flow at the far side (source address, port in the SNAT range or kept, reply delivered, the
ext device its first packet arrived on). The report is printed; see it with `pytest -rA`
(or on failure)."""

from __future__ import annotations

from typing import Any

from dataplane_support import (
    ENI_GW,
    ENI_NODE,
    MODES,
    DataplaneNode,
    add_eni,
    arrivals,
    dataplane_node,
    recorder,
)
from harness import Netns

EXCLUDED = "10.97.0.2"
LOW, HIGH = 61000, 65535

# One flow from a pod: prints "<local port or echo id> <1 if the reply came back>". ICMP is
# sent on a raw socket with a known id, so that "kept" can be told from "rewritten".
PROBE = r"""
import os, socket, struct, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
def csum(b):
    b += b"\0" * (len(b) % 2); s = sum(struct.unpack(f"!{len(b)//2}H", b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16; return ~s & 0xFFFF
try:
    if proto == "tcp":
        c = socket.create_connection((ip, port), timeout=5); local = c.getsockname()[1]
        c.sendall(b"parity"); ok = c.recv(64) == b"parity"
    elif proto == "udp":
        c = socket.socket(fam, socket.SOCK_DGRAM); c.settimeout(3); c.connect((ip, port))
        local = c.getsockname()[1]; c.send(b"parity"); ok = c.recv(64) == b"parity"
    else:
        v6 = fam == socket.AF_INET6
        c = socket.socket(fam, socket.SOCK_RAW,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
        c.settimeout(3); local = 4242 + os.getpid() % 1000
        hdr = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, local, 1) + b"parity"
        if not v6:
            hdr = hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:]
        c.sendto(hdr, (ip, 0)); ok = False
        while not ok:
            d = c.recv(2048); d = d if v6 else d[(d[0] & 15) * 4:]
            ok = d[0] == (129 if v6 else 0) and struct.unpack("!H", d[4:6])[0] == local
except OSError:
    local, ok = -1, False
print(local, int(ok))
"""


def _probe(pod: Netns, proto: str, ip: str, port: int) -> tuple[int, bool]:
    local, ok = pod.run("python3", "-c", PROBE, proto, ip, str(port)).split()
    return int(local), ok == "1"


def _flow(dp: DataplaneNode, pod: Any, proto: str, ip: str, port: int,
          where: Netns | None = None) -> dict[str, Any]:
    """Run one probe, return what the far side saw, normalised to compare across modes."""
    node, far = dp.node, where or dp.node.ext
    listen = ("::" if ":" in ip else "0.0.0.0") if proto == "icmp" else ip
    with recorder(far, proto, listen, port) as srv:
        local, ok = _probe(pod.ns, proto, ip, port)
        [(src, seen_port, device)] = arrivals(srv, 1)
    names = {node.node_ip4: "node", node.node_ip6: "node"}
    for p in node.pods:
        names.update({a: p.name for a in p.ips(4) + p.ips(6)})
    port_class = ("kept" if seen_port == local else
                  "range" if LOW <= seen_port <= HIGH else f"other:{seen_port}")
    return {"src": names.get(src, src), "port": port_class in ("kept", "range"),
            "portClass": port_class, "reply": ok,
            "via": device if where is None else "local"}


def _run(mode: str) -> dict[str, dict[str, Any]]:
    with dataplane_node(mode, ext_routes_pods=True, snatExcludeCidrs=["10.97.0.0/24"]) as dp:
        node = dp.node
        node.ext.ip("addr", "add", f"{EXCLUDED}/32", "dev", "ext0")
        node.ns.ip("route", "add", "10.97.0.0/24", "via", node.ext_ip4)
        add_eni(node)
        a, b = dp.add_pod("pod-a"), dp.add_pod("pod-b")
        eni = dp.add_pod("pod-eni", runtimeConfig={"podENI": {"device": "eni1",
                                                              "gateway": ENI_GW}})
        node.ext.ip("route", "replace", f"{eni.ips(4)[0]}/32", "via", ENI_NODE, "dev", "vpc1")
        flows = {}
        for proto, port in (("tcp", 7001), ("udp", 7002), ("icmp", 0)):
            flows[f"a {proto} v4 -> ext"] = _flow(dp, a, proto, node.ext_ip4, port)
            flows[f"a {proto} v6 -> ext"] = _flow(dp, a, proto, node.ext_ip6, port)
            flows[f"a {proto} v4 -> excluded"] = _flow(dp, a, proto, EXCLUDED, port)
            flows[f"a {proto} v4 -> pod b"] = _flow(dp, a, proto, b.ips(4)[0], port, b.ns)
            flows[f"a {proto} v6 -> pod b"] = _flow(dp, a, proto, b.ips(6)[0], port, b.ns)
            flows[f"eni {proto} v4 -> ext"] = _flow(dp, eni, proto, node.ext_ip4, port)
        return flows


def test_same_traffic_same_observations_in_every_mode() -> None:
    seen_by = {mode: _run(mode) for mode in MODES}
    keys = ("src", "port", "reply", "via")
    width = max(len(f) for f in seen_by[MODES[0]])
    lines = [f"{'flow'.ljust(width)}  " + "  ".join(f"{m:<36}" for m in MODES) + "  same"]
    differ = []
    for flow in seen_by[MODES[0]]:
        rows = [seen_by[m][flow] for m in MODES]
        cells = [f"{r['src']} port:{r['portClass']} reply:{int(r['reply'])} via:{r['via']}"
                 for r in rows]
        same = all({k: r[k] for k in keys} == {k: rows[0][k] for k in keys} for r in rows)
        if not same:
            differ.append(flow)
        lines.append(f"{flow.ljust(width)}  " + "  ".join(f"{c:<36}" for c in cells)
                     + f"  {'yes' if same else 'NO'}")
    print("\n".join(lines))
    assert not differ, f"the dataplanes disagree on {differ}"
    first = seen_by[MODES[0]]
    # And what both saw is the intended behaviour, not a shared mistake.
    assert first["a tcp v4 -> ext"]["src"] == "node" and first["a udp v6 -> ext"]["src"] == "node"
    assert first["a tcp v4 -> excluded"]["src"] == "pod-a"
    assert first["a udp v4 -> pod b"]["src"] == "pod-a"
    assert first["eni tcp v4 -> ext"] == {**first["eni tcp v4 -> ext"], "src": "pod-eni",
                                         "via": "vpc1"}
    assert all(f["reply"] and f["port"] for f in first.values())
