"""Regression tests of the hardening issue: one per defect a reliability probe found, each
named after what it protects. Every request is exec'd as a runtime does (CNI_* env, config on
stdin, inside the node's netns), standalone and, where ferryd is involved, through it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    CNI_PATH,
    FERRY,
    FERRYD,
    Agent,
    CniCall,
    Node,
    Pod,
    exec_plugin,
    fill_disk,
    reservation_files,
    snapshot_diff,
    tmpfs,
)

ERROR_KEYS = {"cniVersion", "code", "msg", "details"}


def clean_error(call: CniCall, code: int) -> dict[str, Any]:
    """The spec's error object with `code`, exit status 1, nothing on stderr."""
    assert call.rc == 1, f"rc={call.rc}: {call.stdout} {call.stderr}"
    err = json.loads(call.stdout)
    assert set(err) == ERROR_KEYS and err["code"] == code, err
    assert "Traceback" not in call.stderr, call.stderr
    return err


def both_paths(node: Node, agent: Agent, command: str, pod: Pod, conf: dict[str, Any],
               **kw: Any) -> list[CniCall]:
    """The same request standalone and through ferryd."""
    env = kw.pop("env", {})
    return [node.cni(command, pod, conf, env={**env, "FERRY_STANDALONE": "1"}, **kw),
            node.cni(command, pod, conf, env=env, **kw)]


@pytest.fixture
def agent(node: Node) -> Iterator[Agent]:
    with Agent.running(node, dataplane="none") as a:
        yield a


def marker_plugin(tmp: Path) -> tuple[Path, Path]:
    """An executable that leaves a marker when run (as root, it would run anything)."""
    marker = tmp / "plugin-ran"
    prog = tmp / "evil" / "prog"
    prog.parent.mkdir()
    prog.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{}}'\n")
    prog.chmod(0o755)
    return prog, marker


# --- 1. ipam.type by path --------------------------------------------------------------------

def test_ipam_type_naming_a_path_is_never_executed(node: Node, agent: Agent) -> None:
    prog, marker = marker_plugin(node.tmp)
    relative = os.path.relpath(prog, CNI_PATH)  # "../../..", from CNI_PATH to it
    pod = node.new_pod()
    before = node.snapshot()
    for plugin_type in (str(prog), relative, f"../{prog.name}"):
        conf = node.conf(agentSocket=agent.socket, ipam={"type": plugin_type})
        for call in both_paths(node, agent, "ADD", pod, conf):
            err = clean_error(call, 7)
            assert "ipam.type" in err["msg"], err
        # gRPC AddNetwork takes a caller's config: the same validation.
        from plugin.agent import ferry_pb2 as pb

        reply = agent.stub().AddNetwork(pb.NetworkRequest(
            container_id=pod.container_id, netns=pod.ns.path, ifname="eth0",
            network_config_json=json.dumps(conf)))
        assert not reply.success and reply.error_code == 7, reply
    assert not marker.exists(), "a plugin named by path was executed"
    assert not (d := snapshot_diff(before, node.snapshot())), d


# --- 3. ferryd's own config --------------------------------------------------------------------

def ferryd(node: Node, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    conflist = node.tmp / f"bad-{len(list(node.tmp.iterdir()))}.conflist"
    plugin = {k: v for k, v in conf.items() if k not in ("name", "cniVersion")}
    conflist.write_text(json.dumps({"cniVersion": conf["cniVersion"], "name": conf["name"],
                                    "plugins": [plugin]}))
    return subprocess.run(["nsenter", f"--net={node.ns.path}", FERRYD, "--config",
                           str(conflist), "--grpc-socket", str(node.tmp / "g.sock"),
                           "--metrics", "off"], capture_output=True, text=True, timeout=120,
                          check=False)


def test_ferryd_refuses_a_config_whose_name_or_dirs_escape(node: Node) -> None:
    state = node.tmp / "state"
    escaped = node.tmp / "escaped"
    escaped.mkdir()
    planted = escaped / "ctr1.eth0.json"
    planted.write_text(json.dumps({"container_id": "ctr1", "ifname": "eth0", "netns": "",
                                   "host_veth": "fryplanted01", "complete": False}))
    cases = [
        (node.conf(name="../escaped", agentSocket=str(node.tmp / "d.sock")), "name"),
        (node.conf(stateDir="relative/state", agentSocket=str(node.tmp / "d.sock")),
         "stateDir"),
        (node.conf(agentSocket=str(node.tmp / "d.sock"),
                   ipam={"dataDir": "relative/ipam"}), "ipam.dataDir"),
    ]
    for conf, field_name in cases:
        proc = ferryd(node, conf)
        assert proc.returncode == 1, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "[7]" in lines[0] and field_name in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert planted.exists(), "ferryd's reconcile removed a record outside its stateDir"
    assert not state.exists() or not any(state.iterdir())


# --- 4, 5, 6: clean errors ---------------------------------------------------------------------

def test_deeply_nested_json_is_a_decode_error_on_both_paths(node: Node, agent: Agent) -> None:
    pod = node.new_pod()
    stdin = json.dumps(agent.conf)[:-1] + ', "deep": ' + "[" * 1000 + "]" * 1000 + "}"
    for env in ({"FERRY_STANDALONE": "1"}, {}):
        call = exec_plugin(FERRY, "ADD", stdin, node=node.ns, container_id=pod.container_id,
                           netns=pod.ns.path, env=env)
        assert "RecursionError" in clean_error(call, 6)["details"]


def test_bad_log_file_and_agent_socket_values_get_clean_errors(node: Node) -> None:
    pod = node.new_pod()
    afile = node.tmp / "afile"
    afile.write_text("x")
    none = str(node.tmp / "none.sock")  # no agent: not even one at the default socket
    for overrides, code in (({"log": {"file": "/tmp/a\0b"}, "agentSocket": none}, 7),
                            ({"agentSocket": "/run/" + "s" * 120}, 7),
                            ({"agentSocket": "relative.sock"}, 7)):
        clean_error(node.cni("ADD", pod, node.conf(**overrides)), code)
    stdin = json.dumps(node.conf()).replace('"name"', '"agentSocket": "/tmp/\\udcff", "name"')
    clean_error(exec_plugin(FERRY, "ADD", stdin.encode().replace(b"\\udcff", b"\xff"),
                            node=node.ns, container_id=pod.container_id, netns=pod.ns.path), 6)
    # A socket path through a regular file: no agent there, the binary does the work itself.
    conf = node.conf(agentSocket=f"{afile}/ferryd.sock")
    call = node.cni("ADD", pod, conf, env={"FERRY_RELAY_TIMEOUT": "soon"})
    assert call.rc == 0 and not call.stderr, call
    assert node.cni("DEL", pod, conf).rc == 0


@contextlib.contextmanager
def fake_agent(path: Path, reply: bytes | None) -> Iterator[None]:
    """An agent that reads the request and closes (reply None) or sends `reply` raw."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                if reply is not None:
                    conn.sendall(reply)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        thread.join()


@pytest.mark.parametrize("reply", [None, b"", b"\0\0\0\0", b"\0\0\0\x09{}"],
                         ids=["closes", "closes-at-once", "empty-frame", "short-frame"])
def test_agent_that_closes_early_or_sends_nothing_is_try_again(node: Node,
                                                                reply: bytes | None) -> None:
    sock = node.tmp / "fake.sock"
    pod = node.new_pod()
    before = node.snapshot()
    with fake_agent(sock, reply):
        call = node.cni("ADD", pod, node.conf(agentSocket=str(sock)))
    clean_error(call, 11)
    sock.unlink()
    assert not (d := snapshot_diff(before, node.snapshot())), d


def test_undecodable_container_id_gets_one_answer_on_both_paths(node: Node, agent: Agent) -> None:
    pod = node.new_pod()
    pod.container_id = "ab\udcff"  # os.fsencode: the bytes ab\xff in the environment
    for call in both_paths(node, agent, "ADD", pod, agent.conf):
        clean_error(call, 4)


# --- 7. DEL of the unknown -----------------------------------------------------------------------

def test_del_of_what_cannot_exist_succeeds_and_add_refuses_overlong_names(node: Node,
                                                                        agent: Agent) -> None:
    pod = node.new_pod()
    before = node.snapshot()
    pod.ifname = "lo"
    for call in both_paths(node, agent, "DEL", pod, agent.conf):
        assert call.rc == 0 and not call.stdout.strip(), call
    pod.ifname = "eth0"
    long_name = agent.conf | {"name": "n" * 250}
    for call in both_paths(node, agent, "DEL", pod, long_name):
        assert call.rc == 0, call
    for call in both_paths(node, agent, "ADD", pod, long_name):
        clean_error(call, 7)
    pod.container_id = "c" * 241
    for call in both_paths(node, agent, "DEL", pod, agent.conf):
        assert call.rc == 0, call
    for call in both_paths(node, agent, "ADD", pod, agent.conf):
        assert "too long" in clean_error(call, 4)["msg"]
    assert "lo" in pod.ns.ip("-o", "link", "show")
    assert not (d := snapshot_diff(before, node.snapshot())), d


# --- 8, 9: nothing left behind by a failed ADD ---------------------------------------------------

def test_add_failing_after_reservation_releases_the_ip(node: Node) -> None:
    node.add_pod("baseline")
    unreadable = node.tmp / "resolv-is-a-dir"
    unreadable.mkdir()
    before = node.snapshot()
    pod = node.new_pod()
    clean_error(node.cni("ADD", pod, node.conf(ipam={"resolvConf": str(unreadable)})), 5)
    assert not (d := snapshot_diff(before, node.snapshot())), d


def test_failed_add_on_new_stores_leaves_no_directory(node: Node) -> None:
    pod = node.new_pod()
    pod.ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")  # wiring fails
    fresh = node.tmp / "fresh"
    conf = node.conf(stateDir=str(fresh / "state"), ipam={"dataDir": str(fresh / "ipam")})
    call = node.cni("ADD", pod, conf)
    assert call.rc == 1 and "Traceback" not in call.stderr, call
    assert not fresh.exists(), sorted(str(p) for p in fresh.rglob("*"))


@pytest.mark.parametrize("full", ["state", "ipam"])
def test_full_disk_add_leaves_no_record_or_reservation(node: Node, full: str) -> None:
    """A 64 KiB tmpfs as the state or the IPAM dir, filled up: each failed ADD leaves no
    half-written record, no ownerless reservation; DEL still works."""
    with tmpfs(node.tmp / full, "64k") as disk:
        dirs = {"state": node.tmp / "state", "ipam": node.tmp / "ipam", full: disk}
        conf = node.conf(stateDir=str(dirs["state"]), ipam={"dataDir": str(dirs["ipam"])})
        first = node.add_pod("first", conf)  # the directories exist, the disk has room
        fill_disk(disk)
        before = node.snapshot()
        for _ in range(4):
            clean_error(node.cni("ADD", node.new_pod(), conf), 5)
        assert not (d := snapshot_diff(before, node.snapshot())), d
        assert not list(dirs["state"].rglob("*.tmp*"))
        node.cni("DEL", first, conf).ok()  # DEL works on a full disk
        assert reservation_files(dirs["ipam"] / node.network) == {}
        assert not list((dirs["state"] / node.network).glob("*.json"))


def iptables_state(node: Node) -> str:
    return "\n".join(line for tool in ("iptables-save", "ip6tables-save")
                     for line in node.ns.run(tool, check=False).splitlines()
                     if not line.startswith("#"))


def test_iptables_node_chain_goes_with_the_last_del(node: Node) -> None:
    conf = node.conf(dataplane="iptables", nodeIP=node.node_ip4)
    pods = [node.new_pod() for _ in range(2)]
    before = iptables_state(node)
    for pod in pods:
        pod.result = node.cni("ADD", pod, conf).ok()
    assert "FERRY-POSTROUTING" in iptables_state(node)
    node.cni("DEL", pods[0], conf).ok()
    assert "FERRY-POSTROUTING" in iptables_state(node), "a pod still needs the node chain"
    node.cni("DEL", pods[1], conf).ok()
    assert "FERRY-POSTROUTING" not in iptables_state(node)
    assert not (node.tmp / "state" / node.network / "iptables.node").exists()
    assert iptables_state(node).replace("[0:0]", "") == before.replace("[0:0]", "")


# --- 10. ferryd under abuse ----------------------------------------------------------------------

def open_idle(path: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        out.append(s)
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def ferryd_pid(agent: Agent) -> int:
    """The ferryd process (Agent.proc is the nsenter that execs it: the same pid)."""
    assert agent.proc is not None
    return agent.proc.pid


def test_idle_connections_hold_no_worker(node: Node, agent: Agent) -> None:
    idle = open_idle(agent.socket, 16)  # twice the workers
    try:
        pod = node.add_pod(conf=agent.conf)
        node.cni("DEL", pod, agent.conf).ok()
        idle[0].sendall(b"\0\0")  # half a length field, then silence
    finally:
        for s in idle:
            s.close()


def test_oversized_frame_is_refused_before_it_is_buffered(node: Node, agent: Agent) -> None:
    pid = ferryd_pid(agent)
    rss = rss_kib(pid)
    conns = open_idle(agent.socket, 4)
    for s in conns:
        with contextlib.suppress(OSError):  # ferryd answers after the header and closes
            s.sendall((100 << 20).to_bytes(4, "big") + b"x" * (1 << 20))
    for s in conns:
        s.settimeout(30)
        head = s.recv(4)
        body = b""
        while len(body) < int.from_bytes(head, "big"):
            body += s.recv(65536)
        err = json.loads(body[1:])
        assert body[0] == 1 and err["code"] == 6 and "too large" in err["msg"], err
        s.close()
    assert rss_kib(pid) - rss < 32 * 1024, "ferryd buffered the oversized frames"
    node.cni("DEL", node.new_pod(), agent.conf).ok()  # and it still serves


def test_sigterm_stops_ferryd_with_an_idle_connection_open(node: Node) -> None:
    agent = Agent(node, node.conf(agentSocket=str(node.tmp / "ferryd.sock"),
                                  dataplane="none")).start()
    idle = open_idle(agent.socket, 2)
    try:
        assert agent.stop() == 0
    finally:
        for s in idle:
            s.close()


def wait_for_log(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a hang guard, not a performance bound
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.05)


def test_add_whose_client_gave_up_is_not_left_behind(node: Node, agent: Agent) -> None:
    log = Path(agent.conf["log"]["file"])
    warm = node.add_pod(conf=agent.conf)  # the store's directories, IPv6 forwarding
    node.cni("DEL", warm, agent.conf).ok()
    before = node.snapshot()
    pod = node.new_pod()
    call = node.cni("ADD", pod, agent.conf, env={"FERRY_RELAY_TIMEOUT": "0.001"})
    clean_error(call, 11)
    wait_for_log(log, "relay: client gone")
    # Either not run at all or undone: the runtime's retry finds the node as it was.
    wait_for_log(log, f'"container": "{pod.container_id}"')
    time.sleep(0.2)  # an undo in progress logs its end; let it finish before comparing
    deadline = time.monotonic() + 30
    while (d := snapshot_diff(before, node.snapshot())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not d, d
    assert pod.ns.ip("-o", "link", "show").count("eth0") == 0
    pod.result = node.cni("ADD", pod, agent.conf).ok()  # the retry
    node.cni("DEL", pod, agent.conf).ok()


# --- 12. damaged reservation store ---------------------------------------------------------------

def test_bad_reservation_file_blocks_nothing(node: Node, agent: Agent) -> None:
    net_dir = node.tmp / "ipam" / node.network
    net_dir.mkdir(parents=True)
    (net_dir / "10.20.0.2").write_bytes(b"\xff\xfe not utf-8")
    conf = agent.conf | {"cniVersion": "1.1.0"}
    for env in ({"FERRY_STANDALONE": "1"}, {}):
        pod = node.add_pod(conf=conf)
        assert "10.20.0.2" not in pod.ips(4), "a skipped file's IP is still taken"
        prev = conf | {"prevResult": pod.result}
        for command, c in (("CHECK", prev), ("STATUS", conf)):
            assert node.cni(command, pod, c, env=env).rc == 0
        gc = conf | {"cni.dev/valid-attachments": [{"containerID": pod.container_id,
                                                     "ifname": "eth0"}]}
        assert node.cni("GC", pod, gc, env=env).rc == 0
        node.cni("DEL", pod, conf, env=env).ok()
    assert (net_dir / "10.20.0.2").exists(), "a file ferry does not understand is not deleted"
    assert "not a reservation file" in Path(agent.conf["log"]["file"]).read_text()


def test_lock_that_is_a_directory_blocks_nothing(node: Node, agent: Agent) -> None:
    net_dir = node.tmp / "ipam" / node.network
    (net_dir / "lock").mkdir(parents=True)
    for env in ({"FERRY_STANDALONE": "1"}, {}):
        pod = node.new_pod()
        pod.result = node.cni("ADD", pod, agent.conf, env=env).ok()
        node.cni("DEL", pod, agent.conf, env=env).ok()
    assert reservation_files(net_dir) == {}
    assert stat.S_ISDIR((net_dir / "lock").stat().st_mode)
