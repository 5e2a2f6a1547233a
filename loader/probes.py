"""Kernel feature probes: what ferry's programs need, asked of the kernel instead of assumed
from its version (as `bpftool feature probe` does).

 - a helper exists for tc programs: load a two-instruction program calling it; the verifier
   says "invalid func" / "unknown func" when the kernel lacks it;
 - the IPv6 flag of bpf_l4_csum_replace (BPF_F_IPV6, 6.16+ and backports): run a tiny program
   calling it with the flag on a crafted packet (BPF_PROG_TEST_RUN); -EINVAL means no flag;
 - clsact: add the qdisc to `lo` in a throw-away network namespace (`unshare -n tc`).
Each probe costs a few milliseconds; ferryctl load and the auto selection run them, the CNI
ADD path reads their outcome from the pinned ferry_meta (Meta.missing) instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass

from loader import syscall

FUNC_L4_CSUM_REPLACE, FUNC_REDIRECT_NEIGH, FUNC_REDIRECT_PEER = 11, 152, 155
BPF_F_PSEUDO_HDR, BPF_F_IPV6 = 1 << 4, 1 << 7

# Meta.missing bits.
REDIRECT_PEER, REDIRECT_NEIGH, CSUM_IPV6, CLSACT = 1, 2, 4, 8
NAMES = {REDIRECT_PEER: "bpf_redirect_peer", REDIRECT_NEIGH: "bpf_redirect_neigh",
         CSUM_IPV6: "BPF_F_IPV6 of bpf_l4_csum_replace", CLSACT: "the clsact qdisc"}
# Programs that cannot load without a feature; the others do not depend on any probe
# (without CSUM_IPV6 the SNAT retries without the flag, see bpf/snat.c).
ENI_PROGRAMS = ("ferry_eni_eg", "ferry_eni_in")
NEEDED = {"ferry_eni_eg": REDIRECT_NEIGH | REDIRECT_PEER,
          "ferry_eni_in": REDIRECT_NEIGH | REDIRECT_PEER}
# Tests only: pretend these features are missing (a kernel without them cannot run here).
PRETEND_ENV = "FERRY_PRETEND_MISSING"


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


_CALL, _EXIT, _MOV64_IMM, _MOV64_REG = 0x85, 0x95, 0xB7, 0xBF


def helper(func_id: int, prog_type: int = syscall.PROG_TYPE_SCHED_CLS) -> bool:
    """Does the kernel know helper `func_id` for `prog_type`? (bpftool's probe_helper)"""
    insns = _insn(_CALL, imm=func_id) + _insn(_EXIT)
    try:
        fd = syscall.prog_load(syscall.ProgSpec("ferry_probe", insns, prog_type=prog_type,
                                                log_level=1, log_size=1 << 16))
    except syscall.VerifierError as e:
        return "invalid func " not in e.log and "unknown func " not in e.log
    os.close(fd)
    return True


def csum_ipv6_flag() -> bool:
    """bpf_l4_csum_replace(skb, <UDP checksum of an IPv6 packet>, 0, 0, PSEUDO_HDR | IPV6)."""
    csum_off = 14 + 40 + 6
    insns = b"".join((
        _insn(_MOV64_IMM, dst=2, imm=csum_off), _insn(_MOV64_IMM, dst=3),
        _insn(_MOV64_IMM, dst=4), _insn(_MOV64_IMM, dst=5, imm=BPF_F_PSEUDO_HDR | BPF_F_IPV6),
        _insn(_CALL, imm=FUNC_L4_CSUM_REPLACE), _insn(_EXIT)))
    packet = (b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
              + struct.pack(">IHBB", 0x60000000, 8, 17, 64) + b"\xfd" + b"\0" * 14 + b"\x01"
              + b"\xfd" + b"\0" * 14 + b"\x02" + struct.pack(">HHHH", 1000, 2000, 8, 0x1234))
    try:
        fd = syscall.prog_load(syscall.ProgSpec("ferry_probe", insns))
    except OSError:
        return False
    try:
        ret, _ = syscall.prog_test_run(fd, packet)
    except OSError:
        return False
    finally:
        os.close(fd)
    return ret == 0


def clsact() -> bool:
    tc, unshare = shutil.which("tc"), shutil.which("unshare")
    if tc is None or unshare is None:
        return False
    proc = subprocess.run([unshare, "-n", tc, "qdisc", "add", "dev", "lo", "clsact"],
                          capture_output=True, check=False)
    return proc.returncode == 0


@dataclass(frozen=True)
class Features:
    missing: int  # bits of NAMES

    def has(self, bit: int) -> bool:
        return not self.missing & bit

    def skipped_programs(self) -> tuple[str, ...]:
        return tuple(p for p, need in NEEDED.items() if self.missing & need)

    def missing_names(self) -> list[str]:
        return [name for bit, name in NAMES.items() if self.missing & bit]

    def describe(self) -> dict[str, bool]:
        return {name: self.has(bit) for bit, name in NAMES.items()}


def _pretended() -> int:
    bits = 0
    for word in os.environ.get(PRETEND_ENV, "").split(","):
        bits |= {"redirect_peer": REDIRECT_PEER, "redirect_neigh": REDIRECT_NEIGH,
                 "csum_ipv6": CSUM_IPV6, "clsact": CLSACT}.get(word.strip(), 0)
    return bits


@functools.cache
def _probe_all() -> int:
    missing = 0
    if not helper(FUNC_REDIRECT_PEER):
        missing |= REDIRECT_PEER
    if not helper(FUNC_REDIRECT_NEIGH):
        missing |= REDIRECT_NEIGH
    if not csum_ipv6_flag():
        missing |= CSUM_IPV6
    if not clsact():
        missing |= CLSACT
    return missing


def probe() -> Features:
    """The kernel's features, probed once per process (they do not change before a reboot)."""
    return Features(_probe_all() | _pretended())
