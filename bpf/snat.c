/* Egress SNAT for pods (IPv4): ferry_snat_eg on the uplink's tc egress, ferry_snat_in on its
 * tc ingress. The design follows Cilium's bpf/lib/nat.h: a 5-tuple LRU map per direction, the
 * reverse entry inserted with BPF_NOEXIST as the collision check, the original port kept when
 * it is inside the range, otherwise a random one, then up to NAT_RETRIES tries (random, +1...).
 * A reverse lookup miss goes to the stack: it is the node's own traffic. */
#include "common.h"

static __always_inline __u16 l4_csum_off(__u8 proto, __u32 l4_off)
{
    if (proto == IPPROTO_TCP)
        return l4_off + offsetof(struct tcphdr, check);
    if (proto == IPPROTO_UDP)
        return l4_off + offsetof(struct udphdr, check);
    return l4_off + offsetof(struct icmphdr, checksum);
}

/* Rewrite one address (src or dst) and its port/echo id, fixing the IP and L4 checksums. */
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt4 *p, int src,
                                   __u32 new_addr, __u16 new_port)
{
    __u32 old_addr = src ? p->saddr : p->daddr;
    __u16 old_port = src ? p->sport : p->dport;
    __u32 csum_off = l4_csum_off(p->proto, p->l4_off);
    __u32 port_off;
    __u64 flags = 0;

    if (p->proto == IPPROTO_ICMP) {
        port_off = p->l4_off + offsetof(struct icmphdr, un.echo.id);
    } else {
        port_off = p->l4_off + (src ? 0 : 2);
        /* UDP: a zero checksum means "none" and must stay zero; a result of zero is sent
         * as 0xffff (BPF_F_MARK_MANGLED_0). */
        flags = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
        if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
                                flags | BPF_F_PSEUDO_HDR | 4) < 0)
            return -1;
    }
    if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, flags | 2) < 0)
        return -1;
    if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) < 0)
        return -1;
    if (bpf_skb_store_bytes(skb, src ? IP_SRC_OFF : IP_DST_OFF, &new_addr, 4, 0) < 0)
        return -1;
    if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
        return -1;
    return 0;
}

static __always_inline int snat_proto(struct pkt4 *p)
{
    return p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP ||
           (p->proto == IPPROTO_ICMP && p->icmp_type == ICMP_ECHO);
}

/* Pick the external port for a new flow and claim it by inserting the reverse entry. */
static __always_inline int nat_alloc(struct nat_config *cfg, struct pkt4 *p,
                                     struct nat_entry4 *out)
{
    struct nat_tuple4 rk = {};
    struct nat_entry4 rv = {};
    __u32 min = cfg->port_min, max = cfg->port_max;
    __u32 range = max - min + 1;
    __u32 port = bpf_ntohs(p->sport);
    __u64 now = bpf_ktime_get_ns();
    int i;

    if (port < min || port > max)
        port = min + bpf_get_prandom_u32() % range;
    rk.saddr = p->daddr;
    rk.daddr = cfg->node_ip;
    rk.proto = p->proto;
    if (p->proto != IPPROTO_ICMP)
        rk.sport = p->dport;
    rv.addr = p->saddr;
    rv.port = p->sport;
    rv.created = rv.last_used = now;
    for (i = 0; i < NAT_RETRIES; i++) {
        rk.dport = bpf_htons((__u16)port);
        if (ferry_nat_rev.insert(&rk, &rv) == 0) {
            out->addr = cfg->node_ip;
            out->port = rk.dport;
            out->created = out->last_used = now;
            return 0;
        }
        if (i == 0)
            port = min + bpf_get_prandom_u32() % range;
        else
            port = port >= max ? min : port + 1;
    }
    return -1;
}

int ferry_snat_eg(struct __sk_buff *skb)
{
    struct pkt4 p = {};
    struct ip4_key ek = {};
    struct lpm4_key lk = {};
    struct nat_tuple4 fk = {};
    struct nat_entry4 fresh = {};
    struct nat_entry4 *e;
    struct endpoint *ep;
    struct nat_config *cfg;

    if (parse4(skb, &p) < 0 || !snat_proto(&p))
        return TC_ACT_OK;
    if (p.proto != IPPROTO_ICMP && !p.sport)
        return TC_ACT_OK; /* a non-first fragment */
    ek.addr = p.saddr;
    ep = ferry_endpoints.lookup(&ek);
    if (!ep || (ep->flags & EP_F_POD_ENI))
        return TC_ACT_OK;
    lk.prefixlen = 32;
    lk.addr = p.daddr;
    if (ferry_snat_excl.lookup(&lk))
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!cfg || !cfg->node_ip || cfg->port_max < cfg->port_min)
        return TC_ACT_OK;

    fk.saddr = p.saddr;
    fk.daddr = p.daddr;
    fk.sport = p.sport;
    fk.dport = p.dport;
    fk.proto = p.proto;
    e = ferry_nat_fwd.lookup(&fk);
    if (e) {
        e->last_used = bpf_ktime_get_ns();
    } else {
        if (nat_alloc(cfg, &p, &fresh) < 0)
            return TC_ACT_SHOT; /* the range is exhausted for this destination */
        ferry_nat_fwd.update(&fk, &fresh);
        e = &fresh;
    }
    if (rewrite(skb, &p, 1, e->addr, e->port) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

int ferry_snat_in(struct __sk_buff *skb)
{
    struct pkt4 p = {};
    struct nat_tuple4 rk = {};
    struct nat_entry4 *e;
    struct nat_config *cfg;
    __u32 port;

    if (parse4(skb, &p) < 0)
        return TC_ACT_OK;
    if (p.proto == IPPROTO_ICMP && p.icmp_type != ICMP_ECHOREPLY)
        return TC_ACT_OK;
    if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP && p.proto != IPPROTO_ICMP)
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!cfg || p.daddr != cfg->node_ip)
        return TC_ACT_OK;
    port = bpf_ntohs(p.dport);
    if (port < cfg->port_min || port > cfg->port_max)
        return TC_ACT_OK; /* outside the SNAT range: the node's own traffic */
    rk.saddr = p.saddr;
    rk.daddr = p.daddr;
    rk.sport = p.sport;
    rk.dport = p.dport;
    rk.proto = p.proto;
    e = ferry_nat_rev.lookup(&rk);
    if (!e)
        return TC_ACT_OK;
    e->last_used = bpf_ktime_get_ns();
    if (rewrite(skb, &p, 0, e->addr, e->port) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}
