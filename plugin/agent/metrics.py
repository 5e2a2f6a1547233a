"""Prometheus metrics of ferryd: request counts and latencies, errors by code, IPAM usage, and
NAT pressure (flows per family, capacity, the busiest destination's ports, allocation failures,
translations and drops, read from the dataplane at scrape time)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from plugin.protocol import COMMANDS

if TYPE_CHECKING:
    from plugin.agent.daemon import Agent

REGISTRY = CollectorRegistry()
REQUESTS = Counter("ferry_cni_requests_total", "CNI requests served by ferryd",
                   ["command", "result"], registry=REGISTRY)
ERRORS = Counter("ferry_cni_errors_total", "CNI errors returned, by CNI error code",
                 ["command", "code"], registry=REGISTRY)
LATENCY = Histogram("ferry_cni_request_seconds", "Time to serve a CNI request in ferryd",
                    ["command"], registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 5.0))


def observe(command: str, exit_code: int, out: bytes, seconds: float) -> None:
    if command not in COMMANDS:
        command = "other"  # a label per made-up command would grow without bound
    LATENCY.labels(command).observe(seconds)
    REQUESTS.labels(command, "ok" if exit_code == 0 else "error").inc()
    if exit_code:
        try:
            code = str(int(json.loads(out).get("code")))
        except (ValueError, TypeError, AttributeError):
            code = "unknown"
        ERRORS.labels(command, code).inc()


class PoolCollector(Collector):
    """IPs in use and free per range set, read from the store at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from plugin import ipam

        used = GaugeMetricFamily("ferry_ipam_ips_used", "Reserved IPs", labels=["pool"])
        free = GaugeMetricFamily("ferry_ipam_ips_free", "Free IPs", labels=["pool"])
        for pool in ipam.pools(self.agent.conf):
            used.add_metric([pool.subnets], pool.used)
            free.add_metric([pool.subnets], pool.free)
        yield used
        yield free


class RecordsCollector(Collector):
    """Damaged attachment records set aside (quarantined, never acted on), at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from plugin.ctl import records

        yield GaugeMetricFamily("ferry_state_quarantined_records",
                                "Damaged attachment records quarantined",
                                value=len(records(self.agent.conf)["quarantined"]))


class NatCollector(Collector):
    """The dataplane's nat_stats at scrape time: eBPF maps and per-CPU counters, or conntrack.
    A dataplane that cannot be read (unloaded meanwhile) yields nothing rather than failing
    the whole scrape."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            stats = self.agent.nat_stats()
        except OSError:
            return
        entries = GaugeMetricFamily("ferry_nat_entries", "NAT flows held, per family",
                                    labels=["family"])
        dest = GaugeMetricFamily("ferry_nat_dest_ports_max",
                                 "Most external ports in use towards one destination "
                                 "(address, port, protocol)", labels=["family"])
        fails = CounterMetricFamily("ferry_nat_alloc_failures",
                                    "New flows dropped for want of a free external port",
                                    labels=["family"])
        for family, n in stats["entries"].items():
            entries.add_metric([family], n)
            dest.add_metric([family], stats["destPortsMax"][family])
            fails.add_metric([family], stats["allocFailures"][family])
        yield entries
        yield dest
        yield fails
        yield GaugeMetricFamily("ferry_nat_max_entries", "Size of each NAT map (per family "
                                "and direction; iptables: nf_conntrack_max)",
                                value=stats["maxEntries"])
        xlate = CounterMetricFamily("ferry_nat_translated_packets",
                                    "Packets rewritten by the eBPF SNAT",
                                    labels=["direction", "family"])
        for key, n in stats["translations"].items():
            direction, family = key.split("_")
            xlate.add_metric(["egress" if direction == "eg" else "ingress", family], n)
        yield xlate
        drops = CounterMetricFamily("ferry_nat_drops", "Packets the eBPF SNAT dropped",
                                    labels=["reason"])
        for reason, n in stats["drops"].items():
            drops.add_metric([reason], n)
        yield drops
        counts = stats.get("counters", {})  # eBPF only: the per-CPU counters by name
        if counts:
            tries = CounterMetricFamily("ferry_nat_port_refusals",
                                        "Ports an allocation try could not take: open (its "
                                        "flow is open), closing (closed < 0.5 s ago), refused "
                                        "(the map refused the insert)", labels=["reason"])
            for reason in ("open", "closing", "refused"):
                tries.add_metric([reason], counts.get(f"try_{reason}", 0))
            yield tries
            reused = CounterMetricFamily("ferry_nat_ports_reused",
                                         "Ports taken over from closed TCP flows: after the "
                                         "0.5 s reuse delay, or early (a destination's new "
                                         "flows outran it)", labels=["when"])
            reused.add_metric(["closed"], counts.get("reused_closed", 0))
            reused.add_metric(["early"], counts.get("reused_early", 0))
            yield reused


def serve(agent: Agent, host: str, port: int) -> None:
    REGISTRY.register(PoolCollector(agent))
    REGISTRY.register(NatCollector(agent))
    REGISTRY.register(RecordsCollector(agent))
    if agent.cluster is not None:
        from plugin.cluster.ops import ClusterCollector

        REGISTRY.register(ClusterCollector(agent.cluster))  # type: ignore[arg-type]
    start_http_server(port, addr=host, registry=REGISTRY)
