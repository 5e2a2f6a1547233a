"""Support for the dataplane tests, for every mode in MODES: a node with the dataplane loaded
(and always unloaded, pins removed, even when the test fails), `ferryctl` runs in the node's
namespace, and servers in the 'ext' namespace that record the source address and port of what
they receive (IPv4 or IPv6, by the address they listen on).

A suite runs against both dataplanes by parametrising its fixture over MODES:

    @pytest.fixture(params=MODES)
    def dp(request) -> Iterator[DataplaneNode]:
        with dataplane_node(request.param) as n:
            yield n
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Netns, Node, sh, uid

FERRYCTL = str(Path(sys.executable).parent / "ferryctl")
MODES = ("ebpf", "iptables")
ENI_NODE, ENI_GW = "10.98.0.2", "10.98.0.1"


@dataclass
class DataplaneNode:
    mode: str
    node: Node
    conf: dict[str, Any]
    conf_path: Path
    root: str
    env: dict[str, str] | None = None  # extra environment of every ferryctl run

    @property
    def pin_dir(self) -> str:
        return os.path.join(self.root, self.node.network)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["nsenter", f"--net={self.node.ns.path}", FERRYCTL, *args,
                               "--config", str(self.conf_path)],
                              capture_output=True, text=True, check=False, timeout=120,
                              env={**os.environ, **(self.env or {})})
        if check:
            assert proc.returncode == 0, f"ferryctl {args}: {proc.stdout} {proc.stderr}"
        return proc

    def load(self, *cflags: str) -> dict[str, Any]:
        flags = [f"--cflag={f}" for f in cflags]  # "=": the value starts with a dash
        return json.loads(self.ctl("load", "--json", *flags).stdout)

    def inspect(self) -> dict[str, Any]:
        return json.loads(self.ctl("inspect", "--json").stdout)

    def add_pod(self, name: str | None = None, **overrides: Any) -> Any:
        return self.node.add_pod(name, conf={**self.conf, **overrides})


@contextlib.contextmanager
def dataplane_node(mode: str = "ebpf", ext_routes_pods: bool = False, load: bool = True,
                   env: dict[str, str] | None = None,
                   **overrides: Any) -> Iterator[DataplaneNode]:
    """A harness Node whose network uses dataplane `mode`, loaded by `ferryctl load`; the bpffs
    root is private to the test in every mode (an iptables node must leave no pins either).
    `env`: extra environment of ferryctl (e.g. loader/probes.PRETEND_ENV)."""
    root = f"/sys/fs/bpf/ferry-test-{uid()}"
    with Node.create(ext_routes_pods=ext_routes_pods) as node:
        conf = node.conf(dataplane=mode, nodeIP=node.node_ip4, bpffsRoot=root,
                         uplink="uplink0", **overrides)
        path = node.tmp / "net.conf"
        path.write_text(json.dumps(conf))
        en = DataplaneNode(mode=mode, node=node, conf=conf, conf_path=path, root=root, env=env)
        try:
            if load:
                en.load()
            yield en
        finally:
            with contextlib.suppress(Exception):
                en.ctl("unload", check=False)
            shutil.rmtree(root, ignore_errors=True)


def ebpf_node(ext_routes_pods: bool = False, load: bool = True,
              **overrides: Any) -> contextlib.AbstractContextManager[DataplaneNode]:
    """dataplane_node("ebpf", ...): the name the eBPF-only tests were written against."""
    return dataplane_node("ebpf", ext_routes_pods=ext_routes_pods, load=load, **overrides)


def add_eni(node: Node) -> None:
    """A branch ENI for pod-ENI tests: a second veth from the node, `eni1` (ENI_NODE), to the
    ext namespace, `vpc1` (ENI_GW, the VPC's side)."""
    sh("ip", "link", "add", "eni1", "netns", node.ns.name, "type", "veth", "peer", "name",
       "vpc1", "netns", node.ext.name)
    node.ns.ip("addr", "add", f"{ENI_NODE}/24", "dev", "eni1")
    node.ext.ip("addr", "add", f"{ENI_GW}/24", "dev", "vpc1")
    node.ns.ip("link", "set", "eni1", "up")
    node.ext.ip("link", "set", "vpc1", "up")


def tc_show(ns: Netns, dev: str, direction: str) -> str:
    return ns.run("tc", "filter", "show", "dev", dev, direction, check=False)


# A server for the ext namespace: prints "ready", then "<ip> <port> <device>" per flow it sees
# (TCP: per accepted connection, echoing; UDP: per datagram, echoing; ICMP: per echo
# request seen on a raw socket, the id as port; the kernel answers the ping itself).
# <device> is the link the flow's first packet came in on, from a packet socket: the kernel
# queues a packet to packet sockets before the IP layer, so it is there by the time
# accept/recv return it. The family follows the address: "0.0.0.0" or "::" for ICMP.
RECORDER = r"""
import socket, sys, threading
mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))  # ETH_P_ALL
cap.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
cap.setblocking(False)
want = {"tcp": 6, "udp": 17}.get(mode, 1 if fam == socket.AF_INET else 58)
first_dev = {}  # (source address, source port or echo id) -> device
def capture():
    while True:
        try:
            pkt, (dev, ethertype, pkttype, *_) = cap.recvfrom(128)
        except BlockingIOError:
            return
        if pkttype == socket.PACKET_OUTGOING:
            continue
        if ethertype == 0x0800 and len(pkt) >= 20:
            proto, l4 = pkt[9], pkt[(pkt[0] & 15) * 4:]
            src = socket.inet_ntop(socket.AF_INET, pkt[12:16])
        elif ethertype == 0x86DD and len(pkt) >= 40:
            proto, l4 = pkt[6], pkt[40:]
            src = socket.inet_ntop(socket.AF_INET6, pkt[8:24])
        else:
            continue
        if proto != want or len(l4) < 8:
            continue
        if want in (6, 17):
            first_dev.setdefault((src, int.from_bytes(l4[0:2], "big")), dev)
        elif l4[0] in (8, 128):
            first_dev.setdefault((src, int.from_bytes(l4[4:6], "big")), dev)
def out(a, p):
    capture()
    sys.stdout.write(f"{a} {p} {first_dev.get((a, p), '?')}\n"); sys.stdout.flush()
if mode == "tcp":
    s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port)); s.listen(1024); print("ready", flush=True)
    def serve(c):
        with c:
            while True:
                d = c.recv(64)
                if not d: return
                c.sendall(d)
    while True:
        c, a = s.accept(); out(a[0], a[1])
        threading.Thread(target=serve, args=(c,), daemon=True).start()
elif mode == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((ip, port))
    print("ready", flush=True)
    while True:
        d, a = s.recvfrom(2048); out(a[0], a[1]); s.sendto(d, a)
elif fam == socket.AF_INET6:  # raw ICMPv6 sockets get the ICMP message without the header
    s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    print("ready", flush=True)
    while True:
        d, a = s.recvfrom(2048)
        if d[0] == 128:
            out(a[0], int.from_bytes(d[4:6], "big"))
else:
    s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("ready", flush=True)
    while True:
        d, a = s.recvfrom(2048)
        ihl = (d[0] & 15) * 4
        if d[ihl] == 8:
            out(a[0], int.from_bytes(d[ihl + 4:ihl + 6], "big"))
"""

# A client for a pod: N flows to ip:port held open together, each checked by an echo.
CLIENT = r"""
import socket, sys
mode, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
socks = []
for i in range(n):
    if mode == "tcp":
        c = socket.create_connection((ip, port), timeout=10)
        c.sendall(b"ferry%d" % i); assert c.recv(64) == b"ferry%d" % i
    else:
        c = socket.socket(fam, socket.SOCK_DGRAM); c.settimeout(3)
        c.sendto(b"ferry%d" % i, (ip, port)); assert c.recvfrom(64)[0] == b"ferry%d" % i
    socks.append(c)
print("ok", len(socks), flush=True)
"""


@contextlib.contextmanager
def recorder(ns: Netns, mode: str, ip: str, port: int = 0) -> Iterator[subprocess.Popen]:
    proc = ns.popen("python3", "-u", "-c", RECORDER, mode, ip, str(port),
                    stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def arrivals(proc: subprocess.Popen, count: int) -> list[tuple[str, int, str]]:
    """The next `count` records of a recorder, (source, port, device it came in on); blocks
    until they arrive."""
    assert proc.stdout is not None
    out = []
    for _ in range(count):
        line = proc.stdout.readline().split()
        assert line, "recorder ended early"
        out.append((line[0], int(line[1]), line[2]))
    return out


def seen(proc: subprocess.Popen, count: int) -> list[tuple[str, int]]:
    """The next `count` (source, port) records of a recorder."""
    return [(src, port) for src, port, _ in arrivals(proc, count)]


def client(ns: Netns, mode: str, ip: str, port: int, flows: int = 1) -> None:
    out = ns.run("python3", "-c", CLIENT, mode, ip, str(port), str(flows))
    assert out.strip() == f"ok {flows}", out


def netfilter_state(ns: Netns) -> dict[str, str]:
    """Both back ends' nat and filter tables in both families, and the policy routing rules:
    what the iptables dataplane may touch. iptables-save's '# Generated/Completed on <date>'
    lines are dropped, being the only part that changes from one call to the next."""
    out = {}
    for tool in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save",
                 "ip6tables-legacy-save"):
        text = ns.run(tool)
        out[tool] = "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("#"))
    out["ip rule"] = ns.ip("rule", "show")
    out["ip -6 rule"] = ns.ip("-6", "rule", "show")
    return out
