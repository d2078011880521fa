"""Packet duplication in the kernel: dup_tab entries, the egress filter, counters.

ebpf/dup.h says how a packet is copied. This side keeps one dup_tab entry per
(site, duplicated rule) that copies now, hands the daemon the wan-table value
that points at it (DUP_FLAG | index), attaches ``dup_egress`` to the tunnels'
egress while any entry exists (and detaches it when none does: a feature
nobody uses costs no packet anything) and reads the copies sent per entry.

Which link-layer header a clone needs is read from the interfaces: XFRM
interfaces (and any device without a link-layer header) need none; an
Ethernet tunnel must be point-to-point without ARP, like the lab's veth
stand-ins, where the frame's addresses are the device's own (what the kernel
writes on a NOARP link). A pair that cannot be served (an Ethernet copy tunnel
with ARP on, or a header-less tunnel copied onto an Ethernet one) gets no copy
and one log line.
"""
from __future__ import annotations

import ctypes as ct
import logging
import socket
from dataclasses import dataclass

from .tc import DUP_NAME, DUP_PRIO, EGRESS_PARENT, detach as tc_detach
from .tcbatch import attach_all, detach_all
from ..abi import DUP_FLAG, DUP_MAX, DupEntry

log = logging.getLogger("steerd.dataplane")

ARPHRD_ETHER = 1
IFF_NOARP = 0x80
#: The filter follows the wan table, which the daemon writes from its event loop:
#: it goes on or off every tunnel in a few packed netlink exchanges (tcbatch), not
#: one pyroute2 request per interface (~6 ms each: 3,000 tunnels stalled probing).


@dataclass(frozen=True)
class Link:
    """What a clone onto (or from) an interface needs to know of it."""

    ifindex: int
    ethernet: bool
    noarp: bool
    mac: bytes


def read_link(ifname: str) -> Link:
    base = f"/sys/class/net/{ifname}"
    with open(f"{base}/type", encoding="ascii") as f:
        kind = int(f.read())
    with open(f"{base}/flags", encoding="ascii") as f:
        flags = int(f.read(), 16)
    mac = b""
    if kind == ARPHRD_ETHER:
        with open(f"{base}/address", encoding="ascii") as f:
            mac = bytes.fromhex(f.read().strip().replace(":", ""))
    return Link(socket.if_nametoindex(ifname), kind == ARPHRD_ETHER, bool(flags & IFF_NOARP), mac)


def entry_for(tunnel: int, src: Link, copy: int, dst: Link) -> DupEntry | None:
    """The dup_tab entry for packets on tunnel id *tunnel* (interface *src*)
    copied onto tunnel *copy* (interface *dst*); None when the pair cannot be
    served (module docstring)."""
    e = DupEntry(tunnel, src.ifindex, dst.ifindex, copy, 0)
    if dst.ethernet:
        if not src.ethernet or not dst.noarp:
            return None
        e.rewrite = 1
        e.mac[:] = list(dst.mac + dst.mac)   # destination, source: a NOARP link's own address
    return e


class Duplicator:
    """dup_tab of a loaded classifier (``Classifier``): entries by key."""

    def __init__(self, prog, interfaces: dict[int, str]):
        self.prog = prog
        self.interfaces = dict(interfaces)      # tunnel id -> interface name
        self.index: dict[tuple[int, str], int] = {}    # (site id, wan_key) -> dup_tab index
        self.pairs: dict[int, tuple[int, int]] = {}     # index -> (tunnel, copy) it was made for
        self.written: dict[int, bytes] = {}
        self.attached: set[str] = set()
        self.warned: set[tuple[str, str]] = set()
        self.carried: dict[tuple[int, str], tuple[int, int]] = {}   # counts of released entries
        # interface -> what a clone needs of it: read once (the wan table is rewritten
        # for every site on every quality change), again after a relink or relayout
        self.links: dict[str, Link] = {}

    def set_interfaces(self, interfaces: dict[int, str]) -> None:
        self.interfaces = dict(interfaces)
        self.links.clear()
        if self.attached:
            self._attach()

    def value(self, site: int, key: str, tunnel: int, copy: int) -> int | None:
        """The wan-table value that sends *key*'s packets on *tunnel* with a copy
        on *copy* (tunnel ids); None when no copy can be made (plain *tunnel* then)."""
        try:
            e = entry_for(tunnel, self._link(self.interfaces[tunnel]), copy,
                          self._link(self.interfaces[copy]))
        except (KeyError, OSError) as exc:
            e, why = None, f"interface unreadable: {exc}"
        else:
            why = "an Ethernet copy tunnel needs ARP off and an Ethernet tunnel to copy from"
        if e is None:
            pair = (self.interfaces.get(tunnel, "?"), self.interfaces.get(copy, "?"))
            if pair not in self.warned:
                self.warned.add(pair)
                log.error("no copies from %s onto %s: %s", pair[0], pair[1], why)
            return None
        idx = self.index.get((site, key))
        if idx is None:
            used = set(self.index.values())
            idx = next((i for i in range(1, DUP_MAX) if i not in used), None)
            if idx is None:
                log.error("no room for another duplicated rule (%d entries)", DUP_MAX - 1)
                return None
            self.index[site, key] = idx
            self._zero(idx)
        self.pairs[idx] = (tunnel, copy)
        raw = bytes(e)
        if self.written.get(idx) != raw:
            self.prog.table("dup_tab")[ct.c_uint32(idx)] = e
            self.written[idx] = raw
            log.info("%s: copies from %s onto %s (dup_tab[%d])", key, self.interfaces[tunnel],
                     self.interfaces[copy], idx)
        if not self.attached:
            self._attach()
        return DUP_FLAG | idx

    def keep_only(self, keys: set[tuple[int, str]]) -> None:
        """Release the entries of other keys (after the wan table stopped naming
        them); detach the egress filter when none is left."""
        for k in [k for k in self.index if k not in keys]:
            p, b = self._read(self.index[k])
            cp, cb = self.carried.get(k, (0, 0))
            self.carried[k] = (cp + p, cb + b)
            idx = self.index.pop(k)
            self.prog.table("dup_tab")[ct.c_uint32(idx)] = DupEntry()
            self.written.pop(idx, None)
            self.pairs.pop(idx, None)
        if not self.index and self.attached:
            detach_all(list(_ifindexes(self.attached).values()), DUP_PRIO, EGRESS_PARENT)
            self.attached = set()

    def _link(self, ifname: str) -> Link:
        if ifname not in self.links:
            self.links[ifname] = read_link(ifname)
        return self.links[ifname]

    def relinked(self, interfaces: list[str]) -> None:
        """Tunnel interfaces were created again (new ifindex, no filters): the
        egress filter goes back on them and every entry is rewritten from the
        links as they are now."""
        for ifname in interfaces:
            self.links.pop(ifname, None)
        if self.attached:
            self.attached -= set(interfaces)
            self._attach()
        for (site, key), idx in list(self.index.items()):
            tunnel, copy = self.pairs[idx]
            self.value(site, key, tunnel, copy)

    def counts(self) -> dict[tuple[int, str], tuple[int, int]]:
        """Copies sent (packets, bytes) per (site id, wan_key), this daemon's life."""
        out = dict(self.carried)
        for k, idx in self.index.items():
            p, b = self._read(idx)
            cp, cb = out.get(k, (0, 0))
            out[k] = (cp + p, cb + b)
        return out

    def tunnel_counts(self) -> dict[int, tuple[int, int]]:
        """Copies sent (packets, bytes) per copy tunnel id (since the maps were made)."""
        return {tid: self._read(tid, "dup_tx") for tid in self.interfaces}

    def _read(self, idx: int, table: str = "dup_stats") -> tuple[int, int]:
        vals = self.prog.table(table)[ct.c_uint32(idx)]
        return sum(v.packets for v in vals), sum(v.bytes for v in vals)

    def _zero(self, idx: int) -> None:
        t = self.prog.table("dup_stats")
        t[ct.c_uint32(idx)] = t.Leaf()      # one zeroed value per CPU

    def _attach(self) -> None:
        want = set(self.interfaces.values())
        detach_all(list(_ifindexes(self.attached - want).values()), DUP_PRIO, EGRESS_PARENT)
        self.attached &= want
        new = _ifindexes(want - self.attached, missing="no duplication on")
        refused = attach_all(list(new.values()), self.prog.dup_fd, DUP_PRIO, DUP_NAME,
                             EGRESS_PARENT)
        for ifname, ifindex in new.items():
            if ifindex in refused:
                log.error("no duplication on %s: %s", ifname, refused[ifindex])
            else:
                self.attached.add(ifname)


def _ifindexes(interfaces: set[str], missing: str = "") -> dict[str, int]:
    """Index by name of the interfaces that exist; those that do not are left
    out, logged when *missing* says why it matters."""
    out = {}
    for ifname in sorted(interfaces):
        try:
            out[ifname] = socket.if_nametoindex(ifname)
        except OSError as exc:
            if missing:
                log.error("%s %s: %s", missing, ifname, exc)
    return out


def detach(interfaces: list[str]) -> int:
    """Remove the egress filter from *interfaces* (cleanup); returns how many were removed."""
    return sum(tc_detach(i, DUP_PRIO, EGRESS_PARENT) for i in interfaces)
