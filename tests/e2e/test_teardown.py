"""One teardown and one IPAM entry point, seen from outside.

- ferryd's start-up reconcile releases a dead pod the way a DEL does, through the IPAM entry
  point: an IP held by a delegated IPAM plugin (the reference host-local, exec'd from
  CNI_PATH under a name ferry does not build in) is given back by that plugin's DEL.
- GC's list of valid attachments is parsed in one place: a malformed one is a clean CNI
  error (code 7) from ferry-host-local too, and nothing is released.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import (
    FERRY_IPAM,
    REF_HOST_LOCAL,
    Agent,
    Node,
    exec_plugin,
    plugin_dir,
    reservation_files,
)

VERSION = "1.0.0"  # the newest the reference v1.1.1 host-local speaks


@pytest.fixture
def delegate_path(tmp_path: Path) -> Path:
    """A CNI_PATH of its own holding the reference host-local as `refhl`: ferry builds in
    `host-local`, so only another name makes it exec the plugin."""
    return plugin_dir(tmp_path, "refhl", REF_HOST_LOCAL)


def test_reconcile_releases_the_ips_of_a_delegated_ipam_plugin(
        node: Node, delegate_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = node.conf(VERSION, agentSocket=str(node.tmp / "ferryd.sock"), dataplane="none",
                     ipam={"type": "refhl"})
    store = node.tmp / "ipam" / node.network
    gone, alive = node.new_pod("gone"), node.new_pod("alive")
    for pod in (gone, alive):  # standalone: no ferryd listens yet
        pod.result = node.cni("ADD", pod, conf, path=str(delegate_path)).ok()
    held = reservation_files(store)
    assert set(held) == {*gone.ips(4), *gone.ips(6), *alive.ips(4), *alive.ips(6)}
    assert all(v.startswith(pod.container_id.encode()) for pod in (gone, alive)
               for ip, v in held.items() if ip in pod.ips(4) + pod.ips(6))

    gone.ns.delete()  # the container died without a DEL: its veth pair went with its netns
    monkeypatch.setenv("CNI_PATH", str(delegate_path))  # ferryd's own, for the delegate
    agent = Agent(node, conf).start()  # reconcile runs before ferryd says it is ready
    try:
        assert set(reservation_files(store)) == {*alive.ips(4), *alive.ips(6)}
        records = sorted(p.name for p in (node.tmp / "state" / node.network).iterdir())
        assert records == [f"{alive.container_id}:eth0.json"]
        # The live pod is untouched, and its own DEL (relayed to ferryd) releases the rest.
        assert "eth0" in alive.ns.ip("-o", "link", "show")
        node.cni("DEL", alive, conf, path=str(delegate_path)).ok()
        assert reservation_files(store) == {}
    finally:
        agent.stop()


@pytest.mark.parametrize("valid", ["not-a-list", [{"containerID": "c1"}], [["c1", "eth0"]],
                                   {"containerID": "c1", "ifname": "eth0"}, [17]])
def test_ferry_host_local_refuses_a_malformed_valid_attachments_list(
        tmp_path: Path, valid: Any) -> None:
    data_dir = tmp_path / "ipam"
    conf = {"cniVersion": "1.1.0", "name": "gcnet", "type": "ptp",
            "ipam": {"type": "ferry-host-local", "dataDir": str(data_dir),
                     "ranges": [[{"subnet": "10.61.0.0/29"}]]}}
    exec_plugin(FERRY_IPAM, "ADD", conf, container_id="c1", netns="/run/netns/x").ok()
    before = reservation_files(data_dir / "gcnet")
    assert len(before) == 1
    gc = exec_plugin(FERRY_IPAM, "GC", {**conf, "cni.dev/valid-attachments": valid})
    err = gc.error(7)
    assert err["msg"] == "malformed cni.dev/valid-attachments", err
    assert "Traceback" not in gc.stderr
    assert reservation_files(data_dir / "gcnet") == before
    # A well-formed list that leaves the container out releases its IP.
    exec_plugin(FERRY_IPAM, "GC", {**conf, "cni.dev/valid-attachments": []}).ok()
    assert reservation_files(data_dir / "gcnet") == {}
