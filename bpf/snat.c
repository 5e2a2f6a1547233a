/* Egress SNAT for pods, IPv4 and IPv6: ferry_snat_eg on the uplink's tc egress, ferry_snat_in on
 * its tc ingress; each dispatches on the family. The design follows Cilium's bpf/lib/nat.h: a
 * 5-tuple LRU map per direction (and per family), the reverse entry inserted with BPF_NOEXIST
 * as the collision check, the first port by randomizeSNAT (prng: random; hashrandom: a hash of
 * the 5-tuple; none: the pod's own port when it is inside the range), then up to NAT_RETRIES
 * random tries. A reverse lookup miss goes to the stack: it is the node's own traffic.
 * TCP state: the reverse entry records FIN/RST per direction; once a flow is closed, a new
 * flow may take its port over after NAT_REUSE_NS (its last ACK had time to pass), as conntrack
 * lets a SYN reuse a TIME_WAIT tuple; the later tries shorten that delay (reuse_grace) rather
 * than drop a SYN when a destination's new flows outrun it. Timestamps are rewritten at most every NAT_TOUCH_NS, so
 * that a packet of an established flow writes nothing shared (per-CPU counters only).
 * ICMP errors about a NATed flow (IPv4 unreachable / time exceeded, ICMPv6 unreachable / packet
 * too big / time exceeded) are translated back to the pod: the outer destination and the quoted
 * header, with all their checksums; those a pod or the node sends about an inbound NATed flow
 * go out with the quote as the remote sent it and the node IP as source. Fragments follow their
 * first fragment's translation through ferry_frag4 / ferry_frag6 (keyed by addresses, IP id or
 * the IPv6 fragment header's identification, and protocol), both directions.
 * The families differ only in their addresses (maps, L3 checksum); ports, echo ids, the L4
 * checksum of the port and the port choice are shared helpers on struct l4. */
#include "common.h"

/* bpf_l4_csum_replace: for IPv6, tell the kernel there is no L3 checksum to compensate a
 * CHECKSUM_COMPLETE skb->csum (6.16+, backported); older kernels refuse it with -EINVAL. */
#define FERRY_F_IPV6 (1ULL << 7)
#define EINVAL 22

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

/* Per-CPU counters (ferry_stats, names in loader/layouts.py STATS): no shared write. */
static __always_inline void count(__u32 idx)
{
    struct counter *c = map_lookup(ferry_stats, &idx);
    if (c)
        c->packets++;
}

/* An ICMP error's translation: counted, or dropped when a rewrite failed half way (its
 * checksums no longer hold). */
static __always_inline int icmp_verdict(int ok)
{
    count(ok ? STAT_ICMP_ERROR : STAT_DROP_REWRITE);
    return ok ? TC_ACT_OK : TC_ACT_SHOT;
}

/* last_used at most once per NAT_TOUCH_NS: a read, not a write, for most packets. */
static __always_inline void touch(__u64 *last_used, __u64 now)
{
    if (now - *last_used > NAT_TOUCH_NS)
        *last_used = now;
}

static __always_inline __u8 tcp_flags(struct __sk_buff *skb, struct l4 *l4)
{
    __u8 flags = 0;
    if (l4->proto == IPPROTO_TCP && l4->kind == L4_PORTS)
        pkt_load(skb, l4->off + 13, &flags);
    return flags;
}

static __always_inline int tcp_closed(__u8 out, __u8 in)
{
    return out == TCP_RST || in == TCP_RST || (out == TCP_FIN && in == TCP_FIN);
}

/* One direction's TCP flags into a reverse entry: `mine` is that direction's byte (written by
 * its program only), `other` the opposite one's. The packet that closes the flow stamps
 * last_used, from which the port's reuse is timed. A bare SYN on a tuple that has an entry is
 * the same pod reusing its own port: the flow is open again. */
static __always_inline void tcp_track(__u8 *mine, __u8 *other, __u64 *last_used, __u8 flags,
                                      __u64 now)
{
    if ((flags & (TH_SYN | TH_ACK)) == TH_SYN) {
        *mine = 0;
        *other = 0;
        return;
    }
    if (!(flags & (TH_FIN | TH_RST)) || *mine == TCP_RST)
        return;
    *mine = (flags & TH_RST) ? TCP_RST : TCP_FIN;
    if (tcp_closed(*mine, *other))
        *last_used = now;
}

/* Why a try of the port allocation cannot take a claimed port (a STAT_TRY_* counter), 0 if it
 * can: the claim is gone (the insert was refused for another reason than a live entry), its
 * flow is open, or it closed less than `grace` ago. */
static __always_inline int refusal(int claimed, __u8 out, __u8 in, __u64 last_used, __u8 proto,
                                   __u64 now, __u64 grace)
{
    if (!claimed)
        return STAT_TRY_REFUSED;
    if (proto != IPPROTO_TCP || !tcp_closed(out, in))
        return STAT_TRY_OPEN;
    return now - last_used > grace ? 0 : STAT_TRY_CLOSING;
}

/* The reuse delay try i of an allocation honours: NAT_REUSE_NS for the first half of the tries,
 * then less and less, down to none for the last. Only when more new flows go to one
 * destination than the range carries in NAT_REUSE_NS are nearly all tried ports closing; the
 * later tries then take a port that closed less long ago (counted reused_early), as conntrack
 * lets a SYN reuse a closed tuple at once, rather than drop the SYN. A constant per try for
 * the verifier: the loop's states stay one per iteration. */
static __always_inline __u64 reuse_grace(int i)
{
    if (i < NAT_RETRIES / 2)
        return NAT_REUSE_NS;
    return (__u64)NAT_REUSE_NS * (NAT_RETRIES - 1 - i) / (NAT_RETRIES / 2);
}

static __always_inline __u32 mix32(__u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

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

/* The L4 checksum's part of a port (or echo id) change: src, the source port (or the echo id
 * of a request); else the destination port (or the echo id of a reply). */
static __always_inline int port_csum(struct __sk_buff *skb, struct l4 *l4, int src,
                                     __u16 new_port)
{
    __u16 old_port = src ? l4->sport : l4->dport;

    return bpf_l4_csum_replace(skb, l4_csum_off(l4), old_port, new_port,
                               l4_csum_flags(l4) | 2) < 0 ? -1 : 0;
}

/* Rewrite that port (or echo id), with its L4 checksum; the address part is the family's. */
static __always_inline int rewrite_port(struct __sk_buff *skb, struct l4 *l4, int src,
                                        __u16 new_port)
{
    __u32 off = l4->kind == L4_PORTS ? l4->off + (src ? 0 : 2)
                                     : l4->off + offsetof(struct icmphdr, un.echo.id);

    if (port_csum(skb, l4, src, new_port) < 0)
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

/* The port allocation of nat_alloc4/6 (randomizeSNAT): the first candidate, from the pod's
 * port and a hash of the flow's addresses and ports, and the next one after try i. */
static __always_inline __u32 port_first(struct nat_config *cfg, struct l4 *l4, __u32 addrs)
{
    __u32 port = bpf_ntohs(l4->sport);
    __u32 size = cfg->port_max - cfg->port_min + 1;

    if (cfg->randomize == SNAT_NONE && port >= cfg->port_min && port <= cfg->port_max)
        return port;
    if (cfg->randomize == SNAT_HASHRANDOM)
        return cfg->port_min +
               mix32(mix32(cfg->hash_seed ^ addrs) ^ ((__u32)l4->sport << 16 | l4->dport) ^
                     l4->proto) % size;
    return cfg->port_min + bpf_get_prandom_u32() % size;
}

/* Every retry is a fresh random port, not the next one up: under churn the ports taken last
 * (not reusable yet) would otherwise pile up in runs behind each collision, as in linear
 * probing, and 128 tries could all fall in one run while half the range is free. */
static __always_inline __u32 port_next(struct nat_config *cfg)
{
    return cfg->port_min + bpf_get_prandom_u32() % (cfg->port_max - cfg->port_min + 1);
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

/* RFC 1624's incremental update of a checksum for a 32-bit field going from `from` to `to`. */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
    __u32 sum = (__u16)~check;

    sum += (~from & 0xffff) + (~from >> 16) + (to & 0xffff) + (to >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

/* An IPv4 header's checksum and addresses and, with no IP options, the ports right after them:
 * contiguous bytes, so one write stores them all. */
struct ip4_rewrite {
    __u16 check;
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
} __attribute__((packed));

#define IP4_ADDRS_LEN offsetof(struct ip4_rewrite, sport)

/* Rewrite one address (src or dst) and its port/echo id, fixing the IP and L4 checksums. A
 * later fragment has no L4 header: its address only (the first fragment fixed the datagram's
 * L4 checksum for all of them). The IP checksum is never offloaded, and an address change it
 * compensates leaves a CHECKSUM_COMPLETE skb->csum as it was: it is computed here (what
 * bpf_l3_csum_replace does) and written with the address, one helper call fewer. */
static __always_inline int rewrite4(struct __sk_buff *skb, struct pkt4 *p, int src,
                                    __u32 new_addr, __u16 new_port)
{
    __u32 old_addr = src ? p->saddr : p->daddr;
    struct ip4_rewrite h = {
        .check = csum_replace4(p->check, old_addr, new_addr),
        .saddr = src ? new_addr : p->saddr,
        .daddr = src ? p->daddr : new_addr,
        .sport = src ? new_port : p->l4.sport,
        .dport = src ? p->l4.dport : new_port,
    };

    if (p->frag != FRAG_LATER) {
        /* ICMP's checksum has no pseudo-header; TCP's and UDP's cover the addresses. */
        if (p->l4.kind == L4_PORTS &&
            bpf_l4_csum_replace(skb, l4_csum_off(&p->l4), old_addr, new_addr,
                                l4_csum_flags(&p->l4) | BPF_F_PSEUDO_HDR | 4) < 0)
            return -1;
        if (p->l4.kind == L4_PORTS && p->l4.off == IP_OFF + sizeof(struct iphdr)) {
            if (port_csum(skb, &p->l4, src, new_port) < 0)
                return -1;
            return bpf_skb_store_bytes(skb, IP_CSUM_OFF, &h, sizeof(h), 0) < 0 ? -1 : 0;
        }
        if (rewrite_port(skb, &p->l4, src, new_port) < 0)
            return -1;
    }
    return bpf_skb_store_bytes(skb, IP_CSUM_OFF, &h, IP4_ADDRS_LEN, 0) < 0 ? -1 : 0;
}

/* Fragments, both families: the first fragment's L4 identity (struct l4's ports and kind), and
 * a later fragment taking it back (-1: its first fragment was not seen). */
static __always_inline void frag_record(struct frag4_ports *v, struct l4 *l4)
{
    v->sport = l4->sport;
    v->dport = l4->dport;
    v->kind = l4->kind;
}

static __always_inline int frag_follow(struct l4 *l4, struct frag4_ports *seen)
{
    if (!seen)
        return -1;
    l4->sport = seen->sport;
    l4->dport = seen->dport;
    l4->kind = seen->kind;
    count(STAT_FRAGMENT);
    return 0;
}

/* Fragments: the first one records its L4 identity under the datagram's (addresses, id,
 * proto); a later one takes it back, so that it follows the same NAT entry. 0: p->l4 is the
 * datagram's; -1: a later fragment whose first fragment was not seen. */
static __always_inline int frag4(struct pkt4 *p)
{
    struct frag4_key k = {};
    struct frag4_ports v = {};

    if (p->frag == FRAG_NONE)
        return 0;
    k.saddr = p->saddr;
    k.daddr = p->daddr;
    k.id = p->id;
    k.proto = p->l4.proto;
    if (p->frag == FRAG_FIRST) {
        frag_record(&v, &p->l4);
        map_update(ferry_frag4, &k, &v, BPF_ANY);
        return 0;
    }
    return frag_follow(&p->l4, map_lookup(ferry_frag4, &k));
}

/* A new flow takes over the port of a closed TCP flow: the old flow's forward entry goes (its
 * late packets would otherwise be translated onto the new flow's port). */
static __always_inline int reclaim4(struct nat_tuple4 *rk, struct nat_entry4 *rv, __u64 now,
                                    __u64 grace)
{
    struct nat_entry4 *old = map_lookup(ferry_nat_rev, rk);
    struct nat_tuple4 stale = {};
    int early, why = refusal(old != 0, old ? old->tcp_out : 0, old ? old->tcp_in : 0,
                             old ? old->last_used : 0, rk->proto, now, grace);

    if (why)
        return why;
    stale.saddr = old->addr;
    stale.daddr = rk->saddr;
    stale.sport = old->port;
    stale.dport = rk->sport;
    stale.proto = rk->proto;
    early = now - old->last_used <= NAT_REUSE_NS;
    map_delete(ferry_nat_fwd, &stale);
    if (map_update(ferry_nat_rev, rk, rv, BPF_ANY) < 0)
        return STAT_TRY_REFUSED;
    count(early ? STAT_REUSED_EARLY : STAT_REUSED_CLOSED);
    return 0;
}

/* Pick the external port for a new flow and claim it by inserting the reverse entry. */
static __always_inline int nat_alloc4(struct nat_config *cfg, struct pkt4 *p,
                                      struct nat_entry4 *out)
{
    struct nat_tuple4 rk = {};
    struct nat_entry4 rv = {};
    __u32 port = port_first(cfg, &p->l4, p->saddr ^ p->daddr);
    __u64 now = nat_clock();
    int i, why;

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
        why = map_update(ferry_nat_rev, &rk, &rv, BPF_NOEXIST) == 0 ? 0 :
              reclaim4(&rk, &rv, now, reuse_grace(i));
        if (why == 0) {
            out->addr = cfg->node_ip;
            out->port = rk.dport;
            out->created = out->last_used = now;
            return 0;
        }
        count(why);
        port = port_next(cfg);
    }
    return -1;
}

/* The pod's FIN/RST (or a new SYN on its tuple) into the flow's reverse entry. */
static __always_inline void tcp_out4(struct nat_tuple4 *fk, struct nat_entry4 *e, __u8 flags,
                                     __u64 now)
{
    struct nat_tuple4 rk = {};
    struct nat_entry4 *r;

    rk.saddr = fk->daddr;
    rk.daddr = e->addr;
    rk.sport = fk->dport;
    rk.dport = e->port;
    rk.proto = fk->proto;
    r = map_lookup(ferry_nat_rev, &rk);
    if (r)
        tcp_track(&r->tcp_out, &r->tcp_in, &r->last_used, flags, now);
}

/* Is this a pod's packet to SNAT: a pod address (not a pod ENI one) to a destination outside
 * the exclusions? Asked for a new flow only: a forward entry exists only for such flows (DEL
 * removes a pod's), so an established flow's packet skips these two lookups. */
static __always_inline int snat4_wanted(struct pkt4 *p)
{
    struct ip4_key ek = {};
    struct lpm4_key lk = {};
    struct endpoint *ep;

    ek.addr = p->saddr;
    ep = map_lookup(ferry_endpoints, &ek);
    if (!ep || (ep->flags & EP_F_POD_ENI))
        return 0;
    lk.prefixlen = 32;
    lk.addr = p->daddr;
    return !map_lookup(ferry_snat_excl, &lk);
}

/* Checksum-neutral edits inside an ICMP error's quoted datagram: the field at `off` goes from
 * `from` to `to` (2 or 4 bytes), the ICMP checksum at `csum_off` follows (it sums the quote
 * as payload, no pseudo-header). */
static __always_inline int icmp_quote_store(struct __sk_buff *skb, __u32 csum_off, __u32 off,
                                            __u32 from, __u32 to, __u32 size)
{
    if (bpf_l4_csum_replace(skb, csum_off, from, to, size) < 0)
        return -1;
    return bpf_skb_store_bytes(skb, off, &to, size, 0) < 0 ? -1 : 0;
}

/* A 16-bit checksum inside the quote changed by (from -> to, size): apply the change to it,
 * and the change of its own bytes to the ICMP checksum. `flags` as bpf_l4_csum_replace's
 * (UDP: BPF_F_MARK_MANGLED_0). A checksum beyond the quoted bytes is left alone. */
static __always_inline int icmp_quote_csum(struct __sk_buff *skb, __u32 icmp_csum_off,
                                           __u32 off, __u32 from, __u32 to, __u64 flags)
{
    __u16 before, after;

    if (bpf_skb_load_bytes(skb, off, &before, 2) < 0)
        return 0;
    if (bpf_l4_csum_replace(skb, off, from, to, flags) < 0)
        return -1;
    if (bpf_skb_load_bytes(skb, off, &after, 2) < 0)
        return -1;
    return bpf_l4_csum_replace(skb, icmp_csum_off, before, after, 2) < 0 ? -1 : 0;
}

/* The quoted L4 header's source (src) or destination port, or its echo id: its own checksum
 * (which covers the port and, for TCP and UDP, the quoted address through its pseudo-header)
 * and the ICMP one. */
static __always_inline int icmp_quote_l4(struct __sk_buff *skb, __u32 icmp_csum_off,
                                         struct l4 *in, int src, __u32 old_addr,
                                         __u32 new_addr, __u16 new_port)
{
    __u32 csum = l4_csum_off(in);
    __u64 flags = l4_csum_flags(in);
    __u16 old_port = src ? in->sport : in->dport;
    __u32 port_off = in->kind == L4_PORTS ? in->off + (src ? 0 : 2) :
                     in->off + offsetof(struct icmphdr, un.echo.id);

    if (in->kind == L4_PORTS &&
        icmp_quote_csum(skb, icmp_csum_off, csum, old_addr, new_addr, flags | 4) < 0)
        return -1;
    if (icmp_quote_csum(skb, icmp_csum_off, csum, old_port, new_port, flags | 2) < 0)
        return -1;
    return icmp_quote_store(skb, icmp_csum_off, port_off, old_port, new_port, 2);
}

/* An ICMP error to the node IP quoting a datagram the SNAT sent (source: node IP and a NAT
 * port or echo id): back to the pod, quote included. Anything else goes to the stack. */
static __always_inline int icmp_err4_in(struct __sk_buff *skb, struct pkt4 *p,
                                        struct nat_config *cfg)
{
    struct iphdr in;
    struct l4 il = {};
    struct nat_tuple4 rk = {};
    struct nat_entry4 *e;
    __u32 quote = p->l4.off + sizeof(struct icmphdr);
    __u32 icmp_csum = p->l4.off + offsetof(struct icmphdr, checksum);
    __u32 node = cfg->node_ip;

    if (bpf_skb_load_bytes(skb, quote, &in, sizeof(in)) < 0 || in.ihl < 5 ||
        in.saddr != node || (in.frag_off & bpf_htons(0x1fff)))
        return TC_ACT_OK;
    il.proto = in.protocol;
    il.off = quote + in.ihl * 4;
    parse_l4(skb, &il, IPPROTO_ICMP, ICMP_ECHO, ICMP_ECHOREPLY);
    if (il.kind != L4_PORTS && il.kind != L4_ECHO_REQ)
        return TC_ACT_OK;
    rk.saddr = in.daddr;
    rk.daddr = node;
    rk.sport = il.kind == L4_PORTS ? il.dport : 0;
    rk.dport = il.sport;
    rk.proto = il.proto;
    if (!port_in_range(cfg, rk.dport))
        return TC_ACT_OK;
    e = map_lookup(ferry_nat_rev, &rk);
    if (!e) {
        count(STAT_NO_MAPPING);
        return TC_ACT_OK;
    }
    /* The quote: its L4 part, then its source address with the quoted IP checksum. */
    if (icmp_quote_l4(skb, icmp_csum, &il, 1, node, e->addr, e->port) < 0 ||
        icmp_quote_csum(skb, icmp_csum, quote + offsetof(struct iphdr, check), node, e->addr,
                        4) < 0 ||
        icmp_quote_store(skb, icmp_csum, quote + offsetof(struct iphdr, saddr), node, e->addr,
                         4) < 0)
        goto drop;
    /* The outer destination: the IP checksum only (ICMP has no pseudo-header). */
    if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, node, e->addr, 4) < 0 ||
        bpf_skb_store_bytes(skb, IP_DST_OFF, &e->addr, 4, 0) < 0)
        goto drop;
    return icmp_verdict(1);
drop:
    return icmp_verdict(0);
}

static __always_inline int icmp4_is_error(struct __sk_buff *skb, struct pkt4 *p)
{
    __u8 type;

    if (p->l4.proto != IPPROTO_ICMP || p->frag != FRAG_NONE ||
        bpf_skb_load_bytes(skb, p->l4.off, &type, 1) < 0)
        return 0;
    return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
           type == ICMP_PARAMETERPROB;
}

/* An ICMP error that a pod, or the node forwarding to it, sends about a datagram the SNAT
 * translated inbound (the quote: ext -> pod IP and port): the quote back to what ext sent
 * (the node IP and the NAT port, found by the flow's forward entry), and a pod's own source
 * to the node IP, so that ext's stack matches it to its socket. Anything else as it is. */
static __always_inline int icmp_err4_eg(struct __sk_buff *skb, struct pkt4 *p,
                                        struct nat_config *cfg)
{
    struct iphdr in;
    struct l4 il = {};
    struct nat_tuple4 fk = {};
    struct nat_entry4 *e;
    __u32 quote = p->l4.off + sizeof(struct icmphdr);
    __u32 icmp_csum = p->l4.off + offsetof(struct icmphdr, checksum);
    __u32 node = cfg->node_ip;

    if (bpf_skb_load_bytes(skb, quote, &in, sizeof(in)) < 0 || in.ihl < 5 ||
        (in.frag_off & bpf_htons(0x1fff)))
        return TC_ACT_OK;
    il.proto = in.protocol;
    il.off = quote + in.ihl * 4;
    parse_l4(skb, &il, IPPROTO_ICMP, ICMP_ECHO, ICMP_ECHOREPLY);
    if (il.kind != L4_PORTS)
        return TC_ACT_OK;
    fk.saddr = in.daddr;
    fk.daddr = in.saddr;
    fk.sport = il.dport;
    fk.dport = il.sport;
    fk.proto = il.proto;
    e = map_lookup(ferry_nat_fwd, &fk);
    if (!e)
        return TC_ACT_OK;
    if (icmp_quote_l4(skb, icmp_csum, &il, 0, in.daddr, e->addr, e->port) < 0 ||
        icmp_quote_csum(skb, icmp_csum, quote + offsetof(struct iphdr, check), in.daddr,
                        e->addr, 4) < 0 ||
        icmp_quote_store(skb, icmp_csum, quote + offsetof(struct iphdr, daddr), in.daddr,
                         e->addr, 4) < 0)
        goto drop;
    if (p->saddr != node && (bpf_l3_csum_replace(skb, IP_CSUM_OFF, p->saddr, node, 4) < 0 ||
                             bpf_skb_store_bytes(skb, IP_SRC_OFF, &node, 4, 0) < 0))
        goto drop;
    return icmp_verdict(1);
drop:
    return icmp_verdict(0);
}

static __always_inline int snat4_eg(struct __sk_buff *skb)
{
    struct pkt4 p = {};
    struct nat_tuple4 fk = {};
    struct nat_entry4 fresh = {};
    struct nat_entry4 *e;
    struct nat_config *cfg;
    __u64 now;
    __u8 flags;

    if (unlikely(parse4(skb, &p) < 0 ||
                 (!snat_kind(&p.l4) && p.frag != FRAG_LATER && p.l4.proto != IPPROTO_ICMP)))
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (unlikely(!snat_cfg_ok(cfg) || !cfg->node_ip))
        return TC_ACT_OK;
    if (unlikely(!snat_kind(&p.l4) && p.frag != FRAG_LATER)) /* ICMP but an echo request */
        return icmp4_is_error(skb, &p) ? icmp_err4_eg(skb, &p, cfg) : TC_ACT_OK;
    if (unlikely(p.frag != FRAG_NONE)) {
        if (!snat4_wanted(&p))
            return TC_ACT_OK;
        if (frag4(&p) < 0) {
            /* No first fragment seen (lost, out of order, or a datagram that is not NATed
             * such as a pod's echo reply): the stack's, as it is. */
            count(STAT_FRAGMENT_UNKNOWN);
            return TC_ACT_OK;
        }
    }

    fk.saddr = p.saddr;
    fk.daddr = p.daddr;
    fk.sport = p.l4.sport;
    fk.dport = p.l4.dport;
    fk.proto = p.l4.proto;
    now = nat_clock();
    e = map_lookup(ferry_nat_fwd, &fk);
    if (likely(e != NULL)) {
        touch(&e->last_used, now);
        flags = tcp_flags(skb, &p.l4);
        if (unlikely(flags & (TH_FIN | TH_RST | TH_SYN)))
            tcp_out4(&fk, e, flags, now);
    } else {
        if (p.frag == FRAG_NONE && !snat4_wanted(&p))
            return TC_ACT_OK;
        if (nat_alloc4(cfg, &p, &fresh) < 0) {
            count(STAT_ALLOC_FAIL4); /* the range is exhausted for this destination */
            return TC_ACT_SHOT;
        }
        map_update(ferry_nat_fwd, &fk, &fresh, BPF_ANY);
        e = &fresh;
    }
    if (unlikely(rewrite4(skb, &p, 1, e->addr, e->port) < 0)) {
        count(STAT_DROP_REWRITE);
        return TC_ACT_SHOT;
    }
    count(STAT_XLATE_EG4);
    return TC_ACT_OK;
}

static __always_inline int snat4_in(struct __sk_buff *skb)
{
    struct pkt4 p = {};
    struct nat_tuple4 rk = {};
    struct nat_entry4 *e;
    struct nat_config *cfg;
    __u64 now;
    __u8 flags;

    if (parse4(skb, &p) < 0)
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!snat_cfg_ok(cfg) || p.daddr != cfg->node_ip)
        return TC_ACT_OK;
    if (icmp4_is_error(skb, &p))
        return icmp_err4_in(skb, &p, cfg);
    if (!rnat_kind(&p.l4) && p.frag != FRAG_LATER)
        return TC_ACT_OK;
    if (frag4(&p) < 0 || !rnat_kind(&p.l4) || !port_in_range(cfg, p.l4.dport))
        return TC_ACT_OK; /* a later fragment of the node's own traffic, or not ours */
    rk.saddr = p.saddr;
    rk.daddr = p.daddr;
    rk.sport = p.l4.sport;
    rk.dport = p.l4.dport;
    rk.proto = p.l4.proto;
    e = map_lookup(ferry_nat_rev, &rk);
    if (!e) {
        count(STAT_NO_MAPPING);
        return TC_ACT_OK;
    }
    now = nat_clock();
    touch(&e->last_used, now);
    flags = tcp_flags(skb, &p.l4);
    if (unlikely(flags & (TH_FIN | TH_RST)))
        tcp_track(&e->tcp_in, &e->tcp_out, &e->last_used, flags, now);
    if (unlikely(rewrite4(skb, &p, 0, e->addr, e->port) < 0)) {
        count(STAT_DROP_REWRITE);
        return TC_ACT_SHOT;
    }
    count(STAT_XLATE_IN4);
    return TC_ACT_OK;
}

/* ---- IPv6 ---------------------------------------------------------------------------- */

/* IPv6 has no L3 checksum; TCP's, UDP's and ICMPv6's checksums all cover the addresses through
 * the pseudo-header: one bpf_csum_diff over the 16 bytes, applied as a pseudo-header change. */
static __always_inline int csum_pseudo6(struct __sk_buff *skb, __u32 csum_off, __s64 diff,
                                        __u64 flags)
{
    long ret = bpf_l4_csum_replace(skb, csum_off, 0, diff,
                                   flags | BPF_F_PSEUDO_HDR | FERRY_F_IPV6);
    if (ret == -EINVAL)
        ret = bpf_l4_csum_replace(skb, csum_off, 0, diff, flags | BPF_F_PSEUDO_HDR);
    return ret < 0 ? -1 : 0;
}

/* An IPv6 header's addresses and, with no extension header, the ports right after them. */
struct ip6_rewrite {
    __u32 saddr[4];
    __u32 daddr[4];
    __u16 sport;
    __u16 dport;
} __attribute__((packed));

static __always_inline int rewrite6(struct __sk_buff *skb, struct pkt6 *p, int src,
                                    __u32 *new_addr, __u16 new_port)
{
    __u32 *old_addr = src ? p->saddr : p->daddr;
    struct ip6_rewrite h = {
        .sport = src ? new_port : p->l4.sport,
        .dport = src ? p->l4.dport : new_port,
    };

    /* A later fragment has no L4 header (its checksum is in the first): the address only. */
    if (p->frag != FRAG_LATER) {
        __s64 diff = bpf_csum_diff(old_addr, 16, new_addr, 16, 0);
        if (diff < 0 ||
            csum_pseudo6(skb, l4_csum_off(&p->l4), diff, l4_csum_flags(&p->l4)) < 0)
            return -1;
        if (p->l4.kind == L4_PORTS && p->l4.off == IP_OFF + sizeof(struct ipv6hdr)) {
            /* addresses and ports are contiguous: one write */
            if (port_csum(skb, &p->l4, src, new_port) < 0)
                return -1;
            __builtin_memcpy(h.saddr, src ? new_addr : p->saddr, 16);
            __builtin_memcpy(h.daddr, src ? p->daddr : new_addr, 16);
            return bpf_skb_store_bytes(skb, IP6_SRC_OFF, &h, sizeof(h), 0) < 0 ? -1 : 0;
        }
        if (rewrite_port(skb, &p->l4, src, new_port) < 0)
            return -1;
    }
    if (bpf_skb_store_bytes(skb, src ? IP6_SRC_OFF : IP6_DST_OFF, new_addr, 16, 0) < 0)
        return -1;
    return 0;
}

static __always_inline __u32 fold6(const __u32 *a)
{
    return a[0] ^ a[1] ^ a[2] ^ a[3];
}

/* frag4 for IPv6 (ferry_frag6, keyed by the fragment header's identification). */
static __always_inline int frag6(struct pkt6 *p)
{
    struct frag6_key k = {};
    struct frag4_ports v = {};

    if (p->frag == FRAG_NONE)
        return 0;
    __builtin_memcpy(k.saddr, p->saddr, 16);
    __builtin_memcpy(k.daddr, p->daddr, 16);
    k.id = p->id;
    k.proto = p->l4.proto;
    if (p->frag == FRAG_FIRST) {
        frag_record(&v, &p->l4);
        map_update(ferry_frag6, &k, &v, BPF_ANY);
        return 0;
    }
    return frag_follow(&p->l4, map_lookup(ferry_frag6, &k));
}

/* reclaim4 for IPv6. */
static __always_inline int reclaim6(struct nat_tuple6 *rk, struct nat_entry6 *rv, __u64 now,
                                    __u64 grace)
{
    struct nat_entry6 *old = map_lookup(ferry_nat_rev6, rk);
    struct nat_tuple6 stale = {};
    int early, why = refusal(old != 0, old ? old->tcp_out : 0, old ? old->tcp_in : 0,
                             old ? old->last_used : 0, rk->proto, now, grace);

    if (why)
        return why;
    __builtin_memcpy(stale.saddr, old->addr, 16);
    __builtin_memcpy(stale.daddr, rk->saddr, 16);
    stale.sport = old->port;
    stale.dport = rk->sport;
    stale.proto = rk->proto;
    early = now - old->last_used <= NAT_REUSE_NS;
    map_delete(ferry_nat_fwd6, &stale);
    if (map_update(ferry_nat_rev6, rk, rv, BPF_ANY) < 0)
        return STAT_TRY_REFUSED;
    count(early ? STAT_REUSED_EARLY : STAT_REUSED_CLOSED);
    return 0;
}

static __always_inline int nat_alloc6(struct nat_config *cfg, struct pkt6 *p,
                                      struct nat_entry6 *out)
{
    struct nat_tuple6 rk = {};
    struct nat_entry6 rv = {};
    __u32 port = port_first(cfg, &p->l4, fold6(p->saddr) ^ fold6(p->daddr));
    __u64 now = nat_clock();
    int i, why;

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
        why = map_update(ferry_nat_rev6, &rk, &rv, BPF_NOEXIST) == 0 ? 0 :
              reclaim6(&rk, &rv, now, reuse_grace(i));
        if (why == 0) {
            __builtin_memcpy(out->addr, cfg->node_ip6, 16);
            out->port = rk.dport;
            out->created = out->last_used = now;
            return 0;
        }
        count(why);
        port = port_next(cfg);
    }
    return -1;
}

/* tcp_out4 for IPv6. */
static __always_inline void tcp_out6(struct nat_tuple6 *fk, struct nat_entry6 *e, __u8 flags,
                                     __u64 now)
{
    struct nat_tuple6 rk = {};
    struct nat_entry6 *r;

    __builtin_memcpy(rk.saddr, fk->daddr, 16);
    __builtin_memcpy(rk.daddr, e->addr, 16);
    rk.sport = fk->dport;
    rk.dport = e->port;
    rk.proto = fk->proto;
    r = map_lookup(ferry_nat_rev6, &rk);
    if (r)
        tcp_track(&r->tcp_out, &r->tcp_in, &r->last_used, flags, now);
}

/* snat4_wanted for IPv6 (no pod ENI flag: redirection is IPv4 only). */
static __always_inline int snat6_wanted(struct pkt6 *p)
{
    struct ip6_key ek = {};
    struct lpm6_key lk = {};

    __builtin_memcpy(ek.addr, p->saddr, 16);
    if (!map_lookup(ferry_endpoint6, &ek))
        return 0;
    lk.prefixlen = 128;
    __builtin_memcpy(lk.addr, p->daddr, 16);
    return !map_lookup(ferry_snat_ex6, &lk);
}

static __always_inline int icmp6_is_error(struct __sk_buff *skb, struct pkt6 *p);
static __always_inline int icmp_err6_eg(struct __sk_buff *skb, struct pkt6 *p);

static __always_inline int snat6_eg(struct __sk_buff *skb)
{
    struct pkt6 p = {};
    struct nat_tuple6 fk = {};
    struct nat_entry6 fresh = {};
    struct nat_entry6 *e;
    struct nat_config *cfg;
    __u64 now;
    __u8 flags;

    /* Only TCP, UDP and echo requests, and ICMPv6 errors about an inbound NATed flow: NDP,
     * MLD and the rest pass untouched. */
    if (parse6(skb, &p) < 0)
        return TC_ACT_OK;
    if (!snat_kind(&p.l4) && p.frag != FRAG_LATER)
        return p.frag == FRAG_NONE && icmp6_is_error(skb, &p) ? icmp_err6_eg(skb, &p) :
                                                                TC_ACT_OK;
    cfg = nat_cfg();
    if (!snat_cfg_ok(cfg) || ip6_zero(cfg->node_ip6))
        return TC_ACT_OK;
    if (unlikely(p.frag != FRAG_NONE)) {
        if (!snat6_wanted(&p))
            return TC_ACT_OK;
        if (frag6(&p) < 0) {
            count(STAT_FRAGMENT_UNKNOWN); /* as in snat4_eg */
            return TC_ACT_OK;
        }
    }

    __builtin_memcpy(fk.saddr, p.saddr, 16);
    __builtin_memcpy(fk.daddr, p.daddr, 16);
    fk.sport = p.l4.sport;
    fk.dport = p.l4.dport;
    fk.proto = p.l4.proto;
    now = nat_clock();
    e = map_lookup(ferry_nat_fwd6, &fk);
    if (likely(e != NULL)) {
        touch(&e->last_used, now);
        flags = tcp_flags(skb, &p.l4);
        if (unlikely(flags & (TH_FIN | TH_RST | TH_SYN)))
            tcp_out6(&fk, e, flags, now);
    } else {
        if (p.frag == FRAG_NONE && !snat6_wanted(&p))
            return TC_ACT_OK;
        if (nat_alloc6(cfg, &p, &fresh) < 0) {
            count(STAT_ALLOC_FAIL6);
            return TC_ACT_SHOT;
        }
        map_update(ferry_nat_fwd6, &fk, &fresh, BPF_ANY);
        e = &fresh;
    }
    if (unlikely(rewrite6(skb, &p, 1, e->addr, e->port) < 0)) {
        count(STAT_DROP_REWRITE);
        return TC_ACT_SHOT;
    }
    count(STAT_XLATE_EG6);
    return TC_ACT_OK;
}

/* The quoted datagram of an ICMPv6 error: the address at addr_off becomes `addr`, a change
 * `diff` to the quoted L4 checksum's pseudo-header, and the port or echo id at port_off goes
 * from `from` to `to`, with that checksum; the ICMPv6 checksum follows each change (the quote
 * is its payload). */
static __always_inline int icmp_quote6(struct __sk_buff *skb, __u32 icmp_csum, struct l4 *il,
                                       __u32 addr_off, __u32 *addr, __s64 diff,
                                       __u32 port_off, __u16 from, __u16 to)
{
    __u32 inner_csum = l4_csum_off(il);

    if (icmp_quote_csum(skb, icmp_csum, inner_csum, 0, diff, l4_csum_flags(il)) < 0 ||
        icmp_quote_csum(skb, icmp_csum, inner_csum, from, to, l4_csum_flags(il) | 2) < 0 ||
        icmp_quote_store(skb, icmp_csum, port_off, from, to, 2) < 0 ||
        bpf_l4_csum_replace(skb, icmp_csum, 0, diff, 0) < 0 ||
        bpf_skb_store_bytes(skb, addr_off, addr, 16, 0) < 0)
        return -1;
    return 0;
}

/* icmp_err4_in for ICMPv6 (destination unreachable, packet too big, time exceeded, parameter
 * problem). Every checksum involved covers the addresses through a pseudo-header: the outer
 * ICMPv6 one the outer destination, the quoted L4 one (TCP, UDP or ICMPv6 echo) the quoted
 * source; the quoted bytes count as the outer checksum's payload. */
static __always_inline int icmp_err6_in(struct __sk_buff *skb, struct pkt6 *p,
                                        struct nat_config *cfg)
{
    struct ipv6hdr in;
    struct l4 il = {};
    struct nat_tuple6 rk = {};
    struct nat_entry6 *e;
    __u32 quote = p->l4.off + sizeof(struct icmp6hdr);
    __u32 icmp_csum = p->l4.off + offsetof(struct icmp6hdr, icmp6_cksum);
    __s64 diff;

    if (bpf_skb_load_bytes(skb, quote, &in, sizeof(in)) < 0 ||
        !ip6_eq((__u32 *)&in.saddr, cfg->node_ip6))
        return TC_ACT_OK;
    il.proto = in.nexthdr;
    il.off = quote + sizeof(struct ipv6hdr);
    parse_l4(skb, &il, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY);
    if (il.kind != L4_PORTS && il.kind != L4_ECHO_REQ)
        return TC_ACT_OK;
    __builtin_memcpy(rk.saddr, &in.daddr, 16);
    __builtin_memcpy(rk.daddr, cfg->node_ip6, 16);
    rk.sport = il.kind == L4_PORTS ? il.dport : 0;
    rk.dport = il.sport;
    rk.proto = il.proto;
    if (!port_in_range(cfg, rk.dport))
        return TC_ACT_OK;
    e = map_lookup(ferry_nat_rev6, &rk);
    if (!e) {
        count(STAT_NO_MAPPING);
        return TC_ACT_OK;
    }
    diff = bpf_csum_diff(cfg->node_ip6, 16, e->addr, 16, 0);
    if (diff < 0)
        goto drop;
    /* The quoted source address and port, then the outer destination (pseudo-header). */
    if (icmp_quote6(skb, icmp_csum, &il, quote + offsetof(struct ipv6hdr, saddr), e->addr, diff,
                    il.kind == L4_PORTS ? il.off :
                    il.off + offsetof(struct icmphdr, un.echo.id), il.sport, e->port) < 0 ||
        csum_pseudo6(skb, icmp_csum, diff, 0) < 0 ||
        bpf_skb_store_bytes(skb, IP6_DST_OFF, e->addr, 16, 0) < 0)
        goto drop;
    return icmp_verdict(1);
drop:
    return icmp_verdict(0);
}

static __always_inline int icmp6_is_error(struct __sk_buff *skb, struct pkt6 *p)
{
    __u8 type;

    if (p->l4.proto != IPPROTO_ICMPV6 || bpf_skb_load_bytes(skb, p->l4.off, &type, 1) < 0)
        return 0;
    return type >= ICMPV6_DEST_UNREACH && type <= ICMPV6_PARAMPROB;
}

/* The L4 header of an ICMPv6 error's quoted datagram, `next` at `off` after its IPv6 header:
 * behind a fragment header when the quote is of a first fragment (the node's packet too big
 * about a fragment larger than the pod's MTU); a later fragment's has none (L4_OTHER). */
static __always_inline void quote6_l4(struct __sk_buff *skb, struct l4 *il, __u8 next,
                                      __u32 off)
{
    struct ferry_frag6_hdr fh;

    il->kind = L4_OTHER;
    if (next == IPPROTO_FRAGMENT) {
        if (bpf_skb_load_bytes(skb, off, &fh, sizeof(fh)) < 0 ||
            (fh.frag_off & bpf_htons(0xfff8)))
            return;
        next = fh.nexthdr;
        off += sizeof(fh);
    }
    il->proto = next;
    il->off = off;
    parse_l4(skb, il, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY);
}

/* icmp_err4_eg for ICMPv6: an error that a pod, or the node forwarding to it, sends about a
 * datagram the SNAT translated inbound. The quoted destination address goes back to the node
 * IP (a change the quoted L4 checksum sees through its pseudo-header and the ICMPv6 one as
 * payload) and the quoted destination port to the NAT port; a pod's outer source to the node
 * IP (the ICMPv6 checksum's pseudo-header). Anything else as it is. */
static __always_inline int icmp_err6_eg(struct __sk_buff *skb, struct pkt6 *p)
{
    struct ipv6hdr in;
    struct l4 il = {};
    struct nat_tuple6 fk = {};
    struct nat_entry6 *e;
    struct nat_config *cfg = nat_cfg();
    __u32 quote = p->l4.off + sizeof(struct icmp6hdr);
    __u32 icmp_csum = p->l4.off + offsetof(struct icmp6hdr, icmp6_cksum);
    __s64 diff;

    if (!snat_cfg_ok(cfg) || ip6_zero(cfg->node_ip6) ||
        bpf_skb_load_bytes(skb, quote, &in, sizeof(in)) < 0)
        return TC_ACT_OK;
    quote6_l4(skb, &il, in.nexthdr, quote + sizeof(struct ipv6hdr));
    if (il.kind != L4_PORTS)
        return TC_ACT_OK;
    __builtin_memcpy(fk.saddr, &in.daddr, 16);
    __builtin_memcpy(fk.daddr, &in.saddr, 16);
    fk.sport = il.dport;
    fk.dport = il.sport;
    fk.proto = il.proto;
    e = map_lookup(ferry_nat_fwd6, &fk);
    if (!e)
        return TC_ACT_OK;
    diff = bpf_csum_diff((__u32 *)&in.daddr, 16, e->addr, 16, 0);
    if (diff < 0)
        goto drop;
    if (icmp_quote6(skb, icmp_csum, &il, quote + offsetof(struct ipv6hdr, daddr), e->addr, diff,
                    il.off + 2, il.dport, e->port) < 0)
        goto drop;
    if (!ip6_eq(p->saddr, cfg->node_ip6)) {
        diff = bpf_csum_diff(p->saddr, 16, cfg->node_ip6, 16, 0);
        if (diff < 0 || csum_pseudo6(skb, icmp_csum, diff, 0) < 0 ||
            bpf_skb_store_bytes(skb, IP6_SRC_OFF, cfg->node_ip6, 16, 0) < 0)
            goto drop;
    }
    return icmp_verdict(1);
drop:
    return icmp_verdict(0);
}

static __always_inline int snat6_in(struct __sk_buff *skb)
{
    struct pkt6 p = {};
    struct nat_tuple6 rk = {};
    struct nat_entry6 *e;
    struct nat_config *cfg;
    __u64 now;
    __u8 flags;

    if (parse6(skb, &p) < 0)
        return TC_ACT_OK;
    if (!rnat_kind(&p.l4) && p.l4.proto != IPPROTO_ICMPV6 && p.frag != FRAG_LATER)
        return TC_ACT_OK;
    cfg = nat_cfg();
    if (!snat_cfg_ok(cfg) || ip6_zero(cfg->node_ip6) || !ip6_eq(p.daddr, cfg->node_ip6))
        return TC_ACT_OK;
    if (p.frag != FRAG_NONE) {
        if (frag6(&p) < 0 || !rnat_kind(&p.l4))
            return TC_ACT_OK; /* a later fragment of the node's own traffic, or not ours */
    } else if (!rnat_kind(&p.l4)) {
        return icmp6_is_error(skb, &p) ? icmp_err6_in(skb, &p, cfg) : TC_ACT_OK;
    }
    if (!port_in_range(cfg, p.l4.dport))
        return TC_ACT_OK;
    __builtin_memcpy(rk.saddr, p.saddr, 16);
    __builtin_memcpy(rk.daddr, p.daddr, 16);
    rk.sport = p.l4.sport;
    rk.dport = p.l4.dport;
    rk.proto = p.l4.proto;
    e = map_lookup(ferry_nat_rev6, &rk);
    if (!e) {
        count(STAT_NO_MAPPING);
        return TC_ACT_OK;
    }
    now = nat_clock();
    touch(&e->last_used, now);
    flags = tcp_flags(skb, &p.l4);
    if (unlikely(flags & (TH_FIN | TH_RST)))
        tcp_track(&e->tcp_in, &e->tcp_out, &e->last_used, flags, now);
    if (unlikely(rewrite6(skb, &p, 0, e->addr, e->port) < 0)) {
        count(STAT_DROP_REWRITE);
        return TC_ACT_SHOT;
    }
    count(STAT_XLATE_IN6);
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
