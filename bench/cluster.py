"""Cluster mode's cost: ADD+DEL per pod with an etcd datastore, against single-node ferry and
the reference plugins, side by side in one run; and what a block claim costs.

    .venv/bin/python bench/cluster.py [--iterations 30] [--pods 100] [--claims 30] [--dual]

Modes, all exec'd as a runtime does it (see bench/add_del.py, whose node, phases and modes
this reuses):
  (k) ferry cluster       ferry + ferryd in cluster mode: ipam ferry-cluster (/26 blocks),
                          a private etcd 3.4 in the node's netns, workload endpoints written
  (a) ferry + ferryd      single-node mode (host-local IPAM), the default
  (c) reference           /usr/lib/cni/ptp with /usr/lib/cni/host-local
Target: (k)/(a) within 1.2x. An ADD inside a block makes no datastore call (ferryd writes
the endpoint on its own thread), so the difference is the cluster bookkeeping only.

Block claims: --claims pods added one after the other with 1-address blocks (/32, /128),
so that every ADD claims a block (list the blocks, one etcd transaction, the cache file),
kept attached until the end; the median of those ADDs against (k)'s median ADD, and the
median claim time ferryd logged ("claimed block", ms).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import add_del
from add_del import (
    CNI_BIN,
    BenchError,
    FerryWithAgent,
    Mode,
    Node,
    Samples,
    ms,
    p90,
    ratio,
    sh,
)

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
UPLINK_IP = "10.99.0.1"


@dataclass
class FerryCluster(FerryWithAgent):
    """ferryd in cluster mode, with etcd listening on the node netns' own loopback."""

    etcd: subprocess.Popen[bytes] | None = None
    block4: int = 26
    block6: int = 122

    def unavailable(self) -> str | None:
        if not os.access(ETCD, os.X_OK):
            return f"{ETCD} not installed (Debian etcd-server)"
        return super().unavailable()

    def netconf(self, node: Node, dual: bool) -> dict[str, Any]:
        conf = super().netconf(node, dual)
        pools = [{"cidr": self.subnet4, "blockSize": self.block4}]
        if dual:
            pools.append({"cidr": self.subnet6, "blockSize": self.block6})
        conf.update({
            "nodeIP": UPLINK_IP,
            "datastore": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
            "cluster": {"nodeName": "bench-node", "pools": pools, "maxBlocksPerHost": 100000},
            "ipam": {"type": "ferry-cluster", "dataDir": str(node.work / "ipam")}})
        return conf

    def start(self, node: Node, dual: bool) -> None:
        # The node needs an uplink with its node IP (the node record), and etcd.
        if not (node.work / "etcd").exists():
            # A veth pair inside the node (this kernel has no dummy module).
            sh("ip", "-n", node.name, "link", "add", "uplink0", "type", "veth", "peer", "name",
               "uplink0p")
            sh("ip", "-n", node.name, "link", "set", "uplink0p", "up")
            sh("ip", "-n", node.name, "addr", "add", f"{UPLINK_IP}/24", "dev", "uplink0")
            sh("ip", "-n", node.name, "link", "set", "uplink0", "up")
            log = (node.work / "etcd.log").open("wb")
            self.etcd = subprocess.Popen(
                ["ip", "netns", "exec", node.name, ETCD, "--name", "bench",
                 "--data-dir", str(node.work / "etcd"),
                 "--listen-client-urls", "http://127.0.0.1:2379",
                 "--advertise-client-urls", "http://127.0.0.1:2379",
                 "--listen-peer-urls", "http://127.0.0.1:2380",
                 "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                 "--initial-cluster", "bench=http://127.0.0.1:2380"],
                stdout=log, stderr=log)
            log.close()
            deadline = time.monotonic() + 60
            while subprocess.run(["ip", "netns", "exec", node.name, ETCDCTL,
                                  "--endpoints", "http://127.0.0.1:2379", "get", "/x"],
                                 capture_output=True, check=False,
                                 env={**os.environ, "ETCDCTL_API": "3"}).returncode:
                if time.monotonic() > deadline:
                    raise BenchError("etcd did not come up")
                time.sleep(0.2)
        super().start(node, dual)

    def stop(self, node: Node) -> None:
        super().stop(node)
        if self.etcd is not None:
            self.etcd.kill()  # ip netns exec exec's etcd: this is etcd's pid
            self.etcd.wait()
            self.etcd = None

    def claim_ms(self, node: Node, network: str) -> list[float]:
        out = []
        for line in self.log_file(node).read_text().splitlines():
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if e.get("msg", "").startswith("claimed block") and e.get("network") == network:
                    out.append(float(e["ms"]))
        return out


class Bench(add_del.Bench):
    def pod_links(self) -> list[str]:
        return [n for n in super().pod_links() if n not in ("uplink0", "uplink0p")]


CLUSTER = FerryCluster("k", "(k) ferry cluster (etcd)", CNI_BIN / "ferry", "10.204.0.0/16",
                       "fd20:d::/64")
MODES: list[Mode] = [CLUSTER, *(m for m in add_del.MODES if m.key in ("a", "c"))]


def claims(bench: Bench, count: int) -> tuple[list[float], list[float]]:
    """ADD time of `count` pods that each claim a block, and ferryd's claim times."""
    conf = CLUSTER.netconf(bench.node, bench.dual)
    conf["name"] = "bench-claims"
    conf["cluster"]["pools"] = [{"cidr": "10.205.0.0/16", "blockSize": 32}] + (
        [{"cidr": "fd20:e::/64", "blockSize": 128}] if bench.dual else [])
    raw = json.dumps(conf).encode()
    pods = []
    try:
        for _ in range(count):
            pod = bench.pod(CLUSTER)
            pod.conf = raw
            pods.append(pod)
            bench.up(pod)
    finally:
        for pod in pods:
            if pod.add_s:
                bench.down(pod)
    return [p.add_s for p in pods], CLUSTER.claim_ms(bench.node, "bench-claims")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pods", type=int, default=100, help="pods in the parallel phase")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--claims", type=int, default=30, help="pods that each claim a block")
    p.add_argument("--dual", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("cluster.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = {m.label: why for m in MODES if (why := m.unavailable())}
    if missing:
        print(f"cluster.py: cannot run: {missing}", file=sys.stderr)
        return 2
    node = Node()
    started: list[Mode] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        node.create()
        for mode in MODES:
            started.append(mode)
            mode.start(node, args.dual)
        bench = Bench(node, args.dual)
        seq = add_del.sequential(bench, MODES, args.iterations, args.warmup, lambda _: None)
        par = {m.key: add_del.parallel(bench, m, args.pods, args.parallel) for m in MODES}
        claim_add, claim_logged = claims(bench, args.claims)
        for mode in MODES:
            mode.verify(node)
        report(args, seq, par, claim_add, claim_logged)
        return 0
    except BenchError as e:
        return add_del.failed("cluster.py", e, node)
    except KeyboardInterrupt:
        return 130
    finally:
        add_del.stop_all("cluster.py", started, node)


def report(args: argparse.Namespace, seq: dict[str, Samples], par: dict[str, Any],
           claim_add: list[float], claim_logged: list[float]) -> None:
    import platform

    family = "dual stack" if args.dual else "IPv4 only (--dual for dual stack)"
    print(f"\nferry cluster-mode ADD+DEL benchmark, {family}, etcd {ETCD}")
    print(f"kernel {platform.release()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"\nsequential: {args.iterations} pods per mode, interleaved; per pod netns add + "
          "ADD + DEL + netns del (ms)")
    head = f"{'mode':<28} {'median':>8} {'p90':>8}   {'ADD med':>8} {'DEL med':>8}"
    print(head + "\n" + "-" * len(head))
    for m in MODES:
        s = seq[m.key]
        print(f"{m.label:<28} {ms(statistics.median(s.total))} {ms(p90(s.total))}   "
              f"{ms(statistics.median(s.add))} {ms(statistics.median(s.delete))}")
    for a, b in (("k", "a"), ("k", "c"), ("a", "c")):
        sa, sb = seq[a], seq[b]
        print(f"{'ratio (' + a + ')/(' + b + ')':<28} "
              f"{ratio(statistics.median(sa.total), statistics.median(sb.total))} "
              f"{ratio(p90(sa.total), p90(sb.total))}   "
              f"{ratio(statistics.median(sa.add), statistics.median(sb.add))} "
              f"{ratio(statistics.median(sa.delete), statistics.median(sb.delete))}")
    print(f"\nparallel: {args.pods} pods, {args.parallel} at a time (s)")
    head = f"{'mode':<28} {'ADD all':>8} {'DEL all':>8} {'total':>8} {'pods/s':>8}"
    print(head + "\n" + "-" * len(head))
    for m in MODES:
        r = par[m.key]
        print(f"{m.label:<28} {r.add_all:8.2f} {r.del_all:8.2f} {r.total:8.2f} "
              f"{args.pods / r.total:8.1f}")
    for a, b in (("k", "a"), ("k", "c")):
        print(f"{'ratio (' + a + ')/(' + b + ')':<28} {ratio(par[a].add_all, par[b].add_all)} "
              f"{ratio(par[a].del_all, par[b].del_all)} {ratio(par[a].total, par[b].total)}")
    k_add = statistics.median(seq["k"].add)
    print(f"\nblock claims: {len(claim_add)} ADDs each claiming a block: median ADD "
          f"{statistics.median(claim_add) * 1000:.1f} ms vs {k_add * 1000:.1f} ms inside a "
          f"block ({ratio(statistics.median(claim_add), k_add).strip()}); ferryd's claim "
          f"itself: median {statistics.median(claim_logged):.1f} ms, p90 "
          f"{p90(claim_logged):.1f} ms over {len(claim_logged)} claims"
          if claim_logged else "\nblock claims: none logged")


if __name__ == "__main__":
    sys.exit(main())
