"""ferry-egress's network config: ferry's NetConf (ipam, mtu, dataplane, uplink, snatPortRange,
randomizeSNAT, bpffsRoot, stateDir, log, ...) plus the AWS egress-cni keys (enabled, ifName).

The family it provides is the family of its IPAM range (one family only): a 169.254.172.0/22
range makes it egress-v4, an fd00::ac:00/118 range egress-v6. nodeIP, when given, must be of
that family; egress-v6 needs it and it must be a global unicast IPv6 (in Go's sense, as AWS
checks it: not link-local, loopback, multicast or unspecified; ULAs count). Whether a pod needs
it at all is the prevResult's business: see plugin.egress.engine.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator, model_validator

from plugin.config import NetConf, _Model
from plugin.protocol import Address, Network

EGRESS_IFNAMES = {4: "v4if0", 6: "v6if0"}  # as the AWS plugin names them


class EgressSwitch(_Model):
    """What is read before the rest of the config is validated: a disabled entry may carry
    an incomplete config (AWS writes the entry into every conflist, nodeIP possibly empty)."""

    # AWS reads the string "false"; a JSON bool works too (pydantic's lax bool parsing).
    enabled: bool = True
    prev_result: dict[str, Any] | None = Field(None, alias="prevResult")


class EgressConf(NetConf):
    type: str = "ferry-egress"
    enabled: bool = True
    ifname: str | None = Field(None, alias="ifName", min_length=1, max_length=15)

    @field_validator("node_ip", mode="before")
    @classmethod
    def _empty_node_ip(cls, v: Any) -> Any:
        return None if v == "" else v  # AWS templates write "" when the node has none

    @model_validator(mode="after")
    def _one_family(self) -> EgressConf:
        if not self.ipam.builtin:
            raise ValueError(f"ipam.type {self.ipam.type!r}: ferry-egress allocates from the "
                             "built-in host-local IPAM only (host-local or ferry-host-local)")
        families = {r.subnet.version for rs in self.ipam.ranges for r in rs}
        if len(families) != 1:
            raise ValueError("ipam.ranges must be of one family: the one the egress provides")
        family = families.pop()
        for route in self.ipam.routes:
            # A route of the pod's main family through the egress veth would steal its traffic.
            if route.dst.version != family:
                raise ValueError(f"ipam route {route.dst} is not IPv{family}, the egress family")
        if self.node_ip is not None and self.node_ip.version != family:
            raise ValueError(f"nodeIP {self.node_ip} is not IPv{family}, the family of the "
                             "egress range")
        if family == 6:
            if self.node_ip is None:
                raise ValueError("egress-v6 needs nodeIP, the node's global unicast IPv6")
            if not global_unicast(self.node_ip):
                raise ValueError(f"nodeIP {self.node_ip} is not a global unicast IPv6 address, "
                                 "which IPv6 egress needs to SNAT to")
        return self

    @property
    def family(self) -> int:
        return self.ipam.ranges[0][0].subnet.version

    @property
    def egress_ifname(self) -> str:
        return self.ifname or EGRESS_IFNAMES[self.family]

    @property
    def pod_cidrs(self) -> list[Network]:
        return []  # the egress range is exactly what must be SNATed

    @property
    def requested_ips(self) -> list[Address]:
        return []  # runtimeConfig.ips / args.cni.ips name the main plugin's addresses


def global_unicast(ip: Address) -> bool:
    """Go's net.IP.IsGlobalUnicast, which AWS uses: ULAs (fd00::/8) pass, unlike ip.is_global."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return global_unicast(ip.ipv4_mapped)
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local
                or ip == ipaddress.IPv4Address("255.255.255.255"))
