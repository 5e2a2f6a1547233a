"""Cluster-mode configs for the tests: a network config in cluster mode for one node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

POOL4 = "10.32.0.0/16"
POOL6 = "fd32::/48"


def cluster_conf(network: str, node: str, endpoints: list[str], tmp: Path, *,
                 prefix: str = "/ferry", block4: int = 26, block6: int = 122,
                 **cluster: Any) -> dict[str, Any]:
    """ferry's config for `node` in cluster mode; `cluster` overrides cluster.* fields."""
    return {
        "cniVersion": "1.0.0", "name": network, "type": "ferry", "mtu": 1400,
        "stateDir": str(tmp / "state"),
        "log": {"file": str(tmp / "log" / "ferry.log"), "level": "debug"},
        "datastore": {"type": "etcd", "endpoints": endpoints, "prefix": prefix},
        "cluster": {"nodeName": node, "pools": [{"cidr": POOL4, "blockSize": block4},
                                                {"cidr": POOL6, "blockSize": block6}],
                    **cluster},
        "ipam": {"type": "ferry-cluster", "dataDir": str(tmp / "ipam")},
    }
