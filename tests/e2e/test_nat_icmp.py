"""ICMP errors and IPv4 fragments through the SNAT, in every dataplane of MODES.

Topology: pod -> node -> ext (a router, forwarding) -> far (the server), with the route from ext
to far at MTU 1280 (`mtu lock`: ext refuses larger DF packets with frag-needed / packet too big
and does not fragment IPv6). Neither ext nor far has a route to the pods: an ICMP error ext or
far sends is addressed to the node IP and quotes the node IP and the NAT port, so it reaches
the pod only if the SNAT translates it back (outer destination, inner source address and port,
and the checksums, which the pod's kernel checks before it hands the error to the socket)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from dataplane_support import MODES, DataplaneNode, dataplane_node
from harness import Netns, Pod

FAR4, FAR6 = "10.96.0.2", "fd96::2"
EXT_FAR4, EXT_FAR6 = "10.96.0.1", "fd96::1"
PATH_MTU = 1280


@contextlib.contextmanager
def far_host(dp: DataplaneNode) -> Iterator[Netns]:
    """`far` behind ext, the ext->far route at MTU 1280; the node routes far via ext."""
    node = dp.node
    far = Netns("ffar")
    try:
        node.ext.ip("link", "add", "ext1", "type", "veth", "peer", "name", "far0", "netns",
                    far.name)
        node.ext.ip("addr", "add", f"{EXT_FAR4}/24", "dev", "ext1")
        node.ext.ip("-6", "addr", "add", f"{EXT_FAR6}/64", "dev", "ext1", "nodad")
        far.ip("addr", "add", f"{FAR4}/24", "dev", "far0")
        far.ip("-6", "addr", "add", f"{FAR6}/64", "dev", "far0", "nodad")
        node.ext.ip("link", "set", "ext1", "up")
        far.ip("link", "set", "far0", "up")
        node.ext.run("sysctl", "-qw", "net.ipv4.ip_forward=1",
                     "net.ipv6.conf.all.forwarding=1")
        node.ext.ip("route", "replace", "10.96.0.0/24", "dev", "ext1", "mtu", "lock",
                    str(PATH_MTU))
        # metric 1: ahead of the kernel's connected route (metric 256), which stays
        node.ext.ip("-6", "route", "add", "fd96::/64", "dev", "ext1", "metric", "1", "mtu",
                    "lock", str(PATH_MTU))
        far.ip("route", "add", "10.99.0.0/24", "via", EXT_FAR4)  # the node's net, no pods
        far.ip("-6", "route", "add", "fd99::/64", "via", EXT_FAR6)
        node.ns.ip("route", "add", "10.96.0.0/24", "via", node.ext_ip4)
        node.ns.ip("-6", "route", "add", "fd96::/64", "via", node.ext_ip6)
        yield far
    finally:
        far.delete()


@pytest.fixture(params=MODES)
def dp(request: pytest.FixtureRequest) -> Iterator[DataplaneNode]:
    with dataplane_node(request.param) as n:
        yield n


# Reads until EOF, answers with the byte count.
SINK = r"""
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    n += len(d)
c.sendall(str(n).encode()); c.close()
"""

# 1 MB with DF (TCP's default): a full-size segment crosses ext only once the pod has learnt
# the path MTU from the translated ICMP error. A PMTU black hole stalls the transfer (Linux
# does no packetization-layer probing by default): the 60 s socket timeout is what fails it.
SEND_1MB = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(b"x" * (1 << 20)); c.shutdown(socket.SHUT_WR)
print(c.recv(64).decode())
"""


@pytest.mark.parametrize("family", [4, 6])
def test_path_mtu_discovery_through_the_snat_1mb_df_transfer(dp: DataplaneNode,
                                                            family: int) -> None:
    pod = dp.add_pod("pmtu")
    with far_host(dp) as far:
        ip = FAR4 if family == 4 else FAR6
        srv = far.popen("python3", "-c", SINK, ip, "7400", stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
            got = pod.ns.run("python3", "-c", SEND_1MB, ip, "7400").strip()
        finally:
            srv.kill()
            srv.wait()
        assert got == str(1 << 20)
        # The pod's kernel holds the learnt path MTU for far.
        assert f"mtu {PATH_MTU}" in pod.ns.ip(f"-{family}", "route", "get", ip)


# The ones' complement sum of the scripts below that check checksums (0xFFFF: it holds).
FOLD = r"""
import struct
def fold(b):
    b += b"\0" * (len(b) % 2); s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return s
"""


# A traceroute from the pod with UDP probes (IP_RECVERR): TTL 2 expires at ext (the first hop,
# the node, forwards it), TTL 64 at far's closed port; then a datagram too big for the path
# with DF (1,300 bytes: over the path's 1,280, within the pod's 1,400). Each error is taken
# from the socket's error queue, which the kernel fills only when the quoted header names this
# socket (the pod's address and port) and the checksums hold; a packet socket on eth0 shows
# the quoted source as it arrived. Prints one JSON object.
TRACE = FOLD + r"""
import json, socket, struct, sys
ip, port = sys.argv[1], 33434
v6 = ":" in ip
fam = socket.AF_INET6 if v6 else socket.AF_INET
SOL = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
RECVERR = 25 if v6 else 11          # IPV6_RECVERR / IP_RECVERR
MTU_DISCOVER = 23 if v6 else 10     # IPV6_MTU_DISCOVER / IP_MTU_DISCOVER
TTL = socket.IPV6_UNICAST_HOPS if v6 else socket.IP_TTL
cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86DD if v6 else 0x0800))
cap.bind(("eth0", 0)); cap.settimeout(5)
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(SOL, RECVERR, 1); s.setsockopt(SOL, MTU_DISCOVER, 2)  # PMTUDISC_DO
s.connect((ip, port)); me = s.getsockname()
def error():
    import select
    select.select([], [], [s], 5)
    for _ in range(50):
        try:
            _, anc, _, _ = s.recvmsg(2048, 512, socket.MSG_ERRQUEUE)
            break
        except BlockingIOError:
            select.select([], [], [s], 0.1)
    else:
        return None
    for level, kind, data in anc:
        if level == SOL and kind == RECVERR:
            errno_, origin, typ, code, _, info, _ = struct.unpack_from("IBBBBII", data)
            off = socket.inet_ntop(fam, data[20:24] if not v6 else data[24:40])
            return {"type": typ, "code": code, "info": info, "from": off}
def quoted():
    # The ICMP error as it arrived on eth0: the quoted datagram's source address and port, and
    # whether the checksums hold (ICMP's, with ICMPv6's pseudo-header; the quoted IPv4
    # header's). Checked here: a veth hands the pod's kernel packets it need not verify.
    while True:
        pkt = cap.recv(4096)
        if v6:
            if pkt[6] != 58 or pkt[40] not in (1, 2, 3): continue
            inner, msg = pkt[48:], pkt[40:40 + int.from_bytes(pkt[4:6], "big")]
            pseudo = pkt[8:40] + struct.pack("!IxxxB", len(msg), 58)
            return {"dst": socket.inet_ntop(fam, pkt[24:40]),
                    "inner_src": socket.inet_ntop(fam, inner[8:24]),
                    "inner_sport": int.from_bytes(inner[40:42], "big"),
                    "csum": fold(pseudo + msg) == 0xFFFF}
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != 1 or pkt[ihl] not in (3, 11): continue
        msg = pkt[ihl:int.from_bytes(pkt[2:4], "big")]
        inner = msg[8:]
        iihl = (inner[0] & 15) * 4
        return {"dst": socket.inet_ntop(fam, pkt[16:20]),
                "inner_src": socket.inet_ntop(fam, inner[12:16]),
                "inner_sport": int.from_bytes(inner[iihl:iihl + 2], "big"),
                "csum": fold(msg) == 0xFFFF and fold(inner[:iihl]) == 0xFFFF}
out = {"me": [me[0], me[1]]}
for name, ttl, size in (("hop2", 2, 32), ("far", 64, 32), ("toobig", 64, 1300)):
    s.setsockopt(SOL, TTL, ttl)
    try:
        s.send(b"x" * size)
    except OSError as e:
        out[name] = {"send": e.errno}; continue
    out[name] = {"error": error(), "quoted": quoted()}
print(json.dumps(out))
"""


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_errors_reach_the_pod_naming_its_address_and_port(dp: DataplaneNode,
                                                              family: int) -> None:
    pod = dp.add_pod("icmperr")
    with far_host(dp):
        ip = FAR4 if family == 4 else FAR6
        out = json.loads(pod.ns.run("python3", "-c", TRACE, ip))
    me_ip, me_port = out["me"]
    assert me_ip == pod.ips(family)[0]
    ext_ip = dp.node.ext_ip4 if family == 4 else dp.node.ext_ip6
    # (type, code) of: time exceeded, port unreachable, frag needed / packet too big
    want = {4: {"hop2": (11, 0), "far": (3, 3), "toobig": (3, 4)},
            6: {"hop2": (3, 0), "far": (1, 4), "toobig": (2, 0)}}[family]
    offender = {"hop2": ext_ip, "far": ip, "toobig": ext_ip}
    for name, (typ, code) in want.items():
        err, quoted = out[name]["error"], out[name]["quoted"]
        assert err is not None, f"{name}: no ICMP error reached the socket: {out}"
        assert (err["type"], err["code"]) == (typ, code), (name, out)
        assert err["from"] == offender[name], (name, out)
        assert quoted == {"dst": me_ip, "inner_src": me_ip, "inner_sport": me_port,
                          "csum": True}, (name, out)
    assert out["toobig"]["error"]["info"] == PATH_MTU, out


# A UDP datagram of 4,000 bytes each way (three IPv4 fragments at the pod's MTU of 1400, and
# three from ext back), then a ping of the same size (ICMP echo in fragments).
BIG_UDP = r"""
import socket, sys
c = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.connect((sys.argv[1], int(sys.argv[2])))
ok = 0
for i in range(3):
    msg = bytes([65 + i]) * 4000
    c.send(msg)
    try:
        ok += c.recv(65536) == msg
    except socket.timeout:
        pass
print(ok)
"""

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(65536); s.sendto(d, a)
"""


def big_udp_echoed(dp: DataplaneNode, pod: Pod, ip: str, port: int) -> str:
    """How many of BIG_UDP's three 4,000-byte datagrams a UDP echo server at ip:port in ext
    sent back to the pod."""
    srv = dp.node.ext.popen("python3", "-c", UDP_ECHO, ip, str(port), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        return pod.ns.run("python3", "-c", BIG_UDP, ip, str(port)).strip()
    finally:
        srv.kill()
        srv.wait()


def test_4000_byte_udp_and_ping_each_way_in_fragments(dp: DataplaneNode) -> None:
    pod = dp.add_pod("frag")
    node = dp.node
    got = big_udp_echoed(dp, pod, node.ext_ip4, 7401)
    assert got == "3", f"4,000-byte datagrams lost (echoed back: {got} of 3)"
    ping = pod.ns.run("ping", "-c", "2", "-W", "3", "-s", "4000", node.ext_ip4, check=False)
    assert " 0% packet loss" in ping, ping


def test_4000_byte_udp_each_way_over_ipv6_in_fragments(dp: DataplaneNode) -> None:
    # IPv6 fragments carry a fragment header; the later ones have no UDP header: they follow
    # their first fragment's translation (eBPF: ferry_frag6, keyed by addresses and the 32-bit
    # identification; iptables: conntrack reassembles).
    pod = dp.add_pod("frag6")
    node = dp.node
    # ext fragments for the pod's MTU (1400) itself: IPv6 routers do not fragment, so with
    # 1500 the node would answer packet too big about the translated reply's first fragment
    # (test_the_nodes_packet_too_big_about_a_fragment_of_an_inbound_flow_reaches_ext) and
    # that datagram would be lost.
    node.ext.ip("link", "set", "ext0", "mtu", "1400")
    got = big_udp_echoed(dp, pod, node.ext_ip6, 7402)
    assert got == "3", f"4,000-byte IPv6 datagrams lost (echoed back: {got} of 3)"


# ext's side of an inbound flow that the pod has closed: learn the node's address and port
# from the pod's datagram, then (on "go") send `size` bytes back to it on a connected socket.
# Prints one JSON object: the node's address and port, the error the socket got ("refused"
# for the pod's port unreachable, "EMSGSIZE" for the node's frag needed / packet too big, with
# the path MTU learnt for the node IP), and the ICMP error as it arrived on ext0 (the quoted
# datagram's addresses and ports, and whether the checksums hold: the ICMP one, with ICMPv6's
# pseudo-header; the quoted UDP one when the quote holds the whole datagram; the quoted IPv4
# header's). The socket sees the error only if the quote shows what ext sent: to the node IP
# and NAT port, from ext's port.
CLOSED_PEER = FOLD + r"""
import errno, json, socket, struct, sys
ip, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
v6 = ":" in ip
fam = socket.AF_INET6 if v6 else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((ip, port))
cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86DD if v6 else 0x0800))
cap.bind(("ext0", 0)); cap.settimeout(5)
print("ready", flush=True)
_, peer = s.recvfrom(100)
print(peer[0], flush=True)
sys.stdin.readline()
s.connect(peer[:2]); s.settimeout(3)
out = {"node": list(peer[:2]), "error": None}
for _ in range(3):
    s.send(b"x" * size)
    try:
        s.recv(100)
    except ConnectionRefusedError:
        out["error"] = "refused"; break
    except socket.timeout:
        pass
    except OSError as e:
        # IPV6_MTU / IP_MTU: the path MTU the kernel learnt for the node IP
        out["error"] = errno.errorcode[e.errno]
        out["mtu"] = s.getsockopt(*((socket.IPPROTO_IPV6, 24) if v6 else (socket.IPPROTO_IP, 14)))
        break
def udp_ok(src, dst, udp):
    n = int.from_bytes(udp[4:6], "big")
    if len(udp) < n: return None  # the quote ends before the datagram does
    return fold(src + dst + (struct.pack("!IxxxB", n, 17) if v6 else struct.pack("!xBH", 17, n))
                + udp[:n]) == 0xFFFF
def quoted():
    while True:
        try:
            pkt = cap.recv(4096)
        except socket.timeout:
            return None
        if v6:
            if pkt[6] != 58 or pkt[40] not in (1, 2, 3, 4): continue
            msg = pkt[40:40 + int.from_bytes(pkt[4:6], "big")]
            inner, pseudo = msg[8:], pkt[8:40] + struct.pack("!IxxxB", len(msg), 58)
            src, dst, ok = inner[8:24], inner[24:40], fold(pseudo + msg)
            udp = inner[48:] if inner[6] == 44 else inner[40:]  # after a fragment header
        else:
            ihl = (pkt[0] & 15) * 4
            if pkt[9] != 1 or pkt[ihl] not in (3, 11, 12): continue
            msg = pkt[ihl:int.from_bytes(pkt[2:4], "big")]
            inner = msg[8:]
            iihl = (inner[0] & 15) * 4
            src, dst, udp = inner[12:16], inner[16:20], inner[iihl:]
            ok = fold(msg) if fold(inner[:iihl]) == 0xFFFF else 0
        return {"src": socket.inet_ntop(fam, src), "sport": int.from_bytes(udp[0:2], "big"),
                "dst": socket.inet_ntop(fam, dst), "dport": int.from_bytes(udp[2:4], "big"),
                "csum": ok == 0xFFFF, "udp_csum": udp_ok(src, dst, udp)}
out["quoted"] = quoted()
print(json.dumps(out), flush=True)
"""


def inbound_flow_error(dp: DataplaneNode, family: int, name: str, port: int,
                       size: int) -> dict[str, Any]:
    """What CLOSED_PEER in ext saw after sending `size` bytes back to a pod that sent it one
    datagram (SNATed) and closed its socket; checks the quote names what ext sent."""
    pod = dp.add_pod(name)
    node = dp.node
    # Checksum offloads off on every hop (as test_snat6's test_checksums_hold_without_offloads):
    # each sender computes full checksums, each receiver verifies them, and the quoted UDP
    # checksum is the one ext computed, not a partial sum a veth passes along unfinished.
    host_veth = pod.result["interfaces"][0]["name"]
    for ns, dev in ((pod.ns, "eth0"), (node.ns, host_veth), (node.ns, "uplink0"),
                    (node.ext, "ext0")):
        ns.run("ethtool", "-K", dev, "tx", "off", "rx", "off")
    ext_ip = node.ext_ip4 if family == 4 else node.ext_ip6
    node_ip = node.node_ip4 if family == 4 else node.node_ip6
    peer = node.ext.popen("python3", "-c", CLOSED_PEER, ext_ip, str(port), str(size),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout is not None and peer.stdin is not None
        assert peer.stdout.readline().strip() == "ready"
        pod.ns.run("python3", "-c", "import socket,sys; c=socket.socket(socket.AF_INET6 if "
                   "':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM); "
                   "c.sendto(b'x', (sys.argv[1], int(sys.argv[2]))); c.close()",
                   ext_ip, str(port))
        assert peer.stdout.readline().strip() == node_ip  # SNATed
        peer.stdin.write("go\n")
        peer.stdin.flush()
        out: dict[str, Any] = json.loads(peer.stdout.readline())
    finally:
        peer.kill()
        peer.wait()
    nat_port = out["node"][1]
    quoted = out["quoted"]
    assert quoted is not None, f"no ICMP error reached ext: {out}"
    assert {k: quoted[k] for k in ("src", "sport", "dst", "dport", "csum")} == {
        "src": ext_ip, "sport": port, "dst": node_ip, "dport": nat_port, "csum": True}, out
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_a_pods_port_unreachable_about_an_inbound_flow_reaches_ext_translated(
        dp: DataplaneNode, family: int) -> None:
    out = inbound_flow_error(dp, family, "unreach-in", 7403, 4)
    assert out["error"] == "refused", out
    assert out["quoted"]["udp_csum"] is True, out  # the whole datagram is quoted


@pytest.mark.parametrize("family", [4, 6])
def test_the_nodes_packet_too_big_about_an_inbound_flow_reaches_ext_translated(
        dp: DataplaneNode, family: int) -> None:
    # 1,450 bytes fit ext's link (1500) but not the pod's (1400): the node, forwarding the
    # translated datagram, answers frag needed (IPv4, DF: UDP's default path MTU discovery)
    # or packet too big (IPv6) about it, quoting the pod's address and port.
    out = inbound_flow_error(dp, family, "toobig-in", 7404, 1450)
    assert (out["error"], out.get("mtu")) == ("EMSGSIZE", 1400), out


def test_the_nodes_packet_too_big_about_a_fragment_of_an_inbound_flow_reaches_ext(
        dp: DataplaneNode) -> None:
    # 4,000 bytes leave ext in fragments of its MTU (1500): the node's packet too big about
    # the first one quotes a fragment header before the UDP header. (IPv4 has no such case:
    # a datagram fragmented by its sender goes without DF, and the node fragments it again.)
    out = inbound_flow_error(dp, 6, "toobig-frag", 7405, 4000)
    assert (out["error"], out.get("mtu")) == ("EMSGSIZE", 1400), out
