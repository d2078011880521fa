"""Routes over raw rtnetlink, batched: what a hub needs at start and on reload.

pyroute2 decodes every message of a dump in Python and waits for each request's
answer: about 1 s per 1,000 routes dumped and a round trip per route written,
and a hub has a route per site in each of its tables (1,000 sites: 3,000
routes). Here a table is dumped with the kernel doing the filtering
(NETLINK_GET_STRICT_CHK + RTA_TABLE: only that table's routes come back,
decoded with struct), and routes are written many per send, each acknowledged,
so every failure is reported with its route.

Only what steerd's tables hold is supported: device routes (destination ->
output interface) in a numbered table, as `ip route replace DST dev IF table N
proto static` writes them.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 4, 0, 1

NLMSGHDR = struct.Struct("=IHHII")
RTATTR = struct.Struct("=HH")
_RTMSG = struct.Struct("=BBBBBBBBI")   # family dst_len src_len tos table protocol scope type, flags
_U32 = struct.Struct("=I")
SEND_CHUNK = 200       # requests per send: their acks (36 bytes each) fit any receive buffer


def split_messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in one datagram."""
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, typ, flags, seq, _ = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > len(data):
            return
        yield typ, flags, seq, data[off + NLMSGHDR.size:off + length]
        off += (length + 3) & ~3


def attrs(buf: bytes, off: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of the rtattrs in buf[off:] (nested flag bits dropped)."""
    while off + 4 <= len(buf):
        length, typ = RTATTR.unpack_from(buf, off)
        if length < 4 or off + length > len(buf):
            return
        yield typ & 0x3FFF, buf[off + 4:off + length]
        off += (length + 3) & ~3


def _attr(typ: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return RTATTR.pack(RTATTR.size + len(value), typ) + value + b"\0" * pad


@dataclass(frozen=True)
class Route:
    """A device route of a numbered table."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    oif: int
    table: int

    def payload(self) -> bytes:
        fam = socket.AF_INET if self.dst.version == 4 else socket.AF_INET6
        return (_RTMSG.pack(fam, self.dst.prefixlen, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_UNIVERSE,
                            RTN_UNICAST, 0)
                + _attr(RTA_DST, self.dst.network_address.packed)
                + _attr(RTA_OIF, _U32.pack(self.oif)) + _attr(RTA_TABLE, _U32.pack(self.table)))


def parse_route(payload: bytes) -> Route | None:
    """A RTM_NEWROUTE message of a dump to a Route (None: not a plain unicast route)."""
    fam, dst_len, _, _, table, _, _, rtype, _ = _RTMSG.unpack_from(payload)
    if rtype != RTN_UNICAST or fam not in (socket.AF_INET, socket.AF_INET6):
        return None
    dst, oif = b"\0" * (4 if fam == socket.AF_INET else 16), 0
    for typ, val in attrs(payload, _RTMSG.size):
        if typ == RTA_DST:
            dst = val
        elif typ == RTA_OIF:
            oif = _U32.unpack(val)[0]
        elif typ == RTA_TABLE:
            table = _U32.unpack(val)[0]
    net = ipaddress.ip_network((ipaddress.ip_address(dst), dst_len))
    return Route(net, oif, table)


class Rtnl:
    """One NETLINK_ROUTE socket with strict dump checking (kernel-side filters)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def routes(self, family: int, table: int) -> list[Route]:
        """The unicast routes of *table* (an absent table has none)."""
        seq = self._next_seq()
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0) + _attr(RTA_TABLE, _U32.pack(table))
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETROUTE,
                                     NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out: list[Route] = []
        while True:
            for typ, _, s, payload in split_messages(self.sock.recv(1 << 20)):
                if s != seq:
                    continue
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code in (0, errno.ENOENT):   # ENOENT: no such table yet
                        return out
                    raise OSError(code, f"route dump of table {table}: {os.strerror(code)}")
                if typ == RTM_NEWROUTE:
                    r = parse_route(payload)
                    if r is not None and r.table == table:
                        out.append(r)

    def replace(self, routes: list[Route]) -> list[tuple[Route, OSError]]:
        """Add or replace *routes*; returns the ones the kernel refused."""
        return self._batch(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, routes)

    def delete(self, routes: list[Route]) -> list[tuple[Route, OSError]]:
        """Delete *routes*; one already gone (ESRCH) is not an error."""
        return [(r, e) for r, e in self._batch(RTM_DELROUTE, 0, routes) if e.errno != errno.ESRCH]

    def _batch(self, msg_type: int, flags: int, routes: list[Route]) -> list[tuple[Route, OSError]]:
        failed: list[tuple[Route, OSError]] = []
        for at in range(0, len(routes), SEND_CHUNK):
            chunk = routes[at:at + SEND_CHUNK]
            pending: dict[int, Route] = {}
            buf = bytearray()
            for r in chunk:
                seq = self._next_seq()
                body = r.payload()
                buf += NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type,
                                     NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body
                pending[seq] = r
            self.sock.send(bytes(buf))
            while pending:
                for typ, _, seq, payload in split_messages(self.sock.recv(1 << 20)):
                    if typ != NLMSG_ERROR or seq not in pending:
                        continue
                    r = pending.pop(seq)
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        failed.append((r, OSError(code, f"{os.strerror(code)}: {r.dst} dev "
                                                        f"#{r.oif} table {r.table}")))
        return failed
