/* Minimal tc program around the rule matcher: parse, rules_decide, report.
 * Independent of the steering/tunnel logic so the golden table and the
 * property tests check the matcher alone (and the benchmark has a baseline).
 *
 * ctx in : cb[0] = ifindex to classify as (0: skb->ifindex), since test runs
 *          can only use ifindexes that exist.
 * ctx out: mark = kind << 28 | (tunnel & 0xff) << 20 | (rule & 0xfffff)
 *          cb[1] = gen, cb[2] = rule, cb[3] = tunnel, cb[4] = kind
 *          mark = 0xffffffff when the packet is not IPv4/IPv6. */
#include "pkt.h"
#include "rules.h"

int rules_harness(struct __sk_buff *skb)
{
    struct pkt p = {};
    struct rule_verdict v;
    u32 ifindex = skb->cb[0] ? skb->cb[0] : skb->ifindex;

    if (parse_pkt(skb, &p) < 0) {
        skb->mark = 0xffffffff;
        return TC_ACT_OK;
    }
    rules_decide(&p, ifindex, &v);
    skb->mark = (v.kind << 28) | ((v.tunnel & 0xff) << 20) | (v.rule & 0xfffff);
    skb->cb[1] = v.gen;
    skb->cb[2] = v.rule;
    skb->cb[3] = v.tunnel;
    skb->cb[4] = v.kind;
    return TC_ACT_OK;
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
