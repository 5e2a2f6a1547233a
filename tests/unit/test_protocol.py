"""The CNI protocol layer: CNI_ARGS, request validation, version checks, result shapes.

The expectations follow the CNI spec and the reference skel package (containernetworking/cni).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from plugin.protocol import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    CniError,
    Code,
    Interface,
    IPConfig,
    Result,
    Route,
    check_version,
    parse_cni_args,
    parse_request,
    version_info,
    version_tuple,
)

CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "ferry"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}


def _err(exc: pytest.ExceptionInfo[CniError], code: int) -> CniError:
    assert exc.value.code == code, str(exc.value)
    return exc.value


def _parse(env: dict[str, str] | None = None, conf: Any = CONF, **overrides: str) -> Any:
    full = {**ENV, **(env or {}), **overrides}
    full = {k: v for k, v in full.items() if v is not None}
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    return parse_request(full, stdin)


# --- CNI_ARGS ------------------------------------------------------------------------------------

def test_cni_args_k8s_pairs() -> None:
    raw = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;" \
          "K8S_POD_INFRA_CONTAINER_ID=abc"
    assert parse_cni_args(raw) == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default",
                                   "K8S_POD_NAME": "web-0", "K8S_POD_INFRA_CONTAINER_ID": "abc"}


@pytest.mark.parametrize("raw,expected", [
    ("", {}),
    (";;", {}),
    ("A=1;", {"A": "1"}),
    ("A=", {"A": ""}),
    ("IP=10.1.0.5,fd00::5", {"IP": "10.1.0.5,fd00::5"}),
    ("A=1;A=2", {"A": "2"}),
])
def test_cni_args_edge_cases(raw: str, expected: dict[str, str]) -> None:
    assert parse_cni_args(raw) == expected


@pytest.mark.parametrize("raw", ["A", "A=1;B", "=1", "A=1;=2"])
def test_cni_args_invalid_pair(raw: str) -> None:
    with pytest.raises(CniError) as exc:
        parse_cni_args(raw)
    _err(exc, Code.INVALID_ENV)


def test_request_carries_args_and_k8s_pod() -> None:
    req = _parse(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1")
    assert req.k8s_pod == ("kube-system", "dns-1")
    assert req.args["IgnoreUnknown"] == "1"
    assert _parse(CNI_ARGS="K8S_POD_NAME=dns-1").k8s_pod is None


def test_bad_cni_args_rejected_through_parse_request() -> None:
    with pytest.raises(CniError) as exc:
        _parse(CNI_ARGS="K8S_POD_NAME")
    _err(exc, Code.INVALID_ENV)


# --- request validation -----------------------------------------------------------------------

def test_valid_add_request() -> None:
    req = _parse()
    assert (req.command, req.container_id, req.netns, req.ifname) == \
        ("ADD", "ctr1", "/run/netns/x", "eth0")
    assert req.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert req.config == CONF
    assert req.cni_version == "1.0.0"


def test_request_to_env_round_trip() -> None:
    req = _parse(CNI_ARGS="A=1;B=2")
    again = parse_request(req.to_env(), json.dumps(req.config).encode())
    assert again == req


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_add_requires_env(missing: str) -> None:
    with pytest.raises(CniError) as exc:
        _parse(**{missing: ""})
    assert missing in _err(exc, Code.INVALID_ENV).msg


def test_del_does_not_need_netns() -> None:
    req = _parse(CNI_COMMAND="DEL", CNI_NETNS="")
    assert req.command == "DEL" and req.netns == ""


def test_del_needs_container_id() -> None:
    with pytest.raises(CniError) as exc:
        _parse(CNI_COMMAND="DEL", CNI_CONTAINERID="")
    _err(exc, Code.INVALID_ENV)


def test_missing_and_unknown_command() -> None:
    with pytest.raises(CniError) as exc:
        _parse(CNI_COMMAND="")
    assert "CNI_COMMAND" in _err(exc, Code.INVALID_ENV).msg
    with pytest.raises(CniError) as exc:
        _parse(CNI_COMMAND="UPDATE")
    _err(exc, Code.INVALID_ENV)


def test_version_needs_nothing() -> None:
    req = parse_request({"CNI_COMMAND": "VERSION"}, b"")
    assert req.command == "VERSION" and req.config == {}


def test_gc_and_status_need_only_path() -> None:
    conf = {**CONF, "cniVersion": "1.1.0"}
    for cmd in ("GC", "STATUS"):
        req = parse_request({"CNI_COMMAND": cmd, "CNI_PATH": "/opt/cni/bin"},
                            json.dumps(conf).encode())
        assert req.command == cmd
        with pytest.raises(CniError) as exc:
            parse_request({"CNI_COMMAND": cmd}, json.dumps(conf).encode())
        _err(exc, Code.INVALID_ENV)


@pytest.mark.parametrize("cid", ["-ctr", "ctr/1", "ctr 1", "ctr;1", ".ctr", "ctr\n"])
def test_invalid_container_id(cid: str) -> None:
    with pytest.raises(CniError) as exc:
        _parse(CNI_CONTAINERID=cid)
    _err(exc, Code.INVALID_ENV)


@pytest.mark.parametrize("cid", ["a", "0123abc", "ctr_1.2-3", "A" * 64])
def test_valid_container_id(cid: str) -> None:
    assert _parse(CNI_CONTAINERID=cid).container_id == cid


@pytest.mark.parametrize("ifname", ["x" * 16, ".", "..", "eth/0", "eth:0", "eth 0", "eth\t0"])
def test_invalid_ifname(ifname: str) -> None:
    with pytest.raises(CniError) as exc:
        _parse(CNI_IFNAME=ifname)
    _err(exc, Code.INVALID_ENV)


def test_ifname_of_15_chars_is_fine() -> None:
    assert _parse(CNI_IFNAME="x" * 15).ifname == "x" * 15


@pytest.mark.parametrize("name", [None, "", "net 1", "-net", "net/1", "net\n", 7])
def test_invalid_network_name(name: Any) -> None:
    conf = {**CONF, "name": name}
    if name is None:
        del conf["name"]
    with pytest.raises(CniError) as exc:
        _parse(conf=conf)
    _err(exc, Code.INVALID_CONFIG)


@pytest.mark.parametrize("stdin", [b"", b"   \n", b"{not json", b"[1, 2]", b"\"net\"",
                                   b"\xff\xfe"])
def test_undecodable_config(stdin: bytes) -> None:
    with pytest.raises(CniError) as exc:
        _parse(conf=stdin)
    _err(exc, Code.DECODE_FAILURE)


# --- versions -----------------------------------------------------------------------------------

def test_version_info() -> None:
    info = version_info()
    assert info["cniVersion"] == LATEST_VERSION
    assert info["supportedVersions"] == list(SUPPORTED_VERSIONS)
    assert {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(info["supportedVersions"])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_supported_versions_allow_add_and_del(version: str) -> None:
    check_version(version, "ADD")
    check_version(version, "DEL")
    assert _parse(conf={**CONF, "cniVersion": version}).cni_version == version


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "0.3.2"])
def test_unsupported_version(version: str) -> None:
    with pytest.raises(CniError) as exc:
        check_version(version, "ADD")
    _err(exc, Code.INCOMPATIBLE_VERSION)


def test_missing_cni_version_means_0_1_0() -> None:
    conf = dict(CONF)
    del conf["cniVersion"]
    with pytest.raises(CniError) as exc:
        _parse(conf=conf)
    _err(exc, Code.INCOMPATIBLE_VERSION)


@pytest.mark.parametrize("version", ["abc", "1.0", "1.0.0.0", "1.x.0"])
def test_malformed_version_is_a_decode_error(version: str) -> None:
    with pytest.raises(CniError) as exc:
        check_version(version, "ADD")
    _err(exc, Code.DECODE_FAILURE)


@pytest.mark.parametrize("command,allowed,refused", [
    ("CHECK", ["0.4.0", "1.0.0", "1.1.0"], ["0.3.0", "0.3.1"]),
    ("GC", ["1.1.0"], ["0.4.0", "1.0.0"]),
    ("STATUS", ["1.1.0"], ["0.3.1", "1.0.0"]),
])
def test_command_version_floor(command: str, allowed: list[str], refused: list[str]) -> None:
    for v in allowed:
        check_version(v, command)
    for v in refused:
        with pytest.raises(CniError) as exc:
            check_version(v, command)
        assert command in _err(exc, Code.INCOMPATIBLE_VERSION).msg


def test_check_with_old_config_refused_by_parse_request() -> None:
    with pytest.raises(CniError) as exc:
        _parse(conf={**CONF, "cniVersion": "0.3.1"}, CNI_COMMAND="CHECK")
    _err(exc, Code.INCOMPATIBLE_VERSION)


def test_version_tuple_orders_numerically() -> None:
    assert version_tuple("0.10.0") > version_tuple("0.4.0")
    assert version_tuple("1.0.0") == (1, 0, 0)


def test_error_object() -> None:
    e = CniError(Code.IPAM_EXHAUSTED, "no IPs", "10.0.0.0/24")
    assert e.to_dict("0.4.0") == {"cniVersion": "0.4.0", "code": 101, "msg": "no IPs",
                                  "details": "10.0.0.0/24"}
    assert str(e) == "[101] no IPs: 10.0.0.0/24"


# --- results ------------------------------------------------------------------------------------

def _result() -> Result:
    a = ipaddress.ip_address
    return Result(
        interfaces=[Interface("fry0123456789a", "aa:bb:cc:dd:ee:01", mtu=1400),
                    Interface("eth0", "aa:bb:cc:dd:ee:02", "/run/netns/pod", 1400)],
        ips=[IPConfig(ipaddress.ip_interface("10.20.0.5/24"), a("10.20.0.1"), 1),
             IPConfig(ipaddress.ip_interface("fd20::5/120"), a("fd20::1"), 1)],
        routes=[Route(ipaddress.ip_network("0.0.0.0/0"), a("10.20.0.1")),
                Route(ipaddress.ip_network("::/0"), a("fd20::1")),
                Route(ipaddress.ip_network("10.96.0.0/12"))],
        dns={"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    )


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_legacy_shape(version: str) -> None:
    d = _result().to_dict(version)
    assert d["cniVersion"] == version
    assert d["ips"] == [
        {"version": "4", "address": "10.20.0.5/24", "gateway": "10.20.0.1", "interface": 1},
        {"version": "6", "address": "fd20::5/120", "gateway": "fd20::1", "interface": 1},
    ]
    assert all("mtu" not in i for i in d["interfaces"])


def test_result_1_0_0_shape() -> None:
    d = _result().to_dict("1.0.0")
    assert d == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "fry0123456789a", "mac": "aa:bb:cc:dd:ee:01"},
                       {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02",
                        "sandbox": "/run/netns/pod"}],
        "ips": [{"address": "10.20.0.5/24", "gateway": "10.20.0.1", "interface": 1},
                {"address": "fd20::5/120", "gateway": "fd20::1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.20.0.1"}, {"dst": "::/0", "gw": "fd20::1"},
                   {"dst": "10.96.0.0/12"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    }


def test_result_1_1_0_has_mtu() -> None:
    d = _result().to_dict("1.1.0")
    assert [i.get("mtu") for i in d["interfaces"]] == [1400, 1400]
    assert all("version" not in ip for ip in d["ips"])


def test_ipam_only_result_shape() -> None:
    """What an IPAM plugin prints: no interfaces, no interface index, dns always present."""
    r = Result(ips=[IPConfig(ipaddress.ip_interface("10.1.0.2/24"),
                             ipaddress.ip_address("10.1.0.1"))])
    assert r.to_dict("1.0.0") == {"cniVersion": "1.0.0",
                                  "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
                                  "dns": {}}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_result_round_trip(version: str) -> None:
    d = _result().to_dict(version)
    back = Result.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict(version) == d
    if version_tuple(version) >= (1, 1, 0):
        assert back == _result()  # nothing is lost at the latest version


def test_result_from_dict_converts_between_versions() -> None:
    legacy = _result().to_dict("0.3.1")
    assert Result.from_dict(legacy).to_dict("1.0.0") == _result().to_dict("1.0.0")


def test_from_dict_of_reference_host_local_output() -> None:
    out = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.0.2/24",
                                           "gateway": "10.1.0.1"}], "dns": {}}
    r = Result.from_dict(out)
    assert r.ips == [IPConfig(ipaddress.ip_interface("10.1.0.2/24"),
                              ipaddress.ip_address("10.1.0.1"), None)]
    assert r.interfaces == [] and r.routes == [] and r.dns == {}


@pytest.mark.parametrize("bad", [
    {"ips": [{"gateway": "10.0.0.1"}]},
    {"ips": [{"address": "10.0.0.300/24"}]},
    {"ips": [{"address": "10.0.0.2/24", "gateway": "nope"}]},
    {"routes": [{"gw": "10.0.0.1"}]},
    {"routes": [{"dst": "bad"}]},
    {"interfaces": [{"mac": "aa:bb:cc:dd:ee:ff"}]},
    {"interfaces": [{"name": "eth0", "mtu": "big"}]},
    {"ips": "10.0.0.2/24"},
])
def test_malformed_result(bad: dict[str, Any]) -> None:
    with pytest.raises(CniError) as exc:
        Result.from_dict(bad)
    _err(exc, Code.DECODE_FAILURE)
