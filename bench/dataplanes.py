"""eBPF vs iptables dataplane, side by side in one run: new TCP connections per second through
the SNAT and iperf3 TCP throughput, with 1 pod and with 1,000 pods wired.

    .venv/bin/python bench/dataplanes.py [--seconds 3] [--pods 1000]

Per mode a simulated node (tests/harness.py, `ferryctl load`), one real pod wired by the
`ferry` binary, and an 'ext' namespace with no route back to the pods (every flow is SNATed).
The other 999 "pods" are simulated by what the dataplane holds per pod, installed with the
dataplane's own attach code in the node's netns, but without veths or namespaces: an
Attachment per fake pod (an address in 10.21.0.0/16 and fd21::/112, the real pod's host veth)
given to Ebpf.attach (one map entry per address) or to the iptables code as one
iptables-restore batch of the same per-pod lines Iptables.attach writes (a chain of 3+3
SNAT rules and exclusions plus a jump per pod and family in FERRY-POSTROUTING).
Connection rate: one client in the pod connecting, exchanging 1 byte and closing (RST, so no
TIME_WAIT holds the port), sequentially for --seconds, the server echoing. snatPortRange is
1024-65535 so that neither dataplane runs out of ports in the run. Everything is removed at
exit, also on error. The connection rate is bounded by the one Python client (~1.5k/s on
2 cores): it shows a per-connection cost in the NAT path only when that cost is larger.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from dataplane_support import DataplaneNode, dataplane_node  # noqa: E402
from harness import Netns  # noqa: E402

SERVER = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4096); print("ready", flush=True)
def serve(c):
    with c:
        d = c.recv(1)
        if d: c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import socket, struct, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.monotonic() + secs
while time.monotonic() < end:
    c = socket.create_connection((ip, port), timeout=5)
    c.sendall(b"x"); assert c.recv(1) == b"x"
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
    n += 1
print(n / secs)
"""

# Runs inside the node's netns: installs `count` simulated pods with the dataplane's own code.
SIMULATE = r"""
import ipaddress, json, sys
sys.path.insert(0, sys.argv[1])
from plugin.config import load_file
from plugin.dataplane import select
from plugin.state import Attachment
conf = load_file(sys.argv[2])[0]
count, veth = int(sys.argv[3]), sys.argv[4]
atts = [Attachment(container_id=f"sim{i:05d}", ifname="eth0", netns="", host_veth=veth,
                   ips=[f"{ipaddress.IPv4Address('10.21.0.0') + i}/16",
                        f"{ipaddress.IPv6Address('fd21::') + i}/112"], complete=True)
        for i in range(1, count + 1)]
dp = select(conf)
if dp.name == "iptables":
    from plugin.dataplane import iptables as it
    addrs, backend = it.node_addrs(conf), it.detect_backend()
    for version in (4, 6):
        table = it.NatTable.parse(backend.save(version))
        lines = []
        for att in atts:
            ips = it._split_ips(att.ips)[version]
            lines += it._pod_lines(conf, att, version, ips, addrs, table)
        backend.restore(version, lines)
else:
    for att in atts:
        dp.attach(conf, att)
print(json.dumps({"simulated": count, "dataplane": dp.name}))
"""


def conn_rate(dp: DataplaneNode, pod: Netns, seconds: float) -> float:
    node = dp.node
    srv = node.ext.popen("python3", "-c", SERVER, node.ext_ip4, "7100", stdout=subprocess.PIPE,
                         text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        return float(pod.run("python3", "-c", CLIENT, node.ext_ip4, "7100", str(seconds)))
    finally:
        srv.kill()
        srv.wait()


def throughput(dp: DataplaneNode, pod: Netns, seconds: float) -> float:
    node = dp.node
    srv = node.ext.popen("iperf3", "-s", "-1", "-B", node.ext_ip4, "-p", "5202",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = json.loads(pod.run("iperf3", "-c", node.ext_ip4, "-p", "5202", "-t",
                                 str(int(seconds)), "-J"))
    finally:
        srv.kill()
        srv.wait()
    return float(out["end"]["sum_received"]["bits_per_second"])


def measure(mode: str, pods: int, seconds: float) -> dict[str, float]:
    with dataplane_node(mode, snatPortRange="1024-65535") as dp:
        pod = dp.add_pod("bench")
        veth = pod.result["interfaces"][0]["name"]  # type: ignore[index]
        if pods > 1:
            t0 = time.monotonic()
            # nsenter, not `ip netns exec`: that remounts /sys, hiding the pins on bpffs.
            subprocess.run(["nsenter", f"--net={dp.node.ns.path}", sys.executable, "-c",
                            SIMULATE, str(ROOT), str(dp.conf_path), str(pods - 1), veth],
                           check=True, capture_output=True)
            # Re-sync the real pod: its jump now comes after the 999 others (the chain walk
            # a packet of the last-added pod pays in iptables; a map lookup in eBPF).
            dp.load()
            setup = time.monotonic() - t0
        else:
            setup = 0.0
        return {"conn_per_s": conn_rate(dp, pod.ns, seconds),
                "tcp_bps": throughput(dp, pod.ns, seconds), "setup_s": setup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--pods", type=int, default=1000)
    args = ap.parse_args()
    started = time.monotonic()
    res = {(mode, n): measure(mode, n, args.seconds)
           for n in (1, args.pods) for mode in ("ebpf", "iptables")}
    print(f"pod -> ext through SNAT, {args.seconds:g}s per figure")
    print(f"{'':28}{'ebpf':>14}{'iptables':>14}{'ebpf/iptables':>15}")
    for n in (1, args.pods):
        e, i = res[("ebpf", n)], res[("iptables", n)]
        print(f"{f'{n} pod(s): new TCP conn/s':28}{e['conn_per_s']:>14.0f}"
              f"{i['conn_per_s']:>14.0f}{e['conn_per_s'] / i['conn_per_s']:>14.2f}x")
        print(f"{f'{n} pod(s): TCP Gb/s':28}{e['tcp_bps'] / 1e9:>14.2f}"
              f"{i['tcp_bps'] / 1e9:>14.2f}{e['tcp_bps'] / i['tcp_bps']:>14.2f}x")
        if n > 1:
            print(f"{f'{n} pod(s): simulate others, s':28}{e['setup_s']:>14.2f}"
                  f"{i['setup_s']:>14.2f}")
    print(f"total {time.monotonic() - started:.0f}s")
    print(json.dumps({f"{m}/{n}": {k: round(v, 3) for k, v in r.items()}
                      for (m, n), r in res.items()}))


if __name__ == "__main__":
    main()
