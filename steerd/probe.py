"""ICMP / ICMPv6 echo probes through one tunnel (the socket side of health.py).

One ``Prober`` per tunnel, all sharing one raw socket per address family
(``ProbeSocket``): each probe names the tunnel's interface as its outgoing
device (IP_PKTINFO / IPV6_PKTINFO, which routes exactly as SO_BINDTODEVICE
does), so probes leave through that tunnel only, and a reply counts only if it
arrived on that interface. They are locally generated, so the eBPF steering
(tc ingress of the ingress interfaces) never sees them; the outgoing device is
what pins them (with one the kernel even assumes the target is on-link when no
route says otherwise). One socket rather than one per tunnel: the kernel offers
every incoming ICMP packet to each raw ICMP socket of the namespace in turn, so
a hub's 3,000 sockets made its 3,000 replies a second 9 million socket checks
(and 3,000 descriptors to watch).

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

    socks = ProbeSockets(on_new=lambda s: loop.add_reader(s.fileno(), s.handle_readable))
    p = Prober("pri-wan1", "ipsec1", "169.254.10.2", on_reply=cb, sockets=socks)
    p.send(seq)     # when LinkMonitor.next_probe_at() is due; raises OSError if it cannot go out

(without ``sockets`` a prober has a socket of its own: ``p.fileno()``,
``p.handle_readable()``).

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
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IN_PKTINFO = struct.Struct("=I4s4s")      # ipi_ifindex, ipi_spec_dst, ipi_addr
IN6_PKTINFO = struct.Struct("=16sI")      # ipi6_addr, ipi6_ifindex
# replies of a whole hub's probes may arrive between two reads of the socket
# (3,000 tunnels probed in one loop turn): room for them, not the default 200 kB
RCVBUF = 16 << 20
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


def pktinfo_ifindex(version: int, ancdata: list) -> int | None:
    """The interface a packet arrived on (IP_PKTINFO / IPV6_PKTINFO), if given."""
    level, kind, fmt = ((socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO) if version == 4 else
                        (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, IN6_PKTINFO))
    for lv, k, data in ancdata:
        if lv == level and k == kind and len(data) >= fmt.size:
            return fmt.unpack_from(data)[0 if version == 4 else 1]
    return None


def raw_icmp_socket(version: int, interface: str | None = None) -> socket.socket:
    """A non-blocking raw ICMP(v6) socket, bound to *interface* if given."""
    if version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        if interface is not None:
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def probe_socket(version: int) -> socket.socket:
    """The socket of a ProbeSocket: echo replies only, with the kernel's receive
    time and the interface they came in on."""
    s = raw_icmp_socket(version)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(*icmp_filter(version, ECHO_REPLY[version]))
        if version == 4:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:      # without CAP_NET_ADMIN: as much as rmem_max allows
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    except OSError:
        s.close()
        raise
    return s


class ProbeSocket:
    """One raw socket carrying the probes of many tunnels (one address family).
    Replies go to their prober by echo identifier (unique per socket)."""

    def __init__(self, version: int):
        self.version = version
        self.sock = probe_socket(version)
        self.probers: dict[int, "Prober"] = {}
        self.unmatched = 0          # replies with no prober's identifier
        self._anc = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(IN6_PKTINFO.size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def register(self, prober: "Prober") -> int:
        """A free identifier for *prober* (random: a blind spoofer must guess it)."""
        if len(self.probers) >= 0x10000:
            raise OSError("no free ICMP echo identifier on this probe socket")
        while True:
            ident = secrets.randbelow(0x10000)
            if ident not in self.probers:
                self.probers[ident] = prober
                return ident

    def unregister(self, prober: "Prober") -> None:
        if self.probers.get(prober.ident) is prober:
            del self.probers[prober.ident]

    def send(self, pkt: bytes, dest: tuple, ifindex: int) -> None:
        if self.version == 4:
            anc = [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(ifindex, bytes(4), bytes(4)))]
        else:
            anc = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, IN6_PKTINFO.pack(bytes(16), ifindex))]
        self.sock.sendmsg([pkt], anc, 0, dest)

    def handle_readable(self) -> None:
        """Drain the socket; hand each reply to the prober its identifier names."""
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(2048, self._anc)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # e.g. an interface went away: the monitors see losses
                log.debug("probe socket: recv: %s", exc)
                return
            rx_ns = kernel_timestamp_ns(anc) or time.time_ns()
            icmp = data[(data[0] & 0x0F) * 4:] if self.version == 4 and data else data
            prober = self.probers.get(int.from_bytes(icmp[4:6], "big")) if len(icmp) >= 8 else None
            if prober is None:
                self.unmatched += 1
                continue
            prober.deliver(data, addr, rx_ns, pktinfo_ifindex(self.version, anc))

    def close(self) -> None:
        self.sock.close()


class ProbeSockets:
    """A daemon's probe sockets: one per address family, made on first use
    (*on_new* is called with each, to watch it)."""

    def __init__(self, on_new: Callable[[ProbeSocket], None] | None = None):
        self.on_new = on_new
        self.by_version: dict[int, ProbeSocket] = {}

    def get(self, version: int) -> ProbeSocket:
        s = self.by_version.get(version)
        if s is None:
            s = self.by_version[version] = ProbeSocket(version)
            if self.on_new:
                self.on_new(s)
        return s

    def close(self) -> None:
        for s in self.by_version.values():
            s.close()
        self.by_version.clear()


@dataclass
class _Out:
    nonce: bytes
    sent_ns: int        # CLOCK_REALTIME, to compare with the kernel's receive stamp
    sent_mono: float


class Prober:
    """Echo probes to ``target`` through ``interface`` only."""

    def __init__(self, tunnel_name: str, interface: str, target: Address,
                 on_reply: ReplyCallback, forget_after: float = 30.0,
                 sockets: ProbeSockets | None = None):
        self.tunnel = tunnel_name
        self.interface = interface
        self.target = ipaddress.ip_address(str(target).split("%")[0])
        self.version = self.target.version
        self._target_str = str(self.target)
        self.on_reply = on_reply
        self.forget_after = forget_after      # outstanding probes older than this are dropped
        self.sent = self.received = self.ignored = 0
        self._out: dict[int, _Out] = {}
        self.ifindex = socket.if_nametoindex(interface)     # OSError: no such interface
        self._own = sockets is None
        self.shared = (sockets or ProbeSockets()).get(self.version)
        self.ident = self.shared.register(self)
        if self.version == 4:
            self._dest: tuple = (str(self.target), 0)
        else:
            self._dest = (str(self.target), 0, 0, self.ifindex if self.target.is_link_local else 0)

    def fileno(self) -> int:
        return self.shared.fileno()

    def rebind(self) -> None:
        """The interface of that name was recreated (a new index): probes go out
        through, and replies count from, the new one."""
        self.ifindex = socket.if_nametoindex(self.interface)
        if self.version == 6 and self.target.is_link_local:
            self._dest = (str(self.target), 0, 0, self.ifindex)

    def handle_readable(self) -> None:
        self.shared.handle_readable()

    def close(self) -> None:
        self.shared.unregister(self)
        if self._own:
            self.shared.close()

    def send(self, seq: int) -> float:
        """Send probe ``seq`` (unique per prober); returns the monotonic send time."""
        nonce = os.urandom(8)
        payload = MAGIC + nonce + (seq & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        pkt = echo_packet(self.version, ECHO_REQUEST[self.version], self.ident, seq & 0xFFFF, payload)
        mono = time.monotonic()
        self._forget(mono)
        sent_ns = time.time_ns()
        self.shared.send(pkt, self._dest, self.ifindex)
        self._out[seq] = _Out(nonce, sent_ns, mono)
        self.sent += 1
        return mono

    def deliver(self, data: bytes, addr: tuple, rx_ns: int, ifindex: int | None) -> None:
        """A reply with this prober's identifier: ``on_reply`` if it answers an
        outstanding probe and came in through this tunnel's interface."""
        hit = self._match(data, addr) if ifindex == self.ifindex else None
        if hit is None:
            self.ignored += 1
            return
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
        if addr[0] != self._target_str:    # the kernel's text form; else compare parsed
            try:
                if ipaddress.ip_address(addr[0].split("%")[0]) != self.target:
                    return None
            except ValueError:
                return None
        del self._out[seq]      # a duplicate of this reply is ignored
        return seq, out

    def _forget(self, mono: float) -> None:
        if len(self._out) > 64:
            for seq in [s for s, o in self._out.items() if mono - o.sent_mono > self.forget_after]:
                del self._out[seq]
