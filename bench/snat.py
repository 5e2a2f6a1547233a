"""Egress through the eBPF SNAT vs plain routing with no NAT, side by side in one run.

    .venv/bin/python bench/snat.py [--seconds 5] [--rounds 2]

Two simulated nodes (tests/harness.py), each with one pod wired by the real `ferry` binary
and an 'ext' namespace running iperf3 servers:
  routed  dataplane none, ext routes the pod CIDR back to the node: the pod's own IP
  snat    dataplane ebpf loaded by ferryctl, ext has no route back: every packet is rewritten
          by ferry_snat_eg on the uplink's egress and every reply by ferry_snat_in
Figures: iperf3 TCP throughput (pod -> ext), UDP packets per second (64-byte datagrams,
unlimited rate, what the server received), each over IPv4 and IPv6 (the pods are dual-stack;
ferry_snat_eg/in translate both families), and the loader's load time (fresh bpffs root)
and load-from-pins time (second load, same build). The modes alternate round by round so
machine noise hits both alike; the best round of each is reported.
Everything (namespaces, pins, filters, temp dirs) is removed at exit, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataplane_support import ebpf_node
from harness import Netns, Node, uid

from loader import pins


@contextlib.contextmanager
def routed_node() -> Iterator[tuple[Node, Netns]]:
    with Node.create(ext_routes_pods=True) as node:
        pod = node.add_pod("bench-routed", conf=node.conf(dataplane="none"))
        yield node, pod.ns


@contextlib.contextmanager
def snat_node() -> Iterator[tuple[Node, Netns]]:
    with ebpf_node() as en:
        pod = en.add_pod("bench-snat")
        yield en.node, pod.ns


def iperf_run(node: Node, pod: Netns, seconds: float, udp: bool, ext_ip: str,
              cpus: tuple[str, str] | None = None) -> dict[str, Any]:
    """One iperf3 run (client in the pod, server in ext), its JSON "end" section. `cpus`:
    the client's and the server's CPU (taskset), so that runs do not trade places."""
    client_pin, server_pin = (["taskset", "-c", c] for c in cpus) if cpus else ([], [])
    server = node.ext.popen(*server_pin, "iperf3", "-s", "-1", "-B", ext_ip, "-p", "5201",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        argv = [*client_pin, "iperf3", "-c", ext_ip, "-p", "5201", "-t", f"{seconds:g}", "-J"]
        if udp:
            argv += ["-u", "-b", "0", "-l", "64"]
        out = json.loads(pod.run(*argv))
    finally:
        server.kill()
        server.wait()
    return out["end"]


def iperf_figure(end: dict[str, Any], udp: bool) -> float:
    """TCP: bits/s received; UDP: packets/s received by the server."""
    if udp:
        s = end["sum"]
        return (s["packets"] - s["lost_packets"]) / s["seconds"]
    return float(end["sum_received"]["bits_per_second"])


def iperf(node: Node, pod: Netns, seconds: int, udp: bool, ext_ip: str) -> float:
    return iperf_figure(iperf_run(node, pod, seconds, udp, ext_ip), udp)


def loader_times() -> tuple[float, float]:
    root = f"/sys/fs/bpf/ferry-bench-{uid()}"
    try:
        first = pins.load(root, "bench")
        second = pins.load(root, "bench")
        assert first.compiled and not second.compiled
        return first.seconds, second.seconds
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {"routed": {}, "snat": {}}
    with routed_node() as routed, snat_node() as snat:
        setups = {"routed": routed, "snat": snat}
        for rnd in range(args.rounds):
            order = ["routed", "snat"] if rnd % 2 == 0 else ["snat", "routed"]
            for mode in order:
                node, pod = setups[mode]
                for fam, ext_ip in (("", node.ext_ip4), ("6", node.ext_ip6)):
                    for metric, udp in ((f"tcp{fam}_bps", False), (f"udp{fam}_pps", True)):
                        value = iperf(node, pod, args.seconds, udp, ext_ip)
                        results[mode][metric] = max(results[mode].get(metric, 0.0), value)
    compile_s, reuse_s = loader_times()

    r, s = results["routed"], results["snat"]
    print(f"egress pod -> ext, best of {args.rounds} rounds x {args.seconds}s (iperf3)")
    print(f"{'':22}{'routed (no NAT)':>18}{'eBPF SNAT':>16}{'snat/routed':>14}")
    for fam, label in (("", "IPv4"), ("6", "IPv6")):
        tcp, udp = f"tcp{fam}_bps", f"udp{fam}_pps"
        print(f"{label + ' TCP throughput':22}{r[tcp] / 1e9:>14.2f} Gb/s{s[tcp] / 1e9:>11.2f} "
              f"Gb/s{s[tcp] / r[tcp]:>13.2f}x")
        print(f"{label + ' UDP 64B pkts/s':22}{r[udp] / 1e3:>16.0f} k{s[udp] / 1e3:>14.0f} k"
              f"{s[udp] / r[udp]:>14.2f}x")
    print(f"loader (prebuilt objects, bench/loader.py compares bcc): load+pin "
          f"{compile_s * 1e3:.1f} ms, load from pins {reuse_s * 1e3:.1f} ms "
          f"({compile_s / reuse_s:.0f}x faster)")
    print(json.dumps({"routed": r, "snat": s, "compile_s": compile_s,
                      "load_from_pins_s": reuse_s}, default=_num))


def _num(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


if __name__ == "__main__":
    main()
