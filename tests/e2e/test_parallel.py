"""Parallelism: many CNI execs at once on one node, as a runtime starting a burst of pods does.

Every ADD/DEL is a separate exec of the real binary; the only thing serialising them is the
IPAM lock file, shared with the reference host-local.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from harness import (
    FERRY_IPAM,
    REF_HOST_LOCAL,
    CniCall,
    Node,
    Pod,
    exec_plugin,
    ping,
    reservation_files,
)

N_PODS = 50
T = TypeVar("T")
R = TypeVar("R")


def pmap(fn: Callable[[T], R], items: list[T], workers: int | None = None) -> list[R]:
    with ThreadPoolExecutor(max_workers=workers or len(items)) as pool:
        return list(pool.map(fn, items))


def expected_veth(pod: Pod) -> str:
    return "fry" + hashlib.sha1(f"default.{pod.name}".encode()).hexdigest()[:11]


def eth0_addrs(pod: Pod) -> set[str]:
    out = json.loads(pod.ns.ip("-j", "addr", "show", "dev", "eth0"))
    return {a["local"] for link in out for a in link["addr_info"] if a["scope"] == "global"}


def test_50_pods_add_and_del_in_parallel(node: Node) -> None:
    # An agent socket of its own: standalone ferry even if a ferryd runs on this machine.
    conf = node.conf(agentSocket=str(node.tmp / "no-ferryd.sock"))
    ipam_dir = node.tmp / "ipam" / node.network
    state_dir = node.tmp / "state" / node.network
    pods = [node.new_pod(f"par-{i:02d}") for i in range(N_PODS)]

    started = time.monotonic()
    adds = pmap(lambda p: node.cni("ADD", p, conf), pods)
    add_s = time.monotonic() - started
    for pod, call in zip(pods, adds, strict=True):
        pod.result = call.ok()

    v4 = [ip for p in pods for ip in p.ips(4)]
    v6 = [ip for p in pods for ip in p.ips(6)]
    assert len(v4) == len(v6) == N_PODS, "every pod gets one IPv4 and one IPv6 address"
    assert len(set(v4)) == N_PODS, f"duplicate IPv4: {sorted(v4)}"
    assert len(set(v6)) == N_PODS, f"duplicate IPv6: {sorted(v6)}"
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(node.pod_cidr4) for ip in v4)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(node.pod_cidr6) for ip in v6)

    # The dataDir: one file per IP, naming the pod that the result gave it to.
    files = reservation_files(ipam_dir)
    assert len(files) == 2 * N_PODS
    for pod in pods:
        for ip in pod.ips(4) + pod.ips(6):
            assert files[str(ipaddress.ip_address(ip))] == f"{pod.container_id}\r\neth0".encode()

    # The host side: 50 veths with the deterministic names; the pod side holds its addresses.
    assert node.pod_links() == sorted(expected_veth(p) for p in pods)
    assert len(list(state_dir.glob("*.json"))) == N_PODS
    for pod in pods:
        assert eth0_addrs(pod) == set(pod.ips(4) + pod.ips(6)), pod.name

    started = time.monotonic()
    reach = pmap(lambda p: (ping(p.ns, node.node_ip4), ping(p.ns, node.node_ip6)), pods, 16)
    ping_s = time.monotonic() - started
    unreachable = [p.name for p, ok in zip(pods, reach, strict=True) if ok != (True, True)]
    assert not unreachable, f"pods that cannot ping the node: {unreachable}"
    assert ping(pods[0].ns, pods[-1].ips(4)[0]) and ping(pods[-1].ns, pods[0].ips(6)[0])

    started = time.monotonic()
    dels = pmap(lambda p: node.cni("DEL", p, conf), pods)
    del_s = time.monotonic() - started
    for call in dels:
        call.ok()

    assert reservation_files(ipam_dir) == {}
    assert node.pod_links() == []
    assert list(state_dir.glob("*.json")) == []
    assert [p.name for p in pods if not eth0_gone(p)] == [], "DEL must remove the pod side"
    print(f"\n[parallel] {N_PODS} ADDs {add_s:.2f}s, {2 * N_PODS} pings {ping_s:.2f}s, "
          f"{N_PODS} DELs {del_s:.2f}s ({os.cpu_count()} CPUs)")


def eth0_gone(pod: Pod) -> bool:
    links = json.loads(pod.ns.ip("-j", "link", "show"))
    return all(link["ifname"] != "eth0" for link in links)


# --- ferry-host-local and the reference host-local racing on one dataDir ---------------------

def race_ipam(data_dir: Path, plugin: str) -> dict[str, Any]:
    return {"type": "host-local" if plugin == REF_HOST_LOCAL else "ferry-host-local",
            "dataDir": str(data_dir),
            # 60 addresses per family; the gateways (.1, ::1) lie outside the ranges.
            "ranges": [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.10",
                         "rangeEnd": "10.40.0.69"}],
                       [{"subnet": "fd40::/64", "rangeStart": "fd40::10",
                         "rangeEnd": "fd40::4b"}]]}


def ipam_add(data_dir: Path, plugin: str, cid: str) -> CniCall:
    conf = {"cniVersion": "1.0.0", "name": "race", "type": "ptp",
            "ipam": race_ipam(data_dir, plugin)}
    return exec_plugin(plugin, "ADD", conf, container_id=cid, netns="/run/netns/unused-by-ipam")


def run_race(tmp_path: Path, per_plugin: int) -> tuple[dict[str, CniCall], dict[str, bytes]]:
    jobs = []
    for i in range(per_plugin):  # interleaved, so both kinds start at the same moments
        jobs += [(FERRY_IPAM, f"ferry{i:02d}"), (REF_HOST_LOCAL, f"ref{i:02d}")]
    started = time.monotonic()
    calls = pmap(lambda job: ipam_add(tmp_path, *job), jobs)
    print(f"\n[race] {len(jobs)} IPAM ADDs in {time.monotonic() - started:.2f}s")
    return ({cid: call for (_, cid), call in zip(jobs, calls, strict=True)},
            reservation_files(tmp_path / "race"))


def addresses(call: CniCall) -> list[str]:
    return [ip["address"].split("/")[0] for ip in call.json["ips"]]


@pytest.mark.skipif(not os.access(REF_HOST_LOCAL, os.X_OK), reason="reference host-local missing")
def test_ferry_and_reference_ipam_race_without_duplicates(tmp_path: Path) -> None:
    calls, files = run_race(tmp_path, 20)
    for cid, call in calls.items():
        assert call.rc == 0, f"{cid}: {call.stdout} {call.stderr}"
    got = {cid: addresses(call) for cid, call in calls.items()}
    v4 = [a[0] for a in got.values()]
    v6 = [a[1] for a in got.values()]
    assert len(set(v4)) == len(v4) == 40, f"duplicate IPv4: {sorted(v4)}"
    assert len(set(v6)) == len(v6) == 40, f"duplicate IPv6: {sorted(v6)}"
    # Each file names the container whose result holds that IP.
    assert files == {ip: f"{cid}\r\neth0".encode() for cid, ips in got.items() for ip in ips}


@pytest.mark.skipif(not os.access(REF_HOST_LOCAL, os.X_OK), reason="reference host-local missing")
def test_ferry_and_reference_ipam_race_to_exhaustion(tmp_path: Path) -> None:
    """40 + 40 ADDs for 60 addresses: exactly 60 win, 20 get an error and leave nothing."""
    calls, files = run_race(tmp_path, 40)
    winners = {cid: addresses(c) for cid, c in calls.items() if c.rc == 0}
    losers = [cid for cid, c in calls.items() if c.rc != 0]
    assert len(winners) == 60 and len(losers) == 20, (len(winners), losers)
    for cid in losers:
        err = calls[cid].json
        assert isinstance(err, dict) and err.get("code") and "no IP addresses" in err["msg"], err
    assert {cid[:3] for cid in winners} == {"fer", "ref"}, "both plugins must get addresses"
    all_v4 = {f"10.40.0.{i}" for i in range(10, 70)}
    all_v6 = {str(ipaddress.ip_address("fd40::10") + i) for i in range(60)}
    assert {a[0] for a in winners.values()} == all_v4
    assert {a[1] for a in winners.values()} == all_v6
    assert files == {ip: f"{cid}\r\neth0".encode() for cid, ips in winners.items() for ip in ips}
