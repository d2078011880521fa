/* Network-rule matcher: first matching rule among up to MAX_RULES, in a
 * nearly constant number of steps (no per-rule loop).
 *
 * Include after pkt.h. bcc rewrites map accesses only in its main file, so
 * the loader must paste this header into the program text instead of leaving
 * an #include (steerd.dataplane.rulemaps.inline_includes does that).
 *
 * How a packet is matched (Python twin: steerd.rules.Layout.lookup):
 *  1. Each field the active rule set uses is looked up once: src/dst in a
 *     multibit table per family (16-bit first level, then 4-bit chunks: a few
 *     loads; a kernel LPM trie costs 30..90 ns more at 10,000 prefixes),
 *     ports (per L4 protocol), proto and dscp in arrays, the ingress ifindex
 *     in a hash.
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
#ifndef RL_MAX_BITMAPS          /* distinct S bitmaps per set (power of two) */
#define RL_MAX_BITMAPS 65536
#endif
#ifndef RL_MAX_WORDS            /* stored S bitmap words per set (power of two) */
#define RL_MAX_WORDS 524288
#endif
#ifndef RL_MAX_CHUNKS           /* 16-entry IPv4 table chunks per set (power of two) */
#define RL_MAX_CHUNKS 65536
#endif
#ifndef RL_MAX_CHUNKS6          /* same for IPv6 */
#define RL_MAX_CHUNKS6 65536
#endif
#if (RL_MAX_BITMAPS & (RL_MAX_BITMAPS - 1)) || (RL_MAX_WORDS & (RL_MAX_WORDS - 1)) || \
    (RL_MAX_CHUNKS & (RL_MAX_CHUNKS - 1)) || (RL_MAX_CHUNKS6 & (RL_MAX_CHUNKS6 - 1))
#error "RL_MAX_BITMAPS, RL_MAX_WORDS and RL_MAX_CHUNKS* must be powers of two"
#endif
#define RL_CHUNK 0x80000000U
#define RL_MAX_WANS 16
#ifndef MAX_SITES                  /* hub mode: one wan -> tunnel row per site */
#define MAX_SITES 1
#endif
#define RL_MAX_INGRESS 256
#if MAX_RULES < 64 || (MAX_RULES & (MAX_RULES - 1)) != 0
#error "MAX_RULES must be a power of two >= 64"
#endif
#define RL_NWORDS (MAX_RULES / 64)
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
    u32 prio;     /* matched rule's `priority` (1..255), 0: no rule or no priority (QoS) */
};

struct rl_cfg {
    u32 gen;
    u32 nrules;
    u32 used;             /* bit f: some rule constrains field f (others are not looked up) */
    u32 ingress_default;  /* S id for interfaces no rule names */
};
struct rl_inkey { u32 set; u32 ifindex; };
struct rl_bm { u64 sum[RL_NSUM]; u32 base[RL_NSUM]; };      /* sparse S bitmap header */
/* Big tables are one map value per set (<= 4 MB, the kernel's limit): one
 * lookup per packet, then masked indexing. Per-element lookups inside the
 * search loop would each be a helper call with a NULL branch, and the loop is
 * verified once per distinct caller state (steer.c has ~4): too many states.
 * They are declared as u8 arrays: bcc generates a printf/scanf helper per
 * table that unrolls every array element except for u8 arrays (strings), and
 * a u64[524288] value takes it ~100 s to compile. The R_* macros give typed
 * access (aligned(8): else clang loads each u64 byte by byte). */
struct rl_ubm { u8 raw[8 * RL_NF * (RL_NSUM + RL_NWORDS)] __attribute__((aligned(8))); };  /* sum[NF][NSUM], w[NF][NWORDS] */
#define RL_BM_BYTES ((12 * RL_NSUM + 7) & ~7)   /* sizeof(struct rl_bm); bcc's type
                                                  * printer cannot take sizeof here */
_Static_assert(sizeof(struct rl_bm) == RL_BM_BYTES, "RL_BM_BYTES");
struct rl_bmtab { u8 raw[RL_BM_BYTES * RL_MAX_BITMAPS] __attribute__((aligned(8))); };
struct rl_wordtab { u8 raw[8 * RL_MAX_WORDS] __attribute__((aligned(8))); };
struct rl_chunktab { u8 raw[4 * 16 * RL_MAX_CHUNKS] __attribute__((aligned(8))); };
struct rl_chunktab6 { u8 raw[4 * 16 * RL_MAX_CHUNKS6] __attribute__((aligned(8))); };
_Static_assert(sizeof(struct rl_bmtab) <= (4 << 20), "rl_bmtab > 4 MB: lower RL_MAX_BITMAPS");
_Static_assert(sizeof(struct rl_wordtab) <= (4 << 20), "rl_wordtab > 4 MB: lower RL_MAX_WORDS");
_Static_assert(sizeof(struct rl_chunktab) <= (4 << 20), "rl_chunktab > 4 MB: lower RL_MAX_CHUNKS");
_Static_assert(sizeof(struct rl_chunktab6) <= (4 << 20), "rl_chunktab6 > 4 MB: lower RL_MAX_CHUNKS6");
#define R_USUM(ub, f, k) (((const u64 *)(ub)->raw)[(f) * RL_NSUM + (k)])
#define R_UW(ub, f, b) (((const u64 *)(ub)->raw)[RL_NF * RL_NSUM + (f) * RL_NWORDS + (b)])
#define R_BM(bmt, id) (((const struct rl_bm *)(bmt)->raw) + ((id) & (RL_MAX_BITMAPS - 1)))
#define R_W(wt, i) (((const u64 *)(wt)->raw)[(i) & (RL_MAX_WORDS - 1)])
struct rl_rule { u32 wan; u32 fb_kind; u32 fb_wan; u32 prio; };

BPF_ARRAY(rl_active, u32, 1);
BPF_ARRAY(rl_cfg, struct rl_cfg, 2);
/* Per family: level 1 [(set * 2 + (dst ? 1 : 0)) * 65536 + top 16 bits],
 * then chunks [set].raw[chunk * 16 + next 4 bits]; an entry is an S id, or
 * RL_CHUNK | chunk. */
/* The four big per-entry tables are mmapable: the daemon writes a rule set's
 * 786,432 entries as memory copies (a batch update costs ~0.4 us per entry:
 * 0.3 s of every apply; tests/bench/apply). Each entry sits at an 8-byte
 * stride in the mapping (the kernel rounds array values up to 8 bytes). */
BPF_F_TABLE("array", int, u32, rl_dir4, 4 * 65536, BPF_F_MMAPABLE);
BPF_ARRAY(rl_chunk4, struct rl_chunktab, 2);
BPF_F_TABLE("array", int, u32, rl_dir6, 4 * 65536, BPF_F_MMAPABLE);
BPF_ARRAY(rl_chunk6, struct rl_chunktab6, 2);
/* [(set * 4 + port class) * 65536 + port] -> S id; the class (tcp, udp, sctp,
 * udplite) folds the protocol in: see steerd.rules._port_runs */
BPF_F_TABLE("array", int, u32, rl_sport, 2 * 4 * 65536, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, u32, rl_dport, 2 * 4 * 65536, BPF_F_MMAPABLE);
BPF_ARRAY(rl_proto, u32, 2 * 256);
BPF_ARRAY(rl_dscp, u32, 2 * 64);
BPF_HASH(rl_ingress, struct rl_inkey, u32, RL_MAX_INGRESS);
BPF_ARRAY(rl_bm, struct rl_bmtab, 2);                /* [set], then R_BM(id) */
BPF_ARRAY(rl_words, struct rl_wordtab, 2);           /* [set], then R_W(i) */
BPF_ARRAY(rl_ubase, struct rl_ubm, 2);               /* [set]: U of every field */
BPF_ARRAY(rl_rules, struct rl_rule, 2 * MAX_RULES);  /* [set * MAX_RULES + rule] */
/* [(set * MAX_SITES + site) * RL_MAX_WANS + wan id] -> tunnel id: a rule's wan
 * is the tunnel of that role *of the packet's site* */
BPF_ARRAY(rl_wan, u32, 2 * MAX_SITES * RL_MAX_WANS);
BPF_PERCPU_ARRAY(rl_hits, u64, 2 * MAX_RULES);       /* [set * MAX_RULES + rule] */

/* The fields' S ids of the packet being matched. In a map value, not on the
 * stack: the verifier knows nothing of a value it reads from a map, so the
 * search loop below is verified once whatever branches of rl_field_ids led
 * to it. On the stack each combination of looked-up and zero ids is a state
 * of its own, and kernel 6.1, which prunes them less than 6.18, gives up at
 * 1M instructions (with steer.c's pkt_scratch: 0.10M with this, > 1M without). */
struct rl_sids { u32 sid[RL_NF]; };
BPF_PERCPU_ARRAY(rl_sids, struct rl_sids, 1);

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

/* Word b (= 64 rules) of U[f] | S[f]; j = b % 64 within summary word k.
 * Branch-free: the stored word is fetched whatever, and kept only if the
 * summary says block b is stored (an absent block's rank points elsewhere). */
static __always_inline u64 rl_word(const struct rl_bm *bm, const struct rl_wordtab *wt,
                                   const struct rl_ubm *ub, u32 f, u32 k, u32 j, u32 b)
{
    u64 s = bm->sum[k];
    u32 idx = bm->base[k] + (u32)rl_popcnt(s & ((1ULL << j) - 1));
    u64 ws = R_W(wt, idx) & (0 - ((s >> j) & 1));

    /* the mask is for the verifier (b < RL_NWORDS already holds) */
    return ws | R_UW(ub, f, b & (RL_NWORDS - 1));
}

/* One level below a table entry: v itself unless it points to a chunk.
 * chunks = a chunk table's value as u32s, mask = its entries - 1. */
static __always_inline u32 rl_chunk_step(const u32 *chunks, u32 mask, u32 v, u32 nibble)
{
    if (!(v & RL_CHUNK))
        return v;
    u32 i = ((v & ~RL_CHUNK) << 4) | nibble;

    /* the mask must come after the OR: clang would hoist it above, and the
     * 6.1 verifier loses all bounds of an OR of two bounded scalars */
    asm volatile("" : "+r"(i));
    return chunks[i & mask];
}

/* IPv4 longest-prefix match: the S id of the longest prefix covering addr.
 * Straight-line (a loop with early exits is not unrolled by clang). */
static __always_inline u32 rl_dir4_lookup(u32 set, u32 which, u32 addr_be)
{
    u32 a = bpf_ntohl(addr_be);
    u32 idx = (set * 2 + which) * 65536 + (a >> 16);
    u32 *e = rl_dir4.lookup(&idx);
    struct rl_chunktab *ct;
    u32 v;

    if (!e)
        return 0;
    v = *e;
    if (!(v & RL_CHUNK))
        return v;
    ct = rl_chunk4.lookup(&set);
    if (!ct)
        return 0;
    const u32 *chunks = (const u32 *)ct->raw;
    const u32 mask = RL_MAX_CHUNKS * 16 - 1;

    v = rl_chunk_step(chunks, mask, v, (a >> 12) & 15);
    v = rl_chunk_step(chunks, mask, v, (a >> 8) & 15);
    v = rl_chunk_step(chunks, mask, v, (a >> 4) & 15);
    v = rl_chunk_step(chunks, mask, v, a & 15);
    return v & ~RL_CHUNK;
}

#define RL_STEP6(w, sh) v = rl_chunk_step((const u32 *)ct->raw, RL_MAX_CHUNKS6 * 16 - 1, v, \
                                          ((w) >> (sh)) & 15);
#define RL_STEPS6(w) RL_STEP6(w, 28) RL_STEP6(w, 24) RL_STEP6(w, 20) RL_STEP6(w, 16) \
                     RL_STEP6(w, 12) RL_STEP6(w, 8) RL_STEP6(w, 4) RL_STEP6(w, 0)

/* IPv6 longest-prefix match: up to 28 chunk levels (/128), straight-line;
 * each level is one load from the chunk table's value, no helper call. */
static __always_inline u32 rl_dir6_lookup(u32 set, u32 which, const u32 *addr_be)
{
    u32 w0 = bpf_ntohl(addr_be[0]), w1, w2, w3;
    u32 idx = (set * 2 + which) * 65536 + (w0 >> 16);
    u32 *e = rl_dir6.lookup(&idx);
    struct rl_chunktab6 *ct;
    u32 v;

    if (!e)
        return 0;
    v = *e;
    if (!(v & RL_CHUNK))
        return v;
    ct = rl_chunk6.lookup(&set);
    if (!ct)
        return 0;
    w1 = bpf_ntohl(addr_be[1]);
    w2 = bpf_ntohl(addr_be[2]);
    w3 = bpf_ntohl(addr_be[3]);
    RL_STEP6(w0, 12) RL_STEP6(w0, 8) RL_STEP6(w0, 4) RL_STEP6(w0, 0)
    RL_STEPS6(w1)
    RL_STEPS6(w2)
    RL_STEPS6(w3)
    return v & ~RL_CHUNK;
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
            if (used & (1 << RL_F_SRC))
                sid[RL_F_SRC] = rl_dir4_lookup(set, 0, p->src[0]);
            if (used & (1 << RL_F_DST))
                sid[RL_F_DST] = rl_dir4_lookup(set, 1, p->dst[0]);
        } else {
            if (used & (1 << RL_F_SRC))
                sid[RL_F_SRC] = rl_dir6_lookup(set, 0, p->src);
            if (used & (1 << RL_F_DST))
                sid[RL_F_DST] = rl_dir6_lookup(set, 1, p->dst);
        }
    }
    if (used & ((1 << RL_F_SPORT) | (1 << RL_F_DPORT))) {
        /* port class = steerd.rules.port_class; other protocols have port 0 */
        u32 pc = p->proto == IPPROTO_UDP ? 1 : p->proto == IPPROTO_SCTP ? 2 :
                 p->proto == 136 ? 3 : 0;
        if (used & (1 << RL_F_SPORT)) {
            idx = (set * 4 + pc) * 65536 + p->sport;
            id = rl_sport.lookup(&idx);
            sid[RL_F_SPORT] = id ? *id : 0;
        }
        if (used & (1 << RL_F_DPORT)) {
            idx = (set * 4 + pc) * 65536 + p->dport;
            id = rl_dport.lookup(&idx);
            sid[RL_F_DPORT] = id ? *id : 0;
        }
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

/* Field f's S header, found again at each use from its id: keeping seven
 * pointers (or letting clang hoist their summary words out of the loop)
 * costs stack, and the whole classifier shares 512 bytes. */
#define RL_BM(f) R_BM(bmt, sid[f])
/* No `used` test here: an unused field has S = empty and U = all rules, so
 * ANDing it is a no-op, and testing `used` inside the loop makes the
 * verifier walk every combination of used fields (2^7) per iteration. */
/* The barrier after each field serialises the fields: left alone, clang
 * interleaves all seven popcounts and spills the intermediates (~100 bytes
 * of stack). Threading the table pointers through it means the next field's
 * loads cannot be scheduled before it. */
#define RL_SEQ(x) asm volatile("" : "+r"(x), "+r"(bmt), "+r"(ub), "+r"(wt));
#define RL_SUM(f) cand &= RL_BM(f)->sum[k] | R_USUM(ub, f, k); RL_SEQ(cand)
/* A block whose AND is already empty is left at once: an adversarial set
 * (candidates of two fields in every block that never meet) costs two
 * fields per block instead of seven. */
#define RL_WORD(f) w &= rl_word(RL_BM(f), wt, ub, f, k, j, b); RL_SEQ(w) if (!w) continue;

/* Index of the first matching rule, or RL_NONE. */
static __always_inline u32 rl_first_match(const struct pkt *p, u32 ifindex, u32 set,
                                           const struct rl_cfg *cfg)
{
    u32 zero = 0;
    struct rl_sids *sv = rl_sids.lookup(&zero);
    if (!sv)
        return RL_NONE;
    u32 *sid = sv->sid;

#pragma unroll
    for (int f = 0; f < RL_NF; f++)
        sid[f] = 0;
    rl_field_ids(p, ifindex, set, cfg, sid);
    struct rl_ubm *ub = rl_ubase.lookup(&set);
    struct rl_bmtab *bmt = rl_bm.lookup(&set);
    struct rl_wordtab *wt = rl_words.lookup(&set);
    if (!ub || !bmt || !wt)
        return RL_NONE;

#pragma unroll
    for (u32 k = 0; k < RL_NSUM; k++) {
        u64 cand = ~0ULL;
        /* keep clang from preloading every field's summary for every k
         * (28 values, all spilled to the stack) */
        asm volatile("" : "+r"(bmt), "+r"(ub));
        RL_SUM(0) RL_SUM(1) RL_SUM(2) RL_SUM(3) RL_SUM(4) RL_SUM(5) RL_SUM(6)
#pragma clang loop unroll(disable)
        for (u32 it = 0; it < 64 && cand; it++, cand &= cand - 1) {
            u32 j = rl_ctz(cand) & 63;
            u32 b = k * 64 + j;
            u64 w = ~0ULL;
            if (b >= RL_NWORDS)
                break;
            /* hide b from clang after the check: it would otherwise drop the
             * mask in rl_word as redundant, and the verifier (which tracks a
             * different copy of b) would be left without a bound. Same for
             * bmt: nothing read through it is hoisted out of the loop. */
            asm volatile("" : "+r"(b), "+r"(bmt), "+r"(ub), "+r"(wt));
            RL_WORD(0) RL_WORD(1) RL_WORD(2) RL_WORD(3) RL_WORD(4) RL_WORD(5) RL_WORD(6)
            return b * 64 + rl_ctz(w);
        }
    }
    return RL_NONE;
}

static __always_inline u32 rl_wan_tunnel(u32 set, u32 site, u32 wan)
{
    u32 idx = (set * MAX_SITES + site) * RL_MAX_WANS + (wan & (RL_MAX_WANS - 1));
    u32 *t = rl_wan.lookup(&idx);
    return t ? *t : RL_NONE;
}

/* The rule decision into *v (every exit of the search writes it). */
static __always_inline void rl_decide(const struct pkt *p, u32 ifindex, u32 site,
                                      struct rule_verdict *v, int count_hits)
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
    v->prio = 0;
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
    /* no `r >= MAX_RULES` test: its outcome is known from each search exit's
     * range of r, which makes the verifier track r exactly and verify the
     * rest once per exit; the mask bounds the index instead */
    if (r >= cfg->nrules)
        return;
    idx = set * MAX_RULES + (r & (MAX_RULES - 1));
    rule = rl_rules.lookup(&idx);
    if (!rule)
        return;
    if (count_hits) {
        hits = rl_hits.lookup(&idx);
        if (hits)
            *hits += 1;     /* per-CPU: no atomics needed */
    }
    v->rule = r;
    v->prio = rule->prio;
    t = rl_wan_tunnel(set, site, rule->wan);
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
        t = rl_wan_tunnel(set, site, rule->fb_wan);
        if (t != RL_NONE) {
            v->kind = RV_TUNNEL;
            v->tunnel = t;
            return;
        }
    }
    v->kind = RV_SPREAD;
}

/* Whether the active set has any rule: with none (the common case) the
 * classifier skips the matcher's scratch and verdict copies altogether. */
static __always_inline int rules_in_force(void)
{
    u32 zero = 0;
    u32 *act = rl_active.lookup(&zero);
    if (!act)
        return 0;
    u32 set = *act & 1;
    struct rl_cfg *cfg = rl_cfg.lookup(&set);
    return cfg && cfg->nrules != 0;
}

/* Scratch for the verdict: see rules_decide. */
BPF_PERCPU_ARRAY(rl_scratch, struct rule_verdict, 1);

/* The rule decision for one packet; ifindex = the interface it arrived on;
 * site = the destination's site (0 with one site; < MAX_SITES);
 * count_hits: add the packet to the matched rule's counter (the steering
 * classifier does; a second look at the same packet, e.g. QoS on egress,
 * does not).
 *
 * The verdict passes through a per-CPU map value on its way out. For the
 * verifier, values read from a map are unknown, so the hundreds of exits of
 * the search (one per candidate block) reach the caller's code as one state
 * instead of many. Cost: an inlined per-CPU array lookup and two copies. */
static __always_inline void rules_eval(const struct pkt *p, u32 ifindex, u32 site,
                                       struct rule_verdict *v, int count_hits)
{
    u32 zero = 0;
    struct rule_verdict *out = rl_scratch.lookup(&zero);

    if (!out) {
        v->kind = RV_NONE;
        v->tunnel = RL_NONE;
        v->rule = RL_NONE;
        v->gen = 0;
        v->prio = 0;
        return;
    }
    rl_decide(p, ifindex, site, out, count_hits);
    *v = *out;
}

/* The steering classifier's call: decide and count the hit. */
static __always_inline void rules_decide(const struct pkt *p, u32 ifindex, u32 site,
                                         struct rule_verdict *v)
{
    rules_eval(p, ifindex, site, v, 1);
}

#endif
