"""tc clsact + direct-action cls_bpf filters over netlink (pyroute2), for pinned programs.

Every ferry filter sits at one preference (PREF) and carries the program's name, so that
`tc filter show dev X ingress` names it and detach removes exactly ferry's filter.
"""

from __future__ import annotations

import errno
import os
from typing import Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from loader import syscall

PREF = 0xF3E  # ferry's filter preference on every hook it uses
CLSACT = 0xFFFF0000
PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
Direction = Literal["ingress", "egress"]


def ensure_clsact(ipr: IPRoute, index: int) -> bool:
    """Add the clsact qdisc if the device has none; True if this call created it."""
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            return False
        raise
    return True


def attach(ipr: IPRoute, index: int, direction: Direction, prog_pin: str, name: str) -> None:
    """Install (or replace) ferry's filter on `direction` of device `index`."""
    ensure_clsact(ipr, index)
    fd = syscall.obj_get(prog_pin)
    try:
        ipr.tc("replace-filter", "bpf", index, handle=1, fd=fd, name=name,
               parent=PARENT[direction], prio=PREF, protocol=0x0003,  # ETH_P_ALL
               classid=1, direct_action=True)
    finally:
        os.close(fd)


def detach(ipr: IPRoute, index: int, direction: Direction) -> bool:
    """Remove ferry's filter; False if it (or the device, or the qdisc) is already gone."""
    try:
        ipr.tc("del-filter", "bpf", index, handle=1, parent=PARENT[direction], prio=PREF,
               protocol=0x0003)
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return False
        raise
    return True


def filters(ipr: IPRoute, index: int, direction: Direction) -> list[str]:
    """Names of the bpf filters on a hook (for inspection and the tests)."""
    try:
        msgs = ipr.get_filters(index=index, parent=PARENT[direction])
    except NetlinkError:
        return []
    names = []
    for m in msgs:
        if not m.get_attr("TCA_KIND") or m["handle"] == 0:
            continue  # the per-preference header entry, not a filter
        opts = m.get_attr("TCA_OPTIONS")
        bpf_name = opts.get_attr("TCA_BPF_NAME") if hasattr(opts, "get_attr") else None
        names.append(bpf_name or m.get_attr("TCA_KIND"))
    return names


def drop_clsact_if_empty(ipr: IPRoute, index: int) -> None:
    """Remove the clsact qdisc when no filter is left on it (ferry created it)."""
    if filters(ipr, index, "ingress") or filters(ipr, index, "egress"):
        return
    try:
        ipr.tc("del", "clsact", index)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise
