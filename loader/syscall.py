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

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long

MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_PIN, OBJ_GET, OBJ_GET_INFO_BY_FD = 6, 7, 15
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_F_RDONLY = 1 << 3


class BpfError(OSError):
    pass


def _call(cmd: int, attr: ct.Array) -> int:  # type: ignore[type-arg]
    ret = _libc.syscall(_NR_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if ret < 0:
        err = ct.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return int(ret)


def _attr(payload: bytes) -> ct.Array:  # type: ignore[type-arg]
    buf = ct.create_string_buffer(128)  # larger than any attr used here; the rest is zero
    ct.memmove(buf, payload, len(payload))
    return buf


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


def map_info(fd: int) -> tuple[int, str, int, int]:
    """(id, name, key_size, value_size) of a map (struct bpf_map_info)."""
    info = ct.create_string_buffer(256)
    _call(OBJ_GET_INFO_BY_FD, _attr(struct.pack("IIQ", fd, 256, ct.addressof(info))))
    _typ, ident, ksize, vsize = struct.unpack_from("IIII", info.raw)
    name = info.raw[24:40].split(b"\0", 1)[0].decode()
    return ident, name, ksize, vsize
