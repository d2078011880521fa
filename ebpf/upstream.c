/* steerd upstream counter: tc clsact ingress of the tunnel interfaces.
 *
 * Counts, per tunnel, the packets arriving from the site and stamps the
 * latest arrival (CLOCK_MONOTONIC, the daemon's clock). The daemon reads the
 * whole table with one lookup and makes a tunnel that was receiving and went
 * silent a suspect before its next probe is due (health.py: traffic-driven
 * suspicion). It never changes a packet: TC_ACT_UNSPEC hands it to the next
 * filter on the hook as if this one were not there.
 *
 * The loader passes N_TUNNELS (the table's size).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

struct upstream {
    u64 packets[N_TUNNELS];
    u64 last_ns[N_TUNNELS];   /* bpf_ktime_get_ns() of the latest arrival */
};

/* one element, per CPU: a single lookup returns every tunnel on every CPU */
BPF_PERCPU_ARRAY(upstream, struct upstream, 1);
/* ifindex of a tunnel interface -> tunnel index, filled by the loader */
BPF_HASH(tunnel_of, u32, u32, N_TUNNELS);

int count_upstream(struct __sk_buff *skb)
{
    u32 ifindex = skb->ifindex;
    u32 zero = 0;
    u32 *t = tunnel_of.lookup(&ifindex);
    if (!t)
        return TC_ACT_UNSPEC;
    u32 i = *t;
    struct upstream *u = upstream.lookup(&zero);
    if (!u || i >= N_TUNNELS)
        return TC_ACT_UNSPEC;
    u->packets[i]++;
    u->last_ns[i] = bpf_ktime_get_ns();
    return TC_ACT_UNSPEC;
}
