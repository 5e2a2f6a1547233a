"""The dataplane is chosen once per process (ferryd's choice is the engine's), and inspect's
typed structure gives the JSON `ferryctl inspect --json` always printed."""

from __future__ import annotations

from typing import Any

from plugin.config import NetConf, parse
from plugin.dataplane import mode
from plugin.dataplane.base import Inspection, NatFlow, PodEntry, RedirectEntry, RoutingOnly
from plugin.dataplane.iptables import Iptables


def conf(**kw: Any) -> NetConf:
    return parse(NetConf, {"cniVersion": "1.0.0", "name": "mode-test", "type": "ferry",
                           "ipam": {"type": "host-local", "subnet": "10.20.0.0/24"}, **kw})


def test_the_choice_is_made_once_per_process_and_ferryds_is_adopted(monkeypatch: Any) -> None:
    calls: list[str] = []

    def counted(c: NetConf, loading: bool = False) -> Any:
        calls.append(c.name)
        return Iptables()

    monkeypatch.setattr(mode, "_chosen", {})
    monkeypatch.setattr(mode, "choose", counted)
    first = mode.dataplane_for(conf(dataplane="auto"))
    assert mode.dataplane_for(conf(dataplane="auto")) is first and calls == ["mode-test"]
    other = mode.dataplane_for(conf(dataplane="auto", name="mode-other"))
    assert other is not first and calls == ["mode-test", "mode-other"]
    chosen_by_ferryd = RoutingOnly()
    mode.adopt(conf(dataplane="auto"), chosen_by_ferryd)
    assert mode.dataplane_for(conf(dataplane="auto")) is chosen_by_ferryd
    assert len(calls) == 2  # no probe after ferryd's choice


def test_explicit_modes_need_no_probe() -> None:
    assert mode.choose(conf(dataplane="none")).name == "none"
    assert mode.choose(conf(dataplane="iptables")).name == "iptables"
    assert mode.choose(conf(dataplane="ebpf")).name == "ebpf"


def test_inspection_json_keys_and_optional_fields() -> None:
    info = Inspection(network="n", dataplane="iptables", loaded=True, backend="nft",
                      rules={"v4": [], "v6": []}, node_ip="10.0.0.1", node_ip6="")
    info.pods.append(PodEntry(ip="10.20.0.2", device="fry1", ifindex=7, pod_eni=True,
                              chain="FERRY-abc"))
    info.nat.append(NatFlow(proto="tcp", pod="10.20.0.2:4000", dst="10.1.0.1:80",
                            nat="10.0.0.1:61000", idle_seconds=1.5))
    info.redirects.append(RedirectEntry(ip="10.20.0.2", host_veth="fry1", eni="eni1",
                                        gateway="", table=0xF3E005))
    out = info.to_json()
    assert set(out) == {"network", "dataplane", "loaded", "pods", "nat", "redirects",
                        "filters", "nodeIP", "nodeIPv6", "backend", "rules"}
    assert out["pods"] == [{"ip": "10.20.0.2", "device": "fry1", "ifindex": 7, "podENI": True,
                            "chain": "FERRY-abc"}]
    assert out["nat"][0]["idleSeconds"] == 1.5
    assert out["redirects"] == [{"ip": "10.20.0.2", "hostVeth": "fry1", "eni": "eni1",
                                 "gateway": "", "hostMAC": "", "podMAC": "",
                                 "table": 0xF3E005}]
    routed = RoutingOnly().inspect(conf(dataplane="none")).to_json()
    assert routed == {"network": "mode-test", "dataplane": "none", "loaded": True, "pods": [],
                      "nat": [], "redirects": [], "filters": {}}
