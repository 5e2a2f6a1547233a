"""host-local semantics of the allocator: candidate order, requested IPs, release, GC.

The candidate order is also checked differentially against the reference host-local binary
(it needs no network namespace for ADD/DEL: an IPAM plugin only touches its dataDir).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugin import ipam
from plugin.config import IPAMConfig, IPRange, NetConf, parse
from plugin.ipam.allocator import Allocator, Span, candidates, read_resolv_conf
from plugin.protocol import CniError, Code, Request

A = ipaddress.ip_address
REF_HOST_LOCAL = "/usr/lib/cni/host-local"
NET = "net1"


def ipam_conf(tmp: Path, ranges: list[list[dict[str, Any]]], **extra: Any) -> dict[str, Any]:
    return {"type": "host-local", "dataDir": str(tmp), "ranges": ranges, **extra}


def allocator(tmp: Path, ranges: list[list[dict[str, Any]]], **extra: Any) -> Allocator:
    return Allocator(parse(IPAMConfig, ipam_conf(tmp, ranges, **extra)), NET)


def span(**r: Any) -> Span:
    return Span.of(IPRange.model_validate(r))


def order(spans: list[Span], last: str | None = None) -> list[str]:
    return [str(ip) for _, ip in candidates(spans, A(last) if last else None)]


def got(al: Allocator, cid: str, ifname: str = "eth0", req: list[str] = ()) -> list[str]:
    return [str(ip.address.ip) for ip in al.allocate(cid, ifname, [A(r) for r in req]).ips]


def files(al: Allocator) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(al.store.dir.iterdir()) if p.name != "lock"}


# --- spans: defaults -----------------------------------------------------------------------------

def test_span_defaults_ipv4() -> None:
    s = span(subnet="10.1.0.0/24")
    assert (A(s.start), A(s.end), s.gateway) == (A("10.1.0.1"), A("10.1.0.254"), A("10.1.0.1"))


def test_span_defaults_ipv6_include_last_address() -> None:
    s = span(subnet="fd00::/120")
    assert (A(s.start), A(s.end), s.gateway) == (A("fd00::1"), A("fd00::ff"), A("fd00::1"))


def test_span_explicit() -> None:
    s = span(subnet="10.1.0.0/24", rangeStart="10.1.0.100", rangeEnd="10.1.0.110",
             gateway="10.1.0.254")
    assert (A(s.start), A(s.end), s.gateway) == (A("10.1.0.100"), A("10.1.0.110"),
                                                 A("10.1.0.254"))
    assert A("10.1.0.100") in s and A("10.1.0.110") in s
    assert A("10.1.0.99") not in s and A("10.1.0.111") not in s and A("fd00::1") not in s


def test_subnet_with_host_bits_is_accepted() -> None:
    assert span(subnet="10.1.0.77/24").subnet == ipaddress.ip_network("10.1.0.0/24")


def test_range_start_after_end_is_a_config_error() -> None:
    with pytest.raises(CniError) as exc:
        span(subnet="10.1.0.0/24", rangeStart="10.1.0.50", rangeEnd="10.1.0.40")
    assert exc.value.code == Code.INVALID_CONFIG


@pytest.mark.parametrize("subnet", ["10.1.0.0/31", "10.1.0.0/32", "fd00::/127", "fd00::/128"])
def test_too_small_subnet_is_a_config_error(subnet: str, tmp_path: Path) -> None:
    """host-local: 'Network ... too small to allocate from' for prefixes longer than len-2."""
    with pytest.raises(CniError) as exc:
        allocator(tmp_path, [[{"subnet": subnet}]])
    assert exc.value.code == Code.INVALID_CONFIG


@pytest.mark.parametrize("field,value", [("rangeStart", "10.2.0.5"), ("rangeEnd", "10.2.0.5"),
                                         ("gateway", "10.2.0.1")])
def test_range_fields_outside_subnet(field: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(CniError) as exc:
        allocator(tmp_path, [[{"subnet": "10.1.0.0/24", field: value}]])
    assert exc.value.code == Code.INVALID_CONFIG


def test_overlapping_and_mixed_ranges_rejected(tmp_path: Path) -> None:
    for ranges in ([[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.128/25"}]],
                   [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/120"}]],
                   [], [[]]):
        with pytest.raises(CniError) as exc:
            allocator(tmp_path, ranges)
        assert exc.value.code == Code.INVALID_CONFIG, ranges


def test_legacy_single_range_form(tmp_path: Path) -> None:
    conf = parse(IPAMConfig, {"type": "host-local", "dataDir": str(tmp_path),
                              "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10",
                              "rangeEnd": "10.1.0.11", "gateway": "10.1.0.254",
                              "ranges": [[{"subnet": "fd00::/120"}]]})
    al = Allocator(conf, NET)
    assert got(al, "c1") == ["10.1.0.10", "fd00::2"]
    assert got(al, "c2") == ["10.1.0.11", "fd00::3"]


# --- candidate order -----------------------------------------------------------------------------

def test_order_from_range_start_skipping_gateway() -> None:
    assert order([span(subnet="10.1.0.0/29")]) == [f"10.1.0.{i}" for i in range(2, 7)]


def test_order_ipv4_excludes_broadcast_ipv6_includes_last() -> None:
    assert order([span(subnet="10.1.0.0/29")])[-1] == "10.1.0.6"
    assert order([span(subnet="fd00::/125")]) == [f"fd00::{i}" for i in range(2, 8)]


def test_order_gateway_in_the_middle_and_range_bounds() -> None:
    s = span(subnet="10.1.0.0/24", rangeStart="10.1.0.10", rangeEnd="10.1.0.14",
             gateway="10.1.0.12")
    assert order([s]) == ["10.1.0.10", "10.1.0.11", "10.1.0.13", "10.1.0.14"]


def test_order_gateway_outside_range_gives_range_start() -> None:
    s = span(subnet="10.1.0.0/24", rangeStart="10.1.0.1", rangeEnd="10.1.0.3",
             gateway="10.1.0.254")
    assert order([s]) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]


def test_order_round_robin_after_last_reserved() -> None:
    s = [span(subnet="10.1.0.0/29")]
    # Starts after `last` and ends with `last` itself: every address exactly once.
    assert order(s, "10.1.0.4") == ["10.1.0.5", "10.1.0.6", "10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert order(s, "10.1.0.6") == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]


def test_order_wraps_across_ranges_of_a_set() -> None:
    s = [span(subnet="10.1.0.0/29"), span(subnet="10.2.0.0/29", rangeEnd="10.2.0.3")]
    full = ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6", "10.2.0.2", "10.2.0.3"]
    assert order(s) == full
    assert order(s, "10.1.0.5") == full[4:] + full[:4]
    assert order(s, "10.1.0.6") == full[5:] + full[:5]       # end of range 0 -> range 1
    assert order(s, "10.2.0.3") == full                       # end of the set -> wraps
    assert order(s, "10.2.0.2") == full[6:] + full[:6]


def test_order_last_reserved_outside_the_set_starts_over() -> None:
    s = [span(subnet="10.1.0.0/29")]
    full = order(s)
    for last in ("10.1.0.7", "10.1.0.0", "10.9.9.9", "fd00::3"):
        assert order(s, last) == full, last


def test_order_last_reserved_is_the_gateway() -> None:
    s = [span(subnet="10.1.0.0/29", gateway="10.1.0.4")]
    assert order(s, "10.1.0.4") == ["10.1.0.5", "10.1.0.6", "10.1.0.1", "10.1.0.2", "10.1.0.3"]


# --- allocation ----------------------------------------------------------------------------------

DUAL = [[{"subnet": "10.1.0.0/29"}], [{"subnet": "fd00::/125"}]]


def test_allocate_dual_stack_result(tmp_path: Path) -> None:
    al = allocator(tmp_path, DUAL, routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12",
                                                                  "gw": "10.1.0.1"}])
    res = al.allocate("c1", "eth0", [])
    assert res.to_dict("1.0.0") == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.1.0.2/29", "gateway": "10.1.0.1"},
                {"address": "fd00::2/125", "gateway": "fd00::1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.1.0.1"}],
        "dns": {},
    }
    assert files(al) == {"10.1.0.2": b"c1\r\neth0", "fd00::2": b"c1\r\neth0",
                         "last_reserved_ip.0": b"10.1.0.2", "last_reserved_ip.1": b"fd00::2"}


def test_round_robin_does_not_reuse_a_freed_ip_at_once(tmp_path: Path) -> None:
    al = allocator(tmp_path, DUAL)
    assert got(al, "c1") == ["10.1.0.2", "fd00::2"]
    assert got(al, "c2") == ["10.1.0.3", "fd00::3"]
    assert al.release("c1", "eth0") == [A("10.1.0.2"), A("fd00::2")]
    assert got(al, "c3") == ["10.1.0.4", "fd00::4"]


def test_fill_wrap_and_exhaust(tmp_path: Path) -> None:
    al = allocator(tmp_path, [[{"subnet": "10.1.0.0/29"}]])
    seen = [got(al, f"c{i}")[0] for i in range(5)]
    assert seen == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    with pytest.raises(CniError) as exc:
        al.allocate("c9", "eth0", [])
    assert exc.value.code == Code.IPAM_EXHAUSTED
    al.release("c2", "eth0")
    assert got(al, "c10") == ["10.1.0.4"]  # the only hole, found by wrapping around
    assert al.exhausted_sets() == ["10.1.0.0/29"]
    al.release("c0", "eth0")
    assert al.exhausted_sets() == []


def test_exhausted_second_set_rolls_back_the_first(tmp_path: Path) -> None:
    al = allocator(tmp_path, [[{"subnet": "10.1.0.0/29"}],
                              [{"subnet": "fd00::/126", "rangeStart": "fd00::2",
                                "rangeEnd": "fd00::2"}]])
    assert got(al, "c1") == ["10.1.0.2", "fd00::2"]
    before = files(al)
    with pytest.raises(CniError) as exc:
        al.allocate("c2", "eth0", [])
    assert exc.value.code == Code.IPAM_EXHAUSTED
    after = files(al)
    assert sorted(after) == sorted(before)  # 10.1.0.3 reserved, then released
    assert {k: v for k, v in after.items() if not k.startswith("last")} == \
        {k: v for k, v in before.items() if not k.startswith("last")}


def test_gateway_and_broadcast_never_handed_out(tmp_path: Path) -> None:
    al = allocator(tmp_path, [[{"subnet": "10.1.0.0/30"}], [{"subnet": "fd00::/126"}]])
    assert got(al, "c1") == ["10.1.0.2", "fd00::2"]
    with pytest.raises(CniError):
        al.allocate("c2", "eth0", [])  # 10.1.0.3 is the broadcast address: v4 is full
    al6 = allocator(tmp_path / "v6", [[{"subnet": "fd00::/126"}]])
    assert [got(al6, f"c{i}")[0] for i in range(2)] == ["fd00::2", "fd00::3"]  # last included
    with pytest.raises(CniError) as exc:
        al6.allocate("c9", "eth0", [])  # fd00:: (the subnet-router anycast) is never given
    assert exc.value.code == Code.IPAM_EXHAUSTED
    assert sorted(files(al6)) == ["fd00::2", "fd00::3", "last_reserved_ip.0"]


def test_requested_ips(tmp_path: Path) -> None:
    al = allocator(tmp_path, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]])
    assert got(al, "c1", req=["10.1.0.50"]) == ["10.1.0.50", "fd00::2"]
    assert got(al, "c2", req=["fd00::80", "10.1.0.60"]) == ["10.1.0.60", "fd00::80"]
    # A requested IP moves the round-robin cursor, as host-local's Reserve does.
    assert got(al, "c3") == ["10.1.0.61", "fd00::81"]


@pytest.mark.parametrize("req,code", [
    (["10.1.0.1"], Code.IP_UNAVAILABLE),            # the gateway
    (["10.1.0.50"], Code.IP_UNAVAILABLE),           # taken by c1
    (["10.9.0.5"], Code.IP_UNAVAILABLE),            # in no range
    (["10.1.0.255"], Code.IP_UNAVAILABLE),          # broadcast: outside the range
    (["10.1.0.7", "10.1.0.8"], Code.INVALID_CONFIG),  # two in one range set
])
def test_requested_ip_refused_leaves_nothing(req: list[str], code: int, tmp_path: Path) -> None:
    al = allocator(tmp_path, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]])
    got(al, "c1", req=["10.1.0.50"])
    before = set(al.store.reservations())
    with pytest.raises(CniError) as exc:
        al.allocate("c2", "eth0", [A(r) for r in req])
    assert exc.value.code == code
    assert set(al.store.reservations()) == before
    assert al.held("c2", "eth0") == []


def test_requested_ip_outside_range_but_inside_subnet(tmp_path: Path) -> None:
    al = allocator(tmp_path, [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10",
                                "rangeEnd": "10.1.0.20"}]])
    with pytest.raises(CniError) as exc:
        al.allocate("c1", "eth0", [A("10.1.0.30")])
    assert exc.value.code == Code.IP_UNAVAILABLE
    assert got(al, "c1", req=["10.1.0.20"]) == ["10.1.0.20"]


def test_requested_ips_from_every_source(tmp_path: Path) -> None:
    conf = NetConf.model_validate({
        "cniVersion": "1.0.0", "name": NET,
        "ipam": ipam_conf(tmp_path, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}],
                                     [{"subnet": "10.2.0.0/24"}]]),
        "runtimeConfig": {"ips": ["10.1.0.5/24"]},
        "args": {"cni": {"ips": ["fd00::5"]}},
    })
    req = Request(command="ADD", container_id="c1", netns="/x", ifname="eth0",
                  args={"IP": "10.2.0.5", "IgnoreUnknown": "1"}, config={})
    assert ipam.requested_ips(conf, req) == [A("10.1.0.5"), A("fd00::5"), A("10.2.0.5")]
    res = ipam.add(conf, req)
    assert [str(ip.address) for ip in res.ips] == ["10.1.0.5/24", "fd00::5/120", "10.2.0.5/24"]


def test_duplicate_allocation_refused(tmp_path: Path) -> None:
    al = allocator(tmp_path, DUAL)
    got(al, "c1")
    before = files(al)
    for requested in ([], ["10.1.0.5"]):
        with pytest.raises(CniError) as exc:
            al.allocate("c1", "eth0", [A(r) for r in requested])
        assert exc.value.code == Code.IP_UNAVAILABLE
        assert "duplicate" in exc.value.msg
    assert files(al) == before
    assert got(al, "c1", "eth1") == ["10.1.0.3", "fd00::3"]  # another interface is fine


def test_old_format_file_blocks_duplicate_allocation(tmp_path: Path) -> None:
    al = allocator(tmp_path, DUAL)
    al.store.dir.mkdir(parents=True)
    (al.store.dir / "10.1.0.4").write_text("old")
    with pytest.raises(CniError) as exc:
        al.allocate("old", "eth0", [])
    assert exc.value.code == Code.IP_UNAVAILABLE
    assert got(al, "new") == ["10.1.0.2", "fd00::2"]


def test_release_by_id_and_ifname(tmp_path: Path) -> None:
    al = allocator(tmp_path, DUAL)
    got(al, "c1", "eth0")
    got(al, "c1", "eth1")
    got(al, "c2", "eth0")
    assert al.release("c1", "eth1") == [A("10.1.0.3"), A("fd00::3")]
    assert al.held("c1", "eth0") == [A("10.1.0.2"), A("fd00::2")]
    assert al.held("c2", "eth0") == [A("10.1.0.4"), A("fd00::4")]
    assert al.release("c1", "eth1") == []
    assert al.release("nobody", "eth0") == []


def test_release_old_format(tmp_path: Path) -> None:
    al = allocator(tmp_path, DUAL)
    al.store.dir.mkdir(parents=True)
    (al.store.dir / "10.1.0.4").write_text("old")
    (al.store.dir / "fd00::4").write_text("old")
    assert al.held("old", "eth0") == [A("10.1.0.4"), A("fd00::4")]
    assert al.release("old", "eth0") == [A("10.1.0.4"), A("fd00::4")]
    assert al.store.reservations() == {}


def test_gc(tmp_path: Path) -> None:
    al = allocator(tmp_path, DUAL)
    got(al, "keep", "eth0")
    got(al, "keep", "eth1")
    got(al, "gone", "eth0")
    (al.store.dir / "10.1.0.6").write_text("oldkeep")
    (al.store.dir / "fd00::7").write_text("oldgone")
    (al.store.dir / "10.7.7.7").write_text("gone\r\neth0")  # not in this config's ranges
    freed = al.gc({("keep", "eth0"), ("oldkeep", "eth9")})
    assert sorted(freed, key=lambda a: (a.version, a)) == \
        [A("10.1.0.3"), A("10.1.0.4"), A("fd00::3"), A("fd00::4"), A("fd00::7")]
    assert al.store.reservations() == {
        A("10.1.0.2"): ("keep", "eth0"), A("fd00::2"): ("keep", "eth0"),
        A("10.1.0.6"): ("oldkeep", ""), A("10.7.7.7"): ("gone", "eth0"),
    }
    assert al.gc({("keep", "eth0"), ("oldkeep", "eth9")}) == []


def test_resolv_conf(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("# comment\nnameserver 10.96.0.10\nnameserver fd00::53 # inline\n"
                  "domain cluster.local\nsearch a.svc b.svc\noptions ndots:5\noptions rotate\n")
    assert read_resolv_conf(str(rc)) == {"nameservers": ["10.96.0.10", "fd00::53"],
                                         "domain": "cluster.local", "search": ["a.svc", "b.svc"],
                                         "options": ["ndots:5", "rotate"]}
    al = allocator(tmp_path / "d", DUAL, resolvConf=str(rc))
    assert al.allocate("c1", "eth0", []).dns["nameservers"] == ["10.96.0.10", "fd00::53"]
    with pytest.raises(CniError) as exc:
        read_resolv_conf(str(tmp_path / "missing"))
    assert exc.value.code == Code.IO_FAILURE
    assert read_resolv_conf(None) == {}


def test_ipam_binary_module_imports_without_site_packages() -> None:
    """The ferry-host-local launcher runs `python -I -S` and imports plugin.ipam.cli before
    it enables site-packages: importing the package must not need pydantic."""
    repo = str(Path(__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {repo!r}); import plugin.ipam.cli; "
            "print('pydantic' in sys.modules)")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# --- differential: the reference host-local on its own dataDir -----------------------------------

def ref_host_local(command: str, cid: str, ipam_cfg: dict[str, Any], ifname: str = "eth0",
                   cni_args: str = "") -> dict[str, Any] | None:
    conf = {"cniVersion": "1.0.0", "name": NET, "ipam": ipam_cfg}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
           "CNI_NETNS": "/nonexistent", "CNI_PATH": os.path.dirname(REF_HOST_LOCAL),
           "CNI_ARGS": cni_args, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run([REF_HOST_LOCAL], input=json.dumps(conf).encode(), env=env,
                          capture_output=True, check=False, timeout=30)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    if proc.returncode != 0:
        raise RuntimeError(f"host-local {command}: {out}")
    return out


SCENARIOS: dict[str, tuple[list[list[dict[str, Any]]], dict[str, str], list[tuple[str, ...]]]] = {
    "fill-release-wrap": (
        [[{"subnet": "10.1.0.0/29"}], [{"subnet": "fd00::/125"}]], {},
        [("ADD", "a"), ("ADD", "b"), ("ADD", "c"), ("DEL", "a"), ("ADD", "d"), ("ADD", "e"),
         ("ADD", "f"), ("ADD", "g"), ("DEL", "c"), ("ADD", "h"), ("ADD", "i")]),
    "gateway-mid-range": (
        [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.14",
           "gateway": "10.1.0.12"}]], {},
        [("ADD", "a"), ("ADD", "b"), ("ADD", "c"), ("ADD", "d"), ("ADD", "e"), ("DEL", "b"),
         ("ADD", "f")]),
    "multi-range-set": (
        [[{"subnet": "10.1.0.0/29"}, {"subnet": "10.2.0.0/29", "rangeStart": "10.2.0.4"},
          {"subnet": "10.3.0.0/30"}]],
        {"last_reserved_ip.0": "10.1.0.5"},
        [("ADD", str(i)) for i in range(9)] + [("DEL", "3"), ("DEL", "7"), ("ADD", "x"),
                                                ("ADD", "y"), ("ADD", "z")]),
    "stale-cursor-and-foreign-files": (
        [[{"subnet": "10.1.0.0/28"}], [{"subnet": "fd00::/124", "gateway": "fd00::f"}]],
        {"last_reserved_ip.0": "10.9.0.1", "last_reserved_ip.1": "fd00::e",
         "10.1.0.3": "other\r\neth0", "fd00::1": "old"},
        [("ADD", "a"), ("ADD", "b"), ("ADD", "c"), ("DEL", "old"), ("ADD", "d")]),
    "requested": (
        [[{"subnet": "10.1.0.0/28"}]], {},
        [("ADD", "a"), ("ADD", "b", "10.1.0.9"), ("ADD", "c"), ("ADD", "d", "10.1.0.14"),
         ("ADD", "e")]),
    "old-format-release": (
        [[{"subnet": "10.1.0.0/28"}]],
        {"10.1.0.5": "old", "10.1.0.6": "old\r\neth1", "10.1.0.7": "old\r\neth0"},
        [("DEL", "old"), ("DEL", "old", "", "eth1"), ("DEL", "old"), ("ADD", "n")]),
}


@pytest.mark.skipif(not os.access(REF_HOST_LOCAL, os.X_OK), reason="reference host-local missing")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_choices_as_reference_host_local(name: str, tmp_path: Path) -> None:
    ranges, seed, steps = SCENARIOS[name]
    ref_dir, our_dir = tmp_path / "ref", tmp_path / "ours"
    for d in (ref_dir, our_dir):
        (d / NET).mkdir(parents=True)
        for fname, content in seed.items():
            (d / NET / fname).write_text(content)
    ref_cfg = ipam_conf(ref_dir, ranges)
    al = allocator(our_dir, ranges)
    ref_seen: list[Any] = []
    our_seen: list[Any] = []
    for step in steps:
        command, cid = step[0], step[1]
        requested = step[2] if len(step) > 2 else ""
        ifname = step[3] if len(step) > 3 else "eth0"
        if command == "ADD":
            try:
                out = ref_host_local("ADD", cid, ref_cfg, ifname,
                                     f"IP={requested}" if requested else "")
                ref_seen.append([ip["address"] for ip in (out or {})["ips"]])
            except RuntimeError:
                ref_seen.append("error")
            try:
                res = al.allocate(cid, ifname, [A(requested)] if requested else [])
                our_seen.append([str(ip.address) for ip in res.ips])
            except CniError:
                our_seen.append("error")
        else:
            ref_host_local("DEL", cid, ref_cfg, ifname)
            al.release(cid, ifname)
        assert our_seen == ref_seen, f"after {step}"
        ref_files = {p.name: p.read_bytes() for p in (ref_dir / NET).iterdir()}
        our_files = {p.name: p.read_bytes() for p in (our_dir / NET).iterdir()}
        assert our_files == ref_files, f"dataDir differs after {step}"
