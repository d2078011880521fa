"""The rule semantics written as plainly as possible: the oracle the compiled
tables and the eBPF matcher are tested against, and the verdict resolution (pure)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from steerd.rules.model import (NO_TUNNEL, RV_DROP, RV_NONE, RV_SPREAD, RV_TUNNEL, Address, Match,
                                Network, PacketKey, Rule, RuleSet)


def _addr_ok(addr: Address, pos: tuple[Network, ...], neg: tuple[Network, ...]) -> bool:
    # ipaddress's `in` does not compare versions (an IPv4 address can be "in" ::/0),
    # so filter by version explicitly.
    def inside(nets: tuple[Network, ...]) -> bool:
        return any(n.version == addr.version and addr in n for n in nets)
    return (not pos or inside(pos)) and not inside(neg)


def _ports_ok(port: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return not ranges or any(lo <= port <= hi for lo, hi in ranges)


def matches(m: Match, p: PacketKey) -> bool:
    """The rule semantics, written as plainly as possible: the oracle for the tests."""
    return (_addr_ok(p.src, m.src, m.src_not)
            and _addr_ok(p.dst, m.dst, m.dst_not)
            and (m.proto is None or p.proto in m.proto)
            and _ports_ok(p.sport, m.src_port)
            and _ports_ok(p.dport, m.dst_port)
            and (m.dscp is None or p.dscp in m.dscp)
            and (not m.ingress or p.ifname in m.ingress))


def classify(ruleset: RuleSet, p: PacketKey) -> int | None:
    """Index of the first (highest-priority) matching rule, or None."""
    for i, r in enumerate(ruleset.rules):
        if matches(r.match, p):
            return i
    return None


@dataclass(frozen=True)
class Verdict:
    kind: int                 # RV_*
    tunnel: int = NO_TUNNEL   # tunnel index when kind == RV_TUNNEL
    rule: int | None = None
    prio: int = 0             # the rule's priority, 0 when none (QoS class)


def resolve(rule: Rule, wan_tunnels: Mapping[str, int | None]) -> tuple[int, int]:
    """(kind, tunnel) for a matched rule given each wan's usable tunnel (None = none);
    a quality rule's entry (its ``wan_key``) holds the daemon's decision."""
    t = wan_tunnels.get(rule.wan_key)
    if t is not None:
        return RV_TUNNEL, t
    if rule.fallback == "drop":
        return RV_DROP, NO_TUNNEL
    if rule.fallback != "auto":
        t = wan_tunnels.get(rule.fallback)
        if t is not None:
            return RV_TUNNEL, t
    return RV_SPREAD, NO_TUNNEL


def decide(ruleset: RuleSet, p: PacketKey, wan_tunnels: Mapping[str, int | None]) -> Verdict:
    """Reference for rules_decide() in ebpf/rules.h."""
    i = classify(ruleset, p)
    if i is None:
        return Verdict(RV_NONE)
    kind, tunnel = resolve(ruleset.rules[i], wan_tunnels)
    return Verdict(kind, tunnel, i, ruleset.rules[i].priority or 0)
