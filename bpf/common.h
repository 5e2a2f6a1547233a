/* Shared by snat.c and redirect.c: headers and IPv4 parsing by offsets.
 * Parsing uses bpf_skb_load_bytes so that non-linear skbs (GSO, veth) work without a pull. */
#ifndef FERRY_COMMON_H
#define FERRY_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#ifndef AF_INET
#define AF_INET 2
#endif

/* bcc 0.26's helpers.h declares bpf_redirect_neigh with the pre-5.11 three arguments. */
static long (*redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
                              __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))

struct pkt4 {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;     /* network order; ICMP echo: the id in the direction's "port" slot */
    __u16 dport;
    __u32 l4_off;
    __u8 proto;
    __u8 icmp_type;
    __u8 ttl;
    __u8 pad;
};

/* 0: parsed IPv4 (ports filled for TCP/UDP/ICMP echo), -1: not IPv4 or not for us. */
static __always_inline int parse4(struct __sk_buff *skb, struct pkt4 *p)
{
    struct iphdr iph;
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return -1;
    if (bpf_skb_load_bytes(skb, IP_OFF, &iph, sizeof(iph)) < 0)
        return -1;
    if (iph.ihl < 5)
        return -1;
    p->saddr = iph.saddr;
    p->daddr = iph.daddr;
    p->proto = iph.protocol;
    p->ttl = iph.ttl;
    p->l4_off = ETH_HLEN + iph.ihl * 4;
    p->sport = p->dport = 0;
    p->icmp_type = 0;
    /* A non-first fragment has no L4 header: leave it to the stack. */
    if (iph.frag_off & bpf_htons(0x1fff))
        return 0;
    if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
        __u16 ports[2];
        if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
            return -1;
        p->sport = ports[0];
        p->dport = ports[1];
    } else if (p->proto == IPPROTO_ICMP) {
        struct icmphdr ic;
        if (bpf_skb_load_bytes(skb, p->l4_off, &ic, sizeof(ic)) < 0)
            return -1;
        p->icmp_type = ic.type;
        if (ic.type == ICMP_ECHO)
            p->sport = ic.un.echo.id;
        else if (ic.type == ICMP_ECHOREPLY)
            p->dport = ic.un.echo.id;
    }
    return 0;
}

static __always_inline struct nat_config *nat_cfg(void)
{
    __u32 zero = 0;
    return ferry_nat_cfg.lookup(&zero);
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
