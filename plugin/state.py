"""Per-attachment records: how DEL, CHECK and GC find what an ADD made, by container id.

<stateDir>/<network>/<containerID>.<ifname>.json, written before the ADD touches the host
(so a crash mid-ADD leaves a trace that DEL and GC follow) and completed when it succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Attachment:
    container_id: str
    ifname: str
    netns: str
    host_veth: str
    k8s_pod: list[str] | None = None
    ips: list[str] = field(default_factory=list)
    complete: bool = False
    result: dict[str, Any] | None = None
    # The pod's own uplink device (config.PodENI as a dict), for the eBPF redirection.
    pod_eni: dict[str, Any] | None = None
    # The process that runs the ADD: while it lives, an incomplete record is work in flight.
    owner_pid: int | None = None


class StateStore:
    def __init__(self, state_dir: str, network: str) -> None:
        self.dir = Path(state_dir) / network

    def _path(self, container_id: str, ifname: str) -> Path:
        return self.dir / f"{container_id}.{ifname}.json"

    def load(self, container_id: str, ifname: str) -> Attachment | None:
        try:
            return Attachment(**json.loads(self._path(container_id, ifname).read_text()))
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError):
            return None

    def save(self, att: Attachment) -> None:
        """Atomic write (tmp + rename) so a reader never sees half a record."""
        path = self._path(att.container_id, att.ifname)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        # A shallow dict: the values are JSON already (asdict deep-copies them).
        text = json.dumps({f.name: getattr(att, f.name) for f in fields(att)})
        for retry in (True, False):
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                tmp.write_text(text)
                tmp.replace(path)
                return
            except FileNotFoundError:
                # A rolled-back first ADD removed the (then empty) directory just now.
                if not retry:
                    raise
            except BaseException:
                tmp.unlink(missing_ok=True)  # a full disk: no half record left behind
                raise

    def remove(self, container_id: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self._path(container_id, ifname).unlink()

    def temp_files(self) -> list[tuple[Path, int]]:
        """Half-written records (tmp + rename interrupted by a kill) with the writer's pid."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.glob("*.tmp*"):
            pid = p.suffix.removeprefix(".tmp")
            if pid.isdigit():
                out.append((p, int(pid)))
        return out

    def all(self) -> list[Attachment]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
                out.append(Attachment(**json.loads(p.read_text())))
        return out
