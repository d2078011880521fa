"""Python twin of ``flow_hash`` in ebpf/pkt.h.

Tests use it to predict which slot (and so which tunnel) a flow must take,
and the rebalance benchmark to place synthetic flows. Keep both identical.
"""
from __future__ import annotations

import ipaddress

_M = 0xFFFFFFFF


def _mix(h: int, w: int) -> int:
    h = ((h ^ w) * 0x9E3779B1) & _M
    return ((h << 13) | (h >> 19)) & _M


def _words(addr: str) -> list[int]:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return [int(ip), 0, 0, 0]
    v = int(ip)
    return [(v >> s) & _M for s in (96, 64, 32, 0)]


def flow_hash(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> int:
    """The 32-bit hash the classifier computes for this 5-tuple."""
    h = 0x5EED5EED ^ proto
    for w in _words(src) + _words(dst):
        h = _mix(h, w)
    h = _mix(h, ((sport & 0xFFFF) << 16) | (dport & 0xFFFF))
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M
    h ^= h >> 16
    return h


def slot_of(src: str, dst: str, proto: int, sport: int, dport: int, nslots: int) -> int:
    return flow_hash(src, dst, proto, sport, dport) % nslots
