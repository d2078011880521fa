"""Prober packet handling without root: crafted replies replayed through a fake socket."""
from __future__ import annotations

import ipaddress
import socket
import struct
import time

import pytest

from steerd.probe import (
    IN_PKTINFO,
    IP_PKTINFO,
    MAGIC,
    SCM_TIMESTAMPNS,
    ProbeSocket,
    Prober,
    checksum,
    echo_packet,
    icmp_filter,
    kernel_timestamp_ns,
)


class FakeSock:
    def __init__(self):
        self.sent: list = []
        self.inbox: list = []

    def sendmsg(self, buffers, anc, flags, dest):
        self.sent.append((b"".join(buffers), dest, anc))

    def recvmsg(self, bufsize, ancsize):
        if not self.inbox:
            raise BlockingIOError
        return self.inbox.pop(0)

    def fileno(self):
        return -1

    def close(self):
        pass


IFINDEX = 7     # the fake tunnel interface's


def fake_prober(target="169.254.11.2", ident=0x1234):
    shared = ProbeSocket.__new__(ProbeSocket)
    shared.version, shared.sock, shared.probers, shared.unmatched = 4, FakeSock(), {}, 0
    shared._anc = 64
    p = Prober.__new__(Prober)
    p.tunnel, p.interface, p.ifindex = "t1", "tun-p1", IFINDEX
    p.target = ipaddress.ip_address(target)
    p._target_str = target
    p.version = p.target.version
    p.replies = []
    p.on_reply = lambda seq, rtt, now: p.replies.append((seq, rtt, now))
    p.forget_after = 30.0
    p.sent = p.received = p.ignored = 0
    p._out = {}
    p.shared, p._own = shared, True
    p.ident = ident
    shared.probers[ident] = p
    p.sock = shared.sock
    p._dest = (target, 0)
    return p


def ignored(p: Prober) -> int:
    """Replies dropped by the prober or, for want of its identifier, by its socket."""
    return p.ignored + p.shared.unmatched


def arrived(ifindex: int = IFINDEX) -> list:
    return [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(ifindex, bytes(4), bytes(4)))]


def ipv4_wrap(icmp: bytes, src: str = "169.254.11.2", dst: str = "169.254.11.1") -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + icmp


def stamp(ns: int, ifindex: int = IFINDEX) -> list:
    """Ancillary data of a reply received at *ns* on interface *ifindex*."""
    return [(socket.SOL_SOCKET, SCM_TIMESTAMPNS, struct.pack("=qq", ns // 10**9, ns % 10**9)),
            *arrived(ifindex)]


def reply_for(p: Prober, seq: int, **over) -> bytes:
    """The genuine reply to probe ``seq`` (fields overridable, like a spoofer would)."""
    nonce = over.get("nonce", p._out[seq].nonce if seq in p._out else bytes(8))
    payload = MAGIC + nonce + seq.to_bytes(8, "big")
    icmp = echo_packet(4, over.get("type", 0), over.get("ident", p.ident), over.get("seq16", seq & 0xFFFF),
                       payload)
    return ipv4_wrap(icmp, src=over.get("src", "169.254.11.2"))


def test_checksum_rfc1071_example():
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert checksum(data) == (~0xDDF2) & 0xFFFF
    pkt = echo_packet(4, 8, 7, 9, b"abc")
    assert checksum(pkt) == 0                 # a valid ICMP message sums to zero


def test_filters_pass_only_the_wanted_type():
    _, _, v4 = icmp_filter(4, 0)
    (mask,) = struct.unpack("=I", v4)
    assert mask & 1 == 0 and mask & (1 << 8) and mask & (1 << 3)
    _, _, v6 = icmp_filter(6, 129)
    words = struct.unpack("=8I", v6)
    assert not words[129 >> 5] & (1 << (129 & 31)) and words[128 >> 5] & (1 << (128 & 31))


def test_kernel_timestamp_parsing():
    assert kernel_timestamp_ns(stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    assert kernel_timestamp_ns([]) is None


def test_probe_format():
    p = fake_prober()
    t = p.send(70000)
    pkt, dest, anc = p.sock.sent[0]
    assert dest == ("169.254.11.2", 0) and anc == arrived()   # out through the tunnel only
    kind, code, _, ident, seq16 = struct.unpack("!BBHHH", pkt[:8])
    assert (kind, code, ident, seq16) == (8, 0, 0x1234, 70000 & 0xFFFF)
    assert pkt[8:12] == MAGIC and int.from_bytes(pkt[20:28], "big") == 70000
    assert pkt[12:20] == p._out[70000].nonce and checksum(pkt) == 0
    assert t == p._out[70000].sent_mono and p.sent == 1


def test_matching_reply_gives_kernel_rtt_once():
    p = fake_prober()
    p.send(5)
    sent_ns = p._out[5].sent_ns
    good = reply_for(p, 5)
    p.sock.inbox = [(good, stamp(sent_ns + 30_000_000), 0, ("169.254.11.2", 0)),
                    (good, stamp(sent_ns + 31_000_000), 0, ("169.254.11.2", 0))]   # + duplicate
    p.handle_readable()
    assert len(p.replies) == 1
    seq, rtt, now = p.replies[0]
    assert seq == 5 and rtt == pytest.approx(0.030)
    assert p._out.get(5) is None
    assert now <= time.monotonic()            # arrival on the monotonic clock, never in the future
    assert p.received == 1 and p.ignored == 1


def test_a_reply_through_another_interface_is_ignored():
    p = fake_prober()
    p.send(5)
    sent_ns = p._out[5].sent_ns
    p.sock.inbox = [(reply_for(p, 5), stamp(sent_ns + 1_000_000, IFINDEX + 1), 0, ("169.254.11.2", 0)),
                    (reply_for(p, 5), stamp(sent_ns + 1_000_000)[:1], 0, ("169.254.11.2", 0))]
    p.handle_readable()
    assert p.replies == [] and p.ignored == 2 and 5 in p._out


def test_replies_go_to_the_prober_of_their_identifier():
    a = fake_prober(ident=0x1234)
    b = Prober.__new__(Prober)
    b.__dict__.update(a.__dict__, ident=0x4321, replies=[], _out={}, sent=0, received=0, ignored=0)
    b.on_reply = lambda seq, rtt, now: b.replies.append(seq)
    a.shared.probers[b.ident] = b
    a.send(5)
    b.send(5)
    a.sock.inbox = [(reply_for(b, 5), stamp(time.time_ns()), 0, ("169.254.11.2", 0)),
                    (reply_for(a, 5), stamp(time.time_ns()), 0, ("169.254.11.2", 0))]
    a.handle_readable()
    assert b.replies == [5] and [r[0] for r in a.replies] == [5]
    assert a.ignored == b.ignored == a.shared.unmatched == 0


@pytest.mark.parametrize("change", [
    {"nonce": bytes(8)}, {"ident": 0x4321}, {"seq16": 6}, {"type": 8}, {"src": "169.254.99.9"},
])
def test_mismatching_replies_are_ignored(change):
    p = fake_prober()
    p.send(5)
    sent_ns = p._out[5].sent_ns
    src = change.get("src", "169.254.11.2")
    p.sock.inbox = [(reply_for(p, 5, **change), stamp(sent_ns + 1_000_000), 0, (src, 0))]
    p.handle_readable()
    assert p.replies == [] and ignored(p) == 1
    assert 5 in p._out                        # still waiting for the genuine one


def test_corrupt_and_short_packets_are_ignored():
    p = fake_prober()
    p.send(5)
    good = bytearray(reply_for(p, 5))
    good[-1] ^= 0xFF                           # checksum no longer matches
    p.sock.inbox = [(bytes(good), arrived(), 0, ("169.254.11.2", 0)),
                    (b"\x45" + bytes(10), arrived(), 0, ("x", 0)),
                    (ipv4_wrap(b"\x00\x00"), arrived(), 0, ("169.254.11.2", 0))]
    p.handle_readable()
    assert p.replies == [] and ignored(p) == 3


def test_wall_clock_step_falls_back_to_monotonic():
    p = fake_prober()
    p.send(5)
    p.sock.inbox = [(reply_for(p, 5), stamp(p._out[5].sent_ns - 5 * 10**9), 0, ("169.254.11.2", 0))]
    p.handle_readable()
    (seq, rtt, _), = p.replies
    assert seq == 5 and 0.0 <= rtt < 1.0
