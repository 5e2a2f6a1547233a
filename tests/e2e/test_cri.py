"""ferry under containerd 1.6 (Debian's) as a Kubernetes node runs it: the CRI runtime.v1 API
driven over gRPC as kubelet drives it (cri_support.Containerd: a private containerd inside a
harness Node's netns, ferry's conflist in its own conf dir, a locally built pause image).
Plus `ctr run --cni` (libcni in ctr) with ferry + the reference tuning plugin chained.

The orders are kubelet's: RunPodSandbox; StopPodSandbox (DEL); RemovePodSandbox (containerd
1.6 DELs again, CNI_NETNS=""); a pod's sandbox re-created under the same name (attempt + 1)
before or after the old one is stopped; containerd restarted while pods run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cri_api_pb2 as cri_api
import pytest
from cri_support import PAUSE_IMAGE, Containerd, Sandbox, build_pause_image, conflist_of, running
from harness import Agent, Node, uid

from plugin.wiring import REAP_GROUP

MODES = ["standalone", "ferryd"]


@contextlib.contextmanager
def cri_node(mode: str) -> Iterator[tuple[Node, dict[str, Any], Containerd]]:
    """A node, ferry's conf (relaying to a ferryd in the node, or standalone) and a private
    containerd whose CRI execs ferry for it."""
    with Node.create() as node, contextlib.ExitStack() as stack:
        agent = stack.enter_context(Agent.running(node)) if mode == "ferryd" else None
        conf = agent.conf if agent else node.conf()
        ctrd = stack.enter_context(running(node, conflist_of(conf)))
        yield node, conf, ctrd


@pytest.fixture(params=MODES)
def cri(request: pytest.FixtureRequest) -> Iterator[tuple[Node, dict[str, Any], Containerd]]:
    with cri_node(request.param) as out:
        yield out


@pytest.fixture
def cri_standalone() -> Iterator[tuple[Node, dict[str, Any], Containerd]]:
    with cri_node("standalone") as out:
        yield out


# --- observations ---------------------------------------------------------------------------

def nsexec(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} in {netns}: {proc.stdout} {proc.stderr}")
    return proc


def reaches(netns: str, ip: str) -> bool:
    return nsexec(netns, "ping", "-c", "1", "-W", "2", ip, check=False).returncode == 0


def records(conf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    d = Path(conf["stateDir"]) / conf["name"]
    return {p.name: json.loads(p.read_text()) for p in d.glob("*.json")} if d.is_dir() else {}


def reserved(conf: dict[str, Any]) -> dict[str, str]:
    """Reserved IP -> container id."""
    d = Path(conf["ipam"]["dataDir"]) / conf["name"]
    out = {}
    for p in d.iterdir() if d.is_dir() else []:
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(p.name)
            out[p.name] = p.read_bytes().split(b"\r\n")[0].decode()
    return out


def log_lines(conf: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(conf["log"]["file"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def host_veths(node: Node) -> dict[str, str]:
    """ferry's host veths in the node -> their owner tag."""
    return {link["ifname"]: link.get("ifalias", "")
            for link in json.loads(node.ns.ip("-j", "-d", "link", "show"))
            if link["ifname"].startswith("fry") and link.get("group") != str(REAP_GROUP)}


def assert_serving(node: Node, conf: dict[str, Any], ctrd: Containerd, sb: Sandbox) -> None:
    """sb is READY with ferry's addresses, its host veth is tagged as its own, its record and
    reservations are there, and it reaches the outside and is reached from it."""
    assert ctrd.ready(sb), f"sandbox {sb.name} is not READY"
    ips = ctrd.ips(sb)
    assert ipaddress.ip_address(ips[0]) in ipaddress.ip_network(node.pod_cidr4), ips
    assert ipaddress.ip_address(ips[1]) in ipaddress.ip_network(node.pod_cidr6), ips
    assert sb.id in " ".join(host_veths(node).values()), \
        f"no host veth owned by {sb.id}: {host_veths(node)}"
    assert records(conf)[f"{sb.id}:eth0.json"]["complete"]
    assert {ip for ip, cid in reserved(conf).items() if cid == sb.id} == set(ips)
    netns = ctrd.netns(sb)
    assert reaches(netns, node.ext_ip4), f"{sb.name} cannot reach the outside"
    assert nsexec(node.ext.path, "ping", "-c", "1", "-W", "2", ips[0], check=False) \
        .returncode == 0, f"the outside cannot reach {sb.name}"


def assert_released(conf: dict[str, Any], sb: Sandbox) -> None:
    assert f"{sb.id}:eth0.json" not in records(conf), "record left behind"
    assert sb.id not in reserved(conf).values(), "IP reservations left behind"


def assert_node_clean(node: Node, conf: dict[str, Any]) -> None:
    Node.snapshot(node)  # waits for ferryd's reaper
    assert host_veths(node) == {}, host_veths(node)
    assert records(conf) == {} and reserved(conf) == {}


# --- the tests --------------------------------------------------------------------------------

def test_run_pod_sandbox_gives_a_pod_ip_and_k8s_args_reach_ferry(
        cri_standalone: tuple[Node, dict[str, Any], Containerd]) -> None:
    node, conf, ctrd = cri_standalone
    version = ctrd.runtime.Version(cri_api.VersionRequest(version="v1"))
    assert version.runtime_name == "containerd" and version.runtime_version.startswith("1.6")
    sb = ctrd.run_sandbox("web-0", namespace="shop")
    assert_serving(node, conf, ctrd, sb)
    record = records(conf)[f"{sb.id}:eth0.json"]
    assert record["k8s_pod"] == ["shop", "web-0"]
    assert record["netns"] == ctrd.netns(sb)
    adds = [e for e in log_lines(conf) if e.get("cmd") == "ADD" and e["msg"] == "ADD ok"]
    assert [(e["k8s_namespace"], e["k8s_pod"], e["k8s_infra_id"], e["container"])
            for e in adds] == [("shop", "web-0", sb.id, sb.id)], adds


def test_two_sandboxes_reach_each_other(
        cri: tuple[Node, dict[str, Any], Containerd]) -> None:
    ctrd = cri[2]
    a, b = ctrd.run_sandbox("web-0"), ctrd.run_sandbox("web-1")
    a_ips, b_ips = ctrd.ips(a), ctrd.ips(b)
    for src, dst in ((a, b_ips), (b, a_ips)):
        for ip in dst:
            assert reaches(ctrd.netns(src), ip), f"{src.name} cannot reach {ip}"


def test_stop_and_remove_release_everything(
        cri: tuple[Node, dict[str, Any], Containerd]) -> None:
    node, conf, ctrd = cri
    sb = ctrd.run_sandbox("web-0")
    netns = ctrd.netns(sb)
    ctrd.stop_sandbox(sb)
    assert not ctrd.ready(sb)
    assert_released(conf, sb)
    ctrd.remove_sandbox(sb)
    assert sb.id not in ctrd.sandboxes()
    assert not Path(netns).exists(), "the sandbox netns is left"
    assert_node_clean(node, conf)
    dels = [e for e in log_lines(conf) if e.get("cmd") == "DEL" and e.get("container") == sb.id]
    assert len(dels) >= 2 and all(e["msg"] == "DEL ok" for e in dels), dels


def test_recreated_sandbox_survives_remove_of_the_old(
        cri: tuple[Node, dict[str, Any], Containerd]) -> None:
    """RunPodSandbox(1), StopPodSandbox(1): DEL 1; RunPodSandbox(attempt 1): ADD 2;
    RemovePodSandbox(1): DEL 1 again with CNI_NETNS="". Sandbox 2 keeps working."""
    node, conf, ctrd = cri
    old = ctrd.run_sandbox("web-0")
    ctrd.stop_sandbox(old)
    new = ctrd.run_sandbox("web-0", attempt=1)
    assert_serving(node, conf, ctrd, new)
    ctrd.remove_sandbox(old)
    assert_serving(node, conf, ctrd, new)
    assert_released(conf, old)
    ctrd.stop_sandbox(new)
    ctrd.remove_sandbox(new)
    assert_node_clean(node, conf)


def test_recreated_sandbox_while_the_old_is_still_running(
        cri: tuple[Node, dict[str, Any], Containerd]) -> None:
    """kubelet after a runtime restart: RunPodSandbox(attempt 1) while sandbox 1 still holds
    the pod's host veth name. The new sandbox takes it; stopping and removing 1 later leaves
    2 working and releases 1."""
    node, conf, ctrd = cri
    old = ctrd.run_sandbox("web-0")
    new = ctrd.run_sandbox("web-0", attempt=1)
    assert_serving(node, conf, ctrd, new)
    ctrd.stop_sandbox(old)
    ctrd.remove_sandbox(old)
    assert_serving(node, conf, ctrd, new)
    assert_released(conf, old)


def test_containerd_restarted_while_pods_run(
        cri: tuple[Node, dict[str, Any], Containerd]) -> None:
    node, conf, ctrd = cri
    a, b = ctrd.run_sandbox("web-0"), ctrd.run_sandbox("web-1")
    a_netns, b_ip = ctrd.netns(a), ctrd.ips(b)[0]
    ctrd.stop()
    assert reaches(a_netns, b_ip), "pods lost their network while containerd was down"
    ctrd.start()
    for sb in (a, b):
        assert_serving(node, conf, ctrd, sb)
    assert reaches(ctrd.netns(a), ctrd.ips(b)[0])
    for sb in (a, b):
        ctrd.stop_sandbox(sb)
        ctrd.remove_sandbox(sb)
    assert_node_clean(node, conf)


# --- ctr run --cni (libcni) -------------------------------------------------------------------

def test_ctr_run_cni_with_ferry_and_a_chained_plugin(
        cri_standalone: tuple[Node, dict[str, Any], Containerd]) -> None:
    """`ctr run --cni` reads /etc/cni/net.d and /opt/cni/bin only: it runs in a private mount
    namespace with a tmpfs over /etc/cni/net.d and our plugin dir bound over /opt/cni/bin
    (the real ones are never touched)."""
    node, conf, ctrd = cri_standalone
    tuning = {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}
    netd = ctrd.dir / "ctr-net.d"
    netd.mkdir()
    (netd / "10-ferry.conflist").write_text(json.dumps(conflist_of(conf, tuning)))
    ns, name = f"ferry-{uid()}", f"ctr-{uid()}"
    image = ctrd.dir / "ctr-image.tar"
    build_pause_image(image)
    ctrd.ctr("-n", ns, "images", "import", "--snapshotter", "native", str(image))
    script = (f"mount -t tmpfs tmpfs /etc/cni/net.d && cp {netd}/* /etc/cni/net.d/ && "
              f"mount --bind {ctrd.bin_dir} /opt/cni/bin && "
              f"exec nsenter --net={node.ns.path} /usr/bin/ctr -a {ctrd.socket} -n {ns} run "
              f"--cni --rm --snapshotter native --fifo-dir {ctrd.dir}/fifo {PAUSE_IMAGE} {name}")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid = wait_task_pid(ctrd, conf, ns, name, proc)
        netns = f"/proc/{pid}/ns/net"
        (rec,) = records(conf).values()
        assert rec["complete"] and rec["container_id"] == f"{ns}-{name}"
        ip = rec["ips"][0].split("/")[0]
        assert reaches(netns, node.ext_ip4)
        assert nsexec(node.ext.path, "ping", "-c", "1", "-W", "2", ip, check=False) \
            .returncode == 0
        arp_notify = nsexec(netns, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify").stdout
        assert arp_notify.strip() == "1", "the chained tuning plugin did not run"
        ctrd.ctr("-n", ns, "tasks", "kill", "-s", "SIGKILL", name)
        proc.wait(timeout=60)
        assert_node_clean(node, conf)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctrd.ctr("-n", ns, "tasks", "kill", "-s", "SIGKILL", name, check=False)
        ctrd.ctr("-n", ns, "containers", "rm", name, check=False)


def wait_task_pid(ctrd: Containerd, conf: dict[str, Any], ns: str, name: str,
                  proc: subprocess.Popen[str]) -> int:
    """The pid of the task `ctr run` started, once its network is set up (ctr prints
    nothing: ferry's record completing is the signal)."""
    deadline = time.monotonic() + 120  # only so a broken ctr cannot hang the suite
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"ctr run exited: {proc.communicate()}")
        for line in ctrd.ctr("-n", ns, "tasks", "ls", check=False).splitlines()[1:]:
            task, pid, status = line.split()[:3]
            recs = records(conf)
            if task == name and status == "RUNNING" and recs and \
                    all(r["complete"] for r in recs.values()):
                return int(pid)
        if time.monotonic() > deadline:
            raise AssertionError("ctr run's task never came up")
        time.sleep(0.2)
