"""Routed (no NAT) vs eBPF SNAT vs iptables SNAT, side by side in one run, with native load
generators: new TCP connections per second and their latency (wrk, every request on a new
connection, against nginx), TCP stream throughput and 64-byte UDP packets per second
(iperf3), with 1, 1,000 and 10,000 pods wired.

    .venv/bin/python bench/dataplanes.py [--pods 1,1000,10000] [--seconds 10] [--rounds 2]

Per mode a simulated node (tests/harness.py, `ferryctl load`), one real pod wired by the
`ferry` binary, and an 'ext' namespace running nginx (one worker, `return 200`) and iperf3:
  routed    dataplane none, ext routes the pod CIDR back: the pod's own address, no NAT
  ebpf      ferry_snat_eg/in on the uplink; ext has no route to the pods (every flow SNATed)
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
-t --seconds, TCP one stream, UDP -b 0 -l 64 (what the server received). The modes take
turns round by round, so that machine noise hits them alike; the best round of each figure
is kept. With --bpf-stats the kernel's per-program run time (BPF_ENABLE_STATS, off again at
exit) gives ns per packet of the SNAT programs. Everything is removed at exit, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from dataplane_support import DataplaneNode, dataplane_node  # noqa: E402
from harness import Netns  # noqa: E402
from snat import iperf  # noqa: E402  (bench/ is the script's directory)

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
def bench_node(mode: str, pods: int) -> Iterator[tuple[DataplaneNode, Netns, float]]:
    plane = "none" if mode == "routed" else mode
    with dataplane_node(plane, ext_routes_pods=mode == "routed", snatPortRange=PORTS,
                        natMaxEntries=NAT_MAX) as dp:
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


def measure(setups: dict[str, tuple[DataplaneNode, Netns, float]], seconds: float,
            rounds: int) -> dict[str, dict[str, float]]:
    res: dict[str, dict[str, float]] = {m: {} for m in setups}
    order = list(setups)
    for rnd in range(rounds):
        for mode in order[rnd % len(order):] + order[:rnd % len(order)]:
            dp, pod, _ = setups[mode]
            ip = dp.node.ext_ip4
            before = prog_stats(dp) if mode == "ebpf" else {}
            w = wrk(pod, ip, seconds)
            if w["conn_per_s"] > res[mode].get("conn_per_s", 0.0):
                res[mode].update(w)
            for key, udp in (("tcp_bps", False), ("udp_pps", True)):
                res[mode][key] = max(res[mode].get(key, 0.0),
                                     iperf(dp.node, pod, int(seconds), udp, ip))
            if before:
                after = prog_stats(dp)
                ns = sum(after[p][0] - before[p][0] for p in after)
                cnt = sum(after[p][1] - before[p][1] for p in after)
                res[mode]["bpf_ns_per_pkt"] = ns / cnt if cnt else 0.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", default="1,1000,10000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bpf-stats", action="store_true",
                    help="time the SNAT programs per packet (BPF_ENABLE_STATS)")
    args = ap.parse_args()
    counts = [int(n) for n in args.pods.split(",")]
    started = time.monotonic()
    results: dict[int, dict[str, dict[str, float]]] = {}
    setup_s: dict[int, dict[str, float]] = {}
    with contextlib.ExitStack() as stats:
        if args.bpf_stats:
            stats.enter_context(BpfStats())
        for n in counts:
            with contextlib.ExitStack() as stack:
                # routed has no per-pod state: its node is the same at every N, measured
                # again so that each N's ratios come from the same minutes
                setups = {m: stack.enter_context(bench_node(m, n if m != "routed" else 1))
                          for m in MODES}
                setup_s[n] = {m: s[2] for m, s in setups.items()}
                results[n] = measure(setups, args.seconds, args.rounds)
    print(f"pod -> ext, best of {args.rounds} rounds x {args.seconds:g}s; wrk -c32 "
          f"Connection: close against nginx, iperf3 TCP 1 stream and UDP 64 B")
    head = f"{'':26}{'routed':>11}{'ebpf':>11}{'iptables':>11}{'ebpf/ipt':>10}{'ebpf/routed':>13}"
    print(head)
    rows = (("new conn/s", "conn_per_s", 1, "{:.0f}"), ("latency p50 ms", "p50_ms", 1, "{:.2f}"),
            ("latency p99 ms", "p99_ms", 1, "{:.2f}"), ("TCP Gb/s", "tcp_bps", 1e9, "{:.2f}"),
            ("UDP 64B kpps", "udp_pps", 1e3, "{:.0f}"))
    for n in counts:
        routed, e, i = results[n]["routed"], results[n]["ebpf"], results[n]["iptables"]
        for label, key, scale, fmt in rows:
            cells = [fmt.format(r[key] / scale) for r in (routed, e, i)]
            print(f"{f'{n} pod(s): {label}':26}{cells[0]:>11}{cells[1]:>11}{cells[2]:>11}"
                  f"{e[key] / i[key]:>9.2f}x{e[key] / routed[key]:>12.2f}x")
        if "bpf_ns_per_pkt" in e:
            print(f"{f'{n} pod(s): eBPF ns/packet':26}{'':>11}{e['bpf_ns_per_pkt']:>11.0f}")
        if n > 1:
            print(f"{f'{n} pod(s): simulate, s':26}{'':>11}{setup_s[n]['ebpf']:>11.1f}"
                  f"{setup_s[n]['iptables']:>11.1f}")
    last, first = counts[-1], counts[0]
    ratio = results[last]["ebpf"]["conn_per_s"] / results[last]["iptables"]["conn_per_s"]
    ratio1 = results[first]["ebpf"]["conn_per_s"] / results[first]["iptables"]["conn_per_s"]
    e1, r1 = results[first]["ebpf"], results[first]["routed"]
    print(f"targets: ebpf/iptables conn/s at {last} pods {ratio:.2f} (>= 1.5), at {first} "
          f"pod {ratio1:.2f} (>= 1.0); ebpf/routed TCP {e1['tcp_bps'] / r1['tcp_bps']:.2f}"
          f" (>= 0.97), UDP pps {e1['udp_pps'] / r1['udp_pps']:.2f} (>= 0.95)")
    print(f"total {time.monotonic() - started:.0f}s")
    print(json.dumps({f"{m}/{n}": {k: round(v, 4) for k, v in r.items()}
                      for n, by in results.items() for m, r in by.items()}, default=_num))


def _num(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


if __name__ == "__main__":
    main()
