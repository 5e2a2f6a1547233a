"""The SNAT programs' cost per packet of an established flow, without the machine's noise:
BPF_PROG_TEST_RUN of ferry_snat_eg / ferry_snat_in on crafted 64-byte frames, each repeated
--repeat times in the kernel (its own clock around the runs, preemption left out), the median
of --rounds such runs.

    .venv/bin/python bench/hotpath.py [--loader elf] [--repeat 1000000] [--rounds 5]

The programs come from a fresh load into a private bpffs root (removed at exit). The first
run of each egress frame allocates its flow; the timed runs then take the established path
(one forward lookup, the rewrite), and the reply frames the reverse one. TCP frames carry ACK
only (no FIN/RST/SYN: no state change). Test runs use private skbs: the unclone that a real
TCP packet (a clone kept for retransmission) costs on its first write is not in these figures.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from packets import TCP, UDP, frame  # noqa: E402

from loader import pins, syscall  # noqa: E402
from loader.layouts import RANDOMIZE, Endpoint, Ip4Key, Ip6Key, NatConfig, ip4, ip6  # noqa: E402
from loader.maps import open_map  # noqa: E402

# A test run repeats the program on one skb, which each run rewrites in place: with a pod
# address of its own, the second egress run would see the node's address (no forward entry:
# the node's own traffic, not NATed) and the second ingress run the pod's (not for the node).
# So the pod's address is the node's, and the port is kept (randomizeSNAT none): the rewrite
# writes the bytes the frame already has, and every run takes the established path in full.
NODE4, NODE6, EXT4, EXT6 = "10.99.0.1", "fd99::1", "172.16.5.9", "fd60::9"
POD4, POD6 = NODE4, NODE6
TCP_FLAGS_AT = {4: 14 + 20 + 13, 6: 14 + 40 + 13}
ACK = 0x10


def ack(data: bytes, family: int) -> bytes:
    at = TCP_FLAGS_AT[family]
    return data[:at] + bytes([ACK]) + data[at + 1:]


def cases() -> list[tuple[str, str, bytes, bytes]]:
    """(name, direction program, egress frame, the reply frame to the node's allocated port);
    randomizeSNAT none keeps the pod's port, so the reply's port is known."""
    out = []
    for fam, pod, ext, node in ((4, POD4, EXT4, NODE4), (6, POD6, EXT6, NODE6)):
        for proto, name in ((UDP, "udp"), (TCP, "tcp")):
            eg = frame(pod, ext, proto, 62000, 5201, payload=b"x" * 6)
            back = frame(ext, node, proto, 5201, 62000, payload=b"x" * 6)
            if proto == TCP:
                eg, back = ack(eg, fam), ack(back, fam)
            out.append((f"{name}{fam}", "", eg, back))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loader", default="elf", choices=["elf", "bcc"])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = f"/sys/fs/bpf/ferry-hotpath-{os.urandom(3).hex()}"
    fds: dict[str, int] = {}
    try:
        res = pins.load(root, "hotpath", loader=args.loader)
        for name in ("ferry_snat_eg", "ferry_snat_in"):
            fds[name] = syscall.obj_get(pins.prog_path(res.dir, name))
        with open_map(res.dir, "ferry_nat_cfg") as cfg:
            cfg.put(ctypes.c_uint32(0), NatConfig(node_ip=ip4(NODE4), port_min=61000,
                                                  port_max=65535, node_ip6=ip6(NODE6),
                                                  randomize=RANDOMIZE["none"]))
        with open_map(res.dir, "ferry_endpoints") as eps:
            eps.put(Ip4Key(ip4(POD4)), Endpoint(ifindex=77, flags=0))
        with open_map(res.dir, "ferry_endpoint6") as eps:
            eps.put(Ip6Key(ip6(POD6)), Endpoint(ifindex=77, flags=0))
        print(f"bench/hotpath.py --loader {res.loader} --repeat {args.repeat} "
              f"--rounds {args.rounds}: ns per run, median [min-max] of the rounds")
        # One throwaway flow per family first: on this kernel the first entry of a fresh
        # IPv6 LRU map costs ~75 ns more per lookup than any later one (cause not found), so
        # the measured flows are typical entries, as a node's flows are.
        for pod, ext in ((POD4, EXT4), (POD6, EXT6)):
            syscall.prog_test_run(fds["ferry_snat_eg"], frame(pod, ext, UDP, 62001, 5201))
        for name, _, eg, back in cases():
            syscall.prog_test_run(fds["ferry_snat_eg"], eg)  # allocates the flow
            for prog, data in (("ferry_snat_eg", eg), ("ferry_snat_in", back)):
                runs = [syscall.prog_test_time(fds[prog], data, args.repeat)
                        for _ in range(args.rounds)]
                print(f"  {name} {prog.removeprefix('ferry_snat_'):>2}: "
                      f"{statistics.median(runs):6.1f} [{min(runs):.1f}-{max(runs):.1f}]")
    finally:
        for fd in fds.values():
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
