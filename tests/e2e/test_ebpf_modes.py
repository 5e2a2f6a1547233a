"""Choosing and loading the eBPF dataplane: code 11 until it is loaded, `auto` and its log,
reuse of the pins by a second `ferryctl load`, a load's re-sync against a DEL in flight, and
`ferryctl inspect` as table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dataplane_support import ebpf_node
from harness import Node


def _log(node: Node) -> str:
    path = node.tmp / "log" / "ferry.log"
    return path.read_text() if path.exists() else ""


def test_add_with_ebpf_and_nothing_loaded_is_try_again_later() -> None:
    with ebpf_node(load=False) as en:
        before = en.node.snapshot()
        pod = en.node.new_pod("early")
        err = en.node.cni("ADD", pod, en.conf).error(11)
        assert "ferryctl load" in err["details"] and "not loaded" in err["msg"]
        # The failed ADD rolled back: no link, no reserved IP, no attachment record.
        after = en.node.snapshot()
        assert after["links"] == before["links"] and after["addrs"] == before["addrs"]
        assert not [f for f in after["files"].split() if f.split("/")[-1][:1].isdigit()
                    or f.endswith(".json")]
        en.load()
        pod.result = en.node.cni("ADD", pod, en.conf).ok()
        assert [p["ip"] for p in en.inspect()["pods"]] == pod.ips(4) + pod.ips(6)


def test_auto_logs_its_choice() -> None:
    with ebpf_node(load=False) as en:
        conf = {**en.conf, "dataplane": "auto"}
        a = en.node.add_pod("auto-a", conf=conf)
        assert "dataplane auto: not ebpf" in _log(en.node) and "ferryctl load" in _log(en.node)
        assert en.inspect()["pods"] == []
        en.load()
        b = en.node.add_pod("auto-b", conf=conf)
        assert "dataplane auto: ebpf" in _log(en.node)
        # load re-synced a (recorded before the load) and b went straight into the map.
        assert sorted(p["ip"] for p in en.inspect()["pods"]) == sorted(a.ips(4) + b.ips(4)
                                                                      + a.ips(6) + b.ips(6))


def test_second_load_reuses_pins_and_a_new_flag_recompiles() -> None:
    with ebpf_node() as en:
        first = json.loads(en.ctl("inspect", "--json").stdout)
        again = en.load()
        assert again["compiled"] is False and again["progIds"] == first["progIds"]
        assert "reused from pins (nothing loaded) by the elf loader" in _log(en.node)
        flagged = en.load("-DFERRY_E2E_VARIANT=1")
        assert flagged["compiled"] is True
        assert set(flagged["progIds"].values()).isdisjoint(first["progIds"].values())
        # The uplink filters now run the new programs.
        now = en.inspect()
        assert now["progIds"] == flagged["progIds"]
        out = en.node.ns.run("tc", "filter", "show", "dev", "uplink0", "egress")
        assert f"id {flagged['progIds']['ferry_snat_eg']} " in out


# In the node's namespace, one process: a pod's DEL runs in the main thread and, once it has
# removed the pod's map entries but not yet its veth, IPs and record, a load's re-sync of the
# pods runs in a second thread; the DEL goes on once the re-sync has re-applied the pod or is
# waiting to. The interleaving of a standalone DEL with the re-sync of a starting ferryd.
RESYNC_DURING_DEL = r"""
import fcntl, json, sys, threading
from plugin import engine, wiring
from plugin.config import NetConf, parse
from plugin.dataplane.base import resync
from plugin.dataplane.ebpf import Ebpf
from plugin.protocol import Request

raw, container_id, netns = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
conf = parse(NetConf, raw)
reached = threading.Event()  # the re-sync attached the pod, waits for the store, or ended
synced = []

class Dataplane(Ebpf):
    def attach(self, conf, att):
        super().attach(conf, att)
        reached.set()

real_flock = fcntl.flock
def flock(fd, op):
    if threading.current_thread() is loader and op & fcntl.LOCK_EX:
        reached.set()
    return real_flock(fd, op)
fcntl.flock = flock

def load():
    try:
        synced.append(resync(Dataplane(), conf))
    finally:
        reached.set()
loader = threading.Thread(target=load)

real_teardown = wiring.teardown
def teardown(*args, **kw):
    loader.start()
    reached.wait()
    return real_teardown(*args, **kw)
wiring.teardown = teardown

req = Request(command="DEL", container_id=container_id, ifname="eth0", netns=netns,
              config=raw)
engine.delete(conf, req, engine.Context())
loader.join()
print(json.dumps({"synced": synced}))
"""


def test_a_load_during_a_del_does_not_bring_the_pod_back() -> None:
    """A standalone DEL and the re-sync of a starting ferryd (or `ferryctl load`) at once:
    the re-sync must not re-install the entries the DEL removed, or they stay after the DEL
    (pointing at a deleted veth, for IPs the next pods get)."""
    with ebpf_node() as en:
        pod = en.add_pod("resync-del")
        assert len(en.inspect()["pods"]) == 2
        run = subprocess.run(["nsenter", f"--net={en.node.ns.path}", sys.executable, "-c",
                              RESYNC_DURING_DEL, json.dumps(en.conf), pod.container_id,
                              pod.ns.path], capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        assert not list((en.node.tmp / "state").rglob("*.json"))
        assert en.node.pod_links() == []
        assert en.inspect()["pods"] == []
        assert json.loads(run.stdout) == {"synced": [0]}  # it waited, then found no record


def test_inspect_table_and_unload() -> None:
    with ebpf_node() as en:
        pod = en.add_pod("table")
        text = en.ctl("inspect").stdout
        assert "pods (2):" in text and pod.ips(4)[0] in text and "uplink0" in text
        assert pod.ips(6)[0] in text and "nodeIPv6 fd99::1" in text
        assert "ferry_snat_eg" in text
        assert "loader elf  kernel lacks nothing  pod ENIs: ebpf" in text
        out = json.loads(en.ctl("unload", "--json").stdout)
        assert out["removedPins"] is True and not os.path.exists(en.pin_dir)
        assert "ferry" not in en.node.ns.run("tc", "filter", "show", "dev", "uplink0",
                                             "egress")
        assert "clsact" not in en.node.ns.run("tc", "qdisc", "show", "dev", "uplink0")
        assert json.loads(en.ctl("inspect", "--json").stdout)["loaded"] is False
