"""host-local IPAM semantics: range sets, round-robin, requested IPs, release by container.

The candidate order is the reference plugin's: start after `last_reserved_ip.N` (or at the
first range's start), walk each range from rangeStart to rangeEnd, wrap around the range set,
and skip each range's gateway. Gateways default to the subnet's first address, rangeStart to
the address after the network address, rangeEnd to the last address (minus the broadcast
address for IPv4).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from plugin.config import IPAMConfig, IPRange
from plugin.ipam.store import Store
from plugin.paths import missing_dirs, remove_empty
from plugin.protocol import Address, CniError, Code, IPConfig, Result, Route
from plugin.undo import Undo


@dataclass
class Rollback:
    """What Allocator.rollback needs to undo one allocation."""

    container_id: str
    ifname: str
    ips: list[IPConfig]
    pointers: dict[int, str | None]  # last_reserved_ip.N before the allocation
    created: list[Path]  # directories the allocation created, deepest first


@dataclass
class Pool:
    """One range set's usage: addresses it can hand out, and the reservations inside it as
    (ip, container id, ifname), by IP."""

    subnets: str
    total: int
    reservations: list[tuple[Address, str, str]]

    @property
    def used(self) -> int:
        return len(self.reservations)

    @property
    def free(self) -> int:
        return self.total - self.used


@dataclass(frozen=True)
class Span:
    """A range with its defaults filled in, as integers for cheap iteration."""

    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    start: int
    end: int
    gateway: Address

    @classmethod
    def of(cls, r: IPRange) -> Span:
        net = r.subnet
        last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
        start = int(r.range_start) if r.range_start else int(net.network_address) + 1
        end = int(r.range_end) if r.range_end else last
        gateway = r.gateway or net.network_address + 1
        if start > end:
            raise CniError(Code.INVALID_CONFIG, f"rangeStart is after rangeEnd in {net}")
        return cls(net, start, end, gateway)

    def __contains__(self, ip: Address) -> bool:
        return ip.version == self.subnet.version and self.start <= int(ip) <= self.end

    def config(self, ip: Address) -> IPConfig:
        return IPConfig(address=ipaddress.ip_interface(f"{ip}/{self.subnet.prefixlen}"),
                        gateway=self.gateway)


def _addr(version: int, value: int) -> Address:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def candidates(spans: list[Span], last: Address | None) -> Iterator[tuple[Span, Address]]:
    """Every allocatable IP of a range set once, starting after `last` (round-robin)."""
    first, offset = 0, None
    if last is not None:
        for i, s in enumerate(spans):
            if last in s:
                first, offset = i, int(last) + 1
                break
    for k in range(len(spans) + 1):
        i = (first + k) % len(spans)
        s = spans[i]
        lo, hi = s.start, s.end
        if k == 0 and offset is not None:
            lo = offset          # the tail of the starting range...
        elif k == len(spans):
            if offset is None:
                return
            hi = offset - 1      # ...and, after wrapping, its head
        for value in range(lo, hi + 1):
            ip = _addr(s.subnet.version, value)
            if ip != s.gateway:
                yield s, ip


class Allocator:
    def __init__(self, conf: IPAMConfig, network: str) -> None:
        self.conf = conf
        self.store = Store(conf.data_dir, network)
        self.range_sets = [[Span.of(r) for r in rs] for rs in conf.ranges]

    def allocate(self, container_id: str, ifname: str, requested: list[Address]) -> Result:
        """One IP from every range set (the requested one where given), all or nothing."""
        return self.reserve(container_id, ifname, requested)[0]

    def reserve(self, container_id: str, ifname: str,
                requested: list[Address]) -> tuple[Result, Rollback]:
        """allocate(), and what undoes it all: the IPs, the round-robin pointers and the
        directories this allocation created."""
        # Before anything is reserved: a resolvConf that cannot be read fails the ADD (5)
        # with nothing to undo.
        dns = read_resolv_conf(self.conf.resolv_conf)
        unmatched = list(requested)
        ips: list[IPConfig] = []
        created = missing_dirs(self.store.dir)
        with self.store.locked() as store:
            pointers = {idx: store.last_reserved_text(idx)
                        for idx in range(len(self.range_sets))}
            held = store.owned_by(container_id, ifname)
            with Undo() as undo:  # the IPs taken so far (ips grows), under the same lock
                undo.push(lambda: self._undo(store, Rollback(container_id, ifname, ips,
                                                             pointers, created)))
                for idx, spans in enumerate(self.range_sets):
                    if any(ip in s for ip in held for s in spans):
                        raise CniError(Code.IP_UNAVAILABLE, "duplicate allocation is not allowed",
                                       f"{container_id}/{ifname} already holds "
                                       f"{', '.join(map(str, held))}; DEL it first")
                    want = [ip for ip in unmatched if any(ip in s for s in spans)]
                    if len(want) > 1:
                        raise CniError(Code.INVALID_CONFIG, "more than one requested IP in a "
                                       "range set", ", ".join(map(str, want)))
                    if want:
                        unmatched.remove(want[0])
                        ips.append(self._take(store, idx, spans, want[0], container_id, ifname))
                    else:
                        ips.append(self._next(store, idx, spans, container_id, ifname))
                if unmatched:
                    raise CniError(Code.IP_UNAVAILABLE, "requested IP is not in any range",
                                   ", ".join(map(str, unmatched)))
        result = Result(ips=ips, routes=[Route(dst=r.dst, gw=r.gw) for r in self.conf.routes],
                        dns=dns)
        return result, Rollback(container_id, ifname, ips, pointers, created)

    def rollback(self, undo: Rollback) -> None:
        with self.store.locked(create=False) as store:
            self._undo(store, undo)

    @staticmethod
    def _undo(store: Store, undo: Rollback) -> None:
        for ipc in undo.ips:
            store.release(ipc.address.ip)
        for idx, ipc in enumerate(undo.ips):
            # Put the pointer back unless another ADD moved it on since.
            if store.last_reserved_text(idx) == str(ipc.address.ip):
                store.set_last_reserved(idx, undo.pointers.get(idx))
        if undo.created and store.dir.is_dir() and \
                {p.name for p in store.dir.iterdir()} <= {"lock"}:
            # Under the flock: a process waiting for it sees the lock file gone and retries.
            (store.dir / "lock").unlink(missing_ok=True)
            remove_empty(undo.created)

    @staticmethod
    def _take(store: Store, idx: int, spans: list[Span], ip: Address, cid: str,
              ifname: str) -> IPConfig:
        span = next(s for s in spans if ip in s)
        if ip == span.gateway or not store.reserve(ip, cid, ifname, idx):
            raise CniError(Code.IP_UNAVAILABLE, f"requested IP address {ip} is not available",
                           f"range set {idx}")
        return span.config(ip)

    @staticmethod
    def _next(store: Store, idx: int, spans: list[Span], cid: str, ifname: str) -> IPConfig:
        for span, ip in candidates(spans, store.last_reserved(idx)):
            if store.reserve(ip, cid, ifname, idx):
                return span.config(ip)
        raise CniError(Code.IPAM_EXHAUSTED, "no IP addresses available in range set",
                       ", ".join(str(s.subnet) for s in spans))

    def release(self, container_id: str, ifname: str) -> list[Address]:
        with self.store.locked(create=False) as store:
            return store.release_owned_by(container_id, ifname)

    def held(self, container_id: str, ifname: str) -> list[Address]:
        with self.store.locked(create=False) as store:
            return store.owned_by(container_id, ifname)

    def gc(self, valid: set[tuple[str, str]]) -> list[Address]:
        """Release every reservation of this network not held by a valid attachment."""
        return release_invalid(self.store, valid, self._mine)

    def _mine(self, ip: Address) -> bool:
        return any(ip in s for spans in self.range_sets for s in spans)

    def pools(self) -> list[Pool]:
        reservations = self.store.reservations()
        out = []
        for spans in self.range_sets:
            total = sum(s.end - s.start + 1 - (s.gateway in s) for s in spans)
            mine = sorted((ip, cid, ifn) for ip, (cid, ifn) in reservations.items()
                          if any(ip in s for s in spans))
            out.append(Pool(", ".join(str(s.subnet) for s in spans), total, mine))
        return out

    def exhausted_sets(self) -> list[str]:
        """The range sets (as text) that have no free address left."""
        full = []
        with self.store.locked(create=False) as store:
            taken = set(store.reservations())
            for spans in self.range_sets:
                if not any(ip not in taken for _, ip in candidates(spans, None)):
                    full.append(", ".join(str(s.subnet) for s in spans))
        return full


def release_invalid(store: Store, valid: set[tuple[str, str]],
                    mine: Callable[[Address], bool]) -> list[Address]:
    """GC: release the reservations of `mine` IPs that no valid attachment holds (an old
    id-only file is kept while its container is valid)."""
    valid_ids = {cid for cid, _ in valid}
    freed = []
    with store.locked(create=False) as locked:
        for ip, (cid, ifname) in locked.reservations().items():
            keep = (cid, ifname) in valid if ifname else cid in valid_ids
            if not keep and mine(ip):
                locked.release(ip)
                freed.append(ip)
    return freed


def read_resolv_conf(path: str | None) -> dict[str, object]:
    """The DNS section of a result from a resolv.conf file, as host-local builds it."""
    if not path:
        return {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise CniError(Code.IO_FAILURE, f"cannot read resolvConf {path}", str(e)) from None
    dns: dict[str, list[str] | str] = {}
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        key, rest = words[0], words[1:]
        if key == "nameserver" and rest:
            dns.setdefault("nameservers", []).append(rest[0])  # type: ignore[union-attr]
        elif key == "domain" and rest:
            dns["domain"] = rest[0]
        elif key == "search":
            dns["search"] = rest
        elif key == "options":
            dns.setdefault("options", []).extend(rest)  # type: ignore[union-attr]
    return dns
