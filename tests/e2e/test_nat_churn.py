"""NAT under churn, in every dataplane of MODES: many short-lived TCP connections from one pod
to one server with the default port range (the ports of closed flows must come back), an
established idle flow that must keep its port meanwhile, port exhaustion that is counted and
never hurts flows that hold a port, and randomizeSNAT. The 'ext' host has no route to the pods:
it can answer only what left with the node IP."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from dataplane_support import MODES, DataplaneNode, dataplane_node, recorder, seen
from harness import Agent, Netns, sh

CHURN = 20_000

# One server for the ext namespace, single-threaded (selectors): echoes what it reads and
# closes when the client does. Prints "ready", then nothing.
ECHO_SERVER = r"""
import selectors, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port)); s.listen(4096); s.setblocking(False)
sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            try:
                c, _ = s.accept()
            except BlockingIOError:
                continue
            c.setblocking(False); sel.register(c, selectors.EVENT_READ)
            continue
        c = key.fileobj
        try:
            d = c.recv(65536)
        except ConnectionError:
            d = b""
        if d:
            c.sendall(d)
        else:
            sel.unregister(c); c.close()
"""

# N short connections one after the other: connect, 1 byte each way, close (the client's FIN
# goes first, as an HTTP/1.0 client or a health checker closes). A connect that does not
# complete within 10 s (the SYN dropped for want of a port, three retransmissions) counts as a
# failure. Prints {"failed": .., "first": .., "rate": ..}.
CHURN_CLIENT = r"""
import json, socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
failed, first, t0 = 0, None, time.monotonic()
for i in range(n):
    try:
        c = socket.create_connection((ip, port), timeout=10)
        c.sendall(b"x")
        if c.recv(1) != b"x":
            raise OSError("no echo")
        c.close()
    except OSError:
        failed += 1
        first = i if first is None else first
print(json.dumps({"failed": failed, "first": first, "rate": n / (time.monotonic() - t0)}))
"""

# One established flow held open: echo once, print its local port, then echo once more per
# line on stdin (each answered "ok <port>" or "broken").
HOLD_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"first"); assert c.recv(64) == b"first"
print(c.getsockname()[1], flush=True)
for line in sys.stdin:
    try:
        c.sendall(b"again"); ok = c.recv(64) == b"again"
    except OSError:
        ok = False
    print(f"ok {c.getsockname()[1]}" if ok else "broken", flush=True)
"""


@pytest.fixture(params=MODES)
def dp(request: pytest.FixtureRequest) -> Iterator[DataplaneNode]:
    with dataplane_node(request.param) as n:
        yield n


def echo_server(ns: Netns, ip: str, port: int) -> subprocess.Popen:
    proc = ns.popen("python3", "-c", ECHO_SERVER, ip, str(port), stdout=subprocess.PIPE,
                    text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def held_flow(ns: Netns, ip: str, port: int) -> subprocess.Popen:
    proc = ns.popen("python3", "-u", "-c", HOLD_CLIENT, ip, str(port), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip().isdigit()
    return proc


def still_works(proc: subprocess.Popen) -> bool:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc.stdout.readline().startswith("ok")


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait()


def test_20k_short_connections_to_one_server_and_an_idle_flow_keeps_its_port(
        dp: DataplaneNode) -> None:
    pod = dp.add_pod("churn")
    node = dp.node
    server = echo_server(node.ext, node.ext_ip4, 7300)
    idle = held_flow(pod.ns, node.ext_ip4, 7300)
    try:
        out = json.loads(pod.ns.run("python3", "-c", CHURN_CLIENT, node.ext_ip4, "7300",
                                    str(CHURN)))
        print(f"{dp.mode}: {CHURN} connections at {out['rate']:.0f}/s, "
              f"{out['failed']} failed (first at #{out['first']})")
        assert out["failed"] == 0, out
        # The idle flow kept its mapping through the churn and through an expiry pass with
        # the default timeouts, which removes closed flows, not established ones.
        assert still_works(idle)
        dp.ctl("gc")
        assert still_works(idle)
        stats = dp.inspect()["natStats"]
        print(f"{dp.mode}: allocation failures {stats['allocFailures']['ipv4']}, "
              f"counters {stats.get('counters', {})}")
        # No SYN dropped for want of a port, not even one that a retransmission would have
        # recovered. The client's first ~4,000 connections run at ~9,000/s (before its own
        # TIME_WAIT sockets slow its connect()), what the range carries with the 0.5 s reuse
        # delay: eBPF then reuses ports closed less long ago (reused_early), as conntrack
        # (iptables) reuses a closed tuple at once.
        assert stats["allocFailures"]["ipv4"] == 0, stats
        if dp.mode == "ebpf":
            assert stats["counters"]["try_refused"] == 0, stats  # only live claims refuse
        assert 1 <= stats["destPortsMax"]["ipv4"] <= 65535 - 61000 + 1
    finally:
        stop(idle, server)


def _metrics(ns: Netns) -> dict[str, float]:
    text = ns.run("python3", "-c", "import urllib.request as u;print(u.urlopen("
                  "'http://127.0.0.1:9661/metrics').read().decode())")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("ferry_nat_")}


@pytest.mark.parametrize("mode", MODES)
def test_exhausted_range_counts_failures_and_keeps_flows_that_have_a_port(mode: str) -> None:
    with dataplane_node(mode, load=False, snatPortRange="61000-61007") as dp:
        node = dp.node
        agent = Agent(node, {**dp.conf, "agentSocket": str(node.tmp / "ferryd.sock")}).start()
        server = echo_server(node.ext, node.ext_ip4, 7301)
        held = []
        try:
            pod = dp.add_pod("exhaust")
            held = [held_flow(pod.ns, node.ext_ip4, 7301) for _ in range(8)]
            before = _metrics(node.ns)
            assert before['ferry_nat_alloc_failures_total{family="ipv4"}'] == 0
            assert before['ferry_nat_dest_ports_max{family="ipv4"}'] == 8
            out = json.loads(pod.ns.run("python3", "-c", CHURN_CLIENT.replace(
                "timeout=10", "timeout=2"), node.ext_ip4, "7301", "2"))
            assert out["failed"] == 2  # no ninth port
            after = _metrics(node.ns)
            assert after['ferry_nat_alloc_failures_total{family="ipv4"}'] >= 2, after
            assert after['ferry_nat_entries{family="ipv4"}'] >= 8
            if mode == "ebpf":  # every one of the 2 x 128 tries met a live (open) flow
                assert after['ferry_nat_port_refusals_total{reason="open"}'] >= 2 * 128, after
                assert after['ferry_nat_port_refusals_total{reason="refused"}'] == 0, after
            assert all(still_works(p) for p in held)  # the eight keep their ports
        finally:
            stop(*held, server)
            agent.stop()


@pytest.mark.parametrize("mode", MODES)
def test_randomize_none_keeps_the_pods_port_prng_does_not(mode: str) -> None:
    # The pod binds ports inside the range: "none" keeps each one (it is free), "prng" picks
    # a random port for each (all three kept would be a 1 in 4536^3 chance), "hashrandom" one
    # from a hash of the flow.
    bind = r"""
import socket, sys
for p in (62000, 62001, 62002):
    c = socket.socket(); c.bind(("", p)); c.connect((sys.argv[1], 7302))
    c.sendall(b"x"); assert c.recv(64) == b"x"; c.close()
"""
    for randomize, kept in (("none", True), ("prng", False), ("hashrandom", None)):
        with dataplane_node(mode, randomizeSNAT=randomize) as dp:
            pod = dp.add_pod(f"rnd-{randomize}")
            with recorder(dp.node.ext, "tcp", dp.node.ext_ip4, 7302) as srv:
                pod.ns.run("python3", "-c", bind, dp.node.ext_ip4)
                flows = seen(srv, 3)
            assert {src for src, _ in flows} == {dp.node.node_ip4}
            ports = [port for _, port in flows]
            assert all(61000 <= p <= 65535 for p in ports), ports
            if kept is not None:  # hashrandom: a hash of each flow, in the range
                assert (ports == [62000, 62001, 62002]) is kept, (randomize, ports)


NAT_MAPS = ("ferry_nat_fwd", "ferry_nat_rev", "ferry_nat_fwd6", "ferry_nat_rev6")


def _max_entries(dp: DataplaneNode) -> set[int]:
    # bpftool in the host namespaces: `ip netns exec` would mount a /sys without bpffs.
    return {json.loads(sh("bpftool", "-j", "map", "show", "pinned",
                          f"{dp.pin_dir}/maps/{name}"))["max_entries"] for name in NAT_MAPS}


@pytest.mark.parametrize("loader", ["elf", "bcc"])
def test_nat_max_entries_sizes_the_nat_maps_with_either_loader(loader: str) -> None:
    # The prebuilt objects hold the default size: the ELF loader creates the maps with
    # natMaxEntries instead (as libbpf's bpf_map__set_max_entries); bcc compiles it in.
    with dataplane_node("ebpf", natMaxEntries=4096, loader=loader) as dp:
        assert _max_entries(dp) == {4096}
        assert dp.inspect()["natStats"]["maxEntries"] == 4096
        pod = dp.add_pod("sized")
        with recorder(dp.node.ext, "tcp", dp.node.ext_ip4, 7303) as srv:
            pod.ns.run("python3", "-c", "import socket,sys; c=socket.create_connection("
                       "(sys.argv[1], 7303)); c.sendall(b'x'); c.recv(1)", dp.node.ext_ip4)
            assert seen(srv, 1)[0][0] == dp.node.node_ip4


def test_a_reload_with_another_nat_max_entries_keeps_established_flows() -> None:
    # Another natMaxEntries is another build: the reload makes maps of the new size, copies
    # the flows of the old ones into them and swaps; an established flow keeps its port.
    with dataplane_node("ebpf") as dp:
        node = dp.node
        server = echo_server(node.ext, node.ext_ip4, 7304)
        pod = dp.add_pod("resize")
        held = held_flow(pod.ns, node.ext_ip4, 7304)
        try:
            assert _max_entries(dp) == {65536}
            dp.conf_path.write_text(json.dumps({**dp.conf, "natMaxEntries": 8192}))
            out = dp.load()
            assert out["compiled"] and out["natMaxEntries"] == 8192, out
            assert out["carried"]["ferry_nat_fwd"] >= 1 and out["carried"]["ferry_nat_rev"] >= 1
            assert _max_entries(dp) == {8192}
            assert still_works(held)  # its reply found its reverse entry in the new map
            assert dp.inspect()["natStats"]["entries"]["ipv4"] >= 1
            out = json.loads(pod.ns.run("python3", "-c", CHURN_CLIENT, node.ext_ip4, "7304",
                                        "20"))
            assert out["failed"] == 0, out
        finally:
            stop(held, server)
