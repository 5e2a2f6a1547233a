"""IPAM for ferry, its one entry point: reserve/add, release, check, gc, status and pool
counts, whatever the ipam.type. Every caller (the engine, ferryd's reconcile and gRPC and
metrics, ferry-egress, the ferry-host-local binary) comes through here, so "built-in or
delegated" is decided in this module only.

`host-local` and `ferry-host-local` run in-process (allocator.py; the same on-disk store as
the reference plugin), `ferry-cluster` too (blocks.py: block IPAM over that store); any other
`ipam.type` is exec'd the way the reference plugins delegate.

Importing this package loads the standard library only (the ferry-host-local launcher runs
Python with -I -S and imports plugin.ipam.cli before the venv's site-packages are enabled):
pydantic comes in with plugin.config and plugin.ipam.allocator, imported where used.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from plugin.cluster import CLUSTER_IPAM
from plugin.protocol import Address, CniError, Code, Request, Result

if TYPE_CHECKING:
    from plugin.config import NetConf
    from plugin.ipam.allocator import Allocator, Pool
    from plugin.ipam.blocks import BlockAllocator

DELEGATE_TIMEOUT_S = 30


def requested_ips(conf: NetConf, req: Request) -> list[Address]:
    """runtimeConfig.ips, args.cni.ips and CNI_ARGS IP=a,b (host-local's conventions)."""
    from plugin.config import to_address

    extra = [to_address(v) for v in req.args.get("IP", "").split(",") if v]
    return conf.requested_ips + extra


def local(conf: NetConf) -> bool:
    """IPAM kept in the host-local store on this node: host-local, or ferry-cluster (whose
    blocks come from the datastore, but whose reservations are the same files)."""
    return conf.ipam.builtin or conf.ipam.type == CLUSTER_IPAM


def add(conf: NetConf, req: Request) -> Result:
    return reserve(conf, req)[0]


def reserve(conf: NetConf, req: Request) -> tuple[Result, Callable[[], None]]:
    """ADD's IPAM step and its inverse, for the caller's undo stack: the built-in store is
    put back as it was (pointers, new directories); a delegated plugin gets its DEL."""
    if conf.ipam.type == CLUSTER_IPAM:
        result = _blocks(conf).allocate(req.container_id, req.ifname, requested_ips(conf, req))
        return result, lambda: release(conf, req)
    if conf.ipam.builtin:
        allocator = _allocator(conf)
        result, undo = allocator.reserve(req.container_id, req.ifname,
                                         requested_ips(conf, req))
        return result, lambda: allocator.rollback(undo)
    from plugin.undo import Undo

    out = _delegate(conf, req, "ADD")
    with Undo() as undo:
        undo.push(lambda: release(conf, req))  # a result we cannot read: give the IPs back
        result = Result.from_dict(out or {})
    return result, lambda: release(conf, req)


def release(conf: NetConf, req: Request) -> None:
    """The attachment's IPs, by req's container id and ifname (a delegated plugin gets req as
    its DEL, so req must carry the network config and CNI_PATH)."""
    if local(conf):
        _allocator(conf).release(req.container_id, req.ifname)
    else:
        _delegate(conf, req, "DEL")


def gc(conf: NetConf, valid: set[tuple[str, str]]) -> list[Address]:
    """Release every reservation of the network that no valid attachment holds; the IPs freed.
    A delegated plugin is not sent GC (the reference plugins before CNI 1.1 do not know it):
    the engine's GC released the IPs of each stale attachment it tore down."""
    if conf.ipam.type == CLUSTER_IPAM:
        return _blocks(conf).gc(valid)
    return _allocator(conf).gc(valid) if conf.ipam.builtin else []


def status(conf: NetConf) -> None:
    """STATUS: raise NOT_AVAILABLE (50) when the built-in store is unusable or a range set
    has no free address; cluster and delegated IPAM are not asked (always ready)."""
    if not conf.ipam.builtin:
        return
    try:
        full = _allocator(conf).exhausted_sets()
    except OSError as e:
        raise CniError(Code.NOT_AVAILABLE, "IPAM data directory is not usable",
                       str(e)) from None
    if full:
        raise CniError(Code.NOT_AVAILABLE, "no free IP addresses", "; ".join(full))


def pools(conf: NetConf) -> list[Pool]:
    """Used and free addresses per range set of the built-in store (none for other types)."""
    return _allocator(conf).pools() if conf.ipam.builtin else []


def check(conf: NetConf, req: Request, ips: list[Address]) -> None:
    if not local(conf):
        _delegate(conf, req, "CHECK")
        return
    held = set(_allocator(conf).held(req.container_id, req.ifname))
    missing = [str(ip) for ip in ips if ip not in held]
    if missing:
        raise CniError(Code.CHECK_FAILED, "IPAM holds no reservation for the container's IPs",
                       ", ".join(missing))


def _allocator(conf: NetConf) -> Allocator:
    from plugin.ipam.allocator import Allocator

    return Allocator(conf.ipam, conf.name)


def _blocks(conf: NetConf) -> BlockAllocator:
    from plugin.ipam.blocks import BlockAllocator

    return BlockAllocator(conf)


def _delegate(conf: NetConf, req: Request, command: str) -> dict | None:
    plugin = _find(conf.ipam.type, req.path)
    env = {**os.environ, **req.to_env(), "CNI_COMMAND": command}
    try:
        proc = subprocess.run([plugin], input=json.dumps(req.config).encode(), env=env,
                              capture_output=True, timeout=DELEGATE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CniError(Code.TRY_AGAIN_LATER, f"IPAM plugin {conf.ipam.type} timed out") from None
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
    except (ValueError, RecursionError) as e:
        raise CniError(Code.INTERNAL, f"IPAM plugin {conf.ipam.type} printed no valid JSON",
                       str(e)) from None
    if proc.returncode != 0:
        err = out if isinstance(out, dict) else {}
        code = err.get("code")
        raise CniError(code if isinstance(code, int) and code > 0 else Code.INTERNAL,
                       f"IPAM plugin {conf.ipam.type}: {err.get('msg', 'failed')}",
                       str(err.get("details", proc.stderr.decode(errors="replace")[-500:])))
    if out is not None and not isinstance(out, dict):
        raise CniError(Code.INTERNAL, f"IPAM plugin {conf.ipam.type} printed no result object")
    return out


def _find(plugin_type: str, path: list[str]) -> str:
    from plugin.config import plugin_type as bare_name

    try:
        bare_name(plugin_type)  # the config refused it already; this is the exec's own guard
    except ValueError as e:
        raise CniError(Code.INVALID_CONFIG, "invalid IPAM plugin type", str(e)) from None
    for d in path:
        candidate = Path(d) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise CniError(Code.INVALID_CONFIG, f"IPAM plugin {plugin_type!r} not found in CNI_PATH",
                   ":".join(path))
