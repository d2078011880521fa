/* steerd upstream counter: tc clsact ingress of the tunnel interfaces.
 *
 * Counts, per tunnel, the packets arriving from the site and stamps the
 * latest arrival (CLOCK_MONOTONIC, the daemon's clock). The daemon maps the
 * table into its memory and reads it without a system call, whatever the
 * number of tunnels (health.py: traffic-driven suspicion). It never changes
 * a packet: TC_ACT_UNSPEC hands it to the next filter on the hook as if this
 * one were not there.
 *
 * The loader passes N_TUNNELS (the table's size: the classifier's tunnel ids,
 * site id x 6 + position, so a tunnel keeps its entry across reloads).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

struct upstream {
    u64 packets;
    u64 last_ns;     /* bpf_ktime_get_ns() of the latest arrival */
};

/* One entry per tunnel id, shared by the CPUs (mmap needs a plain array): a
 * tunnel's packets are one ESP flow, decrypted on one CPU at a time, so the
 * atomic add rarely contends. */
BPF_F_TABLE("array", u32, struct upstream, upstream, N_TUNNELS, BPF_F_MMAPABLE);
/* ifindex of a tunnel interface -> tunnel id, filled by the loader */
BPF_HASH(tunnel_of, u32, u32, N_TUNNELS);

int count_upstream(struct __sk_buff *skb)
{
    u32 ifindex = skb->ifindex;
    u32 *t = tunnel_of.lookup(&ifindex);
    if (!t)
        return TC_ACT_UNSPEC;
    u32 i = *t;
    struct upstream *u = upstream.lookup(&i);
    if (!u)
        return TC_ACT_UNSPEC;
    __sync_fetch_and_add(&u->packets, 1);
    u->last_ns = bpf_ktime_get_ns();
    return TC_ACT_UNSPEC;
}
