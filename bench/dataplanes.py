"""Routed (no NAT) vs eBPF SNAT vs iptables SNAT, side by side in one run, with native load
generators: new TCP connections per second and their latency (wrk, every request on a new
connection, against nginx), TCP stream throughput and 64-byte UDP packets per second
(iperf3), with 1, 1,000 and 10,000 pods wired.

    .venv/bin/python bench/dataplanes.py [--pods 1,1000,10000] [--seconds 5] [--rounds 6]
                                         [--cost-rounds 4] [--pin 0,1] [--hook clsact|tcx]

Per mode a simulated node (tests/harness.py, `ferryctl load`), one real pod wired by the
`ferry` binary, and an 'ext' namespace running nginx (one worker, `return 200`) and iperf3:
  routed    dataplane none, ext routes the pod CIDR back: the pod's own address, no NAT
  ebpf      ferry_snat_eg/in on the uplink (--hook: cls_bpf under clsact, the default, or
            tcx); ext has no route to the pods (every flow SNATed)
  iptables  ferry's nat chains and conntrack; ext has no route to the pods
The other N-1 "pods" are simulated by what each dataplane holds per pod, installed with the
dataplane's own attach code in the node's netns, without veths or namespaces: an Attachment per
fake pod (an address in 10.21.0.0/16 and fd21::/112, the real pod's host veth) given to
Ebpf.attach (one map entry per address and family), or to the iptables code as one
iptables-restore batch of the lines Iptables.attach writes (a chain of exclusions and 3 SNAT
rules plus a jump in FERRY-POSTROUTING, per pod and family). Then the real pod is re-synced,
so that its jump comes last: the chain walk the first packet of each of its flows pays in
iptables, a hash lookup in eBPF. Routed mode has no per-pod dataplane state: its node is the
same at every N, measured again in each N's rounds so that the eBPF/routed ratios compare
figures taken side by side.

wrk runs `-t1 -c32 -H 'Connection: close'` from the pod (nginx closes each connection: its
TIME_WAIT is in ext, none in the pod); snatPortRange is 1024-65535 so that the ~100k
connections of a run never wait for ports, and natMaxEntries twice that. iperf3 runs
-t --seconds, TCP one stream, UDP -b 0 -l 64 (the datagrams delivered to ext's UDP layer per
second, see udp_delivered; "to app": what iperf3's server read, bounded by its CPU), client
and server pinned to the CPUs of --pin (taskset) so that runs do not trade places.
Noise: other work on the machine moves every figure by tens of percent from minute to minute.
So the modes take turns in ABBA order (routed ebpf iptables, iptables ebpf routed, ...), many
short rounds; a figure is the median of its rounds and a ratio the median of the per-round
ratios (each from two figures taken a minute apart at most), printed with its [min-max] spread.
The per-packet cost, which throughput cannot show below that noise, is measured apart in
--cost-rounds extra 64-byte UDP rounds of routed and eBPF: the CPU time per sent packet of the
iperf3 client and server (getrusage of the children; this kernel has no IRQ time accounting,
so the softirq work done in their context, the whole veth path, is charged to them), and the
SNAT programs' own run time per sent packet (BPF_ENABLE_STATS, on only in those rounds): their
ratio is the SNAT's share of the path's CPU per packet. The sender's time per packet (1/pps:
its CPU is saturated, and the whole veth path runs in its context) is the critical path; what
eBPF adds to it beyond the programs' run time is the tc hook's (tc_run, cls_bpf) and the
receiver's extra wake-ups when the sender slows down (`perf record -a` in a cost round).
Everything is removed at exit, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from dataplane_support import DataplaneNode, dataplane_node  # noqa: E402
from harness import Netns  # noqa: E402
from snat import iperf_figure, iperf_run  # noqa: E402  (bench/: the script's dir)

MODES = ("routed", "ebpf", "iptables")
PORTS = "1024-65535"
# Twice the port range: every port of the range gets claimed in a run, and a closed flow's
# forward entry stays until its port is taken over; a map at its size would evict (LRU) on
# every new flow.
NAT_MAX = 131072
HTTP_PORT = 8088

NGINX_CONF = """
daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
    fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
    server {{ listen {ip}:{port} reuseport backlog=4096; location / {{ return 200 "ok"; }} }}
}}
"""

# Runs inside the node's netns: installs `count` simulated pods with the dataplane's own code.
SIMULATE = r"""
import ipaddress, json, sys
sys.path.insert(0, sys.argv[1])
from plugin.conffile import load_file
from plugin.dataplane.mode import choose
from plugin.state import Attachment
conf = load_file(sys.argv[2])[0]
count, veth = int(sys.argv[3]), sys.argv[4]
atts = [Attachment(container_id=f"sim{i:05d}", ifname="eth0", netns="", host_veth=veth,
                   ips=[f"{ipaddress.IPv4Address('10.21.0.0') + i}/16",
                        f"{ipaddress.IPv6Address('fd21::') + i}/112"], complete=True)
        for i in range(1, count + 1)]
dp = choose(conf)
if dp.name == "iptables":
    from plugin.dataplane import iptables as it
    from plugin.dataplane.node import discover
    addrs, backend = discover(conf), it.detect_backend()
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


@contextlib.contextmanager
def servers(ext: Netns, ip: str) -> Iterator[None]:
    """nginx in ext for the whole run (iperf3 servers are started per test by snat.iperf)."""
    tmp = tempfile.mkdtemp(prefix="ferry-bench-nginx-")
    conf = Path(tmp, "nginx.conf")
    conf.write_text(NGINX_CONF.format(tmp=tmp, ip=ip, port=HTTP_PORT))
    procs = [ext.popen("nginx", "-c", str(conf), "-e", f"{tmp}/error.log",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        subprocess.run(["rm", "-rf", tmp], check=False)


def wrk(pod: Netns, ip: str, seconds: float) -> dict[str, float]:
    out = pod.run("wrk", "-t1", "-c32", f"-d{seconds:g}s", "--latency", "-H",
                  "Connection: close", f"http://{ip}:{HTTP_PORT}/")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)

    def pct(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\b", out,  # type: ignore[union-attr]
                                re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {"conn_per_s": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0}


def simulate(dp: DataplaneNode, veth: str, count: int) -> float:
    t0 = time.monotonic()
    # nsenter, not `ip netns exec`: that remounts /sys, hiding the pins on bpffs.
    subprocess.run(["nsenter", f"--net={dp.node.ns.path}", sys.executable, "-c", SIMULATE,
                    str(ROOT), str(dp.conf_path), str(count), veth],
                   check=True, capture_output=True)
    dp.load()  # re-sync the real pod: its jump now comes after the others'
    return time.monotonic() - t0


@contextlib.contextmanager
def bench_node(mode: str, pods: int, hook: str = "clsact"
               ) -> Iterator[tuple[DataplaneNode, Netns, float]]:
    plane = "none" if mode == "routed" else mode
    with dataplane_node(plane, ext_routes_pods=mode == "routed", snatPortRange=PORTS,
                        natMaxEntries=NAT_MAX, tcAttach=hook) as dp:
        pod = dp.add_pod(f"bench-{mode}")
        veth = pod.result["interfaces"][0]["name"]  # type: ignore[index]
        setup = simulate(dp, veth, pods - 1) if pods > 1 else 0.0
        with servers(dp.node.ext, dp.node.ext_ip4):
            yield dp, pod.ns, setup


class BpfStats:
    """BPF_ENABLE_STATS (run time per program) for as long as the returned fd stays open."""

    def __enter__(self) -> BpfStats:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        attr = ctypes.create_string_buffer(8)  # union bpf_attr { __u32 type; } = RUN_TIME
        self.fd = libc.syscall(321, 32, attr, 8)  # __NR_bpf, BPF_ENABLE_STATS
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        os.close(self.fd)


def prog_stats(dp: DataplaneNode) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of the SNAT programs of this node's pins."""
    out = {}
    for name in ("ferry_snat_eg", "ferry_snat_in"):
        info = json.loads(subprocess.run(
            ["bpftool", "-j", "prog", "show", "pinned", f"{dp.pin_dir}/progs/{name}"],
            capture_output=True, text=True, check=True).stdout)
        out[name] = (int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0)))
    return out


def cpu_seconds() -> float:
    """CPU time of this process's waited-for children (the iperf3 client and server, and the
    softirq work done in their context: this kernel charges it to the running task)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def one_round(mode: str, dp: DataplaneNode, pod: Netns, seconds: float,
              cpus: tuple[str, str] | None) -> dict[str, float]:
    ip = dp.node.ext_ip4
    out: dict[str, float] = dict(wrk(pod, ip, seconds))
    out["tcp_bps"] = iperf_figure(iperf_run(dp.node, pod, seconds, False, ip, cpus), False)
    cpu0, udp0 = cpu_seconds(), udp_delivered(dp.node.ext)
    end = iperf_run(dp.node, pod, seconds, True, ip, cpus)
    out["udp_pps"] = (udp_delivered(dp.node.ext) - udp0) / end["sum"]["seconds"]
    out["udp_app_pps"] = iperf_figure(end, True)
    out["udp_cpu_ns_per_pkt"] = (cpu_seconds() - cpu0) * 1e9 / max(end["sum"]["packets"], 1)
    return out


def udp_delivered(ns: Netns) -> int:
    """Datagrams that reached the UDP layer of `ns` (its /proc/net/snmp InDatagrams plus
    InErrors): what the dataplane delivered, whether the server's socket had room or not. With
    -b 0 the 64-byte sender outruns the one iperf3 server (its receive buffer overflows), so
    the datagrams iperf3 counts measure the server's share of the CPUs, not the path."""
    lines = [line.split()[1:] for line in ns.run("cat", "/proc/net/snmp").splitlines()
             if line.startswith("Udp:")]
    row = dict(zip(lines[0], (int(v) for v in lines[1]), strict=True))
    return row["InDatagrams"] + row["InErrors"]


def cost_round(mode: str, dp: DataplaneNode, pod: Netns, seconds: float,
               cpus: tuple[str, str] | None) -> dict[str, float]:
    """The per-packet cost of a 64-byte UDP run: CPU per sent packet (client, server and
    the softirqs in their context) and, for eBPF, the programs' own run time per sent packet
    (BPF_ENABLE_STATS, on only for these rounds: it costs two clock reads per run)."""
    ip = dp.node.ext_ip4
    with contextlib.ExitStack() as stack:
        if mode == "ebpf":
            stack.enter_context(BpfStats())
        before = prog_stats(dp) if mode == "ebpf" else {}
        cpu0 = cpu_seconds()
        end = iperf_run(dp.node, pod, seconds, True, ip, cpus)
        cpu = cpu_seconds() - cpu0
        sent = max(end["sum"]["packets"], 1)
        # The client's CPU is saturated (-b 0, pinned) and the whole veth path runs in its
        # context: 1/pps is the critical path's time per packet. The server's CPU, which the
        # rusage figure adds, is a receiver's, on another machine in a real network.
        out = {"udp_cpu_ns_per_pkt": cpu * 1e9 / sent,
               "sender_ns_per_pkt": end["sum"]["seconds"] * 1e9 / sent}
        if before:
            after = prog_stats(dp)
            ns = sum(after[p][0] - before[p][0] for p in after)
            out["bpf_ns_per_pkt"] = ns / sent
            out["bpf_ns_per_run"] = ns / max(sum(after[p][1] - before[p][1] for p in after), 1)
    return out


Round = Callable[[str, DataplaneNode, Netns], dict[str, float]]


def interleaved(setups: dict[str, tuple[DataplaneNode, Netns, float]], rounds: int,
                run: Round) -> dict[str, list[dict[str, float]]]:
    """`run` for every mode, `rounds` times, in ABBA order (A B C, C B A, A B C, ...): a
    drift of the machine's load over the run hits every mode alike on average."""
    res: dict[str, list[dict[str, float]]] = {m: [] for m in setups}
    order = list(setups)
    for rnd in range(rounds):
        for mode in (order if rnd % 2 == 0 else order[::-1]):
            dp, pod, _ = setups[mode]
            res[mode].append(run(mode, dp, pod))
    return res


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratios(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> list[float]:
    """Per-round ratios a/b of `key`: each from two figures taken a minute apart at most."""
    return [x[key] / y[key] for x, y in zip(a, b, strict=True) if y.get(key)]


def spread(values: list[float]) -> str:
    """median [min-max] of per-round ratios."""
    if not values:
        return "-"
    return f"{median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


ROWS = (("new conn/s", "conn_per_s", 1, "{:.0f}"), ("latency p50 ms", "p50_ms", 1, "{:.2f}"),
        ("latency p99 ms", "p99_ms", 1, "{:.2f}"), ("TCP Gb/s", "tcp_bps", 1e9, "{:.2f}"),
        ("UDP 64B kpps", "udp_pps", 1e3, "{:.0f}"),
        ("UDP 64B kpps to app", "udp_app_pps", 1e3, "{:.0f}"),
        ("UDP CPU ns/pkt", "udp_cpu_ns_per_pkt", 1, "{:.0f}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", default="1,1000,10000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--cost-rounds", type=int, default=4,
                    help="extra 64-byte UDP rounds (routed, eBPF) at the first pod count for "
                         "the per-packet cost, BPF_ENABLE_STATS on in eBPF's; 0: none")
    ap.add_argument("--hook", default="clsact", choices=["clsact", "tcx"],
                    help="where the eBPF mode's SNAT programs hang on the uplink (tcAttach)")
    ap.add_argument("--pin", default="0,1", help="CPUs of the iperf3 client and server "
                    "(taskset), '' not to pin")
    args = ap.parse_args()
    counts = [int(n) for n in args.pods.split(",")]
    pin = tuple(args.pin.split(",")) if args.pin else ()
    if pin and len(pin) != 2:
        ap.error("--pin takes two CPUs: client,server")
    cpus = (pin[0], pin[1]) if pin else None
    started = time.monotonic()
    results: dict[int, dict[str, list[dict[str, float]]]] = {}
    costs: dict[str, list[dict[str, float]]] = {}
    setup_s: dict[int, dict[str, float]] = {}
    for n in counts:
        with contextlib.ExitStack() as stack:
            # routed has no per-pod state: its node is the same at every N, measured again
            # so that each N's ratios come from the same minutes
            setups = {m: stack.enter_context(bench_node(m, n if m != "routed" else 1,
                                                        args.hook))
                      for m in MODES}
            setup_s[n] = {m: s[2] for m, s in setups.items()}
            results[n] = interleaved(setups, args.rounds, lambda m, dp, pod: one_round(
                m, dp, pod, args.seconds, cpus))
            if n == counts[0] and args.cost_rounds:
                costs = interleaved({m: setups[m] for m in ("routed", "ebpf")},
                                    args.cost_rounds, lambda m, dp, pod: cost_round(
                                        m, dp, pod, args.seconds, cpus))
    report(args, counts, results, costs, setup_s)
    print(f"total {time.monotonic() - started:.0f}s")
    print(json.dumps({"results": {f"{m}/{n}": rs for n, by in results.items()
                                  for m, rs in by.items()}, "costs": costs}, default=_num))


def report(args: argparse.Namespace, counts: list[int],
           results: dict[int, dict[str, list[dict[str, float]]]],
           costs: dict[str, list[dict[str, float]]],
           setup_s: dict[int, dict[str, float]]) -> None:
    print(f"bench/dataplanes.py --pods {args.pods} --seconds {args.seconds:g} --rounds "
          f"{args.rounds} --cost-rounds {args.cost_rounds} --pin '{args.pin}' --hook "
          f"{args.hook}")
    print(f"pod -> ext; modes interleaved ABBA, {args.rounds} rounds x {args.seconds:g}s; "
          "figures: median of the rounds; ratios: median [min-max] of per-round ratios;\n"
          "wrk -c32 Connection: close vs nginx; iperf3 TCP 1 stream, UDP 64 B -b 0"
          f"{f'; iperf3 client/server on CPU {args.pin}' if args.pin else ''}")
    print(f"{'':26}{'routed':>9}{'ebpf':>9}{'iptables':>9}  {'ebpf/iptables':<20}ebpf/routed")
    for n in counts:
        by = results[n]
        for label, key, scale, fmt in ROWS:
            cells = [fmt.format(median([r[key] for r in by[m]]) / scale) for m in MODES]
            print(f"{f'{n} pod(s): {label}':26}{cells[0]:>9}{cells[1]:>9}{cells[2]:>9}  "
                  f"{spread(ratios(by['ebpf'], by['iptables'], key)):<20}"
                  f"{spread(ratios(by['ebpf'], by['routed'], key))}")
        if n > 1:
            print(f"{f'{n} pod(s): simulate, s':26}{'':>9}{setup_s[n]['ebpf']:>9.1f}"
                  f"{setup_s[n]['iptables']:>9.1f}")
    first, last = counts[0], counts[-1]
    r1, rl = results[first], results[last]
    print(f"targets: ebpf/iptables conn/s at {last} pods "
          f"{spread(ratios(rl['ebpf'], rl['iptables'], 'conn_per_s'))} (>= 1.5), at {first} "
          f"pod {spread(ratios(r1['ebpf'], r1['iptables'], 'conn_per_s'))} (>= 1.0);\n"
          f"         ebpf/routed at {first} pod: TCP "
          f"{spread(ratios(r1['ebpf'], r1['routed'], 'tcp_bps'))} (>= 0.97), UDP pps "
          f"{spread(ratios(r1['ebpf'], r1['routed'], 'udp_pps'))} (>= 0.95)")
    if costs:
        routed = [c["udp_cpu_ns_per_pkt"] for c in costs["routed"]]
        bpf = [c["bpf_ns_per_pkt"] for c in costs["ebpf"]]
        share = [b / r for b, r in zip(bpf, routed, strict=True)]
        sender = {m: [c["sender_ns_per_pkt"] for c in costs[m]] for m in ("routed", "ebpf")}
        gap = [e - r for e, r in zip(sender["ebpf"], sender["routed"], strict=True)]
        print(f"per-packet cost, 64-byte UDP, {first} pod(s), {args.cost_rounds} rounds: "
              f"routed path CPU {median(routed):.0f} ns/pkt [{min(routed):.0f}-"
              f"{max(routed):.0f}];\n  eBPF SNAT programs {median(bpf):.1f} ns/pkt "
              f"[{min(bpf):.1f}-{max(bpf):.1f}] = {median(share) * 100:.1f}% of the routed "
              f"path's CPU [{min(share) * 100:.1f}-{max(share) * 100:.1f}%]; eBPF path CPU "
              f"{median([c['udp_cpu_ns_per_pkt'] for c in costs['ebpf']]):.0f} ns/pkt;\n"
              f"  sender's time per packet (1/pps, the critical path): routed "
              f"{median(sender['routed']):.0f}, eBPF {median(sender['ebpf']):.0f} ns; eBPF "
              f"adds {median(gap):.0f} ns [{min(gap):.0f}-{max(gap):.0f}], of which the "
              f"programs' run time (with BPF_ENABLE_STATS' two clock reads) is "
              f"{median(bpf):.0f}")

def _num(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


if __name__ == "__main__":
    main()
