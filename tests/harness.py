"""Test harness: network namespaces, a simulated node, and CNI execs as a runtime does them.

The "node" is a network namespace of the test's own; the CNI binary runs inside it through
`nsenter --net` (mounts untouched, so bpffs and the files are the host's). Every namespace
name carries a random suffix so that parallel runs on one machine never collide.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CNI_PATH = os.environ.get("FERRY_CNI_PATH", "/opt/cni/bin")
FERRY = f"{CNI_PATH}/ferry"
FERRY_IPAM = f"{CNI_PATH}/ferry-host-local"
REF_PTP = "/usr/lib/cni/ptp"
REF_HOST_LOCAL = "/usr/lib/cni/host-local"


def uid() -> str:
    return secrets.token_hex(3)


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


class Netns:
    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}-{uid()}"
        self.path = f"/run/netns/{self.name}"
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> str:
        return sh("ip", "-n", self.name, *args, check=check)

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, input=input)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    @property
    def exists(self) -> bool:
        return os.path.exists(self.path)


@dataclass
class CniCall:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def ok(self) -> Any:
        assert self.rc == 0, f"CNI call failed rc={self.rc}: {self.stdout} {self.stderr}"
        return self.json

    def error(self, code: int | None = None) -> dict[str, Any]:
        assert self.rc != 0, f"expected a CNI error, got success: {self.stdout}"
        err = self.json
        assert isinstance(err, dict) and {"code", "msg"} <= err.keys(), self.stdout
        if code is not None:
            assert err["code"] == code, f"expected code {code}, got {err}"
        return err


def exec_plugin(plugin: str, command: str, conf: dict[str, Any] | str | bytes | None, *,
                node: Netns | None = None, container_id: str = "", netns: str = "",
                ifname: str = "eth0", args: str = "", path: str = CNI_PATH,
                env: dict[str, str] | None = None, omit: tuple[str, ...] = ()) -> CniCall:
    """Exec a CNI plugin with CNI_* variables and the config on stdin, as a runtime does."""
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": path, **(env or {})}
    full = {k: v for k, v in full.items() if v and k not in omit}
    if isinstance(conf, dict):
        stdin = json.dumps(conf).encode()
    elif isinstance(conf, str):
        stdin = conf.encode()
    else:
        stdin = conf or b""
    argv = [plugin] if node is None else ["nsenter", f"--net={node.path}", plugin]
    proc = subprocess.run(argv, input=stdin, env=full, capture_output=True, check=False,
                          timeout=120)
    return CniCall(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@dataclass
class Pod:
    name: str
    ns: Netns
    container_id: str
    ifname: str = "eth0"
    result: dict[str, Any] | None = None

    @property
    def args(self) -> str:
        return f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={self.name};IgnoreUnknown=1"

    def ips(self, version: int) -> list[str]:
        assert self.result is not None
        return [ip["address"].split("/")[0] for ip in self.result.get("ips", [])
                if (":" in ip["address"]) == (version == 6)]


@dataclass
class Node:
    """A simulated node: its own netns, an uplink to an 'ext' host netns, and a temp dir."""

    ns: Netns
    ext: Netns
    tmp: Path
    network: str
    pods: list[Pod] = field(default_factory=list)
    node_ip4: str = "10.99.0.1"
    node_ip6: str = "fd99::1"
    ext_ip4: str = "10.99.0.2"
    ext_ip6: str = "fd99::2"
    pod_cidr4: str = "10.20.0.0/24"
    pod_cidr6: str = "fd20::/120"
    # False for SNAT tests: ext can then answer a pod only if its packets left with the node IP.
    ext_routes_pods: bool = True

    @classmethod
    @contextlib.contextmanager
    def create(cls, **kw: Any) -> Iterator[Node]:
        tmp = Path(tempfile.mkdtemp(prefix="ferry-test-"))
        ns = Netns("fnode")
        ext = Netns("fext")
        node = cls(ns=ns, ext=ext, tmp=tmp, network=f"net-{uid()}", **kw)
        try:
            node._uplink()
            yield node
        finally:
            node.cleanup()

    def _uplink(self) -> None:
        sh("ip", "link", "add", "uplink0", "netns", self.ns.name, "type", "veth", "peer",
           "name", "ext0", "netns", self.ext.name)
        self.ns.ip("addr", "add", f"{self.node_ip4}/24", "dev", "uplink0")
        self.ns.ip("-6", "addr", "add", f"{self.node_ip6}/64", "dev", "uplink0", "nodad")
        self.ext.ip("addr", "add", f"{self.ext_ip4}/24", "dev", "ext0")
        self.ext.ip("-6", "addr", "add", f"{self.ext_ip6}/64", "dev", "ext0", "nodad")
        self.ns.ip("link", "set", "uplink0", "up")
        self.ext.ip("link", "set", "ext0", "up")
        # The external host routes the pod CIDRs back via the node (unless told otherwise).
        if self.ext_routes_pods:
            self.ext.ip("route", "add", self.pod_cidr4, "via", self.node_ip4)
            self.ext.ip("-6", "route", "add", self.pod_cidr6, "via", self.node_ip6)

    def conf(self, version: str = "1.0.0", **overrides: Any) -> dict[str, Any]:
        ipam = {"type": "host-local", "dataDir": str(self.tmp / "ipam"),
                "ranges": [[{"subnet": self.pod_cidr4}], [{"subnet": self.pod_cidr6}]]}
        ipam.update(overrides.pop("ipam", {}))
        conf = {"cniVersion": version, "name": self.network, "type": "ferry", "mtu": 1400,
                "stateDir": str(self.tmp / "state"),
                "log": {"file": str(self.tmp / "log" / "ferry.log"), "level": "debug"},
                "ipam": ipam}
        conf.update(overrides)
        return conf

    def new_pod(self, name: str | None = None) -> Pod:
        name = name or f"pod-{uid()}"
        pod = Pod(name=name, ns=Netns("fpod"), container_id=f"ctr{uid()}{uid()}")
        self.pods.append(pod)
        return pod

    def cni(self, command: str, pod: Pod, conf: dict[str, Any] | None = None,
            plugin: str = FERRY, **kw: Any) -> CniCall:
        kw.setdefault("args", pod.args)
        return exec_plugin(plugin, command, conf if conf is not None else self.conf(),
                           node=self.ns, container_id=pod.container_id, netns=pod.ns.path,
                           ifname=pod.ifname, **kw)

    def add_pod(self, name: str | None = None, conf: dict[str, Any] | None = None) -> Pod:
        pod = self.new_pod(name)
        pod.result = self.cni("ADD", pod, conf).ok()
        return pod

    def snapshot(self) -> dict[str, str]:
        """What a failed or rejected request must leave unchanged on the node. Taken once
        ferryd's reaper has removed the veth pairs that DELs handed to it, and once IPv6 DAD
        has finished on the node's links (it adds local routes when it does)."""
        wait_reaped(self.ns)
        wait_settled(self.ns)
        files = sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*")
                       if "log" not in p.parts)
        return {
            "links": self.ns.ip("-d", "link", "show"),
            "addrs": self.ns.ip("addr", "show"),
            "routes4": self.ns.ip("route", "show", "table", "all"),
            "routes6": self.ns.ip("-6", "route", "show", "table", "all"),
            "rules": self.ns.ip("rule", "show"),
            "files": "\n".join(files),
        }

    def pod_links(self) -> list[str]:
        """The node's host veths (ferry names them fry<hash>), sorted."""
        links = json.loads(self.ns.ip("-j", "link", "show"))
        return sorted(link["ifname"] for link in links if link["ifname"].startswith("fry"))

    def cleanup(self) -> None:
        for pod in self.pods:
            pod.ns.delete()
        self.ns.delete()
        self.ext.delete()
        shutil.rmtree(self.tmp, ignore_errors=True)
        # Pins a ferryd or `ferryctl load` of this network left (they outlive processes by
        # design); the filters using them went with the node netns.
        shutil.rmtree(f"/sys/fs/bpf/ferry/{self.network}", ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir("/sys/fs/bpf/ferry")  # the default root, when no other network uses it


def plugin_dir(tmp: Path, name: str, plugin: str) -> Path:
    """A CNI_PATH of its own under `tmp` holding `plugin` as `name` (skips the test if the
    plugin is missing): ferry then execs it as an IPAM type it does not build in."""
    if not os.access(plugin, os.X_OK):
        pytest.skip(f"{plugin} missing")
    d = tmp / "cni-bin"
    d.mkdir()
    (d / name).symlink_to(plugin)
    return d


def reservation_files(net_dir: Path) -> dict[str, bytes]:
    """The reservation files of a host-local dataDir network dir (ferry's or the reference
    plugin's), by IP, with their contents."""
    out = {}
    for p in sorted(net_dir.iterdir()) if net_dir.is_dir() else []:
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(p.name)
            out[p.name] = p.read_bytes()
    return out


def wait_settled(ns: Netns, timeout: float = 5.0) -> None:
    """Wait until no address in `ns` is still tentative (IPv6 DAD of a fresh link, e.g. the
    node's uplink), so that two Node.snapshot()s around a CNI call differ only by that call."""
    deadline = time.monotonic() + timeout
    while "tentative" in ns.ip("addr", "show"):
        if time.monotonic() > deadline:
            raise AssertionError(f"addresses in {ns.name} still tentative after {timeout}s")
        time.sleep(0.05)


def reaping(ns: Netns) -> str:
    """The links in `ns` that a DEL handed to ferryd's reaper and that still exist."""
    from plugin.wiring import REAP_GROUP

    return ns.ip("-o", "link", "show", "group", str(REAP_GROUP))


def wait_reaped(ns: Netns, timeout: float = 10.0) -> None:
    """Wait until ferryd's reaper has deleted what DEL handed it (it runs right away; the
    deadline only keeps a broken reaper from hanging the suite)."""
    deadline = time.monotonic() + timeout
    while reaping(ns):
        if time.monotonic() > deadline:
            raise AssertionError(f"links in {ns.name} not reaped after {timeout}s: "
                                 f"{reaping(ns)}")
        time.sleep(0.01)


def snapshot_diff(before: dict[str, str], after: dict[str, str]) -> str:
    """A readable unified diff of two Node.snapshot()s ('' when equal), for assert messages:
    `assert not (d := snapshot_diff(before, node.snapshot())), d`."""
    import difflib

    out = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key, ""), after.get(key, "")
        if a != b:
            out.append(f"--- {key}")
            out += difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=1)
    return "\n".join(out)


def ping(ns: Netns, dst: str, count: int = 1) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", ns.name, "ping", "-c", str(count), "-W", "2",
                           "-i", "0.2", dst], capture_output=True, check=False)
    return proc.returncode == 0


def tcp_roundtrip(client: Netns, server: Netns, server_ip: str, port: int = 8080) -> str:
    """Open a TCP connection client -> server; return the peer address the server saw."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET6 if ':' in {server_ip!r} else socket.AF_INET)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(({server_ip!r},{port}));s.listen(1);print('ready',flush=True)\n"
        "s.settimeout(10);c,a=s.accept();c.sendall(c.recv(64));print(a[0],flush=True)\n"
    )
    srv = server.popen("python3", "-c", code, stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        assert srv.stdout.readline().strip() == "ready"
        client_code = (
            "import socket\n"
            f"c=socket.create_connection(({server_ip!r},{port}),timeout=5)\n"
            "c.sendall(b'ferry');assert c.recv(64)==b'ferry'\n"
        )
        client.run("python3", "-c", client_code)
        return srv.stdout.readline().strip()
    finally:
        srv.kill()
        srv.wait()


FERRYD = os.environ.get("FERRYD", str(Path(__file__).resolve().parents[1] / ".venv/bin/ferryd"))


class Agent:
    """ferryd running inside a Node's netns with its sockets in the node's temp dir."""

    def __init__(self, node: Node, conf: dict[str, Any], prefix: tuple[str, ...] = ()) -> None:
        self.node = node
        self.conf = conf
        self.prefix = prefix  # argv ferryd runs under (e.g. a private mount namespace)
        self.socket = conf["agentSocket"]
        self.grpc_socket = str(node.tmp / "ferryd-grpc.sock")
        self.conflist = node.tmp / "ferry.conflist"
        plugin = {k: v for k, v in conf.items() if k not in ("name", "cniVersion")}
        self.conflist.write_text(json.dumps({"cniVersion": conf["cniVersion"],
                                             "name": conf["name"], "plugins": [plugin]}))
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Agent:
        self.proc = subprocess.Popen(
            [*self.prefix, "nsenter", f"--net={self.node.ns.path}", FERRYD, "--config",
             str(self.conflist),
             "--grpc-socket", self.grpc_socket, "--metrics", "127.0.0.1:9661"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"ferryd did not start: {self.proc.stderr.read()}")
        assert json.loads(line)["ready"]
        return self

    def stop(self, sig: int = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        self.proc = None
        return rc

    def stub(self) -> Any:
        import grpc

        from plugin.agent import ferry_pb2_grpc

        channel = grpc.insecure_channel(f"unix:{self.grpc_socket}")
        return ferry_pb2_grpc.FerryStub(channel)

    @classmethod
    @contextlib.contextmanager
    def running(cls, node: Node, prefix: tuple[str, ...] = (),
                **overrides: Any) -> Iterator[Agent]:
        agent = cls(node, node.conf(agentSocket=str(node.tmp / "ferryd.sock"), **overrides),
                    prefix)
        agent.start()
        try:
            yield agent
        finally:
            if agent.proc is not None:
                agent.stop()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs of the test's own at `path` (a disk that can be filled up)."""
    path.mkdir(parents=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "ferry-test", str(path))
    try:
        yield path
    finally:
        sh("umount", "-l", str(path), check=False)


def fill_disk(path: Path, prefix: str = "") -> list[Path]:
    """Fill the file system of `path` to the last byte; the files that did it (named with
    `prefix`: another prefix tops up a disk that deletions freed again)."""
    files = [path / f"{prefix}filler"]
    with contextlib.suppress(OSError), open(files[0], "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    for i in range(256):  # the partly used pages take small files still
        files.append(path / f"{prefix}crumb{i}")
        with contextlib.suppress(OSError), open(files[-1], "wb") as f:
            f.write(b"\0" * 256)
    return files
