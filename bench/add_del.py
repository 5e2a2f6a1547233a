"""ADD+DEL wall time per pod: ferry against the reference Go plugins, side by side in one run.

    .venv/bin/python bench/add_del.py [--iterations 30] [--pods 50] [--dual]
                                           [--memory-pods 1000]

Modes (lettered as in the issue that asked for this benchmark; runs before 2026-11-23 had
(a) and (b) the other way round):
  (a) ferry + ferryd    the ferry binary relaying to ferryd, which runs in the node netns for
                        the whole run; ferryd's log must show that it served the requests
  (b) ferry standalone  the same binary, built-in host-local IPAM, no node agent listening
  (c) reference         /usr/lib/cni/ptp with /usr/lib/cni/host-local IPAM

All are exec'd exactly as a container runtime does it: from the node's network namespace
(`nsenter --net=<node>`), CNI_* in the environment, the network config on stdin, cniVersion
1.0.0 (the newest version the reference plugins know). ferry runs with `"dataplane": "none"`
(routes only), the same work as ptp without ipMasq.

Sequential phase: one sample = `ip netns add <pod>`, ADD, DEL, `ip netns del <pod>`. The modes
alternate sample by sample (ABBA order), so machine noise hits them alike; a few warm-up
samples per mode are not counted.
Parallel phase: N pods, `--parallel` (8) at a time: create netns + ADD for all of them, then
DEL + delete netns for all of them; wall time of each half and in total. The DEL half ends
only when the node holds no pod link any more: ferryd answers DEL before the kernel has
removed the veth pair (its reaper deletes the pairs in batches), and that work is counted.
"CPU ms/pod" is the CPU time of everything the phase made work (the plugin execs with their
nsenter, `ip netns`, and ferryd) per pod: with 8 execs in flight on a small machine the
phase is CPU-bound, and this says where its wall time comes from.
The sequential phase reports the same lag ("drain") after one more pod per mode.

IPv4 only by default: with an IPv6 range the reference ptp waits for duplicate address
detection on the pod's address (about 1.5 s per ADD), which would swamp what is measured here.
`--dual` measures dual stack anyway (ferry skips DAD: IFA_F_NODAD).

`--ferry-src DIR` runs ferry (binary and ferryd) from another source tree, e.g. a
`git archive` snapshot, through a launcher like the installed one (python -IS).

Everything lives in namespaces with a random suffix and a temporary directory; all of it is
removed at exit, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CNI_VERSION = "1.0.0"
# FERRY_CNI_PATH as in the tests (where scripts/setup.sh put the binaries: FERRY_CNI_BIN).
CNI_BIN = Path(os.environ.get("FERRY_CNI_PATH", "/opt/cni/bin"))
REFERENCE_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
TIMEOUT_S = 60


class BenchError(RuntimeError):
    pass


# --- the simulated node -----------------------------------------------------------------------


def sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


class Node:
    """A node network namespace plus a work directory; tracks every pod netns it made."""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.name = f"fbench-{self.suffix}-node"
        self.work = Path(tempfile.mkdtemp(prefix=f"ferry-bench-{self.suffix}-"))
        self.pods: set[str] = set()
        self._created = False

    def create(self) -> None:
        sh("ip", "netns", "add", self.name)
        self._created = True
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    def pod_netns(self, seq: int) -> str:
        return f"fbench-{self.suffix}-p{seq}"

    def add_pod(self, name: str) -> None:
        self.pods.add(name)  # tracked first: a half-made netns is still cleaned up
        sh("ip", "netns", "add", name)

    def del_pod(self, name: str) -> None:
        sh("ip", "netns", "del", name)
        self.pods.discard(name)

    def links(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.name, "-o", "link", "show"], capture_output=True,
                             text=True, timeout=TIMEOUT_S, check=True).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def cleanup(self) -> None:
        for name in sorted(self.pods) + ([self.name] if self._created else []):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self.pods.clear()
        shutil.rmtree(self.work, ignore_errors=True)


# --- the modes ----------------------------------------------------------------------------------


@dataclass
class Mode:
    key: str
    label: str
    binary: Path
    subnet4: str
    subnet6: str

    @property
    def network(self) -> str:
        return f"bench-{self.key}"

    def unavailable(self) -> str | None:
        """Why this mode cannot run here, or None."""
        if not os.access(self.binary, os.X_OK):
            return f"{self.binary} is not installed"
        return None

    def start(self, node: Node, dual: bool) -> None:
        """Bring up what the mode needs on the node before the first sample."""

    def stop(self, node: Node) -> None:
        """Undo start(); called even when the run failed."""

    def verify(self, node: Node) -> None:
        """After the phases: raise BenchError if the samples did not measure this mode."""

    def own_cpu(self) -> float:
        """CPU seconds of the mode's long-running processes (not the benchmark's children)."""
        return 0.0

    def netconf(self, node: Node, dual: bool) -> dict[str, Any]:
        raise NotImplementedError

    def ipam(self, node: Node, dual: bool) -> dict[str, Any]:
        ranges = [[{"subnet": self.subnet4}]]
        if dual:
            ranges.append([{"subnet": self.subnet6}])
        return {"type": "host-local", "dataDir": str(node.work / "ipam"), "ranges": ranges}

    def leftovers(self, node: Node) -> list[str]:
        """Files a complete DEL removes: IP reservations in the IPAM dataDir."""
        d = node.work / "ipam" / self.network
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir()
                      if p.name != "lock" and not p.name.startswith("last_reserved_ip."))


def write_launcher(path: Path, src: str) -> Path:
    """The launcher scripts/setup.sh installs as /opt/cni/bin/ferry, for another source tree."""
    path.write_text(f"#!{sys.executable} -IS\nimport sys\nsys.path.insert(0, {src!r})\n"
                    "from plugin.cli import main\nmain()\n")
    path.chmod(0o755)
    return path


@dataclass
class FerryStandalone(Mode):
    ferry_src: str | None = None

    def agent_socket(self, node: Node) -> Path:
        # Nobody listens here: the binary tries the agent, finds none and runs the request
        # itself, which is what standalone costs on a node without ferryd. A private path also
        # keeps the run away from any ferryd that listens at the default socket.
        return node.work / f"no-agent-{self.key}.sock"

    def log_file(self, node: Node) -> Path:
        return node.work / f"ferry-{self.key}.log"

    def start(self, node: Node, dual: bool) -> None:
        if self.ferry_src:
            self.binary = write_launcher(node.work / "ferry-launcher", self.ferry_src)

    def netconf(self, node: Node, dual: bool) -> dict[str, Any]:
        return {"cniVersion": CNI_VERSION, "name": self.network, "type": "ferry", "mtu": 1500,
                "dataplane": "none", "agentSocket": str(self.agent_socket(node)),
                "stateDir": str(node.work / "state"),
                "log": {"file": str(self.log_file(node))},
                "ipam": self.ipam(node, dual)}

    def leftovers(self, node: Node) -> list[str]:
        records = node.work / "state" / self.network
        return super().leftovers(node) + sorted(p.name for p in records.glob("*.json"))


@dataclass
class FerryWithAgent(FerryStandalone):
    """ferryd inside the node netns for the whole run: relay and gRPC sockets, state, IPAM
    and log under node.work, metrics off. The binary relays every request to it."""

    proc: subprocess.Popen[bytes] | None = None
    agent_pid: int = 0

    @staticmethod
    def ferryd() -> Path:
        return Path(sys.executable).parent / "ferryd"

    def unavailable(self) -> str | None:
        if not os.access(self.ferryd(), os.X_OK):
            return f"{self.ferryd()} not found: the node agent is not installed"
        return super().unavailable()

    def agent_socket(self, node: Node) -> Path:
        return node.work / f"ferryd-{self.key}.sock"  # per mode: bench/cluster.py runs two

    def start(self, node: Node, dual: bool) -> None:
        super().start(node, dual)
        plugin = self.netconf(node, dual)
        conflist = node.work / f"ferryd-{self.key}.conflist"
        conflist.write_text(json.dumps({
            "cniVersion": CNI_VERSION, "name": self.network,
            "plugins": [{k: v for k, v in plugin.items() if k not in ("cniVersion", "name")}]}))
        env = {**os.environ, **({"PYTHONPATH": self.ferry_src} if self.ferry_src else {})}
        out, err = node.work / f"ferryd-{self.key}.out", node.work / f"ferryd-{self.key}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={NETNS_DIR / node.name}", str(self.ferryd()),
                 "--config", str(conflist), "--socket", str(self.agent_socket(node)),
                 "--grpc-socket", str(node.work / f"ferryd-{self.key}-grpc.sock"),
                 "--metrics", "off",
                 "--workers", "8"], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                env=env)
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for line in out.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    ready = json.loads(line)
                    if ready.get("ready"):
                        self.agent_pid = int(ready["pid"])
                        return
            if self.proc.poll() is not None:
                raise BenchError(f"ferryd exited with {self.proc.returncode}: "
                                 f"{err.read_text()[-600:]}")
            time.sleep(0.05)
        raise BenchError(f"ferryd not ready after {TIMEOUT_S} s: {err.read_text()[-600:]}")

    def own_cpu(self) -> float:
        fields = Path(f"/proc/{self.agent_pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime+stime

    def stop(self, node: Node) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # nsenter exec'd ferryd: this is ferryd's pid
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def verify(self, node: Node) -> None:
        """Every ADD and DEL of this mode was served by ferryd, none by a standalone binary."""
        served: dict[int, int] = {}
        log = self.log_file(node)
        for line in log.read_text().splitlines() if log.exists() else []:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("msg") in ("ADD ok", "DEL ok"):
                    served[entry.get("pid", 0)] = served.get(entry.get("pid", 0), 0) + 1
        others = sum(n for pid, n in served.items() if pid != self.agent_pid)
        if not served.get(self.agent_pid) or others:
            raise BenchError(f"{self.label}: ferryd (pid {self.agent_pid}) served "
                             f"{served.get(self.agent_pid, 0)} requests, other processes "
                             f"{others}: not a measurement of the relay")


@dataclass
class Reference(Mode):
    def netconf(self, node: Node, dual: bool) -> dict[str, Any]:
        return {"cniVersion": CNI_VERSION, "name": self.network, "type": "ptp", "mtu": 1500,
                "ipam": self.ipam(node, dual)}


MODES: list[Mode] = [
    FerryWithAgent("a", "(a) ferry + ferryd", CNI_BIN / "ferry", "10.201.0.0/16",
                   "fd20:a::/112"),
    FerryStandalone("b", "(b) ferry standalone", CNI_BIN / "ferry", "10.202.0.0/16",
                    "fd20:b::/112"),
    Reference("c", "(c) ref ptp+host-local", REFERENCE_DIR / "ptp", "10.203.0.0/16",
              "fd20:c::/112"),
]


# --- one pod ------------------------------------------------------------------------------------


@dataclass
class Pod:
    mode: Mode
    seq: int
    netns: str
    conf: bytes
    add_s: float = 0.0
    del_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Bench:
    node: Node
    dual: bool
    seq: int = 0
    confs: dict[str, bytes] = field(default_factory=dict)

    def pod(self, mode: Mode) -> Pod:
        self.seq += 1
        if mode.key not in self.confs:
            self.confs[mode.key] = json.dumps(mode.netconf(self.node, self.dual)).encode()
        return Pod(mode, self.seq, self.node.pod_netns(self.seq), self.confs[mode.key])

    def cni(self, pod: Pod, command: str) -> dict[str, Any] | None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": f"bench-{self.node.suffix}-{pod.seq}",
               "CNI_NETNS": str(NETNS_DIR / pod.netns), "CNI_IFNAME": "eth0",
               "CNI_PATH": f"{CNI_BIN}:{REFERENCE_DIR}",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{pod.seq}"}
        proc = subprocess.run(["nsenter", f"--net={NETNS_DIR / self.node.name}",
                               str(pod.mode.binary)], input=pod.conf, env=env,
                              capture_output=True, timeout=TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise BenchError(f"{pod.mode.label}: {command} {pod.netns}: exit {proc.returncode}: "
                             f"{proc.stdout.decode(errors='replace').strip()} "
                             f"{proc.stderr.decode(errors='replace').strip()[-400:]}")
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def up(self, pod: Pod) -> Pod:
        t0 = time.perf_counter()
        self.node.add_pod(pod.netns)
        t1 = time.perf_counter()
        result = self.cni(pod, "ADD")
        t2 = time.perf_counter()
        pod.add_s, pod.total_s = t2 - t1, t2 - t0
        want = 2 if self.dual else 1
        if not result or len(result.get("ips", [])) != want:
            raise BenchError(f"{pod.mode.label}: ADD gave {result!r}, expected {want} IPs")
        return pod

    def down(self, pod: Pod) -> Pod:
        t0 = time.perf_counter()
        self.cni(pod, "DEL")
        t1 = time.perf_counter()
        self.node.del_pod(pod.netns)
        t2 = time.perf_counter()
        pod.del_s = t1 - t0
        pod.total_s += t2 - t0
        return pod

    def lifecycle(self, mode: Mode) -> Pod:
        return self.down(self.up(self.pod(mode)))

    def pod_links(self) -> list[str]:
        return [name for name in self.node.links() if name != "lo"]

    def drain(self) -> float:
        """Wait until the node holds no pod link; the seconds that took. ferryd answers DEL
        before the kernel has removed the veth pair (its reaper does that, in batches), and
        the kernel tears a deleted netns down in the background: both are counted here."""
        t0 = time.perf_counter()
        while self.pod_links() and time.perf_counter() - t0 < TIMEOUT_S:
            time.sleep(0.001)
        return time.perf_counter() - t0

    def assert_clean(self, mode: Mode) -> None:
        self.drain()  # what ferryd's reaper still has to delete is not left behind
        links = self.pod_links()
        files = mode.leftovers(self.node)
        if links or files or self.node.pods:
            raise BenchError(f"{mode.label} left state behind: links={links} files={files} "
                             f"netns={sorted(self.node.pods)}")


# --- phases -------------------------------------------------------------------------------------


@dataclass
class Samples:
    total: list[float] = field(default_factory=list)
    add: list[float] = field(default_factory=list)
    delete: list[float] = field(default_factory=list)
    drain: float = 0.0

    def record(self, pod: Pod) -> None:
        self.total.append(pod.total_s)
        self.add.append(pod.add_s)
        self.delete.append(pod.del_s)


@dataclass
class ParallelRun:
    add_all: float
    del_all: float
    cpu: float  # CPU seconds of everything the run made work: execs, ip, and ferryd
    own_cpu: float  # of which the mode's long-running process (ferryd)

    @property
    def total(self) -> float:
        return self.add_all + self.del_all


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def agent_memory(bench: Bench, mode: FerryWithAgent, pods: int, workers: int) -> tuple[int, int]:
    """ferryd's resident memory (kB) idle, then with `pods` pods attached at once."""
    idle = rss_kb(mode.agent_pid)
    batch = [bench.pod(mode) for _ in range(pods)]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        list(pool.map(bench.up, batch))
        loaded = rss_kb(mode.agent_pid)
        list(pool.map(bench.down, batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    bench.assert_clean(mode)
    return idle, loaded


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def sequential(bench: Bench, modes: list[Mode], iterations: int, warmup: int,
               progress: Callable[[str], None]) -> dict[str, Samples]:
    for mode in modes:
        for _ in range(warmup):
            bench.lifecycle(mode)
    samples = {m.key: Samples() for m in modes}
    for i in range(iterations):
        for mode in modes if i % 2 == 0 else list(reversed(modes)):
            samples[mode.key].record(bench.lifecycle(mode))
        progress(f"sequential {i + 1}/{iterations}")
    for mode in modes:
        # How long the kernel still works after a mode's last sample (async teardown).
        bench.lifecycle(mode)
        samples[mode.key].drain = bench.drain()
        bench.assert_clean(mode)
    return samples


def children_cpu() -> float:
    """CPU seconds of the processes this benchmark has waited for (plugins, ip, nsenter)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parallel(bench: Bench, mode: Mode, pods: int, workers: int) -> ParallelRun:
    batch = [bench.pod(mode) for _ in range(pods)]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        own0, cpu0 = mode.own_cpu(), children_cpu()
        t0 = time.perf_counter()
        list(pool.map(bench.up, batch))
        t1 = time.perf_counter()
        list(pool.map(bench.down, batch))
        bench.drain()
        t2 = time.perf_counter()
        own = mode.own_cpu() - own0
        cpu = children_cpu() - cpu0 + own
    finally:
        # On a failure or Ctrl-C, do not start the queued pods; wait for the running ones.
        pool.shutdown(wait=True, cancel_futures=True)
    bench.assert_clean(mode)
    return ParallelRun(t1 - t0, t2 - t1, cpu, own)


# --- report -------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def ratio(a: float, c: float) -> str:
    return f"{a / c:7.1f}x" if c > 0 else "     n/a"


LABEL_W = 26


def table(columns: str, skipped: dict[str, str], results: dict[str, Any],
          row: Callable[[str], str], ratio_row: Callable[[str], str]) -> None:
    """One phase's table: a row per mode (or why it did not run), then (a)/(c) and (b)/(c)."""
    head = f"{'mode':<{LABEL_W}} {columns}"
    print(head)
    print("-" * len(head))
    for mode in MODES:
        if mode.key in skipped:
            print(f"{mode.label:<{LABEL_W}} not run: {skipped[mode.key]}")
        else:
            print(f"{mode.label:<{LABEL_W}} {row(mode.key)}")
    for key in ("a", "b"):
        if key in results and "c" in results:
            print(f"{'ratio (' + key + ')/(c)':<{LABEL_W}} {ratio_row(key)}")


def report(args: argparse.Namespace, modes: list[Mode], skipped: dict[str, str],
           seq: dict[str, Samples], par: dict[str, ParallelRun]) -> None:
    family = "dual stack (IPv4 + IPv6)" if args.dual else "IPv4 only (--dual for dual stack)"
    print()
    print(f"ferry ADD+DEL benchmark  cniVersion {CNI_VERSION}, {family}")
    print(f"kernel {platform.release()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"ferry code: {args.ferry_src or 'as installed behind ' + str(CNI_BIN / 'ferry')}; "
          "ferry dataplane: none (routes only, like ptp without ipMasq)")
    print()
    print(f"sequential: {args.iterations} pods per mode, interleaved, {args.warmup} warm-up "
          "each; per pod: netns add + ADD + DEL + netns del (ms)")
    def seq_row(key: str) -> str:
        m = seq[key]
        return (f"{ms(statistics.median(m.total))} {ms(p90(m.total))}   "
                f"{ms(statistics.median(m.add))} {ms(statistics.median(m.delete))} "
                f"{ms(m.drain)}")

    def seq_ratio(key: str) -> str:
        a, c = seq[key], seq["c"]
        return (f"{ratio(statistics.median(a.total), statistics.median(c.total))} "
                f"{ratio(p90(a.total), p90(c.total))}   "
                f"{ratio(statistics.median(a.add), statistics.median(c.add))} "
                f"{ratio(statistics.median(a.delete), statistics.median(c.delete))}")

    table(f"{'median':>8} {'p90':>8}   {'ADD med':>8} {'DEL med':>8} {'drain':>8}",
          skipped, seq, seq_row, seq_ratio)
    print()
    print(f"parallel: {args.pods} pods, {args.parallel} at a time: netns add + ADD for all, "
          "then DEL + netns del for all (s)")

    def par_row(key: str) -> str:
        r = par[key]
        return (f"{r.add_all:8.2f} {r.del_all:8.2f} {r.total:8.2f} "
                f"{args.pods / r.total:8.1f} {r.cpu / args.pods * 1000:11.1f}")

    def par_ratio(key: str) -> str:
        a, c = par[key], par["c"]
        return (f"{ratio(a.add_all, c.add_all)} {ratio(a.del_all, c.del_all)} "
                f"{ratio(a.total, c.total)} {'':8} {ratio(a.cpu, c.cpu):>11}")

    table(f"{'ADD all':>8} {'DEL all':>8} {'total':>8} {'pods/s':>8} {'CPU ms/pod':>11}",
          skipped, par, par_row, par_ratio)
    for mode in MODES:
        if mode.key in par and par[mode.key].own_cpu:
            print(f"CPU of {mode.label}: ferryd {par[mode.key].own_cpu / args.pods * 1000:.1f} "
                  "ms/pod, the rest is the execs (each `python -IS` start alone is ~9 ms of "
                  "CPU; a Go plugin's ~2)")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=30,
                   help="sequential samples per mode (default 30)")
    p.add_argument("--warmup", type=int, default=2, help="uncounted samples per mode (default 2)")
    p.add_argument("--pods", type=int, default=100,
                   help="pods in the parallel phase (default 100)")
    p.add_argument("--parallel", type=int, default=8, help="concurrent pods (default 8)")
    p.add_argument("--dual", action="store_true", help="dual stack instead of IPv4 only")
    p.add_argument("--memory-pods", type=int, default=1000,
                   help="measure ferryd's RSS idle and with this many pods (0: skip)")
    p.add_argument("--ferry-src", metavar="DIR",
                   help="run ferry from this source tree (holding plugin/) instead of the "
                        "installed one, e.g. a `git archive` snapshot")
    p.add_argument("--modes", default="a,b,c",
                   help="comma-separated subset of a,b,c (default all; b is not implemented)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.pods < 1 or args.parallel < 1 or args.warmup < 0:
        p.error("--iterations, --pods and --parallel must be >= 1, --warmup >= 0")
    if args.ferry_src:
        args.ferry_src = str(Path(args.ferry_src).resolve())
        if not (Path(args.ferry_src) / "plugin" / "cli.py").is_file():
            p.error(f"--ferry-src {args.ferry_src}: no plugin/cli.py there")
    if args.pods > 60000:
        p.error("--pods must be <= 60000 (the benchmark ranges are /16 and /112)")
    return args


def stop_all(prog: str, started: list[Mode], node: Node) -> None:
    """Stop the modes in reverse, whatever fails, then remove the node."""
    for mode in reversed(started):
        try:
            mode.stop(node)
        except Exception as e:  # keep cleaning up
            print(f"{prog}: stopping {mode.label}: {e}", file=sys.stderr)
    node.cleanup()


def failed(prog: str, e: BenchError, node: Node) -> int:
    """Say what failed, with the last lines of ferry's logs; the exit status."""
    print(f"\n{prog}: FAILED: {e}", file=sys.stderr)
    for log in [*sorted(node.work.glob("ferry*.log")), *node.work.glob("ferryd*.err")]:
        tail = log.read_text().splitlines()[-5:] if log.exists() else []
        if tail:
            print(f"{log.name} (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("add_del.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = {k.strip() for k in args.modes.split(",") if k.strip()}
    skipped = {m.key: reason for m in MODES if m.key in wanted and (reason := m.unavailable())}
    skipped |= {m.key: "not selected (--modes)" for m in MODES if m.key not in wanted}
    modes = [m for m in MODES if m.key not in skipped]
    for m in modes:
        if isinstance(m, FerryStandalone):
            m.ferry_src = args.ferry_src
    if not modes:
        print("add_del.py: no mode can run: " + "; ".join(skipped.values()), file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        if sys.stderr.isatty():
            print(f"\r  {msg} ...\033[K", end="", file=sys.stderr, flush=True)

    node = Node()
    started: list[Mode] = []
    # SIGTERM unwinds like Ctrl-C, so that the finally blocks clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        node.create()
        for mode in modes:
            started.append(mode)  # first: stop() also undoes a half-done start()
            mode.start(node, args.dual)
        bench = Bench(node, args.dual)
        seq = sequential(bench, modes, args.iterations, args.warmup, progress)
        par: dict[str, ParallelRun] = {}
        for mode in modes:
            progress(f"parallel {mode.label}")
            par[mode.key] = parallel(bench, mode, args.pods, args.parallel)
        agents = [m for m in modes if isinstance(m, FerryWithAgent)]
        memory = None
        if agents and args.memory_pods:
            progress(f"ferryd memory with {args.memory_pods} pods")
            memory = agent_memory(bench, agents[0], args.memory_pods, args.parallel)
        for mode in modes:
            mode.verify(node)
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        report(args, modes, skipped, seq, par)
        if memory:
            print(f"\nferryd resident memory: idle {memory[0] / 1024:.1f} MiB, with "
                  f"{args.memory_pods} pods attached {memory[1] / 1024:.1f} MiB")
        return 0
    except BenchError as e:
        return failed("add_del.py", e, node)
    except KeyboardInterrupt:
        print("\nadd_del.py: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        stop_all("add_del.py", started, node)


if __name__ == "__main__":
    sys.exit(main())
