"""Dataplanes: what happens to a pod's traffic beyond routing (SNAT, pod-ENI redirection).

base.py        the interface, the typed Inspection every mode returns, routing-only mode
mode.py        the choice of a network's dataplane (once per process), fallback, mode switch
ebpf.py        tc programs (bpf/*.c) pinned in bpffs
iptables.py    nat chains per attachment, conntrack
eni_routing.py pod-ENI policy routing (iptables mode, and eBPF without the redirect helpers)
node.py        node discovery: uplink, node IPv4/IPv6
tc.py          clsact and cls_bpf filters over plugin/rtnl.py

This file imports nothing, so that importing a submodule never imports its siblings.
"""
