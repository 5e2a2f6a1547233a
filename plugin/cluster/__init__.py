"""Cluster mode: block IPAM, workload endpoints, node registration and routes between nodes.

Importing this package loads the standard library only (plugin.ipam checks CLUSTER_IPAM on
the ferry-host-local launcher's -I -S path); the modules below bring pydantic and grpc.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugin.config import NetConf

CLUSTER_IPAM = "ferry-cluster"


def node_name(conf: NetConf) -> str:
    """This node's name in the datastore: cluster.nodeName, else the host name."""
    assert conf.cluster is not None
    return conf.cluster.node_name or socket.gethostname()
