"""A private containerd (Debian's 1.6) with ferry as its CNI, driven through the CRI as kubelet
drives it.

- Its own root, state, sockets and config under a temp dir; the system's containerd (if any)
  is never touched. It runs inside a harness Node's network namespace, so the CNI plugins it
  execs wire host veths there, and its sandbox netns are mounted under its state dir
  (netns_mounts_under_state_dir).
- No registry is reachable: the sandbox ("pause") image is built here as an OCI layout tar
  holding Debian's static busybox (entrypoint `sleep`), imported with `ctr images import`.
- Cleanup, whatever failed: every sandbox removed through the CRI, containerd stopped, the
  shims it started (found by its socket in their command line) killed by pid, mounts under
  its dirs unmounted, then the dirs removed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cri_api_pb2 as cri
import cri_api_pb2_grpc as cri_grpc
import grpc
from harness import CNI_PATH, Node, sh, uid

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
BUSYBOX = "/bin/busybox"
REFERENCE_PLUGINS = "/usr/lib/cni"
PAUSE_IMAGE = "localhost/ferry-pause:1"
K8S_NS = "k8s.io"  # containerd namespace of the CRI's containers and images


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def build_pause_image(path: Path, name: str = PAUSE_IMAGE) -> None:
    """An OCI layout tar: one layer with busybox, Entrypoint `sleep` (the pause container
    must keep running), named `name` for `ctr images import`."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ("bin", "dev", "proc", "sys", "etc", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in ("sh", "sleep", "ip", "ping", "nc", "cat"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    raw = layer.getvalue()
    diff_id, _ = _blob(raw)
    layer_digest, layer_gz = _blob(gzip.compress(raw, mtime=0))
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_digest, _ = _blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer_gz)}],
    }).encode()
    manifest_digest, _ = _blob(manifest)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}]})
    with tarfile.open(path, "w") as tar:
        def add(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index.encode())
        for digest, data in ((layer_digest, layer_gz), (config_digest, config),
                             (manifest_digest, manifest)):
            add(f"blobs/sha256/{digest.removeprefix('sha256:')}", data)


def cni_bin_dir(dest: Path) -> Path:
    """ferry's binaries with the reference plugins the runtime also needs (loopback) or that
    a chain uses, in one dir: containerd and libcni take a single plugin dir here."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in Path(REFERENCE_PLUGINS).iterdir():
        (dest / src.name).unlink(missing_ok=True)
        (dest / src.name).symlink_to(src)
    # ferry's launchers copied, not linked: `ctr run --cni` binds this dir over /opt/cni/bin,
    # where a link to /opt/cni/bin/ferry would then point at itself.
    for src in Path(CNI_PATH).glob("ferry*"):
        (dest / src.name).unlink(missing_ok=True)
        shutil.copy2(src.resolve(), dest / src.name)
    return dest


@dataclass
class Sandbox:
    id: str
    name: str
    namespace: str
    attempt: int


@dataclass
class Containerd:
    node: Node
    conflist: dict[str, Any]
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ferry-ctrd-")))
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    # containerd namespaces used: `ctr run` keeps runc's state in /run/containerd/runc/<ns>.
    namespaces: set[str] = field(default_factory=lambda: {K8S_NS})

    @property
    def socket(self) -> str:
        return str(self.dir / "containerd.sock")

    @property
    def conf_dir(self) -> Path:
        return self.dir / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.dir / "cni-bin"

    def write_config(self) -> None:
        self.conf_dir.mkdir(exist_ok=True)
        (self.conf_dir / "10-ferry.conflist").write_text(json.dumps(self.conflist))
        cni_bin_dir(self.bin_dir)
        cri_key = '[plugins."io.containerd.grpc.v1.cri"'
        (self.dir / "config.toml").write_text(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir}/opt"
{cri_key}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # These VMs refuse to lower oom_score_adj (the sandbox asks for -998): keep it >= ours.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
{cri_key}.cni]
  bin_dir = "{self.bin_dir}"
  conf_dir = "{self.conf_dir}"
  max_conf_num = 1
{cri_key}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"
{cri_key}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{cri_key}.containerd.runtimes.runc.options]
  Root = "{self.dir}/runc"
""")

    def start(self) -> None:
        """Start containerd in the node's netns and wait until its CRI answers."""
        log = open(self.dir / "containerd.log", "ab")  # noqa: SIM115 (kept for the process)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.node.ns.path}", CONTAINERD, "--config",
             str(self.dir / "config.toml")], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60  # only so a broken containerd cannot hang the suite
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited: {self.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                if os.path.exists(self.socket):
                    self.channel = grpc.insecure_channel(f"unix:{self.socket}")
                    self.runtime.Version(cri.VersionRequest(version="v1"), timeout=5)
                    return
            if self.channel is not None:
                self.channel.close()
                self.channel = None
            if time.monotonic() > deadline:
                raise AssertionError(f"containerd's CRI did not answer: {self.log_tail()}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop containerd only (the shims and their sandboxes keep running, as on a node)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "containerd.log").read_text(errors="replace")[-n:]
        return ""

    @property
    def runtime(self) -> cri_grpc.RuntimeServiceStub:
        assert self.channel is not None
        return cri_grpc.RuntimeServiceStub(self.channel)

    def ctr(self, *args: str, check: bool = True) -> str:
        if args[:1] == ("-n",):
            self.namespaces.add(args[1])
        return sh("nsenter", f"--net={self.node.ns.path}", CTR, "-a", self.socket, *args,
                  check=check)

    def import_pause_image(self) -> None:
        tar = self.dir / "pause.tar"
        build_pause_image(tar)
        self.ctr("-n", K8S_NS, "images", "import", "--snapshotter", "native", str(tar))

    # --- the CRI calls kubelet makes ----------------------------------------------------------

    def run_sandbox(self, name: str, namespace: str = "default", attempt: int = 0) -> Sandbox:
        meta = cri.PodSandboxMetadata(name=name, namespace=namespace, uid=f"uid-{name}",
                                      attempt=attempt)
        config = cri.PodSandboxConfig(metadata=meta, hostname=name,
                                      log_directory=str(self.dir / "pods" / name))
        resp = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=120)
        return Sandbox(resp.pod_sandbox_id, name, namespace, attempt)

    def stop_sandbox(self, sb: Sandbox) -> None:
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sb.id),
                                    timeout=120)

    def remove_sandbox(self, sb: Sandbox) -> None:
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sb.id),
                                      timeout=120)

    def status(self, sb: Sandbox) -> tuple[cri.PodSandboxStatus, dict[str, Any]]:
        resp = self.runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=sb.id, verbose=True), timeout=30)
        return resp.status, json.loads(resp.info.get("info", "{}"))

    def ready(self, sb: Sandbox) -> bool:
        return self.status(sb)[0].state == cri.SANDBOX_READY

    def ips(self, sb: Sandbox) -> list[str]:
        net = self.status(sb)[0].network
        return [ip for ip in (net.ip, *(a.ip for a in net.additional_ips)) if ip]

    def netns(self, sb: Sandbox) -> str:
        """The sandbox's network namespace path, from its OCI spec."""
        spec = self.status(sb)[1]["runtimeSpec"]
        return next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network")

    def sandboxes(self) -> list[str]:
        return [s.id for s in self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                          timeout=30).items]

    # --- cleanup -------------------------------------------------------------------------------

    def _shim_pids(self) -> list[int]:
        """The shims this containerd started: their command line names its socket."""
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    if b"containerd-shim" in argv[0] and self.socket.encode() in argv:
                        pids.append(int(proc.name))
        return pids

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is None:
                self.start()
            for sid in self.sandboxes():
                with contextlib.suppress(grpc.RpcError):
                    self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid),
                                                timeout=60)
                    self.runtime.RemovePodSandbox(
                        cri.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        with contextlib.suppress(Exception):
            self.stop()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Mounts under our dirs (netns, shm, rootfs), deepest first.
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                  .splitlines()]
        for mnt in sorted((m for m in mounts if m.startswith(str(self.dir))), reverse=True):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        # The shims' socket dir is fixed in 1.6 (/run/containerd/s); the shims remove their
        # sockets, and rmdir takes the dirs only if nothing else (another containerd) is left.
        # `ctr run` keeps runc's state under /run/containerd/runc/<ns>: ours (unique names)
        # go whole; k8s.io's only if empty (another containerd may use that name).
        for ns in self.namespaces - {K8S_NS}:
            shutil.rmtree(f"/run/containerd/runc/{ns}", ignore_errors=True)
        for d in (f"/run/containerd/runc/{K8S_NS}", "/run/containerd/s",
                  "/run/containerd/fifo", "/run/containerd/runc", "/run/containerd"):
            with contextlib.suppress(OSError):
                os.rmdir(d)


@contextlib.contextmanager
def running(node: Node, conflist: dict[str, Any]) -> Iterator[Containerd]:
    ctrd = Containerd(node=node, conflist=conflist)
    try:
        ctrd.write_config()
        ctrd.start()
        ctrd.import_pause_image()
        yield ctrd
    finally:
        ctrd.cleanup()


def conflist_of(conf: dict[str, Any], *chained: dict[str, Any]) -> dict[str, Any]:
    """A conflist of the network conf `conf` (ferry) and chained plugin entries."""
    plugin = {k: v for k, v in conf.items() if k not in ("name", "cniVersion")}
    return {"cniVersion": conf["cniVersion"], "name": conf["name"],
            "plugins": [plugin, *chained]}


def short_id() -> str:
    return uid()
