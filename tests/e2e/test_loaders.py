"""The two BPF loaders end to end: the prebuilt ELF objects (the default of every dataplane
suite) and bcc (a smoke set here: load, SNAT seen from ext, pins reused), switching between
them, and a node with neither kernel headers nor bcc, where `auto` must still pick eBPF."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from dataplane_support import (
    ENI_GW,
    ENI_NODE,
    DataplaneNode,
    add_eni,
    arrivals,
    client,
    dataplane_node,
    recorder,
)
from harness import FERRYD, Agent

pytestmark = pytest.mark.e2e

# A private mount namespace without kernel headers and without bcc (nor any other Debian
# Python package): empty tmpfs over /lib/modules/<release> and /usr/lib/python3/dist-packages.
# Slave propagation, as the DaemonSet's HostToContainer: pods' netns mounts made later on the
# host are seen inside, the tmpfs never leave it.
RELEASE = os.uname().release
BARE = ("mount -t tmpfs ferry-bare /lib/modules/$(uname -r) && "
        "mount -t tmpfs ferry-bare /usr/lib/python3/dist-packages && exec \"$@\"")
PYTHON = str(Path(FERRYD).parent / "python")


def bare(*argv: str) -> list[str]:
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", BARE, "sh", *argv]


def _snat_seen_from_ext(en: DataplaneNode, port: int) -> None:
    pod = en.add_pod()
    with recorder(en.node.ext, "tcp", en.node.ext_ip4, port) as srv:
        client(pod.ns, "tcp", en.node.ext_ip4, port)
        [(src, sport, _dev)] = arrivals(srv, 1)
    assert src == en.node.node_ip4 and 61000 <= sport <= 65535


def test_bcc_loader_smoke() -> None:
    with dataplane_node("ebpf", loader="bcc") as en:
        again = en.load()
        assert (again["loader"], again["compiled"]) == ("bcc", False)  # pins reused
        assert "bcc" in again["loaderWhy"]
        assert en.inspect()["loader"] == "bcc"
        _snat_seen_from_ext(en, 8180)


def test_switching_loader_reloads_and_keeps_pods_working() -> None:
    with dataplane_node("ebpf") as en:
        first = en.load()
        assert (first["loader"], first["compiled"]) == ("elf", False)
        assert "prebuilt" in first["loaderWhy"]
        pod = en.add_pod("switch")
        en.conf_path.write_text(json.dumps({**en.conf, "loader": "bcc"}))
        switched = en.load()
        assert (switched["loader"], switched["compiled"]) == ("bcc", True)
        assert switched["hash"] != first["hash"]
        assert set(switched["progIds"].values()).isdisjoint(first["progIds"].values())
        assert switched["synced"] == 1  # the pod re-synced into the fresh maps
        with recorder(en.node.ext, "tcp", en.node.ext_ip4, 8181) as srv:
            client(pod.ns, "tcp", en.node.ext_ip4, 8181)
            [(src, _port, _dev)] = arrivals(srv, 1)
        assert src == en.node.node_ip4
        en.conf_path.write_text(json.dumps(en.conf))
        assert en.load()["loader"] == "elf"


def test_elf_loader_refuses_stale_objects_and_cflags(tmp_path: Path) -> None:
    with dataplane_node("ebpf", load=False, loader="elf") as en:
        proc = en.ctl("load", "--json", "--cflag=-DFERRY_X=1", check=False)
        assert proc.returncode != 0 and "bcc loader" in proc.stderr
        assert not os.path.exists(en.pin_dir)


def test_auto_without_kernel_headers_or_bcc_uses_the_elf_objects() -> None:
    """ferryd in a mount namespace where /lib/modules/<release> is empty and bcc cannot be
    imported: auto still picks eBPF (the ELF loader), and relayed ADDs give working SNAT and
    pod-ENI redirection."""
    probe = subprocess.run(bare(PYTHON, "-c", "import bcc"), capture_output=True, text=True,
                           check=False)
    assert probe.returncode != 0 and "bcc" in probe.stderr, "bcc is importable in the bare ns"
    listing = subprocess.run(bare("ls", "-A", f"/lib/modules/{RELEASE}"), capture_output=True,
                             text=True, check=True)
    assert listing.stdout == ""

    with dataplane_node("auto", load=False) as en:
        node = en.node
        add_eni(node)
        conf = {**en.conf, "agentSocket": str(node.tmp / "ferryd.sock")}
        agent = Agent(node, conf, prefix=tuple(bare()))
        agent.start()
        try:
            info = en.inspect()
            assert info["loaded"] and info["loader"] == "elf"
            log = Path(conf["log"]["file"]).read_text()
            # ferryd's load says which loader and why (the objects match the sources).
            assert "ebpf dataplane loaded and pinned by the elf loader (prebuilt objects" in log

            plain = node.add_pod("bare-plain", conf=conf)
            eni_pod = node.add_pod("bare-eni", conf={
                **conf, "runtimeConfig": {"podENI": {"device": "eni1", "gateway": ENI_GW}}})
            eni_ip = eni_pod.ips(4)[0]
            node.ext.ip("route", "add", f"{eni_ip}/32", "via", ENI_NODE, "dev", "vpc1")
            with recorder(node.ext, "tcp", node.ext_ip4, 8182) as srv:
                client(plain.ns, "tcp", node.ext_ip4, 8182)
                client(eni_pod.ns, "tcp", node.ext_ip4, 8182)
                (src_plain, _, dev_plain), (src_eni, _, dev_eni) = arrivals(srv, 2)
            assert (src_plain, dev_plain) == (node.node_ip4, "ext0")  # SNAT by eBPF
            assert (src_eni, dev_eni) == (eni_ip, "vpc1")  # redirected through its ENI
            assert [r["ip"] for r in en.inspect()["redirects"]] == [eni_ip]
            for pod in (plain, eni_pod):
                node.cni("DEL", pod, conf).ok()
        finally:
            agent.stop()
