"""Dataplanes: what happens to a pod's traffic beyond routing (SNAT, pod-ENI redirection).

One interface, one implementation per mode; the engine never branches on the mode itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from plugin.config import NetConf
from plugin.log import log
from plugin.state import Attachment


class Dataplane(Protocol):
    name: str

    def attach(self, conf: NetConf, att: Attachment) -> None:
        """Install the pod's dataplane state; raise CniError on failure (ADD rolls back)."""

    def detach(self, conf: NetConf, att: Attachment) -> None:
        """Remove exactly what attach installed; a no-op when it is already gone."""

    # Introspection (ferryd's gRPC API, ferryctl): plain dicts shaped like the proto messages.
    def nat_entries(self, conf: NetConf) -> list[dict[str, Any]]:
        """Live NAT translations (NatEntry fields)."""

    def redirects(self, conf: NetConf) -> list[dict[str, Any]]:
        """Pod-ENI redirections (Redirect fields)."""

    def programs(self, conf: NetConf) -> dict[str, Any]:
        """{"pin_dir": ..., "programs": [Program fields]}."""


class RoutingOnly:
    """Plain routed pods: nothing beyond the veth and routes (mode "none")."""

    name = "none"

    def attach(self, conf: NetConf, att: Attachment) -> None:
        return None

    def detach(self, conf: NetConf, att: Attachment) -> None:
        return None

    def nat_entries(self, conf: NetConf) -> list[dict[str, Any]]:
        return []

    def redirects(self, conf: NetConf) -> list[dict[str, Any]]:
        return []

    def programs(self, conf: NetConf) -> dict[str, Any]:
        return {}


def select(conf: NetConf) -> Dataplane:
    """The dataplane for conf.dataplane; `auto` says in the log what it chose and why.

    ebpf: always the eBPF dataplane (its ADD fails with code 11 until `ferryctl load` ran).
    auto: ebpf when plugin.dataplane.ebpf.probe() passes, else the fallback below.
    iptables: not built yet; the seam is `_fallback`, which auto uses too.
    """
    if conf.dataplane == "none":
        return RoutingOnly()
    if conf.dataplane == "ebpf":
        from plugin.dataplane.ebpf import Ebpf

        return Ebpf()
    if conf.dataplane == "auto":
        from plugin.dataplane.ebpf import Ebpf, probe

        ok, why = probe(conf)
        if ok:
            log.info("dataplane auto: ebpf (%s)", why)
            return Ebpf()
        log.info("dataplane auto: not ebpf (%s)", why)
    return _fallback(conf)


def _fallback(conf: NetConf) -> Dataplane:
    """Where the iptables dataplane plugs in (a later milestone); routing only until then."""
    log.info("dataplane %s: iptables dataplane not built yet, routing only", conf.dataplane)
    return RoutingOnly()
