"""The upstream counter at hub scale (issue 13 x 16): 1,000 sites x 3 tunnels.
A table sized from max_sites (6,000 tunnel ids: the old single per-CPU value
refused more than 1,024 with E2BIG), its filter on 3,000 interfaces at once,
packets counted under their tunnel ids, and a reload-like change that touches
only what differs. Timing belongs to tests/bench/hub; here: that it works."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_probe import in_netns, sh  # noqa: E402

from steerd.dataplane.program import tunnel_ids  # noqa: E402
from steerd.dataplane.tc import UPSTREAM_PRIO, attached  # noqa: E402

pytestmark = pytest.mark.kernel
N = 3000


@pytest.fixture
def hub_links(netns):
    """*N* veth pairs u<i>/v<i>, up, in an empty namespace."""
    # no IPv6: links coming up would send their own packets (DAD, router solicitations)
    for key in ("all", "default"):
        sh("ip", "netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    batch = "".join(f"link add u{i} type veth peer name v{i}\nlink set v{i} up\nlink set u{i} up\n"
                    for i in range(N))
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True)
    return netns


def send_frames(ns: str, ifname: str, count: int) -> None:
    """*count* Ethernet frames out of *ifname* (they arrive on its veth peer's ingress)."""
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with s:
        s.bind((ifname, 0))
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"steerd" * 10
        for _ in range(count):
            s.send(frame)


def test_counter_for_a_thousand_sites_on_three_thousand_interfaces(hub_links):
    netns = hub_links
    from steerd.dataplane.upstream import UpstreamCounter
    size = tunnel_ids(1000)
    counter = UpstreamCounter(size)
    try:
        assert counter.size == 6000
        # tunnel ids as a hub numbers them: site x 6 + position, 3 per site
        tunnels = {s * 6 + p: f"u{3 * s + p}" for s in range(1000) for p in range(3)}
        with in_netns(netns):
            assert counter.set_interfaces(tunnels | {5999: "nosuch0"}) == ["nosuch0"]
            sample = ["u0", "u1", "u1500", "u2998", "u2999"]
            assert all(attached(i, UPSTREAM_PRIO) for i in sample)
        busy = {0: 7, 6 * 500 + 1: 30, 6 * 999 + 2: 3}        # tid -> frames
        for tid, n in busy.items():
            send_frames(netns, "v" + tunnels[tid][1:], n)
        tids = sorted(tunnels)
        got = dict(zip(tids, counter.packets(tids)))
        assert {t: n for t, n in got.items() if n} == busy
        reads = dict(zip(busy, counter.read(list(busy))))
        assert all(reads[t][0] == n and reads[t][1] is not None for t, n in busy.items())

        # a reload that drops sites 500.. and moves site 0's wan2 to another
        # interface: only those change; site 1's counts are kept
        send_frames(netns, "v3", 4)                             # site 1, position 0 (tid 6)
        smaller = {t: i for t, i in tunnels.items() if t < 6 * 500}
        smaller[1] = "u2999"
        with in_netns(netns):
            assert counter.set_interfaces(smaller) == []
            assert not attached("u1500", UPSTREAM_PRIO) and not attached("u1", UPSTREAM_PRIO)
            assert attached("u2999", UPSTREAM_PRIO) and attached("u3", UPSTREAM_PRIO)
        assert list(counter.packets([6, 1])) == [4, 0]
        send_frames(netns, "v2999", 2)
        send_frames(netns, "v1", 5)                              # no longer a tunnel
        # tid 1 counts its new interface only; a dropped tunnel id starts again from zero
        assert list(counter.packets([1, 6 * 999 + 2])) == [2, 0]
    finally:
        counter.close()


def test_an_egress_filter_on_and_off_three_thousand_interfaces_in_one_batch(hub_links):
    """What duplication does when its first rule starts copying and its last
    stops (dataplane/duplicate.py): a filter onto every tunnel's egress and
    off again in packed exchanges; the ingress counter beside it stays."""
    from steerd.dataplane.tc import DUP_PRIO, EGRESS_PARENT
    from steerd.dataplane.tcbatch import attach_all, detach_all
    from steerd.dataplane.upstream import UpstreamCounter
    netns = hub_links
    counter = UpstreamCounter(tunnel_ids(1000))
    try:
        with in_netns(netns):
            counter.set_interfaces({i: f"u{i}" for i in range(N)})
            index = {f"u{i}": socket.if_nametoindex(f"u{i}") for i in range(N)}
            # any loaded classifier does for the filter; the counter's is at hand
            assert attach_all(list(index.values()), counter.fd, DUP_PRIO, "dup_egress",
                              EGRESS_PARENT) == {}
            sample = ["u0", "u1500", "u2999"]
            assert all(attached(i, DUP_PRIO, EGRESS_PARENT) for i in sample)
            assert detach_all(list(index.values()), DUP_PRIO, EGRESS_PARENT) == N
            assert not any(attached(i, DUP_PRIO, EGRESS_PARENT) for i in sample)
            assert all(attached(i, UPSTREAM_PRIO) for i in sample)
            assert detach_all([index["u0"]], DUP_PRIO, EGRESS_PARENT) == 0   # none left: no error
    finally:
        counter.close()
