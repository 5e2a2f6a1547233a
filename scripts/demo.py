"""ferry on a simulated node, end to end, through the real `ferry` binary.

    bash scripts/demo.sh             (as root; runs scripts/setup.sh first, then this)

Namespaces (all with a random suffix, all removed at exit, also on error or Ctrl-C):
  node   the node: where ferryd runs and the runtime execs /opt/cni/bin/ferry (nsenter
         --net=<node>); uplink0 10.99.0.1/24 + fd99::1/64
  ext    a host outside the node, reached over uplink0: 10.99.0.2 / fd99::2, with NO route
         to the pod CIDRs, so only traffic SNATed to the node IP can come back
  pods   web-1, web-2, db-1: dual stack from 10.20.0.0/24 and fd20::/120

The network uses the eBPF dataplane with a private bpffsRoot (/sys/fs/bpf/ferry-demo-<rand>).
ferryd (the node agent) loads and pins the tc programs, the ferry binary relays every
CNI request to it; the demo then shows SNAT as the ext host sees it, the pinned BPF state
(bpftool, tc, ferryctl, gRPC), a ferryd restart that reuses the pins, and a clean DEL.

The demo is a list of steps (STEPS below). A step prints its section and records checks; a
failed check makes the exit status 1. ferryd, the namespaces, the temp dir and the pins are
removed at exit whatever happened.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CNI_BIN = Path("/opt/cni/bin")
VENV_BIN = Path(sys.executable).parent  # ferryd and ferryctl live next to the venv's python
NETNS_DIR = Path("/run/netns")
TIMEOUT_S = 60

UPLINK = "uplink0"
NODE_IP4, NODE_IP6 = "10.99.0.1", "fd99::1"
EXT_IP4, EXT_IP6 = "10.99.0.2", "fd99::2"
POD_CIDR4, POD_CIDR6 = "10.20.0.0/24", "fd20::/120"
POD_NAMES = ("web-1", "web-2", "db-1")
K8S_NAMESPACE = "default"
NETWORK = "demo"
SNAT_PORTS = (61000, 65535)  # snatPortRange's default
ECHO_PORT = 7777
MAP_LINES = 14  # of `bpftool map dump` shown


class Abort(Exception):
    """A step cannot go on; the steps marked `always` still run."""


# --- plumbing -----------------------------------------------------------------------------------


def run(*argv: str, check: bool = True, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=TIMEOUT_S,
                          check=False)
    if check and proc.returncode != 0:
        raise Abort(f"{' '.join(argv)}: exit {proc.returncode}: "
                    f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


def out(*argv: str) -> str:
    return run(*argv).stdout.decode()


@dataclass
class Pod:
    name: str
    netns: str
    container_id: str
    result: dict[str, Any] | None = None

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def ips(self, version: int) -> list[str]:
        """The pod's addresses of one IP version, without prefix length."""
        ips = (self.result or {}).get("ips", [])
        return [ip["address"].split("/")[0] for ip in ips
                if (":" in ip["address"]) == (version == 6)]


@dataclass
class Demo:
    verbose: bool = False
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ferry-demo-")))
    namespaces: list[str] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    agent: subprocess.Popen[str] | None = None  # ferryd
    echo: subprocess.Popen[str] | None = None  # the echo server in ext
    echo_seen: queue.Queue[str] = field(default_factory=queue.Queue)  # its "proto ip port"s
    flow: subprocess.Popen[str] | None = None  # a TCP flow held open across the restart

    @property
    def node(self) -> str:
        return f"fdemo-{self.suffix}-node"

    @property
    def ext(self) -> str:
        return f"fdemo-{self.suffix}-ext"

    @property
    def pins_root(self) -> str:
        return f"/sys/fs/bpf/ferry-demo-{self.suffix}"

    @property
    def conflist(self) -> Path:
        return self.work / "demo.conflist"

    @property
    def grpc_socket(self) -> str:
        return str(self.work / "ferryd-grpc.sock")

    @property
    def ipam_dir(self) -> Path:
        return self.work / "ipam" / NETWORK

    @property
    def state_dir(self) -> Path:
        return self.work / "state" / NETWORK

    def netconf(self, **extra: object) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "ferry", "mtu": 1400,
                "dataplane": "ebpf", "uplink": UPLINK, "nodeIP": NODE_IP4,
                "nodeIPv6": NODE_IP6, "bpffsRoot": self.pins_root,
                # ferryd listens here; the binary relays each request to it.
                "agentSocket": str(self.work / "ferryd.sock"),
                "stateDir": str(self.work / "state"),
                "log": {"file": str(self.work / "ferry.log"), "level": "debug"},
                "ipam": {"type": "host-local", "dataDir": str(self.work / "ipam"),
                         "ranges": [[{"subnet": POD_CIDR4}], [{"subnet": POD_CIDR6}]]},
                **extra}

    def add_netns(self, name: str) -> None:
        self.namespaces.append(name)
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def del_netns(self, name: str) -> None:
        run("ip", "netns", "del", name, check=False)
        if name in self.namespaces:
            self.namespaces.remove(name)

    def in_node(self, *argv: str, check: bool = True) -> str:
        return run("nsenter", f"--net={NETNS_DIR / self.node}", *argv,
                   check=check).stdout.decode()

    def ctl(self, *args: str) -> str:
        return self.in_node(str(VENV_BIN / "ferryctl"), *args, "--config", str(self.conflist))

    def cni(self, command: str, pod: Pod, conf: dict[str, Any]
            ) -> tuple[int, dict[str, Any] | None, float]:
        """Exec the ferry binary from the node's netns as a runtime does: (rc, JSON, seconds)."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
               "CNI_NETNS": pod.netns_path, "CNI_IFNAME": "eth0", "CNI_PATH": str(CNI_BIN),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={K8S_NAMESPACE};"
                           f"K8S_POD_NAME={pod.name}"}
        t0 = time.monotonic()
        proc = run("nsenter", f"--net={NETNS_DIR / self.node}", str(CNI_BIN / "ferry"),
                   check=False, stdin=json.dumps(conf).encode(), env=env)
        took = time.monotonic() - t0
        try:
            doc = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            doc = {"msg": "not JSON", "details": proc.stdout.decode(errors="replace")[:300]}
        if proc.returncode != 0 and proc.stderr.strip():
            doc = {**(doc or {}), "stderr": proc.stderr.decode(errors="replace")[-300:]}
        if self.verbose and doc is not None:
            print(indent(json.dumps(doc, indent=2), 6))
        return proc.returncode, doc, took

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f"  ({detail})" if detail else ""))
        if not ok:
            self.failures.append(what + (f": {detail}" if detail else ""))
        return ok

    def cleanup(self) -> None:
        stop_agent(self)
        for proc in (self.flow, self.echo):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if Path(self.pins_root).exists():  # a step aborted before the unload
            run(*(["nsenter", f"--net={NETNS_DIR / self.node}"] if self.node in self.namespaces
                  else []), str(VENV_BIN / "ferryctl"), "unload", "--config",
                str(self.conflist), check=False)
            shutil.rmtree(self.pins_root, ignore_errors=True)
        for name in reversed(self.namespaces):
            run("ip", "netns", "del", name, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.work, ignore_errors=True)


def indent(text: str, n: int = 4) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def cni_error(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "no output"
    return f"code {doc.get('code')}: {doc.get('msg')} {doc.get('details', '')}".strip()


# --- steps --------------------------------------------------------------------------------------


def build_node(d: Demo) -> None:
    d.add_netns(d.node)
    d.add_netns(d.ext)
    run("ip", "-n", d.node, "link", "add", UPLINK, "type", "veth",
        "peer", "name", "eth0", "netns", d.ext)
    for ns, dev, ip4, ip6 in ((d.node, UPLINK, NODE_IP4, NODE_IP6),
                              (d.ext, "eth0", EXT_IP4, EXT_IP6)):
        # No DAD on the uplink: a tentative link-local address would hold back the node's
        # first neighbour solicitation for forwarded pod traffic by about a second.
        run("nsenter", f"--net={NETNS_DIR / ns}", "sysctl", "-q", "-w",
            f"net.ipv6.conf.{dev}.accept_dad=0")
        run("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
    d.conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": NETWORK,
                                      "plugins": [d.netconf()]}, indent=2))
    print(f"  node  {d.node:<22} {UPLINK} {NODE_IP4}/24 {NODE_IP6}/64")
    print(f"  ext   {d.ext:<22} eth0    {EXT_IP4}/24 {EXT_IP6}/64, no route to the pods")
    print(f"  pod CIDRs {POD_CIDR4} + {POD_CIDR6}, dataplane ebpf, pins {d.pins_root}")
    print(f"  work dir {d.work} (conflist, ferryd sockets, IPAM, state, log)")


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of `proc`, or '' if it ends or says nothing for `timeout` s."""
    assert proc.stdout is not None
    got: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: got.put(proc.stdout.readline()),  # type: ignore[union-attr]
                     daemon=True).start()
    try:
        return got.get(timeout=timeout)
    except queue.Empty:
        return ""


def start_agent(d: Demo) -> dict[str, Any]:
    """ferryd in the node's netns, as the node's service manager would start it; returns the
    dataplane load summary it logged (compiled or reused, seconds, program ids...)."""
    t0 = time.monotonic()
    d.agent = subprocess.Popen(
        ["nsenter", f"--net={NETNS_DIR / d.node}", str(VENV_BIN / "ferryd"),
         "--config", str(d.conflist), "--grpc-socket", d.grpc_socket, "--metrics", "off"],
        stdout=subprocess.PIPE, stderr=(d.work / "ferryd.stderr").open("ab"), text=True)
    line = read_line(d.agent, 180)
    took = time.monotonic() - t0
    try:
        ready = json.loads(line)
    except ValueError:
        err = (d.work / "ferryd.stderr").read_text()[-400:]
        raise Abort(f"ferryd did not report ready: {line.strip() or err.strip()}") from None
    starts = [e for e in log_entries(d) if e.get("msg") == "ferryd starting"
              and e.get("pid") == ready["pid"]]
    load: dict[str, Any] = starts[-1]["load"] if starts else {}
    print(f"  ferryd pid {ready['pid']} ready in {took:.2f}s: relay {ready['socket']}")
    how = (f"loaded by the {load.get('loader', '?')} loader and pinned" if load.get("compiled")
           else "reused from the pins (nothing loaded)")
    g = load.get
    print(f"    programs {how} ({g('seconds', '?')}s, build {g('hash', '?')}), attached on "
          f"{g('uplink')},\n    SNAT to {g('nodeIP')} / {g('nodeIPv6')} ports {g('snatPorts')}, "
          f"{g('synced', 0)} pods re-synced")
    return load


def stop_agent(d: Demo) -> int | None:
    """SIGTERM, as systemd stops it: in-flight requests finish, sockets go. None: not running."""
    if d.agent is None:
        return None
    proc, d.agent = d.agent, None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def log_entries(d: Demo) -> list[dict[str, Any]]:
    path = d.work / "ferry.log"
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def agent_up(d: Demo) -> None:
    load = start_agent(d)
    progs = ", ".join(sorted(load.get("progIds", {})))
    d.check(bool(load.get("compiled")),
            f"first start loaded ({load.get('loader', '?')} loader) and pinned", progs)


def add_pods(d: Demo) -> None:
    for name in POD_NAMES:
        pod = Pod(name, f"fdemo-{d.suffix}-{name}", secrets.token_hex(32))
        d.add_netns(pod.netns)
        rc, doc, took = d.cni("ADD", pod, d.netconf())
        d.pods.append(pod)  # DEL runs for it whatever ADD did, as a runtime does
        ok = rc == 0 and bool(doc) and len(pod_ips(doc)) == 2
        if ok:
            pod.result = doc
        detail = " ".join(pod_ips(doc)) if ok else f"exit {rc}, {cni_error(doc)}"
        d.check(ok, f"ADD {name:<6} {took:5.2f}s", detail)
    if any(pod.result is None for pod in d.pods):
        raise Abort("not every pod was added")


def pod_ips(doc: dict[str, Any] | None) -> list[str]:
    return [ip["address"] for ip in (doc or {}).get("ips", [])]


_NOISE = re.compile(r" (proto \w+|metric \d+|pref \w+|dev eth0)")


def show_pods(d: Demo) -> None:
    missing: list[str] = []
    for n, pod in enumerate(d.pods):
        assert pod.result is not None
        host = next(i for i in pod.result["interfaces"] if not i.get("sandbox"))
        cont = next(i for i in pod.result["interfaces"] if i.get("sandbox"))
        gws = {ip["address"]: ip.get("gateway", "-") for ip in pod.result["ips"]}
        print(f"  {pod.name:<6} container {pod.container_id[:8]}  host veth {host['name']} "
              f"{host.get('mac', '?')}  eth0 {cont.get('mac', '?')}")
        print("         ips    " + ", ".join(f"{a} gw {g}" for a, g in gws.items()))
        for fam in ("-4", "-6") if n == 0 else ():  # the same shape in every pod
            lines = [_NOISE.sub("", r).strip() for r in
                     out("ip", "-n", pod.netns, fam, "route", "show").splitlines()
                     if r.strip() and not r.startswith("fe80::")]
            label = "routes" if fam == "-4" else ""
            print(f"         {label:<6} " + " | ".join(lines))
        on_node = {r.split()[0] for fam in ("-4", "-6") for r in
                   out("ip", "-n", d.node, fam, "route", "show", "dev", host["name"]).splitlines()}
        missing += [ip for ip in pod.ips(4) + pod.ips(6) if ip not in on_node]
    d.check(not missing, "the node has a host route to every pod IP via its host veth",
            "missing " + ", ".join(missing) if missing else "")


def ping(ns: str, dst: str) -> tuple[bool, str]:
    proc = run("nsenter", f"--net={NETNS_DIR / ns}", "ping", "-c", "1", "-W", "2", "-q", dst,
               check=False)
    m = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout.decode())
    return proc.returncode == 0, (f"{float(m.group(1)):.2f} ms" if m else "no reply")


def connectivity(d: Demo) -> None:
    print(f"  {'from':<7}{'to':<11}{'IPv4':<25}IPv6")
    for i, pod in enumerate(d.pods):
        peer = d.pods[(i + 1) % len(d.pods)]
        targets = [(peer.name, peer.ips(4)[0], peer.ips(6)[0]),
                   ("node", NODE_IP4, NODE_IP6),
                   ("ext host", EXT_IP4, EXT_IP6)]
        for label, ip4, ip6 in targets:
            cells = []
            for dst in (ip4, ip6):
                ok, rtt = ping(pod.netns, dst)
                cells.append(f"{dst:<10} {'ok' if ok else 'FAIL'} {rtt}")
                if not ok:
                    d.failures.append(f"ping {pod.name} -> {label} {dst}")
            print(f"  {pod.name:<7}{label:<11}{cells[0]:<25}{cells[1]}")


# The ext host's echo server: TCP and UDP on its v4 and v6 address; one "proto ip port" line per
# TCP connection or UDP datagram, with the source address and port it sees.
ECHO_SERVER = r"""
import socket, sys, threading
port = int(sys.argv[1])
def say(proto, a):
    print(proto, a[0], a[1], flush=True)
def tcp(s):
    def serve(c):
        with c:
            while (data := c.recv(256)):
                c.sendall(data)
    while True:
        c, a = s.accept(); say("tcp", a)
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def udp(s):
    while True:
        data, a = s.recvfrom(2048); say("udp", a); s.sendto(data, a)
for ip in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    t = socket.socket(fam); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((ip, port)); t.listen(64)
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((ip, port))
    for fn, s in ((tcp, t), (udp, u)):
        threading.Thread(target=fn, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# A pod's client: one exchange, prints its own address and port; with "hold", it then echoes
# every stdin line over the same TCP connection (a flow that outlives a ferryd restart).
ECHO_CLIENT = r"""
import socket, sys
proto, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
if proto == "tcp":
    s = socket.create_connection((ip, port), timeout=5)
    s.sendall(b"hello"); ok = s.recv(64) == b"hello"
else:
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(5); s.connect((ip, port))
    s.send(b"hello"); ok = s.recv(64) == b"hello"
print(s.getsockname()[0], s.getsockname()[1], "echo-ok" if ok else "echo-bad", flush=True)
for line in sys.stdin if "hold" in sys.argv else ():
    s.sendall(line.encode())
    print("echo-ok" if s.recv(256) == line.encode() else "echo-bad", flush=True)
"""


def start_echo(d: Demo) -> None:
    d.echo = subprocess.Popen(["ip", "netns", "exec", d.ext, "python3", "-u", "-c", ECHO_SERVER,
                               str(ECHO_PORT), EXT_IP4, EXT_IP6],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if read_line(d.echo, 10).strip() != "ready":
        raise Abort("the echo server in ext did not start")
    out_ = d.echo.stdout
    assert out_ is not None
    threading.Thread(target=lambda: [d.echo_seen.put(ln) for ln in out_], daemon=True).start()


def ext_saw(d: Demo) -> tuple[str, str, int]:
    try:
        proto, ip, port = d.echo_seen.get(timeout=5).split()
    except queue.Empty:
        return "", "", 0
    return proto, ip, int(port)


def snat_ok(d: Demo, label: str, pod_end: str, node_ip: str) -> None:
    """Check and print what ext saw for the flow just made from `pod_end` ("ip:port")."""
    _, ip, port = ext_saw(d)
    seen = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    d.check(ip == node_ip and SNAT_PORTS[0] <= port <= SNAT_PORTS[1],
            f"{label} ext saw {seen:<20} (pod {pod_end})")


def snat(d: Demo) -> None:
    start_echo(d)
    print(f"  echo server in ext, port {ECHO_PORT}: each flow must come from the node IP, port "
          f"in snatPortRange {SNAT_PORTS[0]}-{SNAT_PORTS[1]}")
    flows = [(d.pods[0], proto, v) for proto in ("tcp", "udp") for v in (4, 6)]
    flows += [(pod, "tcp", 4) for pod in d.pods[1:]]
    for pod, proto, v in flows:
        dst, node_ip = (EXT_IP4, NODE_IP4) if v == 4 else (EXT_IP6, NODE_IP6)
        proc = run("nsenter", f"--net={pod.netns_path}", "python3", "-c", ECHO_CLIENT, proto,
                   dst, str(ECHO_PORT), check=False)
        words = proc.stdout.decode().split()
        if proc.returncode != 0 or words[-1:] != ["echo-ok"]:
            d.check(False, f"{pod.name} {proto}{v} to ext", proc.stderr.decode()[-200:])
            continue
        src = f"[{words[0]}]:{words[1]}" if v == 6 else f"{words[0]}:{words[1]}"
        snat_ok(d, f"{pod.name:<6} {proto}{v}", src, node_ip)


def bpf_state(d: Demo) -> None:
    pins = f"{d.pins_root}/{NETWORK}"
    print(f"  $ bpftool prog show pinned {pins}/progs/ferry_snat_eg")
    print(indent(out("bpftool", "prog", "show", "pinned", f"{pins}/progs/ferry_snat_eg"
                     ).rstrip()))
    nat_map = f"{pins}/maps/ferry_nat_fwd"
    entries = json.loads(out("bpftool", "-j", "map", "dump", "pinned", nat_map))
    dump = out("bpftool", "map", "dump", "pinned", nat_map).splitlines()
    print(f"  $ bpftool map dump pinned {nat_map} | head -{MAP_LINES}   ({len(entries)} "
          f"entries, fields named by BTF)")
    print(indent("\n".join(dump[:MAP_LINES])))
    print(f"  $ tc filter show dev {UPLINK} egress   (node netns)")
    tc = d.in_node("tc", "filter", "show", "dev", UPLINK, "egress")
    print(indent(tc.rstrip()))
    d.check("ferry_snat_eg" in tc and "direct-action" in tc,
            f"ferry_snat_eg attached to {UPLINK} egress (direct-action)")
    print(f"  $ ferryctl inspect --config {d.conflist.name}")
    print(indent(d.ctl("inspect").rstrip()))


def grpc_api(d: Demo) -> None:
    import grpc  # from the venv, as ferryd's own; the stubs are generated from ferry.proto

    from plugin.agent import ferry_pb2, ferry_pb2_grpc

    with grpc.insecure_channel(f"unix:{d.grpc_socket}") as channel:
        stub = ferry_pb2_grpc.FerryStub(channel)
        h = stub.Health(ferry_pb2.Empty(), timeout=10)
        print(f"  Health: ok={h.ok} version {h.version} network {h.network} dataplane "
              f"{h.dataplane} uptime {h.uptime_seconds:.1f}s served {h.requests_served}")
        eps = stub.ListEndpoints(ferry_pb2.Empty(), timeout=10).endpoints
        for ep in eps:
            print(f"  ListEndpoints: {ep.pod_namespace}/{ep.pod_name:<6} {ep.host_veth} "
                  f"{' '.join(ep.ips)} complete={ep.complete}")
    d.check(h.ok and h.dataplane == "ebpf", "ferryd healthy, dataplane ebpf")
    d.check(h.requests_served == len(POD_NAMES), f"ferryd served the {len(POD_NAMES)} "
            "relayed ADDs", f"served {h.requests_served}")
    d.check(sorted(ep.pod_name for ep in eps) == sorted(POD_NAMES),
            f"ListEndpoints lists the {len(POD_NAMES)} pods")


def restart(d: Demo) -> None:
    pod = d.pods[-1]
    flow = subprocess.Popen(["nsenter", f"--net={pod.netns_path}", "python3", "-u", "-c",
                             ECHO_CLIENT, "tcp", EXT_IP4, str(ECHO_PORT), "hold"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    d.flow = flow
    words = read_line(flow, 10).split()
    if not words:
        raise Abort(f"{pod.name} could not open a TCP flow to ext")
    snat_ok(d, f"{pod.name} opened a TCP flow:", f"{words[0]}:{words[1]}", NODE_IP4)

    def echo(when: str) -> None:
        assert flow.stdin is not None
        flow.stdin.write(f"still there {when}\n")
        flow.stdin.flush()
        d.check(read_line(flow, 5).strip() == "echo-ok", f"the open flow echoes {when}")

    rc = stop_agent(d)
    d.check(rc == 0, "ferryd stopped on SIGTERM", f"exit {rc}")
    echo("while ferryd is down")
    load = start_agent(d)
    d.check(load.get("compiled") is False, "restart reused the pins (compiled false)")
    echo("after the restart")
    ok, rtt = ping(d.pods[0].netns, EXT_IP4)
    d.check(ok, f"{d.pods[0].name} pings ext {EXT_IP4}", rtt)


def check_pod(d: Demo) -> None:
    pod = d.pods[0]
    rc, doc, took = d.cni("CHECK", pod, d.netconf(prevResult=pod.result))
    d.check(rc == 0, f"CHECK {pod.name} against its ADD result {took:.2f}s",
            "" if rc == 0 else f"exit {rc}, {cni_error(doc)}")


def delete_pods(d: Demo) -> None:
    for pod in d.pods:
        conf = d.netconf(prevResult=pod.result) if pod.result else d.netconf()
        rc, doc, took = d.cni("DEL", pod, conf)
        left = run("ip", "-n", pod.netns, "-o", "link", "show", "eth0", check=False)
        # ferryd answers before the kernel has unregistered the pair: the pod's eth0 may
        # still be there for a few ms, but without carrier (the host end is down).
        queued = left.returncode == 0
        d.check(rc == 0 and (not queued or b"NO-CARRIER" in left.stdout),
                f"DEL {pod.name:<6} {took:5.2f}s",
                f"exit {rc}, {cni_error(doc)}" if rc else
                "eth0 cut off, pair queued for ferryd's reaper" if queued else "eth0 gone")
        d.del_netns(pod.netns)  # what the runtime does after DEL


def verify_clean(d: Demo) -> None:
    deadline = time.monotonic() + 5  # the reaper's batch, and the kernel's netns teardown
    while ": fry" in out("ip", "-n", d.node, "-o", "link", "show") and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    links = out("ip", "-n", d.node, "-o", "link", "show").splitlines()
    fry = [ln.split(":")[1].strip().split("@")[0] for ln in links if ": fry" in ln]
    d.check(not fry, "no fry* links left on the node", ", ".join(fry))
    routes = out("ip", "-n", d.node, "route", "show").splitlines() + \
        out("ip", "-n", d.node, "-6", "route", "show").splitlines()
    pod_routes = [r for r in routes if r.startswith(("10.20.0.", "fd20::"))]
    d.check(not pod_routes, "no pod routes left on the node", " | ".join(pod_routes))
    ipfiles = sorted(f.name for f in d.ipam_dir.iterdir()
                     if f.name != "lock" and not f.name.startswith("last_reserved_ip.")) \
        if d.ipam_dir.is_dir() else []
    d.check(not ipfiles, "no IP reservations left in the IPAM dataDir", ", ".join(ipfiles))
    records = sorted(p.name for p in d.state_dir.glob("*.json")) if d.state_dir.is_dir() else []
    d.check(not records, "no attachment records left in the state dir", ", ".join(records))
    if not Path(d.pins_root).exists():
        return
    info = json.loads(d.ctl("inspect", "--json"))
    pod_ips = {ip for pod in d.pods for v in (4, 6) for ip in pod.ips(v)}
    nat = [r for r in info["nat"] if r["pod"].rpartition(":")[0].strip("[]") in pod_ips]
    d.check(not info["pods"], "ferryctl inspect --json: no pods in the endpoint maps",
            " ".join(p["ip"] for p in info["pods"]))
    d.check(not nat, "no NAT entries of the pods left", f"{len(nat)} entries")


def stop_and_unload(d: Demo) -> None:
    rc = stop_agent(d)
    if rc is not None:
        d.check(rc == 0, "ferryd stopped on SIGTERM", f"exit {rc}")
    if d.node in d.namespaces and d.conflist.exists():
        res = json.loads(d.ctl("unload", "--json"))
        d.check(bool(res.get("removedPins")), "ferryctl unload: filters detached, pins removed",
                ", ".join(res.get("detached", [])))
        tc = d.in_node("tc", "filter", "show", "dev", UPLINK, "egress")
        d.check("ferry" not in tc, f"no ferry filter left on {UPLINK}")
    shutil.rmtree(d.pins_root, ignore_errors=True)
    d.check(not Path(d.pins_root).exists(), f"{d.pins_root} removed")


@dataclass
class Step:
    title: str
    run: Callable[[Demo], None]
    always: bool = False  # runs even after an earlier step aborted (teardown and its checks)


STEPS: list[Step] = [
    Step("Simulated node", build_node),
    Step("Start ferryd in the node's netns", agent_up),
    Step("ADD three pods through /opt/cni/bin/ferry (each exec relays to ferryd)", add_pods),
    Step("Pods", show_pods),
    Step("Connectivity (ping -c1 from inside each pod; ext only answers the node IP)",
         connectivity),
    Step("SNAT seen from the ext host", snat),
    Step("The pinned BPF state", bpf_state),
    Step("ferryd's gRPC API (python, stubs from plugin/agent/ferry.proto)", grpc_api),
    Step("Restart ferryd with a TCP flow open", restart),
    Step("CHECK", check_pod),
    Step("DEL every pod (relayed)", delete_pods, always=True),
    Step("Nothing left behind", verify_clean, always=True),
    Step("Stop ferryd, unload the dataplane, remove the pins", stop_and_unload, always=True),
]


# --- main ---------------------------------------------------------------------------------------


def preflight() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root: bash scripts/demo.sh")
    if not os.access(CNI_BIN / "ferry", os.X_OK):
        problems.append(f"{CNI_BIN / 'ferry'} missing: run scripts/setup.sh")
    problems += [f"{tool} not found" for tool in ("ip", "nsenter", "ping", "sysctl",
                                                  "bpftool", "tc", "python3")
                 if shutil.which(tool) is None]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="print every CNI result JSON")
    args = p.parse_args(argv)
    problems = preflight()
    if problems:
        print("demo: " + "; ".join(problems), file=sys.stderr)
        return 2

    demo = Demo(verbose=args.verbose)
    print(f"ferry demo: a simulated node (suffix {demo.suffix}), {len(POD_NAMES)} dual-stack "
          "pods, the real CNI binary")
    aborted: str | None = None
    # SIGTERM unwinds like Ctrl-C, so that the finally blocks clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for n, step in enumerate(STEPS, 1):
            if aborted and not step.always:
                continue
            print(f"\n[{n}] {step.title}")
            try:
                step.run(demo)
            except Abort as e:
                aborted = str(e)
                demo.check(False, f"{step.title}: aborted", aborted)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        log = demo.work / "ferry.log"
        if demo.failures and log.exists():
            print("\nferry log (last 5 lines):")
            print(indent("\n".join(log.read_text().splitlines()[-5:]), 2))
        demo.cleanup()
    if demo.failures:
        print(f"\nFAILED: {len(demo.failures)} check(s):")
        print(indent("\n".join(demo.failures), 2))
        return 1
    print("\nall checks passed; ferryd stopped, namespaces, temp files and pins removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
