"""Unit-level guards of the hardening issue (no root, no netns): config validation, the
IPAM store against damage and rollback, private log rotation, the relay's edge cases."""

from __future__ import annotations

import ipaddress
import logging
import os
import posix
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin import relay
from plugin.config import IPAMConfig, LogConfig, NetConf, parse
from plugin.ipam.allocator import Allocator
from plugin.ipam.store import Store
from plugin.protocol import CniError, parse_request


def netconf(**kw: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "n", "ipam": {
        "type": "host-local", "dataDir": "/var/lib/cni/networks",
        "ranges": [[{"subnet": "10.9.0.0/29"}]], **kw.pop("ipam", {})}, **kw}


@pytest.mark.parametrize("ipam_type", ["/bin/sh", "../../../tmp/x/prog", "a/b", "..", "x\0y",
                                       "..prog", "a\\b"])
def test_ipam_type_must_be_a_bare_plugin_name(ipam_type: str) -> None:
    with pytest.raises(CniError) as e:
        parse(NetConf, netconf(ipam={"type": ipam_type}))
    assert e.value.code == 7 and "ipam.type" in e.value.msg


@pytest.mark.parametrize("overrides, where", [
    ({"stateDir": "var/lib/ferry"}, "stateDir"),
    ({"ipam": {"dataDir": "./ipam"}}, "ipam.dataDir"),
    ({"ipam": {"dataDir": "/" + "d" * 256}}, "ipam.dataDir"),
    ({"agentSocket": "ferryd.sock"}, "agentSocket"),
    ({"agentSocket": "/run/" + "s" * 110}, "agentSocket"),
    ({"log": {"file": "/var/log/a\0b"}}, "log.file"),
    ({"name": "../escaped"}, "name"),
    ({"name": "n" * 201}, "name"),
])
def test_paths_and_names_that_could_escape_or_diverge_are_config_errors(
        overrides: dict[str, Any], where: str) -> None:
    with pytest.raises(CniError) as e:
        parse(NetConf, netconf(**overrides))
    assert e.value.code == 7 and where in e.value.msg, e.value


def test_deep_json_and_huge_configs_are_decode_errors() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    for stdin in (b"[" * 100_000 + b"]" * 100_000, b'{"a": "' + b"x" * (2 << 20) + b'"}'):
        with pytest.raises(CniError) as e:
            parse_request(env, stdin)
        assert e.value.code == 6


def test_del_of_overlong_ids_is_nothing_to_do_and_add_refuses_them() -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c" * 300, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin", "CNI_NETNS": "/x"}
    assert parse_request(env, b'{"cniVersion": "1.0.0", "name": "n"}').nothing_to_delete
    with pytest.raises(CniError) as e:
        parse_request({**env, "CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n"}')
    assert e.value.code == 4


@pytest.fixture
def private_log(tmp_path: Path) -> Iterator[Path]:
    from plugin.log import log, setup

    saved = list(log.handlers)
    for h in saved:
        log.removeHandler(h)
    path = tmp_path / "logdir" / "ferry.log"
    setup(LogConfig(file=str(path), maxBytes=4096, backups=2))
    try:
        yield path
    finally:
        for h in list(log.handlers):
            h.close()
            log.removeHandler(h)
        for h in saved:
            log.addHandler(h)


def test_log_files_stay_private_after_rotation(private_log: Path) -> None:
    from plugin.log import log

    old = os.umask(0o022)
    try:
        for i in range(200):
            log.warning("line %d %s", i, "x" * 100)
    finally:
        os.umask(old)
    files = sorted(private_log.parent.iterdir())
    assert [f.name for f in files] == ["ferry.log", "ferry.log.1", "ferry.log.2"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(private_log.parent.stat().st_mode) == 0o700
    assert logging.getLogger("ferry").handlers


def ipam_conf(data_dir: Path) -> IPAMConfig:
    return parse(IPAMConfig, {"type": "host-local", "dataDir": str(data_dir),
                              "ranges": [[{"subnet": "10.9.0.0/29"}], [{"subnet": "fd09::/125"}]]})


def test_undecodable_reservation_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "n")
    store.dir.mkdir()
    (store.dir / "10.9.0.2").write_bytes(b"\xff\xfe")
    (store.dir / "10.9.0.3").write_bytes(b"ctr\r\neth0")
    assert store.reservations() == {ipaddress.ip_address("10.9.0.3"): ("ctr", "eth0")}
    alloc = Allocator(ipam_conf(tmp_path), "n")
    got = alloc.allocate("c2", "eth0", [])
    assert str(got.ips[0].address.ip) == "10.9.0.4"  # .2 stays taken, .3 is held
    assert alloc.release("c2", "eth0") and alloc.gc(set()) == [ipaddress.ip_address("10.9.0.3")]


def test_lock_that_is_a_directory_is_locked_as_it_is(tmp_path: Path) -> None:
    alloc = Allocator(ipam_conf(tmp_path), "n")
    (tmp_path / "n" / "lock").mkdir(parents=True)
    alloc.allocate("c", "eth0", [])
    assert len(alloc.release("c", "eth0")) == 2


def test_rollback_puts_the_store_back_as_it_was(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "ipam"
    alloc = Allocator(ipam_conf(fresh), "n")
    _, undo = alloc.reserve("c", "eth0", [])
    assert (fresh / "n" / "last_reserved_ip.0").exists()
    alloc.rollback(undo)
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))
    # On a store in use: the pointers go back, the directory stays.
    alloc = Allocator(ipam_conf(tmp_path), "n")
    alloc.allocate("a", "eth0", [])
    before = {p.name: p.read_bytes() for p in (tmp_path / "n").iterdir()}
    _, undo = alloc.reserve("b", "eth0", [])
    alloc.rollback(undo)
    assert {p.name: p.read_bytes() for p in (tmp_path / "n").iterdir()} == before


def test_release_on_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    alloc = Allocator(ipam_conf(tmp_path / "none"), "n")
    assert alloc.release("c", "eth0") == [] and alloc.exhausted_sets() == []
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("raw, want", [(b"soon", 60.0), (b"-1", 60.0), (b"nan", 60.0),
                                       (b"inf", 60.0), (b"2.5", 2.5), (b"", 60.0)])
def test_relay_timeout_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch, raw: bytes,
                                                 want: float) -> None:
    monkeypatch.setitem(posix.environ, b"FERRY_RELAY_TIMEOUT", raw)
    assert relay._timeout() == want


def test_relay_decodes_env_as_os_environ_does() -> None:
    frame = relay.encode_request({b"CNI_CONTAINERID": b"ab\xff"}, b"{}")
    env, _ = relay.decode_request(frame[4:])
    assert env["CNI_CONTAINERID"] == os.fsdecode(b"ab\xff")


def test_unusable_socket_paths_mean_no_agent(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("")
    for path in ("/run/" + "s" * 200, f"{afile}/sock", "/a\0b", "/tmp/\udcff-none"):
        assert relay.call(path, {b"CNI_COMMAND": b"ADD"}, b"{}") is None
    big = b"x" * (relay.MAX_REQUEST_BYTES + 1)
    assert relay.call(str(tmp_path / "none.sock"), {}, big) is None


@pytest.mark.parametrize("text", ["[]", '{"plugins": 5}', '{"plugins": [1, "x"]}', "[" * 5000,
                                  '{"name": "n", "plugins": [{"type": "ptp"}]}'])
def test_malformed_conflist_is_a_config_error_for_ferryd_and_ferryctl(tmp_path: Path,
                                                                      text: str) -> None:
    from plugin.conffile import load_file

    path = tmp_path / "x.conflist"
    path.write_text(text)
    with pytest.raises(CniError) as e:
        load_file(str(path))
    assert e.value.code == 7


def test_stderr_fallback_log_carries_no_traceback(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A log file that cannot be opened (a directory) falls back to stderr, which the runtime
    shows to users: one JSON line per record, the exception named, no traceback."""
    from plugin.log import log, setup

    saved = list(log.handlers)
    for h in saved:
        log.removeHandler(h)
    try:
        setup(LogConfig(file=str(tmp_path)))
        try:
            raise OSError("boom")
        except OSError:
            log.exception("failed")
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
        for h in saved:
            log.addHandler(h)
    err = capsys.readouterr().err
    assert "Traceback" not in err and '"exc": "OSError: boom"' in err, err


def test_release_on_a_store_under_a_regular_file_is_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    alloc = Allocator(ipam_conf(tmp_path / "afile" / "x"), "n")
    assert alloc.release("c", "eth0") == [] and alloc.gc(set()) == []
