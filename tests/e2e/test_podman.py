"""A real container runtime as the peer: podman (CNI backend) execs ferry for its containers.

podman runs the plugins in the host's network namespace, so this test wires host veths on
the machine itself; it restores the forwarding sysctl it finds and checks that nothing of
ferry's is left. The image is a busybox rootfs made here (no registry is reachable).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CNI_PATH, sh, uid

BUSYBOX = "/bin/busybox"
IMAGE = "localhost/ferry-busybox:test"
FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


class Podman:
    def __init__(self, tmp: Path, network: str, subnet: str) -> None:
        self.tmp = tmp
        self.network = network
        (tmp / "net").mkdir()
        (tmp / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{CNI_PATH}"]\n'
            f'network_config_dir = "{tmp / "net"}"\n')
        conflist = {"cniVersion": "1.0.0", "name": network, "plugins": [{
            # podman runs plugins in the host's netns: routing only, so that the test never
            # touches the machine's own netfilter or tc (the dataplanes have their own suites).
            "type": "ferry", "mtu": 1400, "dataplane": "none", "stateDir": str(tmp / "state"),
            "log": {"file": str(tmp / "ferry.log")},
            "ipam": {"type": "host-local", "dataDir": str(tmp / "ipam"),
                     "ranges": [[{"subnet": subnet}]]}}]}
        (tmp / "net" / f"{network}.conflist").write_text(json.dumps(conflist))
        self.env = {**os.environ, "CONTAINERS_CONF": str(tmp / "containers.conf")}
        self.base = ["podman", "--root", str(tmp / "root"), "--runroot", str(tmp / "runroot"),
                     "--storage-driver", "vfs"]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.base, *args], env=self.env, capture_output=True,
                              text=True, check=False, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr}")
        return proc

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # runc, and ulimits these VMs allow (see DESIGN.md)
        return self("run", "--runtime", "runc", "--ulimit", "nofile=20000:20000",
                    "--ulimit", "nproc=4096:4096", "--network", self.network, *args,
                    check=check)

    def import_busybox(self) -> None:
        rootfs = self.tmp / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in ("sh", "ping", "ip", "sleep", "cat"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        sh("tar", "-C", str(rootfs), "-cf", str(self.tmp / "rootfs.tar"), ".")
        self("import", str(self.tmp / "rootfs.tar"), IMAGE)


@pytest.fixture
def podman() -> Iterator[Podman]:
    if not (shutil.which("podman") and shutil.which("runc") and os.path.exists(BUSYBOX)):
        pytest.fail("podman, runc and busybox-static are installed by scripts/setup.sh")
    tmp = Path(tempfile.mkdtemp(prefix="ferry-podman-"))
    forward = FORWARD.read_text()
    pm = Podman(tmp, f"ferrypm{uid()}", "10.31.0.0/24")
    try:
        pm.import_busybox()
        yield pm
    finally:
        pm("rm", "--all", "--force", "--time", "0", check=False)
        pm("system", "reset", "--force", check=False)  # drops the test's image store
        FORWARD.write_text(forward)
        shutil.rmtree(tmp, ignore_errors=True)


def _host_links() -> str:
    return sh("ip", "-o", "link", "show")


def test_podman_containers_talk_through_ferry(podman: Podman) -> None:
    before = _host_links()
    server = podman.run("-d", "--name", "server", IMAGE, "sleep", "120").stdout.strip()
    info = json.loads(podman("inspect", server).stdout)[0]
    server_ip = info["NetworkSettings"]["Networks"][podman.network]["IPAddress"]
    assert server_ip.startswith("10.31.0.")
    ipam_dir = podman.tmp / "ipam" / podman.network
    assert (ipam_dir / server_ip).read_bytes().startswith(server.encode())

    # A second container reaches the first through the host's /32 routes.
    client = podman.run("--rm", IMAGE, "sh", "-c",
                        f"ip -4 addr show eth0 && ping -c 2 -W 2 {server_ip}", check=False)
    assert client.returncode == 0, client.stdout + client.stderr
    assert "noprefixroute" in client.stdout  # ferry's point-to-point addressing

    podman("rm", "--force", "--time", "0", server)
    assert not any(p.name[0].isdigit() for p in ipam_dir.iterdir())  # every IP released
    assert list((podman.tmp / "state" / podman.network).iterdir()) == []
    assert _host_links().count("fry") == before.count("fry")
