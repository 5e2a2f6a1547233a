"""ferry on a simulated node, end to end, through the real `ferry` binary.

    sudo bash scripts/demo.sh        (runs scripts/setup.sh first, then this)

Namespaces (all with a random suffix, all removed at exit, also on error or Ctrl-C):
  node   the node: where the runtime execs /opt/cni/bin/ferry (nsenter --net=<node>);
         uplink 10.99.0.1/24 + fd99::1/64
  ext    a host outside the node, reached over the uplink veth: 10.99.0.2 / fd99::2, with a
         route back to the pod CIDRs via the node
  pods   web-1, web-2, db-1: dual stack from 10.20.0.0/24 and fd20::/120

The demo is a list of steps (STEPS below). A step prints its section and records checks; a
failed check makes the exit status 1. Later milestones add their sections to STEPS (SNAT
observed from the ext host, `bpftool` output of the pinned BPF state, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CNI_BIN = Path("/opt/cni/bin")
NETNS_DIR = Path("/run/netns")
TIMEOUT_S = 60

NODE_IP4, NODE_IP6 = "10.99.0.1", "fd99::1"
EXT_IP4, EXT_IP6 = "10.99.0.2", "fd99::2"
POD_CIDR4, POD_CIDR6 = "10.20.0.0/24", "fd20::/120"
POD_NAMES = ("web-1", "web-2", "db-1")
K8S_NAMESPACE = "default"
NETWORK = "demo"


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

    @property
    def node(self) -> str:
        return f"fdemo-{self.suffix}-node"

    @property
    def ext(self) -> str:
        return f"fdemo-{self.suffix}-ext"

    @property
    def ipam_dir(self) -> Path:
        return self.work / "ipam" / NETWORK

    @property
    def state_dir(self) -> Path:
        return self.work / "state" / NETWORK

    def netconf(self, **extra: object) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "ferry", "mtu": 1400,
                # No node agent in this demo (yet): nobody listens on this private socket, so
                # the binary runs every request itself and never reaches another ferryd.
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
    run("ip", "-n", d.node, "link", "add", "uplink", "type", "veth",
        "peer", "name", "eth0", "netns", d.ext)
    for ns, dev, ip4, ip6 in ((d.node, "uplink", NODE_IP4, NODE_IP6),
                              (d.ext, "eth0", EXT_IP4, EXT_IP6)):
        # No DAD on the uplink: a tentative link-local address would hold back the node's
        # first neighbour solicitation for forwarded pod traffic by about a second.
        run("nsenter", f"--net={NETNS_DIR / ns}", "sysctl", "-q", "-w",
            f"net.ipv6.conf.{dev}.accept_dad=0")
        run("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
    run("ip", "-n", d.ext, "route", "add", POD_CIDR4, "via", NODE_IP4)
    run("ip", "-n", d.ext, "-6", "route", "add", POD_CIDR6, "via", NODE_IP6)
    print(f"  node  {d.node:<22} uplink {NODE_IP4}/24 {NODE_IP6}/64")
    print(f"  ext   {d.ext:<22} eth0   {EXT_IP4}/24 {EXT_IP6}/64, pod CIDRs via the node")
    print(f"  pod CIDRs {POD_CIDR4} + {POD_CIDR6}, mtu 1400, work dir {d.work}")


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
    for pod in d.pods:
        assert pod.result is not None
        host = next(i for i in pod.result["interfaces"] if not i.get("sandbox"))
        cont = next(i for i in pod.result["interfaces"] if i.get("sandbox"))
        gws = {ip["address"]: ip.get("gateway", "-") for ip in pod.result["ips"]}
        print(f"  {pod.name:<6} container {pod.container_id[:12]}  netns {pod.netns}")
        print(f"         host veth {host['name']} ({host.get('mac', '?')})  "
              f"eth0 {cont.get('mac', '?')}")
        print("         ips    " + ", ".join(f"{a} gw {g}" for a, g in gws.items()))
        for fam in ("-4", "-6"):
            lines = [_NOISE.sub("", r).strip() for r in
                     out("ip", "-n", pod.netns, fam, "route", "show").splitlines()
                     if r.strip() and not r.startswith("fe80::")]
            label = "routes" if fam == "-4" else ""
            print(f"         {label:<6} " + " | ".join(lines))
        on_node = {r.split()[0] for fam in ("-4", "-6") for r in
                   out("ip", "-n", d.node, fam, "route", "show", "dev", host["name"]).splitlines()}
        missing = [ip for ip in pod.ips(4) + pod.ips(6) if ip not in on_node]
        d.check(not missing, f"node has a host route to each of {pod.name}'s IPs via "
                f"{host['name']}", "missing " + ", ".join(missing) if missing else "")


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


def check_pod(d: Demo) -> None:
    pod = d.pods[0]
    rc, doc, took = d.cni("CHECK", pod, d.netconf(prevResult=pod.result))
    d.check(rc == 0, f"CHECK {pod.name} against its ADD result {took:.2f}s",
            "" if rc == 0 else f"exit {rc}, {cni_error(doc)}")


def show_ipam(d: Demo) -> None:
    print(f"  {d.ipam_dir}/")
    by_cid = {p.container_id: p.name for p in d.pods}
    for f in sorted(d.ipam_dir.iterdir()):
        text = f.read_bytes().decode(errors="replace") if f.is_file() else ""
        if f.name == "lock":
            desc = "flock()ed around every allocation and release"
        elif f.name.startswith("last_reserved_ip."):
            desc = f"= {text}"
        else:
            cid, _, ifname = text.partition("\r\n")
            desc = f"{cid[:12]}.. {ifname}  ({by_cid.get(cid, 'unknown container')})"
        print(f"    {f.name:<20} {desc}")
    records = sorted(p.name for p in d.state_dir.glob("*.json")) if d.state_dir.is_dir() else []
    print(f"  {d.state_dir}/: {len(records)} attachment records")


def delete_pods(d: Demo) -> None:
    for pod in d.pods:
        conf = d.netconf(prevResult=pod.result) if pod.result else d.netconf()
        rc, doc, took = d.cni("DEL", pod, conf)
        left = run("ip", "-n", pod.netns, "-o", "link", "show", "eth0", check=False)
        d.check(rc == 0 and left.returncode != 0, f"DEL {pod.name:<6} {took:5.2f}s",
                "" if rc == 0 else f"exit {rc}, {cni_error(doc)}")
        d.del_netns(pod.netns)  # what the runtime does after DEL


def verify_clean(d: Demo) -> None:
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


@dataclass
class Step:
    title: str
    run: Callable[[Demo], None]
    always: bool = False  # runs even after an earlier step aborted (teardown and its checks)


STEPS: list[Step] = [
    Step("Simulated node", build_node),
    Step("ADD three pods through /opt/cni/bin/ferry", add_pods),
    Step("Pods", show_pods),
    Step("Connectivity (ping -c1 from inside each pod)", connectivity),
    Step("CHECK", check_pod),
    Step("IPAM dataDir (the reference host-local layout)", show_ipam),
    Step("DEL every pod", delete_pods, always=True),
    Step("Nothing left behind", verify_clean, always=True),
]


# --- main ---------------------------------------------------------------------------------------


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def preflight() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (sudo bash scripts/demo.sh)")
    if not os.access(CNI_BIN / "ferry", os.X_OK):
        problems.append(f"{CNI_BIN / 'ferry'} missing: run scripts/setup.sh")
    problems += [f"{tool} not found" for tool in ("ip", "nsenter", "ping", "sysctl")
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
    with terminate_as_interrupt():
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
    print("\nall checks passed; namespaces and temporary files removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
