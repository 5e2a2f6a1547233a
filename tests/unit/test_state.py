"""Attachment records: keys that cannot collide, the old naming scheme still found, damaged
records quarantined, and owner tags that parse back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin.state import (
    QUARANTINE,
    Attachment,
    StateStore,
    legacy_name,
    owner_tag,
    parse_owner_tag,
    record_key,
)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(str(tmp_path), "net1", veth_prefix="fry")


def att(cid: str, ifname: str = "eth0", **kw: object) -> Attachment:
    return Attachment(container_id=cid, ifname=ifname, netns="/run/netns/x",
                      host_veth="fry0123456789a", **kw)  # type: ignore[arg-type]


def test_dotted_ids_and_ifnames_get_their_own_records(store: StateStore) -> None:
    store.save(att("ctrA", "x.y", ips=["10.0.0.2/24"]))
    store.save(att("ctrA.x", "y", ips=["10.0.0.3/24"]))
    assert sorted(p.name for p in store.dir.iterdir()) == ["ctrA.x:y.json", "ctrA:x.y.json"]
    first, second = store.load("ctrA", "x.y"), store.load("ctrA.x", "y")
    assert first and first.ips == ["10.0.0.2/24"] and second and second.ips == ["10.0.0.3/24"]
    store.remove("ctrA.x", "y")
    assert store.load("ctrA", "x.y") is not None
    assert record_key("ctrA:x.y.json") == ("ctrA", "x.y")


def test_an_old_scheme_record_is_found_by_its_own_attachment_only(store: StateStore) -> None:
    store.dir.mkdir(parents=True)
    old = att("ctrA", "x.y")
    (store.dir / legacy_name("ctrA", "x.y")).write_text(json.dumps(vars(old)))
    assert store.load("ctrA.x", "y") is None  # same old file name, another attachment
    store.remove("ctrA.x", "y")
    assert (store.dir / "ctrA.x.y.json").exists()
    loaded = store.load("ctrA", "x.y")
    assert loaded == old
    assert [a.container_id for a in store.all()] == ["ctrA"]
    store.save(loaded)  # rewritten under the new name, the old file gone
    assert [p.name for p in store.dir.iterdir()] == ["ctrA:x.y.json"]


def test_the_macs_are_kept_and_a_record_without_them_still_loads(store: StateStore) -> None:
    store.save(att("ctrM", host_mac="02:00:00:00:00:01", pod_mac="02:00:00:00:00:02"))
    loaded = store.load("ctrM", "eth0")
    assert loaded and (loaded.host_mac, loaded.pod_mac) == ("02:00:00:00:00:01",
                                                            "02:00:00:00:00:02")
    path = store.dir / "ctrM:eth0.json"
    older = {k: v for k, v in json.loads(path.read_text()).items()
             if k not in ("host_mac", "pod_mac")}
    path.write_text(json.dumps(older))  # as written before the MACs were kept
    loaded = store.load("ctrM", "eth0")
    assert loaded and (loaded.host_mac, loaded.pod_mac) == ("", "")
    assert store.quarantined() == []


@pytest.mark.parametrize(("fields", "reason"), [
    ({"ips": ["garbage"]}, "not an address"),
    ({"pod_mac": None}, "pod_mac is NoneType"),
    ({"ips": "10.0.0.2/24"}, "ips is str"),
    ({"owner_pid": "abc"}, "owner_pid is str"),
    ({"owner_pid": True}, "owner_pid is bool"),
    ({"host_veth": "uplink0"}, "not a name ferry gives"),
    ({"container_id": "other"}, "another attachment"),
    ({"surprise": 1}, "unknown fields"),
    ({"k8s_pod": ["only-one"]}, "k8s_pod"),
])
def test_damaged_records_are_quarantined_not_read(store: StateStore, fields: dict[str, object],
                                                  reason: str) -> None:
    store.save(att("ctr1"))
    path = store.dir / "ctr1:eth0.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    assert store.all() == []
    assert not path.exists() and (store.dir / QUARANTINE / path.name).exists()
    [(name, why)] = store.quarantined()
    assert name == path.name and reason in why
    assert path.name in store.claims()


def test_a_record_that_is_not_json_is_quarantined(store: StateStore) -> None:
    store.dir.mkdir(parents=True)
    (store.dir / "ctr1:eth0.json").write_text("{")
    assert store.load("ctr1", "eth0") is None
    assert [n for n, _ in store.quarantined()] == ["ctr1:eth0.json"]


def test_readers_of_other_networks_move_nothing(tmp_path: Path) -> None:
    StateStore(str(tmp_path), "net2").save(att("ctr1", ips=["bad"]))
    reader = StateStore(str(tmp_path), "net2", move_damaged=False)
    assert reader.all() == []
    assert (tmp_path / "net2" / "ctr1:eth0.json").exists()
    assert [n for n, _ in reader.quarantined()] == ["ctr1:eth0.json"]


def test_temp_files_of_both_schemes_are_found(store: StateStore) -> None:
    store.dir.mkdir(parents=True)
    (store.dir / ".tmp42.ctr1:eth0.json").write_text("{")
    (store.dir / "ctr2.eth0.tmp43").write_text("{")
    (store.dir / "ctr3:x.tmp44.json").write_text("{}")  # a record whose ifname has ".tmp"
    assert sorted(pid for _, pid in store.temp_files()) == [42, 43]


def test_a_save_in_flight_is_not_read_as_a_damaged_record(store: StateStore) -> None:
    """pathlib's glob matches dotfiles: all() running while another thread saves (ferryd's
    cluster reconcile, gRPC ListEndpoints) must not quarantine the half-written temp file,
    or the save's rename fails and the ADD with it; nor must ferryd's start, whose rollback
    of a killed ADD reads that file through temp_files()."""
    store.dir.mkdir(parents=True)
    tmp = store.dir / ".tmp42.ctr1:eth0.json"
    tmp.write_text('{"container_id": "ctr1", "ifn')
    assert store.all() == []
    assert tmp.exists() and not (store.dir / QUARANTINE).exists()
    assert [pid for _, pid in store.temp_files()] == [42]


@pytest.mark.parametrize("scope", ["net1", ".egress/net1"])
def test_owner_tags_parse_back(scope: str) -> None:
    tag = owner_tag(scope, "ctr.1", "x.y")
    assert parse_owner_tag(tag) == (scope, "ctr.1", "x.y")
    assert parse_owner_tag("uplink to the VPC") is None
    assert parse_owner_tag("") is None
