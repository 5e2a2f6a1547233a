"""Fuzzed CNI invocations: every input gets a clean answer, whichever path runs it.

A seeded mutator derives each case from the node's valid config and a runtime's valid env:
it deletes fields, gives them values of every odd type and size, points paths at places that
cannot work (relative, under a regular file, too long, with a NUL), names plugins by path,
corrupts the JSON bytes (cut, flipped, nested 1,000 deep, over 1 MiB, not UTF-8) and bends
the CNI_* variables (unknown commands, over-long or undecodable ids, lo, missing netns).

Each case runs twice, standalone (FERRY_STANDALONE=1) and relayed to a ferryd, and each
answer must be:
  - a valid CNI result (ADD) or nothing (DEL, CHECK, STATUS, GC) with exit status 0, or the
    spec's error object (exactly cniVersion, code, msg, details) with exit status 1;
  - no "internal error" (an input error has a spec code), no traceback on stderr;
  - the same code on both paths (one answer for one input);
  - after an error, the node exactly as before (links, addresses, routes, rules, nat rules,
    the files of the stores); after a success, DEL of the same request succeeds.

Cases: --fuzz-cases N (default 200), seed FERRY_FUZZ_SEED (default 12). The counts print
with -s: `pytest -s tests/e2e/test_fuzz.py --fuzz-cases 2000`.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import CNI_PATH, FERRY, Agent, CniCall, Netns, Node, exec_plugin, snapshot_diff

SEED = int(os.environ.get("FERRY_FUZZ_SEED", "12"))
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}
ODD_VALUES: list[Any] = [
    None, "", 0, -1, 1, 2**64, 1.5, float("1e308"), True, "x" * 300, [], {}, [1], {"a": 1},
    "\x00", "\udcff", "é", "10.20.0.0/33", "fd20::/200", "../../x", "0.0.0.0/0", "10.20.0.7",
    [[{"subnet": "10.20.0.0/24"}]], [{"dst": "nonsense"}], {"ips": "10.20.0.9"},
]
FIELDS: list[tuple[Any, ...]] = [
    ("cniVersion",), ("name",), ("type",), ("mtu",), ("dataplane",), ("nodeIP",),
    ("nodeIPv6",), ("snatExcludeCidrs",), ("snatPortRange",), ("vethPrefix",), ("uplink",),
    ("log",), ("log", "level"), ("log", "maxBytes"), ("log", "backups"), ("ipam",),
    ("ipam", "ranges"), ("ipam", "ranges", 0), ("ipam", "ranges", 0, 0),
    ("ipam", "ranges", 0, 0, "subnet"), ("ipam", "ranges", 0, 0, "rangeStart"),
    ("ipam", "ranges", 0, 0, "rangeEnd"), ("ipam", "ranges", 0, 0, "gateway"),
    ("ipam", "ranges", 1, 0, "subnet"), ("ipam", "subnet"), ("ipam", "routes"), ("dns",),
    ("dns", "nameservers"), ("prevResult",), ("prevResult", "ips"),
    ("prevResult", "interfaces"), ("runtimeConfig",), ("runtimeConfig", "ips"),
    ("runtimeConfig", "podENI"), ("args",), ("args", "cni"), ("args", "cni", "ips"),
    ("cni.dev/valid-attachments",),
]
PREV_RESULT = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
               "ips": [{"address": "10.20.0.9/24", "interface": 0}],
               "routes": [{"dst": "0.0.0.0/0"}]}


def path_values(tmp: Path) -> dict[tuple[str, ...], list[Any]]:
    """Paths that must fail cleanly; none outside the node's temp dir can be written."""
    afile = str(tmp / "afile")
    return {
        ("stateDir",): [str(tmp / "alt-state"), "relative/state", f"{afile}/x", "/\x00x",
                        "/" + "a" * 300],
        ("ipam", "dataDir"): [str(tmp / "alt-ipam"), "relative/ipam", f"{afile}/x", "/\x00x",
                              "/" + "a" * 300],
        ("ipam", "type"): ["/bin/true", "../../../bin/true", "no-such-plugin",
                           "ferry-host-local", "", "x\x00", ".", 7],
        ("ipam", "resolvConf"): [str(tmp / "adir"), str(tmp / "missing"), "/dev/null", "\x00"],
        ("agentSocket",): [str(tmp / "nosock"), "/" + "a" * 200, f"{afile}/sock", "/\x00",
                           "rel.sock"],
        ("log", "file"): ["", "/\x00", str(tmp / "adir")],
    }


@dataclass
class Case:
    command: str
    env: dict[str, str]
    stdin: bytes
    notes: list[str] = field(default_factory=list)


class Mutator:
    def __init__(self, rng: random.Random, node: Node, pods: list[Netns]) -> None:
        self.rng = rng
        self.node = node
        self.pods = pods
        self.paths = path_values(node.tmp)
        self.n = 0

    def case(self, base: dict[str, Any]) -> Case:
        rng = self.rng
        self.n += 1
        conf = copy.deepcopy(base)
        notes: list[str] = []
        if rng.random() < 0.3:
            conf["prevResult"] = copy.deepcopy(PREV_RESULT)
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            notes.append(self._mutate_conf(conf))
        command = rng.choices(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add", "X", ""],
                              [40, 25, 8, 5, 5, 4, 2, 2, 2])[0]
        if command in ("STATUS", "GC") and rng.random() < 0.7:
            conf["cniVersion"] = "1.1.0"
        pod = rng.choice(self.pods)
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"fz{self.n:05d}{SEED}",
               "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
               "CNI_ARGS": f"K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=p{self.n}", "CNI_PATH": CNI_PATH}
        if rng.random() < 0.35:
            notes.append(self._mutate_env(env))
        stdin = json.dumps(conf).encode()
        if rng.random() < 0.12:
            stdin, note = self._mutate_bytes(stdin)
            notes.append(note)
        return Case(command, env, stdin, notes)

    def _mutate_conf(self, conf: dict[str, Any]) -> str:
        rng = self.rng
        if rng.random() < 0.35:
            where = rng.choice(list(self.paths))
            value = rng.choice(self.paths[where])
        else:
            where = rng.choice(FIELDS)
            value = rng.choice(ODD_VALUES)
        if rng.random() < 0.2:
            _delete(conf, where)
            return f"del {'.'.join(map(str, where))}"
        _set(conf, where, value)
        return f"set {'.'.join(map(str, where))}={value!r:.40}"

    def _mutate_env(self, env: dict[str, str]) -> str:
        rng = self.rng
        key, values = rng.choice([
            ("CNI_CONTAINERID", ["a" * 241, "b" * 300, "ab\udcff", "../x", "", "-x", "x y"]),
            ("CNI_IFNAME", ["lo", "x" * 16, "a/b", "", "eth1", ".", "é"]),
            ("CNI_NETNS", ["/nonexistent/ns", "/dev/null", str(self.node.tmp / "afile"), ""]),
            ("CNI_ARGS", ["IP=garbage", "IP=10.20.0.300", "K8S_POD_NAME", "a=b;;c",
                          "IgnoreUnknown=1;IP=10.20.0.77", "=x", "IP=fd20::5,10.20.0.6"]),
            ("CNI_PATH", ["", "/nonexistent"]),
        ])
        env[key] = rng.choice(values)
        return f"env {key}={env[key]!r:.40}"

    def _mutate_bytes(self, stdin: bytes) -> tuple[bytes, str]:
        rng = self.rng
        kind = rng.choice(["cut", "flip", "deep", "huge", "utf8"])
        if kind == "cut":
            at = rng.randrange(len(stdin))
            return stdin[:at], f"cut at {at}"
        if kind == "flip":
            at = rng.randrange(len(stdin))
            return stdin[:at] + bytes([rng.randrange(256)]) + stdin[at + 1:], f"flip {at}"
        if kind == "deep":
            return stdin[:-1] + b', "deep": ' + b"[" * 1000 + b"]" * 1000 + b"}", "deep"
        if kind == "huge":
            return stdin[:-1] + b', "pad": "' + b"x" * (1 << 20) + b'"}', "huge"
        return stdin.replace(b'"name": "', b'"name": "\xff', 1), "not utf-8"


def _set(conf: Any, where: tuple[Any, ...], value: Any) -> None:
    for key in where[:-1]:
        nxt = conf.get(key) if isinstance(conf, dict) else (
            conf[key] if isinstance(conf, list) and len(conf) > key else None)
        if not isinstance(nxt, dict | list):
            return
        conf = nxt
    last = where[-1]
    if (isinstance(conf, dict) and isinstance(last, str)) or (
            isinstance(conf, list) and isinstance(last, int) and len(conf) > last):
        conf[last] = value


def _delete(conf: Any, where: tuple[Any, ...]) -> None:
    for key in where[:-1]:
        conf = conf.get(key) if isinstance(conf, dict) else None
        if conf is None:
            return
    if isinstance(conf, dict):
        conf.pop(where[-1], None)


def snapshot(node: Node) -> dict[str, str]:
    snap = node.snapshot()
    for tool in ("iptables-save", "ip6tables-save"):
        out = node.ns.run(tool, check=False)
        snap[tool] = "\n".join(line for line in out.splitlines()
                               if not line.startswith("#") and not line.startswith(":"))
    return snap


def judge(call: CniCall, command: str) -> tuple[int, list[str]]:
    """(code, violations) of one answer; code 0 for success."""
    problems = []
    if "Traceback" in call.stderr:
        problems.append(f"traceback on stderr: {call.stderr[-800:]}")
    try:
        out = json.loads(call.stdout) if call.stdout.strip() else None
    except ValueError:
        return -1, [*problems, f"stdout is not JSON: {call.stdout[:300]!r}"]
    if call.rc == 0:
        if command == "ADD" and not (isinstance(out, dict) and out.get("ips")):
            problems.append(f"ADD succeeded without a result: {call.stdout[:300]}")
        if command in ("DEL", "CHECK", "STATUS", "GC") and out is not None:
            problems.append(f"{command} printed {call.stdout[:200]}")
        return 0, problems
    if call.rc != 1:
        problems.append(f"exit status {call.rc}")
    if not (isinstance(out, dict) and set(out) == ERROR_KEYS and isinstance(out["code"], int)
            and isinstance(out["msg"], str) and isinstance(out["details"], str)):
        return -1, [*problems, f"not a CNI error object: {call.stdout[:300]!r}"]
    if out["msg"].startswith("internal error"):
        problems.append(f"internal error: {out}")
    if command == "DEL" and out["code"] == 5:
        problems.append(f"DEL failed on the node's side (a DEL must always succeed): {out}")
    return out["code"], problems


@pytest.fixture(scope="module")
def fuzz_node() -> Iterator[tuple[Node, Agent, list[Netns]]]:
    with Node.create() as node:
        (node.tmp / "afile").write_text("a regular file\n")
        (node.tmp / "adir").mkdir()
        pods = [Netns("ffz") for _ in range(3)]
        try:
            with Agent.running(node, dataplane="none") as agent:
                yield node, agent, pods
        finally:
            for pod in pods:
                pod.delete()


def run(node: Node, case: Case, standalone: bool, plugin: str = FERRY) -> CniCall:
    env = {**case.env, "CNI_COMMAND": case.command}
    if standalone:
        env["FERRY_STANDALONE"] = "1"
    return exec_plugin(plugin, case.command, case.stdin, node=node.ns,
                       env=env, omit=tuple(k for k, v in env.items() if not v))


class Fuzz:
    """Runs cases, judges the answers, keeps the counts and the violations."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.codes: Counter[str] = Counter()
        self.violations: list[str] = []
        self.runs = 0
        self.before = snapshot(node)

    def one(self, case: Case, n: int, path: str, plugin: str = FERRY) -> tuple[int, str]:
        standalone = path != "ferryd"
        call = run(self.node, case, standalone, plugin)
        self.runs += 1
        code, problems = judge(call, case.command)
        self.codes[f"{case.command or '-'}:{code}"] += 1
        where = f"case {n} {path} {case.command} {case.notes}"
        self.violations += [f"{where}: {p}" for p in problems]
        if code == 0 and case.command == "ADD":
            undo = Case("DEL", case.env, case.stdin)
            dcode, dproblems = judge(run(self.node, undo, standalone, plugin), "DEL")
            self.runs += 1
            if dcode != 0:
                self.violations.append(f"{where}: DEL after a successful ADD gave {dcode}")
            self.violations += [f"{where}: DEL: {p}" for p in dproblems]
        after = snapshot(self.node)
        if code != 0 and (diff := snapshot_diff(self.before, after)):
            self.violations.append(f"{where}: the error changed the node:\n{diff[:1500]}")
        self.before = after
        return code, call.stdout[:300]

    def report(self, what: str, cases: int) -> None:
        print(f"\n[fuzz] {what}, seed {SEED}: {cases} cases, {self.runs} runs, "
              f"{len(self.violations)} violations; codes (command:code): "
              f"{dict(sorted(self.codes.items()))}")
        assert not self.violations, (f"{len(self.violations)} violations:\n"
                                     + "\n".join(self.violations[:30]))


def test_fuzzed_requests_get_clean_answers(fuzz_node: tuple[Node, Agent, list[Netns]],
                                           fuzz_cases: int) -> None:
    node, agent, pods = fuzz_node
    base = agent.conf
    # A first ADD + DEL makes the store directories, so that a case's "before" has them.
    warm = Case("ADD", {"CNI_CONTAINERID": "fzwarm", "CNI_NETNS": pods[0].path,
                        "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH}, json.dumps(base).encode())
    for command in ("ADD", "DEL"):
        warm.command = command
        assert run(node, warm, standalone=False).rc == 0
    mutator = Mutator(random.Random(SEED), node, pods)
    fuzz = Fuzz(node)
    for _ in range(fuzz_cases):
        case = mutator.case(base)
        (s_code, s_out), (d_code, d_out) = (fuzz.one(case, mutator.n, path)
                                            for path in ("standalone", "ferryd"))
        if s_code != d_code:
            fuzz.violations.append(f"case {mutator.n} {case.command} {case.notes}: standalone "
                                   f"answered {s_code}, ferryd {d_code}: {[s_out, d_out]}")
        assert agent.proc is not None and agent.proc.poll() is None, "ferryd died"
    fuzz.report("ferry standalone and through ferryd", fuzz_cases)


def egress_conf(node: Node, pod: Netns) -> dict[str, Any]:
    """ferry-egress (egress-v4) chained after a main plugin that gave the pod IPv6 only."""
    return {"cniVersion": "1.0.0", "name": node.network, "type": "ferry-egress",
            "dataplane": "none", "nodeIP": node.node_ip4, "stateDir": str(node.tmp / "state"),
            "log": {"file": str(node.tmp / "log" / "egress.log")},
            "ipam": {"type": "host-local", "dataDir": str(node.tmp / "ipam-egress"),
                     "ranges": [[{"subnet": "169.254.172.0/22"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
            "prevResult": {"cniVersion": "1.0.0",
                           "interfaces": [{"name": "eth0", "sandbox": pod.path}],
                           "ips": [{"address": "fd20::9/120", "interface": 0}]}}


@pytest.mark.parametrize("plugin", ["ferry-host-local", "ferry-egress"])
def test_fuzzed_requests_to_the_ipam_and_egress_binaries_get_clean_answers(
        fuzz_node: tuple[Node, Agent, list[Netns]], fuzz_cases: int, plugin: str) -> None:
    node, agent, pods = fuzz_node
    binary = f"{CNI_PATH}/{plugin}"
    base = agent.conf if plugin == "ferry-host-local" else egress_conf(node, pods[0])
    mutator = Mutator(random.Random(SEED + 1), node, pods)
    fuzz = Fuzz(node)
    cases = max(1, fuzz_cases // 4)
    for _ in range(cases):
        fuzz.one(mutator.case(base), mutator.n, "standalone", binary)
    fuzz.report(plugin, cases)
