"""Choosing and loading the eBPF dataplane: code 11 until it is loaded, `auto` and its log,
reuse of the pins by a second `ferryctl load`, and `ferryctl inspect` as table and JSON."""

from __future__ import annotations

import json
import os

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
