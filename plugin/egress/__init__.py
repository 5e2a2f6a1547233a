"""ferry-egress: the chained plugin that gives a pod the address family its main plugin did not
(egress-v4 for IPv6-only pods, egress-v6 for IPv4-only pods), as the AWS VPC CNI's egress-cni.

ADD after the main plugin (ferry, or any other, e.g. the reference ptp): one IP from a
host-local range only the node sees (169.254.172.0/22, fd00::ac:00/118), a second veth into the
pod (v4if0 / v6if0) wired point-to-point as ferry's eth0, the other family's default route via
it, and SNAT of that IP to the node's address by the network's dataplane (ebpf or iptables).

Importing this package (and plugin.egress.cli) loads the standard library only: the launcher
runs Python with -I -S, as ferry's.
"""
