from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("name", "ip4", "ip6", "blocks", "alive", "lease_age_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IP4_FIELD_NUMBER: _ClassVar[int]
    IP6_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    LEASE_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ip4: str
    ip6: str
    blocks: _containers.RepeatedScalarFieldContainer[str]
    alive: bool
    lease_age_seconds: float
    def __init__(self, name: _Optional[str] = ..., ip4: _Optional[str] = ..., ip6: _Optional[str] = ..., blocks: _Optional[_Iterable[str]] = ..., alive: _Optional[bool] = ..., lease_age_seconds: _Optional[float] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("node", "datastore_up", "registered", "blocks", "routes", "endpoints", "syncs", "last_sync_unix", "last_error", "nodes", "cluster_endpoints")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DATASTORE_UP_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SYNCS_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    node: str
    datastore_up: bool
    registered: bool
    blocks: _containers.RepeatedScalarFieldContainer[str]
    routes: int
    endpoints: int
    syncs: int
    last_sync_unix: float
    last_error: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    cluster_endpoints: int
    def __init__(self, node: _Optional[str] = ..., datastore_up: _Optional[bool] = ..., registered: _Optional[bool] = ..., blocks: _Optional[_Iterable[str]] = ..., routes: _Optional[int] = ..., endpoints: _Optional[int] = ..., syncs: _Optional[int] = ..., last_sync_unix: _Optional[float] = ..., last_error: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., cluster_endpoints: _Optional[int] = ...) -> None: ...
