"""Key/value layouts and map declarations of ferry's BPF maps, declared once.

The ctypes Structures below are the single source of truth: `c_header(build)` generates the C
struct definitions and the map declarations each build needs (bcc: BPF_TABLE lines prepended to
bpf/*.c plus accessor functions; clang: BTF-defined maps in `.maps`, the header that
bpf/common.h includes), and the Python side (loader.maps) reads and writes the pinned maps with
the very same Structures.
Standard library only: the CNI ADD path imports this module.

Byte order: addresses and ports are kept in network byte order, exactly as they sit in the
packet, so the programs never convert; `ip4()` / `ip6()` / `port()` convert on the Python side.
IPv6 addresses are four u32 words (the packet's 16 bytes), so the C side compares and copies
them word by word; IPv6 has its own maps (suffix 6) with the same roles as the IPv4 ones.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from dataclasses import dataclass

# --- flags and constants shared by C and Python ------------------------------------------------

EP_F_POD_ENI = 1  # the endpoint sends through its own device: never SNAT it
# TCP state of a NAT flow, per direction (nat_entry.tcp_out / tcp_in of the reverse entry).
TCP_FIN, TCP_RST = 1, 2
# randomizeSNAT in nat_config.randomize.
RANDOMIZE = {"prng": 0, "hashrandom": 1, "none": 2}
# The per-CPU counters of ferry_stats, by index (bpf/snat.c counts them, ferryd exports them).
STATS = ("xlate_eg4", "xlate_in4", "xlate_eg6", "xlate_in6", "alloc_fail4", "alloc_fail6",
         "reused_closed", "icmp_error", "fragment", "drop_rewrite", "fragment_unknown",
         "no_mapping", "try_open", "try_closing", "try_refused", "reused_early")
CONSTANTS = {"EP_F_POD_ENI": EP_F_POD_ENI, "NAT_RETRIES": 128, "ETH_HLEN": 14,
             "TCP_FIN": TCP_FIN, "TCP_RST": TCP_RST,
             **{f"SNAT_{k.upper()}": v for k, v in RANDOMIZE.items()},
             # last_used is rewritten at most once a second per entry (Cilium's throttle)
             "NAT_TOUCH_NS": 1_000_000_000,
             # a closed TCP flow's port goes to a new flow 0.5 s after it closed: its last ACK,
             # or one retransmission of the peer's FIN (RTO >= 200 ms), had time to pass;
             # 4,536 ports then carry ~9,000 new flows/s to one destination; beyond that the
             # later tries of an allocation shorten the delay (bpf/snat.c reuse_grace)
             "NAT_REUSE_NS": 500_000_000,
             **{f"STAT_{name.upper()}": i for i, name in enumerate(STATS)},
             "STAT_COUNT": len(STATS)}
# Overridable by a -D compile flag: the eBPF load passes natMaxEntries.
NAT_MAX = 65536
DEFAULTS = {"FERRY_NAT_MAX": NAT_MAX}


class _Struct(ct.Structure):
    c_name = ""


class Ip4Key(_Struct):
    c_name = "ip4_key"
    _fields_ = [("addr", ct.c_uint32)]


Addr6 = ct.c_uint32 * 4  # an IPv6 address, the packet's 16 bytes


class Ip6Key(_Struct):
    c_name = "ip6_key"
    _fields_ = [("addr", Addr6)]


class Endpoint(_Struct):
    """A pod IP on this node (the CNI ADD inserts it, DEL removes it)."""

    c_name = "endpoint"
    _fields_ = [("ifindex", ct.c_uint32), ("flags", ct.c_uint32)]


class Lpm4Key(_Struct):
    c_name = "lpm4_key"
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint32)]


class Lpm6Key(_Struct):
    c_name = "lpm6_key"
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", Addr6)]


class Excluded(_Struct):
    c_name = "excluded"
    _fields_ = [("reason", ct.c_uint32)]  # 1: snatExcludeCidrs, 2: a pod CIDR


class NatConfig(_Struct):
    """Node-level SNAT parameters (array map, one slot), written by the load step. One port
    range for both families; node_ip / node_ip6 all zero: no SNAT for that family."""

    c_name = "nat_config"
    _fields_ = [("node_ip", ct.c_uint32), ("port_min", ct.c_uint16), ("port_max", ct.c_uint16),
                ("uplink_ifindex", ct.c_uint32), ("hash_seed", ct.c_uint32),
                ("node_ip6", Addr6), ("randomize", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class NatTuple4(_Struct):
    """A flow as seen in one direction. ICMP echo: the request's id is sport (dport 0), the
    reply's id is dport (sport 0), so both directions look up like ports do."""

    c_name = "nat_tuple4"
    _fields_ = [("saddr", ct.c_uint32), ("daddr", ct.c_uint32), ("sport", ct.c_uint16),
                ("dport", ct.c_uint16), ("proto", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class NatEntry4(_Struct):
    """What to rewrite to: forward entries hold node IP + allocated port, reverse entries the
    pod's IP + original port. last_used is bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC at tick
    resolution) for the GC,
    rewritten at most every NAT_TOUCH_NS. TCP state lives in the reverse entry (the port's
    claim): tcp_out what the pod sent, tcp_in what came back (0, TCP_FIN, TCP_RST); each is
    written by one direction only, so the two programs never race on a byte."""

    c_name = "nat_entry4"
    _fields_ = [("addr", ct.c_uint32), ("port", ct.c_uint16), ("tcp_out", ct.c_uint8),
                ("tcp_in", ct.c_uint8), ("created", ct.c_uint64), ("last_used", ct.c_uint64)]


class NatTuple6(_Struct):
    """NatTuple4 for IPv6 (ICMPv6 echo ids placed the same way)."""

    c_name = "nat_tuple6"
    _fields_ = [("saddr", Addr6), ("daddr", Addr6), ("sport", ct.c_uint16),
                ("dport", ct.c_uint16), ("proto", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class NatEntry6(_Struct):
    """NatEntry4 for IPv6."""

    c_name = "nat_entry6"
    _fields_ = [("addr", Addr6), ("port", ct.c_uint16), ("tcp_out", ct.c_uint8),
                ("tcp_in", ct.c_uint8), ("pad2", ct.c_uint32), ("created", ct.c_uint64),
                ("last_used", ct.c_uint64)]


class Frag4Key(_Struct):
    """An IPv4 datagram in fragments, as the packets name it (either direction)."""

    c_name = "frag4_key"
    _fields_ = [("saddr", ct.c_uint32), ("daddr", ct.c_uint32), ("id", ct.c_uint16),
                ("proto", ct.c_uint8), ("pad", ct.c_uint8)]


class Frag6Key(_Struct):
    """Frag4Key for IPv6: the fragment header's 32-bit identification."""

    c_name = "frag6_key"
    _fields_ = [("saddr", Addr6), ("daddr", Addr6), ("id", ct.c_uint32), ("proto", ct.c_uint8),
                ("pad", ct.c_uint8 * 3)]


class Frag4Ports(_Struct):
    """The L4 identity of a fragmented datagram, from its first fragment (struct l4's ports
    and kind), so that the later fragments, which carry no L4 header, find its NAT flow."""

    c_name = "frag4_ports"
    _fields_ = [("sport", ct.c_uint16), ("dport", ct.c_uint16), ("kind", ct.c_uint8),
                ("pad", ct.c_uint8 * 3)]


class Counter(_Struct):
    """One per-CPU counter of ferry_stats (index: layouts.STATS)."""

    c_name = "counter"
    _fields_ = [("packets", ct.c_uint64)]


class Redirect(_Struct):
    """A pod with its own uplink device (pod ENI)."""

    c_name = "redirect"
    _fields_ = [("host_ifindex", ct.c_uint32), ("eni_ifindex", ct.c_uint32),
                ("gateway", ct.c_uint32), ("host_mac", ct.c_uint8 * 6),
                ("pod_mac", ct.c_uint8 * 6)]


class Meta(_Struct):
    """The loader's record in bpffs (regular files cannot live there): which build is pinned,
    by which loader (LOADERS), and the kernel features its load found missing (FEATURES bits:
    the programs needing them were not loaded)."""

    c_name = "meta"
    _fields_ = [("hash", ct.c_uint8 * 32), ("compiled_at", ct.c_uint64),
                ("layout_version", ct.c_uint32), ("loader", ct.c_uint32),
                ("missing", ct.c_uint32), ("pad", ct.c_uint32)]


LOADERS = {1: "bcc", 2: "elf"}  # Meta.loader


@dataclass(frozen=True)
class MapSpec:
    name: str  # the kernel's map name (15 chars at most) and the pin's file name
    kind: str  # bcc table type; BPF_MAP_TYPE_<KIND.upper()> for clang and bpf(2)
    key: type[_Struct] | type[ct.c_uint32]  # array maps: the kernel wants a plain u32 key
    value: type[_Struct]
    max_entries: int  # the default build's (the prebuilt objects')
    flags: str = "0"
    # A macro of DEFAULTS for the size, set by natMaxEntries: a -D compile flag for bcc, the
    # max_entries the ELF loader creates the map with (as libbpf's bpf_map__set_max_entries).
    size_macro: str = ""
    # Flow state the programs write (not re-synced from ferryd's records): a reload of another
    # build or size copies it from the old maps into the new ones (loader/pins.py).
    carried: bool = False

    @property
    def c_max_entries(self) -> str:
        return self.size_macro or str(self.max_entries)

    @property
    def key_size(self) -> int:
        return ct.sizeof(self.key)

    @property
    def value_size(self) -> int:
        return ct.sizeof(self.value)

    @property
    def c_key(self) -> str:
        return f"struct {self.key.c_name}" if issubclass(self.key, _Struct) else _C_TYPES[self.key]

    @property
    def c_value(self) -> str:
        return f"struct {self.value.c_name}"


MAPS: dict[str, MapSpec] = {m.name: m for m in (
    MapSpec("ferry_endpoints", "hash", Ip4Key, Endpoint, 16384),
    MapSpec("ferry_snat_excl", "lpm_trie", Lpm4Key, Excluded, 1024, "BPF_F_NO_PREALLOC"),
    MapSpec("ferry_nat_cfg", "array", ct.c_uint32, NatConfig, 1),
    MapSpec("ferry_nat_fwd", "lru_hash", NatTuple4, NatEntry4, NAT_MAX,
            size_macro="FERRY_NAT_MAX", carried=True),
    MapSpec("ferry_nat_rev", "lru_hash", NatTuple4, NatEntry4, NAT_MAX,
            size_macro="FERRY_NAT_MAX", carried=True),
    MapSpec("ferry_redirect", "hash", Ip4Key, Redirect, 4096),
    # IPv6 SNAT: the same roles as the four IPv4 maps above (names: 15 chars at most).
    MapSpec("ferry_endpoint6", "hash", Ip6Key, Endpoint, 16384),
    MapSpec("ferry_snat_ex6", "lpm_trie", Lpm6Key, Excluded, 1024, "BPF_F_NO_PREALLOC"),
    MapSpec("ferry_nat_fwd6", "lru_hash", NatTuple6, NatEntry6, NAT_MAX,
            size_macro="FERRY_NAT_MAX", carried=True),
    MapSpec("ferry_nat_rev6", "lru_hash", NatTuple6, NatEntry6, NAT_MAX,
            size_macro="FERRY_NAT_MAX", carried=True),
    # IPv4 fragments of NATed datagrams in flight (Cilium keeps 8k), both directions.
    MapSpec("ferry_frag4", "lru_hash", Frag4Key, Frag4Ports, 8192, carried=True),
    MapSpec("ferry_frag6", "lru_hash", Frag6Key, Frag4Ports, 8192, carried=True),
    MapSpec("ferry_stats", "percpu_array", ct.c_uint32, Counter, len(STATS)),
    MapSpec("ferry_meta", "array", ct.c_uint32, Meta, 1),
)}


def map_sizes(nat_max: int = NAT_MAX) -> dict[str, int]:
    """max_entries of the maps a natMaxEntries sizes (the others keep their MapSpec size)."""
    return {m.name: nat_max for m in MAPS.values() if m.size_macro == "FERRY_NAT_MAX"}


# Programs: function name in bpf/*.c == kernel prog name (15 chars max) == pin file name.
PROGRAMS = ("ferry_snat_eg", "ferry_snat_in", "ferry_eni_eg", "ferry_eni_in")
# 2: IPv6 maps, nat_config.node_ip6; 3: meta.loader, meta.missing; 4: TCP state, randomize,
# fragments, counters; 5: IPv6 fragments (ferry_frag6)
LAYOUT_VERSION = 5

_C_TYPES = {ct.c_uint8: "__u8", ct.c_uint16: "__u16", ct.c_uint32: "__u32",
            ct.c_uint64: "__u64"}


def _c_field(name: str, typ: type) -> str:
    if typ in _C_TYPES:
        return f"    {_C_TYPES[typ]} {name};"
    elem = getattr(typ, "_type_", None)
    if elem in _C_TYPES and hasattr(typ, "_length_"):
        return f"    {_C_TYPES[elem]} {name}[{typ._length_}];"  # type: ignore[attr-defined]
    raise TypeError(f"no C type for {name}: {typ}")


def c_struct(s: type[_Struct]) -> str:
    body = "\n".join(_c_field(n, t) for n, t in s._fields_)  # type: ignore[misc]
    return f"struct {s.c_name} {{\n{body}\n}};"


BUILDS = ("bcc", "clang")


def c_header(build: str = "bcc") -> str:
    """The C side of the layouts for one build. bcc: prepended to the BPF sources before
    compiling (it defines FERRY_BCC); clang: the file bpf/common.h includes as
    "ferry_layouts.h"."""
    if build not in BUILDS:
        raise ValueError(f"unknown BPF build {build!r}")
    structs: list[type[_Struct]] = []
    for spec in MAPS.values():
        for s in (spec.key, spec.value):
            if issubclass(s, _Struct) and s not in structs:
                structs.append(s)
    out = ["/* generated by loader/layouts.py: do not edit */"]
    if build == "bcc":
        out.append("#define FERRY_BCC 1")
    out += [f"#define {k} {v}" for k, v in CONSTANTS.items()]
    out += [f"#ifndef {k}\n#define {k} {v}\n#endif" for k, v in DEFAULTS.items()]
    out += [c_struct(s) for s in structs]
    for s in structs:  # the C code must agree with ctypes on every size
        out.append(f"_Static_assert(sizeof(struct {s.c_name}) == {ct.sizeof(s)}, "
                   f"\"layout of {s.c_name}\");")
    for m in MAPS.values():
        out.append(_bcc_map(m) if build == "bcc" else _clang_map(m))
    return "\n".join(out) + "\n"


def _clang_map(m: MapSpec) -> str:
    """A BTF-defined map, as libbpf declares them: the key and value types travel in BTF."""
    return (f"struct {{\n    __uint(type, BPF_MAP_TYPE_{m.kind.upper()});\n"
            f"    __uint(max_entries, {m.c_max_entries});\n"
            f"    __type(key, {m.c_key});\n    __type(value, {m.c_value});\n"
            f"    __uint(map_flags, {m.flags});\n}} {m.name} SEC(\".maps\");")


def _bcc_map(m: MapSpec) -> str:
    """The bcc table and its accessors. bcc rewrites `map.lookup()` only in the main text and
    never inside a macro, so the shared code's map_lookup(map, key) (bpf/common.h) expands to
    these functions, where the rewriter sees plain method calls. bcc has no update with
    BPF_EXIST: it is a lookup then an update (not atomic; the ELF build is)."""
    k, v, n = m.c_key, m.c_value, m.name
    if m.kind == "array":  # every slot exists: an update is all there is
        update = f"    return {n}.update(k, v);\n"
    else:
        update = (f"    if (flags == BPF_NOEXIST)\n        return {n}.insert(k, v);\n"
                  f"    if (flags == BPF_EXIST && !{n}.lookup(k))\n"
                  f"        return -2; /* ENOENT */\n    return {n}.update(k, v);\n")
    return (f"BPF_F_TABLE(\"{m.kind}\", {k}, {v}, {n}, {m.c_max_entries}, {m.flags});\n"
            f"static __always_inline {v} *{n}__lookup({k} *k) {{ return {n}.lookup(k); }}\n"
            f"static __always_inline long {n}__update({k} *k, {v} *v, __u64 flags) {{\n"
            f"{update}}}\n"
            f"static __always_inline long {n}__delete({k} *k) {{ return {n}.delete(k); }}")


# --- conversions --------------------------------------------------------------------------------

def ip4(addr: str | ipaddress.IPv4Address) -> int:
    """An IPv4 address as the u32 that holds it in network byte order (as in the packet)."""
    return int.from_bytes(socket.inet_aton(str(addr)), "little")


def ip4_str(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "little"))


def ip6(addr: str | ipaddress.IPv6Address) -> ct.Array[ct.c_uint32]:
    """An IPv6 address as the four u32 words that hold its 16 bytes (as in the packet)."""
    return Addr6.from_buffer_copy(ipaddress.IPv6Address(addr).packed)


def ip6_str(value: ct.Array[ct.c_uint32]) -> str:
    return str(ipaddress.IPv6Address(bytes(value)))


def port(p: int) -> int:
    return socket.htons(p)


def port_host(p: int) -> int:
    return socket.ntohs(p)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def as_dict(s: ct.Structure) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, _typ in s._fields_:  # type: ignore[misc]
        v = getattr(s, name)
        out[name] = bytes(v) if isinstance(v, ct.Array) else v
    return out
