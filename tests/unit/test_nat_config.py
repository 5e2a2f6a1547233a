"""The NAT config fields (randomizeSNAT, natMaxEntries, natTimeouts), the iptables flags they
map to, and the NAT pressure summary both dataplanes report."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.config import NetConf, parse
from plugin.dataplane.base import nat_summary
from plugin.dataplane.iptables import RANDOMIZE
from plugin.protocol import CniError


def conf(**kw: Any) -> NetConf:
    return parse(NetConf, {"cniVersion": "1.0.0", "name": "n", "type": "ferry",
                           "ipam": {"type": "host-local", "subnet": "10.20.0.0/24"}, **kw})


def test_defaults() -> None:
    c = conf()
    assert c.randomize_snat == "prng" and c.nat_max_entries == 65536
    assert c.tc_attach == "clsact"  # listed by `tc filter show`; tcx is asked for
    t = c.nat_timeouts
    assert (t.tcp_established, t.tcp_closed, t.udp, t.icmp) == (21600, 10, 120, 30)


def test_fields_parse_and_reject() -> None:
    c = conf(randomizeSNAT="none", natMaxEntries=4096, natTimeouts={"udp": 5}, tcAttach="tcx")
    assert c.randomize_snat == "none" and c.nat_max_entries == 4096 and c.tc_attach == "tcx"
    assert c.nat_timeouts.udp == 5 and c.nat_timeouts.tcp_closed == 10
    for bad in ({"randomizeSNAT": "random"}, {"natMaxEntries": 10},
                {"natTimeouts": {"icmp": 0}}, {"tcAttach": "xdp"}):
        with pytest.raises(CniError) as e:
            conf(**bad)
        assert e.value.code == 7 and next(iter(bad)) in e.value.msg


def test_iptables_flags_are_the_aws_ones() -> None:
    assert RANDOMIZE == {"prng": " --random-fully", "hashrandom": " --random", "none": ""}


def test_summary_counts_the_busiest_destination_per_family() -> None:
    rows = [{"proto": "tcp", "dst": "10.0.0.1:80"}] * 3 + [
        {"proto": "udp", "dst": "10.0.0.1:80"}, {"proto": "tcp", "dst": "10.0.0.2:80"},
        {"proto": "tcp", "dst": "[fd00::1]:443"}]
    s = nat_summary(rows, capacity=100)
    assert s["entries"] == {"ipv4": 5, "ipv6": 1}
    assert s["destPortsMax"] == {"ipv4": 3, "ipv6": 1}
    assert s["maxEntries"] == 100 and s["allocFailures"] == {"ipv4": 0, "ipv6": 0}
