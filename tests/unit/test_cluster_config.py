"""Cluster mode's config and block arithmetic (no etcd needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from cluster_support import POOL4, POOL6, cluster_conf

from plugin.config import NetConf, parse
from plugin.ipam.blocks import block_count, block_span, nth_block, start_index
from plugin.protocol import CniError, Code


def conf(**cluster: Any) -> dict[str, Any]:
    return cluster_conf("net", "node-a", ["http://127.0.0.1:2379"], Path("/tmp/x"), **cluster)


def test_valid_cluster_config_and_pools_exempt_from_snat() -> None:
    c = parse(NetConf, conf())
    assert c.datastore is not None and c.datastore.prefix == "/ferry"
    assert c.cluster is not None and c.cluster.max_blocks_per_host == 20
    assert [p.block_size for p in c.cluster.pools] == [26, 122]
    assert {str(n) for n in c.pod_cidrs} >= {POOL4, POOL6}


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("datastore"), "cluster mode needs"),
    (lambda d: d.pop("cluster"), "cluster mode needs"),
    (lambda d: d["ipam"].update(type="host-local", ranges=[[{"subnet": "10.1.0.0/24"}]]),
     "cluster mode needs"),
    (lambda d: d["cluster"]["pools"][0].update(blockSize=19), "blockSize 19"),
    (lambda d: d["cluster"]["pools"][1].update(blockSize=129), "blockSize 129"),
    (lambda d: d["cluster"]["pools"][0].update(cidr="10.32.0.0/28", blockSize=26),
     "larger than the pool"),
    (lambda d: d["cluster"]["pools"].append({"cidr": "10.32.128.0/17"}), "overlaps"),
    (lambda d: d["datastore"].update(endpoints=["127.0.0.1:2379"]), "http(s)://"),
    (lambda d: d["datastore"].update(endpoints=[]), "datastore.endpoints"),
    (lambda d: d["datastore"].update(tls={"certFile": "/x"}), "go together"),
    (lambda d: d["cluster"].update(encap="ipip"), "cluster.encap"),
    (lambda d: d["cluster"].update(nodeName="bad name"), "cluster.nodeName"),
])
def test_bad_cluster_config_is_code_7_naming_the_field(change: Any, field: str) -> None:
    d = conf()
    change(d)
    with pytest.raises(CniError) as err:
        parse(NetConf, d)
    assert err.value.code == Code.INVALID_CONFIG
    assert field in f"{err.value.msg} {err.value.details}", err.value


def test_no_datastore_is_single_node_mode_unchanged() -> None:
    d = {"cniVersion": "1.0.0", "name": "n", "type": "ferry",
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    c = parse(NetConf, d)
    assert c.datastore is None and c.cluster is None
    assert [str(n) for n in c.pod_cidrs] == ["10.1.0.0/24"]


def test_block_arithmetic() -> None:
    c = parse(NetConf, conf())
    assert c.cluster is not None
    p4, p6 = c.cluster.pools
    assert block_count(p4) == 1024 and block_count(p6) == 1 << 74
    assert str(nth_block(p4, 0)) == "10.32.0.0/26" and str(nth_block(p4, 1023)) == \
        "10.32.255.192/26"
    assert str(nth_block(p6, 1)) == "fd32::40/122"
    # The first block leaves out the pool's network address and its gateway (candidates skip
    # the gateway), the last the broadcast address.
    first, last = block_span(p4, nth_block(p4, 0)), block_span(p4, nth_block(p4, 1023))
    assert first.start == int(ipaddress.ip_address("10.32.0.1")) and first.gateway in first
    assert last.end == int(ipaddress.ip_address("10.32.255.254"))
    assert str(first.config(ipaddress.ip_address("10.32.0.2")).address) == "10.32.0.2/16"
    assert 0 <= start_index(p4, "node-a") < 1024
    assert start_index(p4, "node-a") != start_index(p4, "node-b")
