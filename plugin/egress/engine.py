"""ferry-egress ADD, DEL, CHECK, STATUS and GC, on top of ferry's own pieces: provision() /
teardown() of plugin.engine with its undo stack, wiring, IPAM and the network's dataplane.

- Only chained: no prevResult is a config error (7), as AWS's "must be called as a chained
  plugin". `enabled: false` makes the plugin a no-op: ADD prints prevResult unchanged (in the
  requested version's format), DEL/CHECK/GC/STATUS do nothing (AWS's DEL does nothing either).
- The pod needs the egress only when prevResult has no IP of the egress family (an IPv6-only
  pod for egress-v4); a pod that has one already is passed through untouched, since a second
  default route of that family would take its traffic away from its main interface.
- The result is prevResult plus the egress veth's host and container interfaces, without the
  egress IP: as AWS ("Copy interfaces over to result, but not IPs"), so the runtime keeps
  reporting the pod's real address only; the IP is node-local and SNATed anyway.
- Records live under <stateDir>/.egress/<network>/ (a network name cannot start with "."), so
  ferry's own GC and ferryd's reconcile, which walk <stateDir>/<network>/, never see them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from plugin import ipam, wiring
from plugin.config import parse
from plugin.egress.config import EgressConf, EgressSwitch
from plugin.engine import (
    Command,
    Context,
    del_request,
    dispatch,
    find,
    new_attachment,
    owner,
    provision,
    teardown,
)
from plugin.log import log
from plugin.protocol import LATEST_VERSION, CniError, Code, Request, Result
from plugin.state import EGRESS_DIR, StateStore
from plugin.undo import Undo


def run(req: Request) -> dict[str, Any] | None:
    switch: EgressSwitch = parse(EgressSwitch, req.config)
    if req.command == "ADD" and switch.prev_result is None:
        raise CniError(Code.INVALID_CONFIG, "ferry-egress must be called as a chained plugin",
                       "the config has no prevResult: list it after the main plugin "
                       "(ferry, ptp, ...) in a conflist")
    if not switch.enabled:
        if req.command == "ADD":
            assert switch.prev_result is not None
            return Result.from_dict(switch.prev_result).to_dict(req.cni_version)
        return None
    conf: EgressConf = parse(EgressConf, req.config)
    return dispatch(_COMMANDS, conf, req, Context(), ifname=conf.egress_ifname,
                    plugin="ferry-egress")


def states(conf: EgressConf) -> StateStore:
    return StateStore(conf.state_dir, f"{EGRESS_DIR}/{conf.name}", conf.veth_prefix)


def egress_request(conf: EgressConf, req: Request) -> Request:
    """The request as the shared pieces must see it: the egress interface instead of
    CNI_IFNAME (IPAM reservations, veth names and records are keyed by it), and no CNI_ARGS IP
    (the main plugin's address)."""
    return dataclasses.replace(req, ifname=conf.egress_ifname,
                               args={k: v for k, v in req.args.items() if k != "IP"})


def _needed(conf: EgressConf, prev: Result) -> bool:
    return not any(ip.address.version == conf.family for ip in prev.ips)


def add(conf: EgressConf, req: Request, ctx: Context) -> dict[str, Any]:
    prev = conf.prev()
    assert prev is not None  # run() refused the request without one
    if not _needed(conf, prev):
        log.info("egress: the pod has IPv%d already, nothing to add", conf.family,
                 extra={"container": req.container_id, "network": conf.name})
        return prev.to_dict(conf.cni_version)
    ereq = egress_request(conf, req)
    store = states(conf)
    att = new_attachment(conf, ereq, store)
    with Undo() as undo:
        allocated, ips, links = provision(conf, ereq, att, store, undo, ctx)
        # The record keeps the egress interface's own result: CHECK compares against it.
        own = Result(interfaces=[links.host, links.container], ips=ips,
                     routes=wiring.result_routes(ips, allocated.routes))
        att.result, att.complete = own.to_dict(LATEST_VERSION), True
        store.save(att)
        chained = dataclasses.replace(prev, interfaces=[*prev.interfaces, links.host,
                                                        links.container])
        return chained.to_dict(conf.cni_version)


def delete(conf: EgressConf, req: Request, ctx: Context) -> None:
    """By the record (netns, veth, IPs), so a DEL with the netns gone still finds it all."""
    ereq = egress_request(conf, req)
    store = states(conf)
    att, recorded = find(conf, ereq, store)
    teardown(conf, ereq, att, store, recorded, ctx)
    return None


def check(conf: EgressConf, req: Request, ctx: Context) -> None:
    prev = conf.prev()
    if prev is None:
        raise CniError(Code.INVALID_CONFIG, "CHECK needs prevResult")
    if not _needed(conf, prev):
        return None  # ADD passed this pod through: nothing of ours to check
    ereq = egress_request(conf, req)
    if not any(i.name == ereq.ifname and i.sandbox for i in prev.interfaces):
        raise CniError(Code.CHECK_FAILED, f"prevResult has no egress interface {ereq.ifname}")
    store = states(conf)
    att = store.load(ereq.container_id, ereq.ifname)
    if att is None or not att.complete or att.result is None:
        raise CniError(Code.UNKNOWN_CONTAINER, "ferry-egress has no attachment for this "
                       "container", f"{ereq.container_id}/{ereq.ifname}")
    own = Result.from_dict(att.result)
    wiring.check(ereq.netns, ereq.ifname, att.host_veth, owner(store, att), conf.mtu, own)
    ipam.check(conf, ereq, [ip.address.ip for ip in own.ips])
    return None


def status(conf: EgressConf, req: Request, ctx: Context) -> None:
    ipam.status(conf)  # the egress range running out is what can go wrong
    return None


def gc(conf: EgressConf, req: Request, ctx: Context) -> None:
    """Remove the egress of every container the runtime no longer lists (by container id:
    the runtime knows the attachment by CNI_IFNAME, not by the egress interface)."""
    valid_ids = {cid for cid, _ in req.valid_attachments}
    store = states(conf)
    for att in store.all():
        if att.container_id not in valid_ids:
            log.info("egress gc: removing stale attachment",
                     extra={"container": att.container_id, "ifname": att.ifname})
            teardown(conf, del_request(att, req.config, req.path), att, store, True, ctx)
    ipam.gc(conf, {(cid, conf.egress_ifname) for cid in valid_ids})
    return None


_COMMANDS: dict[str, Command] = {
    "ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc,
}
