"""On-disk reservation store, byte-compatible with the reference host-local plugin.

Layout under <dataDir>/<network>/:
  <ip>                   one file per reserved IP, created O_EXCL, "<containerID>\\r\\n<ifname>"
                         (files written by old host-local versions hold the id alone)
  last_reserved_ip.<N>   the last IP handed out from range set N (round-robin start point)
  lock                   flock()ed around every read-modify-write, by ferry and host-local alike
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from plugin.protocol import Address

LINE_BREAK = "\r\n"
LAST_RESERVED = "last_reserved_ip."


class Store:
    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = Path(data_dir) / network

    @contextlib.contextmanager
    def locked(self) -> Iterator[Store]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing drops the flock

    def reserve(self, ip: Address, container_id: str, ifname: str, range_set: int) -> bool:
        """Claim `ip`; False when somebody (ferry or host-local) holds it already."""
        try:
            fd = os.open(self.dir / str(ip), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{container_id.strip()}{LINE_BREAK}{ifname}")
        (self.dir / f"{LAST_RESERVED}{range_set}").write_text(str(ip))
        return True

    def last_reserved(self, range_set: int) -> Address | None:
        try:
            return ipaddress.ip_address((self.dir / f"{LAST_RESERVED}{range_set}").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def release(self, ip: Address) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / str(ip)).unlink()

    def reservations(self) -> dict[Address, tuple[str, str]]:
        """Every reserved IP with its (container id, ifname); ifname is '' for old files."""
        out: dict[Address, tuple[str, str]] = {}
        try:
            entries = os.scandir(self.dir)  # os, not pathlib: this runs per ADD and DEL
        except FileNotFoundError:
            return out
        with entries:
            for entry in entries:
                try:
                    ip = ipaddress.ip_address(entry.name)
                except ValueError:
                    continue  # lock, last_reserved_ip.N
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    data = os.read(fd, 4096)
                finally:
                    os.close(fd)
                owner, _, ifname = data.decode().partition(LINE_BREAK)
                out[ip] = (owner.strip(), ifname.strip())
        return out

    def owned_by(self, container_id: str, ifname: str) -> list[Address]:
        """IPs held by this attachment. Old id-only files match any ifname, as host-local does."""
        return sorted(
            (ip for ip, (owner, ifn) in self.reservations().items()
             if owner == container_id and ifn in (ifname, "")),
            key=lambda a: (a.version, a),
        )

    def release_owned_by(self, container_id: str, ifname: str) -> list[Address]:
        """Release this attachment's IPs. As host-local's ReleaseByID, old id-only files are a
        fallback, released only when no file names `ifname`: such a file may belong to another
        interface of the same container, which still uses it."""
        held = self.reservations()
        ips = sorted((ip for ip, (owner, ifn) in held.items()
                      if owner == container_id and ifn == ifname), key=lambda a: (a.version, a))
        if not ips:
            ips = self.owned_by(container_id, ifname)
        for ip in ips:
            self.release(ip)
        return ips
