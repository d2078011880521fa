"""Synthetic rule sets for the rules benchmark (and, later, the nftables comparison).

The mix imitates what operators pin: many destination networks (IPv4 /24 and
/32, some IPv6 /64), often with a protocol and ports or port ranges, some
source networks, some DSCP classes, a few negations. Deterministic per seed.
"""
from __future__ import annotations

import random

from steerd.testing.testrun import build_packet

WANS = ("wan1", "wan2", "wan3")


STYLES = ("block", "flow", "mixed")


def rules_yaml(n: int, seed: int = 1, style: str = "block") -> str:
    """A rules file with *n* rules; rule i's destination is derived from i, so
    every rule has packets that match it first (see matching_packet).

    *style*: ``block`` (one key per line), ``flow`` (one rule per line,
    ``- {name: r0, match: {dst: [10.0.0.0/24], proto: tcp, ...}, wan: wan1}``)
    or ``mixed`` (block rules with flow ``match`` mappings, and every third rule
    entirely in flow style). The same seed gives the same rules in every style."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}")
    rnd = random.Random(seed)
    out = ["rules:"]
    for i in range(n):
        match, wan, fallback = _rule(rnd, i)
        if style == "block" or (style == "mixed" and i % 3 == 1):
            out.append(f"  - name: r{i}")
            out.append("    match:")
            out += [f"      {k}: {v}" for k, v in match]
            out += [f"    wan: {wan}", f"    fallback: {fallback}"]
        elif style == "flow" or i % 3 == 0:
            m = ", ".join(f"{k}: {_flow_list(v)}" for k, v in match)
            out.append(f"  - {{name: r{i}, match: {{{m}}}, wan: {wan}, fallback: {fallback}}}")
        else:
            m = ", ".join(f"{k}: {v}" for k, v in match)
            out += [f"  - name: r{i}", f"    match: {{{m}}}", f"    wan: {wan}",
                    f"    fallback: {fallback}"]
    return "\n".join(out) + "\n"


def _flow_list(v: str) -> str:
    """A scalar written as a one-element list, the way operators write flow style."""
    return v if v.startswith("[") else f"[{v}]"


def _rule(rnd: random.Random, i: int) -> tuple[list[tuple[str, str]], str, str]:
    """Rule i's match fields (YAML text of each value), wan and fallback."""
    a, b = (i >> 8) & 0xFF, i & 0xFF
    kind = i % 10
    m: list[tuple[str, str]] = []
    if kind <= 4:
        m.append(("dst", f"10.{a}.{b}.0/24"))
        m.append(("proto", rnd.choice(["tcp", "udp", "[tcp, udp]"])))
        lo = rnd.randrange(1, 60000)
        m.append(("dst_port", f"[{lo}, {lo + 10}-{lo + 10 + rnd.randrange(1, 500)}]"))
    elif kind == 5:
        m.append(("dst", f"[10.{a}.{b}.0/24, \"!10.{a}.{b}.128/25\"]"))
    elif kind == 6:
        m.append(("src", f"172.16.{a}.{b}/32"))
        m.append(("dst", f"10.{a}.{b}.0/24"))
        m.append(("dst_port", "[443]"))
        m.append(("proto", "tcp"))
    elif kind == 7:
        m.append(("dst", f"\"2001:db8:{a:x}:{b:x}::/64\""))
        m.append(("proto", "udp"))
    elif kind == 8:
        m.append(("dst", f"10.{a}.{b}.0/24"))
        m.append(("dscp", rnd.choice(["ef", "af41", "cs1", "[af11, af12]"])))
    else:
        m.append(("dst", f"10.{a}.{b}.{rnd.randrange(1, 255)}/32"))
        m.append(("src_port", str(rnd.randrange(1024, 65535))))
        m.append(("proto", "udp"))
    return m, WANS[i % 3], rnd.choice(["auto", "drop", WANS[(i + 1) % 3]])


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


def adversarial_yaml(n: int) -> str:
    """Anti-correlated src/dst: even rules 10.1/16 -> 30/8, odd rules 10.2/16 -> 40/8.
    A packet 10.1.x -> 40.x has src candidates in every block and dst candidates
    in every block but no rule matching both: the search visits every block."""
    lines = ["rules:"]
    for i in range(n):
        src, dst = ("10.1.0.0/16", "30.0.0.0/8") if i % 2 == 0 else ("10.2.0.0/16", "40.0.0.0/8")
        lines.append(f"  - {{name: a{i}, wan: wan1, match: {{src: {src}, dst: {dst}}}}}")
    return "\n".join(lines) + "\n"
