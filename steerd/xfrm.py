"""XFRM awareness: which tunnels are XFRM interfaces, whether their SAs exist, and
their ESP counters — read from the kernel over netlink (NETLINK_XFRM, no tools).

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

import errno
import ipaddress
import json
import os
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

NETLINK_XFRM = 6
NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
XFRM_MSG_NEWSA, XFRM_MSG_DELSA, XFRM_MSG_GETSA = 0x10, 0x11, 0x12
XFRM_MSG_EXPIRE, XFRM_MSG_UPDSA, XFRM_MSG_FLUSHSA = 0x18, 0x1A, 0x1C
XFRMA_SA, XFRMA_IF_ID = 6, 31
XFRMNLGRP_EXPIRE, XFRMNLGRP_SA = 2, 3
RTM_GETADDR, RTM_NEWADDR = 22, 20
IFA_ADDRESS, IFA_LOCAL = 1, 2
IPPROTO_ESP = 50

SIZEOF_USERSA_INFO = 224      # struct xfrm_usersa_info (x86_64 and other LP64)
SIZEOF_USERSA_ID = 24         # struct xfrm_usersa_id
SIZEOF_USER_EXPIRE = 232      # struct xfrm_user_expire: usersa_info + hard, padded
_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")


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

def _addr(raw: bytes, family: int) -> str:
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4]))


def _attrs(buf: bytes, off: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of the rtattrs in buf[off:] (nested flag bits dropped)."""
    while off + 4 <= len(buf):
        length, typ = _RTATTR.unpack_from(buf, off)
        if length < 4 or off + length > len(buf):
            return
        yield typ & 0x3FFF, buf[off + 4:off + length]
        off += (length + 3) & ~3


def parse_sa_info(info: bytes, if_id: int = 0) -> SaInfo:
    """A struct xfrm_usersa_info (224 bytes) to SaInfo."""
    if len(info) < SIZEOF_USERSA_INFO:
        raise ValueError(f"xfrm_usersa_info of {len(info)} bytes")
    family = struct.unpack_from("=H", info, 212)[0]
    dst = _addr(info[56:72], family)
    spi = struct.unpack_from("!I", info, 72)[0]
    proto = info[76]
    src = _addr(info[80:96], family)
    nbytes, npackets = struct.unpack_from("=QQ", info, 160)
    reqid = struct.unpack_from("=I", info, 208)[0]
    return SaInfo(src, dst, spi, proto, reqid, if_id, nbytes, npackets)


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
            family = struct.unpack_from("=H", payload, 20)[0]
            return SaEvent("deleted", if_id, struct.unpack_from("!I", payload, 16)[0],
                           "", _addr(payload[:16], family))
        return SaEvent("deleted", if_id, sa.spi, sa.src, sa.dst)
    if msg_type == XFRM_MSG_EXPIRE:
        sa = parse_sa_info(payload[:SIZEOF_USERSA_INFO], _if_id(payload, SIZEOF_USER_EXPIRE))
        hard = payload[SIZEOF_USERSA_INFO] if len(payload) > SIZEOF_USERSA_INFO else 0
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


def local_addresses() -> set[str]:
    """Addresses configured on this namespace's interfaces (IPv4 and IPv6)."""
    out: set[str] = set()
    for typ, body in _dump(NETLINK_ROUTE, RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0)):
        if typ != RTM_NEWADDR or len(body) < 8:
            continue
        family = body[0]
        for atyp, val in _attrs(body, 8):
            if atyp in (IFA_ADDRESS, IFA_LOCAL) and len(val) in (4, 16):
                out.add(_addr(val, socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET))
    return out


def sa_if_ids(outbound_only: bool = True) -> set[int]:
    """if_ids that have SAs now (outbound ones by default)."""
    return outbound_if_ids(sa_table(), local_addresses() if outbound_only else None)


def esp_counters() -> dict[int, EspCounters]:
    """ESP counters per if_id, summed over the SAs (rekeyed ones restart at 0)."""
    return counters_by_if_id(sa_table(), local_addresses())


def xfrm_interfaces() -> dict[str, int]:
    """XFRM interfaces of this namespace: name -> if_id (`ip -j -d link show type xfrm`)."""
    try:
        res = subprocess.run(["ip", "-j", "-d", "link", "show", "type", "xfrm"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if res.returncode != 0:
        return {}
    return parse_ip_link_json(res.stdout)


def parse_ip_link_json(text: str) -> dict[str, int]:
    out = {}
    for link in json.loads(text or "[]"):
        info = link.get("linkinfo") or {}
        if info.get("info_kind") == "xfrm":
            data = info.get("info_data") or {}
            if_id = data.get("if_id")
            if isinstance(if_id, str):
                if_id = int(if_id, 0)
            if if_id:
                out[link["ifname"]] = int(if_id)
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
