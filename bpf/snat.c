/* Egress SNAT for pods, IPv4 and IPv6: ferry_snat_eg on the uplink's tc egress, ferry_snat_in on
 * its tc ingress; each dispatches on the family. The design follows Cilium's bpf/lib/nat.h: a
 * 5-tuple LRU map per direction (and per family), the reverse entry inserted with BPF_NOEXIST
 * as the collision check, the original port kept when it is inside the range, otherwise a
 * random one, then up to NAT_RETRIES tries (random, +1...). A reverse lookup miss goes to the
 * stack: it is the node's own traffic.
 * The families differ only in their addresses (maps, L3 checksum); ports, echo ids, the L4
 * checksum of the port and the port choice are shared helpers on struct l4. */
#include "common.h"

/* bpf_l4_csum_replace: for IPv6, tell the kernel there is no L3 checksum to compensate a
 * CHECKSUM_COMPLETE skb->csum (6.16+, backported); older kernels refuse it with -EINVAL. */
#define FERRY_F_IPV6 (1ULL << 7)
#define EINVAL 22

static __always_inline __u32 l4_csum_off(struct l4 *l4)
{
    if (l4->proto == IPPROTO_TCP)
        return l4->off + offsetof(struct tcphdr, check);
    if (l4->proto == IPPROTO_UDP)
        return l4->off + offsetof(struct udphdr, check);
    return l4->off + offsetof(struct icmphdr, checksum); /* ICMPv6: the same offset */
}

/* UDP: a zero checksum means "none" (IPv4) and must stay zero; a result of zero is sent as
 * 0xffff (BPF_F_MARK_MANGLED_0). */
static __always_inline __u64 l4_csum_flags(struct l4 *l4)
{
    return l4->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrite the source port (or echo id of a request) or the destination port (or echo id of a
 * reply), with its L4 checksum; the address part is the family's. */
static __always_inline int rewrite_port(struct __sk_buff *skb, struct l4 *l4, int src,
                                        __u16 new_port)
{
    __u16 old_port = src ? l4->sport : l4->dport;
    __u32 off = l4->kind == L4_PORTS ? l4->off + (src ? 0 : 2)
                                     : l4->off + offsetof(struct icmphdr, un.echo.id);

    if (bpf_l4_csum_replace(skb, l4_csum_off(l4), old_port, new_port,
                            l4_csum_flags(l4) | 2) < 0)
        return -1;
    return bpf_skb_store_bytes(skb, off, &new_port, 2, 0) < 0 ? -1 : 0;
}

static __always_inline int snat_kind(struct l4 *l4)
{
    /* sport 0: a TCP/UDP packet with no port to keep (never a real flow) */
    return (l4->kind == L4_PORTS && l4->sport) || l4->kind == L4_ECHO_REQ;
}

static __always_inline int rnat_kind(struct l4 *l4)
{
    return l4->kind == L4_PORTS || l4->kind == L4_ECHO_REPLY;
}

/* The port allocation of nat_alloc4/6: the first candidate and the next one after try i. */
static __always_inline __u32 port_first(struct nat_config *cfg, __u16 sport)
{
    __u32 port = bpf_ntohs(sport);
    if (port < cfg->port_min || port > cfg->port_max)
        port = cfg->port_min + bpf_get_prandom_u32() % (cfg->port_max - cfg->port_min + 1);
    return port;
}

static __always_inline __u32 port_next(struct nat_config *cfg, __u32 port, int i)
{
    if (i == 0)
        return cfg->port_min + bpf_get_prandom_u32() % (cfg->port_max - cfg->port_min + 1);
    /* The next port, wrapping to port_min: a modulo rather than a branch, which leaves the
     * verifier one path per retry instead of two (half the instructions it walks). */
    return cfg->port_min + (port + 1 - cfg->port_min) % (cfg->port_max - cfg->port_min + 1);
}

static __always_inline int snat_cfg_ok(struct nat_config *cfg)
{
    return cfg && cfg->port_max >= cfg->port_min;
}

/* Reverse lookups are only for replies to the node IP inside the SNAT range; the rest (the
 * node's own traffic) goes to the stack. */
static __always_inline int port_in_range(struct nat_config *cfg, __u16 dport)
{
    __u32 port = bpf_ntohs(dport);
    return port >= cfg->port_min && port <= cfg->port_max;
}

/* ---- IPv4 ---------------------------------------------------------------------------- */

/* Rewrite one address (src or dst) and its port/echo id, fixing the IP and L4 checksums. */
static __always_inline int rewrite4(struct __sk_buff *skb, struct pkt4 *p, int src,
                                    __u32 new_addr, __u16 new_port)
{
    __u32 old_addr = src ? p->saddr : p->daddr;

    /* ICMP's checksum has no pseudo-header; TCP's and UDP's cover the addresses. */
    if (p->l4.kind == L4_PORTS &&
        bpf_l4_csum_replace(skb, l4_csum_off(&p->l4), old_addr, new_addr,
                            l4_csum_flags(&p->l4) | BPF_F_PSEUDO_HDR | 4) < 0)
        return -1;
    if (rewrite_port(skb, &p->l4, src, new_port) < 0)
        return -1;
    if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) < 0)
        return -1;
    if (bpf_skb_store_bytes(skb, src ? IP_SRC_OFF : IP_DST_OFF, &new_addr, 4, 0) < 0)
        return -1;
    return 0;
}

/* Pick the external port for a new flow and claim it by inserting the reverse entry. */
static __always_inline int nat_alloc4(struct nat_config *cfg, struct pkt4 *p,
                                      struct nat_entry4 *out)
{
    struct nat_tuple4 rk = {};
    struct nat_entry4 rv = {};
    __u32 port = port_first(cfg, p->l4.sport);
    __u64 now = bpf_ktime_get_ns();
    int i;

    rk.saddr = p->daddr;
    rk.daddr = cfg->node_ip;
    rk.proto = p->l4.proto;
    if (p->l4.kind == L4_PORTS)
        rk.sport = p->l4.dport;
    rv.addr = p->saddr;
    rv.port = p->l4.sport;
    rv.created = rv.last_used = now;
    for (i = 0; i < NAT_RETRIES; i++) {
        rk.dport = bpf_htons((__u16)port);
        if (map_update(ferry_nat_rev, &rk, &rv, BPF_NOEXIST) == 0) {
            out->addr = cfg->node_ip;
            out->port = rk.dport;
            out->created = out->last_used = now;
            return 0;
        }
        port = port_next(cfg, port, i);
    }
    return -1;
}

static __always_inline int snat4_eg(struct __sk_buff *skb)
{
    struct pkt4 p = {};
    struct ip4_key ek = {};
    struct lpm4_key lk = {};
    struct nat_tuple4 fk = {};
    struct nat_entry4 fresh = {};
    struct nat_entry4 *e;
    struct endpoint *ep;
    struct nat_config *cfg;

    if (parse4(skb, &p) < 0 || !snat_kind(&p.l4))
        return TC_ACT_OK;
    ek.addr = p.saddr;
    ep = map_lookup(ferry_endpoints, &ek);
    if (!ep || (ep->flags & EP_F_POD_ENI))
        return TC_ACT_OK;
    lk.prefixlen = 32;
    lk.addr = p.daddr;
    if (map_lookup(ferry_snat_excl, &lk))
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!snat_cfg_ok(cfg) || !cfg->node_ip)
        return TC_ACT_OK;

    fk.saddr = p.saddr;
    fk.daddr = p.daddr;
    fk.sport = p.l4.sport;
    fk.dport = p.l4.dport;
    fk.proto = p.l4.proto;
    e = map_lookup(ferry_nat_fwd, &fk);
    if (e) {
        e->last_used = bpf_ktime_get_ns();
    } else {
        if (nat_alloc4(cfg, &p, &fresh) < 0)
            return TC_ACT_SHOT; /* the range is exhausted for this destination */
        map_update(ferry_nat_fwd, &fk, &fresh, BPF_ANY);
        e = &fresh;
    }
    if (rewrite4(skb, &p, 1, e->addr, e->port) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

static __always_inline int snat4_in(struct __sk_buff *skb)
{
    struct pkt4 p = {};
    struct nat_tuple4 rk = {};
    struct nat_entry4 *e;
    struct nat_config *cfg;

    if (parse4(skb, &p) < 0 || !rnat_kind(&p.l4))
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!snat_cfg_ok(cfg) || p.daddr != cfg->node_ip || !port_in_range(cfg, p.l4.dport))
        return TC_ACT_OK;
    rk.saddr = p.saddr;
    rk.daddr = p.daddr;
    rk.sport = p.l4.sport;
    rk.dport = p.l4.dport;
    rk.proto = p.l4.proto;
    e = map_lookup(ferry_nat_rev, &rk);
    if (!e)
        return TC_ACT_OK;
    e->last_used = bpf_ktime_get_ns();
    if (rewrite4(skb, &p, 0, e->addr, e->port) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

/* ---- IPv6 ---------------------------------------------------------------------------- */

/* IPv6 has no L3 checksum; TCP's, UDP's and ICMPv6's checksums all cover the addresses through
 * the pseudo-header: one bpf_csum_diff over the 16 bytes, applied as a pseudo-header change. */
static __always_inline int rewrite6(struct __sk_buff *skb, struct pkt6 *p, int src,
                                    __u32 *new_addr, __u16 new_port)
{
    __u32 *old_addr = src ? p->saddr : p->daddr;
    __u32 csum_off = l4_csum_off(&p->l4);
    __u64 flags = l4_csum_flags(&p->l4) | BPF_F_PSEUDO_HDR;
    __s64 diff = bpf_csum_diff(old_addr, 16, new_addr, 16, 0);
    long ret;

    if (diff < 0)
        return -1;
    ret = bpf_l4_csum_replace(skb, csum_off, 0, diff, flags | FERRY_F_IPV6);
    if (ret == -EINVAL)
        ret = bpf_l4_csum_replace(skb, csum_off, 0, diff, flags);
    if (ret < 0)
        return -1;
    if (rewrite_port(skb, &p->l4, src, new_port) < 0)
        return -1;
    if (bpf_skb_store_bytes(skb, src ? IP6_SRC_OFF : IP6_DST_OFF, new_addr, 16, 0) < 0)
        return -1;
    return 0;
}

static __always_inline int nat_alloc6(struct nat_config *cfg, struct pkt6 *p,
                                      struct nat_entry6 *out)
{
    struct nat_tuple6 rk = {};
    struct nat_entry6 rv = {};
    __u32 port = port_first(cfg, p->l4.sport);
    __u64 now = bpf_ktime_get_ns();
    int i;

    __builtin_memcpy(rk.saddr, p->daddr, 16);
    __builtin_memcpy(rk.daddr, cfg->node_ip6, 16);
    rk.proto = p->l4.proto;
    if (p->l4.kind == L4_PORTS)
        rk.sport = p->l4.dport;
    __builtin_memcpy(rv.addr, p->saddr, 16);
    rv.port = p->l4.sport;
    rv.created = rv.last_used = now;
    for (i = 0; i < NAT_RETRIES; i++) {
        rk.dport = bpf_htons((__u16)port);
        if (map_update(ferry_nat_rev6, &rk, &rv, BPF_NOEXIST) == 0) {
            __builtin_memcpy(out->addr, cfg->node_ip6, 16);
            out->port = rk.dport;
            out->created = out->last_used = now;
            return 0;
        }
        port = port_next(cfg, port, i);
    }
    return -1;
}

static __always_inline int snat6_eg(struct __sk_buff *skb)
{
    struct pkt6 p = {};
    struct ip6_key ek = {};
    struct lpm6_key lk = {};
    struct nat_tuple6 fk = {};
    struct nat_entry6 fresh = {};
    struct nat_entry6 *e;
    struct nat_config *cfg;

    /* Only TCP, UDP and echo requests: NDP, MLD and ICMPv6 errors pass untouched. */
    if (parse6(skb, &p) < 0 || !snat_kind(&p.l4))
        return TC_ACT_OK;
    __builtin_memcpy(ek.addr, p.saddr, 16);
    if (!map_lookup(ferry_endpoint6, &ek)) /* no pod ENI flag: redirection is IPv4 only */
        return TC_ACT_OK;
    lk.prefixlen = 128;
    __builtin_memcpy(lk.addr, p.daddr, 16);
    if (map_lookup(ferry_snat_ex6, &lk))
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!snat_cfg_ok(cfg) || ip6_zero(cfg->node_ip6))
        return TC_ACT_OK;

    __builtin_memcpy(fk.saddr, p.saddr, 16);
    __builtin_memcpy(fk.daddr, p.daddr, 16);
    fk.sport = p.l4.sport;
    fk.dport = p.l4.dport;
    fk.proto = p.l4.proto;
    e = map_lookup(ferry_nat_fwd6, &fk);
    if (e) {
        e->last_used = bpf_ktime_get_ns();
    } else {
        if (nat_alloc6(cfg, &p, &fresh) < 0)
            return TC_ACT_SHOT;
        map_update(ferry_nat_fwd6, &fk, &fresh, BPF_ANY);
        e = &fresh;
    }
    if (rewrite6(skb, &p, 1, e->addr, e->port) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

static __always_inline int snat6_in(struct __sk_buff *skb)
{
    struct pkt6 p = {};
    struct nat_tuple6 rk = {};
    struct nat_entry6 *e;
    struct nat_config *cfg;

    if (parse6(skb, &p) < 0 || !rnat_kind(&p.l4))
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!snat_cfg_ok(cfg) || ip6_zero(cfg->node_ip6) || !ip6_eq(p.daddr, cfg->node_ip6) ||
        !port_in_range(cfg, p.l4.dport))
        return TC_ACT_OK;
    __builtin_memcpy(rk.saddr, p.saddr, 16);
    __builtin_memcpy(rk.daddr, p.daddr, 16);
    rk.sport = p.l4.sport;
    rk.dport = p.l4.dport;
    rk.proto = p.l4.proto;
    e = map_lookup(ferry_nat_rev6, &rk);
    if (!e)
        return TC_ACT_OK;
    e->last_used = bpf_ktime_get_ns();
    if (rewrite6(skb, &p, 0, e->addr, e->port) < 0)
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

/* ---- programs ------------------------------------------------------------------------ */

FERRY_PROG(ferry_snat_eg)
{
    if (skb->protocol == bpf_htons(ETH_P_IPV6))
        return snat6_eg(skb);
    return snat4_eg(skb);
}

FERRY_PROG(ferry_snat_in)
{
    if (skb->protocol == bpf_htons(ETH_P_IPV6))
        return snat6_in(skb);
    return snat4_in(skb);
}
