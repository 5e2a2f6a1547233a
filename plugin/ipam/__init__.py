"""IPAM for ferry: the built-in host-local allocator, or any IPAM plugin exec'd from CNI_PATH.

`host-local` and `ferry-host-local` run in-process (same on-disk store as the reference
plugin); any other `ipam.type` is exec'd the way the reference plugins delegate.

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
    from plugin.ipam.allocator import Allocator

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
        from plugin.cluster.ipam import BlockAllocator

        result = BlockAllocator(conf).allocate(req.container_id, req.ifname,
                                               requested_ips(conf, req))
        return result, lambda: release(conf, req)
    if conf.ipam.builtin:
        allocator = _allocator(conf)
        result, undo = allocator.reserve(req.container_id, req.ifname,
                                         requested_ips(conf, req))
        return result, lambda: allocator.rollback(undo)
    out = _delegate(conf, req, "ADD")
    try:
        result = Result.from_dict(out or {})
    except CniError:
        release(conf, req)
        raise
    return result, lambda: release(conf, req)


def release(conf: NetConf, req: Request) -> None:
    if local(conf):
        _allocator(conf).release(req.container_id, req.ifname)
    else:
        _delegate(conf, req, "DEL")


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
