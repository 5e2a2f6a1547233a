"""Typed access to pinned maps: ctypes keys/values from loader.layouts over raw bpf(2)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from typing import Generic, TypeVar

from loader import syscall
from loader.layouts import MAPS, MapSpec

K = TypeVar("K")
V = TypeVar("V")


class PinnedMap(Generic[K, V]):
    """A pinned map opened by path; checks that the pinned sizes match the declared layout."""

    def __init__(self, path: str, spec: MapSpec) -> None:
        self.path, self.spec = path, spec
        self.fd = syscall.obj_get(path)
        _id, name, ksize, vsize = syscall.map_info(self.fd)
        if (ksize, vsize) != (_sizeof(spec.key), _sizeof(spec.value)):
            os.close(self.fd)
            raise syscall.BpfError(0, f"{path}: pinned map has key/value {ksize}/{vsize} "
                                      f"bytes, layout says {_sizeof(spec.key)}/"
                                      f"{_sizeof(spec.value)}: reload the dataplane")
        self.id, self.name = _id, name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, key: K) -> V | None:
        value = self.spec.value()
        return value if syscall.map_lookup(self.fd, key, value) else None  # type: ignore

    def put(self, key: K, value: V, flags: int = syscall.BPF_ANY) -> None:
        syscall.map_update(self.fd, key, value, flags)  # type: ignore[arg-type]

    def delete(self, key: K) -> bool:
        return syscall.map_delete(self.fd, key)  # type: ignore[arg-type]

    def keys(self) -> Iterator[K]:
        prev = None
        while True:
            nxt = self.spec.key()
            if not syscall.map_next_key(self.fd, prev, nxt):
                return
            yield nxt  # type: ignore[misc]
            prev = nxt

    def items(self) -> Iterator[tuple[K, V]]:
        for k in list(self.keys()):  # snapshot keys: deleting while walking restarts the walk
            v = self.get(k)
            if v is not None:
                yield k, v


def _sizeof(t: type) -> int:
    return ctypes.sizeof(t)  # type: ignore[arg-type]


def open_map(pin_dir: str, name: str) -> PinnedMap:  # type: ignore[type-arg]
    return PinnedMap(os.path.join(pin_dir, "maps", name), MAPS[name])
