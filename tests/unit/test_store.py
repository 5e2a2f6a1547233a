"""The on-disk reservation store: the reference host-local's dataDir layout, byte for byte."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from plugin.ipam.store import Store

A = ipaddress.ip_address


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(str(tmp_path), "net1")
    s.dir.mkdir(parents=True)
    return s


def test_layout_and_file_format(store: Store, tmp_path: Path) -> None:
    assert store.dir == tmp_path / "net1"
    with store.locked():
        assert store.reserve(A("10.1.0.2"), "ctr1", "eth0", 0)
        assert store.reserve(A("fd00::2"), "ctr1", "eth0", 1)
    assert (store.dir / "10.1.0.2").read_bytes() == b"ctr1\r\neth0"
    assert (store.dir / "fd00::2").read_bytes() == b"ctr1\r\neth0"
    assert (store.dir / "last_reserved_ip.0").read_bytes() == b"10.1.0.2"
    assert (store.dir / "last_reserved_ip.1").read_bytes() == b"fd00::2"
    assert (store.dir / "lock").exists()
    assert sorted(p.name for p in store.dir.iterdir()) == \
        ["10.1.0.2", "fd00::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]


def test_ipv6_file_name_is_the_canonical_text(store: Store) -> None:
    """host-local (Go) names files by net.IP.String(): RFC 5952, '::' only for 2+ zero groups."""
    ip = A("fd00:0:0:1:0:2:0:3")
    assert store.reserve(ip, "c", "eth0", 0)
    assert (store.dir / "fd00::1:0:2:0:3").is_file()
    assert store.reservations() == {ip: ("c", "eth0")}


def test_container_id_is_trimmed(store: Store) -> None:
    assert store.reserve(A("10.1.0.2"), " ctr1 \n", "eth0", 0)
    assert (store.dir / "10.1.0.2").read_bytes() == b"ctr1\r\neth0"


def test_reserve_is_exclusive(store: Store) -> None:
    assert store.reserve(A("10.1.0.2"), "ctr1", "eth0", 0)
    assert not store.reserve(A("10.1.0.2"), "ctr2", "eth0", 0)
    assert (store.dir / "10.1.0.2").read_bytes() == b"ctr1\r\neth0"
    # A failed reservation does not move the round-robin cursor either.
    assert store.reserve(A("10.1.0.3"), "ctr3", "eth0", 0)
    assert not store.reserve(A("10.1.0.2"), "ctr2", "eth0", 0)
    assert store.last_reserved(0) == A("10.1.0.3")


def test_last_reserved(store: Store) -> None:
    assert store.last_reserved(0) is None
    (store.dir / "last_reserved_ip.0").write_text("10.1.0.9")
    (store.dir / "last_reserved_ip.1").write_text("garbage")
    assert store.last_reserved(0) == A("10.1.0.9")
    assert store.last_reserved(1) is None
    assert store.last_reserved(2) is None


def test_reservations_reads_both_formats_and_ignores_the_rest(store: Store) -> None:
    (store.dir / "10.1.0.2").write_bytes(b"new\r\neth0")
    (store.dir / "10.1.0.3").write_bytes(b"old")
    (store.dir / "10.1.0.4").write_bytes(b"old2\n")  # hand-written, trailing newline
    (store.dir / "fd00::9").write_bytes(b"v6\r\nnet1")
    (store.dir / "last_reserved_ip.0").write_text("10.1.0.2")
    (store.dir / "lock").touch()
    (store.dir / "notes.txt").write_text("10.1.0.5")
    assert store.reservations() == {
        A("10.1.0.2"): ("new", "eth0"),
        A("10.1.0.3"): ("old", ""),
        A("10.1.0.4"): ("old2", ""),
        A("fd00::9"): ("v6", "net1"),
    }


def test_reservations_of_a_missing_dir(tmp_path: Path) -> None:
    assert Store(str(tmp_path), "nothing-here").reservations() == {}


def test_owned_by(store: Store) -> None:
    for ip, owner in [("fd00::2", "c1\r\neth0"), ("10.1.0.10", "c1\r\neth0"),
                      ("10.1.0.9", "c1\r\neth0"), ("10.1.0.3", "c1\r\neth1"),
                      ("10.1.0.4", "c2\r\neth0"), ("10.1.0.5", "c11\r\neth0")]:
        (store.dir / ip).write_text(owner)
    # Sorted: IPv4 first, numerically (10.1.0.9 before 10.1.0.10).
    assert store.owned_by("c1", "eth0") == [A("10.1.0.9"), A("10.1.0.10"), A("fd00::2")]
    assert store.owned_by("c1", "eth1") == [A("10.1.0.3")]
    assert store.owned_by("c1", "eth2") == []
    assert store.owned_by("c", "eth0") == []


def test_old_format_counts_as_held_for_any_ifname(store: Store) -> None:
    """host-local's GetByID matches "<id>" files as well as "<id>\\r\\n<ifname>"."""
    (store.dir / "10.1.0.3").write_text("old")
    assert store.owned_by("old", "eth0") == [A("10.1.0.3")]
    assert store.owned_by("old", "net9") == [A("10.1.0.3")]


def test_release_by_id_and_ifname(store: Store) -> None:
    for ip, owner in [("10.1.0.2", "c1\r\neth0"), ("fd00::2", "c1\r\neth0"),
                      ("10.1.0.3", "c1\r\neth1"), ("10.1.0.4", "c2\r\neth0")]:
        (store.dir / ip).write_text(owner)
    assert store.release_owned_by("c1", "eth0") == [A("10.1.0.2"), A("fd00::2")]
    assert sorted(store.reservations()) == [A("10.1.0.3"), A("10.1.0.4")]
    assert store.release_owned_by("c1", "eth0") == []  # idempotent
    assert store.release_owned_by("c1", "eth1") == [A("10.1.0.3")]
    assert store.reservations() == {A("10.1.0.4"): ("c2", "eth0")}


def test_release_old_format_file(store: Store) -> None:
    (store.dir / "10.1.0.5").write_text("old")
    assert store.release_owned_by("old", "eth0") == [A("10.1.0.5")]
    assert not (store.dir / "10.1.0.5").exists()


def test_release_keeps_old_format_file_while_the_ifname_matches_elsewhere(store: Store) -> None:
    """As host-local's ReleaseByID: id-only files are a fallback, used only when no file names
    this ifname. An id-only file may be another interface's of the same container (written
    before an upgrade); freeing it with eth1's DEL would hand out an IP still in use."""
    (store.dir / "10.1.0.5").write_text("old")
    (store.dir / "10.1.0.6").write_text("old\r\neth1")
    assert store.release_owned_by("old", "eth1") == [A("10.1.0.6")]
    assert store.reservations() == {A("10.1.0.5"): ("old", "")}
    assert store.release_owned_by("old", "eth0") == [A("10.1.0.5")]
    assert store.reservations() == {}


def test_release_of_a_missing_ip_is_silent(store: Store) -> None:
    store.release(A("10.1.0.77"))


def test_locked_creates_dir_and_lock(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "deep" / "data"), "netX")
    with s.locked():
        assert (tmp_path / "deep" / "data" / "netX" / "lock").is_file()


def test_locked_is_mutually_exclusive(tmp_path: Path) -> None:
    """Two Store objects (two open file descriptions, as two processes) exclude each other."""
    first, second = Store(str(tmp_path), "n"), Store(str(tmp_path), "n")
    entered = threading.Event()

    def contender() -> None:
        with second.locked():
            entered.set()

    with first.locked():
        t = threading.Thread(target=contender)
        t.start()
        assert not entered.wait(0.3), "second locker got in while the first held the lock"
    assert entered.wait(5), "second locker never got the lock after release"
    t.join()


@pytest.mark.skipif(shutil.which("flock") is None, reason="util-linux flock(1) missing")
def test_locked_waits_for_another_process_flock(store: Store) -> None:
    """The reference plugin flock()s <dir>/lock; ferry must wait for it too."""
    holder = subprocess.Popen(["flock", str(store.dir / "lock"), "-c", "echo held; sleep 0.6"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with store.locked():
            waited = time.monotonic() - started
        assert waited > 0.3, f"ferry took the lock after {waited:.2f}s while flock(1) held it"
    finally:
        holder.kill()
        holder.wait()


def test_a_directory_in_the_network_dir_is_not_a_reservation(store: Store) -> None:
    assert store.reserve(ipaddress.ip_address("10.1.2.3"), "c1", "eth0", 0)
    (store.dir / "10.1.2.4").mkdir()
    assert list(store.reservations()) == [ipaddress.ip_address("10.1.2.3")]
    assert store.release_owned_by("c9", "eth0") == []


@pytest.mark.parametrize("killed_in", ["write", "link"])
def test_a_writer_killed_mid_reserve_leaves_no_ownerless_reservation(
        store: Store, tmp_path: Path, killed_in: str) -> None:
    """SIGKILL (here: os._exit) while a reservation is being written. An empty <ip> file
    would hold the IP for good (no DEL or GC can match its owner); the IP must stay free and
    the next reserve must work and clean up after the dead writer."""
    target = "os.fdopen" if killed_in == "write" else "os.link"
    script = (
        "import os, sys, ipaddress\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from plugin.ipam.store import Store\n"
        f"s = Store({str(tmp_path)!r}, 'net1')\n"
        f"{target} = lambda *a, **k: os._exit(9)\n"
        "with s.locked():\n"
        "    s.reserve(ipaddress.ip_address('10.1.0.9'), 'dead', 'eth0', 0)\n")
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == 9, "the writer was not killed where the test meant"
    assert not (store.dir / "10.1.0.9").exists()
    with store.locked():
        assert store.reserve(A("10.1.0.9"), "ctr2", "eth0", 0)
    assert (store.dir / "10.1.0.9").read_bytes() == b"ctr2\r\neth0"
    assert sorted(p.name for p in store.dir.iterdir()) == \
        ["10.1.0.9", "last_reserved_ip.0", "lock"]


def test_a_scratch_file_left_linked_to_a_reservation_does_not_rewrite_it(
        store: Store, tmp_path: Path) -> None:
    """A writer killed after linking its scratch file to the IP's name, before removing the
    scratch name: both names are one file. The next reserve must not write through it."""
    script = (
        "import os, sys, ipaddress\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from plugin.ipam.store import Store\n"
        f"s = Store({str(tmp_path)!r}, 'net1')\n"
        "real_link = os.link\n"
        "def link_then_die(a, b):\n"
        "    real_link(a, b)\n"
        "    os._exit(9)\n"
        "os.link = link_then_die\n"
        "with s.locked():\n"
        "    s.reserve(ipaddress.ip_address('10.1.0.7'), 'dead', 'eth0', 0)\n")
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    assert (store.dir / "10.1.0.7").read_bytes() == b"dead\r\neth0"
    with store.locked():
        assert store.reserve(A("10.1.0.8"), "ctr2", "eth0", 0)
    assert (store.dir / "10.1.0.7").read_bytes() == b"dead\r\neth0"
    assert (store.dir / "10.1.0.8").read_bytes() == b"ctr2\r\neth0"
