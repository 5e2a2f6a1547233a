"""A private etcd for the cluster-mode tests: Debian's etcd 3.4 on ports of its own, one member
or three, each with its own data dir in a temp dir, always stopped and removed. On loopback,
or inside a test's network namespace on an address there (the simulated nodes reach it
over their uplinks: the host's loopback is not theirs)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    tls: bool = False

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


@dataclass
class Etcd:
    tmp: Path
    members: list[Member] = field(default_factory=list)
    netns: str | None = None  # the network namespace etcd and etcdctl run in
    certs: Path | None = None  # TLS: ca.pem, server.pem/-key.pem, client.pem/-key.pem here

    def _tls_client_args(self) -> list[str]:
        if self.certs is None:
            return []
        c = self.certs
        return [f"--cacert={c / 'ca.pem'}", f"--cert={c / 'client.pem'}",
                f"--key={c / 'client-key.pem'}"]

    def _tls_server_args(self) -> list[str]:
        if self.certs is None:
            return []
        c = self.certs
        return ["--cert-file", str(c / "server.pem"), "--key-file", str(c / "server-key.pem"),
                "--trusted-ca-file", str(c / "ca.pem"), "--client-cert-auth"]

    def _argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, member: Member) -> None:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        log = open(self.tmp / f"{member.name}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "ETCD_UNSUPPORTED_ARCH": os.uname().machine.replace(
            "x86_64", "amd64").replace("aarch64", "arm64")}
        member.proc = subprocess.Popen(self._argv(
            ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
             "--listen-client-urls", member.endpoint, "--advertise-client-urls", member.endpoint,
             "--listen-peer-urls", member.peer_url,
             "--initial-advertise-peer-urls", member.peer_url,
             "--initial-cluster", cluster, "--initial-cluster-token", self.tmp.name,
             "--initial-cluster-state", "new", "--heartbeat-interval", "50",
             "--election-timeout", "500", "--logger", "zap", "--log-outputs", "stderr",
            *self._tls_server_args()),
            stdout=log, stderr=log, env=env)
        log.close()

    def stop(self, member: Member, sig: int = 15) -> None:
        if member.proc is not None and member.proc.poll() is None:
            member.proc.send_signal(sig)
            try:
                member.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait()
        member.proc = None

    def wait_healthy(self, members: list[Member] | None = None, timeout: float = 60) -> None:
        """Until every given member (default all) answers a linearizable read."""
        deadline = time.monotonic() + timeout
        for m in members or self.members:
            while True:
                proc = subprocess.run(self._argv(ETCDCTL, "--endpoints", m.endpoint,
                                                 *self._tls_client_args(),
                                                 "--command-timeout=2s", "get", "/health-probe"),
                                      capture_output=True, text=True, check=False,
                                      env={**os.environ, "ETCDCTL_API": "3"})
                if proc.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd {m.name} not healthy: {proc.stderr}"
                                         f"{(self.tmp / f'{m.name}.log').read_text()[-2000:]}")
                time.sleep(0.2)

    def ctl(self, *args: str) -> str:
        proc = subprocess.run(self._argv(ETCDCTL, "--endpoints", ",".join(self.endpoints),
                                         *self._tls_client_args(), *args),
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "ETCDCTL_API": "3"})
        return proc.stdout

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.ctl("get", "--prefix", "--keys-only", prefix).splitlines() if k]

    @classmethod
    @contextlib.contextmanager
    def running(cls, members: int = 1, netns: str | None = None,
                host: str = "127.0.0.1", tls: bool = False) -> Iterator[Etcd]:
        """`netns`: run inside that namespace, listening on `host` (an address there); the
        ports are then fixed ones, the namespace being the test's own. `tls`: client URLs
        over TLS with client certificates required (a CA made for the run)."""
        tmp = Path(tempfile.mkdtemp(prefix="ferry-etcd-"))
        etcd = cls(tmp, netns=netns, certs=make_certs(tmp / "certs", host) if tls else None)
        ports = [(2379 + 2 * i, 2380 + 2 * i) if netns else (free_port(), free_port())
                 for i in range(members)]
        etcd.members = [Member(f"m{i}-{tmp.name[-6:]}", c, p, tmp / f"m{i}", host, tls=tls)
                        for i, (c, p) in enumerate(ports)]
        try:
            for m in etcd.members:
                etcd.start(m)
            etcd.wait_healthy()
            yield etcd
        finally:
            for m in etcd.members:
                etcd.stop(m, sig=9)
            shutil.rmtree(tmp, ignore_errors=True)


def make_certs(d: Path, host: str) -> Path:
    """A throw-away CA, a server certificate for `host` and a client certificate (openssl)."""
    d.mkdir(parents=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ferry-ca",
        "-keyout", "ca-key.pem", "-out", "ca.pem")
    for name, ext in (("server", f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=ferry-{name}",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return d
