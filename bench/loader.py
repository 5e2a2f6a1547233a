"""BPF loading: the prebuilt ELF objects vs bcc compiling on the node vs reopening the pins,
and ferryd's resident memory with each loader, side by side in one run.

    sudo FERRY_CNI_PATH=<cni bin dir> .venv/bin/python bench/loader.py [--rounds 5] [--pods 1000]

Load times (one process, fresh bpffs roots, the loaders alternating round by round so machine
noise hits them alike; medians reported):
  elf     pins.load(loader="elf"): parse snat.o/redirect.o, BTF, create the 11 maps, load
          the 4 programs through the verifier, pin, write ferry_meta
  bcc     pins.load(loader="bcc"): the same with bcc compiling the sources first (bcc is
          imported once before the first round: its ~1 s import is not counted)
  reopen  a second pins.load of the same build: hash check, the pins reopened, nothing loaded
  elf core  loader.elf.load_and_pin alone (parse to last program), the figure of the target
ferryd memory: one simulated node per loader (tests/harness.py), ferryd started in it with
`"dataplane": "ebpf"` and that loader; VmRSS once ready (idle), then after `--pods` relayed
ADDs (8 at a time, real pod namespaces and veths), and whether LLVM is mapped in the process.
Everything (namespaces, pins, temp dirs, ferryd) is removed at exit, also on error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Agent, Node, uid

from loader import elf, objects, pins

LOADERS = ("elf", "bcc")


def load_times(rounds: int) -> dict[str, list[float]]:
    import bcc  # noqa: F401  (warm: the import is not what is measured)

    out: dict[str, list[float]] = {"elf": [], "bcc": [], "reopen": [], "elf core": []}
    for rnd in range(rounds):
        for loader in LOADERS if rnd % 2 == 0 else LOADERS[::-1]:
            root = f"/sys/fs/bpf/ferry-bench-{uid()}"
            try:
                first = pins.load(root, "bench", loader=loader)
                again = pins.load(root, "bench", loader=loader)
                assert first.compiled and not again.compiled and first.loader == loader
                out[loader].append(first.seconds)
                if loader == "elf":
                    out["reopen"].append(again.seconds)
                    stage = f"{root}/core"
                    out["elf core"].append(elf.load_and_pin(
                        [pins.OBJECT_DIR / o for o in objects.OBJECTS], stage))
            finally:
                shutil.rmtree(root, ignore_errors=True)
    return out


def rss_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status)
            if k in ("VmRSS", "VmHWM")}


def llvm_mapped(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libLLVM" in maps or "libbcc" in maps or "libclang" in maps


def ferryd_memory(loader: str, pods: int) -> dict[str, Any]:
    with Node.create() as node:
        conf = node.conf(dataplane="ebpf", loader=loader, nodeIP=node.node_ip4,
                         uplink="uplink0", bpffsRoot=f"/sys/fs/bpf/ferry-bench-{uid()}",
                         agentSocket=str(node.tmp / "ferryd.sock"),
                         ipam={"ranges": [[{"subnet": "10.20.0.0/20"}]]},
                         log={"file": str(node.tmp / "ferry.log"), "level": "warning"})
        agent = Agent(node, conf)
        agent.start()
        try:
            assert agent.proc is not None
            pid = agent.proc.pid  # nsenter exec'd ferryd
            time.sleep(1.0)
            idle = rss_kb(pid)
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: node.add_pod(f"mem-{i}", conf=conf), range(pods)))
            add_s = time.monotonic() - started
            loaded = rss_kb(pid)
            llvm = llvm_mapped(pid)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda p: node.cni("DEL", p, conf).ok(), list(node.pods)))
            return {"idle_kb": idle["VmRSS"], "pods_kb": loaded["VmRSS"],
                    "peak_kb": loaded["VmHWM"], "llvm_mapped": llvm, "add_s": add_s}
        finally:
            agent.stop()
            shutil.rmtree(conf["bpffsRoot"], ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pods", type=int, default=1000)
    args = ap.parse_args()
    ok, why = objects.current(pins.OBJECT_DIR)
    if not ok:
        raise SystemExit(f"no current ELF objects: {why}")
    times = load_times(args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"BPF load, median of {args.rounds} rounds (fresh bpffs root each)")
    print(f"  elf (prebuilt objects)   {med['elf'] * 1e3:8.1f} ms   "
          f"(elf core {med['elf core'] * 1e3:.1f} ms; target < 50 ms)")
    print(f"  bcc (compile on node)    {med['bcc'] * 1e3:8.1f} ms   "
          f"{med['bcc'] / med['elf']:6.1f}x the elf load")
    print(f"  reopen pins              {med['reopen'] * 1e3:8.1f} ms   "
          f"{med['elf'] / med['reopen']:6.1f}x faster than the elf load")
    mem = {loader: ferryd_memory(loader, args.pods) for loader in LOADERS}
    print(f"ferryd resident memory (VmRSS), dataplane ebpf, {args.pods} pods by relayed ADD")
    print(f"  {'':8}{'idle':>10}{f'{args.pods} pods':>12}{'peak':>10}  LLVM in process")
    for loader, m in mem.items():
        print(f"  {loader:8}{m['idle_kb'] / 1024:>7.1f} MiB{m['pods_kb'] / 1024:>8.1f} MiB"
              f"{m['peak_kb'] / 1024:>7.1f} MiB  {'yes' if m['llvm_mapped'] else 'no'}")
    e, b = mem["elf"], mem["bcc"]
    print(f"  elf/bcc: idle {e['idle_kb'] / b['idle_kb']:.2f}x, with pods "
          f"{e['pods_kb'] / b['pods_kb']:.2f}x (target: elf under 40 MiB with 1,000 pods)")
    print(json.dumps({"load_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
                      "ferryd": mem}))


if __name__ == "__main__":
    main()
