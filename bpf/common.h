/* Shared by snat.c and redirect.c: headers and IPv4/IPv6 parsing by offsets.
 * Parsing reads the linear part directly and falls back to bpf_skb_load_bytes (pkt_load), so
 * that non-linear skbs (GSO, veth) work without a pull.
 * The L4 part (ports, ICMP/ICMPv6 echo id) is parsed and described the same way for both
 * families (struct l4), so the NAT's port and checksum code is written once. */
#ifndef FERRY_COMMON_H
#define FERRY_COMMON_H

/* One source, two builds (see loader/layouts.py for the generated part):
 *  bcc: the generated layouts are prepended (FERRY_BCC defined), headers come from the
 *    kernel tree, bcc's helpers.h is implicit;
 *  clang -target bpf: Debian's uapi headers, libbpf's bpf_helpers.h and the generated
 *    ferry_layouts.h (BTF-defined maps in .maps).
 * Shared code uses only map_lookup/map_update/map_delete(map, ...) and the libbpf helper
 * names; programs are declared with FERRY_PROG(name). */
#ifdef FERRY_BCC
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/icmpv6.h>
/* bcc rewrites map calls only outside macros: <map>__lookup etc. are generated functions. */
#define map_lookup(map, key) map##__lookup(key)
#define map_update(map, key, value, flags) map##__update(key, value, flags)
#define map_delete(map, key) map##__delete(key)
/* bcc names the program's section itself (by function name). */
#define FERRY_PROG(name) int name(struct __sk_buff *skb)
#else
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmp.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "ferry_layouts.h"
#define map_lookup(map, key) bpf_map_lookup_elem(&(map), key)
#define map_update(map, key, value, flags) bpf_map_update_elem(&(map), key, value, flags)
#define map_delete(map, key) bpf_map_delete_elem(&(map), key)
/* Every program in section "tc" (libbpf's name for SCHED_CLS), found by its symbol. */
#define FERRY_PROG(name) SEC("tc") int name(struct __sk_buff *skb)
char _license[] SEC("license") = "GPL";
#endif

/* Branch hints: clang lays the established-flow path out straight and moves the rare cases
 * (allocation, fragments, ICMP errors) out of its way, so that it spans fewer i-cache lines. */
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#ifndef AF_INET
#define AF_INET 2
#endif

/* bcc 0.26's helpers.h declares bpf_redirect_neigh with the pre-5.11 three arguments. */
static long (*redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
                              __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* The NAT's clock: CLOCK_MONOTONIC at tick resolution (5.11+), no clocksource read per packet;
 * its timestamps are compared with seconds-long timeouts and a 0.5 s reuse delay only. Declared
 * here for both builds (bcc 0.26's helpers.h lacks it). */
static __u64 (*nat_clock)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IP6_SRC_OFF (ETH_HLEN + offsetof(struct ipv6hdr, saddr))
#define IP6_DST_OFF (ETH_HLEN + offsetof(struct ipv6hdr, daddr))
#define IP6_EXT_MAX 4 /* extension headers skipped before giving up (a bounded loop) */

/* What the NAT can translate: TCP/UDP ports, or an ICMP/ICMPv6 echo id. */
enum { L4_OTHER = 0, L4_PORTS, L4_ECHO_REQ, L4_ECHO_REPLY };

struct l4 {
    __u16 sport;     /* network order; ICMP echo: the id in the direction's "port" slot */
    __u16 dport;
    __u32 off;       /* offset of the L4 header */
    __u8 proto;
    __u8 kind;       /* L4_* */
    __u8 pad[2];
};

/* IPv4 fragments: the first carries the L4 header, the later ones only payload. */
enum { FRAG_NONE = 0, FRAG_FIRST, FRAG_LATER };

struct pkt4 {
    __u32 saddr;
    __u32 daddr;
    __u8 ttl;
    __u8 frag;       /* FRAG_* */
    __u16 id;        /* the IP id, which names a fragmented datagram */
    __u16 check;     /* the IP header checksum as parsed */
    __u8 pad[2];
    struct l4 l4;
};

struct pkt6 {
    __u32 saddr[4];
    __u32 daddr[4];
    __u32 id;        /* a fragment header's identification */
    __u8 frag;       /* FRAG_* */
    __u8 pad[3];
    struct l4 l4;
};

/* The IPv6 fragment header (the kernel's struct frag_hdr is not uapi). */
struct ferry_frag6_hdr {
    __u8 nexthdr;
    __u8 reserved;
    __u16 frag_off;  /* offset in 8-byte units << 3, the M flag in bit 0 */
    __u32 identification;
};

/* The verifier keeps a bounds check on a packet pointer only if its largest offset plus the
 * access stays within 64 KiB; headers further in than 16 KiB (none in practice) take the
 * helper. */
#define PKT_DIRECT_MAX 0x3fff

/* Read a header into *dst (its type gives the size): straight from the linear part of the skb
 * when it is there, as headers almost always are (plain loads, no helper call), else copied by
 * bpf_skb_load_bytes. Reads only: a direct packet write would make the verifier add a prologue
 * that unclones every cloned skb at entry, the node's own TCP included, written to or not. */
#define pkt_load(skb, off, dst) ({                                                         \
    void *data_ = (void *)(long)(skb)->data, *end_ = (void *)(long)(skb)->data_end;      \
    __u32 off_ = (off);                                                                    \
    typeof(dst) at_ = data_ + (off_ & PKT_DIRECT_MAX);                                     \
    off_ <= PKT_DIRECT_MAX && (void *)(at_ + 1) <= end_                                    \
        ? (*(dst) = *at_, 0) : bpf_skb_load_bytes(skb, off_, dst, sizeof(*(dst))); })

struct l4_ports {
    __u16 sport;
    __u16 dport;
};

/* Ports or echo id of l4->proto at l4->off; `icmp` is the family's ICMP protocol with its echo
 * request/reply types. A read failure leaves kind L4_OTHER: the packet is not translated. */
static __always_inline void parse_l4(struct __sk_buff *skb, struct l4 *l4, __u8 icmp,
                                     __u8 echo_req, __u8 echo_reply)
{
    l4->sport = l4->dport = 0;
    l4->kind = L4_OTHER;
    if (l4->proto == IPPROTO_TCP || l4->proto == IPPROTO_UDP) {
        struct l4_ports ports;
        if (pkt_load(skb, l4->off, &ports) < 0)
            return;
        l4->sport = ports.sport;
        l4->dport = ports.dport;
        l4->kind = L4_PORTS;
    } else if (l4->proto == icmp) {
        struct icmphdr ic; /* ICMPv6 echo has the same layout: type, code, csum, id, seq */
        if (pkt_load(skb, l4->off, &ic) < 0)
            return;
        if (ic.type == echo_req) {
            l4->sport = ic.un.echo.id;
            l4->kind = L4_ECHO_REQ;
        } else if (ic.type == echo_reply) {
            l4->dport = ic.un.echo.id;
            l4->kind = L4_ECHO_REPLY;
        }
    }
}

/* 0: parsed IPv4 (l4 filled), -1: not IPv4 or not for us. */
static __always_inline int parse4(struct __sk_buff *skb, struct pkt4 *p)
{
    struct iphdr iph;
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return -1;
    if (pkt_load(skb, IP_OFF, &iph) < 0)
        return -1;
    if (iph.ihl < 5)
        return -1;
    p->saddr = iph.saddr;
    p->daddr = iph.daddr;
    p->ttl = iph.ttl;
    p->check = iph.check;
    p->l4.proto = iph.protocol;
    p->l4.off = ETH_HLEN + iph.ihl * 4;
    p->l4.sport = p->l4.dport = 0;
    p->l4.kind = L4_OTHER;
    p->id = iph.id;
    p->frag = (iph.frag_off & bpf_htons(0x1fff)) ? FRAG_LATER :
              (iph.frag_off & bpf_htons(0x2000)) ? FRAG_FIRST : FRAG_NONE;
    /* A later fragment has no L4 header: kind L4_OTHER (snat.c finds its ports by id). */
    if (p->frag == FRAG_LATER)
        return 0;
    parse_l4(skb, &p->l4, IPPROTO_ICMP, ICMP_ECHO, ICMP_ECHOREPLY);
    return 0;
}

/* 0: parsed IPv6 (l4 filled), -1: not IPv6. Hop-by-hop and destination options are skipped
 * (at most IP6_EXT_MAX); a fragment header ends the walk (the first fragment's L4 header
 * follows it, a later fragment has none: L4_OTHER, snat.c finds its ports by id); anything
 * else (routing, ...) stays L4_OTHER: the stack's. */
static __always_inline int parse6(struct __sk_buff *skb, struct pkt6 *p)
{
    struct ipv6hdr ip6;
    struct ipv6_opt_hdr opt;
    __u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
    __u8 next;
    int i;

    if (skb->protocol != bpf_htons(ETH_P_IPV6))
        return -1;
    if (pkt_load(skb, IP_OFF, &ip6) < 0)
        return -1;
    __builtin_memcpy(p->saddr, &ip6.saddr, 16);
    __builtin_memcpy(p->daddr, &ip6.daddr, 16);
    next = ip6.nexthdr;
    p->frag = FRAG_NONE;
    for (i = 0; i < IP6_EXT_MAX; i++) {
        if (next != IPPROTO_HOPOPTS && next != IPPROTO_DSTOPTS)
            break;
        if (pkt_load(skb, off, &opt) < 0)
            return -1;
        next = opt.nexthdr;
        off += (opt.hdrlen + 1) * 8;
    }
    if (next == IPPROTO_FRAGMENT) {
        struct ferry_frag6_hdr fh;
        if (pkt_load(skb, off, &fh) < 0)
            return -1;
        next = fh.nexthdr;
        off += sizeof(fh);
        p->id = fh.identification;
        p->frag = (fh.frag_off & bpf_htons(0xfff8)) ? FRAG_LATER : FRAG_FIRST;
    }
    p->l4.proto = next;
    p->l4.off = off;
    p->l4.sport = p->l4.dport = 0;
    p->l4.kind = L4_OTHER;
    if (p->frag == FRAG_LATER)
        return 0;
    parse_l4(skb, &p->l4, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY);
    return 0;
}

static __always_inline int ip6_eq(const __u32 *a, const __u32 *b)
{
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

static __always_inline int ip6_zero(const __u32 *a)
{
    return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline struct nat_config *nat_cfg(void)
{
    __u32 zero = 0;
    return map_lookup(ferry_nat_cfg, &zero);
}

/* Routers decrement the TTL; a redirect bypasses the stack that would have done it. */
static __always_inline int dec_ttl(struct __sk_buff *skb, __u8 ttl)
{
    __u8 nttl = ttl - 1;
    if (ttl <= 1)
        return -1;
    bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons((__u16)ttl << 8),
                        bpf_htons((__u16)nttl << 8), 2);
    bpf_skb_store_bytes(skb, IP_TTL_OFF, &nttl, 1, 0);
    return 0;
}

#endif
