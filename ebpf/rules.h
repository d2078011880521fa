/* Network-rule matcher: first matching rule among up to MAX_RULES, in a
 * nearly constant number of steps (no per-rule loop).
 *
 * Include after pkt.h. bcc rewrites map accesses only in its main file, so
 * the loader must paste this header into the program text instead of leaving
 * an #include (steerd.dataplane.rulemaps.inline_includes does that).
 *
 * How a packet is matched (Python twin: steerd.rules.Layout.lookup):
 *  1. Each field the active rule set uses is looked up once: src/dst in an LPM
 *     trie per family, ports/proto/dscp in arrays, ingress ifindex in a hash.
 *     Each lookup yields an id of an "S" bitmap: rules that constrain this
 *     field and accept the value. Rules that do not constrain the field are in
 *     the field's dense "U" bitmap. So field f accepts rule i iff bit i of
 *     U[f] | S[f] is set.
 *  2. A bitmap of MAX_RULES bits is 64-rule blocks; a summary word has one bit
 *     per non-empty block. ANDing the fields' summaries gives candidate blocks;
 *     in the first candidate block, AND the fields' words; the lowest set bit
 *     is the first (highest-priority) matching rule. An empty AND moves on to
 *     the next candidate block (bounded by the number of blocks).
 *  3. S bitmaps store only their non-empty blocks (rl_words), found by rank:
 *     base[k] + popcount(sum[k] below the block). Sparse bitmaps thus cost a
 *     few words whatever the rule count, and identical bitmaps are stored once.
 *
 * Double buffering: every table has two halves (set 0 and 1, in the key or
 * index). The daemon fills the inactive half, then writes rl_active. A packet
 * reads rl_active once and uses one half throughout, so it never sees a mix of
 * old and new rules, and an apply never reloads or reattaches the program.
 */
#ifndef STEERD_RULES_H
#define STEERD_RULES_H

#ifndef MAX_RULES
#define MAX_RULES 16384
#endif
#ifndef RL_MAX_BITMAPS          /* distinct S bitmaps per set */
#define RL_MAX_BITMAPS 65536
#endif
#ifndef RL_MAX_WORDS            /* stored S bitmap words per set */
#define RL_MAX_WORDS 524288
#endif
#ifndef RL_MAX_PREFIXES         /* per LPM trie, both sets */
#define RL_MAX_PREFIXES 65536
#endif
#define RL_MAX_WANS 16
#define RL_MAX_INGRESS 256
#define RL_NWORDS ((MAX_RULES + 63) / 64)
#define RL_NSUM ((RL_NWORDS + 63) / 64)
#define RL_NF 7
#define RL_NONE 0xffffffffU

/* field numbers = steerd.rules.F_* */
#define RL_F_SRC 0
#define RL_F_DST 1
#define RL_F_SPORT 2
#define RL_F_DPORT 3
#define RL_F_PROTO 4
#define RL_F_DSCP 5
#define RL_F_INGRESS 6

#define RV_NONE 0       /* no rule matched: spread */
#define RV_TUNNEL 1     /* pinned: use tunnel index v->tunnel */
#define RV_SPREAD 2     /* matched, pinned wan unusable, fallback auto: spread */
#define RV_DROP 3       /* matched, pinned wan unusable, fallback drop */

#define RL_FB_AUTO 0
#define RL_FB_DROP 1
#define RL_FB_WAN 2

struct rule_verdict {
    u32 kind;     /* RV_* */
    u32 tunnel;   /* RV_TUNNEL: tunnel index 0..7, else RL_NONE */
    u32 rule;     /* index of the matched rule in the active set, else RL_NONE */
    u32 gen;      /* active set's generation: bumps on every apply and wan-table change */
};

struct rl_cfg {
    u32 gen;
    u32 nrules;
    u32 used;             /* bit f: some rule constrains field f (others are not looked up) */
    u32 ingress_default;  /* S id for interfaces no rule names */
};
struct rl_key4 { u32 prefixlen; u32 set; u8 addr[4]; };    /* prefixlen = 32 + CIDR length */
struct rl_key6 { u32 prefixlen; u32 set; u8 addr[16]; };
struct rl_inkey { u32 set; u32 ifindex; };
struct rl_bm { u64 sum[RL_NSUM]; u32 base[RL_NSUM]; };      /* sparse S bitmap header */
struct rl_ubm { u64 sum[RL_NSUM]; u64 w[RL_NWORDS]; };      /* dense U bitmap */
struct rl_rule { u32 wan; u32 fb_kind; u32 fb_wan; u32 pad; };

BPF_ARRAY(rl_active, u32, 1);
BPF_ARRAY(rl_cfg, struct rl_cfg, 2);
BPF_LPM_TRIE(rl_src4, struct rl_key4, u32, RL_MAX_PREFIXES);
BPF_LPM_TRIE(rl_dst4, struct rl_key4, u32, RL_MAX_PREFIXES);
BPF_LPM_TRIE(rl_src6, struct rl_key6, u32, RL_MAX_PREFIXES);
BPF_LPM_TRIE(rl_dst6, struct rl_key6, u32, RL_MAX_PREFIXES);
BPF_ARRAY(rl_sport, u32, 2 * 65536);             /* [set * 65536 + port] -> S id */
BPF_ARRAY(rl_dport, u32, 2 * 65536);
BPF_ARRAY(rl_proto, u32, 2 * 256);
BPF_ARRAY(rl_dscp, u32, 2 * 64);
BPF_HASH(rl_ingress, struct rl_inkey, u32, RL_MAX_INGRESS);
BPF_ARRAY(rl_bm, struct rl_bm, 2 * RL_MAX_BITMAPS);  /* [set * RL_MAX_BITMAPS + id] */
BPF_ARRAY(rl_words, u64, 2 * RL_MAX_WORDS);          /* [set * RL_MAX_WORDS + i] */
BPF_ARRAY(rl_ubase, struct rl_ubm, 2 * RL_NF);       /* [set * RL_NF + field] */
BPF_ARRAY(rl_rules, struct rl_rule, 2 * MAX_RULES);  /* [set * MAX_RULES + rule] */
BPF_ARRAY(rl_wan, u32, 2 * RL_MAX_WANS);             /* [set * RL_MAX_WANS + wan id] -> tunnel */
BPF_PERCPU_ARRAY(rl_hits, u64, 2 * MAX_RULES);       /* [set * MAX_RULES + rule] */

/* BPF has no popcount/ctz instruction; LLVM's expansion may use a lookup
 * table in .rodata, which bcc cannot load, so spell the SWAR version out. */
static __always_inline u64 rl_popcnt(u64 x)
{
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

static __always_inline u32 rl_ctz(u64 x)   /* x != 0 */
{
    return rl_popcnt((x & -x) - 1);
}

/* Word b (= 64 rules) of U[f] | S[f]; j = b % 64 within summary word k. */
static __always_inline u64 rl_word(const struct rl_bm *bm, const struct rl_ubm *ub,
                                   u32 set, u32 k, u32 j, u32 b)
{
    u64 s = bm->sum[k];
    u64 ws = 0;
    if (s & (1ULL << j)) {
        u32 idx = set * RL_MAX_WORDS + bm->base[k] + (u32)rl_popcnt(s & ((1ULL << j) - 1));
        u64 *wp = rl_words.lookup(&idx);
        if (wp)
            ws = *wp;
    }
    return ws | ub->w[b];
}

/* The S bitmap id for each used field (id 0 = empty bitmap). */
static __always_inline void rl_field_ids(const struct pkt *p, u32 ifindex, u32 set,
                                         const struct rl_cfg *cfg, u32 *sid)
{
    u32 used = cfg->used;
    u32 *id;
    u32 idx;

    if (used & ((1 << RL_F_SRC) | (1 << RL_F_DST))) {
        if (p->family == 4) {
            struct rl_key4 k = {.prefixlen = 64, .set = set};
            if (used & (1 << RL_F_SRC)) {
                __builtin_memcpy(k.addr, p->src, 4);
                id = rl_src4.lookup(&k);
                sid[RL_F_SRC] = id ? *id : 0;
            }
            if (used & (1 << RL_F_DST)) {
                __builtin_memcpy(k.addr, p->dst, 4);
                id = rl_dst4.lookup(&k);
                sid[RL_F_DST] = id ? *id : 0;
            }
        } else {
            struct rl_key6 k = {.prefixlen = 160, .set = set};
            if (used & (1 << RL_F_SRC)) {
                __builtin_memcpy(k.addr, p->src, 16);
                id = rl_src6.lookup(&k);
                sid[RL_F_SRC] = id ? *id : 0;
            }
            if (used & (1 << RL_F_DST)) {
                __builtin_memcpy(k.addr, p->dst, 16);
                id = rl_dst6.lookup(&k);
                sid[RL_F_DST] = id ? *id : 0;
            }
        }
    }
    if (used & (1 << RL_F_SPORT)) {
        idx = set * 65536 + p->sport;
        id = rl_sport.lookup(&idx);
        sid[RL_F_SPORT] = id ? *id : 0;
    }
    if (used & (1 << RL_F_DPORT)) {
        idx = set * 65536 + p->dport;
        id = rl_dport.lookup(&idx);
        sid[RL_F_DPORT] = id ? *id : 0;
    }
    if (used & (1 << RL_F_PROTO)) {
        idx = set * 256 + p->proto;
        id = rl_proto.lookup(&idx);
        sid[RL_F_PROTO] = id ? *id : 0;
    }
    if (used & (1 << RL_F_DSCP)) {
        idx = set * 64 + (p->dscp & 63);
        id = rl_dscp.lookup(&idx);
        sid[RL_F_DSCP] = id ? *id : 0;
    }
    if (used & (1 << RL_F_INGRESS)) {
        struct rl_inkey ik = {.set = set, .ifindex = ifindex};
        id = rl_ingress.lookup(&ik);
        sid[RL_F_INGRESS] = id ? *id : cfg->ingress_default;
    }
}

static __always_inline struct rl_bm *rl_get_bm(u32 set, u32 id)
{
    u32 k = set * RL_MAX_BITMAPS + id;
    return rl_bm.lookup(&k);
}

static __always_inline struct rl_ubm *rl_get_ub(u32 set, u32 f)
{
    u32 k = set * RL_NF + f;
    return rl_ubase.lookup(&k);
}

/* Pointers to field f's S header and U bitmap (bcc allows no map calls in
 * macros, hence the helpers above). */
#define RL_PTRS(f)                                                        \
    struct rl_bm *bm##f = rl_get_bm(set, sid[f]);                         \
    struct rl_ubm *ub##f = rl_get_ub(set, f);                             \
    if (!bm##f || !ub##f)                                                 \
        return RL_NONE;
#define RL_SUM(f)                                                         \
    if (used & (1 << f))                                                  \
        cand &= bm##f->sum[k] | ub##f->sum[k];
#define RL_WORD(f)                                                        \
    if (used & (1 << f))                                                  \
        w &= rl_word(bm##f, ub##f, set, k, j, b);

/* Index of the first matching rule, or RL_NONE. */
static __always_inline u32 rl_first_match(const struct pkt *p, u32 ifindex, u32 set,
                                           const struct rl_cfg *cfg)
{
    u32 sid[RL_NF] = {};
    u32 used = cfg->used;

    rl_field_ids(p, ifindex, set, cfg, sid);
    RL_PTRS(0) RL_PTRS(1) RL_PTRS(2) RL_PTRS(3) RL_PTRS(4) RL_PTRS(5) RL_PTRS(6)

#pragma unroll
    for (u32 k = 0; k < RL_NSUM; k++) {
        u64 cand = ~0ULL;
        RL_SUM(0) RL_SUM(1) RL_SUM(2) RL_SUM(3) RL_SUM(4) RL_SUM(5) RL_SUM(6)
#pragma clang loop unroll(disable)
        for (u32 it = 0; it < 64 && cand; it++) {
            u32 j = rl_ctz(cand) & 63;
            u32 b = k * 64 + j;
            u64 w = ~0ULL;
            if (b >= RL_NWORDS)
                break;
            RL_WORD(0) RL_WORD(1) RL_WORD(2) RL_WORD(3) RL_WORD(4) RL_WORD(5) RL_WORD(6)
            if (w)
                return b * 64 + rl_ctz(w);
            cand &= cand - 1;
        }
    }
    return RL_NONE;
}

static __always_inline u32 rl_wan_tunnel(u32 set, u32 wan)
{
    u32 idx = set * RL_MAX_WANS + (wan & (RL_MAX_WANS - 1));
    u32 *t = rl_wan.lookup(&idx);
    return t ? *t : RL_NONE;
}

/* The rule decision for one packet; ifindex = the interface it arrived on. */
static __always_inline void rules_decide(const struct pkt *p, u32 ifindex, struct rule_verdict *v)
{
    u32 zero = 0;
    u32 *act;
    u32 set, r, idx, t;
    struct rl_cfg *cfg;
    struct rl_rule *rule;
    u64 *hits;

    v->kind = RV_NONE;
    v->tunnel = RL_NONE;
    v->rule = RL_NONE;
    v->gen = 0;
    act = rl_active.lookup(&zero);
    if (!act)
        return;
    set = *act & 1;     /* read once: this packet uses one half throughout */
    cfg = rl_cfg.lookup(&set);
    if (!cfg)
        return;
    v->gen = cfg->gen;
    if (cfg->nrules == 0)
        return;
    r = rl_first_match(p, ifindex, set, cfg);
    if (r >= cfg->nrules || r >= MAX_RULES)
        return;
    idx = set * MAX_RULES + r;
    rule = rl_rules.lookup(&idx);
    if (!rule)
        return;
    hits = rl_hits.lookup(&idx);
    if (hits)
        *hits += 1;         /* per-CPU: no atomics needed */
    v->rule = r;
    t = rl_wan_tunnel(set, rule->wan);
    if (t != RL_NONE) {
        v->kind = RV_TUNNEL;
        v->tunnel = t;
        return;
    }
    if (rule->fb_kind == RL_FB_DROP) {
        v->kind = RV_DROP;
        return;
    }
    if (rule->fb_kind == RL_FB_WAN) {
        t = rl_wan_tunnel(set, rule->fb_wan);
        if (t != RL_NONE) {
            v->kind = RV_TUNNEL;
            v->tunnel = t;
            return;
        }
    }
    v->kind = RV_SPREAD;
}

#endif
