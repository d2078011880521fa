"""ICMP / ICMPv6 echo probes through one tunnel (the socket side of health.py).

One ``Prober`` per tunnel: a raw socket bound with SO_BINDTODEVICE to the
tunnel's interface, so probes leave through that tunnel only. They are locally
generated, so the eBPF steering (tc ingress of the ingress interfaces) never
sees them; the binding is what pins them (with a bound device the kernel
even assumes the target is on-link when no route says otherwise).

Matching: every probe carries this prober's random 16-bit identifier, the
sequence number (low 16 bits in the header, all 64 in the payload) and a
fresh random 8-byte nonce. A reply counts only if identifier, sequence, nonce
and source address all match an outstanding probe, once: a blind spoofer or
a stale reply cannot keep a dead tunnel up (an on-path attacker who sees the
request can, as with any echo probe).

Timing: the receive time is the kernel's (SO_TIMESTAMPNS, CLOCK_REALTIME),
the send time is CLOCK_REALTIME read just before sendto, so RTT excludes the
event loop's wake-up latency. Everything handed to the caller is on
``time.monotonic()``: ``send`` returns the monotonic send time and
``on_reply(seq, rtt, now)`` gets ``now`` = monotonic send time + RTT (the
arrival). If the wall clock stepped in between, RTT falls back to monotonic
times.

Use from asyncio::

    p = Prober("pri-wan1", "ipsec1", "169.254.10.2", on_reply=cb)
    loop.add_reader(p.fileno(), p.handle_readable)
    p.send(seq)     # when LinkMonitor.next_probe_at() is due; raises OSError if it cannot go out

Root (CAP_NET_RAW) is needed; it works in whatever network namespace the
process runs in.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("steerd.probe")

MAGIC = b"stRd"
PAYLOAD_LEN = 4 + 8 + 8           # magic, nonce, seq
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SOL_RAW, ICMP_FILTER = 255, 1      # linux/icmp.h: bitmask of ICMP types to drop
ICMP6_FILTER = 1                   # linux/icmpv6.h: struct icmp6_filter, bit set = block
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}

Address = str | ipaddress.IPv4Address | ipaddress.IPv6Address
ReplyCallback = Callable[[int, float, float], None]


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def echo_packet(version: int, icmp_type: int, ident: int, seq16: int, payload: bytes) -> bytes:
    """An ICMP(v6) echo message; IPv6's checksum is left to the kernel."""
    hdr = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq16)
    if version == 4:
        hdr = struct.pack("!BBHHH", icmp_type, 0, checksum(hdr + payload), ident, seq16)
    return hdr + payload


def icmp_filter(version: int, *passed: int) -> tuple[int, int, bytes]:
    """(level, optname, value) for a kernel filter that lets only ``passed`` types through."""
    if version == 4:
        mask = 0xFFFFFFFF
        for t in passed:
            mask &= ~(1 << t)
        return SOL_RAW, ICMP_FILTER, struct.pack("=I", mask)
    words = [0xFFFFFFFF] * 8
    for t in passed:
        words[t >> 5] &= ~(1 << (t & 31))
    return socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words)


def kernel_timestamp_ns(ancdata: list) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("=qq", data[:16])
            return sec * 1_000_000_000 + nsec
    return None


def raw_icmp_socket(version: int, interface: str) -> socket.socket:
    """A non-blocking raw ICMP(v6) socket bound to ``interface``."""
    if version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


@dataclass
class _Out:
    nonce: bytes
    sent_ns: int        # CLOCK_REALTIME, to compare with the kernel's receive stamp
    sent_mono: float


class Prober:
    """Echo probes to ``target`` through ``interface`` only."""

    def __init__(self, tunnel_name: str, interface: str, target: Address,
                 on_reply: ReplyCallback, forget_after: float = 30.0):
        self.tunnel = tunnel_name
        self.interface = interface
        self.target = ipaddress.ip_address(str(target).split("%")[0])
        self.version = self.target.version
        self.on_reply = on_reply
        self.forget_after = forget_after      # outstanding probes older than this are dropped
        self.ident = secrets.randbelow(0x10000)
        self.sent = self.received = self.ignored = 0
        self._out: dict[int, _Out] = {}
        self.sock = raw_icmp_socket(self.version, interface)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.setsockopt(*icmp_filter(self.version, ECHO_REPLY[self.version]))
        except OSError:
            self.sock.close()
            raise
        if self.version == 4:
            self._dest: tuple = (str(self.target), 0)
        else:
            scope = socket.if_nametoindex(interface) if self.target.is_link_local else 0
            self._dest = (str(self.target), 0, 0, scope)

    def fileno(self) -> int:
        return self.sock.fileno()

    def rebind(self) -> None:
        """Bind to the interface of that name again: it was recreated, and the
        socket was bound to the old one's index."""
        self.sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
        if self.version == 6 and self.target.is_link_local:
            self._dest = (str(self.target), 0, 0, socket.if_nametoindex(self.interface))

    def close(self) -> None:
        self.sock.close()

    def send(self, seq: int) -> float:
        """Send probe ``seq`` (unique per prober); returns the monotonic send time."""
        nonce = os.urandom(8)
        payload = MAGIC + nonce + (seq & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        pkt = echo_packet(self.version, ECHO_REQUEST[self.version], self.ident, seq & 0xFFFF, payload)
        mono = time.monotonic()
        self._forget(mono)
        sent_ns = time.time_ns()
        self.sock.sendto(pkt, self._dest)
        self._out[seq] = _Out(nonce, sent_ns, mono)
        self.sent += 1
        return mono

    def handle_readable(self) -> None:
        """Drain the socket; call ``on_reply`` for each matching reply."""
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # e.g. the interface went away: the monitor sees losses
                log.debug("probe %s: recv: %s", self.tunnel, exc)
                return
            rx_ns = kernel_timestamp_ns(anc) or time.time_ns()
            hit = self._match(data, addr)
            if hit is None:
                self.ignored += 1
                continue
            seq, out = hit
            mono_now = time.monotonic()
            rtt = (rx_ns - out.sent_ns) / 1e9
            if not 0.0 <= rtt <= mono_now - out.sent_mono + 0.5:   # wall clock stepped
                rtt = mono_now - out.sent_mono
            self.received += 1
            self.on_reply(seq, rtt, min(mono_now, out.sent_mono + rtt))

    def _match(self, data: bytes, addr: tuple) -> tuple[int, _Out] | None:
        if self.version == 4:
            if len(data) < 20:
                return None
            icmp = data[(data[0] & 0x0F) * 4:]
            if checksum(icmp) != 0:
                return None
        else:
            icmp = data
        if len(icmp) < 8 + PAYLOAD_LEN:
            return None
        kind, code, _ck, ident, seq16 = struct.unpack("!BBHHH", icmp[:8])
        payload = icmp[8:8 + PAYLOAD_LEN]
        if kind != ECHO_REPLY[self.version] or code != 0 or ident != self.ident \
                or payload[:4] != MAGIC:
            return None
        seq = int.from_bytes(payload[12:20], "big")
        out = self._out.get(seq)
        if out is None or seq16 != seq & 0xFFFF or not secrets.compare_digest(out.nonce, payload[4:12]):
            return None
        try:
            src = ipaddress.ip_address(addr[0].split("%")[0])
        except ValueError:
            return None
        if src != self.target:
            return None
        del self._out[seq]      # a duplicate of this reply is ignored
        return seq, out

    def _forget(self, mono: float) -> None:
        if len(self._out) > 64:
            for seq in [s for s, o in self._out.items() if mono - o.sent_mono > self.forget_after]:
                del self._out[seq]
