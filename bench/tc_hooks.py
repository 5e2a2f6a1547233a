"""What a hook costs before its program does any work: a routed node's 64-byte UDP packets per
second (iperf3, as bench/dataplanes.py runs them) with nothing on the uplink's egress, with a
no-op program there as a direct-action cls_bpf filter under clsact, and with it on the tcx hook
(kernel 6.6+); and ferry's eBPF SNAT on fresh nodes (empty NAT maps) with either hook
(tcAttach), all side by side in ABBA rounds. The floor under any tc dataplane's ratio to
routing, and how far above it ferry's programs are.

    .venv/bin/python bench/tc_hooks.py [--rounds 8] [--seconds 4] [--pin 0,1]

The no-op program is two instructions (r0 = TC_ACT_OK; exit) loaded over bpf(2), attached with
ferry's own plugin/dataplane/tc.py. Everything is removed at exit, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from dataplane_support import DataplaneNode  # noqa: E402
from dataplanes import bench_node  # noqa: E402  (bench/: the script's dir)
from harness import Netns  # noqa: E402
from snat import iperf_run  # noqa: E402

from loader import syscall  # noqa: E402

NOOP = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0 (TC_ACT_OK); exit
HOOKS = ("none", "clsact", "tcx")
SNAT = ("snat-clsact", "snat-tcx")  # ferry's eBPF SNAT, tcAttach clsact / tcx

# Runs in the node's netns: attach (or detach) the pinned no-op on uplink0's egress.
ATTACH = r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
from plugin.dataplane import tc
from plugin.rtnl import Rtnl
op, pin, hook = sys.argv[2:5]
with Rtnl() as rt:
    idx = socket.if_nametoindex("uplink0")
    if op == "attach":
        tc.attach(rt, idx, "egress", pin, "ferry_noop", hook)
    else:
        tc.detach(rt, idx, "egress")
        tc.drop_clsact_if_empty(rt, idx)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--pin", default="0,1", help="CPUs of the iperf3 client and server")
    args = ap.parse_args()
    cpus = tuple(args.pin.split(",")) if args.pin else None
    pin_dir = f"/sys/fs/bpf/ferry-bench-noop-{os.getpid()}"
    os.makedirs(pin_dir)
    prog = f"{pin_dir}/ferry_noop"
    fd = syscall.prog_load(syscall.ProgSpec("ferry_noop", NOOP))
    try:
        syscall.obj_pin(fd, prog)
        with contextlib.ExitStack() as stack:
            dp, pod, _ = stack.enter_context(bench_node("routed", 1))
            snat = {m: stack.enter_context(bench_node("ebpf", 1, m.removeprefix("snat-")))
                    for m in SNAT}

            def hook_ctl(op: str, hook: str) -> None:
                subprocess.run(["nsenter", f"--net={dp.node.ns.path}", sys.executable, "-c",
                                ATTACH, str(ROOT), op, prog, hook], check=True)

            def udp(node: DataplaneNode, pod_ns: Netns) -> float:
                end = iperf_run(node.node, pod_ns, args.seconds, True, node.node.ext_ip4,
                                (cpus[0], cpus[1]) if cpus else None)
                return end["sum"]["packets"] / end["sum"]["seconds"]

            order = HOOKS + SNAT
            pps: dict[str, list[float]] = {h: [] for h in order}
            for rnd in range(args.rounds):
                for mode in (order if rnd % 2 == 0 else order[::-1]):
                    if mode in SNAT:
                        pps[mode].append(udp(snat[mode][0], snat[mode][1]))
                        continue
                    if mode != "none":
                        hook_ctl("attach", mode)
                    try:
                        pps[mode].append(udp(dp, pod))
                    finally:
                        if mode != "none":
                            hook_ctl("detach", mode)
            report(args, pps)
    finally:
        os.close(fd)
        subprocess.run(["rm", "-rf", pin_dir], check=False)


def report(args: argparse.Namespace, pps: dict[str, list[float]]) -> None:
    print(f"bench/tc_hooks.py --rounds {args.rounds} --seconds {args.seconds:g} --pin "
          f"'{args.pin}': a routed node's 64-byte UDP (iperf3 -b 0), a no-op program on the "
          "uplink's egress, and ferry's SNAT on fresh nodes")
    for hook in pps:
        print(f"  {hook:>11}: {statistics.median(pps[hook]) / 1e3:6.0f} kpps sent")
    for hook in list(pps)[1:]:
        ratio = [h / b for h, b in zip(pps[hook], pps["none"], strict=True)]
        added = [1e9 / h - 1e9 / b for h, b in zip(pps[hook], pps["none"], strict=True)]
        print(f"  {hook:>11}/none: {statistics.median(ratio):.3f} [{min(ratio):.3f}-"
              f"{max(ratio):.3f}], +{statistics.median(added):.0f} ns per packet "
              f"[{min(added):.0f}-{max(added):.0f}]")


if __name__ == "__main__":
    main()
