"""Hub mode: a rule limited to some sites (`site:`) matches only destinations
inside those sites' ranges (pure).

A destination belongs to exactly one site (sites' ranges never overlap), so
"applies at site X" is "dst lies in X's ranges": the limit becomes part of the
rule's dst match before compiling, and the matcher needs nothing new. A rule
without `site:` is left alone; its `wan` is resolved per site by the data
path's wan table (a row per site).
"""
from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Mapping, Sequence

from steerd.rules.model import Network, Rule, RuleSet

EVERYTHING = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def intersect(a: Sequence[Network], b: Sequence[Network]) -> tuple[Network, ...]:
    """Prefixes in both lists' union (prefixes nest or are disjoint: the more
    specific of each overlapping pair)."""
    out = set()
    for x in a:
        for y in b:
            if x.version == y.version and x.overlaps(y):
                out.add(x if x.prefixlen >= y.prefixlen else y)
    return tuple(sorted(out, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def limit(rule: Rule, site_ranges: Mapping[str, Sequence[Network]]) -> Rule:
    if not rule.sites:
        return rule
    ranges = [n for s in rule.sites for n in site_ranges[s]]
    dst = intersect(rule.match.dst or EVERYTHING, ranges)
    if not dst:   # outside every listed site: matches nothing (not "any")
        return replace(rule, match=replace(rule.match, dst=(), dst_not=EVERYTHING))
    return replace(rule, match=replace(rule.match, dst=dst))


def limit_to_sites(ruleset: RuleSet, site_ranges: Mapping[str, Sequence[Network]]) -> RuleSet:
    """The rule set the matcher gets: site-limited rules' dst cut to their sites."""
    if not any(r.sites for r in ruleset.rules):
        return ruleset
    return replace(ruleset, rules=tuple(limit(r, site_ranges) for r in ruleset.rules))
