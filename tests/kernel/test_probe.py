"""Prober + reflector on real packets: two namespaces joined by two veth
"tunnels" (same MAC on both ends, ARP off: point-to-point like an XFRM
interface). Needs root. Names are prefixed hp- so that other tests' labs
never collide with these."""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest

from steerd.config import HealthConfig, ProbeConfig
from steerd.health import LinkMonitor
from steerd.probe import MAGIC, Prober, echo_packet

pytestmark = pytest.mark.kernel

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
LINKS = {  # gw side if, site side if, gw addr, site addr, second site addr, v6 gw, v6 site
    1: ("hp-t1", "hp-s1", "169.254.201.1", "169.254.201.2", "169.254.201.6", "fd00:4850:1::1", "fd00:4850:1::2"),
    2: ("hp-t2", "hp-s2", "169.254.202.1", "169.254.202.2", None, "fd00:4850:2::1", "fd00:4850:2::2"),
}


def sh(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block (this thread) in a named netns; sockets made here stay there."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(there, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        if _libc.setns(here, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(here)
        os.close(there)


class Net:
    def __init__(self, tmp_path):
        tag = uuid.uuid4().hex[:6]
        self.gw, self.site = f"hp-gw-{tag}", f"hp-site-{tag}"
        self.state_file = str(tmp_path / "impair.json")
        self.reflector: subprocess.Popen | None = None

    def up(self) -> Net:
        for ns in (self.gw, self.site):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for n, (gif, sif, ga, sa, sa2, g6, s6) in LINKS.items():
            sh("ip", "link", "add", gif, "netns", self.gw, "type", "veth", "peer", "name", sif,
               "netns", self.site)
            for ns, ifname, a4, a6 in ((self.gw, gif, ga, g6), (self.site, sif, sa, s6)):
                sh("ip", "-n", ns, "link", "set", ifname, "address", f"02:48:50:00:00:{n:02x}", "arp", "off")
                sh("ip", "-n", ns, "link", "set", ifname, "up")
                sh("ip", "-n", ns, "addr", "add", f"{a4}/30", "dev", ifname)
                sh("ip", "-n", ns, "-6", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            if sa2:
                sh("ip", "-n", self.site, "addr", "add", f"{sa2}/32", "dev", sif)
        for ns in (self.gw, self.site):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
               "net.ipv4.conf.default.rp_filter=0")
        self.impair({})
        self.reflector = subprocess.Popen(
            ["ip", "netns", "exec", self.site, sys.executable, "-m", "steerd.lab.reflector",
             "--interfaces", "hp-s1,hp-s2", "--state-file", self.state_file, "--seed", "7",
             "--kernel-echo-off"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        ready, _, _ = select.select([self.reflector.stdout], [], [], 10)
        line = self.reflector.stdout.readline() if ready else ""
        assert "ready" in line, (line, self.reflector.poll(), self.reflector.stderr.read()
                                 if self.reflector.poll() is not None else "")
        return self

    def impair(self, state: dict) -> None:
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_file)

    def down(self) -> None:
        if self.reflector and self.reflector.poll() is None:
            self.reflector.kill()
            self.reflector.wait(5)
        for ns in (self.gw, self.site):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def prober(self, link: int, target: str | None = None, on_reply=None, v6: bool = False) -> Prober:
        gif, _, _, sa, _, _, s6 = LINKS[link]
        with in_netns(self.gw):
            return Prober(f"t{link}", gif, target or (s6 if v6 else sa), on_reply or (lambda *a: None))


@pytest.fixture
def net(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    n = Net(tmp_path)
    try:
        yield n.up()
    finally:
        n.down()


def run(prober: Prober, monitor: LinkMonitor, duration: float) -> list:
    """The daemon's job in miniature: send when due, feed replies and ticks."""
    transitions: list = []
    prober.on_reply = lambda seq, rtt, now: transitions.extend(monitor.on_reply(seq, rtt, now))
    seq, end = 0, time.monotonic() + duration
    while (now := time.monotonic()) < end:
        if now >= monitor.next_probe_at():
            seq += 1
            monitor.on_sent(seq, prober.send(seq))
        transitions += monitor.on_tick(time.monotonic())
        wait = max(0.0, min(monitor.next_wakeup(), end) - time.monotonic())
        if select.select([prober.fileno()], [], [], wait)[0]:
            prober.handle_readable()
    return transitions


def fast_monitor(window: int, interval: float = 0.05) -> LinkMonitor:
    return LinkMonitor("t", ProbeConfig(interval=interval, timeout=1.0, window=window), HealthConfig(),
                       time.monotonic())


def test_rtt_and_jitter_match_injected_delay(net):
    net.impair({"hp-s1": {"delay_ms": 30, "jitter_ms": 5}})
    p = net.prober(1)
    m = fast_monitor(window=200)
    try:
        run(p, m, 200 * 0.05 + 1.2)
    finally:
        p.close()
    s = m.stats()
    assert s.samples == 200 and s.loss_ratio == 0.0
    assert abs(s.rtt_mean * 1000 - 30) <= 1 + 0.05 * 30, s
    assert abs(s.jitter * 1000 - 5) <= 2, s
    assert abs(s.rtt_p50 * 1000 - 30) <= 2.5, s


def test_no_delay_rtt_is_small_and_ipv6_works(net):
    for v6 in (False, True):
        p = net.prober(1, v6=v6)
        m = fast_monitor(window=20)
        try:
            run(p, m, 20 * 0.05 + 0.2)
        finally:
            p.close()
        s = m.stats()
        assert s.samples == 20 and s.loss_ratio == 0.0, (v6, s)
        assert s.rtt_mean < 0.005, (v6, s)     # a veth and a user-space reflector


def test_blackhole_gives_lost_samples_and_down(net):
    net.impair({"hp-s2": {"blackhole": True}})
    p = net.prober(2)
    m = LinkMonitor("t2", ProbeConfig(interval=0.1, timeout=0.5, window=10), HealthConfig(),
                    time.monotonic())
    try:
        tr = run(p, m, 3.0)
    finally:
        p.close()
    assert m.state == "down", tr
    assert [t.new for t in tr][-1] == "down"
    s = m.stats()
    assert s.samples >= 5 and s.loss_ratio == 1.0 and s.rtt_mean is None
    # the other tunnel is unaffected
    q = net.prober(1)
    m1 = fast_monitor(window=10)
    try:
        run(q, m1, 1.0)
    finally:
        q.close()
    assert m1.state == "up" and m1.stats().loss_ratio == 0.0


def test_probes_leave_only_through_the_bound_interface(net):
    # target link 1's site address, but bound to link 2 (blackholed): no answer,
    # although the route to that address (and link 1) is fine
    net.impair({"hp-s2": {"blackhole": True}})
    got = []
    p = net.prober(2, target=LINKS[1][3], on_reply=lambda *a: got.append(a))
    try:
        p.send(1)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if select.select([p], [], [], 0.05)[0]:
                p.handle_readable()
    finally:
        p.close()
    assert got == [] and p.sent == 1
    assert int(sh("ip", "netns", "exec", net.site, "cat", "/sys/class/net/hp-s2/statistics/rx_packets")) >= 1


def forge_reply(net: Net, src: str, dst: str, ident: int, seq: int, nonce: bytes) -> None:
    """An echo reply sent from the site namespace over link 1, as a spoofer would."""
    with in_netns(net.site):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.setsockopt(socket.SOL_SOCKET, 25, b"hp-s1")
        pkt = echo_packet(4, 0, ident, seq & 0xFFFF, MAGIC + nonce + seq.to_bytes(8, "big"))
        idx = int(sh("ip", "netns", "exec", net.site, "cat", "/sys/class/net/hp-s1/ifindex"))
        anc = [(socket.IPPROTO_IP, 8,  # IP_PKTINFO
                struct.pack("=I4s4s", idx, socket.inet_aton(src), bytes(4)))]
        s.sendmsg([pkt], anc, 0, (dst, 0))
    finally:
        s.close()


def test_spoofed_replies_are_ignored(net):
    net.impair({"hp-s1": {"blackhole": True}})      # no genuine replies
    _, _, ga, sa, sa2, _, _ = LINKS[1]
    got = []
    p = net.prober(1, on_reply=lambda *a: got.append(a))

    def drain():
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            if select.select([p], [], [], 0.05)[0]:
                p.handle_readable()
    try:
        p.send(41)
        nonce = p._out[41].nonce
        forge_reply(net, sa, ga, p.ident, 41, bytes(8))            # wrong nonce
        forge_reply(net, sa, ga, p.ident, 42, nonce)               # wrong seq
        forge_reply(net, sa, ga, p.ident ^ 1, 41, nonce)           # wrong identifier
        forge_reply(net, sa2, ga, p.ident, 41, nonce)              # wrong source address
        drain()
        assert got == [] and p.ignored + p.shared.unmatched == 4   # a wrong identifier: no prober
        forge_reply(net, sa, ga, p.ident, 41, nonce)               # control: a perfect forgery
        forge_reply(net, sa, ga, p.ident, 41, nonce)               # and its duplicate
        drain()
        assert [a[0] for a in got] == [41] and p.ignored + p.shared.unmatched == 5
    finally:
        p.close()


def test_reflector_loss_and_runtime_changes(net):
    net.impair({"hp-s1": {"loss_pct": 50}})
    p = net.prober(1)
    try:
        for seq in range(1, 201):
            p.send(seq)
            time.sleep(0.005)
            p.handle_readable()
        time.sleep(0.1)
        p.handle_readable()
        assert p.sent == 200 and 60 <= p.received <= 140, p.received
        net.impair({"hp-s1": {"delay_ms": 20}})           # picked up without a restart
        m = fast_monitor(window=20, interval=0.05)
        run(p, m, 20 * 0.05 + 0.3)
    finally:
        p.close()
    s = m.stats()
    assert s.loss_ratio == 0.0 and abs(s.rtt_mean - 0.020) < 0.002, s


def test_ten_pct_loss_on_real_packets_never_goes_down(net):
    net.impair({"hp-s1": {"loss_pct": 10, "delay_ms": 5, "jitter_ms": 1}})
    p = net.prober(1)
    m = LinkMonitor("t1", ProbeConfig(interval=0.1, timeout=1.0, window=10), HealthConfig(),
                    time.monotonic())
    try:
        tr = run(p, m, 20.0)
    finally:
        p.close()
    assert [t for t in tr if t.new == "down"] == [], tr
    assert p.sent >= 190 and 0.03 <= 1 - p.received / p.sent <= 0.2
