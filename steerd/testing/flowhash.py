"""Python twin of ``flow_hash`` in ebpf/pkt.h (its constants: steerd.abi FH_*).

Tests use it to predict which slot (and so which tunnel) a flow must take,
and the rebalance benchmark to place synthetic flows. Keep both identical.
"""
from __future__ import annotations

import ipaddress

from steerd.abi import FH_FMIX1, FH_FMIX2, FH_MUL, FH_ROT, FH_SEED

_M = 0xFFFFFFFF


def _mix(h: int, w: int) -> int:
    h = ((h ^ w) * FH_MUL) & _M
    return ((h << FH_ROT) | (h >> (32 - FH_ROT))) & _M


def _words(addr: str) -> list[int]:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return [int(ip), 0, 0, 0]
    v = int(ip)
    return [(v >> s) & _M for s in (96, 64, 32, 0)]


def flow_hash(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> int:
    """The 32-bit hash the classifier computes for this 5-tuple."""
    h = FH_SEED ^ proto
    for w in _words(src) + _words(dst):
        h = _mix(h, w)
    h = _mix(h, ((sport & 0xFFFF) << 16) | (dport & 0xFFFF))
    h ^= h >> 16
    h = (h * FH_FMIX1) & _M
    h ^= h >> 13
    h = (h * FH_FMIX2) & _M
    h ^= h >> 16
    return h


def slot_of(src: str, dst: str, proto: int, sport: int, dport: int, nslots: int) -> int:
    return flow_hash(src, dst, proto, sport, dport) % nslots
