"""`ferry-host-local`: ferry's host-local IPAM as a standalone CNI IPAM plugin.

Any plugin (the reference ptp or bridge, say) can use it as `"ipam": {"type":
"ferry-host-local", ...}`; its on-disk store is shared with the reference host-local.
"""

from __future__ import annotations

from typing import Any

from plugin.cli import serve
from plugin.protocol import Request


def _ipam(req: Request) -> dict[str, Any] | None:
    from plugin import ipam
    from plugin.config import NetConf, parse

    conf: NetConf = parse(NetConf, req.config)
    if req.command == "ADD":
        return ipam.add(conf, req).to_dict(conf.cni_version)
    if req.command == "DEL":
        ipam.release(conf, req)
    elif req.command == "CHECK":
        prev = conf.prev()
        ipam.check(conf, req, [ip.address.ip for ip in prev.ips] if prev else [])
    elif req.command == "GC":
        ipam.gc(conf, req.valid_attachments)
    elif req.command == "STATUS":
        ipam.status(conf)
    return None


def main() -> None:
    serve(_ipam)


if __name__ == "__main__":
    main()
