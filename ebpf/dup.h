/* Packet duplication for rules with `duplicate:` (issue 15).
 *
 * Two halves, so that a packet of a class that is not duplicated pays nothing:
 *
 *  1. tc ingress (steer.c): the daemon writes a duplicated rule's wan-table
 *     entry as DUP_FLAG | index into dup_tab instead of a plain tunnel id (tunnel
 *     ids stay below 2^30). steer.c tests that bit on the value it already has;
 *     only a set bit costs the dup_tab lookup here, which gives the tunnel the
 *     packet is routed to and tags the packet with the index. The tag is the
 *     classid's minor: on TC_ACT_OK the kernel copies it into skb->tc_index
 *     (sch_handle_ingress: tc_index = TC_H_MIN(classid); a direct-action
 *     program sets the classid through skb->tc_classid, which cls_bpf zeroes
 *     before each run, so every other packet leaves ingress with tc_index 0),
 *     and tc_index survives routing to the tunnel's egress.
 *  2. tc egress of the tunnels (dup_egress, attached only while some rule
 *     duplicates): a packet without the tag leaves at once; a tagged one is
 *     cloned (bpf_clone_redirect) to the egress of the copy tunnel. Cloning
 *     after routing means the copy is the packet as it leaves (TTL, NAT and the
 *     forward filter already applied) and both tunnels carry the same kind of
 *     packet: on XFRM interfaces an IP packet without a link-layer header; on
 *     the namespace lab's veth stand-ins an Ethernet frame, whose addresses
 *     are rewritten to the copy tunnel's for the clone (and restored after),
 *     else the far end drops it as addressed to another host. An Ethernet
 *     tunnel's frame into an XFRM copy tunnel needs nothing: the kernel strips
 *     the header on a redirect to a device without one.
 *
 * The tag is cleared before cloning, so the copy passes the copy tunnel's own
 * dup_egress untouched.
 *
 * Include after pkt.h and steer.c's maps (PIN, NO_TUNNEL). The loader passes
 * DUP_MAX (entries of dup_tab; index 0 is never used: tc_index 0 = no tag).
 */
#ifndef STEERD_DUP_H
#define STEERD_DUP_H

#define DUP_FLAG 0x40000000     /* in a wan-table value: the rest is a dup_tab index */
#ifndef DUP_MAX
#define DUP_MAX 4096
#endif

struct dup_entry {
    u32 tunnel;        /* tunnel id the packet takes (its mark) */
    u32 src_ifindex;   /* that tunnel's interface: a packet routed elsewhere is not copied */
    u32 ifindex;       /* the copy tunnel's interface; 0: no copy */
    u32 copy_tunnel;   /* the copy tunnel's id (its counter in dup_tx) */
    u32 rewrite;       /* 1: Ethernet on both: write mac into the clone's header */
    u8 mac[12];        /* destination then source address for the clone */
};

struct dup_count {
    u64 packets;
    u64 bytes;
};

BPF_TABLE_PINNED("array", u32, struct dup_entry, dup_tab, DUP_MAX, PIN(dup_tab));
/* copies sent, per dup_tab index (the daemon maps an index to its rule) */
BPF_TABLE_PINNED("percpu_array", u32, struct dup_count, dup_stats, DUP_MAX, PIN(dup_stats));
/* copies sent, per copy tunnel id */
BPF_TABLE_PINNED("percpu_array", u32, struct dup_count, dup_tx, MAX_TUNNELS, PIN(dup_tx));

/* Ingress: a duplicated rule's verdict. Returns the tunnel to mark. */
static __always_inline u32 dup_tag(struct __sk_buff *skb, u32 v)
{
    u32 idx = v & ~DUP_FLAG;
    struct dup_entry *e = dup_tab.lookup(&idx);
    if (!e || e->src_ifindex == 0)     /* released under a packet in flight: spread it */
        return NO_TUNNEL;
    if (e->ifindex)
        skb->tc_classid = idx;      /* becomes skb->tc_index: see the top */
    return e->tunnel;
}

/* Egress of every tunnel while some rule duplicates. */
int dup_egress(struct __sk_buff *skb)
{
    u32 idx = skb->tc_index;
    if (idx == 0)
        return TC_ACT_UNSPEC;
    skb->tc_index = 0;
    struct dup_entry *e = dup_tab.lookup(&idx);
    if (!e || e->ifindex == 0 || e->src_ifindex != skb->ifindex)
        return TC_ACT_UNSPEC;
    u32 len = skb->len;
    u32 copy = e->copy_tunnel;
    long rc;
    if (e->rewrite) {
        u8 old[12];
        if (bpf_skb_load_bytes(skb, 0, old, sizeof(old)) < 0)
            return TC_ACT_UNSPEC;
        if (bpf_skb_store_bytes(skb, 0, e->mac, sizeof(old), 0) < 0)
            return TC_ACT_UNSPEC;
        rc = bpf_clone_redirect(skb, e->ifindex, 0);
        bpf_skb_store_bytes(skb, 0, old, sizeof(old), 0);
    } else {
        rc = bpf_clone_redirect(skb, e->ifindex, 0);
    }
    if (rc == 0) {
        struct dup_count *c = dup_stats.lookup(&idx);
        if (c) {
            c->packets++;
            c->bytes += len;
        }
        c = dup_tx.lookup(&copy);
        if (c) {
            c->packets++;
            c->bytes += len;
        }
    }
    return TC_ACT_UNSPEC;
}

#endif
