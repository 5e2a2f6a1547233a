"""Network configuration models (pydantic v2).

Field names follow the JSON the runtime passes (camelCase, as in the CNI spec and the
reference plugins). Unknown keys are ignored, as the spec asks of plugins; a bad value is
rejected with code 7 and the path of the field in the message.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from plugin.cluster.config import CLUSTER_IPAM, ClusterConfig, DatastoreConfig
from plugin.defaults import AGENT_SOCKET, BPFFS_ROOT
from plugin.protocol import MAX_NETWORK_NAME, Address, CniError, Code, Network, Result

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_STATE_DIR = "/var/lib/ferry"
DEFAULT_LOG_FILE = "/var/log/ferry/ferry.log"
VETH_HASH_CHARS = 11  # as the AWS VPC CNI: prefix + 11 hex chars of sha1, <= 15 chars in all
MAX_NAME, MAX_PATH = 255, 3800  # NAME_MAX; PATH_MAX less room for <network>/<file>
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
# A network name as protocol.validate_name checks a request's (ferryd's own config too: the
# name becomes a directory under stateDir and dataDir).
NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$"


def plugin_type(value: str) -> str:
    """A plugin type is a bare name looked up in CNI_PATH, never a path: "/x/prog" or
    "../../x/prog" would run any binary as root (the class of CVE-2021-20206)."""
    if not value or "/" in value or "\\" in value or "\0" in value or ".." in value:
        raise ValueError(f"{value!r} is not a plugin name (no path separators, no '..')")
    return value


def absolute_path(value: str) -> str:
    """Relative paths resolve against each process's working directory: ferryd and the
    runtime's exec of the binary would use two different stores for one network."""
    if "\0" in value:
        raise ValueError("contains a NUL character")
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_PATH or any(
            len(part.encode("utf-8", "surrogateescape")) > MAX_NAME for part in value.split("/")):
        raise ValueError(f"longer than a path can be ({MAX_NAME} bytes a name, "
                         f"{MAX_PATH} in all)")
    return value


PluginType = Annotated[str, AfterValidator(plugin_type)]
AbsolutePath = Annotated[str, AfterValidator(absolute_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class IPRange(_Model):
    subnet: Network
    range_start: Address | None = Field(None, alias="rangeStart")
    range_end: Address | None = Field(None, alias="rangeEnd")
    gateway: Address | None = None

    @field_validator("subnet", mode="before")
    @classmethod
    def _subnet(cls, v: Any) -> Any:
        # host-local accepts a subnet written with host bits ("10.1.0.1/24").
        return ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _inside(self) -> IPRange:
        for name in ("range_start", "range_end", "gateway"):
            ip = getattr(self, name)
            if ip is not None and ip not in self.subnet:
                raise ValueError(f"{name} {ip} is outside subnet {self.subnet}")
        # As host-local: a prefix longer than /30 (/126) is too small to allocate from.
        if self.subnet.num_addresses < 4:
            raise ValueError(f"subnet {self.subnet} is too small to hold a pod and a gateway")
        return self


class RouteConf(_Model):
    dst: Network
    gw: Address | None = None


class DNSConf(_Model):
    nameservers: list[str] = []
    domain: str = ""
    search: list[str] = []
    options: list[str] = []


class IPAMConfig(_Model):
    type: PluginType
    ranges: list[list[IPRange]] = []
    # The older single-range form of host-local.
    subnet: Network | None = None
    range_start: Address | None = Field(None, alias="rangeStart")
    range_end: Address | None = Field(None, alias="rangeEnd")
    gateway: Address | None = None
    routes: list[RouteConf] = []
    data_dir: AbsolutePath = Field(DEFAULT_DATA_DIR, alias="dataDir")
    resolv_conf: str | None = Field(None, alias="resolvConf")

    @field_validator("resolv_conf")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\0" in v:
            raise ValueError("contains a NUL character")
        return v

    @model_validator(mode="after")
    def _range_sets(self) -> IPAMConfig:
        if self.type not in ("host-local", "ferry-host-local"):
            return self  # a delegated IPAM plugin validates its own config
        if self.subnet is not None:
            legacy = IPRange(subnet=self.subnet, rangeStart=self.range_start,
                             rangeEnd=self.range_end, gateway=self.gateway)
            self.ranges = [[legacy], *self.ranges]
        if not self.ranges or any(not rs for rs in self.ranges):
            raise ValueError("at least one non-empty range set is required")
        seen: list[IPRange] = []
        for rs in self.ranges:
            families = {r.subnet.version for r in rs}
            if len(families) > 1:
                raise ValueError("a range set mixes IPv4 and IPv6 ranges")
            for r in rs:
                for other in seen:
                    if r.subnet.overlaps(other.subnet):
                        raise ValueError(f"range {r.subnet} overlaps {other.subnet}")
                seen.append(r)
        return self

    @property
    def builtin(self) -> bool:
        return self.type in ("host-local", "ferry-host-local")


class LogConfig(_Model):
    file: str = DEFAULT_LOG_FILE
    level: Literal["debug", "info", "warning", "error"] = "info"
    max_bytes: int = Field(10 * 1024 * 1024, alias="maxBytes", ge=4096)
    backups: int = Field(3, ge=0, le=20)

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        if not v or "\0" in v:
            raise ValueError("must be a file name without NUL characters")
        return v


class NatTimeouts(_Model):
    """Idle timeouts of NAT flows in seconds, applied by ferryd's expiry (and `ferryctl gc`).
    TCP is tracked by state: an established flow keeps its port for `tcpEstablished` seconds
    of silence (Cilium's CT lifetime), a closed one (FIN both ways, or RST) is dropped after
    `tcpClosed` and its port can be taken by a new flow after half a second already. UDP and
    ICMP have no state: an idle timeout only (conntrack's stream UDP and ICMP values)."""

    tcp_established: float = Field(21600.0, alias="tcpEstablished", gt=0)
    tcp_closed: float = Field(10.0, alias="tcpClosed", gt=0)
    udp: float = Field(120.0, gt=0)
    icmp: float = Field(30.0, gt=0)


class IPAMArgs(_Model):
    ips: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface | Address] = []


class NetConf(_Model):
    cni_version: str = Field(alias="cniVersion")
    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NETWORK_NAME)
    type: str = "ferry"
    ipam: IPAMConfig
    mtu: int = Field(1500, ge=576, le=65535)
    dataplane: Literal["auto", "ebpf", "iptables", "none"] = "auto"
    node_ip: Address | None = Field(None, alias="nodeIP")
    # The IPv6 source of SNATed pod traffic (nodeIP holds one address, usually the IPv4 one);
    # absent: the uplink's first global IPv6 address, none there: no IPv6 SNAT.
    node_ip6: ipaddress.IPv6Address | None = Field(None, alias="nodeIPv6")
    snat_exclude_cidrs: list[Network] = Field([], alias="snatExcludeCidrs")
    # eBPF dataplane (plugin/dataplane/ebpf.py). The SNAT port range defaults to 61000-65535:
    # above the kernel's default ip_local_port_range (32768-60999), so the node's own
    # connections from the node IP never pick a port that a NAT entry owns.
    snat_port_range: str = Field("61000-65535", alias="snatPortRange",
                                 pattern=r"^[0-9]{1,5}-[0-9]{1,5}$")
    # How the SNAT picks the external port, AWS's RANDOMIZESNAT: prng (a random port, iptables
    # --random-fully), hashrandom (a per-flow hash of the 5-tuple, iptables --random), none
    # (the pod's own port when it is inside the range and free, as iptables without a flag).
    randomize_snat: Literal["hashrandom", "prng", "none"] = Field("prng", alias="randomizeSNAT")
    # Entries of each eBPF NAT map (forward and reverse, per family): 65,536 is 600 concurrent
    # flows for each of 110 pods. A full map evicts its least recently used flows (LRU).
    nat_max_entries: int = Field(65536, alias="natMaxEntries", ge=1024, le=1 << 22)
    nat_timeouts: NatTimeouts = Field(NatTimeouts(), alias="natTimeouts")
    bpffs_root: str = Field(BPFFS_ROOT, alias="bpffsRoot")
    # How the eBPF programs get into the kernel (loader/pins.py): the prebuilt ELF objects
    # ("elf"), bcc compiling on the node ("bcc"), or "auto": the objects when present.
    loader: Literal["auto", "elf", "bcc"] = "auto"
    # Where the SNAT programs hang on the uplink (plugin/dataplane/tc.py): "clsact" (cls_bpf
    # filters, listed by `tc filter show`) or "tcx" (6.6+; ~45 ns less per packet; clsact on
    # an older kernel).
    tc_attach: Literal["clsact", "tcx"] = Field("clsact", alias="tcAttach")
    uplink: str | None = None  # default: the device holding nodeIP, else the default route's
    veth_prefix: str = Field("fry", alias="vethPrefix", min_length=1,
                             max_length=15 - VETH_HASH_CHARS, pattern=r"^[a-zA-Z][a-zA-Z0-9]*$")
    state_dir: AbsolutePath = Field(DEFAULT_STATE_DIR, alias="stateDir")
    # Where ferryd listens for relayed requests (plugin.relay reads it without pydantic).
    agent_socket: str = Field(AGENT_SOCKET, alias="agentSocket")
    log: LogConfig = LogConfig()
    dns: DNSConf | None = None
    prev_result: dict[str, Any] | None = Field(None, alias="prevResult")
    runtime_config: dict[str, Any] = Field({}, alias="runtimeConfig")
    args: dict[str, Any] = {}
    # Cluster mode (plugin/cluster/): both or neither, with ipam.type ferry-cluster.
    datastore: DatastoreConfig | None = None
    cluster: ClusterConfig | None = None

    @model_validator(mode="after")
    def _cluster_mode(self) -> NetConf:
        if (self.datastore is None) != (self.cluster is None) or \
                (self.datastore is None) == (self.ipam.type == CLUSTER_IPAM):
            raise ValueError(f"cluster mode needs datastore, cluster and ipam.type "
                             f"{CLUSTER_IPAM} together")
        return self

    @property
    def requested_ips(self) -> list[Address]:
        """IPs asked for by runtimeConfig.ips or args.cni.ips (the spec's conventions)."""
        raw = list(self.runtime_config.get("ips") or [])
        cni_args = self.args.get("cni") if isinstance(self.args, dict) else None
        if isinstance(cni_args, dict):
            raw += list(cni_args.get("ips") or [])
        return [to_address(v) for v in raw]

    def prev(self) -> Result | None:
        return Result.from_dict(self.prev_result) if self.prev_result else None

    @property
    def pod_cidrs(self) -> list[Network]:
        """The pods' own ranges, which the dataplanes exempt from SNAT (pod-to-pod traffic keeps
        pod IPs). ferry-egress overrides it: its range is the very one to SNAT."""
        pools = [p.cidr for p in self.cluster.pools] if self.cluster else []
        return [r.subnet for rs in self.ipam.ranges for r in rs] + pools

    @property
    def snat_ports(self) -> tuple[int, int]:
        low, high = (int(p) for p in self.snat_port_range.split("-"))
        return low, high

    @field_validator("snat_port_range")
    @classmethod
    def _port_range(cls, v: str) -> str:
        low, high = (int(p) for p in v.split("-"))
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"{v}: want LOW-HIGH with 1024 <= LOW <= HIGH <= 65535")
        return v

    @field_validator("agent_socket")
    @classmethod
    def _agent_socket(cls, v: str) -> str:
        absolute_path(v)
        if len(v.encode("utf-8", "surrogateescape")) > MAX_UNIX_PATH:
            raise ValueError(f"longer than a unix socket path ({MAX_UNIX_PATH} bytes)")
        return v


class PodENI(_Model):
    """A pod's own uplink device ("pod ENI"), asked for per pod by runtimeConfig
    {"podENI": {"device": "eni1", "gateway": "10.98.0.1"}} or by
    CNI_ARGS FERRY_POD_ENI=eni1;FERRY_POD_ENI_GW=10.98.0.1. The ADD stores it in the
    attachment record, so DEL finds it without asking again."""

    device: str = Field(min_length=1, max_length=15)
    gateway: ipaddress.IPv4Address | None = None


def pod_eni(conf: NetConf, cni_args: dict[str, str]) -> PodENI | None:
    raw = conf.runtime_config.get("podENI")
    if raw is None and cni_args.get("FERRY_POD_ENI"):
        raw = {"device": cni_args["FERRY_POD_ENI"],
               "gateway": cni_args.get("FERRY_POD_ENI_GW") or None}
    return parse(PodENI, raw) if raw else None


def to_address(value: Any) -> Address:
    try:
        return ipaddress.ip_interface(str(value)).ip
    except ValueError:
        raise CniError(Code.INVALID_CONFIG, "invalid requested IP", str(value)) from None


def parse(model: type[_Model], data: dict[str, Any]) -> Any:
    """Validate `data`, turning pydantic's errors into CNI code 7 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise CniError(Code.INVALID_CONFIG, f"invalid network config: {where}: {first['msg']}",
                       "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                 for x in e.errors())) from None
