"""tc clsact + direct-action cls_bpf filters for pinned programs, over plugin/rtnl.py (the
per-pod path's one netlink layer: a pod-ENI pod's ADD and DEL attach and detach here).

Every ferry filter sits at one preference (PREF) and carries the program's name, so that
`tc filter show dev X ingress` names it and detach removes exactly ferry's filter.
"""

from __future__ import annotations

import errno
import os
from typing import Literal

from loader import syscall
from plugin.rtnl import NetlinkError, Rtnl

PREF = 0xF3E  # ferry's filter preference on every hook it uses
HANDLE = 1
PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
Direction = Literal["ingress", "egress"]
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)  # filter, device or qdisc already gone


def ensure_clsact(rt: Rtnl, index: int) -> bool:
    """Add the clsact qdisc if the device has none; True if this call created it."""
    return rt.add_clsact(index)


def attach(rt: Rtnl, index: int, direction: Direction, prog_pin: str, name: str) -> None:
    """Install (or replace) ferry's filter on `direction` of device `index`."""
    ensure_clsact(rt, index)
    fd = syscall.obj_get(prog_pin)
    try:
        rt.replace_bpf_filter(index, PARENT[direction], PREF, HANDLE, fd, name)
    finally:
        os.close(fd)


def detach(rt: Rtnl, index: int, direction: Direction) -> bool:
    """Remove ferry's filter; False if it (or the device, or the qdisc) is already gone."""
    try:
        rt.del_bpf_filter(index, PARENT[direction], PREF, HANDLE)
    except NetlinkError as e:
        if e.errno in _GONE:
            return False
        raise
    return True


def filters(rt: Rtnl, index: int, direction: Direction) -> list[str]:
    """Names of the filters on a hook (for inspection and the tests)."""
    try:
        found = rt.tc_filters(index, PARENT[direction])
    except NetlinkError:
        return []
    return [f.name or f.kind for f in found]


def drop_clsact_if_empty(rt: Rtnl, index: int) -> None:
    """Remove the clsact qdisc when no filter is left on it (ferry created it)."""
    if filters(rt, index, "ingress") or filters(rt, index, "egress"):
        return
    try:
        rt.del_clsact(index)
    except NetlinkError as e:
        if e.errno not in _GONE:
            raise
