/* Pod-ENI redirection (IPv4): a pod that owns an uplink device sends and receives through it,
 * bypassing the node's routing (and its SNAT).
 *  ferry_eni_eg, on the pod's host veth tc ingress (what the pod sends): everything but
 *    node-local destinations goes out of the ENI with bpf_redirect_neigh to the ENI gateway
 *    (the kernel resolves its MAC, as the routing would have).
 *  ferry_eni_in, on the ENI's tc ingress: packets for the pod get the pod's MACs and enter
 *    its namespace directly with bpf_redirect_peer (no second pass through the host veth). */
#include "common.h"

FERRY_PROG(ferry_eni_eg)
{
    struct pkt4 p = {};
    struct ip4_key k = {};
    struct redirect *r;
    struct nat_config *cfg;
    struct bpf_redir_neigh nh = {};

    if (parse4(skb, &p) < 0)
        return TC_ACT_OK;
    k.addr = p.saddr;
    r = map_lookup(ferry_redirect, &k);
    if (!r)
        return TC_ACT_OK;
    k.addr = p.daddr;
    if (map_lookup(ferry_endpoints, &k))
        return TC_ACT_OK; /* another pod of this node: plain routing */
    cfg = nat_cfg();
    if (cfg && p.daddr == cfg->node_ip)
        return TC_ACT_OK;
    if (dec_ttl(skb, p.ttl) < 0)
        return TC_ACT_OK; /* let the stack send the ICMP time exceeded */
    if (!r->gateway)
        return redirect_neigh(r->eni_ifindex, NULL, 0, 0);
    nh.nh_family = AF_INET;
    nh.ipv4_nh = r->gateway;
    return redirect_neigh(r->eni_ifindex, &nh, sizeof(nh), 0);
}

FERRY_PROG(ferry_eni_in)
{
    struct pkt4 p = {};
    struct ip4_key k = {};
    struct redirect *r;

    if (parse4(skb, &p) < 0)
        return TC_ACT_OK;
    k.addr = p.daddr;
    r = map_lookup(ferry_redirect, &k);
    if (!r || r->eni_ifindex != skb->ingress_ifindex)
        return TC_ACT_OK;
    if (dec_ttl(skb, p.ttl) < 0)
        return TC_ACT_OK;
    if (bpf_skb_store_bytes(skb, 0, r->pod_mac, 6, 0) < 0 ||
        bpf_skb_store_bytes(skb, 6, r->host_mac, 6, 0) < 0)
        return TC_ACT_SHOT;
    return bpf_redirect_peer(r->host_ifindex, 0);
}
