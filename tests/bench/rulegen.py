"""Synthetic rule sets for the rules benchmark (and, later, the nftables comparison).

The mix imitates what operators pin: many destination networks (IPv4 /24 and
/32, some IPv6 /64), often with a protocol and ports or port ranges, some
source networks, some DSCP classes, a few negations. Deterministic per seed.
"""
from __future__ import annotations

import random

from steerd.testing.testrun import build_packet

WANS = ("wan1", "wan2", "wan3")


def rules_yaml(n: int, seed: int = 1) -> str:
    """A rules file with *n* rules; rule i's destination is derived from i, so
    every rule has packets that match it first (see matching_packet)."""
    rnd = random.Random(seed)
    out = ["rules:"]
    for i in range(n):
        a, b = (i >> 8) & 0xFF, i & 0xFF
        kind = i % 10
        lines = [f"  - name: r{i}", "    match:"]
        if kind <= 4:
            lines.append(f"      dst: 10.{a}.{b}.0/24")
            lines.append(f"      proto: {rnd.choice(['tcp', 'udp', '[tcp, udp]'])}")
            lo = rnd.randrange(1, 60000)
            lines.append(f"      dst_port: [{lo}, {lo + 10}-{lo + 10 + rnd.randrange(1, 500)}]")
        elif kind == 5:
            lines.append(f"      dst: [10.{a}.{b}.0/24, \"!10.{a}.{b}.128/25\"]")
        elif kind == 6:
            lines.append(f"      src: 172.16.{a}.{b}/32")
            lines.append(f"      dst: 10.{a}.{b}.0/24")
            lines.append("      dst_port: [443]")
            lines.append("      proto: tcp")
        elif kind == 7:
            lines.append(f"      dst: \"2001:db8:{a:x}:{b:x}::/64\"")
            lines.append("      proto: udp")
        elif kind == 8:
            lines.append(f"      dst: 10.{a}.{b}.0/24")
            lines.append(f"      dscp: {rnd.choice(['ef', 'af41', 'cs1', '[af11, af12]'])}")
        else:
            lines.append(f"      dst: 10.{a}.{b}.{rnd.randrange(1, 255)}/32")
            lines.append(f"      src_port: {rnd.randrange(1024, 65535)}")
            lines.append("      proto: udp")
        lines.append(f"    wan: {WANS[i % 3]}")
        lines.append(f"    fallback: {rnd.choice(['auto', 'drop', WANS[(i + 1) % 3]])}")
        out += lines
    return "\n".join(out) + "\n"


def catch_all_packet() -> bytes:
    """Matches no rule of rules_yaml(): a destination outside 10/8 and 2001:db8::/32."""
    return build_packet("192.0.2.1", "198.51.100.7", "udp", 40000, 53)


def matching_packet(ruleset, index: int) -> bytes:
    """A packet whose first matching rule is *index* (built from the rule's fields)."""
    import ipaddress

    m = ruleset.rules[index].match
    dst_net = m.dst[0]
    dst = str(dst_net.network_address + (1 if dst_net.num_addresses > 1 else 0))
    if dst_net.version == 6:
        src = "2001:db8:ffff::1"
    else:
        src = str(m.src[0].network_address) if m.src else "192.0.2.1"
    proto = min(m.proto) if m.proto else 17
    sport = m.src_port[0][0] if m.src_port else 40000
    dport = m.dst_port[-1][1] if m.dst_port else 53       # upper edge of the last range
    dscp = min(m.dscp) if m.dscp else 0
    ipaddress.ip_address(dst)
    return build_packet(src, dst, proto, sport, dport, dscp)
