"""Start-up reconciliation: make the node's state match ferry's attachment records.

- A record whose ADD never completed and whose writer is dead (ferryd or a standalone
  binary killed mid-ADD) is rolled back: dataplane state, links, IPs, record.
- A complete record whose host veth is gone belongs to a container that died without a
  DEL (the veth pair dies with its netns): its IPs and dataplane state are released.
- A complete record whose pod is alive gets its host routes re-applied (its dataplane state
  is re-applied by the dataplane load that follows: plugin.dataplane.resync).
- A veth with ferry's name pattern that no record of any network names is a leaked link.
IPs reserved without a ferry record are left alone: the reference host-local may share
the dataDir, and ferry writes its record before it reserves anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from plugin import wiring
from plugin.config import VETH_HASH_CHARS, NetConf
from plugin.dataplane import Dataplane
from plugin.ipam.allocator import Allocator
from plugin.log import log
from plugin.rtnl import Rtnl
from plugin.state import Attachment, StateStore


@dataclass
class Report:
    rolled_back: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    leaked_links: list[str] = field(default_factory=list)


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


def reconcile(conf: NetConf, dataplane: Dataplane) -> Report:
    report = Report()
    states = StateStore(conf.state_dir, conf.name)
    for path, pid in states.temp_files():
        if not _alive(pid):
            path.unlink(missing_ok=True)
    with Rtnl() as host:
        links = {link.name: link.index for link in host.links()}
        host_routes = {(r.oif, r.dst) for r in host.routes()}
        for att in states.all():
            key = f"{att.container_id}/{att.ifname}"
            if not att.complete:
                if _alive(att.owner_pid):
                    continue  # an ADD in flight in another process
                _release(conf, att, states, dataplane)
                report.rolled_back.append(key)
            elif att.host_veth not in links:
                _release(conf, att, states, dataplane)
                report.released.append(key)
            elif _repair(host, host_routes, links[att.host_veth], att):
                report.repaired.append(key)
        known = _all_host_veths(Path(conf.state_dir))
        pattern = re.compile(rf"^{re.escape(conf.veth_prefix)}[0-9a-f]{{{VETH_HASH_CHARS}}}$")
        for name, index in links.items():
            if pattern.match(name) and name not in known:
                wiring.ignore_gone(host.del_link, index)
                report.leaked_links.append(name)
    log.info("reconcile done", extra={"report": vars(report)})
    return report


def _release(conf: NetConf, att: Attachment, states: StateStore,
             dataplane: Dataplane) -> None:
    dataplane.detach(conf, att)
    wiring.teardown(att.netns, att.ifname, att.host_veth)
    if conf.ipam.builtin:
        Allocator(conf.ipam, conf.name).release(att.container_id, att.ifname)
    states.remove(att.container_id, att.ifname)


def _repair(host: Rtnl, host_routes: set[tuple[int | None, str]], index: int,
            att: Attachment) -> bool:
    """Re-add missing host routes to the pod; True if anything was missing."""
    missing = [net for net in (wiring.host_net(ipaddress.ip_interface(ip).ip) for ip in att.ips)
               if (index, str(net)) not in host_routes]
    for net in missing:
        host.add_route(net, index, wiring.RT_SCOPE_LINK, wiring.RTPROT_STATIC, replace=True)
    return bool(missing)


def _all_host_veths(state_root: Path) -> set[str]:
    """Host veth names recorded by any ferry network sharing this state directory."""
    names = set()
    if state_root.is_dir():
        for network in state_root.iterdir():
            if network.is_dir():
                names |= {a.host_veth for a in StateStore(str(state_root), network.name).all()}
    return names
