"""Pinned programs on a device's ingress or egress: as tc clsact + direct-action cls_bpf
filters, over plugin/rtnl.py (the per-pod path's one netlink layer: a pod-ENI pod's ADD and DEL
attach and detach here), or as tcx attachments (kernel 6.6+, bpf(2) only).

Every ferry filter sits at one preference (PREF) and carries the program's name, so that
`tc filter show dev X ingress` names it and detach removes exactly ferry's filter. tcx runs a
device's programs with no qdisc or classifier in between: a no-op program costs ~30 ns per
64-byte packet there against ~75 ns as a cls_bpf filter (bench/tc_hooks.py), but `tc filter
show` does not list it (`bpftool net show` 7.3+ does, and `ferryctl inspect`). A hook holds
one of the two at a time: attaching one kind removes ferry's program from the other, after, so
that the hook is never without one (a packet that met both would pass the second untouched:
the first already translated it).
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
Hook = Literal["clsact", "tcx"]
TCX = {"ingress": syscall.TCX_INGRESS, "egress": syscall.TCX_EGRESS}
PREFIX = "ferry_"  # the names of ferry's programs (a tcx hook has no preference to own)
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)  # filter, device or qdisc already gone


def ensure_clsact(rt: Rtnl, index: int) -> bool:
    """Add the clsact qdisc if the device has none; True if this call created it."""
    return rt.add_clsact(index)


def attach(rt: Rtnl, index: int, direction: Direction, prog_pin: str, name: str,
           hook: Hook = "clsact") -> None:
    """Install (or replace) ferry's program on `direction` of device `index`, on `hook`."""
    fd = syscall.obj_get(prog_pin)
    try:
        if hook == "tcx":
            _attach_tcx(index, direction, fd, name)
            _detach_clsact(rt, index, direction)
        else:
            ensure_clsact(rt, index)
            rt.replace_bpf_filter(index, PARENT[direction], PREF, HANDLE, fd, name)
            _detach_tcx(index, direction)
    finally:
        os.close(fd)


def detach(rt: Rtnl, index: int, direction: Direction) -> bool:
    """Remove ferry's program from both hooks; False if none was there (or the device, or the
    qdisc, is already gone)."""
    removed = _detach_clsact(rt, index, direction)
    return _detach_tcx(index, direction) or removed


def _detach_clsact(rt: Rtnl, index: int, direction: Direction) -> bool:
    try:
        rt.del_bpf_filter(index, PARENT[direction], PREF, HANDLE)
    except NetlinkError as e:
        if e.errno in _GONE:
            return False
        raise
    return True


def tcx_supported() -> bool:
    """Whether this kernel has tcx hooks (6.6+): querying one on loopback is refused before."""
    try:
        syscall.prog_query(1, syscall.TCX_INGRESS)
    except OSError:
        return False
    return True


def tcx_programs(index: int, direction: Direction) -> list[tuple[int, str]]:
    """(id, name) of the programs on a device's tcx hook; none without tcx or the device."""
    try:
        ids = syscall.prog_query(index, TCX[direction])
    except OSError:
        return []
    out = []
    for prog_id in ids:
        try:
            fd = syscall.prog_fd_by_id(prog_id)
        except OSError:
            continue  # detached meanwhile
        try:
            out.append(syscall.prog_info(fd))
        finally:
            os.close(fd)
    return out


def _attach_tcx(index: int, direction: Direction, fd: int, name: str) -> None:
    new_id = syscall.prog_info(fd)[0]
    old = [prog_id for prog_id, n in tcx_programs(index, direction) if n == name]
    if new_id in old:
        return
    if not old:
        syscall.prog_attach(index, fd, TCX[direction])
        return
    old_fd = syscall.prog_fd_by_id(old[0])
    try:  # in place: no packet meets an empty hook or both programs
        syscall.prog_attach(index, fd, TCX[direction], replace_fd=old_fd)
    finally:
        os.close(old_fd)


def _detach_tcx(index: int, direction: Direction) -> bool:
    removed = False
    for prog_id, name in tcx_programs(index, direction):
        if not name.startswith(PREFIX):
            continue
        try:
            fd = syscall.prog_fd_by_id(prog_id)
        except OSError:
            continue
        try:
            syscall.prog_detach(index, fd, TCX[direction])
            removed = True
        except OSError as e:
            if e.errno not in _GONE:
                raise
        finally:
            os.close(fd)
    return removed


def filters(rt: Rtnl, index: int, direction: Direction) -> list[str]:
    """Names of the programs on a hook, cls_bpf filters then tcx (for inspection and tests)."""
    return _cls_filters(rt, index, direction) + [
        name for _, name in tcx_programs(index, direction)]


def _cls_filters(rt: Rtnl, index: int, direction: Direction) -> list[str]:
    try:
        found = rt.tc_filters(index, PARENT[direction])
    except NetlinkError:
        return []
    return [f.name or f.kind for f in found]


def drop_clsact_if_empty(rt: Rtnl, index: int) -> None:
    """Remove the clsact qdisc when no filter is left on it (ferry created it)."""
    if _cls_filters(rt, index, "ingress") or _cls_filters(rt, index, "egress"):
        return
    try:
        rt.del_clsact(index)
    except NetlinkError as e:
        if e.errno not in _GONE:
            raise
