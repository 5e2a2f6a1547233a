"""ADD, DEL, CHECK, STATUS and GC: the one implementation, run in-process by the `ferry`
binary (standalone mode) or by the node agent on the binary's behalf.

ADD keeps an undo stack: every step that changed the host pushes its inverse, and any failure
unwinds the stack in reverse, so a failed ADD leaves the host as it found it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from plugin import ipam, wiring
from plugin import log as logging_setup
from plugin.config import NetConf, parse, pod_eni
from plugin.dataplane.base import Dataplane
from plugin.dataplane.mode import dataplane_for
from plugin.log import log
from plugin.paths import missing_dirs, remove_empty
from plugin.protocol import CniError, Code, IPConfig, Request, Result
from plugin.rtnl import Link, Rtnl
from plugin.state import Attachment, StateStore, owner_tag, parse_owner_tag

VALID_ATTACHMENTS = "cni.dev/valid-attachments"


def run(req: Request) -> dict[str, Any] | None:
    """Execute one validated request; the returned dict (if any) is printed as the result."""
    conf: NetConf = parse(NetConf, req.config)
    if conf.datastore is not None:  # cluster mode: workload endpoints around ADD and DEL
        from plugin.cluster.endpoints import commands

        return dispatch(commands(_COMMANDS), conf, req)
    return dispatch(_COMMANDS, conf, req)


def dispatch(commands: dict[str, Callable[[Any, Request], dict[str, Any] | None]],
             conf: NetConf, req: Request, **ctx: str) -> dict[str, Any] | None:
    """Run req.command's handler with the log set up, and log its outcome and duration
    (ctx: extra log fields, e.g. ferry-egress's interface)."""
    logging_setup.setup(conf.log)
    started = time.monotonic()
    ctx = {"cmd": req.command, "container": req.container_id, "ifname": req.ifname,
           "network": conf.name, **pod_identity(req), **ctx}
    try:
        out = commands[req.command](conf, req)
    except CniError as e:
        log.warning("%s failed: %s", req.command, e, extra={**ctx, "code": e.code})
        raise
    log.info("%s ok", req.command,
             extra={**ctx, "ms": round((time.monotonic() - started) * 1000, 1)})
    return out


def pod_identity(req: Request) -> dict[str, str]:
    """The CNI_ARGS pod identity, for the log: an operator follows one pod (across its
    sandboxes) by namespace/name, and one sandbox by its infra container id."""
    keys = {"K8S_POD_NAMESPACE": "k8s_namespace", "K8S_POD_NAME": "k8s_pod",
            "K8S_POD_INFRA_CONTAINER_ID": "k8s_infra_id"}
    return {field: req.args[arg] for arg, field in keys.items() if req.args.get(arg)}


def store(conf: NetConf) -> StateStore:
    return StateStore(conf.state_dir, conf.name, conf.veth_prefix)


def owner(states: StateStore, att: Attachment) -> str:
    return owner_tag(states.scope, att.container_id, att.ifname)


def host_veth(conf: NetConf, req: Request) -> str:
    return wiring.host_veth_name(conf.veth_prefix, req.container_id, req.ifname, req.k8s_pod)


def new_attachment(conf: NetConf, req: Request, states: StateStore) -> Attachment:
    """The record a new ADD starts from; refused if one exists (DEL first)."""
    if states.load(req.container_id, req.ifname) is not None:
        raise CniError(Code.INVALID_ENV, "container is already attached to this network",
                       f"{req.container_id}/{req.ifname}: DEL it first")
    return Attachment(container_id=req.container_id, ifname=req.ifname, netns=req.netns,
                      host_veth=host_veth(conf, req),
                      k8s_pod=list(req.k8s_pod) if req.k8s_pod else None,
                      owner_pid=os.getpid())


def add(conf: NetConf, req: Request) -> dict[str, Any]:
    states = store(conf)
    att = new_attachment(conf, req, states)
    eni = pod_eni(conf, req.args)
    att.pod_eni = eni.model_dump(mode="json") if eni else None
    undo: list[Callable[[], None]] = []
    try:
        allocated, ips, links = provision(conf, req, att, states, undo)
        dns = conf.dns.model_dump(exclude_defaults=True) if conf.dns else allocated.dns
        result = Result(interfaces=[links.host, links.container], ips=ips,
                        routes=wiring.result_routes(ips, allocated.routes), dns=dns)
        out = result.to_dict(conf.cni_version)
        att.result, att.complete = out, True
        states.save(att)
        return out
    except BaseException as failure:
        unwind(undo, failure)
        raise


def provision(conf: NetConf, req: Request, att: Attachment, states: StateStore,
              undo: list[Callable[[], None]]) -> tuple[Result, list[IPConfig], wiring.PodLinks]:
    """Record, IP, veth pair and dataplane state of one attachment, each step pushing its
    inverse on `undo` (the caller unwinds on failure). Shared by ferry's ADD and ferry-egress's
    (which passes its own req.ifname, the egress interface)."""
    new_dirs = missing_dirs(states.dir)
    undo.append(lambda: remove_empty(new_dirs))  # last undone: after the record went
    states.save(att)
    undo.append(lambda: states.remove(att.container_id, att.ifname))
    allocated, release = ipam.reserve(conf, req)
    undo.append(release)
    ips = [IPConfig(ip.address, ip.gateway, interface=1) for ip in allocated.ips]
    if not ips:
        raise CniError(Code.INVALID_CONFIG, "IPAM returned no IP addresses")
    att.ips = [str(ip.address) for ip in ips]
    states.save(att)

    # setup removes what it made if it fails; tearing down by name before it succeeded
    # would delete a same-named link that was there before us.
    tag = owner(states, att)
    links = wiring.setup(req.netns, req.ifname, att.host_veth, tag, conf.mtu, ips,
                         allocated.routes, replaceable=older_sandbox(states, att))
    att.host_mac, att.pod_mac = links.host.mac, links.container.mac
    undo.append(lambda: wiring.teardown(att.netns, att.ifname, att.host_veth, tag, True))

    dataplane = dataplane_for(conf)
    dataplane.attach(conf, att)
    undo.append(lambda: dataplane.detach(conf, att))
    return allocated, ips, links


def unwind(undo: list[Callable[[], None]], failure: BaseException) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception:  # keep unwinding: the original failure is what the runtime sees
            log.exception("rollback step failed after: %s", failure)


def older_sandbox(states: StateStore, att: Attachment) -> Callable[[Link], bool]:
    """Whether a link holding att's host veth name is an older sandbox's of the same pod, which
    the new sandbox may take the name from (as the AWS VPC CNI and Calico delete an existing
    host veth of the pod's name): tagged by another attachment of this network, or untagged
    (made before ferry tagged links) and named by another record of the same Kubernetes pod.
    The old attachment keeps its record and IPs until its own DEL, which leaves our link be."""
    def replaceable(link: Link) -> bool:
        tag = parse_owner_tag(link.alias)
        if tag is not None:
            return tag[0] == states.scope
        if link.alias or not att.k8s_pod:
            return False
        return any(a.host_veth == link.name and a.k8s_pod == att.k8s_pod
                   and (a.container_id, a.ifname) != (att.container_id, att.ifname)
                   for a in states.all())
    return replaceable


def claimed_by_another(states: StateStore, att: Attachment) -> bool:
    """Whether a record other than att's names att's host veth, or a damaged record (whose
    attachment cannot be known) is kept: an untagged link of that name is then not att's."""
    if states.quarantined():
        return True
    return any(a.host_veth == att.host_veth
               and (a.container_id, a.ifname) != (att.container_id, att.ifname)
               for a in states.all())


def unwire(conf: NetConf, states: StateStore, att: Attachment, netns: str, recorded: bool,
           dataplane: Dataplane | None = None) -> None:
    """Remove att's dataplane state and veth pair, and nothing that is another attachment's:
    a host veth of att's name is att's only if it carries att's owner tag, or carries none and
    (recorded) att's own record names it or (no record) no other record does."""
    tag = owner(states, att)
    untagged_ok = recorded or not claimed_by_another(states, att)
    with Rtnl() as host:
        link = host.link(att.host_veth)
    ours = link is not None and wiring.owned(link, tag, untagged_ok)
    if link is not None and not ours:
        log.info("host veth %s belongs to another attachment: left alone", att.host_veth,
                 extra={"container": att.container_id, "owner": link.alias or "untagged"})
    # A link taken over by the pod's newer sandbox: its filters are that sandbox's now.
    (dataplane or dataplane_for(conf)).detach(conf, att if ours else
                                       dataclasses.replace(att, host_veth=""))
    wiring.teardown(netns, att.ifname, att.host_veth, tag, untagged_ok)


def find(conf: NetConf, req: Request, states: StateStore) -> tuple[Attachment, bool]:
    """The request's attachment by its record (True), else as ADD would have named it."""
    att = states.load(req.container_id, req.ifname)
    if att is not None:
        return att, True
    return Attachment(container_id=req.container_id, ifname=req.ifname, netns=req.netns,
                      host_veth=host_veth(conf, req)), False


def delete(conf: NetConf, req: Request) -> None:
    """Tear down by the attachment record; without one, what ADD would have made, if ours."""
    states = store(conf)
    att, recorded = find(conf, req, states)
    deprovision(conf, req, att, states, recorded)
    return None


def deprovision(conf: NetConf, req: Request, att: Attachment, states: StateStore,
                recorded: bool) -> None:
    """Undo provision() whatever of it happened; each step tolerates what is already gone."""
    unwire(conf, states, att, req.netns or att.netns, recorded)
    ipam.release(conf, req)
    states.remove(req.container_id, req.ifname)


def check(conf: NetConf, req: Request) -> None:
    prev = conf.prev()
    if prev is None:
        raise CniError(Code.INVALID_CONFIG, "CHECK needs prevResult")
    idx = next((i for i, itf in enumerate(prev.interfaces)
                if itf.name == req.ifname and itf.sandbox), None)
    if idx is None:
        raise CniError(Code.CHECK_FAILED, f"prevResult has no container interface {req.ifname}")
    mine = Result(ips=[ip for ip in prev.ips if ip.interface == idx], routes=prev.routes)
    states = store(conf)
    att = states.load(req.container_id, req.ifname)
    if att is None or not att.complete:
        raise CniError(Code.UNKNOWN_CONTAINER, "ferry has no attachment for this container",
                       f"{req.container_id}/{req.ifname}")
    wiring.check(req.netns, req.ifname, att.host_veth, owner(states, att), conf.mtu, mine)
    ipam.check(conf, req, [ip.address.ip for ip in mine.ips])
    return None


def status(conf: NetConf, req: Request) -> None:
    if conf.ipam.builtin:
        from plugin.ipam.allocator import Allocator

        try:
            full = Allocator(conf.ipam, conf.name).exhausted_sets()
        except OSError as e:
            raise CniError(Code.NOT_AVAILABLE, "IPAM data directory is not usable",
                           str(e)) from None
        if full:
            raise CniError(Code.NOT_AVAILABLE, "no free IP addresses", "; ".join(full))
    return None


def valid_attachments(req: Request) -> set[tuple[str, str]]:
    """The GC request's (containerID, ifname) pairs the runtime still uses."""
    raw = req.config.get(VALID_ATTACHMENTS) or []
    try:
        return {(a["containerID"], a["ifname"]) for a in raw}
    except (TypeError, KeyError):
        raise CniError(Code.INVALID_CONFIG, f"malformed {VALID_ATTACHMENTS}") from None


def gc(conf: NetConf, req: Request) -> None:
    """Remove every attachment of this network that the runtime no longer lists as valid."""
    valid = valid_attachments(req)
    states = store(conf)
    dataplane = dataplane_for(conf)
    for att in states.all():
        if (att.container_id, att.ifname) in valid:
            continue
        log.info("gc: removing stale attachment", extra={"container": att.container_id,
                                                         "ifname": att.ifname})
        unwire(conf, states, att, att.netns, recorded=True, dataplane=dataplane)
        states.remove(att.container_id, att.ifname)
    if conf.ipam.builtin:
        from plugin.ipam.allocator import Allocator

        freed = Allocator(conf.ipam, conf.name).gc(valid)
        if freed:
            log.info("gc: released %d IPs", len(freed), extra={"ips": [str(i) for i in freed]})
    return None


_COMMANDS: dict[str, Callable[[NetConf, Request], dict[str, Any] | None]] = {
    "ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc,
}
