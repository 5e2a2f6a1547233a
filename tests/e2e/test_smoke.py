from __future__ import annotations

from harness import Node, ping, tcp_roundtrip


def test_two_pods_dual_stack_traffic(node: Node) -> None:
    a, b = node.add_pod("web-a"), node.add_pod("web-b")
    assert ping(a.ns, b.ips(4)[0]) and ping(a.ns, b.ips(6)[0])
    assert ping(a.ns, node.node_ip4) and ping(a.ns, node.node_ip6)
    # Without SNAT the external host sees the pod's own address.
    assert tcp_roundtrip(a.ns, node.ext, node.ext_ip4) == a.ips(4)[0]
    assert tcp_roundtrip(b.ns, node.ext, node.ext_ip6) == b.ips(6)[0]
