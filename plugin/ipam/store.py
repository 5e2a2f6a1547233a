"""On-disk reservation store, byte-compatible with the reference host-local plugin.

Layout under <dataDir>/<network>/:
  <ip>                   one file per reserved IP, created O_EXCL, "<containerID>\\r\\n<ifname>"
                         (files written by old host-local versions hold the id alone)
  last_reserved_ip.<N>   the last IP handed out from range set N (round-robin start point)
  lock                   flock()ed around every read-modify-write, by ferry and host-local alike
  .reserving             a reservation being written, linked to its <ip> name when complete
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from plugin.protocol import Address

LINE_BREAK = "\r\n"
LAST_RESERVED = "last_reserved_ip."
SCRATCH = ".reserving"  # a reservation file being written (Store.reserve)


def _warn(msg: str, *args: object) -> None:
    from plugin.log import log  # late: this module stays standard-library only

    log.warning(msg, *args)


def _open_lock(path: Path) -> int:
    """The lock file, created if missing (O_RDONLY is enough for flock and works on a
    read-only store). A directory in its place is locked itself, so that every ferry process
    still agrees on one lock and DEL keeps working; the log says so."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except IsADirectoryError:
        _warn("IPAM lock %s is a directory; locking it as it is", path)
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _is_current(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class Store:
    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = Path(data_dir) / network

    @contextlib.contextmanager
    def locked(self, create: bool = True) -> Iterator[Store]:
        """flock the network's lock file. create=False (release, reads): a network directory
        that does not exist holds nothing, and is not created just to find that out."""
        lock = self.dir / "lock"
        while True:
            if not create and not self.dir.is_dir():
                yield self
                return
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = _open_lock(lock)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _is_current(fd, lock):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # a rolled-back first ADD removed it while we waited: again
        try:
            yield self
        finally:
            os.close(fd)  # closing drops the flock

    def reserve(self, ip: Address, container_id: str, ifname: str, range_set: int) -> bool:
        """Claim `ip`; False when somebody (ferry or host-local) holds it already.

        The file appears with its content or not at all: it is written under a scratch name
        and hard-linked to the IP's name (which fails if the IP is taken, as O_EXCL would).
        A process killed between an O_EXCL create and its write would leave an empty file,
        an ownerless reservation that no DEL or GC can match, holding the IP for good. One
        scratch name is enough: every reserve runs under the store's lock, and a scratch file
        a killed writer left is removed by the next one."""
        path, scratch = self.dir / str(ip), self.dir / SCRATCH
        # A scratch file a killed writer left may already be linked to its IP: unlinked, not
        # truncated, or that reservation would be overwritten with this one's owner.
        scratch.unlink(missing_ok=True)
        try:
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{container_id.strip()}{LINE_BREAK}{ifname}")
            try:
                os.link(scratch, path)
            except FileExistsError:
                return False
            try:
                self.set_last_reserved(range_set, str(ip))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            return True
        finally:
            scratch.unlink(missing_ok=True)

    def set_last_reserved(self, range_set: int, value: str | None) -> None:
        path = self.dir / f"{LAST_RESERVED}{range_set}"
        if value is None:
            path.unlink(missing_ok=True)
            return
        try:
            path.write_text(value)
        except BaseException:
            path.unlink(missing_ok=True)  # a truncated one would only mislead the next ADD
            raise

    def last_reserved_text(self, range_set: int) -> str | None:
        try:
            return (self.dir / f"{LAST_RESERVED}{range_set}").read_text()
        except (OSError, ValueError):  # missing, a directory, not UTF-8
            return None

    def last_reserved(self, range_set: int) -> Address | None:
        try:
            return ipaddress.ip_address(self.last_reserved_text(range_set) or "")
        except ValueError:
            return None

    def release(self, ip: Address) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / str(ip)).unlink()

    def _files(self) -> Iterator[tuple[str, str, str]]:
        """(file name, container id, ifname) of every reservation file, the name unparsed:
        parsing a name as an IP costs more than reading the file, so callers parse only the
        names they keep. os, not pathlib: this runs per ADD and DEL."""
        try:
            entries = os.scandir(self.dir)
        except (FileNotFoundError, NotADirectoryError):  # no store there: nothing reserved
            return
        with entries:
            for entry in entries:
                if (entry.name in ("lock", SCRATCH) or entry.name.startswith(LAST_RESERVED)
                        or not entry.is_file(follow_symlinks=False)):
                    continue
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    data = os.read(fd, 4096)
                finally:
                    os.close(fd)
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    # Not written by ferry or host-local: skipped (its IP stays taken, as the
                    # O_EXCL create still fails), so that it blocks no ADD, DEL or GC.
                    _warn("IPAM store: %s is not a reservation file (not UTF-8); skipped",
                          entry.path)
                    continue
                owner, _, ifname = text.partition(LINE_BREAK)
                yield entry.name, owner.strip(), ifname.strip()

    def reservations(self) -> dict[Address, tuple[str, str]]:
        """Every reserved IP with its (container id, ifname); ifname is '' for old files."""
        return {ip: (owner, ifname) for name, owner, ifname in self._files()
                if (ip := _ip(name)) is not None}

    def owned_by(self, container_id: str, ifname: str) -> list[Address]:
        """IPs held by this attachment. Old id-only files match any ifname, as host-local does."""
        return _ips(name for name, owner, ifn in self._files()
                    if owner == container_id and ifn in (ifname, ""))

    def release_owned_by(self, container_id: str, ifname: str) -> list[Address]:
        """Release this attachment's IPs. As host-local's ReleaseByID, old id-only files are a
        fallback, released only when no file names `ifname`: such a file may belong to another
        interface of the same container, which still uses it."""
        exact: list[str] = []
        id_only: list[str] = []
        for name, owner, ifn in self._files():
            if owner == container_id and ifn in (ifname, ""):
                (exact if ifn else id_only).append(name)
        ips = _ips(exact or id_only)
        for ip in ips:
            self.release(ip)
        return ips


def _ip(name: str) -> Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None  # not a reservation (a stray file)


def _ips(names: Iterable[str]) -> list[Address]:
    return sorted((ip for name in names if (ip := _ip(name)) is not None),
                  key=lambda a: (a.version, a))
