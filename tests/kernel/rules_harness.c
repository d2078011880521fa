/* Minimal tc program around the rule matcher: parse, rules_decide, report.
 * Independent of the steering/tunnel logic so the golden table and the
 * property tests check the matcher alone (and the benchmark has a baseline).
 *
 * ctx in : cb[0] = ifindex to classify as (0: skb->ifindex), since test runs
 *          can only use ifindexes that exist.
 * ctx out: mark = kind << 28 | (tunnel & 0xff) << 20 | (rule & 0xfffff)
 *          cb[1] = gen, cb[2] = rule, cb[3] = tunnel, cb[4] = kind,
 *          priority = the rule's prio
 *          mark = 0xffffffff when the packet is not IPv4/IPv6.
 * rules_harness_nocount: the same through rules_eval(..., 0) (no hit counted). */
#include "pkt.h"
#include "rules.h"

static __always_inline int harness(struct __sk_buff *skb, int count_hits)
{
    struct pkt p = {};
    struct rule_verdict v;
    u32 ifindex = skb->cb[0] ? skb->cb[0] : skb->ifindex;

    if (parse_pkt(skb, &p) < 0) {
        skb->mark = 0xffffffff;
        return TC_ACT_OK;
    }
    if (count_hits)
        rules_decide(&p, ifindex, 0, &v);
    else
        rules_eval(&p, ifindex, 0, &v, 0);
    skb->mark = (v.kind << 28) | ((v.tunnel & 0xff) << 20) | (v.rule & 0xfffff);
    skb->cb[1] = v.gen;
    skb->cb[2] = v.rule;
    skb->cb[3] = v.tunnel;
    skb->cb[4] = v.kind;
    skb->priority = v.prio;
    return TC_ACT_OK;
}

int rules_harness(struct __sk_buff *skb)
{
    return harness(skb, 1);
}

int rules_harness_nocount(struct __sk_buff *skb)
{
    return harness(skb, 0);
}

/* Same harness without the matcher: the benchmark's floor. */
int rules_baseline(struct __sk_buff *skb)
{
    struct pkt p = {};

    if (parse_pkt(skb, &p) < 0) {
        skb->mark = 0xffffffff;
        return TC_ACT_OK;
    }
    skb->mark = p.proto + p.dport;   /* use the parse result so it is not optimised out */
    return TC_ACT_OK;
}
