/* Packet parsing shared by the steering classifier and the rule matcher.
 *
 * Fills a struct pkt from an skb at tc ingress. Addresses stay in network byte
 * order (as on the wire); ports are converted to host order so that port
 * ranges compare naturally. Fragments after the first carry no ports: they
 * are parsed with ports 0 (the flow hash then keeps them on one tunnel per
 * address pair only, which is the best a stateless classifier can do).
 */
#ifndef STEERD_PKT_H
#define STEERD_PKT_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

struct pkt {
    u32 family;       /* 4 or 6 */
    u32 src[4];       /* IPv4 uses src[0]; network byte order */
    u32 dst[4];
    u16 sport;        /* host byte order, 0 when the protocol has no ports */
    u16 dport;
    u8 proto;         /* L4 protocol (IPv6: first header after the fixed one) */
    u8 dscp;          /* 0..63 */
    u16 pad;
    u32 len;          /* skb->len, for byte counters */
};

struct ports { u16 sport; u16 dport; };

/* Protocols whose first 4 L4 bytes are source and destination port. */
static __always_inline int has_l4_ports(u8 proto)
{
    return proto == IPPROTO_TCP || proto == IPPROTO_UDP ||
           proto == IPPROTO_SCTP || proto == 136 /* UDP-Lite */;
}

/* Returns 0 when the packet is IPv4 or IPv6 and *p is filled, -1 otherwise. */
static __always_inline int parse_pkt(struct __sk_buff *skb, struct pkt *p)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    u32 l4off;
    int has_ports = 0;

    if ((void *)(eth + 1) > end)
        return -1;
    p->len = skb->len;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return -1;
        p->family = 4;
        p->src[0] = ip->saddr;
        p->dst[0] = ip->daddr;
        p->proto = ip->protocol;
        p->dscp = ip->tos >> 2;
        l4off = sizeof(*eth) + ip->ihl * 4;
        /* only the first fragment carries the L4 header */
        has_ports = (ip->frag_off & bpf_htons(0x1fff)) == 0;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return -1;
        p->family = 6;
        __builtin_memcpy(p->src, &ip6->saddr, 16);
        __builtin_memcpy(p->dst, &ip6->daddr, 16);
        p->proto = ip6->nexthdr;
        p->dscp = ((ip6->priority << 4) | (ip6->flow_lbl[0] >> 4)) >> 2;
        l4off = sizeof(*eth) + sizeof(*ip6);
        has_ports = 1;
    } else {
        return -1;
    }
    if (has_ports && has_l4_ports(p->proto)) {
        struct ports pt;
        if (bpf_skb_load_bytes(skb, l4off, &pt, sizeof(pt)) == 0) {
            p->sport = bpf_ntohs(pt.sport);
            p->dport = bpf_ntohs(pt.dport);
        }
    }
    return 0;
}

/* parse_pkt for tc egress: reads relative to the network header, so it works
 * with an Ethernet header in front (veth, the lab) and without one (an XFRM
 * interface is ARPHRD_NONE: at its tc egress skb->data is the IP header). */
static __always_inline int parse_pkt_net(struct __sk_buff *skb, struct pkt *p)
{
    u32 l4off;
    int has_ports = 0;

    p->len = skb->len;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET) < 0)
            return -1;
        p->family = 4;
        p->src[0] = ip.saddr;
        p->dst[0] = ip.daddr;
        p->proto = ip.protocol;
        p->dscp = ip.tos >> 2;
        l4off = ip.ihl * 4;
        has_ports = (ip.frag_off & bpf_htons(0x1fff)) == 0;
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes_relative(skb, 0, &ip6, sizeof(ip6), BPF_HDR_START_NET) < 0)
            return -1;
        p->family = 6;
        __builtin_memcpy(p->src, &ip6.saddr, 16);
        __builtin_memcpy(p->dst, &ip6.daddr, 16);
        p->proto = ip6.nexthdr;
        p->dscp = ((ip6.priority << 4) | (ip6.flow_lbl[0] >> 4)) >> 2;
        l4off = sizeof(ip6);
        has_ports = 1;
    } else {
        return -1;
    }
    if (has_ports && has_l4_ports(p->proto)) {
        struct ports pt;
        if (bpf_skb_load_bytes_relative(skb, l4off, &pt, sizeof(pt), BPF_HDR_START_NET) == 0) {
            p->sport = bpf_ntohs(pt.sport);
            p->dport = bpf_ntohs(pt.dport);
        }
    }
    return 0;
}

/* Flow hash: the Python twin is steerd/testing/flowhash.py, and the constants
 * are mirrored in steerd/abi.py (tests/unit/test_abi.py compares them).
 * Words are host-order values of the big-endian address words. */
#define FH_SEED 0x5eed5eed      /* initial value, xor the L4 protocol */
#define FH_MUL 0x9e3779b1       /* per-word multiply */
#define FH_ROT 13               /* per-word rotate left */
#define FH_FMIX1 0x85ebca6b     /* murmur3 finaliser multipliers */
#define FH_FMIX2 0xc2b2ae35

/* Second lane of the flow id (flowtab.h): other seed, multiplier and
 * rotation over the same words. Only the C computes it (the daemon never
 * reads flow table keys), so it has no Python twin. */
#define FID_SEED 0x1b873593
#define FID_MUL 0xcc9e2d51
#define FID_ROT 15

static __always_inline u32 fh_mix(u32 h, u32 w)
{
    h ^= w;
    h *= FH_MUL;
    return (h << FH_ROT) | (h >> (32 - FH_ROT));
}

static __always_inline u32 fid_mix(u32 h, u32 w)
{
    h ^= w;
    h *= FID_MUL;
    return (h << FID_ROT) | (h >> (32 - FID_ROT));
}

/* murmur3 finaliser: spreads the low bits used for the slot index */
static __always_inline u32 fh_final(u32 h)
{
    h ^= h >> 16;
    h *= FH_FMIX1;
    h ^= h >> 13;
    h *= FH_FMIX2;
    h ^= h >> 16;
    return h;
}

/* flow_hash and, in *second, the flow id's second lane: both lanes in one
 * pass (independent multiplies run side by side: ~2 ns more than one lane). */
static __always_inline u32 flow_hash2(const struct pkt *p, u32 *second)
{
    u32 w[9] = {
        bpf_ntohl(p->src[0]), bpf_ntohl(p->src[1]), bpf_ntohl(p->src[2]), bpf_ntohl(p->src[3]),
        bpf_ntohl(p->dst[0]), bpf_ntohl(p->dst[1]), bpf_ntohl(p->dst[2]), bpf_ntohl(p->dst[3]),
        ((u32)p->sport << 16) | p->dport,
    };
    u32 h = FH_SEED ^ p->proto;
    u32 g = FID_SEED ^ p->proto;

#pragma unroll
    for (int i = 0; i < 9; i++) {
        h = fh_mix(h, w[i]);
        g = fid_mix(g, w[i]);
    }
    *second = fh_final(g);
    return fh_final(h);
}

static __always_inline u32 flow_hash(const struct pkt *p)
{
    u32 unused;
    return flow_hash2(p, &unused);
}

#endif
