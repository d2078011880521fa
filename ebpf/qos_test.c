/* Test harness for steerd.dataplane.qos: a stand-in for the steering program's
 * qos_classify until that lands. Attached by qos.install() as the cls_bpf
 * direct-action filter on the HTB root (5e:) of a tunnel's egress.
 *
 * It is qos_classify with the network rules replaced by two small tables the
 * tests fill:
 *     port_prio[dst port]  -> rule priority 1..255  (TCP/UDP, first fragment)
 *     proto_prio[L4 proto] -> rule priority 1..255  (e.g. ICMP)
 * and the one table the real program shares:
 *     prio_class[priority] -> HTB classid  (index 0: unmatched -> default band)
 * filled from steerd.dataplane.qos.prio_class_table().
 *
 * qos_parse_net() is the parse_pkt_net() proposed for pkt.h: parse_pkt reads
 * from skb->data and expects an Ethernet header, but at tc egress of an XFRM
 * interface (ARPHRD_NONE) skb->data is the IP header. Reading relative to the
 * network header works on both (veth in the lab, xfrm on the gateway).
 *
 * Build: bcc, cflags -I<ebpf dir> (for pkt.h).
 */
#include "pkt.h"

BPF_ARRAY(prio_class, u32, 256);
BPF_HASH(port_prio, u16, u32, 256);
BPF_ARRAY(proto_prio, u32, 256);
BPF_ARRAY(qos_seen, u64, 256);       /* packets per priority index (0 = unmatched) */
BPF_ARRAY(qos_iif, u32, 1);          /* skb->ingress_ifindex of the last forwarded packet
                                        (the rules' ingress field at egress: must be the LAN
                                        side; the gateway's own packets, e.g. IPv6 ND, have 0) */

int qos_test_classify(struct __sk_buff *skb)
{
    struct pkt p = {};
    u32 prio = 0;

    if (parse_pkt_net(skb, &p) < 0)
        return TC_ACT_UNSPEC;            /* not IP: HTB's default class */
    /* --- stand-in for: rules_eval(&p, skb->ingress_ifindex, &v, 0); prio = v.prio */
    u32 zero = 0, iif = skb->ingress_ifindex;
    if (iif)
        qos_iif.update(&zero, &iif);
    u32 proto = p.proto;
    u32 *pp = proto_prio.lookup(&proto);
    if (pp && *pp)
        prio = *pp;
    if (p.dport) {
        u16 port = p.dport;
        u32 *pr = port_prio.lookup(&port);
        if (pr)
            prio = *pr;
    }
    prio &= 0xff;
    u64 *seen = qos_seen.lookup(&prio);
    if (seen)
        __sync_fetch_and_add(seen, 1);
    /* --- end of stand-in */
    u32 *cid = prio_class.lookup(&prio);
    /* Minor 0 would be 5e:0, HTB's unshaped direct queue: never set it. No
     * decision (TC_ACT_UNSPEC) sends the packet to HTB's default class. */
    if (!cid || (*cid & 0xffff) == 0)
        return TC_ACT_UNSPEC;
    /* Only the low 16 bits are kept (qdisc_skb_cb.tc_classid is a u16); the
     * filter's classid (5e:) supplies the major. */
    skb->tc_classid = *cid;
    return TC_ACT_OK;
}
