/* Flow affinity table, each CPU's cache of it, and the clock they age flows
 * with (steer.c's spread).
 *
 * Include after pkt.h, with PIN() defined (the table is pinned: a restarted
 * daemon keeps every live flow where it is).
 *
 * Key: the flow's 64-bit id, flow_hash2's two lanes, not the 40-byte
 * 5-tuple: jhash and compare of 8 bytes instead of 40 cost ~15 ns less per
 * packet (tests/bench/packet). The daemon reads values only (live flows per
 * tunnel and slot), never keys. Two live flows share an entry only if both
 * lanes collide (about n^2 / 2^65: 1e-10 for a full table of 65,536 flows),
 * and then they hash to the same slot anyway (same low lane): sharing only
 * lets the later flow follow the earlier one's tunnel.
 */
#ifndef STEERD_FLOWTAB_H
#define STEERD_FLOWTAB_H

struct flow_key {
    u32 hash;            /* flow_hash: the slot index comes from it */
    u32 hash2;           /* the second lane */
};

struct flow_val {
    u32 tunnel;
    u32 ver;             /* slot version when the flow was placed */
    u64 last_ns;         /* CLOCK_MONOTONIC, refreshed about once a second */
    u32 slot;            /* lets the daemon count live flows per slot */
    u32 kept;            /* 1: seen first coming up a tunnel (arrival.h): stays there while it is up */
};

/* Named flowtab since the key became the flow id: a pinned map keeps its
 * key size, so the 5-tuple table of older versions ("flows") cannot be
 * adopted (steerd.dataplane.program.RETIRED_PINS removes it at start). */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct flow_val, flowtab, FLOW_TABLE_SIZE, PIN(flowtab));

/* bpf_ktime_get_ns costs ~30 ns per call here (a helper call and a clock
 * read); jiffies64 is inlined by the verifier into one load. So each CPU
 * reads the clock once per tick and reuses it: the flow clock lags by at most
 * a tick (1-10 ms), against idle timeouts of seconds. */
struct clock_cache {
    u64 jiffies;
    u64 ns;
};
BPF_PERCPU_ARRAY(clock_cache, struct clock_cache, 1);

static __always_inline u64 now_ns(void)
{
    u32 zero = 0;
    struct clock_cache *c = clock_cache.lookup(&zero);
    u64 j = bpf_jiffies64();

    if (!c)
        return bpf_ktime_get_ns();
    if (c->jiffies != j) {
        c->jiffies = j;
        c->ns = bpf_ktime_get_ns();
    }
    return c->ns;
}

/* Age of a stamp; signed: another CPU's clock may be a tick ahead of ours. */
static __always_inline s64 age_of(u64 last_ns, u64 now)
{
    return (s64)(now - last_ns);
}

static __always_inline s64 flow_age(const struct flow_val *fv, u64 now)
{
    return age_of(fv->last_ns, now);
}

/* A live flow's entry is refreshed (last_ns) at most this often: a write per
 * packet would cost cache lines, and the daemon needs no finer age. */
#define FLOW_REFRESH_NS 1000000000ll

/* Each CPU's front of the flow table: a hash-map lookup costs ~35 ns here
 * (tests/bench/packet), a per-CPU array entry ~2. The table stays the truth
 * (the daemon reads it; restarts adopt it): an entry here is a copy of a
 * table entry, used for at most FLOW_REFRESH_NS after that entry's last
 * refresh, so the table is still looked up, and refreshed, about once a
 * second per live flow and CPU. Direct-mapped by the flow id's second lane:
 * two flows on one index take turns through the table, as without it. */
#ifndef FLOW_CACHE_SIZE
#define FLOW_CACHE_SIZE 4096
#endif
struct flow_cached {
    struct flow_key id;
    u32 tunnel;
    u32 ver;
    u64 last_ns;         /* the table entry's last_ns */
    u32 kept;            /* the table entry's kept */
    u32 pad;
};
BPF_PERCPU_ARRAY(flow_cache, struct flow_cached, FLOW_CACHE_SIZE);

static __always_inline void flow_cache_put(struct flow_cached *fc, const struct flow_key *fk,
                                           const struct flow_val *fv)
{
    fc->id = *fk;
    fc->tunnel = fv->tunnel;
    fc->ver = fv->ver;
    fc->last_ns = fv->last_ns;
    fc->kept = fv->kept;
}

#endif
