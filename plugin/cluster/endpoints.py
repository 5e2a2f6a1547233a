"""Workload endpoints and profiles, written as Calico's CNI plugin writes them in cmdAdd.

Every ADD in cluster mode records an endpoint (node, orchestrator, pod, container id,
ifname, host veth, MAC, IPs, profiles) and creates the network's profile if it is missing;
DEL deletes the endpoint. An ADD for a container whose endpoint exists already (the seed's
"endpoint already existed" branch) updates its profiles and answers the recorded result
instead of wiring the pod twice.

The local attachment records are the truth: an endpoint write that finds the datastore
unreachable is not an error (the pod works without it); ferryd's reconcile() writes what
is missing and deletes what is gone, at start, on a timer and right after such a failure.
Inside ferryd, writes are handed to its cluster agent (`deferred`), so an ADD makes no
datastore round trip at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plugin.cluster import node_name
from plugin.config import NetConf
from plugin.datastore import Datastore, DatastoreUnavailable, Endpoint, Profile
from plugin.datastore.connect import shared
from plugin.engine import Command, Context, store
from plugin.log import log
from plugin.protocol import Request
from plugin.state import Attachment

# Set by ferryd's cluster agent, per network it serves: takes the endpoint write (key, and
# the attachment to publish or None to delete) instead of the request (which then makes no
# datastore call); a request for another network writes it itself.
Deferred = Callable[[str, "Attachment | None"], None]
deferred: dict[str, Deferred] = {}
_profiles_made: set[tuple[str, str]] = set()  # (network, orchestrator) created by this process


def orchestrator(att: Attachment) -> str:
    return "k8s" if att.k8s_pod else "cni"


def profile_for(conf: NetConf, k8s: bool) -> Profile:
    """The seed's rules for a network's profile: all egress allowed; ingress from endpoints
    of the same profile, or from anywhere under Kubernetes (where policy does the rest)."""
    ingress: dict[str, Any] = {"action": "Allow"}
    if not k8s:
        ingress["source"] = {"profile": conf.name}
    return Profile(name=conf.name, ingress=[ingress], egress=[{"action": "Allow"}],
                   labels={"ferry.network": conf.name})


def endpoint_of(conf: NetConf, att: Attachment) -> Endpoint:
    result = att.result or {}
    mac = next((i.get("mac", "") for i in result.get("interfaces", [])
                if i.get("sandbox") and i.get("name") == att.ifname), "")
    ns, pod = att.k8s_pod or ("", "")
    return Endpoint(node=node_name(conf), orchestrator=orchestrator(att), network=conf.name,
                    container_id=att.container_id, ifname=att.ifname, pod_namespace=ns,
                    pod_name=pod, host_veth=att.host_veth, mac=mac,
                    ips=[ip["address"] for ip in result.get("ips", [])],
                    profiles=[conf.name])


def publish(conf: NetConf, ds: Datastore, att: Attachment) -> None:
    """The endpoint, and the network's profile unless this process made it already."""
    made = (conf.name, orchestrator(att))
    if made not in _profiles_made:
        ds.ensure_profile(profile_for(conf, bool(att.k8s_pod)))
        _profiles_made.add(made)
    ds.put_endpoint(endpoint_of(conf, att))


def write(conf: NetConf, ds: Datastore, key: str, att: Attachment | None) -> None:
    if att is None:
        ds.delete_endpoint(node_name(conf), key)
    else:
        publish(conf, ds, att)


def reconcile(conf: NetConf, ds: Datastore) -> dict[str, int]:
    """Both ways: endpoints of this node's complete attachments written where missing or
    different, endpoints of attachments that are gone deleted (raises DatastoreUnavailable)."""
    me = node_name(conf)
    local = {ep.key: (ep, att) for att in store(conf).all()
             if att.complete for ep in [endpoint_of(conf, att)]}
    remote = {ep.key: ep for ep in ds.endpoints(me) if ep.network == conf.name}
    written = deleted = 0
    for key, (ep, att) in local.items():
        if remote.get(key) != ep:
            publish(conf, ds, att)
            written += 1
    for key in remote.keys() - local.keys():
        ds.delete_endpoint(me, key)
        deleted += 1
    return {"written": written, "deleted": deleted, "endpoints": len(local)}


def _write_soon(conf: NetConf, key: str, att: Attachment | None) -> None:
    """In ferryd: hand it to the agent's writer. Standalone: write now; unreachable is
    logged and left to ferryd's next reconcile."""
    hand = deferred.get(conf.name)
    if hand is not None:
        hand(key, att)
        return
    assert conf.datastore is not None
    try:
        write(conf, shared(conf.datastore), key, att)
    except DatastoreUnavailable as e:
        log.warning("endpoint write deferred: %s", e)


def endpoint_key(conf: NetConf, req: Request) -> str:
    return Endpoint(node="", orchestrator="", network=conf.name,
                    container_id=req.container_id, ifname=req.ifname).key


def commands(base: dict[str, Command]) -> dict[str, Command]:
    """The engine's commands with the endpoint bookkeeping of cluster mode around ADD/DEL."""

    def add(conf: NetConf, req: Request, ctx: Context) -> dict[str, Any] | None:
        assert conf.datastore is not None
        att = store(conf).load(req.container_id, req.ifname)
        if att is not None and att.complete:
            existing = _existing(conf, att)
            if existing is not None:
                return existing
        out = base["ADD"](conf, req, ctx)
        att = store(conf).load(req.container_id, req.ifname)
        if att is not None:
            _write_soon(conf, endpoint_key(conf, req), att)
        return out

    def delete(conf: NetConf, req: Request, ctx: Context) -> dict[str, Any] | None:
        out = base["DEL"](conf, req, ctx)
        _write_soon(conf, endpoint_key(conf, req), None)
        return out

    def gc(conf: NetConf, req: Request, ctx: Context) -> dict[str, Any] | None:
        out = base["GC"](conf, req, ctx)  # attachments and their IPs (the blocks' here)
        for att_key in _gone_endpoints(conf, req.valid_attachments):
            _write_soon(conf, att_key, None)
        return out

    return {**base, "ADD": add, "DEL": delete, "GC": gc}


def _gone_endpoints(conf: NetConf, valid: set[tuple[str, str]]) -> list[str]:
    """Endpoint keys of this node's attachments that GC removed (no record left, not valid):
    left to the reconcile when the datastore cannot be listed."""
    assert conf.datastore is not None
    try:
        remote = shared(conf.datastore).endpoints(node_name(conf))
    except DatastoreUnavailable:
        return []
    return [ep.key for ep in remote if ep.network == conf.name
            and (ep.container_id, ep.ifname) not in valid]


def _existing(conf: NetConf, att: Attachment) -> dict[str, Any] | None:
    """The seed's "endpoint already existed" branch: the container is attached and has its
    endpoint, so update the endpoint's profiles and answer the recorded result."""
    assert conf.datastore is not None
    ds = shared(conf.datastore)
    try:
        ep = ds.get_endpoint(node_name(conf), endpoint_of(conf, att).key)
        if ep is None:
            return None
        ds.ensure_profile(profile_for(conf, bool(att.k8s_pod)))
        ep.profiles = [conf.name]
        ds.put_endpoint(ep)
    except DatastoreUnavailable:
        return None  # the engine refuses the second ADD, as in single-node mode
    log.info("endpoint already existed: profiles updated",
             extra={"container": att.container_id, "ifname": att.ifname})
    return att.result
