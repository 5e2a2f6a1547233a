"""ferryctl: node-level control of the network's dataplane (ebpf, or the fallback).

  ferryctl load    --config FILE [--cflag=-DX=1]   load (or reuse the pins), attach, re-sync
  ferryctl unload  --config FILE                   detach and remove the pins
  ferryctl inspect --config FILE [--json]         pods, NAT entries, redirects, filters
  ferryctl gc      --config FILE [--idle SECONDS] expire idle NAT entries (natTimeouts)
  ferryctl records --config FILE [--json]         attachment records, and the damaged ones
                                                  quarantined (never acted on) with why
  ferryctl nodes   --config FILE [--json]         cluster mode: nodes, IPs, blocks, lease age
  ferryctl endpoints --config FILE [--json]       cluster mode: workload endpoints, all nodes
  ferryctl node remove NAME --config FILE         cluster mode: release a dead node's blocks
                                                  and endpoints

FILE is the network's .conf or .conflist (its first ferry* entry: `ferry`, or `ferry-egress`
after another main plugin). Run it in the node's network namespace: the uplink and the pods'
host veths are looked up there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from plugin.conffile import load_file
from plugin.config import NetConf
from plugin.protocol import CniError
from plugin.text import table

if TYPE_CHECKING:
    from plugin.dataplane.base import Inspection


def read_config(path: str) -> NetConf:
    return load_file(path)[0]


def render(info: Inspection) -> str:
    if not info.loaded:
        return f"network {info.network}: not loaded (no pins under {info.pins})\n"
    head = (f"network {info.network}  pins {info.pins or '-'}  build {info.hash or '-'}  "
            f"uplink {info.uplink or '?'}  nodeIP {info.node_ip or '?'}"
            f"  nodeIPv6 {info.node_ip6 or '-'}\n")
    if info.loader is not None:  # the eBPF dataplane: which loader pinned it, what it lacks
        lacking = [f for f, ok in (info.features or {}).items() if not ok]
        head += (f"loader {info.loader}  kernel lacks {', '.join(lacking) or 'nothing'}"
                 f"  pod ENIs: {info.pod_eni_mode or 'ebpf'}\n")
    filters = "".join(f"  {dev}: ingress {f['ingress']} egress {f['egress']}\n"
                      for dev, f in info.filters.items())
    rows = info.to_json()
    return (head + "filters:\n" + filters
            + table("pods", rows["pods"], ["ip", "device", "ifindex", "podENI"])
            + table("nat", rows["nat"], ["proto", "pod", "dst", "nat", "idleSeconds"])
            + table("redirects", rows["redirects"],
                     ["ip", "hostVeth", "eni", "gateway", "hostMAC", "podMAC"])
            + render_nat_stats(info.nat_stats))


def render_nat_stats(stats: dict[str, Any] | None) -> str:
    """NAT pressure: flows against the map size, the busiest destination, failures."""
    if not stats:
        return ""
    fams = ("ipv4", "ipv6")
    lines = ["nat pressure:",
             "  flows " + "  ".join(f"{f} {stats['entries'][f]}" for f in fams)
             + f"  (max {stats['maxEntries']} per map)",
             "  busiest destination: " + "  ".join(f"{f} {stats['destPortsMax'][f]} ports"
                                                   for f in fams),
             "  allocation failures: " + "  ".join(f"{f} {stats['allocFailures'][f]}"
                                                   for f in fams)]
    if stats["translations"]:
        lines.append("  translated packets: " + "  ".join(
            f"{k} {v}" for k, v in stats["translations"].items()))
    if stats["drops"]:
        lines.append("  drops: " + "  ".join(f"{k} {v}" for k, v in stats["drops"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ferryctl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("load", "unload", "inspect", "gc", "records"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True)
        p.add_argument("--json", action="store_true")
        if name == "load":
            p.add_argument("--cflag", action="append", default=[],
                           help="extra compile flag (part of the build hash)")
        if name == "gc":
            p.add_argument("--idle", type=float, default=None,
                           help="expire every NAT flow idle this many seconds (default: "
                           "the config's natTimeouts)")
    from plugin.cluster import ops as cluster_ops

    cluster_ops.add_parsers(sub)
    args = ap.parse_args(argv)
    from plugin import log as logging_setup  # after argparse: `ferryctl -h` stays cheap

    if args.cmd in cluster_ops.COMMANDS:
        try:
            conf = read_config(args.config)
        except CniError as e:
            print(f"ferryctl {args.cmd}: {e}", file=sys.stderr)
            return 1
        logging_setup.setup(conf.log)
        return cluster_ops.main(args, conf)
    from plugin.dataplane import mode

    try:
        conf = read_config(args.config)
        logging_setup.setup(conf.log)
        if args.cmd == "records":
            return _records(conf, args.json)
        dataplane = mode.choose(conf, loading=args.cmd == "load")
        if args.cmd == "load":
            out = mode.load(conf, tuple(args.cflag), dataplane)[1]
        elif args.cmd == "unload":
            out = dataplane.unload(conf)
        elif args.cmd == "gc":
            out = {"network": conf.name, "expired": dataplane.expire(conf, args.idle)}
        else:
            info = dataplane.inspect(conf)
            if not args.json:
                sys.stdout.write(render(info))
                return 0
            out = info.to_json()
    except CniError as e:
        print(f"ferryctl {args.cmd}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # one line here, the traceback in the log file
        logging_setup.log_unexpected(e, f"ferryctl {args.cmd} failed")
        print(f"ferryctl {args.cmd}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


def records(conf: NetConf) -> dict[str, Any]:
    """The network's attachment records and its quarantined (damaged) ones; moves nothing."""
    from plugin.state import StateStore

    store = StateStore(conf.state_dir, conf.name, conf.veth_prefix, move_damaged=False)
    return {"network": conf.name, "dir": str(store.dir),
            "attachments": [f"{a.container_id}/{a.ifname}" for a in store.all()],
            "quarantined": [{"file": name, "reason": why} for name, why in store.quarantined()]}


def _records(conf: NetConf, as_json: bool) -> int:
    out = records(conf)
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"network {out['network']}  records {out['dir']}  "
          f"attachments {len(out['attachments'])}")
    sys.stdout.write(table("quarantined", out["quarantined"], ["file", "reason"]))
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
