"""Link events: interfaces that appeared or changed (RTM_NEWLINK).

The upstream counter's filter and its ifindex -> tunnel entry belong to one
incarnation of an interface: an IKE restart (and some rekeys) deletes and
recreates an XFRM interface, and a tunnel's interface may appear only after
steerd started. The daemon listens on the kernel's link group with this
socket and has the counter take up a tunnel interface that shows up with an
ifindex it does not count (KernelDataplane.relink).
"""
from __future__ import annotations

import errno
import socket
import struct

RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
IFLA_IFNAME = 3
IFINFOMSG = 16       # struct ifinfomsg: family, pad, type, index, flags, change


def parse(data: bytes) -> dict[str, int]:
    """Interface name -> ifindex of the RTM_NEWLINK messages in one datagram."""
    out: dict[str, int] = {}
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16 or off + length > len(data):
            break
        if kind == RTM_NEWLINK and length >= 16 + IFINFOMSG:
            (index,) = struct.unpack_from("=i", data, off + 16 + 4)
            a, end = off + 16 + IFINFOMSG, off + length
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x3FFF == IFLA_IFNAME:
                    out[data[a + 4:a + alen].split(b"\0", 1)[0].decode(errors="replace")] = index
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return out


class LinkEvents:
    """A non-blocking netlink socket on the link group (``fileno`` for the event loop)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK,
                                  socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> dict[str, int] | None:
        """The links announced since the last read (name -> ifindex); None when
        the kernel dropped some (ENOBUFS: a burst overflowed the socket), so
        the caller re-reads every interface it cares about."""
        seen: dict[str, int] = {}
        while True:
            try:
                seen.update(parse(self.sock.recv(1 << 16)))
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return None
                raise

    def close(self) -> None:
        self.sock.close()
