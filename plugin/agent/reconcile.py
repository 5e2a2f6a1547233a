"""Start-up reconciliation: make the node's state match ferry's attachment records.

- A record whose ADD never completed and whose writer is dead (ferryd or a standalone
  binary killed mid-ADD) is rolled back: dataplane state, links, IPs, record.
- A complete record whose host veth is gone, or now belongs to another attachment (the
  pod's newer sandbox took the name), belongs to a container that died without a DEL (the
  veth pair dies with its netns): its IPs and dataplane state are released.
  Both go through engine.teardown, as a DEL would: a delegated IPAM plugin gets its DEL.
- A complete record whose pod is alive gets its host routes re-applied (its dataplane state
  is re-applied by the dataplane load that follows: plugin.dataplane.resync).
- A host veth tagged as this network's whose owner has no record, not even a damaged one, is
  a leaked link; so is an untagged one (made before ferry tagged links) with ferry's name
  pattern that no record of any network or of ferry-egress names. Links tagged by another
  network or by ferry-egress are theirs.
- A damaged record is quarantined (plugin.state) and reported, never acted on; a step that
  fails (a read-only state or IPAM dir) is reported and the others go on: ferryd starts.
IPs reserved without a ferry record are left alone: the reference host-local may share
the dataDir, and ferry writes its record before it reserves anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugin import engine, wiring
from plugin.config import VETH_HASH_CHARS, NetConf
from plugin.dataplane.base import Dataplane
from plugin.log import log
from plugin.protocol import CniError
from plugin.rtnl import Link, Rtnl
from plugin.state import (
    EGRESS_DIR,
    Attachment,
    StateStore,
    legacy_name,
    parse_owner_tag,
    record_name,
)


@dataclass
class Report:
    rolled_back: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    leaked_links: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False  # our own pid is a previous ferryd's only if it was reused: treat as dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile(conf: NetConf, dataplane: Dataplane, ctx: engine.Context,
              config: dict[str, Any], cni_path: list[str]) -> Report:
    """config and cni_path: the network config and CNI_PATH a delegated IPAM plugin is
    exec'd with to release a record's IPs."""
    report = Report()

    def release(att: Attachment) -> None:
        engine.teardown(conf, engine.del_request(att, config, cni_path), att, states, True,
                        ctx, dataplane)

    states = engine.store(conf)
    for path, pid in states.temp_files():
        if not _alive(pid):
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                report.failed.append(f"{path.name}: {e}")
    with Rtnl() as host:
        links = {link.name: link for link in host.links()}
        host_routes = {(r.oif, r.dst) for r in host.routes()}
        for att in states.all():
            key = f"{att.container_id}/{att.ifname}"
            # Looked up now, not in the snapshot above: a standalone ADD (ferryd is not
            # serving yet) may have made its link and completed its record since.
            link = host.link(att.host_veth)
            ours = link is not None and wiring.owned(link, engine.owner(states, att), True)
            try:
                if not att.complete:
                    if _alive(att.owner_pid):
                        continue  # an ADD in flight in another process
                    release(att)
                    report.rolled_back.append(key)
                elif not ours:
                    release(att)
                    report.released.append(key)
                elif link is not None and _repair(host, host_routes, link.index, att):
                    report.repaired.append(key)
            except (OSError, CniError) as e:  # one record must not keep ferryd from serving
                log.error("reconcile: %s: %s", key, e)
                report.failed.append(f"{key}: {e}")
        report.quarantined = [f"{name}: {why}" for name, why in states.quarantined()]
        claims = states.claims()
        named = _recorded_veths(Path(conf.state_dir))
        pattern = re.compile(rf"{re.escape(conf.veth_prefix)}[0-9a-f]{{{VETH_HASH_CHARS}}}")
        for link in links.values():
            if _leaked(states.scope, claims, named, pattern, link):
                wiring.ignore_gone(host.del_link, link.index)
                report.leaked_links.append(link.name)
    log.info("reconcile done", extra={"report": vars(report)})
    return report


def _repair(host: Rtnl, host_routes: set[tuple[int | None, str]], index: int,
            att: Attachment) -> bool:
    """Re-add missing host routes to the pod; True if anything was missing."""
    missing = [net for net in (wiring.host_net(ipaddress.ip_interface(ip).ip) for ip in att.ips)
               if (index, str(net)) not in host_routes]
    for net in missing:
        host.add_route(net, index, wiring.RT_SCOPE_LINK, wiring.RTPROT_STATIC, replace=True)
    return bool(missing)


def _leaked(scope: str, claims: set[str], named: set[str] | None, pattern: re.Pattern[str],
            link: Link) -> bool:
    """Whether link is a host veth of this network that no attachment owns. claims: record
    file names of this network (quarantine included); named: host veths named by any record
    of any store (None: some record is damaged, so any untagged link may be claimed)."""
    tag = parse_owner_tag(link.alias)
    if tag is not None:
        tag_scope, cid, ifname = tag
        return tag_scope == scope and not ({record_name(cid, ifname),
                                            legacy_name(cid, ifname)} & claims)
    if link.alias or named is None or not pattern.fullmatch(link.name):
        return False
    return link.name not in named


def _recorded_veths(state_root: Path) -> set[str] | None:
    """Host veths named by the records of every ferry network and ferry-egress sharing this
    state dir; None if any of them holds a damaged record (which might name any)."""
    scopes: list[str] = []
    if state_root.is_dir():
        for d in sorted(state_root.iterdir()):
            if d.name == EGRESS_DIR:
                scopes += [f"{EGRESS_DIR}/{e.name}" for e in sorted(d.iterdir()) if e.is_dir()]
            elif d.is_dir():
                scopes.append(d.name)
    names: set[str] = set()
    for scope in scopes:
        # Other networks' records are theirs: read them, move nothing.
        s = StateStore(str(state_root), scope, move_damaged=False)
        if s.quarantined():
            return None
        names |= {a.host_veth for a in s.all()}
    return names
