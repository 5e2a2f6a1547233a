"""ferry as a user installs it: a wheel built from the tree, installed into a fresh venv (system
site-packages for Debian's bcc, as scripts/setup.sh makes it), used with no checkout in sight.

From that venv: `ferryctl load`, `inspect --json` and `unload` of an ebpf network in a scratch
node namespace (programs pinned and attached, BTF on the maps, nothing left after unload), and
a pod added through the CNI launchers deploy/install.sh writes for that venv, whose traffic to
ext leaves SNATed by the programs of the wheel's own prebuilt BPF objects (the wheel build
compiles them with clang; without clang it ships none and auto falls back to bcc).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataplane_support import client, dataplane_node, recorder, seen
from harness import exec_plugin

from loader.layouts import MAPS, PROGRAMS

REPO = Path(__file__).resolve().parents[2]
BPF_FILES = {"bpf/__init__.py", "bpf/common.h", "bpf/snat.c", "bpf/redirect.c"}
OBJECTS = {"bpf/snat.o", "bpf/redirect.o"}
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".cni-bin", "build", "*.egg-info",
                                     "__pycache__")


def run(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          cwd="/", **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv holding ferry from a wheel of this tree, and a CNI bin dir of its launchers."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = tmp / "src"  # a copy: the build writes build/ and *.egg-info where it runs
    shutil.copytree(REPO, build, ignore=COPY_IGNORE)
    for obj in OBJECTS:  # the wheel build makes its own
        (build / obj).unlink(missing_ok=True)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", build)
    [wheel] = (tmp / "dist").glob("ferry_cni-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= BPF_FILES, f"BPF sources missing from the wheel: {BPF_FILES - names}"
    assert names >= OBJECTS, f"prebuilt objects missing from the wheel: {OBJECTS - names}"
    venv = tmp / "venv"
    run("/usr/bin/python3", "-m", "venv", "--system-site-packages", venv)
    run(venv / "bin/python", "-m", "pip", "install", "-q", wheel)
    where = run(venv / "bin/python", "-I", "-c", "import plugin, bpf; print(plugin.__file__)")
    assert where.stdout.startswith(str(venv)), where.stdout  # not the checkout
    bin_dir = tmp / "bin"
    run("bash", REPO / "deploy/install.sh", "--bin-only",
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_BIN_DIR": str(bin_dir),
             "FERRY_VENV": str(venv)})
    launcher = (bin_dir / "ferry").read_text()
    assert str(REPO) not in launcher and f"{venv}/lib/" in launcher, launcher
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_wheel_install_loads_inspects_and_unloads_ebpf(installed: Path) -> None:
    ferryctl = installed / "venv/bin/ferryctl"
    with dataplane_node("ebpf", load=False) as dp:
        def ctl(*args: str) -> dict:
            out = run("nsenter", f"--net={dp.node.ns.path}", ferryctl, *args, "--json",
                      "--config", dp.conf_path)
            return json.loads(out.stdout)

        loaded = ctl("load")
        assert loaded["compiled"] is True and loaded["loader"] == "elf"
        assert f"{installed}/venv/lib/" in loaded["loaderWhy"]  # the wheel's own objects
        for prog in PROGRAMS:
            shown = json.loads(run("bpftool", "-j", "prog", "show", "pinned",
                                   f"{dp.pin_dir}/progs/{prog}").stdout)
            assert shown["name"] == prog
        for name in MAPS:
            shown = json.loads(run("bpftool", "-j", "map", "show", "pinned",
                                   f"{dp.pin_dir}/maps/{name}").stdout)
            assert shown.get("btf_id"), f"{name} carries no BTF"
        egress = dp.node.ns.run("tc", "filter", "show", "dev", "uplink0", "egress")
        assert "ferry_snat_eg" in egress

        # A pod through the wheel's launchers: its traffic leaves with the node's IP.
        pod = dp.node.new_pod()
        pod.result = exec_plugin(str(installed / "bin/ferry"), "ADD", dp.conf,
                                 node=dp.node.ns, container_id=pod.container_id,
                                 netns=pod.ns.path, args=pod.args,
                                 path=f"{installed}/bin:/usr/lib/cni").ok()
        with recorder(dp.node.ext, "tcp", dp.node.ext_ip4, 8081) as srv:
            client(pod.ns, "tcp", dp.node.ext_ip4, 8081)
            [(src, _)] = seen(srv, 1)
        assert src == dp.node.node_ip4
        info = ctl("inspect")
        assert info["loaded"] and [p["ip"] for p in info["pods"]] == pod.ips(4) + pod.ips(6)
        exec_plugin(str(installed / "bin/ferry"), "DEL", dp.conf, node=dp.node.ns,
                    container_id=pod.container_id, netns=pod.ns.path, args=pod.args,
                    path=f"{installed}/bin:/usr/lib/cni").ok()

        ctl("unload")
        assert not Path(dp.pin_dir).exists()
        assert "ferry" not in dp.node.ns.run("tc", "filter", "show", "dev", "uplink0",
                                             "egress")
        assert "ferry" not in dp.node.ns.run("tc", "filter", "show", "dev", "uplink0",
                                             "ingress")


def test_wheel_without_clang_ships_no_objects(tmp_path: Path) -> None:
    build = tmp_path / "src"
    shutil.copytree(REPO, build, ignore=COPY_IGNORE)  # bpf/*.o of the tree included
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", build,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FERRY_CLANG": "/nonexistent/clang"})
    [wheel] = (tmp_path / "dist").glob("ferry_cni-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= BPF_FILES and not names & OBJECTS
