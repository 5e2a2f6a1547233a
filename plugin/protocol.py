"""The CNI protocol: environment, errors, versions and results.

Standard library only: the CNI binary's relay path (no pydantic, no pyroute2) uses this module.
The rules follow the CNI spec and the reference skel package (containernetworking/cni).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Which CNI_* variables each command needs (the skel's table; STATUS and GC need none of the
# per-container ones).
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
# The oldest config version that may ask for a command.
_MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")  # \Z: "$" would accept "x\n"
MAX_IFNAME = 15
# Container ids and network names become file names (<stateDir>/<network>/<id>.<ifname>.json,
# <dataDir>/<network>/): a file name holds 255 bytes, so longer ones could never be stored.
# An ADD of one is refused; a DEL of one succeeds, as nothing can exist under it.
MAX_CONTAINER_ID = 200
MAX_NETWORK_NAME = 200
# A network config is a few KiB; a bound keeps one request from taking the agent's memory.
MAX_CONFIG_BYTES = 1 << 20
VALID_ATTACHMENTS = "cni.dev/valid-attachments"  # GC's list of attachments still in use


class Code(IntEnum):
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    # ferry's own (100+): the kernel or a host resource refused an operation.
    INTERNAL = 100
    IPAM_EXHAUSTED = 101
    IP_UNAVAILABLE = 102
    CHECK_FAILED = 103


class CniError(Exception):
    """An error the plugin reports as the spec's JSON error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = LATEST_VERSION) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg,
                "details": self.details}

    def __str__(self) -> str:
        return f"[{self.code}] {self.msg}" + (f": {self.details}" if self.details else "")


def version_tuple(version: str) -> tuple[int, int, int]:
    try:
        major, minor, patch = (int(p) for p in version.split("."))
    except (AttributeError, ValueError):
        raise CniError(Code.DECODE_FAILURE, f"invalid cniVersion {version!r}") from None
    return major, minor, patch


def check_version(version: str, command: str) -> None:
    """Raise the spec's error when this plugin cannot serve `command` at config `version`."""
    if version not in SUPPORTED_VERSIONS:
        version_tuple(version)  # a malformed version is a decode error, not a mismatch
        raise CniError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    floor = _MIN_VERSION.get(command)
    if floor and version_tuple(version) < version_tuple(floor):
        raise CniError(Code.INCOMPATIBLE_VERSION,
                       f"config version does not allow {command}",
                       f"{command} needs cniVersion {floor} or later, config is {version}")


def validate_name(name: Any, what: str, code: int) -> None:
    if not isinstance(name, str) or not name:
        raise CniError(code, f"missing {what}")
    if not _NAME_RE.match(name):
        raise CniError(code, f"invalid characters in {what}", repr(name))


def _too_long(req: Request) -> CniError | None:
    """The error for a network name or container id too long to be stored, if any."""
    checks = [(req.config["name"], "network name", Code.INVALID_CONFIG, MAX_NETWORK_NAME)]
    if req.command in ("ADD", "DEL", "CHECK"):
        checks.append((req.container_id, "containerID", Code.INVALID_ENV, MAX_CONTAINER_ID))
    for name, what, code, limit in checks:
        if len(name) > limit:
            return CniError(code, f"{what} is too long",
                            f"{len(name)} characters, at most {limit}")
    return None


def validate_ifname(name: str) -> None:
    if not name:
        raise CniError(Code.INVALID_ENV, "interface name is empty")
    if len(name) > MAX_IFNAME:
        raise CniError(Code.INVALID_ENV, "interface name is too long",
                       f"{name!r} has {len(name)} characters, the kernel allows {MAX_IFNAME}")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise CniError(Code.INVALID_ENV, "interface name contains an invalid character",
                       repr(name))


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is 'K=V;K2=V2'. Unknown keys are kept: the plugin decides what it needs."""
    args: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(Code.INVALID_ENV, "invalid CNI_ARGS pair", pair)
        args[key] = value
    return args


@dataclass
class Request:
    """One plugin invocation: the CNI_* environment plus the config on stdin."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    # A DEL naming what no ADD could have stored (an over-long id or network name): it
    # succeeds without looking, as a DEL of anything unknown does.
    nothing_to_delete: bool = False

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion", LATEST_VERSION))

    @property
    def k8s_pod(self) -> tuple[str, str] | None:
        ns, pod = self.args.get("K8S_POD_NAMESPACE"), self.args.get("K8S_POD_NAME")
        return (ns, pod) if ns and pod else None

    @property
    def valid_attachments(self) -> set[tuple[str, str]]:
        """A GC request's (containerID, ifname) pairs the runtime still uses: parsed here
        only, for ferry, ferry-egress and ferry-host-local alike (malformed: code 7)."""
        raw = self.config.get(VALID_ATTACHMENTS) or []
        try:
            return {(a["containerID"], a["ifname"]) for a in raw}
        except (TypeError, KeyError):
            raise CniError(Code.INVALID_CONFIG, f"malformed {VALID_ATTACHMENTS}") from None

    def to_env(self) -> dict[str, str]:
        env = {"CNI_COMMAND": self.command, "CNI_CONTAINERID": self.container_id,
               "CNI_NETNS": self.netns, "CNI_IFNAME": self.ifname,
               "CNI_ARGS": ";".join(f"{k}={v}" for k, v in self.args.items()),
               "CNI_PATH": ":".join(self.path)}
        return {k: v for k, v in env.items() if v}


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """Validate env and stdin the way the spec (and the reference skel) does."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(Code.INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CniError(Code.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [v for v in _REQUIRED_ENV[command] if not env.get(v)]
    if missing:
        raise CniError(Code.INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    req = Request(command=command, container_id=env.get("CNI_CONTAINERID", ""),
                  netns=env.get("CNI_NETNS", ""), ifname=env.get("CNI_IFNAME", ""),
                  path=[p for p in env.get("CNI_PATH", "").split(":") if p])
    if command == "VERSION":
        # VERSION may carry a config naming the version it wants; nothing else is needed.
        req.config = _decode(stdin, require_object=False) or {}
        return req
    req.config = _decode(stdin, require_object=True)
    validate_name(req.config.get("name"), "network name", Code.INVALID_CONFIG)
    if command in ("ADD", "DEL", "CHECK"):
        validate_name(req.container_id, "containerID", Code.INVALID_ENV)
        validate_ifname(req.ifname)
    too_long = _too_long(req)
    if too_long is not None:
        if command != "DEL":
            raise too_long
        req.nothing_to_delete = True
    req.args = parse_cni_args(env.get("CNI_ARGS", ""))
    version = req.config.get("cniVersion")
    if version is not None and not isinstance(version, str):
        raise CniError(Code.DECODE_FAILURE, f"invalid cniVersion {version!r}",
                       "cniVersion must be a string")
    # Absent (or null, as Go's decoder reads it) means the spec's first version, 0.1.0.
    check_version(version or "0.1.0", command)
    return req


def _decode(stdin: bytes, require_object: bool) -> Any:
    if len(stdin) > MAX_CONFIG_BYTES:
        raise CniError(Code.DECODE_FAILURE, "network config is too large",
                       f"{len(stdin)} bytes, at most {MAX_CONFIG_BYTES}")
    if not stdin.strip():
        if require_object:
            raise CniError(Code.DECODE_FAILURE, "no network config on stdin")
        return None
    try:
        data = json.loads(stdin)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise CniError(Code.DECODE_FAILURE, "error decoding network config",
                       f"{type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise CniError(Code.DECODE_FAILURE, "network config is not a JSON object")
    return data


def reply_version(stdin: bytes) -> str:
    """The cniVersion an error carries: the config's (as the spec asks) when this plugin speaks
    it, else the latest; also for errors found before the request is fully validated."""
    if len(stdin) > MAX_CONFIG_BYTES:
        return LATEST_VERSION
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, RecursionError, AttributeError):
        return LATEST_VERSION
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS \
        else LATEST_VERSION


def version_info() -> dict[str, Any]:
    return {"cniVersion": LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- results -----------------------------------------------------------------------------------

IPNet = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0


@dataclass
class IPConfig:
    address: IPNet
    gateway: Address | None = None
    interface: int | None = None


@dataclass
class Route:
    dst: Network
    gw: Address | None = None


@dataclass
class Result:
    """A CNI result, held in the 1.x shape and printed in whichever version was asked for."""

    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, version: str) -> dict[str, Any]:
        legacy = version_tuple(version) < (1, 0, 0)
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [self._iface(i, version) for i in self.interfaces]
        ips = []
        for ip in self.ips:
            d: dict[str, Any] = {}
            if legacy:
                d["version"] = str(ip.address.version)
            d["address"] = str(ip.address)
            if ip.gateway is not None:
                d["gateway"] = str(ip.gateway)
            if ip.interface is not None:
                d["interface"] = ip.interface
            ips.append(d)
        if ips:
            out["ips"] = ips
        if self.routes:
            out["routes"] = [
                {"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw is not None else {})}
                for r in self.routes
            ]
        out["dns"] = dict(self.dns)
        return out

    @staticmethod
    def _iface(i: Interface, version: str) -> dict[str, Any]:
        d: dict[str, Any] = {"name": i.name}
        if i.mac:
            d["mac"] = i.mac
        if i.mtu and version_tuple(version) >= (1, 1, 0):
            d["mtu"] = i.mtu
        if i.sandbox:
            d["sandbox"] = i.sandbox
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """Parse a result (a prevResult, an IPAM plugin's answer) of any supported version."""
        try:
            res = cls(
                interfaces=[Interface(name=i["name"], mac=i.get("mac", ""),
                                      sandbox=i.get("sandbox", ""), mtu=int(i.get("mtu", 0)))
                            for i in data.get("interfaces") or []],
                ips=[IPConfig(address=ipaddress.ip_interface(ip["address"]),
                              gateway=_addr_or_none(ip.get("gateway")),
                              interface=ip.get("interface"))
                     for ip in data.get("ips") or []],
                routes=[Route(dst=ipaddress.ip_network(r["dst"], strict=False),
                              gw=_addr_or_none(r.get("gw")))
                        for r in data.get("routes") or []],
                dns=dict(data.get("dns") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CniError(Code.DECODE_FAILURE, "malformed result", f"{type(e).__name__}: {e}")\
                from None
        return res


def _addr_or_none(value: str | None) -> Address | None:
    return ipaddress.ip_address(value) if value else None
