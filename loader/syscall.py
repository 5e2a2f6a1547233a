"""The bpf(2) system call through ctypes: pins and map elements without bcc or libbpf.

This is what the CNI ADD path uses: opening a pin and updating a map costs microseconds,
where importing bcc costs a second and compiling more.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import platform
import struct
from dataclasses import dataclass

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long

MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD, OBJ_PIN, OBJ_GET, PROG_TEST_RUN, OBJ_GET_INFO_BY_FD, BTF_LOAD = 5, 6, 7, 10, 15, 18
PROG_ATTACH, PROG_DETACH, PROG_GET_FD_BY_ID, PROG_QUERY = 8, 9, 13, 16
# tcx (kernel 6.6+): a device's own BPF hooks, no qdisc or classifier in between
TCX_INGRESS, TCX_EGRESS = 46, 47
BPF_F_REPLACE = 1 << 2
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_F_RDONLY = 1 << 3
PROG_TYPE_SCHED_CLS = 3
LOG_SIZE = 1 << 24  # the verifier log buffer of a failed load: 16 MiB, its tail is the error


class BpfError(OSError):
    pass


def _call(cmd: int, attr: ct.Array) -> int:  # type: ignore[type-arg]
    ret = _libc.syscall(_NR_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if ret < 0:
        err = ct.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return int(ret)


def _attr(payload: bytes, size: int = 128) -> ct.Array:  # type: ignore[type-arg]
    buf = ct.create_string_buffer(size)  # larger than the attr used; the rest is zero
    ct.memmove(buf, payload, len(payload))
    return buf


class VerifierError(BpfError):
    """The kernel refused a program or BTF; `log` is the verifier's log (its tail says why)."""

    def __init__(self, err: int, what: str, log: str) -> None:
        self.log = log
        tail = "\n".join(log.rstrip().splitlines()[-6:])
        super().__init__(err, f"{what}: {os.strerror(err)}" + (f"\n{tail}" if tail else ""))


def _log_text(buf: ct.Array) -> str:  # type: ignore[type-arg]
    return buf.value.decode(errors="replace")


def btf_load(data: bytes) -> int:
    """BPF_BTF_LOAD: an fd for the BTF blob. On refusal, retried with a log for the error."""
    blob = ct.create_string_buffer(data, len(data))

    def attempt(log: ct.Array | None) -> int:  # type: ignore[type-arg]
        return _call(BTF_LOAD, _attr(struct.pack(
            "QQIII", ct.addressof(blob), ct.addressof(log) if log is not None else 0,
            len(data), len(log) if log is not None else 0, 1 if log is not None else 0)))

    try:
        return attempt(None)
    except BpfError as e:
        log = ct.create_string_buffer(LOG_SIZE)
        try:
            return attempt(log)
        except BpfError:
            raise VerifierError(e.errno, "BTF refused", _log_text(log)) from None


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int,
               name: str, btf_fd: int = 0, btf_key: int = 0, btf_value: int = 0) -> int:
    """BPF_MAP_CREATE, with the key and value types' BTF when btf_fd is given."""
    payload = struct.pack("IIIIIII16sIIIII", map_type, key_size, value_size, max_entries,
                          flags, 0, 0, name.encode()[:15], 0, btf_fd, btf_key, btf_value, 0)
    return _call(MAP_CREATE, _attr(payload))


@dataclass
class ProgSpec:
    """What BPF_PROG_LOAD takes for one program (struct bpf_attr, prog load part)."""

    name: str
    insns: bytes
    license: str = "GPL"
    prog_type: int = PROG_TYPE_SCHED_CLS
    btf_fd: int = 0
    func_info: bytes = b""  # records of func_info_rec_size bytes, insn offsets in insns
    func_info_rec_size: int = 0
    line_info: bytes = b""
    line_info_rec_size: int = 0
    log_level: int = 0  # 0: no log unless the load fails (then retried with level 1)
    log_size: int = LOG_SIZE  # a probe's short log needs 64 KiB, not 16 MiB of resident memory


def prog_load(spec: ProgSpec) -> int:
    """BPF_PROG_LOAD; a refusal raises VerifierError carrying the verifier's log."""
    insns = ct.create_string_buffer(spec.insns, len(spec.insns))
    lic = ct.create_string_buffer(spec.license.encode())
    finfo = ct.create_string_buffer(spec.func_info, len(spec.func_info) or 1)
    linfo = ct.create_string_buffer(spec.line_info, len(spec.line_info) or 1)

    def attempt(level: int, log: ct.Array | None) -> int:  # type: ignore[type-arg]
        payload = struct.pack(
            "IIQQIIQII16sIIIIQIIQII", spec.prog_type, len(spec.insns) // 8,
            ct.addressof(insns), ct.addressof(lic), level, len(log) if log is not None else 0,
            ct.addressof(log) if log is not None else 0, 0, 0, spec.name.encode()[:15], 0, 0,
            spec.btf_fd, spec.func_info_rec_size if spec.func_info else 0,
            ct.addressof(finfo) if spec.func_info else 0,
            len(spec.func_info) // (spec.func_info_rec_size or 1),
            spec.line_info_rec_size if spec.line_info else 0,
            ct.addressof(linfo) if spec.line_info else 0,
            len(spec.line_info) // (spec.line_info_rec_size or 1), 0)
        return _call(PROG_LOAD, _attr(payload, 160))

    if spec.log_level:
        log = ct.create_string_buffer(spec.log_size)
        try:
            return attempt(spec.log_level, log)
        except BpfError as e:
            raise VerifierError(e.errno, f"program {spec.name} refused",
                                _log_text(log)) from None
    try:
        return attempt(0, None)
    except BpfError as e:
        log = ct.create_string_buffer(LOG_SIZE)
        try:
            return attempt(1, log)
        except BpfError:
            pass
        raise VerifierError(e.errno, f"program {spec.name} refused", _log_text(log)) from None


def prog_test_run(fd: int, data: bytes, ctx: bytes = b"", out_size: int = 4096,
                  repeat: int = 1) -> tuple[int, bytes]:
    """BPF_PROG_TEST_RUN: (the program's return value, the packet as it left)."""
    din = ct.create_string_buffer(data, len(data))
    dout = ct.create_string_buffer(out_size)
    cin = ct.create_string_buffer(ctx, len(ctx) or 1)
    attr = _attr(struct.pack("IIIIQQIIIIQQ", fd, 0, len(data), out_size, ct.addressof(din),
                             ct.addressof(dout), repeat, 0, len(ctx),
                             0, ct.addressof(cin) if ctx else 0, 0))
    _call(PROG_TEST_RUN, attr)
    retval, _, size_out = struct.unpack_from("III", attr.raw, 4)
    return retval, dout.raw[:size_out]


def prog_test_time(fd: int, data: bytes, repeat: int) -> float:
    """BPF_PROG_TEST_RUN `repeat` times on `data`: the kernel's mean run time in ns (its own
    clock around the runs, the time it was preempted left out)."""
    din = ct.create_string_buffer(data, len(data))
    attr = _attr(struct.pack("IIIIQQI", fd, 0, len(data), 0, ct.addressof(din), 0, repeat))
    _call(PROG_TEST_RUN, attr)
    return float(struct.unpack_from("I", attr.raw, 36)[0])


def obj_get(path: str, read_only: bool = False) -> int:
    """A new fd for the object pinned at `path` (BPF_OBJ_GET); the caller closes it."""
    cpath = ct.create_string_buffer(path.encode())
    flags = BPF_F_RDONLY if read_only else 0
    return _call(OBJ_GET, _attr(struct.pack("QII", ct.addressof(cpath), 0, flags)))


def obj_pin(fd: int, path: str) -> None:
    cpath = ct.create_string_buffer(path.encode())
    _call(OBJ_PIN, _attr(struct.pack("QII", ct.addressof(cpath), fd, 0)))


def _elem(cmd: int, fd: int, key: ct._CData, value: ct._CData | None, flags: int = 0) -> int:
    vptr = ct.addressof(value) if value is not None else 0
    return _call(cmd, _attr(struct.pack("IIQQQ", fd, 0, ct.addressof(key), vptr, flags)))


def map_lookup(fd: int, key: ct._CData, value: ct._CData) -> bool:
    try:
        _elem(MAP_LOOKUP_ELEM, fd, key, value)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_update(fd: int, key: ct._CData, value: ct._CData, flags: int = BPF_ANY) -> None:
    _elem(MAP_UPDATE_ELEM, fd, key, value, flags)


def map_delete(fd: int, key: ct._CData) -> bool:
    try:
        _elem(MAP_DELETE_ELEM, fd, key, None)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_next_key(fd: int, key: ct._CData | None, next_key: ct._CData) -> bool:
    """GET_NEXT_KEY; key None asks for the first key. False at the end."""
    kptr = ct.addressof(key) if key is not None else 0
    try:
        _call(MAP_GET_NEXT_KEY, _attr(struct.pack("IIQQ", fd, 0, kptr, ct.addressof(next_key))))
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def prog_info(fd: int) -> tuple[int, str]:
    """(id, name) of a program (struct bpf_prog_info: name at offset 64)."""
    info = ct.create_string_buffer(256)
    _call(OBJ_GET_INFO_BY_FD, _attr(struct.pack("IIQ", fd, 256, ct.addressof(info))))
    ident = struct.unpack_from("I", info.raw, 4)[0]
    name = info.raw[64:80].split(b"\0", 1)[0].decode()
    return ident, name


def prog_attach(ifindex: int, prog_fd: int, attach_type: int, replace_fd: int = 0) -> None:
    """BPF_PROG_ATTACH to a device hook (tcx); replace_fd: the attached program it replaces in
    place (BPF_F_REPLACE), so that the hook is never without one."""
    _call(PROG_ATTACH, _attr(struct.pack("IIIII", ifindex, prog_fd, attach_type,
                                         BPF_F_REPLACE if replace_fd else 0, replace_fd)))


def prog_detach(ifindex: int, prog_fd: int, attach_type: int) -> None:
    _call(PROG_DETACH, _attr(struct.pack("III", ifindex, prog_fd, attach_type)))


def prog_query(ifindex: int, attach_type: int, most: int = 64) -> list[int]:
    """The ids of the programs attached to a device hook (tcx), in run order."""
    ids = (ct.c_uint32 * most)()
    attr = _attr(struct.pack("IIIIQI", ifindex, attach_type, 0, 0, ct.addressof(ids), most))
    _call(PROG_QUERY, attr)
    count = struct.unpack_from("I", attr.raw, 24)[0]
    return list(ids[:count])


def prog_fd_by_id(prog_id: int) -> int:
    return _call(PROG_GET_FD_BY_ID, _attr(struct.pack("I", prog_id)))


def map_info(fd: int) -> tuple[int, str, int, int]:
    """(id, name, key_size, value_size) of a map (struct bpf_map_info)."""
    info = ct.create_string_buffer(256)
    _call(OBJ_GET_INFO_BY_FD, _attr(struct.pack("IIQ", fd, 256, ct.addressof(info))))
    _typ, ident, ksize, vsize = struct.unpack_from("IIII", info.raw)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return ident, name, ksize, vsize
