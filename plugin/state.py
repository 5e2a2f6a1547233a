"""Per-attachment records: how DEL, CHECK and GC find what an ADD made, by container id.

<stateDir>/<network>/<containerID>:<ifname>.json, written before the ADD touches the host
(so a crash mid-ADD leaves a trace that DEL and GC follow) and completed when it succeeds.
":" is in neither a container id (protocol.validate_name) nor an interface name
(validate_ifname), so the file name names exactly one attachment. Records of the old scheme,
<containerID>.<ifname>.json (ambiguous: "a.b" + "c" and "a" + "b.c" shared a file), are
still found by the attachment they hold, and rewritten under the new name when saved.

A record that cannot be trusted (not JSON, wrong types, IPs that do not parse, a host veth
that is not a name ferry gives, contents naming another attachment than its file) is moved
to <dir>/.quarantine/ and reported, never acted on: acting on it could delete a live pod's
veth or the node's uplink.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from plugin.config import VETH_HASH_CHARS
from plugin.log import log

SUFFIX = ".json"
KEY_SEP = ":"
QUARANTINE = ".quarantine"
EGRESS_DIR = ".egress"  # <stateDir>/.egress/<network>/: ferry-egress's records
_TMP = ".tmp"  # ".tmp<pid>.<record name>": never a record name (those start alphanumeric)


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
    # The MACs of the host veth and of the pod's interface, as wiring.setup made them (the
    # eBPF pod-ENI redirect writes them into its map); "" in records older than this field.
    host_mac: str = ""
    pod_mac: str = ""


class DamagedRecord(ValueError):
    """A record file that cannot be trusted; the message says why."""


def record_name(container_id: str, ifname: str) -> str:
    return f"{container_id}{KEY_SEP}{ifname}{SUFFIX}"


def legacy_name(container_id: str, ifname: str) -> str:
    return f"{container_id}.{ifname}{SUFFIX}"


def record_key(name: str) -> tuple[str, str] | None:
    """(container id, ifname) of a new-scheme record file name; None for any other name."""
    if not name.endswith(SUFFIX) or name.startswith("."):
        return None
    cid, sep, ifname = name[:-len(SUFFIX)].partition(KEY_SEP)
    return (cid, ifname) if sep and cid and ifname else None


_TYPES: dict[str, tuple[type, ...]] = {
    "container_id": (str,), "ifname": (str,), "netns": (str,), "host_veth": (str,),
    "k8s_pod": (list, type(None)), "ips": (list,), "complete": (bool,),
    "result": (dict, type(None)), "pod_eni": (dict, type(None)), "owner_pid": (int, type(None)),
    "host_mac": (str,), "pod_mac": (str,),
}
_REQUIRED = ("container_id", "ifname", "netns", "host_veth")


def decode(raw: bytes, name: str, veth_prefix: str | None) -> Attachment:
    """The record in file `name`, checked field by field; DamagedRecord if any is wrong."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise DamagedRecord(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise DamagedRecord("not a JSON object")
    unknown = set(data) - set(_TYPES)
    missing = [k for k in _REQUIRED if k not in data]
    if unknown or missing:
        raise DamagedRecord(f"unknown fields {sorted(unknown)}" if unknown
                            else f"missing fields {missing}")
    for key, value in data.items():
        if not isinstance(value, _TYPES[key]) or (key == "owner_pid" and isinstance(value, bool)):
            raise DamagedRecord(f"{key} is {type(value).__name__}: {value!r:.60}")
    att = Attachment(**data)
    for ip in att.ips:
        try:
            ipaddress.ip_interface(ip)
        except (ValueError, TypeError):
            raise DamagedRecord(f"ips holds {ip!r:.60}, not an address") from None
    if att.k8s_pod is not None and (len(att.k8s_pod) != 2
                                    or not all(isinstance(p, str) for p in att.k8s_pod)):
        raise DamagedRecord(f"k8s_pod is {att.k8s_pod!r:.60}")
    if veth_prefix is not None and not re.fullmatch(
            rf"{re.escape(veth_prefix)}[0-9a-f]{{{VETH_HASH_CHARS}}}", att.host_veth):
        raise DamagedRecord(f"host_veth {att.host_veth!r:.30} is not a name ferry gives "
                            f"({veth_prefix} + {VETH_HASH_CHARS} hex)")
    if name not in (record_name(att.container_id, att.ifname),
                    legacy_name(att.container_id, att.ifname)):
        raise DamagedRecord(f"holds {att.container_id}/{att.ifname}, another attachment")
    return att


class StateStore:
    def __init__(self, state_dir: str, scope: str, veth_prefix: str | None = None,
                 move_damaged: bool = True) -> None:
        """scope: the network's name, or ".egress/<network>" for ferry-egress's records; it
        is also the first part of the owner tag on the links (owner_tag). veth_prefix: the
        network's, to refuse records naming a link ferry would not name (None: any name, for
        readers that only list). move_damaged: False leaves damaged records where they are
        (still ignored), for a reader of another network's records."""
        self.dir = Path(state_dir) / scope
        self.scope = scope
        self.veth_prefix = veth_prefix
        self.move_damaged = move_damaged

    def _path(self, container_id: str, ifname: str) -> Path:
        return self.dir / record_name(container_id, ifname)

    def _read(self, path: Path) -> Attachment | None:
        """The record at path; None if absent; a damaged one is quarantined, also None."""
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            return decode(raw, path.name, self.veth_prefix)
        except DamagedRecord as e:
            self.quarantine(path, str(e))
            return None

    def load(self, container_id: str, ifname: str) -> Attachment | None:
        att = self._read(self._path(container_id, ifname))
        if att is None:  # a node upgraded from the old scheme: the file may be another's
            att = self._read(self.dir / legacy_name(container_id, ifname))
            if att is not None and (att.container_id, att.ifname) != (container_id, ifname):
                return None
        return att

    def save(self, att: Attachment) -> None:
        """Atomic write (tmp + rename) so a reader never sees half a record."""
        path = self._path(att.container_id, att.ifname)
        tmp = self.dir / f"{_TMP}{os.getpid()}.{path.name}"
        # A shallow dict: the values are JSON already (asdict deep-copies them).
        text = json.dumps({f.name: getattr(att, f.name) for f in fields(att)})
        for retry in (True, False):
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                tmp.write_text(text)
                tmp.replace(path)
                break
            except FileNotFoundError:
                # A rolled-back first ADD removed the (then empty) directory just now.
                if not retry:
                    raise
            except BaseException:
                tmp.unlink(missing_ok=True)  # a full disk: no half record left behind
                raise
        self._drop_legacy(att.container_id, att.ifname)

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """flock the store's directory (no file to create: it works on a full disk). A
        teardown holds it shared from its first step to the record's removal, a dataplane
        re-sync exclusive while it re-reads and re-applies one record: a re-sync then never
        re-installs what a DEL in flight already removed, after which nothing would remove
        it. No directory: there is no record to guard."""
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def remove(self, container_id: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self._path(container_id, ifname).unlink()
        self._drop_legacy(container_id, ifname)

    def _drop_legacy(self, container_id: str, ifname: str) -> None:
        """The old-scheme file of this attachment, only if it holds this attachment."""
        old = self.dir / legacy_name(container_id, ifname)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            data = json.loads(old.read_bytes())
            if isinstance(data, dict) and (data.get("container_id"), data.get("ifname")) == \
                    (container_id, ifname):
                old.unlink()

    def quarantine(self, path: Path, reason: str) -> None:
        """Move a damaged record aside (kept for the operator), and say so."""
        if not self.move_damaged:
            log.warning("damaged state record ignored: %s", reason, extra={"record": str(path)})
            return
        log.error("state record quarantined: %s", reason,
                  extra={"record": str(path), "quarantine": str(self.dir / QUARANTINE)})
        try:
            (self.dir / QUARANTINE).mkdir(exist_ok=True, mode=0o700)
            path.replace(self.dir / QUARANTINE / path.name)
        except OSError as e:  # a read-only state dir: it stays, and stays ignored
            log.error("cannot move the damaged record aside: %s", e,
                      extra={"record": str(path)})

    def quarantined(self) -> list[tuple[str, str]]:
        """(file name, reason) of every quarantined record, and of damaged records still in
        place (a read-only dir), without moving anything."""
        out = []
        for d in (self.dir / QUARANTINE, self.dir):
            for p in sorted(d.glob(f"*{SUFFIX}")) if d.is_dir() else []:
                try:
                    decode(p.read_bytes(), p.name, self.veth_prefix)
                except DamagedRecord as e:
                    out.append((p.name, str(e)))
                except OSError as e:
                    out.append((p.name, str(e)))
        return out

    def claims(self) -> set[str]:
        """File names (quarantine included) that may hold an attachment: a link whose owner
        has one of these is not leaked, even if its record cannot be read."""
        names: set[str] = set()
        for d in (self.dir, self.dir / QUARANTINE):
            if d.is_dir():
                names |= {p.name for p in d.glob(f"*{SUFFIX}")}
        return names

    def temp_files(self) -> list[tuple[Path, int]]:
        """Half-written records (tmp + rename interrupted by a kill) with the writer's pid."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if p.name.startswith(_TMP):  # ".tmp<pid>.<name>"
                pid = p.name[len(_TMP):].partition(".")[0]
            elif re.search(r"\.tmp\d+$", p.name):  # the old scheme's "<cid>.<ifname>.tmp<pid>"
                pid = p.name.rpartition(".tmp")[2]
            else:
                continue
            if pid.isdigit():
                out.append((p, int(pid)))
        return out

    def all(self) -> list[Attachment]:
        """Every trustworthy record (damaged ones are quarantined on the way)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob(f"*{SUFFIX}")):
            if p.name.startswith(_TMP):  # a save in flight (pathlib's glob matches dotfiles):
                continue                 # not damaged, and temp_files() is its reader
            att = self._read(p)
            if att is not None:
                out.append(att)
        return out


def owner_tag(scope: str, container_id: str, ifname: str) -> str:
    """What a host veth carries in IFLA_IFALIAS: the attachment that owns it ("/" is in no
    network name, container id or ifname, so the tag parses back unambiguously)."""
    return f"ferry:{scope}/{container_id}/{ifname}"


def parse_owner_tag(alias: str) -> tuple[str, str, str] | None:
    """(scope, container id, ifname) of a ferry owner tag; None for any other alias."""
    if not alias.startswith("ferry:"):
        return None
    head, _, ifname = alias[len("ferry:"):].rpartition("/")
    scope, _, cid = head.rpartition("/")  # the scope may hold a "/" itself (.egress/<net>)
    return (scope, cid, ifname) if scope and cid and ifname else None
