"""Dataplanes: what happens to a pod's traffic beyond routing (SNAT, pod-ENI redirection).

One interface, one implementation per mode; the engine never branches on the mode itself.
"""

from __future__ import annotations

from typing import Protocol

from plugin.config import NetConf
from plugin.log import log
from plugin.state import Attachment


class Dataplane(Protocol):
    name: str

    def attach(self, conf: NetConf, att: Attachment) -> None:
        """Install the pod's dataplane state; raise CniError on failure (ADD rolls back)."""

    def detach(self, conf: NetConf, att: Attachment) -> None:
        """Remove exactly what attach installed; a no-op when it is already gone."""


class RoutingOnly:
    """Plain routed pods: nothing beyond the veth and routes (mode "none")."""

    name = "none"

    def attach(self, conf: NetConf, att: Attachment) -> None:
        return None

    def detach(self, conf: NetConf, att: Attachment) -> None:
        return None


def select(conf: NetConf) -> Dataplane:
    """The dataplane for conf.dataplane. ebpf and iptables are built by later milestones;
    until they land, every mode routes only, and the log says so."""
    if conf.dataplane != "none":
        log.debug("dataplane %s not available in this build, routing only", conf.dataplane)
    return RoutingOnly()
