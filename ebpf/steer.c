/* steerd classifier: tc clsact ingress of the interfaces where downstream
 * traffic enters. For each packet to a steered destination it picks a tunnel
 * and sets the firewall mark that the tunnel's `ip rule` routes on.
 *
 * Decision order:
 *   1. destination -> site in one LPM lookup (hub mode: every site's ranges in
 *      one trie whose value is the site id); outside all ranges -> untouched
 *   2. network rules (rules.h, evaluated per packet so a rule change or a
 *      pinned tunnel going down takes effect on the next packet)
 *   3. flow affinity (flowtab.h): a live flow keeps the tunnel it started on
 *      while that tunnel is up and its slot was not reassigned (slot version
 *      unchanged)
 *   4. slot table: hash(5-tuple) -> slot -> tunnel, filled by the daemon in
 *      proportion to the weights; one table of nslots per site, all in one
 *      array at site * nslots, so the cost is the same for 1 or 1,000 sites
 *
 * Tunnel ids are site * 6 + the tunnel's position in its site; the mark says
 * the position only (policy routing has one table per position holding every
 * site's ranges via that site's tunnel), so `ip rule`s do not grow with sites.
 *
 * The loader passes: MAX_SLOTS (per site), MAX_SITES, MAX_TUNNELS (ids),
 * MAX_RANGES, FLOW_TABLE_SIZE, PIN_DIR (bpffs directory for pinned maps, so a
 * restarted daemon adopts the live state).
 */
#include "pkt.h"

#define NO_TUNNEL 0xffffffff
#ifndef MAX_TUNNELS             /* the loader passes steerd.abi.MAX_TUNNELS */
#define MAX_TUNNELS 8
#endif

struct steer_cfg {
    u32 nslots;          /* power of two, <= MAX_SLOTS */
    u32 mark_mask;       /* bits of skb->mark that steerd owns */
    u64 flow_idle_ns;    /* a flow idle this long is classified afresh */
};

struct tunnel_info {
    u32 mark;            /* value inside mark_mask */
    u32 up;              /* 0: never send new or cached flows here */
};

struct slot {
    u32 tunnel;
    u32 ver;             /* bumped by the daemon whenever the slot changes hands */
};

struct counters {
    u64 packets;
    u64 bytes;
};

struct lpm4 { u32 prefixlen; u32 addr; };
struct lpm6 { u32 prefixlen; u32 addr[4]; };

#define PIN(name) PIN_DIR "/" #name
#include "flowtab.h"

BPF_TABLE_PINNED("array", u32, struct steer_cfg, steer_cfg, 1, PIN(steer_cfg));
BPF_TABLE_PINNED("array", u32, struct tunnel_info, tunnels, MAX_TUNNELS, PIN(tunnels));
BPF_TABLE_PINNED("array", u32, struct slot, slots, MAX_SLOTS * MAX_SITES, PIN(slots));
BPF_TABLE_PINNED("percpu_array", u32, struct counters, tstats, MAX_TUNNELS, PIN(tstats));
/* destination -> site id (the site's row in slots and rl_wan) */
BPF_TABLE_PINNED("lpm_trie", struct lpm4, u32, dst_site4, MAX_RANGES, PIN(dst_site4), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct lpm6, u32, dst_site6, MAX_RANGES, PIN(dst_site6), BPF_F_NO_PREALLOC);
/* 0: not steered (outside ranges), 1: unparsed/no tunnel, 2: dropped by rule */
BPF_TABLE_PINNED("percpu_array", u32, u64, misc, 4, PIN(misc));

#ifdef WITH_RULES
#include "rules.h"
#endif
#include "dup.h"
#include "arrival.h"

/* The parsed packet. Parsed straight into a map value, not onto the stack:
 * the verifier knows nothing of a value read from a map, so the rule search
 * is verified once instead of once per parse path (IPv4/IPv6, with or
 * without ports...), whose known field values on the stack would keep their
 * states apart (kernel 6.1 gave up at 1M instructions). Parsing into it
 * directly spares the copy from the stack that this used to cost. */
BPF_PERCPU_ARRAY(pkt_scratch, struct pkt, 1);

static __always_inline void bump_misc(u32 i)
{
    u64 *c = misc.lookup(&i);
    if (c)
        (*c)++;
}

#define NO_SITE 0xffffffff

/* The site whose ranges hold the destination, or NO_SITE (not steered). */
static __always_inline u32 dst_site(const struct pkt *p)
{
    u32 *site;
    if (p->family == 4) {
        struct lpm4 k = { .prefixlen = 32, .addr = p->dst[0] };
        site = dst_site4.lookup(&k);
    } else {
        struct lpm6 k6 = { .prefixlen = 128 };
        __builtin_memcpy(k6.addr, p->dst, 16);
        site = dst_site6.lookup(&k6);
    }
    return site && *site < MAX_SITES ? *site : NO_SITE;
}

static __always_inline int tunnel_up(u32 t)
{
    struct tunnel_info *ti = tunnels.lookup(&t);
    return ti && ti->up;
}

/* Slot lookup; if the slot's tunnel is down (the daemon has not reprogrammed
 * yet) probe a few neighbouring slots so the flow still leaves on a live one. */
static __always_inline struct slot *pick_slot(u32 h, u32 nslots, u32 base, u32 *idx)
{
    struct slot *first = NULL;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 s = base + ((h + i * 0x9e3779b1u) & (nslots - 1));
        struct slot *sl = slots.lookup(&s);
        if (!sl)
            return first;
        if (!first) {
            first = sl;
            *idx = s;
        }
        if (tunnel_up(sl->tunnel)) {
            *idx = s;
            return sl;
        }
    }
    return first;
}

static __always_inline u32 spread(const struct pkt *p, const struct steer_cfg *cfg, u32 site)
{
    struct flow_key fk;
    u32 nslots = cfg->nslots;
    if (nslots == 0 || nslots > MAX_SLOTS)
        return NO_TUNNEL;

    fk.hash = flow_hash2(p, &fk.hash2);
    u32 sidx = 0;
    struct slot *sl = pick_slot(fk.hash, nslots, site * nslots, &sidx);
    if (!sl)
        return NO_TUNNEL;

    u64 now = now_ns();
    s64 idle = cfg->flow_idle_ns;
    u32 ci = fk.hash2 & (FLOW_CACHE_SIZE - 1);
    struct flow_cached *fc = flow_cache.lookup(&ci);
    if (fc && fc->id.hash == fk.hash && fc->id.hash2 == fk.hash2 &&
        (fc->ver == sl->ver || fc->kept) && age_of(fc->last_ns, now) < FLOW_REFRESH_NS &&
        age_of(fc->last_ns, now) < idle && tunnel_up(fc->tunnel))
        return fc->tunnel;

    struct flow_val *fv = flowtab.lookup(&fk);
    if (fv && (fv->ver == sl->ver || fv->kept) && flow_age(fv, now) < idle &&
        tunnel_up(fv->tunnel)) {
        if (flow_age(fv, now) > FLOW_REFRESH_NS)
            fv->last_ns = now;
        if (fc)
            flow_cache_put(fc, &fk, fv);
        return fv->tunnel;
    }
    struct flow_val nv = { .tunnel = sl->tunnel, .ver = sl->ver, .last_ns = now, .slot = sidx };
    flowtab.update(&fk, &nv);
    if (fc)
        flow_cache_put(fc, &fk, &nv);
    return sl->tunnel;
}

int steer(struct __sk_buff *skb)
{
    u32 zero = 0;
    struct pkt *p = pkt_scratch.lookup(&zero);

    if (!p)
        return TC_ACT_OK;
    __builtin_memset(p, 0, sizeof(*p));
    if (parse_pkt(skb, p) < 0)
        return TC_ACT_OK;
    u32 site = dst_site(p);
    if (site == NO_SITE) {
        bump_misc(0);
        return TC_ACT_OK;
    }
    struct steer_cfg *cfg = steer_cfg.lookup(&zero);
    if (!cfg)
        return TC_ACT_OK;

    u32 t = NO_TUNNEL;
#ifdef WITH_RULES
    if (rules_in_force()) {
        struct rule_verdict v = {};
        rules_decide(p, skb->ingress_ifindex, site, &v);
        if (v.kind == RV_DROP) {
            bump_misc(2);
            return TC_ACT_SHOT;
        }
        if (v.kind == RV_TUNNEL)   /* a duplicated rule's entry: see dup.h */
            t = v.tunnel & DUP_FLAG ? dup_tag(skb, v.tunnel) : v.tunnel;
    }
#endif
    if (t == NO_TUNNEL)
        t = spread(p, cfg, site);

    struct tunnel_info *ti = tunnels.lookup(&t);
    if (!ti || ti->mark == 0) {
        bump_misc(1);
        return TC_ACT_OK;
    }
    skb->mark = (skb->mark & ~cfg->mark_mask) | ti->mark;

    struct counters *c = tstats.lookup(&t);
    if (c) {
        c->packets++;
        c->bytes += p->len;
    }
    return TC_ACT_OK;
}

/* prio_class[p] = HTB classid for rule priority p; [0] = no rule / no priority
 * = the default band. Filled from steerd.dataplane.qos.prio_class_table(); only
 * the minor is used, the filter's classid supplies the major 5e:. */
BPF_TABLE_PINNED("array", u32, u32, prio_class, 256, PIN(prio_class));

/* cls_bpf direct-action on a capped tunnel's HTB root (5e:), attached by
 * qos.install(). skb->priority set at ingress does not survive IPv4
 * forwarding, so the rules are evaluated again here (hits not counted twice);
 * skb->ingress_ifindex is still the LAN interface. */
int qos_classify(struct __sk_buff *skb)
{
    struct pkt p = {};
    u32 prio = 0;

    if (parse_pkt_net(skb, &p) < 0)
        return TC_ACT_UNSPEC;            /* not IP: HTB's default class */
#ifdef WITH_RULES
    u32 site = dst_site(&p);
    if (site != NO_SITE) {
        struct rule_verdict v = {};
        rules_eval(&p, skb->ingress_ifindex, site, &v, 0);
        prio = v.prio & 0xff;
    }
#endif
    u32 *cid = prio_class.lookup(&prio);
    if (!cid || (*cid & 0xffff) == 0)    /* never 5e:0: HTB's unshaped direct queue */
        return TC_ACT_UNSPEC;
    skb->tc_classid = *cid;              /* a u16 in the kernel: the minor */
    return TC_ACT_OK;
}
