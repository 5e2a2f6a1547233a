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
        # eBPF runs have seen a few SYNs (0-3 of 20,000, at any rate) find no port in 128
        # tries and be dropped; the retransmitted SYN gets one and the connection succeeds
        # (asserted above). The cause is not known yet: bound it here, do not hide it.
        print(f"{dp.mode}: allocation failures {stats['allocFailures']['ipv4']}")
        assert stats["allocFailures"]["ipv4"] <= CHURN // 1000, stats
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


def test_nat_max_entries_sizes_the_ebpf_nat_maps() -> None:
    with dataplane_node("ebpf", natMaxEntries=4096) as dp:
        for name in ("ferry_nat_fwd", "ferry_nat_rev", "ferry_nat_fwd6", "ferry_nat_rev6"):
            # bpftool in the host namespaces: `ip netns exec` would mount a /sys without bpffs.
            info = json.loads(sh("bpftool", "-j", "map", "show", "pinned",
                                 f"{dp.pin_dir}/maps/{name}"))
            assert info["max_entries"] == 4096, info
        assert dp.inspect()["natStats"]["maxEntries"] == 4096
