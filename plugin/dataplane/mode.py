"""Which dataplane a network gets: chosen once per process, with the fallback rule and the
mode switch in one place.

- choose(): the dataplane for conf.dataplane (`auto` probes, and says in the log what it
  chose and why).
- dataplane_for(): the dataplane of this process's CNI requests (ADD, DEL, GC): ferryd's
  own choice (adopt(), after its load), else chosen at the first request and kept, so that
  `auto` probes once per process, not once per pod.
- load(): the node level of the chosen dataplane, after removing the other modes' state
  (both would translate the same packets), falling back under `auto` when ebpf cannot load.
"""

from __future__ import annotations

import threading
from typing import Any

from plugin.config import NetConf
from plugin.dataplane.base import Dataplane, RoutingOnly
from plugin.log import log
from plugin.protocol import CniError

_chosen: dict[tuple[str, str, str], Dataplane] = {}
_chosen_lock = threading.Lock()


def _key(conf: NetConf) -> tuple[str, str, str]:
    """What the choice depends on: the network, its mode and where its pins live."""
    return conf.name, conf.dataplane, conf.bpffs_root


def choose(conf: NetConf, loading: bool = False) -> Dataplane:
    """The dataplane for conf.dataplane. `loading`: the caller is about to load the node-level
    state, so missing pins do not count against ebpf.

    ebpf: always the eBPF dataplane (its ADD fails with code 11 until `ferryctl load` ran).
    auto: ebpf when plugin.dataplane.ebpf.probe() passes, else the fallback below.
    iptables: the fallback, plugin.dataplane.iptables.
    """
    if conf.dataplane == "none":
        return RoutingOnly()
    # Imported here, not at the top: a routes-only standalone ADD skips loading the eBPF and
    # iptables code (about 20 ms of imports per exec).
    from plugin.dataplane.ebpf import Ebpf
    from plugin.dataplane.ebpf import probe as ebpf_probe

    if conf.dataplane == "ebpf":
        return Ebpf()
    if conf.dataplane == "auto":
        ok, why = ebpf_probe(conf, need_pins=not loading)
        if ok:
            log.info("dataplane auto: ebpf (%s)", why)
            return Ebpf()
        log.info("dataplane auto: not ebpf (%s)", why)
    return fallback(conf)


def fallback(conf: NetConf) -> Dataplane:
    """The iptables dataplane: for mode iptables, and for auto where ebpf is not possible.
    auto on a node with no iptables or no SNAT target (no uplink, no node IP) routes only:
    the pods still work, and the log says why."""
    from plugin.dataplane.iptables import Iptables
    from plugin.dataplane.iptables import probe as iptables_probe

    if conf.dataplane == "auto":
        ok, why = iptables_probe(conf)
        if not ok:
            log.info("dataplane auto: routing only (%s)", why)
            return RoutingOnly()
        log.info("dataplane auto: iptables (%s)", why)
    return Iptables()


def adopt(conf: NetConf, dataplane: Dataplane) -> None:
    """Make `dataplane` this process's choice for conf's network (ferryd, once loaded)."""
    with _chosen_lock:
        _chosen[_key(conf)] = dataplane


def dataplane_for(conf: NetConf) -> Dataplane:
    """The dataplane of this process's CNI requests for conf's network."""
    with _chosen_lock:
        found = _chosen.get(_key(conf))
        if found is None:
            found = _chosen[_key(conf)] = choose(conf)
        return found


def load(conf: NetConf, cflags: tuple[str, ...] = (),
         dataplane: Dataplane | None = None) -> tuple[Dataplane, dict[str, Any]]:
    """Load the node level of `dataplane` (default: choose()'s for a load); with `auto`, a
    node that cannot load ebpf gets the fallback, and the log says why. Returns the dataplane
    that loaded and its summary."""
    chosen = dataplane or choose(conf, loading=True)
    try:
        return chosen, _switch_to(chosen, conf, cflags)
    except CniError as e:
        if conf.dataplane != "auto":
            raise
        log.warning("dataplane auto: %s cannot load (%s); using the fallback", chosen.name, e)
        chosen = fallback(conf)
        return chosen, _switch_to(chosen, conf, cflags)


def _switch_to(dataplane: Dataplane, conf: NetConf, cflags: tuple[str, ...]) -> dict[str, Any]:
    """Remove the other SNAT mode's state of the network (ferry's chains would translate what
    the eBPF filters already did, and the other way round), then load `dataplane`."""
    if dataplane.name == "none":
        return dataplane.load(conf, cflags)
    from plugin.dataplane.ebpf import Ebpf
    from plugin.dataplane.iptables import Iptables

    removed = {other.name: other.unload(conf) for other in (Ebpf(), Iptables())
               if other.name != dataplane.name}
    out = dataplane.load(conf, cflags)
    if "ebpf" in removed:
        out["ebpfRemoved"] = bool(removed["ebpf"]["removedPins"] or removed["ebpf"]["detached"])
    return out
