"""RuleSet -> CompiledRules: the eBPF matcher's per-field tables (pure).

The compiler turns a RuleSet into per-field tables; every lookup yields the
bitmap of rules whose condition on that field holds; ANDing the fields and
taking the lowest set bit gives the first matching rule.  Bitmaps are stored
split in two: ``U[f]`` (rules that do not constrain field f; one dense bitmap
per field) and ``S[f](value)`` (rules that constrain f and accept the value;
sparse, deduplicated).  Splitting keeps S sparse: most rules constrain few
fields, so otherwise every entry would carry the dense "don't care" rules.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

from steerd import abi
from steerd.rules.encode import Layout, _dir
from steerd.rules.model import (F_SRC, F_DST, FB_AUTO, FB_DROP, FB_WAN, MAX_RULES, NFIELDS,
                                PORT_CLASSES, PacketKey, Rule, RuleSet)
from steerd.yamlsrc import Problem, ValidationError, gc_paused


@dataclass(frozen=True)
class Limits:
    """Dataplane capacities (per rule set); RuleMaps reads them from the loaded maps."""

    max_rules: int = MAX_RULES
    max_bitmaps: int = abi.RL_MAX_BITMAPS
    max_words: int = abi.RL_MAX_WORDS
    max_chunks: int = abi.RL_MAX_CHUNKS     # 16-entry IPv4 table chunks per set (src and dst share)
    max_chunks6: int = abi.RL_MAX_CHUNKS6   # same for IPv6
    max_wans: int = abi.RL_MAX_WANS
    max_ingress: int = abi.RL_MAX_INGRESS   # ingress hash entries, both sets

    def __post_init__(self) -> None:
        if self.max_rules < 64 or self.max_rules & (self.max_rules - 1):
            raise ValueError("max_rules must be a power of two >= 64 (ebpf/rules.h requires it)")

    @property
    def nwords(self) -> int:
        return (self.max_rules + 63) // 64

    @property
    def nsum(self) -> int:
        return (self.nwords + 63) // 64


@dataclass
class CompiledRules:
    """Per-field tables; bitmap ids index ``bitmaps`` (id 0 is the empty bitmap).

    ``src4``.. ``dst6`` are the prefixes with their ids (longest match wins;
    the /0 entry is always there when the field is used); ``dir4``/``dir6`` are
    the same as loaded into the kernel (multibit tables, see _dir).
    ``sport``/``dport`` hold, per port class (PORT_CLASSES), (lo, hi, id) runs
    covering 0..65535."""

    path: str
    names: tuple[str, ...]
    used: int                                   # bit f set: some rule constrains field f
    base: tuple[int, ...]                       # U[f] as ints, f = 0..6
    bitmaps: tuple[int, ...]                    # unique S bitmaps, bit i = rule i
    src4: tuple[tuple[int, int, int], ...]      # (network int, prefix length, id)
    dst4: tuple[tuple[int, int, int], ...]
    src6: tuple[tuple[int, int, int], ...]
    dst6: tuple[tuple[int, int, int], ...]
    sport: tuple[tuple[tuple[int, int, int], ...], ...]   # per port class: (lo, hi, id) runs
    dport: tuple[tuple[tuple[int, int, int], ...], ...]
    proto: tuple[int, ...]                      # 256 ids
    dscp: tuple[int, ...]                       # 64 ids
    ingress: dict[int, int]                     # ifindex -> id
    ingress_default: int
    wan_ids: dict[str, int]
    actions: tuple[tuple[int, int, int, int], ...]  # per rule: (wan id, FB_*, fallback wan id, prio)
    unresolved_ingress: tuple[str, ...]         # ingress names without an ifindex (never match)
    limits: Limits
    dir4: tuple[array, array, array] = (array("I"), array("I"), array("I"))
    dir6: tuple[array, array, array] = (array("I"), array("I"), array("I"))
    # multibit tables per family (see _dir): level-1 arrays for src and dst
    # (65536 entries each, empty when the field is unused) and the chunk pool

    @property
    def nchunks(self) -> int:
        return len(self.dir4[2]) // 16

    @property
    def nchunks6(self) -> int:
        return len(self.dir6[2]) // 16

    @property
    def nrules(self) -> int:
        return len(self.names)

    @cached_property
    def layout(self) -> "Layout":
        return Layout.build(self)

    def lookup(self, p: PacketKey) -> int | None:
        """Simulate ebpf/rules.h on the encoded tables (the property tests compare
        this, the reference classifier and the kernel)."""
        return self.layout.lookup(self, p)


class _Interner:
    """Dedupes bitmaps: identical S bitmaps are stored once and shared by index."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {0: 0}
        self.items: list[int] = [0]

    def __call__(self, bm: int) -> int:
        # one hash per call: hashing a 10,000-bit int walks all its digits
        i = self.ids.setdefault(bm, len(self.items))
        if i == len(self.items):
            self.items.append(bm)
        return i


def _lpm_entries(rules: Sequence[Rule], fld: str, version: int, intern: _Interner
                 ) -> tuple[tuple[int, int, int], ...]:
    """One LPM trie: each prefix's value is the S bitmap for addresses whose
    longest matching prefix it is (all rules of covering prefixes folded in)."""
    width = 32 if version == 4 else 128
    pos: dict[tuple[int, int], int] = {}
    neg: dict[tuple[int, int], int] = {}
    neg_only = 0
    for i, r in enumerate(rules):
        p_nets, n_nets = getattr(r.match, fld), getattr(r.match, fld + "_not")
        if n_nets and not p_nets:
            neg_only |= 1 << i
        for nets, acc in ((p_nets, pos), (n_nets, neg)):
            for n in nets:
                if n.version == version:
                    k = (int(n.network_address), n.prefixlen)
                    acc[k] = acc.get(k, 0) | (1 << i)
    keys = set(pos) | set(neg) | {(0, 0)}
    lens = sorted({plen for _, plen in keys}, reverse=True)
    acc_pos: dict[tuple[int, int], int] = {}
    acc_neg: dict[tuple[int, int], int] = {}
    out = []
    for net, plen in sorted(keys, key=lambda k: k[1]):
        # parent = longest present prefix strictly covering this one; /0 always exists
        pp, pn = 0, 0
        if plen:
            for l in lens:
                if l < plen:
                    parent = (net >> (width - l) << (width - l) if l else 0, l)
                    if parent in acc_pos:
                        pp, pn = acc_pos[parent], acc_neg[parent]
                        break
        k = (net, plen)
        ap = acc_pos[k] = pp | pos.get(k, 0)
        an = acc_neg[k] = pn | neg.get(k, 0)
        out.append((net, plen, intern((ap | neg_only) & ~an)))
    return tuple(out)


def _port_runs(rules: Sequence[Rule], fld: str, proto: int, intern: _Interner
               ) -> tuple[tuple[int, int, int], ...]:
    """Elementary intervals of 0..65535, each with the S bitmap of the rules that
    cover it *and accept protocol proto*.

    Folding the protocol into the port table keeps the search from wandering:
    with separate tables, 5,000 "tcp to 80" rules interleaved with 5,000 "udp
    to 53" rules make a tcp packet to port 53 see candidates in every 64-rule
    block (each field alone matches half the rules), so the search visits them
    all; per protocol, port 53 has no tcp rule and the search ends at once."""
    events: dict[int, int] = {}     # position -> XOR of rule bits toggling there
    for i, r in enumerate(rules):
        if r.match.proto is not None and proto not in r.match.proto:
            continue
        for lo, hi in getattr(r.match, fld):      # merged ranges: no overlap within a rule
            events[lo] = events.get(lo, 0) ^ (1 << i)
            events[hi + 1] = events.get(hi + 1, 0) ^ (1 << i)
    runs: list[tuple[int, int, int]] = []
    cur, start = 0, 0
    for pos in sorted(events) + [65536]:
        if pos > start:
            bid = intern(cur)
            if runs and runs[-1][2] == bid:
                runs[-1] = (runs[-1][0], pos - 1, bid)
            else:
                runs.append((start, pos - 1, bid))
            start = pos
        if pos <= 65535:
            cur ^= events[pos]
    return tuple(runs)


@gc_paused()    # ~10^5 big integers and tuples, all alive until the end
def compile_rules(ruleset: RuleSet, ifindexes: Mapping[str, int] | None = None,
                  limits: Limits = Limits()) -> CompiledRules:
    """Build the matcher's tables. *ifindexes* maps ingress names to ifindexes
    (names missing there make their rules match no interface until the next apply).
    Raises ValidationError when the set exceeds the dataplane's capacities."""
    rules = ruleset.rules
    n = len(rules)
    path = ruleset.path
    if n > limits.max_rules:
        raise ValidationError([Problem(path, rules[limits.max_rules].line,
                                       f"rules[{limits.max_rules}]", n,
                                       f"at most {limits.max_rules} rules")])
    intern = _Interner()
    used = 0
    base = [0] * NFIELDS
    for i, r in enumerate(rules):
        for f in range(NFIELDS):
            if r.match.constrains(f):
                used |= 1 << f
            else:
                base[f] |= 1 << i
    src4 = _lpm_entries(rules, "src", 4, intern) if used & (1 << F_SRC) else ()
    src6 = _lpm_entries(rules, "src", 6, intern) if used & (1 << F_SRC) else ()
    dst4 = _lpm_entries(rules, "dst", 4, intern) if used & (1 << F_DST) else ()
    dst6 = _lpm_entries(rules, "dst", 6, intern) if used & (1 << F_DST) else ()
    sport = tuple(_port_runs(rules, "src_port", pc, intern) for pc in PORT_CLASSES)
    dport = tuple(_port_runs(rules, "dst_port", pc, intern) for pc in PORT_CLASSES)
    proto_bm = [0] * 256
    dscp_bm = [0] * 64
    for i, r in enumerate(rules):
        for v in r.match.proto or ():
            proto_bm[v] |= 1 << i
        for v in r.match.dscp or ():
            dscp_bm[v] |= 1 << i
    proto = tuple(intern(b) for b in proto_bm)
    dscp = tuple(intern(b) for b in dscp_bm)
    ifx = dict(ifindexes or {})
    in_bm: dict[int, int] = {}
    unresolved: list[str] = []
    for i, r in enumerate(rules):
        for name in r.match.ingress:
            if name in ifx:
                in_bm[ifx[name]] = in_bm.get(ifx[name], 0) | (1 << i)
            elif name not in unresolved:
                unresolved.append(name)
    ingress = {ix: intern(b) for ix, b in in_bm.items()}
    wan_names = sorted({r.wan_key for r in rules} | {r.fallback for r in rules
                                                      if r.fallback not in ("auto", "drop")})
    wan_ids = {w: i for i, w in enumerate(wan_names)}
    actions = tuple(
        (wan_ids[r.wan_key],
         FB_AUTO if r.fallback == "auto" else FB_DROP if r.fallback == "drop" else FB_WAN,
         wan_ids.get(r.fallback, 0), r.priority or 0)
        for r in rules)
    pool4, pool6 = array("I"), array("I")
    dir4 = (_dir(src4, pool4, 32) if src4 else array("I"),
            _dir(dst4, pool4, 32) if dst4 else array("I"), pool4)
    dir6 = (_dir(src6, pool6, 128) if src6 else array("I"),
            _dir(dst6, pool6, 128) if dst6 else array("I"), pool6)
    c = CompiledRules(path, tuple(r.name for r in rules), used, tuple(base), tuple(intern.items),
                      src4, dst4, src6, dst6, sport, dport, proto, dscp, ingress, 0, wan_ids,
                      actions, tuple(unresolved), limits, dir4, dir6)
    _check_capacity(c, path)
    return c


def _check_capacity(c: CompiledRules, path: str) -> None:
    lim = c.limits
    problems = []
    if len(c.bitmaps) > lim.max_bitmaps:
        problems.append(Problem(path, 1, "rules", f"{len(c.bitmaps)} distinct bitmaps",
                                f"at most {lim.max_bitmaps} (dataplane RL_MAX_BITMAPS)"))
    if c.nchunks > lim.max_chunks:
        problems.append(Problem(path, 1, "rules", f"{c.nchunks} IPv4 table chunks",
                                f"at most {lim.max_chunks} (dataplane RL_MAX_CHUNKS)"))
    if c.nchunks6 > lim.max_chunks6:
        problems.append(Problem(path, 1, "rules", f"{c.nchunks6} IPv6 table chunks",
                                f"at most {lim.max_chunks6} (dataplane RL_MAX_CHUNKS6)"))
    if len(c.wan_ids) > lim.max_wans:
        problems.append(Problem(path, 1, "rules", f"{len(c.wan_ids)} wan roles",
                                f"at most {lim.max_wans} (each distinct wan list with its sla "
                                f"counts as one)"))
    if 2 * len(c.ingress) > lim.max_ingress:
        problems.append(Problem(path, 1, "rules", f"{len(c.ingress)} ingress interfaces",
                                f"at most {lim.max_ingress // 2}"))
    words = c.layout.nwords_used if not problems else 0
    if words > lim.max_words:
        problems.append(Problem(path, 1, "rules", f"{words} bitmap words",
                                f"at most {lim.max_words} (dataplane RL_MAX_WORDS)"))
    if problems:
        raise ValidationError(problems)
