"""ADD, DEL, CHECK, STATUS and GC: the one implementation, run in-process by the `ferry`
binary (standalone mode) or by the node agent on the binary's behalf (plugin.handler picks
the commands and renders the answer).

ADD keeps an undo stack (plugin.undo): every step that changed the host pushes its inverse,
and any failure unwinds the stack in reverse, so a failed ADD leaves the host as it found it.
Every removal of an attachment, DEL, GC, ferryd's reconcile and ferry-egress's DEL and GC,
goes through one function, teardown().
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plugin import ipam, wiring
from plugin import log as logging_setup
from plugin.config import NetConf, pod_eni
from plugin.dataplane.base import Dataplane
from plugin.dataplane.mode import dataplane_for
from plugin.defaults import CNI_BIN_DIR
from plugin.log import log
from plugin.paths import missing_dirs, remove_empty
from plugin.protocol import CniError, Code, IPConfig, Request, Result
from plugin.rtnl import Link, Rtnl
from plugin.state import Attachment, StateStore, owner_tag, parse_owner_tag
from plugin.undo import Undo


@dataclass(frozen=True)
class Context:
    """What the process running the engine hands it, explicitly: `reap` wakes ferryd's link
    reaper, to which teardown then hands removed veth pairs (None: it deletes them itself)."""

    reap: Callable[[], None] | None = None


Command = Callable[[Any, Request, Context], "dict[str, Any] | None"]


def dispatch(commands: dict[str, Command], conf: NetConf, req: Request, ctx: Context,
             **fields: str) -> dict[str, Any] | None:
    """Run req.command's handler with the log set up, and log its outcome and duration
    (fields: extra log fields, e.g. ferry-egress's interface)."""
    logging_setup.setup(conf.log)
    started = time.monotonic()
    fields = {"cmd": req.command, "container": req.container_id, "ifname": req.ifname,
              "network": conf.name, **pod_identity(req), **fields}
    try:
        out = commands[req.command](conf, req, ctx)
    except CniError as e:
        log.warning("%s failed: %s", req.command, e, extra={**fields, "code": e.code})
        raise
    log.info("%s ok", req.command,
             extra={**fields, "ms": round((time.monotonic() - started) * 1000, 1)})
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


def add(conf: NetConf, req: Request, ctx: Context) -> dict[str, Any]:
    states = store(conf)
    att = new_attachment(conf, req, states)
    eni = pod_eni(conf, req.args)
    att.pod_eni = eni.model_dump(mode="json") if eni else None
    with Undo() as undo:
        allocated, ips, links = provision(conf, req, att, states, undo, ctx)
        dns = conf.dns.model_dump(exclude_defaults=True) if conf.dns else allocated.dns
        result = Result(interfaces=[links.host, links.container], ips=ips,
                        routes=wiring.result_routes(ips, allocated.routes), dns=dns)
        out = result.to_dict(conf.cni_version)
        att.result, att.complete = out, True
        states.save(att)
        return out


def provision(conf: NetConf, req: Request, att: Attachment, states: StateStore, undo: Undo,
              ctx: Context) -> tuple[Result, list[IPConfig], wiring.PodLinks]:
    """Record, IP, veth pair and dataplane state of one attachment, each step pushing its
    inverse on `undo` (the caller unwinds on failure). Shared by ferry's ADD and ferry-egress's
    (which passes its own req.ifname, the egress interface)."""
    new_dirs = missing_dirs(states.dir)
    undo.push(lambda: remove_empty(new_dirs))  # last undone: after the record went
    states.save(att)
    undo.push(lambda: states.remove(att.container_id, att.ifname))
    allocated, release = ipam.reserve(conf, req)
    undo.push(release)
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
    undo.push(lambda: wiring.teardown(att.netns, att.ifname, att.host_veth, tag, True,
                                      ctx.reap))

    dataplane = dataplane_for(conf)
    dataplane.attach(conf, att)  # a failed attach has undone itself
    undo.push(lambda: dataplane.detach(conf, att))
    return allocated, ips, links


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


def teardown(conf: NetConf, req: Request, att: Attachment, states: StateStore, recorded: bool,
             ctx: Context, dataplane: Dataplane | None = None) -> None:
    """Undo provision() whatever of it happened, each step tolerating what is already gone:
    dataplane state, veth pair, IPs (through plugin.ipam, delegated plugins included), record.
    The one removal of an attachment: DEL, GC, ferryd's reconcile, ferry-egress's DEL and GC.
    req: the DEL as the IPAM sees it (a delegated plugin is exec'd with it)."""
    with states.locked(shared=True):  # a dataplane re-sync waits: see StateStore.locked
        _unwire(conf, states, att, req.netns or att.netns, recorded, ctx, dataplane)
        ipam.release(conf, req)
        states.remove(att.container_id, att.ifname)


def del_request(att: Attachment, config: dict[str, Any], path: list[str]) -> Request:
    """The DEL of a recorded attachment that no runtime asked for (GC, reconcile): its
    record's ids and netns, with the network config and CNI_PATH a delegated IPAM plugin
    is exec'd with."""
    return Request(command="DEL", container_id=att.container_id, ifname=att.ifname,
                   netns=att.netns, path=path, config=config)


def cni_path() -> list[str]:
    """CNI_PATH of the requests a process makes itself (ferryd's reconcile and gRPC calls),
    where a delegated IPAM plugin is looked up: its own CNI_PATH, else the standard one."""
    return (os.environ.get("CNI_PATH") or CNI_BIN_DIR).split(":")


def _unwire(conf: NetConf, states: StateStore, att: Attachment, netns: str, recorded: bool,
            ctx: Context, dataplane: Dataplane | None) -> None:
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
    wiring.teardown(netns, att.ifname, att.host_veth, tag, untagged_ok, ctx.reap)


def find(conf: NetConf, req: Request, states: StateStore) -> tuple[Attachment, bool]:
    """The request's attachment by its record (True), else as ADD would have named it."""
    att = states.load(req.container_id, req.ifname)
    if att is not None:
        return att, True
    return Attachment(container_id=req.container_id, ifname=req.ifname, netns=req.netns,
                      host_veth=host_veth(conf, req)), False


def delete(conf: NetConf, req: Request, ctx: Context) -> None:
    """Tear down by the attachment record; without one, what ADD would have made, if ours."""
    states = store(conf)
    att, recorded = find(conf, req, states)
    teardown(conf, req, att, states, recorded, ctx)
    return None


def check(conf: NetConf, req: Request, ctx: Context) -> None:
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


def status(conf: NetConf, req: Request, ctx: Context) -> None:
    ipam.status(conf)
    return None


def gc(conf: NetConf, req: Request, ctx: Context) -> None:
    """Remove every attachment of this network that the runtime no longer lists as valid,
    then every IP reserved for one."""
    valid = req.valid_attachments
    states = store(conf)
    dataplane = dataplane_for(conf)
    for att in states.all():
        if (att.container_id, att.ifname) in valid:
            continue
        log.info("gc: removing stale attachment", extra={"container": att.container_id,
                                                         "ifname": att.ifname})
        teardown(conf, del_request(att, req.config, req.path), att, states, True, ctx, dataplane)
    freed = ipam.gc(conf, valid)
    if freed:
        log.info("gc: released %d IPs", len(freed), extra={"ips": [str(i) for i in freed]})
    return None


COMMANDS: dict[str, Command] = {
    "ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc,
}
