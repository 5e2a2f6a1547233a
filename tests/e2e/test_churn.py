"""Churn as a bad day brings it: 500 CNI operations 4 at a time, ferryd SIGKILLed at random
moments 6 times (the binaries fall back to standalone while it is down; each restart
reconciles), and the store's disk full once. The runtime's side is modelled as kubelet does
it: an ADD that failed (any code) is DELed, a DEL is retried until it succeeds.

Asserted throughout: every answer is a CNI result or error object with no traceback, and no
IP is ever held by two live pods. After DEL of all: no reservation, record, host veth, pod
route or rule left, and the eBPF endpoint maps (both families) are empty.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from harness import Agent, CniCall, Netns, Node, fill_disk, reservation_files, sh, tmpfs

OPS = 500
WORKERS = 4
KILLS = 6
SLOTS = 16
SEED = 5


@dataclass
class Slot:
    ns: Netns
    container_id: str = ""
    ips: tuple[str, ...] = ()
    busy: bool = False


def unfill(files: list[Path]) -> None:
    for f in files:
        f.unlink(missing_ok=True)


def valid(call: CniCall) -> str | None:
    """Why `call` is not a clean CNI answer, or None."""
    if "Traceback" in call.stderr:
        return f"traceback: {call.stderr[-500:]}"
    try:
        out = json.loads(call.stdout) if call.stdout.strip() else None
    except ValueError:
        return f"not JSON: {call.stdout[:200]!r}"
    if call.rc == 0:
        return None
    if not (isinstance(out, dict) and set(out) == {"cniVersion", "code", "msg", "details"}):
        return f"not an error object: {call.stdout[:200]!r}"
    if out["msg"].startswith("internal error"):
        return f"internal error: {out}"
    return None


def endpoint_entries(network: str) -> list[object]:
    """Both families' endpoint maps (IPv4, IPv6)."""
    return [entry for name in ("ferry_endpoints", "ferry_endpoint6")
            for entry in json.loads(sh("bpftool", "-j", "map", "dump", "pinned",
                                       f"/sys/fs/bpf/ferry/{network}/maps/{name}"))]


def test_churn_with_sigkills_and_a_full_disk_leaves_nothing(node: Node) -> None:
    rng = random.Random(SEED)
    with tmpfs(node.tmp / "store", "4m") as disk:
        conf = node.conf(agentSocket=str(node.tmp / "ferryd.sock"), dataplane="ebpf",
                         nodeIP=node.node_ip4, stateDir=str(disk / "state"),
                         ipam={"dataDir": str(disk / "ipam")})
        rules_before = node.ns.ip("rule", "show") + node.ns.ip("-6", "rule", "show")
        agent = Agent(node, conf).start()
        slots = [Slot(Netns("fch")) for _ in range(SLOTS)]
        lock = threading.Lock()
        problems: list[str] = []
        codes: dict[str, int] = {}
        done = 0
        kill_at = sorted(rng.sample(range(20, OPS - 20), KILLS))
        full_at = rng.randrange(OPS // 3, 2 * OPS // 3)
        counter = iter(range(OPS))

        def cni(command: str, slot: Slot) -> CniCall:
            call = node.cni(command, _pod(slot), conf)
            why = valid(call)
            code = json.loads(call.stdout)["code"] if call.rc and not why else call.rc
            with lock:
                codes[f"{command}:{code}"] = codes.get(f"{command}:{code}", 0) + 1
                if why:
                    problems.append(f"{command} {slot.container_id}: {why}")
            return call

        def delete(slot: Slot) -> None:
            for _ in range(50):  # kubelet retries a DEL until it succeeds
                if cni("DEL", slot).rc == 0:
                    return
            problems.append(f"DEL {slot.container_id} never succeeded")

        def one_op(i: int) -> None:
            with lock:
                free = [s for s in slots if not s.busy]
                slot = rng.choice(free)
                slot.busy = True
            try:
                if not slot.container_id:
                    slot.container_id = f"churn{i:04d}{rng.getrandbits(24):06x}"
                    call = cni("ADD", slot)
                    if call.rc != 0:
                        delete(slot)
                        slot.container_id = ""
                        return
                    ips = tuple(ip["address"].split("/")[0] for ip in call.json["ips"])
                    with lock:
                        taken = {ip: s.container_id for s in slots for ip in s.ips}
                        twice = [f"{ip} ({taken[ip]})" for ip in ips if ip in taken]
                        if twice:
                            problems.append(f"{slot.container_id} got IPs a live pod holds: "
                                            f"{twice}")
                        slot.ips = ips
                else:
                    delete(slot)
                    slot.container_id, slot.ips = "", ()
            finally:
                with lock:
                    slot.busy = False

        def worker() -> None:
            nonlocal done
            for i in counter:
                one_op(i)
                with lock:
                    done += 1

        def chaos() -> None:
            """SIGKILL ferryd at the chosen op counts; fill the disk once, for 25 ops and until an
            ADD failed on it (DELs free pages, so it is topped up; at most until 50 ops from the
            end)."""
            filled = None
            topped = 0
            fillers: list[Path] = []
            pending = list(kill_at)
            while True:
                with lock:
                    now = done
                if filled is None and now >= full_at:
                    filled = now
                    fillers = fill_disk(disk)
                elif filled is not None and filled >= 0 and now >= filled + 25:
                    with lock:
                        failed_add = codes.get("ADD:5", 0)
                    if failed_add or now >= OPS - 50:
                        unfill(fillers)
                        filled = -1
                    elif now >= topped + 10:  # DELs freed pages again: full once more
                        topped = now
                        fillers += fill_disk(disk, prefix=f"top{now}-")
                if pending and now >= pending[0]:
                    pending.pop(0)
                    agent.stop(signal.SIGKILL)
                    agent.start()  # reconcile, then serve
                if now >= OPS:
                    if filled is not None and filled >= 0:
                        unfill(fillers)
                    return
                threading.Event().wait(0.02)

        try:
            threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
            chaos_thread = threading.Thread(target=chaos)
            for t in [*threads, chaos_thread]:
                t.start()
            for t in [*threads, chaos_thread]:
                t.join()
            for slot in slots:
                if slot.container_id:
                    delete(slot)
            print(f"\n[churn] {OPS} ops, {KILLS} SIGKILLs at {kill_at}, disk full at op "
                  f"{full_at}; answers (command:code): {dict(sorted(codes.items()))}")
            assert not problems, "\n".join(problems[:30])
            assert codes.get("ADD:5"), "the full disk failed no ADD: it was not tested"
            agent.stop()
            agent.start()  # one more reconcile: it must find nothing to do
            assert reservation_files(disk / "ipam" / node.network) == {}
            assert not list((disk / "state").rglob("*.json"))
            assert not list((disk / "state").rglob("*.tmp*"))
            assert node.pod_links() == []
            assert "fry" not in node.ns.ip("route", "show", "table", "all")
            assert "fry" not in node.ns.ip("-6", "route", "show", "table", "all")
            assert node.ns.ip("rule", "show") + node.ns.ip("-6", "rule", "show") == rules_before
            assert endpoint_entries(node.network) == []
        finally:
            if agent.proc is not None:
                agent.stop()
            for slot in slots:
                slot.ns.delete()


def _pod(slot: Slot):  # type: ignore[no-untyped-def]
    from harness import Pod

    return Pod(name=slot.container_id, ns=slot.ns, container_id=slot.container_id)
