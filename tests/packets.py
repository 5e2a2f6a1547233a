"""Crafted Ethernet frames for BPF_PROG_TEST_RUN, and their parse back with checksum checks:
IPv4/IPv6 with TCP, UDP, ICMP/ICMPv6 echo. Standard library only."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
ETH_IP, ETH_IP6 = 0x0800, 0x86DD
POD_MAC, HOST_MAC = bytes.fromhex("0200000000aa"), bytes.fromhex("0200000000bb")


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data, as stored in a header."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!IxxxB", length, proto)


def _l4(src: str, dst: str, proto: int, sport: int, dport: int, payload: bytes,
        echo: int | None, udp_csum: bool) -> bytes:
    """The L4 header + payload with its checksum. echo: ICMP(v6) type, sport is the id."""
    if echo is not None:
        hdr = struct.pack("!BBHHH", echo, 0, 0, sport, 1) + payload
        cover = hdr if proto == ICMP else _pseudo(src, dst, proto, len(hdr)) + hdr
        return hdr[:2] + struct.pack("!H", csum(cover)) + hdr[4:]
    if proto not in (TCP, UDP):
        return payload  # a protocol the NAT does not translate: opaque bytes
    if proto == TCP:
        hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0) + payload
        at = 16
    else:
        hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        at = 6
        if not udp_csum:
            return hdr
    value = csum(_pseudo(src, dst, proto, len(hdr)) + hdr)
    if proto == UDP and value == 0:
        value = 0xFFFF
    return hdr[:at] + struct.pack("!H", value) + hdr[at + 2:]


def frame(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, *,
          echo: int | None = None, ttl: int = 64, payload: bytes = b"ferry",
          udp_csum: bool = True, dst_mac: bytes = HOST_MAC, src_mac: bytes = POD_MAC) -> bytes:
    l4 = _l4(src, dst, proto, sport, dport, payload, echo, udp_csum)
    if ipaddress.ip_address(src).version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0, ttl, proto, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        return dst_mac + src_mac + struct.pack("!H", ETH_IP) + ip + l4
    ip = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, ttl,
                     ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return dst_mac + src_mac + struct.pack("!H", ETH_IP6) + ip + l4


@dataclass
class Parsed:
    dst_mac: bytes
    src_mac: bytes
    src: str
    dst: str
    proto: int
    ttl: int
    sport: int  # ICMP echo: the id
    dport: int
    l4_csum: int  # as stored

    def flow(self) -> tuple[str, int, str, int]:
        return self.src, self.sport, self.dst, self.dport


def parse(data: bytes) -> Parsed:
    """Decode a frame and check every checksum (AssertionError when one is wrong)."""
    dst_mac, src_mac, eth = data[:6], data[6:12], struct.unpack("!H", data[12:14])[0]
    if eth == ETH_IP:
        ip = data[14:34]
        assert csum(ip) == 0, "IPv4 header checksum is wrong"
        proto, ttl = ip[9], ip[8]
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        total = struct.unpack("!H", ip[2:4])[0]
        l4 = data[34:14 + total]
    else:
        ip = data[14:54]
        proto, ttl = ip[6], ip[7]
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        l4 = data[54:54 + struct.unpack("!H", ip[4:6])[0]]
    if proto not in (TCP, UDP, ICMP, ICMP6):
        return Parsed(dst_mac, src_mac, src, dst, proto, ttl, 0, 0, 0)
    if proto in (ICMP, ICMP6):
        kind = l4[0]
        ident = struct.unpack("!H", l4[4:6])[0]
        request = kind in (8, 128)
        sport, dport = (ident, 0) if request else (0, ident)
        stored = struct.unpack("!H", l4[2:4])[0]
        cover = l4 if proto == ICMP else _pseudo(src, dst, proto, len(l4)) + l4
    else:
        sport, dport = struct.unpack("!HH", l4[:4])
        at = 16 if proto == TCP else 6
        stored = struct.unpack("!H", l4[at:at + 2])[0]
        cover = _pseudo(src, dst, proto, len(l4)) + l4
    if not (proto == UDP and stored == 0 and eth == ETH_IP):  # IPv4 UDP 0: no checksum
        assert csum(cover) == 0, f"L4 checksum of {src}->{dst} proto {proto} is wrong"
    return Parsed(dst_mac, src_mac, src, dst, proto, ttl, sport, dport, stored)
