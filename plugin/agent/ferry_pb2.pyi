from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NetworkRequest(_message.Message):
    __slots__ = ("container_id", "netns", "ifname", "k8s_pod_namespace", "k8s_pod_name", "network_config_json")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    K8S_POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    K8S_POD_NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    netns: str
    ifname: str
    k8s_pod_namespace: str
    k8s_pod_name: str
    network_config_json: str
    def __init__(self, container_id: _Optional[str] = ..., netns: _Optional[str] = ..., ifname: _Optional[str] = ..., k8s_pod_namespace: _Optional[str] = ..., k8s_pod_name: _Optional[str] = ..., network_config_json: _Optional[str] = ...) -> None: ...

class NetworkReply(_message.Message):
    __slots__ = ("success", "cni_json", "error_code", "error_msg", "ips", "host_veth")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CNI_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MSG_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    HOST_VETH_FIELD_NUMBER: _ClassVar[int]
    success: bool
    cni_json: str
    error_code: int
    error_msg: str
    ips: _containers.RepeatedScalarFieldContainer[str]
    host_veth: str
    def __init__(self, success: _Optional[bool] = ..., cni_json: _Optional[str] = ..., error_code: _Optional[int] = ..., error_msg: _Optional[str] = ..., ips: _Optional[_Iterable[str]] = ..., host_veth: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("pod_namespace", "pod_name", "container_id", "ifname", "ips", "host_veth", "pod_eni", "dataplane", "netns", "complete")
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    HOST_VETH_FIELD_NUMBER: _ClassVar[int]
    POD_ENI_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    pod_namespace: str
    pod_name: str
    container_id: str
    ifname: str
    ips: _containers.RepeatedScalarFieldContainer[str]
    host_veth: str
    pod_eni: str
    dataplane: str
    netns: str
    complete: bool
    def __init__(self, pod_namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., ips: _Optional[_Iterable[str]] = ..., host_veth: _Optional[str] = ..., pod_eni: _Optional[str] = ..., dataplane: _Optional[str] = ..., netns: _Optional[str] = ..., complete: _Optional[bool] = ...) -> None: ...

class Endpoints(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class NatEntry(_message.Message):
    __slots__ = ("proto", "pod_addr", "pod_port", "dst_addr", "dst_port", "nat_addr", "nat_port", "idle_seconds")
    PROTO_FIELD_NUMBER: _ClassVar[int]
    POD_ADDR_FIELD_NUMBER: _ClassVar[int]
    POD_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_ADDR_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    NAT_ADDR_FIELD_NUMBER: _ClassVar[int]
    NAT_PORT_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    proto: str
    pod_addr: str
    pod_port: int
    dst_addr: str
    dst_port: int
    nat_addr: str
    nat_port: int
    idle_seconds: float
    def __init__(self, proto: _Optional[str] = ..., pod_addr: _Optional[str] = ..., pod_port: _Optional[int] = ..., dst_addr: _Optional[str] = ..., dst_port: _Optional[int] = ..., nat_addr: _Optional[str] = ..., nat_port: _Optional[int] = ..., idle_seconds: _Optional[float] = ...) -> None: ...

class NatTable(_message.Message):
    __slots__ = ("dataplane", "entries")
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    dataplane: str
    entries: _containers.RepeatedCompositeFieldContainer[NatEntry]
    def __init__(self, dataplane: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[NatEntry, _Mapping]]] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("pod_addr", "host_veth", "eni")
    POD_ADDR_FIELD_NUMBER: _ClassVar[int]
    HOST_VETH_FIELD_NUMBER: _ClassVar[int]
    ENI_FIELD_NUMBER: _ClassVar[int]
    pod_addr: str
    host_veth: str
    eni: str
    def __init__(self, pod_addr: _Optional[str] = ..., host_veth: _Optional[str] = ..., eni: _Optional[str] = ...) -> None: ...

class Redirects(_message.Message):
    __slots__ = ("dataplane", "redirects")
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    REDIRECTS_FIELD_NUMBER: _ClassVar[int]
    dataplane: str
    redirects: _containers.RepeatedCompositeFieldContainer[Redirect]
    def __init__(self, dataplane: _Optional[str] = ..., redirects: _Optional[_Iterable[_Union[Redirect, _Mapping]]] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("ip", "container_id", "ifname")
    IP_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    ip: str
    container_id: str
    ifname: str
    def __init__(self, ip: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ...) -> None: ...

class IpamPool(_message.Message):
    __slots__ = ("subnets", "total", "used", "free", "reservations")
    SUBNETS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    subnets: str
    total: int
    used: int
    free: int
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    def __init__(self, subnets: _Optional[str] = ..., total: _Optional[int] = ..., used: _Optional[int] = ..., free: _Optional[int] = ..., reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ...) -> None: ...

class IpamPools(_message.Message):
    __slots__ = ("network", "data_dir", "pools")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    network: str
    data_dir: str
    pools: _containers.RepeatedCompositeFieldContainer[IpamPool]
    def __init__(self, network: _Optional[str] = ..., data_dir: _Optional[str] = ..., pools: _Optional[_Iterable[_Union[IpamPool, _Mapping]]] = ...) -> None: ...

class Program(_message.Message):
    __slots__ = ("name", "kind", "pin", "id", "attached_to")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_TO_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    pin: str
    id: int
    attached_to: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., pin: _Optional[str] = ..., id: _Optional[int] = ..., attached_to: _Optional[str] = ...) -> None: ...

class Programs(_message.Message):
    __slots__ = ("dataplane", "pin_dir", "programs")
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    PIN_DIR_FIELD_NUMBER: _ClassVar[int]
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    dataplane: str
    pin_dir: str
    programs: _containers.RepeatedCompositeFieldContainer[Program]
    def __init__(self, dataplane: _Optional[str] = ..., pin_dir: _Optional[str] = ..., programs: _Optional[_Iterable[_Union[Program, _Mapping]]] = ...) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("ok", "version", "uptime_seconds", "network", "dataplane", "requests_served", "detail")
    OK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    version: str
    uptime_seconds: float
    network: str
    dataplane: str
    requests_served: int
    detail: str
    def __init__(self, ok: _Optional[bool] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., network: _Optional[str] = ..., dataplane: _Optional[str] = ..., requests_served: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...
