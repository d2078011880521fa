"""XFRM awareness: which tunnels are XFRM interfaces, whether their SAs exist, and
their ESP counters — read from the kernel over netlink, no tools. Links and
addresses come through pyroute2 (rtnetlink); the SAs and their events through a
raw NETLINK_XFRM socket (pyroute2 has no XFRM family), decoded with the kernel's
structures declared below (linux/xfrm.h).

A tunnel whose interface is an XFRM interface (``if_id`` N) carries traffic only
while the kernel has an outbound SA with ``if_id`` N. When the IKE daemon deletes
the SAs (``swanctl --terminate``, DPD, a peer's DELETE) or they hard-expire, the
kernel tells every listener of the XFRM multicast groups at once; the daemon can
mark the tunnel down ("SA deleted") before any probe is lost, and let probes
bring it back once SAs exist again.

    interfaces = xfrm_interfaces()                 # {"ipsec1": 1, ...}
    w = XfrmWatcher({"pri-wan1": 1, ...}, on_change=lambda tunnel, has_sa, reason: ...)
    loop.add_reader(w.fileno(), w.handle_readable)  # events: DELSA, EXPIRE (hard), FLUSHSA, NEWSA
    w.resync()                                      # also periodically: catches lost events
    w.counters()                                    # {"pri-wan1": EspCounters(...)}

``sa_table()`` / ``esp_counters()`` are one-shot reads (a netlink dump of the SAs).
Parsing is separated from the sockets (``parse_sa_info``, ``parse_event``) so it is
tested without root.
"""
from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from pyroute2 import IPRoute

NETLINK_XFRM = 6
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
XFRM_MSG_NEWSA, XFRM_MSG_DELSA, XFRM_MSG_GETSA = 0x10, 0x11, 0x12
XFRM_MSG_EXPIRE, XFRM_MSG_UPDSA, XFRM_MSG_FLUSHSA = 0x18, 0x1A, 0x1C
XFRMA_SA, XFRMA_IF_ID = 6, 31
XFRMNLGRP_EXPIRE, XFRMNLGRP_SA = 2, 3
IPPROTO_ESP = 50

T = TypeVar("T")
_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")


# linux/xfrm.h, as the kernel lays them out (native byte order and alignment;
# the SPI and ports are big-endian on the wire, converted where read).
class XfrmAddress(ct.Union):
    """xfrm_address_t: IPv4 in the first 4 bytes, else IPv6 (network byte order)."""

    _fields_ = [("a4", ct.c_uint32), ("a6", ct.c_uint32 * 4)]


class XfrmSelector(ct.Structure):
    _fields_ = [("daddr", XfrmAddress), ("saddr", XfrmAddress), ("dport", ct.c_uint16),
                ("dport_mask", ct.c_uint16), ("sport", ct.c_uint16), ("sport_mask", ct.c_uint16),
                ("family", ct.c_uint16), ("prefixlen_d", ct.c_uint8), ("prefixlen_s", ct.c_uint8),
                ("proto", ct.c_uint8), ("ifindex", ct.c_int32), ("user", ct.c_uint32)]


class XfrmId(ct.Structure):
    _fields_ = [("daddr", XfrmAddress), ("spi", ct.c_uint32), ("proto", ct.c_uint8)]


class XfrmLifetimeCfg(ct.Structure):
    _fields_ = [(name, ct.c_uint64) for name in (
        "soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit",
        "soft_add_expires_seconds", "hard_add_expires_seconds",
        "soft_use_expires_seconds", "hard_use_expires_seconds")]


class XfrmLifetimeCur(ct.Structure):
    _fields_ = [("bytes", ct.c_uint64), ("packets", ct.c_uint64), ("add_time", ct.c_uint64),
                ("use_time", ct.c_uint64)]


class XfrmStats(ct.Structure):
    _fields_ = [("replay_window", ct.c_uint32), ("replay", ct.c_uint32),
                ("integrity_failed", ct.c_uint32)]


class XfrmUsersaInfo(ct.Structure):
    """The SA itself: XFRM_MSG_NEWSA/UPDSA payload, XFRMA_SA of a DELSA."""

    _fields_ = [("sel", XfrmSelector), ("id", XfrmId), ("saddr", XfrmAddress),
                ("lft", XfrmLifetimeCfg), ("curlft", XfrmLifetimeCur), ("stats", XfrmStats),
                ("seq", ct.c_uint32), ("reqid", ct.c_uint32), ("family", ct.c_uint16),
                ("mode", ct.c_uint8), ("replay_window", ct.c_uint8), ("flags", ct.c_uint8)]


class XfrmUsersaId(ct.Structure):
    """XFRM_MSG_DELSA payload (followed by attributes)."""

    _fields_ = [("daddr", XfrmAddress), ("spi", ct.c_uint32), ("family", ct.c_uint16),
                ("proto", ct.c_uint8)]


class XfrmUserExpire(ct.Structure):
    """XFRM_MSG_EXPIRE payload: the SA and whether the hard limit was hit."""

    _fields_ = [("state", XfrmUsersaInfo), ("hard", ct.c_uint8)]


SIZEOF_USERSA_INFO = ct.sizeof(XfrmUsersaInfo)
SIZEOF_USERSA_ID = ct.sizeof(XfrmUsersaId)
SIZEOF_USER_EXPIRE = ct.sizeof(XfrmUserExpire)


@dataclass(frozen=True)
class SaInfo:
    """One SA as the kernel has it."""

    src: str
    dst: str
    spi: int
    proto: int
    reqid: int
    if_id: int              # 0 = not bound to an XFRM interface
    bytes: int              # lifetime current: bytes and packets processed
    packets: int


@dataclass(frozen=True)
class SaEvent:
    kind: str               # "new" | "deleted" | "expired" | "soft-expired" | "flushed"
    if_id: int | None       # None for "flushed" (all SAs of a protocol)
    spi: int = 0
    src: str = ""
    dst: str = ""


@dataclass(frozen=True)
class EspCounters:
    tx_bytes: int = 0
    tx_packets: int = 0
    rx_bytes: int = 0
    rx_packets: int = 0


# ------------------------------------------------------------------ parsing (pure)

def _addr(a: XfrmAddress, family: int) -> str:
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(bytes(a)))
    return str(ipaddress.IPv4Address(bytes(a)[:4]))


def _attrs(buf: bytes, off: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of the rtattrs in buf[off:] (nested flag bits dropped)."""
    while off + 4 <= len(buf):
        length, typ = _RTATTR.unpack_from(buf, off)
        if length < 4 or off + length > len(buf):
            return
        yield typ & 0x3FFF, buf[off + 4:off + length]
        off += (length + 3) & ~3


def parse_sa_info(info: bytes, if_id: int = 0) -> SaInfo:
    """A struct xfrm_usersa_info to SaInfo."""
    if len(info) < SIZEOF_USERSA_INFO:
        raise ValueError(f"xfrm_usersa_info of {len(info)} bytes, expected {SIZEOF_USERSA_INFO}")
    sa = XfrmUsersaInfo.from_buffer_copy(info[:SIZEOF_USERSA_INFO])
    return SaInfo(_addr(sa.saddr, sa.family), _addr(sa.id.daddr, sa.family), socket.ntohl(sa.id.spi),
                  sa.id.proto, sa.reqid, if_id, sa.curlft.bytes, sa.curlft.packets)


def _if_id(buf: bytes, off: int) -> int:
    for typ, val in _attrs(buf, off):
        if typ == XFRMA_IF_ID and len(val) >= 4:
            return struct.unpack_from("=I", val)[0]
    return 0


def parse_newsa(payload: bytes) -> SaInfo:
    """The payload of XFRM_MSG_NEWSA/UPDSA (a dump entry or an event)."""
    return parse_sa_info(payload[:SIZEOF_USERSA_INFO], _if_id(payload, SIZEOF_USERSA_INFO))


def parse_event(msg_type: int, payload: bytes) -> SaEvent | None:
    """An SA event from the XFRM multicast groups; None for messages not about SAs."""
    if msg_type in (XFRM_MSG_NEWSA, XFRM_MSG_UPDSA):
        sa = parse_newsa(payload)
        return SaEvent("new", sa.if_id, sa.spi, sa.src, sa.dst)
    if msg_type == XFRM_MSG_DELSA:
        # struct xfrm_usersa_id, then XFRMA_SA (the whole SA) and the SA's other attributes
        if_id, sa = _if_id(payload, SIZEOF_USERSA_ID), None
        for typ, val in _attrs(payload, SIZEOF_USERSA_ID):
            if typ == XFRMA_SA and len(val) >= SIZEOF_USERSA_INFO:
                sa = parse_sa_info(val, if_id)
        if sa is None:
            if len(payload) < SIZEOF_USERSA_ID:
                raise ValueError(f"xfrm_usersa_id of {len(payload)} bytes, expected {SIZEOF_USERSA_ID}")
            sa_id = XfrmUsersaId.from_buffer_copy(payload[:SIZEOF_USERSA_ID])
            return SaEvent("deleted", if_id, socket.ntohl(sa_id.spi), "", _addr(sa_id.daddr, sa_id.family))
        return SaEvent("deleted", if_id, sa.spi, sa.src, sa.dst)
    if msg_type == XFRM_MSG_EXPIRE:
        sa = parse_sa_info(payload[:SIZEOF_USERSA_INFO], _if_id(payload, SIZEOF_USER_EXPIRE))
        hard = payload[XfrmUserExpire.hard.offset] if len(payload) > XfrmUserExpire.hard.offset else 0
        return SaEvent("expired" if hard else "soft-expired", sa.if_id, sa.spi, sa.src, sa.dst)
    if msg_type == XFRM_MSG_FLUSHSA:
        return SaEvent("flushed", None)
    return None


def split_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, payload) of each netlink message in one datagram."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, typ, flags, _, _ = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return
        yield typ, flags, data[off + _NLMSGHDR.size:off + length]
        off += (length + 3) & ~3


def counters_by_if_id(sas: Iterable[SaInfo], local: set[str]) -> dict[int, EspCounters]:
    """ESP bytes/packets per if_id: outbound SAs (source is a local address) are tx,
    the others rx."""
    acc: dict[int, list[int]] = {}
    for sa in sas:
        if not sa.if_id or sa.proto != IPPROTO_ESP:
            continue
        c = acc.setdefault(sa.if_id, [0, 0, 0, 0])
        if sa.src in local:
            c[0] += sa.bytes
            c[1] += sa.packets
        else:
            c[2] += sa.bytes
            c[3] += sa.packets
    return {k: EspCounters(*v) for k, v in acc.items()}


def outbound_if_ids(sas: Iterable[SaInfo], local: set[str] | None) -> set[int]:
    """if_ids with an outbound SA (any SA when the local addresses are unknown)."""
    return {sa.if_id for sa in sas if sa.if_id and (local is None or sa.src in local)}


# ------------------------------------------------------------------ kernel reads

def _dump(proto: int, msg_type: int, payload: bytes) -> Iterator[tuple[int, bytes]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto) as s:
        s.bind((0, 0))
        seq = 1
        req = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        s.send(req + payload)
        while True:
            data = s.recv(1 << 20)
            for typ, _, body in split_messages(data):
                if typ == NLMSG_DONE:
                    return
                if typ == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                yield typ, body


def sa_table() -> list[SaInfo]:
    """Every SA of this network namespace (like `ip -s xfrm state`)."""
    return [parse_newsa(body) for typ, body in _dump(NETLINK_XFRM, XFRM_MSG_GETSA, bytes(SIZEOF_USERSA_INFO))
            if typ == XFRM_MSG_NEWSA]


#: pyroute2's synchronous IPRoute drives an asyncio loop of its own, refuses a
#: thread where one already runs (the daemon's) and costs several times a query
#: to open: one IPRoute, opened on first use, lives on one worker thread.
_RTNL_THREAD = ThreadPoolExecutor(1, thread_name_prefix="steerd-rtnl")
_RTNL: list[IPRoute] = []


def _rtnl(query: Callable[[IPRoute], T]) -> T:
    """*query* on the shared IPRoute, run on its thread; the caller waits (as for
    the SA dump). A failed query drops the IPRoute: the next one reopens it."""
    def run() -> T:
        if not _RTNL:
            _RTNL.append(IPRoute())
        try:
            return query(_RTNL[0])
        except Exception:
            _RTNL.pop().close()
            raise
    return _RTNL_THREAD.submit(run).result()


def local_addresses() -> set[str]:
    """Addresses configured on this namespace's interfaces (IPv4 and IPv6): an
    address's IFA_LOCAL, else its IFA_ADDRESS (on a point-to-point link
    IFA_ADDRESS is the peer's)."""
    found = _rtnl(lambda ipr: {a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                               for a in ipr.get_addr()})
    return {str(ipaddress.ip_address(a)) for a in found if a}


def sa_if_ids(outbound_only: bool = True) -> set[int]:
    """if_ids that have SAs now (outbound ones by default)."""
    return outbound_if_ids(sa_table(), local_addresses() if outbound_only else None)


def esp_counters() -> dict[int, EspCounters]:
    """ESP counters per if_id, summed over the SAs (rekeyed ones restart at 0)."""
    return counters_by_if_id(sa_table(), local_addresses())


def xfrm_interfaces() -> dict[str, int]:
    """XFRM interfaces of this namespace: name -> if_id."""
    return _rtnl(lambda ipr: xfrm_if_ids(ipr.get_links()))


def xfrm_if_ids(links: Iterable[Any]) -> dict[str, int]:
    """name -> if_id of the XFRM interfaces among rtnetlink link messages (pyroute2's
    ifinfmsg); interfaces without an if_id carry no SAs and are left out."""
    out = {}
    for link in links:
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "xfrm":
            continue
        data = info.get_attr("IFLA_INFO_DATA")
        if_id = data.get_attr("IFLA_XFRM_IF_ID") if data is not None else None
        if if_id:
            out[link.get_attr("IFLA_IFNAME")] = int(if_id)
    return out


# ------------------------------------------------------------------ watching

class XfrmMonitor:
    """Non-blocking listener of the kernel's SA events (XFRMNLGRP_SA, XFRMNLGRP_EXPIRE)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  NETLINK_XFRM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, (1 << (XFRMNLGRP_SA - 1)) | (1 << (XFRMNLGRP_EXPIRE - 1))))
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[SaEvent]:
        """Every pending event; an overrun (ENOBUFS: events were lost) yields a
        "flushed" event so the caller re-reads the SA table."""
        out: list[SaEvent] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    out.append(SaEvent("flushed", None))
                    continue
                raise
            for typ, _, body in split_messages(data):
                try:
                    ev = parse_event(typ, body)
                except (ValueError, struct.error):
                    ev = SaEvent("flushed", None)   # unparsable: re-read everything
                if ev is not None:
                    out.append(ev)

    def close(self) -> None:
        self.sock.close()


class XfrmWatcher:
    """Tracks, for tunnels on XFRM interfaces, whether they have outbound SAs, and
    calls ``on_change(tunnel, has_sa, reason)`` when that flips ("SA deleted",
    "SA expired", "SAs flushed", "SA installed"). Driven by kernel events
    (``handle_readable``) and by ``resync`` (at start and periodically)."""

    def __init__(self, tunnels: dict[str, int], on_change: Callable[[str, bool, str], None],
                 monitor: XfrmMonitor | None = None,
                 read_sas: Callable[[], list[SaInfo]] = sa_table,
                 read_local: Callable[[], set[str]] = local_addresses):
        self.tunnels = dict(tunnels)          # tunnel name -> if_id
        self.on_change = on_change
        self.monitor = monitor
        self._read_sas, self._read_local = read_sas, read_local
        self.has_sa: dict[str, bool] = {}
        self.sas: list[SaInfo] = []
        self.local: set[str] = set()

    @classmethod
    def for_interfaces(cls, tunnel_interfaces: dict[str, str], on_change, **kw) -> "XfrmWatcher":
        """From tunnel name -> interface name; tunnels not on XFRM interfaces are ignored."""
        ifs = xfrm_interfaces()
        return cls({t: ifs[i] for t, i in tunnel_interfaces.items() if i in ifs}, on_change, **kw)

    def start(self) -> "XfrmWatcher":
        if self.monitor is None and self.tunnels:
            self.monitor = XfrmMonitor()
        self.resync("SA state at start", notify=False)
        return self

    def fileno(self) -> int:
        return self.monitor.fileno()

    def resync(self, reason: str = "SA table re-read", notify: bool = True) -> None:
        self.local = self._read_local()
        self.sas = self._read_sas()
        present = outbound_if_ids(self.sas, self.local)
        for name, if_id in self.tunnels.items():
            now = if_id in present
            old = self.has_sa.get(name)
            self.has_sa[name] = now
            if notify and old is not None and old != now:
                self.on_change(name, now, reason if not now else "SA installed")

    def handle_readable(self) -> None:
        events = self.monitor.read() if self.monitor else []
        tracked = set(self.tunnels.values())
        relevant = [e for e in events if e.if_id is None or e.if_id in tracked]
        if not any(e.kind != "soft-expired" for e in relevant):
            return
        gone = [e for e in relevant if e.kind in ("deleted", "expired", "flushed")]
        reason = {"deleted": "SA deleted", "expired": "SA expired", "flushed": "SAs flushed"}[
            gone[0].kind] if gone else "SA installed"
        self.resync(reason)

    def counters(self) -> dict[str, EspCounters]:
        """ESP counters per tracked tunnel from the last read SA table."""
        by_id = counters_by_if_id(self.sas, self.local)
        return {name: by_id.get(if_id, EspCounters()) for name, if_id in self.tunnels.items()}

    def close(self) -> None:
        if self.monitor:
            self.monitor.close()
