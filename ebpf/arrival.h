/* Reply on the arrival tunnel (`reply_on_arrival_tunnel: true`, issue 15).
 *
 * record_arrival runs on tc ingress of the tunnels of the sites that ask for
 * it (attached beside the upstream counter, in its own priority band; both
 * hand every packet on unchanged). A packet coming up from the site whose
 * flow has no live entry in the flow table is the flow's first: the entry for
 * its downstream direction (addresses and ports swapped) is written with the
 * tunnel it arrived on and `kept` set. spread() then keeps the flow on that
 * tunnel while it is up, whatever its slot (a kept entry ignores slot
 * versions), and a rule still decides first. A flow opened from this side has
 * its entry already: its replies change nothing.
 *
 * The cost is on the tunnels' ingress only, for the sites with the option;
 * the classifier's per-packet work is unchanged (the `kept` test is made only
 * when a cached flow's slot version differs).
 *
 * Part of steer.c's program (include after its flow table): the entry is the
 * classifier's own, so the two can never disagree on its layout.
 */
#ifndef STEERD_ARRIVAL_H
#define STEERD_ARRIVAL_H

#define NO_SLOT 0xffffffff      /* a kept entry belongs to no slot (not counted as slot load) */

/* ifindex of a tunnel of a site with the option -> its tunnel id */
BPF_HASH(arrival_tunnel, u32, u32, MAX_TUNNELS);

int record_arrival(struct __sk_buff *skb)
{
    u32 ifindex = skb->ifindex;
    u32 *tid = arrival_tunnel.lookup(&ifindex);
    if (!tid)
        return TC_ACT_UNSPEC;
    u32 zero = 0;
    struct steer_cfg *cfg = steer_cfg.lookup(&zero);
    if (!cfg)
        return TC_ACT_UNSPEC;
    struct pkt p = {};
    if (parse_pkt_net(skb, &p) < 0)
        return TC_ACT_UNSPEC;

    struct pkt down = p;        /* the downstream direction of this flow: its flow id */
    __builtin_memcpy(down.src, p.dst, 16);
    __builtin_memcpy(down.dst, p.src, 16);
    down.sport = p.dport;
    down.dport = p.sport;
    struct flow_key fk;
    fk.hash = flow_hash2(&down, &fk.hash2);

    u64 now = now_ns();
    struct flow_val *fv = flowtab.lookup(&fk);
    if (fv && flow_age(fv, now) < (s64)cfg->flow_idle_ns)
        return TC_ACT_UNSPEC;   /* live: the flow was seen first (or placed) already */
    struct flow_val nv = { .tunnel = *tid, .last_ns = now, .slot = NO_SLOT, .kept = 1 };
    flowtab.update(&fk, &nv);
    return TC_ACT_UNSPEC;
}

#endif
