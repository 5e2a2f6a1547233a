"""ferryd's start-up and DEL against damaged or unwritable state (issue 12, item 11): a damaged
record is quarantined (<dir>/.quarantine/) and reported (log, the
ferry_state_quarantined_records metric, `ferryctl records`), never acted on; a state or IPAM
dir that cannot be written does not stop ferryd starting. One test per defect, named after
what it protects; each starts from a live pod whose record is then damaged."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import FERRYD, Agent, Node, Pod, ping, sh

from plugin.agent import ferry_pb2

FERRYCTL = str(Path(FERRYD).with_name("ferryctl"))


def live_pod(node: Node) -> tuple[Pod, Path, str]:
    """A pod added standalone; its record file and host veth."""
    pod = node.add_pod(conf=node.conf(agentSocket=str(node.tmp / "ferryd.sock")))
    assert pod.result is not None
    record = node.tmp / "state" / node.network / f"{pod.container_id}:eth0.json"
    assert record.exists()
    return pod, record, pod.result["interfaces"][0]["name"]


def damage(record: Path, **fields: Any) -> None:
    record.write_text(json.dumps({**json.loads(record.read_text()), **fields}))


def has_link(node: Node, name: str) -> bool:
    return bool(node.ns.ip("link", "show", name, check=False).strip())


def assert_quarantined(node: Node, agent: Agent, record: Path, reason: str) -> None:
    """The record moved aside and reported by ferryctl and the metric, with the reason."""
    assert not record.exists(), "the damaged record is still where DEL and GC look"
    assert (record.parent / ".quarantine" / record.name).exists()
    out = json.loads(sh(FERRYCTL, "records", "--config", str(agent.conflist), "--json"))
    assert [q["file"] for q in out["quarantined"]] == [record.name], out
    assert reason in out["quarantined"][0]["reason"], out
    metrics = node.ns.run("python3", "-c", "import urllib.request as u; print(u.urlopen("
                          "'http://127.0.0.1:9661/metrics', timeout=10).read().decode())")
    assert "ferry_state_quarantined_records 1.0" in metrics


def assert_pod_untouched(node: Node, pod: Pod, veth: str) -> None:
    assert has_link(node, veth), f"ferryd deleted the live pod's veth {veth}"
    assert ping(pod.ns, node.ext_ip4), "the live pod lost its network"


def test_start_survives_a_record_with_an_ip_that_does_not_parse(node: Node) -> None:
    pod, record, veth = live_pod(node)
    damage(record, ips=["garbage"])
    with Agent.running(node) as agent:
        assert_quarantined(node, agent, record, "not an address")
        assert_pod_untouched(node, pod, veth)


def test_start_survives_a_record_whose_ips_is_a_string(node: Node) -> None:
    pod, record, veth = live_pod(node)
    damage(record, ips="10.20.0.5/24")
    with Agent.running(node) as agent:
        assert_quarantined(node, agent, record, "ips is str")
        assert_pod_untouched(node, pod, veth)


def test_start_survives_a_record_whose_owner_pid_is_not_a_number(node: Node) -> None:
    pod, record, veth = live_pod(node)
    damage(record, owner_pid="abc", complete=False)
    with Agent.running(node) as agent:
        assert_quarantined(node, agent, record, "owner_pid is str")
        assert_pod_untouched(node, pod, veth)


def test_a_record_that_does_not_parse_keeps_the_live_pods_veth(node: Node) -> None:
    """Its veth used to be 'leaked' (named by no readable record) and deleted."""
    pod, record, veth = live_pod(node)
    record.write_text('{"container_id": "x", "ifn')
    with Agent.running(node) as agent:
        assert_quarantined(node, agent, record, "not JSON")
        assert_pod_untouched(node, pod, veth)


def test_a_record_naming_the_uplink_never_deletes_it(node: Node) -> None:
    """host_veth "uplink0": ferryd used to repair routes on it and delete the pod's real veth
    as leaked, and the pod's DEL then deleted the uplink."""
    pod, record, veth = live_pod(node)
    damage(record, host_veth="uplink0")
    with Agent.running(node) as agent:
        assert_quarantined(node, agent, record, "not a name ferry gives")
        assert_pod_untouched(node, pod, veth)
        node.cni("DEL", pod, agent.conf).ok()
        assert has_link(node, "uplink0"), "DEL deleted the node's uplink"
        node.snapshot()  # the reaper's batch
        assert not has_link(node, veth), "DEL left the pod's own (tagged) veth"


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """A directory even root cannot write (ext4's immutable flag), restored afterwards."""
    sh("chattr", "+i", str(path))
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def stale_pod(node: Node) -> tuple[Pod, Path]:
    """A pod whose sandbox died without a DEL: the record stays, the veth is gone."""
    pod, record, _ = live_pod(node)
    pod.ns.delete()
    node.snapshot()
    return pod, record


def test_start_with_a_read_only_state_dir_holding_a_stale_record(node: Node) -> None:
    live, _, veth = live_pod(node)
    _, stale = stale_pod(node)
    with immutable(stale.parent), Agent.running(node) as agent:
        assert stale.exists()  # could not be removed: reported, retried at the next start
        assert_pod_untouched(node, live, veth)
        assert agent.stub().Health(ferry_pb2.Empty()).ok
    with Agent.running(node):
        assert not stale.exists(), "the stale record was not released once writable"
        assert_pod_untouched(node, live, veth)


def test_start_with_a_read_only_ipam_dir_holding_a_stale_record(node: Node) -> None:
    live, _, veth = live_pod(node)
    stale_pod(node)
    with immutable(node.tmp / "ipam" / node.network), Agent.running(node):
        assert_pod_untouched(node, live, veth)
