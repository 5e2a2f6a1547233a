"""Config models of cluster mode: `datastore`, `cluster` and the pools, part of NetConf.

  "datastore": {"type": "etcd", "endpoints": ["https://10.0.0.5:2379"], "prefix": "/ferry",
                "tls": {"caFile": "...", "certFile": "...", "keyFile": "..."}},
  "cluster": {"nodeName": "node-a", "encap": "none",
              "pools": [{"cidr": "10.32.0.0/16", "blockSize": 26},
                        {"cidr": "fd32::/48", "blockSize": 122}],
              "maxBlocksPerHost": 20, "blockReleaseSeconds": 300, "leaseTTL": 30},
  "ipam": {"type": "ferry-cluster", "dataDir": "/var/lib/cni/networks"}

A config without `datastore` is single-node mode, exactly as before.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plugin.cluster import CLUSTER_IPAM
from plugin.protocol import Network

__all__ = ["CLUSTER_IPAM", "ClusterConfig", "DatastoreConfig", "PoolConfig", "TLSConfig"]

BLOCK_SIZES = {4: (20, 32, 26), 6: (116, 128, 122)}  # (shortest, longest, default), Calico's


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TLSConfig(_Model):
    ca_file: str | None = Field(None, alias="caFile")
    cert_file: str | None = Field(None, alias="certFile")
    key_file: str | None = Field(None, alias="keyFile")

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together")
        return self


class DatastoreConfig(_Model):
    type: Literal["etcd"]
    endpoints: list[str] = Field(min_length=1)
    prefix: str = Field("/ferry", pattern=r"^/[A-Za-z0-9._/-]*$")
    tls: TLSConfig | None = None
    timeout_seconds: float = Field(2.0, alias="timeoutSeconds", gt=0, le=60)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for e in v:
            if not e.startswith(("http://", "https://")) or ":" not in e.split("//", 1)[1]:
                raise ValueError(f"{e!r}: want http(s)://HOST:PORT")
        return v


class PoolConfig(_Model):
    cidr: Network
    block_size: int | None = Field(None, alias="blockSize")

    @model_validator(mode="after")
    def _block(self) -> PoolConfig:
        low, high, default = BLOCK_SIZES[self.cidr.version]
        size = self.block_size if self.block_size is not None else default
        if not low <= size <= high:
            raise ValueError(f"blockSize {size} of {self.cidr}: want {low}-{high}")
        if size < self.cidr.prefixlen:
            raise ValueError(f"blockSize {size} is larger than the pool {self.cidr}")
        self.block_size = size
        return self

    @property
    def gateway(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The pods' (virtual) gateway: the pool's first address, never handed out; the pod
        reaches it through the static neighbour entry for its host veth."""
        return self.cidr.network_address + 1


class ClusterConfig(_Model):
    node_name: str | None = Field(None, alias="nodeName", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                  max_length=253)
    pools: list[PoolConfig] = Field(min_length=1)
    max_blocks_per_host: int = Field(20, alias="maxBlocksPerHost", ge=1)
    block_release_seconds: float = Field(300.0, alias="blockReleaseSeconds", ge=0)
    encap: Literal["none", "vxlan"] = "none"
    vxlan_vni: int = Field(4096, alias="vxlanVNI", ge=1, le=16777215)
    vxlan_port: int = Field(4789, alias="vxlanPort", ge=1, le=65535)
    lease_ttl: int = Field(30, alias="leaseTTL", ge=3, le=3600)
    resync_seconds: float = Field(10.0, alias="resyncSeconds", gt=0)

    @model_validator(mode="after")
    def _pools(self) -> ClusterConfig:
        for i, p in enumerate(self.pools):
            for q in self.pools[:i]:
                if p.cidr.overlaps(q.cidr):
                    raise ValueError(f"pool {p.cidr} overlaps {q.cidr}")
        if len({p.cidr.version for p in self.pools}) != len(self.pools):
            raise ValueError("at most one pool per IP family")
        return self
