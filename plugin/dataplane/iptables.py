"""The iptables dataplane: the fallback for nodes that cannot run the eBPF one, same behaviour.

Egress SNAT, in the style of the AWS egress plugin: per attachment one nat chain
FERRY-<sha512(network + container id + ifname)> (28 chars), jumped to from ferry's node chain
FERRY-POSTROUTING (itself jumped to from POSTROUTING) for the pod's source address. The chain
RETURNs the excluded CIDRs (snatExcludeCidrs and the pod CIDRs, as the eBPF exclusion trie),
then SNATs TCP, UDP and ICMP echo leaving the uplink to the node IP within snatPortRange with
--random-fully, --random or neither (randomizeSNAT prng, hashrandom, none; the protocols,
device and port range of the eBPF SNAT). conntrack tracks TCP state, translates ICMP errors
(RELATED) and reassembles fragments: what bpf/snat.c does itself. Every rule carries the
comment `name: "<net>" id: "<cid>"`, so unload finds a network's rules by name and DEL finds a
pod's chain by container id (never by reading the netns, which may be gone).
IPv6 the same through ip6tables when the node has an IPv6 source (nodeIPv6, an IPv6 nodeIP or
the uplink's global address); without one the chain only RETURNs: IPv6 is routed. ICMPv6 keeps
its echo id (ip6tables takes no port range for it).

Pod-ENI redirection by policy routing (IPv4, as the eBPF redirect): plugin/dataplane/
eni_routing.py.

Rules go in with iptables-restore --noflush (one atomic batch per family, argv only), in the
back end (nft or legacy) that already holds ferry's chain, else the one holding rules, else
what `iptables` is. A flock in the state dir serialises ferry's own read-modify-write batches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin.config import NetConf
from plugin.dataplane.base import Inspection, NatFlow, PodEntry, nat_summary, resync
from plugin.dataplane.eni_routing import (
    attach_eni_routing,
    detach_eni_routing,
    eni_routing_rows,
)
from plugin.dataplane.node import NodeAddrs, discover
from plugin.log import log
from plugin.protocol import CniError, Code
from plugin.rtnl import ifindex
from plugin.state import Attachment, StateStore
from plugin.undo import Undo

PREFIX = "FERRY-"
NODE_CHAIN = "FERRY-POSTROUTING"
CHAIN_LEN = 28  # iptables' limit is 28 usable characters (the AWS egress plugin's cut too)
BACKENDS = ("nft", "legacy")
# randomizeSNAT as the AWS egress plugin writes it: the SNAT target's port flag.
RANDOMIZE = {"prng": " --random-fully", "hashrandom": " --random", "none": ""}
NODE_RECORD = "iptables.node"  # not *.json: StateStore.all() reads those as attachments


def chain_name(network: str, container_id: str, ifname: str) -> str:
    digest = hashlib.sha512(f"{network}{container_id}{ifname}".encode()).hexdigest()
    return (PREFIX + digest)[:CHAIN_LEN]


def comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def _quoted(text: str) -> str:
    """A restore-file word: double quotes, inner quotes escaped (how iptables-save prints)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_ips(ips: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {4: [], 6: []}
    for ip in ips:
        addr = ipaddress.ip_interface(ip).ip
        out[addr.version].append(str(addr))
    return out


# --- iptables back end --------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str  # "nft" or "legacy"

    def tool(self, version: int, what: str) -> str:
        return f"{'ip6' if version == 6 else 'ip'}tables-{self.name}-{what}"

    def available(self) -> bool:
        return shutil.which(self.tool(4, "restore")) is not None

    def save(self, version: int) -> str:
        """The nat table as iptables-save prints it, '' when it does not exist. No `-t nat`:
        naming a legacy table instantiates it in the netns, for good."""
        proc = subprocess.run([self.tool(version, "save")], capture_output=True, text=True,
                              check=False)
        text = proc.stdout if proc.returncode == 0 else ""
        start = text.find("*nat\n")
        return "" if start < 0 else text[start:text.index("COMMIT\n", start) + 7]

    def restore(self, version: int, lines: list[str]) -> None:
        """Apply one nat batch atomically on top of what is there."""
        if not lines:
            return
        script = "\n".join(["*nat", *lines, "COMMIT", ""])
        proc = subprocess.run([self.tool(version, "restore"), "--noflush", "-w"], input=script,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CniError(Code.INTERNAL, f"{self.tool(version, 'restore')} failed",
                           f"{proc.stderr.strip()}\n{script}")


def detect_backend() -> Backend:
    """The back end that already holds ferry's node chain, else the one holding any rule,
    else the one `iptables` runs: rules in two back ends would both apply, in no clear order."""
    present = [Backend(n) for n in BACKENDS if Backend(n).available()]
    if not present:
        raise CniError(Code.INTERNAL, "no iptables-nft-restore or iptables-legacy-restore",
                       "install the iptables package")
    saved = {b: b.save(4) + b.save(6) for b in present}
    for b in present:
        if f":{NODE_CHAIN} " in saved[b]:
            return b
    for b in present:
        if "\n-A " in saved[b]:
            return b
    version = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=False)
    return Backend("legacy" if "legacy" in version.stdout else "nft") \
        if Backend("legacy") in present else present[0]


@dataclass
class NatTable:
    """One family's nat table as saved: the chains and, per chain, its rules as printed."""

    chains: set[str]
    rules: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str) -> NatTable:
        chains: set[str] = set()
        rules: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith(":"):
                chains.add(line[1:].split()[0])
            elif line.startswith("-A "):
                rules.setdefault(line.split()[1], []).append(line)
        return cls(chains, rules)

    def of_network(self, network: str) -> list[str]:
        """Every rule of a network, in any chain (its comment names it)."""
        tag = _quoted(f'name: "{network}"')[:-1] + " "  # the comment's start, quoted as saved
        return [r for rs in self.rules.values() for r in rs if tag in r]


def _delete(rule: str) -> str:
    return "-D" + rule[2:]


@contextlib.contextmanager
def _locked(conf: NetConf) -> Iterator[None]:
    path = Path(conf.state_dir) / "iptables.lock"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --- node level ---------------------------------------------------------------------------


def probe(conf: NetConf) -> tuple[bool, str]:
    """Can this node SNAT `conf`'s pods with iptables? (ok, why)"""
    if not any(Backend(n).available() for n in BACKENDS):
        return False, "no iptables-restore (nft or legacy) installed"
    try:
        addrs = discover(conf)
    except CniError as e:
        return False, f"no SNAT target: {e.msg}"
    return True, f"uplink {addrs.uplink}, node IP {addrs.ip4}"


def _record_path(conf: NetConf) -> Path:
    return Path(conf.state_dir) / conf.name / NODE_RECORD


def _node_record(conf: NetConf) -> dict[str, Any]:
    """createdTables: the nat tables ferry created (removed with the node chain, nft only);
    loaded: `ferryctl load` (or ferryd) set the node level up, which then stays when the
    last pod goes; without it, the node chain is the first ADD's and leaves with the last DEL."""
    path = _record_path(conf)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        rec = {}
    return {"createdTables": list(rec.get("createdTables", [])),
            "loaded": bool(rec.get("loaded"))}


def _write_node_record(conf: NetConf, rec: dict[str, Any]) -> None:
    path = _record_path(conf)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(rec))


def _ensure_node_chain(conf: NetConf, backend: Backend, version: int, table: NatTable,
                       lines: list[str]) -> None:
    """Add the node chain and its POSTROUTING jump to the batch when missing; remember whether
    ferry is creating the nat table itself (unload then removes it, nft only)."""
    if NODE_CHAIN in table.chains:
        return
    if not table.chains:
        rec = _node_record(conf)
        rec["createdTables"] = sorted({*rec["createdTables"], f"{backend.name}:{version}"})
        _write_node_record(conf, rec)
    lines += [f":{NODE_CHAIN} - [0:0]",
              f"-A POSTROUTING -m comment --comment {_quoted('ferry: pod SNAT')} "
              f"-j {NODE_CHAIN}"]


def _pod_lines(conf: NetConf, att: Attachment, version: int, ips: list[str],
               addrs: NodeAddrs, table: NatTable) -> list[str]:
    """The batch that (re)creates one attachment's chain for one family: declaring a chain
    in a --noflush restore creates or flushes it, so a re-attach replaces the rules."""
    chain = chain_name(conf.name, att.container_id, att.ifname)
    note = f"-m comment --comment {_quoted(comment(conf.name, att.container_id))}"
    host = 32 if version == 4 else 128
    lines = [_delete(r) for r in table.rules.get(NODE_CHAIN, []) if r.endswith(f"-j {chain}")]
    lines.append(f":{chain} - [0:0]")
    lines += [f"-A {NODE_CHAIN} -s {ip}/{host} {note} -j {chain}" for ip in ips]
    excluded = [n for n in [*conf.snat_exclude_cidrs, *conf.pod_cidrs] if n.version == version]
    for net in dict.fromkeys(excluded):
        lines.append(f"-A {chain} -d {net} {note} -j RETURN")
    node_ip = addrs.ip4 if version == 4 else addrs.ip6
    if node_ip is not None:
        low, high = conf.snat_ports
        ported = f"{node_ip}:{low}-{high}" if version == 4 else f"[{node_ip}]:{low}-{high}"
        for proto in ("tcp", "udp", "icmp" if version == 4 else "ipv6-icmp"):
            # ip6tables takes no id range for ICMPv6: keep the echo id (no randomization).
            to = f"{ported}{RANDOMIZE[conf.randomize_snat]}" if proto != "ipv6-icmp" \
                else str(node_ip)
            lines.append(f"-A {chain} -o {addrs.uplink} -p {proto} {note} "
                         f"-j SNAT --to-source {to}")
    return lines


def _remove_lines(table: NatTable, chain: str) -> list[str]:
    lines = [_delete(r) for r in table.rules.get(NODE_CHAIN, []) if r.endswith(f"-j {chain}")]
    if chain in table.chains:
        lines += [f"-F {chain}", f"-X {chain}"]
    return lines


class Iptables:
    name = "iptables"

    def load(self, conf: NetConf, cflags: tuple[str, ...] = ()) -> dict[str, Any]:
        addrs = discover(conf)
        with _locked(conf):
            backend = detect_backend()
            for version in (4, 6):
                lines: list[str] = []
                _ensure_node_chain(conf, backend, version,
                                   NatTable.parse(backend.save(version)), lines)
                backend.restore(version, lines)
            _write_node_record(conf, {**_node_record(conf), "loaded": True})
        synced = resync(self, conf)
        low, high = conf.snat_ports
        summary = {"network": conf.name, "dataplane": self.name, "backend": backend.name,
                   "chain": NODE_CHAIN, "uplink": addrs.uplink, "nodeIP": str(addrs.ip4),
                   "nodeIPv6": str(addrs.ip6 or ""), "snatPorts": f"{low}-{high}",
                   "synced": synced}
        log.info("iptables dataplane loaded", extra=summary)
        return summary

    def unload(self, conf: NetConf) -> dict[str, Any]:
        removed: list[str] = []
        for att in StateStore(conf.state_dir, conf.name).all():
            if att.pod_eni and detach_eni_routing(conf, att):
                removed.append(f"pod ENI {att.pod_eni['device']} of {att.container_id}")
        record = _record_path(conf)
        created = json.loads(record.read_text())["createdTables"] if record.exists() else []
        with _locked(conf):
            for backend in (Backend(n) for n in BACKENDS if Backend(n).available()):
                for version in (4, 6):
                    table = NatTable.parse(backend.save(version))
                    mine = table.of_network(conf.name)
                    chains = {r.split()[1] for r in mine} | {r.split()[-1] for r in mine
                                                            if r.split()[1] == NODE_CHAIN}
                    chains.discard(NODE_CHAIN)
                    lines = [_delete(r) for r in table.rules.get(NODE_CHAIN, []) if r in mine]
                    lines += [x for c in sorted(chains) for x in (f"-F {c}", f"-X {c}")]
                    left = [r for r in table.rules.get(NODE_CHAIN, []) if r not in mine]
                    if NODE_CHAIN in table.chains and not left:
                        lines += [_delete(r) for r in table.rules.get("POSTROUTING", [])
                                  if r.endswith(f"-j {NODE_CHAIN}")]
                        lines += [f"-X {NODE_CHAIN}"]
                    backend.restore(version, lines)
                    removed += [f"{backend.tool(version, 'save')[:-5]} {c}" for c in
                                sorted(chains | ({NODE_CHAIN} if NODE_CHAIN in table.chains
                                                 and not left else set()))]
                    if f"{backend.name}:{version}" in created and not left:
                        _drop_empty_nft_table(backend, version)
        record.unlink(missing_ok=True)
        return {"network": conf.name, "dataplane": self.name, "removed": removed}

    def expire(self, conf: NetConf, idle_seconds: float | None = None) -> int:
        """TCP flows past ESTABLISHED are the kernel's to time out (its per-state timeouts);
        the others go when idle past natTimeouts (or `idle_seconds` for all)."""
        t = conf.nat_timeouts
        limits = {"tcp": t.tcp_established, "udp": t.udp, "icmp": t.icmp}
        return _forget(row for row in _conntrack(conf)
                       if (row["proto"] != "tcp" or row["state"] == "ESTABLISHED")
                       and row["idleSeconds"] >= (limits[row["proto"]] if idle_seconds is None
                                                  else idle_seconds))

    def nat_stats(self, conf: NetConf) -> dict[str, Any]:
        """NAT pressure from conntrack: its NATed flows, and the inserts that failed (what a
        SNAT with no free port left comes to: the packet is dropped at confirm)."""
        rows = _conntrack(conf)
        failed = _conntrack_stat("insert_failed")
        return nat_summary(rows, capacity=_conntrack_max(),
                           alloc_failures={"ipv4": failed, "ipv6": 0})

    def inspect(self, conf: NetConf) -> Inspection:
        rules: dict[str, list[str]] = {}
        out = Inspection(network=conf.name, dataplane=self.name, rules=rules)
        try:
            backend = detect_backend()
        except CniError:
            return out
        out.backend = backend.name
        records = {ip.split("/")[0]: att for att in StateStore(conf.state_dir, conf.name).all()
                   for ip in att.ips}
        for version in (4, 6):
            table = NatTable.parse(backend.save(version))
            out.loaded = out.loaded or NODE_CHAIN in table.chains
            mine = table.of_network(conf.name)
            rules[f"v{version}"] = mine
            for r in table.rules.get(NODE_CHAIN, []):
                if r in mine:
                    ip = r.split()[r.split().index("-s") + 1].split("/")[0]
                    att = records.get(ip)
                    dev = att.host_veth if att else ""
                    out.pods.append(PodEntry(ip=ip, device=dev, ifindex=ifindex(dev) or 0,
                                             pod_eni=bool(att and att.pod_eni),
                                             chain=r.split()[-1]))
        pod_ips = {p.ip for p in out.pods}
        out.nat = [NatFlow(proto=row["proto"], pod=row["pod"], dst=row["dst"], nat=row["nat"],
                           idle_seconds=row["idleSeconds"])
                   for row in _conntrack(conf)
                   if row["pod"].rpartition(":")[0].strip("[]") in pod_ips]
        out.nat_stats = self.nat_stats(conf)
        with contextlib.suppress(CniError):
            addrs = discover(conf)
            out.uplink, out.node_ip = addrs.uplink, str(addrs.ip4)
            out.node_ip6 = str(addrs.ip6 or "")
        for att in {id(a): a for a in records.values()}.values():
            if att.pod_eni:
                out.redirects += eni_routing_rows(att)
        return out

    def attach(self, conf: NetConf, att: Attachment) -> None:
        with Undo() as undo:  # the engine undoes only attaches that returned
            undo.push(lambda: self.detach(conf, att))
            addrs = discover(conf)
            with _locked(conf):
                backend = detect_backend()
                for version, ips in _split_ips(att.ips).items():
                    if not ips:
                        continue
                    table = NatTable.parse(backend.save(version))
                    lines: list[str] = []
                    _ensure_node_chain(conf, backend, version, table, lines)
                    backend.restore(version, lines + _pod_lines(conf, att, version, ips,
                                                                addrs, table))
            if att.pod_eni:
                attach_eni_routing(conf, att)

    def detach(self, conf: NetConf, att: Attachment) -> None:
        """Remove the pod's jump(s) and chain in both families and back ends, and its policy
        routing; whatever is already gone is skipped."""
        if att.pod_eni:
            detach_eni_routing(conf, att)
        try:
            Path(conf.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            return  # a stateDir that cannot exist: no ADD of this config made anything
        chain = chain_name(conf.name, att.container_id, att.ifname)
        with _locked(conf):
            rec = _node_record(conf)
            in_use = False
            for backend in (Backend(n) for n in BACKENDS if Backend(n).available()):
                for version in (4, 6):
                    table = NatTable.parse(backend.save(version))
                    lines = _remove_lines(table, chain)
                    left = [r for r in table.rules.get(NODE_CHAIN, [])
                            if not r.endswith(f"-j {chain}")]
                    last = NODE_CHAIN in table.chains and not left and not rec["loaded"]
                    if last:  # the last pod of a node level no load set up: it goes too
                        lines += [_delete(r) for r in table.rules.get("POSTROUTING", [])
                                  if r.endswith(f"-j {NODE_CHAIN}")] + [f"-X {NODE_CHAIN}"]
                    backend.restore(version, lines)
                    if last and f"{backend.name}:{version}" in rec["createdTables"]:
                        _drop_empty_nft_table(backend, version)
                    in_use = in_use or bool(left) or (NODE_CHAIN in table.chains and not last)
            if not in_use and not rec["loaded"]:
                _record_path(conf).unlink(missing_ok=True)
        # The pod's NAT flows go too, so that its IP's next owner starts clean (as eBPF's).
        ips = {str(ipaddress.ip_interface(ip).ip) for ip in att.ips}
        _forget(row for row in _conntrack(conf)
                if row["pod"].rpartition(":")[0].strip("[]") in ips)


def _drop_empty_nft_table(backend: Backend, version: int) -> None:
    """Remove the nat table ferry's load created, once nothing is left in it, so that a node
    after unload is what it was before load (legacy tables cannot be removed per netns)."""
    if backend.name != "nft":
        return
    if shutil.which("nft") is None:
        log.warning("nat table left in place: removing a table needs nft (Debian: nftables)",
                    extra={"family": version})
        return
    if "\n-A " in backend.save(version) or f":{PREFIX}" in backend.save(version):
        return
    family = "ip" if version == 4 else "ip6"
    subprocess.run(["nft", "delete", "table", family, "nat"], capture_output=True, check=False)



# --- conntrack (the NAT state of this dataplane) ------------------------------------------

_TIMEOUTS = {"tcp": "nf_conntrack_tcp_timeout_", "udp": "nf_conntrack_udp_timeout",
             "icmp": "nf_conntrack_icmp_timeout", "icmpv6": "nf_conntrack_icmpv6_timeout"}


def _timeout(proto: str, words: list[str]) -> int:
    """The full timeout of the entry's current state (TCP: per state, UDP: stream or not)."""
    name = _TIMEOUTS[proto]
    if proto == "tcp":
        name += words[5].lower()
    elif proto == "udp" and "[ASSURED]" in words:
        name += "_stream"
    try:
        return int(Path(f"/proc/sys/net/netfilter/{name}").read_text())
    except (OSError, ValueError):
        return 0


def _conntrack(conf: NetConf) -> list[dict[str, Any]]:
    """SNATed flows from /proc/net/nf_conntrack (this netns): the original tuple's source is
    the pod, the reply's destination the NAT address. Idle time is estimated as the state's
    full timeout minus what is left of it (the kernel keeps no last-seen time)."""
    try:
        text = Path("/proc/net/nf_conntrack").read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        words = line.split()
        proto = words[2]
        if proto not in _TIMEOUTS:
            continue
        kv = [w.split("=", 1) for w in words if "=" in w]
        orig: dict[str, Any] = {}
        reply: dict[str, Any] = {}
        for k, v in kv:
            target = orig if k not in orig else reply
            if k in target:
                continue
            target[k] = v
        src, reply_dst = ipaddress.ip_address(orig["src"]), ipaddress.ip_address(reply["dst"])
        if src == reply_dst:
            continue  # not NATed
        ident = "id" if proto.startswith("icmp") else "sport"
        port, nat_port = int(orig[ident]), int(reply["dport" if ident == "sport" else "id"])
        dport = int(orig.get("dport", 0))

        def ep(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, p: int) -> str:
            return f"{ip}:{p}" if ip.version == 4 else f"[{ip}]:{p}"

        remaining = int(words[4])
        full = _timeout(proto, words)
        tup = {"family": socket.AF_INET if src.version == 4 else socket.AF_INET6,
               "saddr": str(src), "daddr": str(ipaddress.ip_address(orig["dst"])),
               "proto": int(words[3])}
        if ident == "id":
            tup.update(icmp_id=port, icmp_type=int(orig["type"]), icmp_code=int(orig["code"]))
        else:
            tup.update(sport=port, dport=dport)
        rows.append({"proto": "icmp" if proto.startswith("icmp") else proto,
                     "state": words[5] if proto == "tcp" else "",
                     "pod": ep(src, port), "dst": ep(ipaddress.ip_address(orig["dst"]), dport),
                     "nat": ep(reply_dst, nat_port),
                     "idleSeconds": max(0, full - remaining), "tuple": tup})
    return rows


def _conntrack_stat(field: str) -> int:
    """A counter of /proc/net/stat/nf_conntrack (this netns), summed over the CPUs."""
    try:
        head, *cpus = Path("/proc/net/stat/nf_conntrack").read_text().split("\n")
    except OSError:
        return 0
    col = head.split().index(field) if field in head.split() else -1
    return sum(int(line.split()[col], 16) for line in cpus if line.strip()) if col >= 0 else 0


def _conntrack_max() -> int:
    try:
        return int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
    except (OSError, ValueError):
        return 0


def _forget(rows: Iterable[dict[str, Any]]) -> int:
    """Delete the conntrack entries of `rows` (from _conntrack) over netlink; how many went.
    One socket per family: ctnetlink takes the family from the socket, not the tuple."""
    by_family: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_family.setdefault(row["tuple"]["family"], []).append(row["tuple"])
    if not by_family:
        return 0  # the common DEL: no flow to forget, no pyroute2 import (~0.26 s standalone)
    # ctnetlink: node-level NAT state, the one netlink family plugin/rtnl.py does not speak.
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    gone = 0
    for family, tuples in by_family.items():
        with Conntrack(nfgen_family=family) as ct:
            for t in tuples:
                with contextlib.suppress(NetlinkError):  # expired meanwhile
                    ct.entry("del", tuple_orig=NFCTAttrTuple(**t))
                    gone += 1
    return gone
