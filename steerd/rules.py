"""Network rules: parse + validate the rules file, diff, a reference
classifier, and the compiler to the eBPF matcher's per-field tables (pure).

Rules file (order = priority, the first matching rule wins)::

    rules:
      - name: voice                  # unique, [A-Za-z0-9_.:-], <= 64 chars
        match:                       # optional; absent or {} matches every packet
          src: [10.0.0.0/8, "!10.1.0.0/16"]   # CIDR or list, IPv4 and IPv6
          src_not: [10.2.0.0/16]     # negation, same as a quoted "!" entry
          dst: 10.20.5.0/24
          dst_not: []
          proto: [tcp, udp]          # tcp|udp|icmp|icmpv6|sctp|any|0..255, or a list
          src_port: []               # 1..65535 and "a-b" ranges; [] = any
          dst_port: [5060, 10000-20000]
          dscp: [ef, 34]             # 0..63 or cs0..cs7, af11..af43, ef, le; or a list
          ingress: eth1              # interface name or list; absent = any
        wan: wan2                    # required: the WAN role this traffic is pinned to
        fallback: auto               # auto (default) | drop | another wan role
        priority: 10                 # optional 1..255, used by QoS later

Match semantics (the eBPF matcher implements exactly these, see ebpf/rules.h):

* Every field present must match (AND); an absent field or an empty list matches all.
* Address fields: the packet address must lie in one of the positive prefixes
  (if any are given) and in none of the negated ones.  An address of the other
  family lies in no prefix of this family, so ``src: [10.0.0.0/8]`` never matches
  IPv6 and ``src_not: [10.0.0.0/8]`` matches every IPv6 packet.
  Negated entries must be quoted in YAML (``"!10.0.0.0/8"``): unquoted ``!`` is a YAML tag.
* ``icmp`` is protocol 1 and ``icmpv6`` 58, as in nftables; write both for both families.
* Ports: packets of protocols without ports (ICMP, ...) and non-first fragments
  carry port 0, so they never match a rule that lists ports.  Port 0 itself is
  therefore not accepted in rules.

The compiler turns a RuleSet into per-field tables; every lookup yields the
bitmap of rules whose condition on that field holds; ANDing the fields and
taking the lowest set bit gives the first matching rule.  Bitmaps are stored
split in two: ``U[f]`` (rules that do not constrain field f; one dense bitmap
per field) and ``S[f](value)`` (rules that constrain f and accept the value;
sparse, deduplicated).  Splitting keeps S sparse: most rules constrain few
fields, so otherwise every entry would carry the dense "don't care" rules.
"""
from __future__ import annotations

import bisect
import ipaddress
import json
import re
from array import array
from dataclasses import dataclass, field
from functools import cached_property
from itertools import compress
from typing import Any, Iterable, Mapping, Sequence, Union

import yaml

from steerd.fastyaml import fast_load
from steerd.yamlsrc import Node, Problem, ValidationError, load_yaml

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: Default capacity; the loader passes the same value as -DMAX_RULES.
MAX_RULES = 16384

PROTO_NAMES = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
#: Protocols whose packets carry ports (ebpf/pkt.h parses ports only for these).
PORT_PROTOS = frozenset({6, 17, 132, 136})
#: Port tables are per protocol class (index = class): see _port_runs.
PORT_CLASSES = (6, 17, 132, 136)


def port_class(proto: int) -> int:
    """Port table of a packet's protocol (ebpf/rules.h rl_port_class). Packets
    of other protocols carry port 0, which no rule's port list contains."""
    return PORT_CLASSES.index(proto) if proto in PORT_CLASSES else 0

DSCP_NAMES: dict[str, int] = {"ef": 46, "le": 1}
DSCP_NAMES.update({f"cs{i}": 8 * i for i in range(8)})
DSCP_NAMES.update({f"af{c}{d}": 8 * c + 2 * d for c in range(1, 5) for d in range(1, 4)})

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_RULE_KEYS = ("name", "match", "wan", "fallback", "priority")
_MATCH_KEYS = ("src", "src_not", "dst", "dst_not", "proto", "src_port", "dst_port",
               "dscp", "ingress")

# Field numbers: bit positions in CompiledRules.used and indexes of the base
# bitmaps; ebpf/rules.h uses the same numbering (RL_F_*).
F_SRC, F_DST, F_SPORT, F_DPORT, F_PROTO, F_DSCP, F_INGRESS = range(7)
NFIELDS = 7
FIELD_NAMES = ("src", "dst", "src_port", "dst_port", "proto", "dscp", "ingress")

# Verdict kinds (ebpf/rules.h RV_*) and fallback kinds stored per rule.
RV_NONE, RV_TUNNEL, RV_SPREAD, RV_DROP = 0, 1, 2, 3
FB_AUTO, FB_DROP, FB_WAN = 0, 1, 2
NO_TUNNEL = 0xFFFFFFFF


# --------------------------------------------------------------------------- model

@dataclass(frozen=True)
class Match:
    """One rule's conditions; empty tuple / None = any."""

    src: tuple[Network, ...] = ()
    src_not: tuple[Network, ...] = ()
    dst: tuple[Network, ...] = ()
    dst_not: tuple[Network, ...] = ()
    proto: frozenset[int] | None = None
    src_port: tuple[tuple[int, int], ...] = ()
    dst_port: tuple[tuple[int, int], ...] = ()
    dscp: frozenset[int] | None = None
    ingress: tuple[str, ...] = ()

    def constrains(self, f: int) -> bool:
        """Whether this match restricts field *f* (else the rule is in U[f])."""
        if f == F_SRC:
            return bool(self.src or self.src_not)
        if f == F_DST:
            return bool(self.dst or self.dst_not)
        if f == F_SPORT:
            return bool(self.src_port)
        if f == F_DPORT:
            return bool(self.dst_port)
        if f == F_PROTO:
            return self.proto is not None
        if f == F_DSCP:
            return self.dscp is not None
        return bool(self.ingress)

    def as_dict(self) -> dict[str, Any]:
        """Canonical plain form (for `rules list --json`, diffs and docs)."""
        out: dict[str, Any] = {}
        for key in ("src", "src_not", "dst", "dst_not"):
            nets = getattr(self, key)
            if nets:
                out[key] = [str(n) for n in nets]
        if self.proto is not None:
            out["proto"] = [_proto_name(p) for p in sorted(self.proto)]
        for key in ("src_port", "dst_port"):
            ranges = getattr(self, key)
            if ranges:
                out[key] = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]
        if self.dscp is not None:
            out["dscp"] = sorted(self.dscp)
        if self.ingress:
            out["ingress"] = list(self.ingress)
        return out


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match
    wan: str
    fallback: str = "auto"          # "auto" | "drop" | a wan role
    priority: int | None = None
    line: int = field(default=0, compare=False)   # where it was written (0: unknown); not identity

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "match": self.match.as_dict(),
                               "wan": self.wan, "fallback": self.fallback}
        if self.priority is not None:
            out["priority"] = self.priority
        return out

    def summary(self) -> str:
        """One line, e.g. ``dst 10.20.5.0/24 proto udp dst_port 5060 -> wan2 (fallback auto)``."""
        parts = []
        for key, val in self.match.as_dict().items():
            parts.append(f"{key} {','.join(str(v) for v in val)}")
        cond = " ".join(parts) or "any"
        return f"{cond} -> {self.wan} (fallback {self.fallback})"


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    path: str = "<rules>"

    def __len__(self) -> int:
        return len(self.rules)

    def names(self) -> list[str]:
        return [r.name for r in self.rules]

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}


@dataclass(frozen=True)
class PacketKey:
    """What the classifier sees of a packet (struct pkt + the ingress interface).

    Ports are 0 for protocols without ports and for non-first fragments."""

    family: int
    src: Address
    dst: Address
    proto: int
    sport: int = 0
    dport: int = 0
    dscp: int = 0
    ifindex: int = 0
    ifname: str | None = None

    @staticmethod
    def make(src: str, dst: str, proto: int | str, sport: int = 0, dport: int = 0,
             dscp: int = 0, ifindex: int = 0, ifname: str | None = None) -> "PacketKey":
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError("src and dst of different families")
        p = PROTO_NAMES[proto] if isinstance(proto, str) else proto
        return PacketKey(s.version, s, d, p, sport, dport, dscp, ifindex, ifname)


# --------------------------------------------------------------------------- parsing

def _proto_name(p: int) -> str | int:
    for name, num in PROTO_NAMES.items():
        if num == p:
            return name
    return p


class _Ctx:
    """Collects problems for one file so that all errors come out at once."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []

    def bad(self, node: Node | None, line: int, key: str, value: Any, expected: str) -> None:
        self.problems.append(Problem(self.path, node.line if node else line, key, value, expected))


def _as_list(node: Node) -> list[Node]:
    """A scalar or a sequence, as a list of nodes (``dst: 10.0.0.0/8`` == ``dst: [10.0.0.0/8]``)."""
    if node.tag == "seq":
        return list(node.value)
    if node.value is None:
        return []
    return [node]


def _parse_nets(ctx: _Ctx, node: Node, key: str, allow_bang: bool
                ) -> tuple[list[Network], list[Network]]:
    pos: list[Network] = []
    neg: list[Network] = []
    expected = "a CIDR like 10.0.0.0/8 or 2001:db8::/32 (network address, host bits zero)"
    if allow_bang:
        expected += ', "!CIDR" (quoted) to negate'
    for i, item in enumerate(_as_list(node)):
        k = f"{key}[{i}]" if node.tag == "seq" else key
        v = item.value
        if item.tag != "scalar" or not isinstance(v, str) or not v.strip():
            ctx.bad(item, 0, k, item.plain(), expected)
            continue
        text, target = v.strip(), pos
        if text.startswith("!"):
            if not allow_bang:
                ctx.bad(item, 0, k, v, "a CIDR without '!' (this list is already negated)")
                continue
            text, target = text[1:].strip(), neg
        try:
            target.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            ctx.bad(item, 0, k, v, expected)
    return pos, neg


def _parse_proto(ctx: _Ctx, node: Node, key: str) -> frozenset[int] | None:
    out: set[int] = set()
    any_ = False
    expected = "tcp, udp, icmp, icmpv6, sctp, any or a protocol number 0..255 (or a list of them)"
    items = _as_list(node)
    for i, item in enumerate(items):
        k = f"{key}[{i}]" if node.tag == "seq" else key
        v = item.value
        if isinstance(v, str) and v.strip().lower() == "any":
            any_ = True
        elif isinstance(v, str) and v.strip().lower() in PROTO_NAMES:
            out.add(PROTO_NAMES[v.strip().lower()])
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
            out.add(v)
        else:
            ctx.bad(item, 0, k, item.plain(), expected)
    if any_ or not items:
        return None
    return frozenset(out)


_PORT_RE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def _parse_ports(ctx: _Ctx, node: Node, key: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    expected = 'a port 1..65535 or a range "a-b" with 1 <= a <= b <= 65535'
    for i, item in enumerate(_as_list(node)):
        k = f"{key}[{i}]" if node.tag == "seq" else key
        v = item.value
        lo = hi = -1
        if isinstance(v, int) and not isinstance(v, bool):
            lo = hi = v
        elif isinstance(v, str):
            m = _PORT_RE.fullmatch(v)
            if m:
                lo = int(m.group(1))
                hi = int(m.group(2)) if m.group(2) is not None else lo
        if 1 <= lo <= hi <= 65535:
            out.append((lo, hi))
        else:
            ctx.bad(item, 0, k, item.plain(), expected)
    return out


def _parse_dscp(ctx: _Ctx, node: Node, key: str) -> frozenset[int] | None:
    out: set[int] = set()
    expected = "a DSCP 0..63 or a name (ef, le, cs0..cs7, af11..af43), or a list of them"
    items = _as_list(node)
    for i, item in enumerate(items):
        k = f"{key}[{i}]" if node.tag == "seq" else key
        v = item.value
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 63:
            out.add(v)
        elif isinstance(v, str) and v.strip().lower() in DSCP_NAMES:
            out.add(DSCP_NAMES[v.strip().lower()])
        else:
            ctx.bad(item, 0, k, item.plain(), expected)
    return frozenset(out) if items else None


def _parse_ingress(ctx: _Ctx, node: Node, key: str, ingress: set[str] | None) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(_as_list(node)):
        k = f"{key}[{i}]" if node.tag == "seq" else key
        v = item.value
        if not isinstance(v, str) or not re.fullmatch(r"[^\s/]{1,15}", v):
            ctx.bad(item, 0, k, item.plain(), "an interface name (1..15 characters, no '/' or spaces)")
        elif ingress is not None and v not in ingress:
            ctx.bad(item, 0, k, v, f"one of the config's ingress interfaces: {sorted(ingress)}")
        else:
            out.append(v)
    return out


def _parse_match(ctx: _Ctx, node: Node | None, key: str, ingress: set[str] | None) -> Match:
    if node is None or node.value is None:
        return Match()
    if node.tag != "map":
        ctx.bad(node, 0, key, node.plain(), "a mapping of match fields")
        return Match()
    m = node.value
    for k in m:
        if k not in _MATCH_KEYS:
            ctx.bad(m[k], 0, f"{key}.{k}", k, f"one of {', '.join(_MATCH_KEYS)}")
    nets: dict[str, tuple[Network, ...]] = {}
    for fld in ("src", "dst"):
        pos: list[Network] = []
        neg: list[Network] = []
        if fld in m:
            pos, neg = _parse_nets(ctx, m[fld], f"{key}.{fld}", allow_bang=True)
        if f"{fld}_not" in m:
            more, _ = _parse_nets(ctx, m[f"{fld}_not"], f"{key}.{fld}_not", allow_bang=False)
            neg += more
        nets[fld], nets[f"{fld}_not"] = tuple(dict.fromkeys(pos)), tuple(dict.fromkeys(neg))
    proto = _parse_proto(ctx, m["proto"], f"{key}.proto") if "proto" in m else None
    sport = _parse_ports(ctx, m["src_port"], f"{key}.src_port") if "src_port" in m else []
    dport = _parse_ports(ctx, m["dst_port"], f"{key}.dst_port") if "dst_port" in m else []
    if (sport or dport) and proto is not None and not (proto & PORT_PROTOS):
        ctx.bad(m["proto"], 0, f"{key}.proto", m["proto"].plain(),
                "tcp, udp, sctp or any: src_port/dst_port never match a protocol without ports")
    dscp = _parse_dscp(ctx, m["dscp"], f"{key}.dscp") if "dscp" in m else None
    ing = _parse_ingress(ctx, m["ingress"], f"{key}.ingress", ingress) if "ingress" in m else []
    return Match(src=nets["src"], src_not=nets["src_not"], dst=nets["dst"], dst_not=nets["dst_not"],
                 proto=proto, src_port=tuple(_merge_ranges(sport)),
                 dst_port=tuple(_merge_ranges(dport)), dscp=dscp, ingress=tuple(dict.fromkeys(ing)))


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping/adjacent ranges merged: one canonical form for diffs."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _wan_expected(wans: set[str] | None) -> str:
    return f"one of the config's wan roles: {', '.join(sorted(wans))}" if wans is not None \
        else "a wan role name"


def _parse_rule(ctx: _Ctx, node: Node, idx: int, wans: set[str] | None,
                ingress: set[str] | None, seen: dict[str, int]) -> Rule | None:
    key = f"rules[{idx}]"
    if node.tag != "map":
        ctx.bad(node, 0, key, node.plain(), "a mapping with name, match, wan, fallback")
        return None
    r = node.value
    before = len(ctx.problems)
    for k in r:
        if k not in _RULE_KEYS:
            ctx.bad(r[k], 0, f"{key}.{k}", k, f"one of {', '.join(_RULE_KEYS)}")
    name = r["name"].value if "name" in r else None
    if "name" not in r:
        ctx.bad(node, 0, f"{key}.name", None, "a rule name (required)")
    elif not isinstance(name, str) or not _NAME_RE.match(name):
        ctx.bad(r["name"], 0, f"{key}.name", r["name"].plain(),
                "1..64 characters of A-Z a-z 0-9 _ . : -")
    elif name in seen:
        ctx.bad(r["name"], 0, f"{key}.name", name, f"a unique name (also used on line {seen[name]})")
    else:
        seen[name] = r["name"].line
    match = _parse_match(ctx, r.get("match"), f"{key}.match", ingress)
    wan = r["wan"].value if "wan" in r else None
    if "wan" not in r:
        ctx.bad(node, 0, f"{key}.wan", None, f"{_wan_expected(wans)} (required)")
    elif not isinstance(wan, str) or not wan or (wans is not None and wan not in wans):
        ctx.bad(r["wan"], 0, f"{key}.wan", r["wan"].plain(), _wan_expected(wans))
    fallback = r["fallback"].value if "fallback" in r else "auto"
    if "fallback" in r:
        ok = isinstance(fallback, str) and (
            fallback in ("auto", "drop") or
            (fallback != wan and (wans is None or fallback in wans) and bool(fallback)))
        if not ok:
            ctx.bad(r["fallback"], 0, f"{key}.fallback", r["fallback"].plain(),
                    "auto, drop or a wan role other than the rule's wan" +
                    (f" ({', '.join(sorted(wans))})" if wans is not None else ""))
    priority = r["priority"].value if "priority" in r else None
    if "priority" in r and (not isinstance(priority, int) or isinstance(priority, bool)
                            or not 1 <= priority <= 255):
        ctx.bad(r["priority"], 0, f"{key}.priority", r["priority"].plain(), "an integer 1..255")
    if len(ctx.problems) != before:
        return None
    return Rule(name=name, match=match, wan=wan, fallback=fallback, priority=priority,
                line=node.line)


class _Duplicate(Exception):
    pass


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate()
    return out


if getattr(yaml, "__with_libyaml__", False):
    class _FastLoader(yaml.CSafeLoader):   # type: ignore[name-defined,misc]
        """libyaml-backed safe loader that refuses duplicate keys (load_yaml reports them)."""

    def _fast_mapping(loader: Any, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = [k.value for k, _ in node.value]
        if len(set(keys)) != len(keys):
            raise _Duplicate()
        return loader.construct_mapping(node, deep=True)

    _FastLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _fast_mapping)
else:   # pragma: no cover - Debian's python3-yaml has libyaml
    _FastLoader = None


def _wrap(obj: Any) -> Node:
    """Plain data as a Node tree without line numbers (line 0)."""
    if isinstance(obj, dict):
        return Node({k if isinstance(k, str) else repr(k): _wrap(v) for k, v in obj.items()},
                    0, "map")
    if isinstance(obj, list):
        return Node([_wrap(v) for v in obj], 0, "seq")
    return Node(obj, 0, "scalar")


def _fast_tree(text: str) -> Node | None:
    """The file's tree, fast: json for JSON files (JSON is YAML), else
    steerd.fastyaml (plain block YAML, ~0.15 s for 10,000 rules), else libyaml
    (~0.7 s); JSON and libyaml without line numbers. None when that is not
    possible. load_yaml's pure-Python composer takes ~3 s for 10,000 rules:
    it is used only when there is an error to report, to name its line."""
    try:
        if text.lstrip().startswith("{"):
            return _wrap(json.loads(text, object_pairs_hook=_json_pairs))
        tree = fast_load(text)
        if tree is not None:
            return tree
        if _FastLoader is not None:
            data = yaml.load(text, Loader=_FastLoader)
            return _wrap(data if data is not None else {})
    except (ValueError, _Duplicate, yaml.YAMLError, RecursionError):
        pass
    return None


def _validate(root: Node, path: str, wans: set[str] | None, ingress: set[str] | None,
              max_rules: int) -> tuple[list[Rule | None], list[Problem]]:
    ctx = _Ctx(path)
    if root.tag != "map":
        ctx.bad(root, 0, "<top>", root.plain(), "a mapping with the key 'rules'")
        return [], ctx.problems
    for k in root.value:
        if k != "rules":
            ctx.bad(root.value[k], 0, k, k, "only the key 'rules'")
    rules_node = root.value.get("rules")
    items: list[Node] = []
    if rules_node is not None and rules_node.value is not None:
        if rules_node.tag != "seq":
            ctx.bad(rules_node, 0, "rules", rules_node.plain(), "a list of rules")
        else:
            items = rules_node.value
    if len(items) > max_rules:
        ctx.bad(items[max_rules], 0, f"rules[{max_rules}]", len(items),
                f"at most {max_rules} rules")
    seen: dict[str, int] = {}
    rules = [_parse_rule(ctx, item, i, wans, ingress, seen) for i, item in enumerate(items)]
    return rules, ctx.problems


def parse_rules(text: str, path: str, wans: set[str] | None = None,
                ingress: set[str] | None = None, max_rules: int = MAX_RULES) -> RuleSet:
    """Parse and validate a rules file. Raises ValidationError listing every problem.

    *wans*: the config's wan roles (``SiteConfig.wans``); None skips that check.
    *ingress*: the config's ingress interfaces; None skips that check.
    Rules parsed on the fast path have ``line == 0`` (unknown)."""
    fast = _fast_tree(text)
    if fast is not None:
        rules, problems = _validate(fast, path, wans, ingress, max_rules)
        if not problems:
            return RuleSet(tuple(r for r in rules if r is not None), path)
    try:
        root = load_yaml(text, path)
    except yaml.MarkedYAMLError as exc:
        # e.g. an unquoted "!10.0.0.0/8" is a YAML tag that the constructor rejects
        mark = exc.problem_mark or exc.context_mark
        raise ValidationError([Problem(path, mark.line + 1 if mark else 1, "<yaml>",
                                       str(exc.problem),
                                       'well-formed YAML (quote negated CIDRs: "!10.0.0.0/8")')]
                              ) from None
    rules, problems = _validate(root, path, wans, ingress, max_rules)
    if problems:
        raise ValidationError(problems)
    return RuleSet(tuple(r for r in rules if r is not None), path)


def load_rules(path: str, wans: set[str] | None = None, ingress: set[str] | None = None,
               max_rules: int = MAX_RULES) -> RuleSet:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ValidationError([Problem(path, 0, "<file>", exc.strerror, "a readable rules file")]) \
            from None
    return parse_rules(text, path, wans, ingress, max_rules)


# --------------------------------------------------------------------------- diff

@dataclass(frozen=True)
class RuleDiff:
    added: tuple[Rule, ...]
    removed: tuple[Rule, ...]
    changed: tuple[tuple[Rule, Rule], ...]      # (old, new), same name
    moved: tuple[str, ...] = ()                 # kept rules whose relative order changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.moved)

    def render(self) -> str:
        """Human text for `steerctl rules apply` (one line per rule, field-level changes)."""
        if self.empty:
            return "no changes"
        lines = [f"+ {r.name}: {r.summary()}" for r in self.added]
        lines += [f"- {r.name}: {r.summary()}" for r in self.removed]
        for old, new in self.changed:
            lines.append(f"~ {new.name}:")
            a, b = old.as_dict(), new.as_dict()
            am, bm = a.pop("match"), b.pop("match")
            for k in _MATCH_KEYS:
                if am.get(k) != bm.get(k):
                    lines.append(f"    match.{k}: {_fmt(am.get(k))} -> {_fmt(bm.get(k))}")
            for k in ("wan", "fallback", "priority"):
                if a.get(k) != b.get(k):
                    lines.append(f"    {k}: {_fmt(a.get(k))} -> {_fmt(b.get(k))}")
        lines += [f"^ {n}: order changed" for n in self.moved]
        counts = (f"{len(self.added)} added, {len(self.removed)} removed, "
                  f"{len(self.changed)} changed, {len(self.moved)} moved")
        return "\n".join(lines + [counts])

    def as_dict(self) -> dict[str, Any]:
        return {"added": [r.name for r in self.added], "removed": [r.name for r in self.removed],
                "changed": [n.name for _, n in self.changed], "moved": list(self.moved)}


def _fmt(v: Any) -> str:
    if v is None:
        return "(any)" if not isinstance(v, str) else v
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


def diff(old: RuleSet, new: RuleSet) -> RuleDiff:
    """Rules compared by name. Order is priority, so a reordering is a change too:
    ``moved`` names the kept rules outside a longest run that kept its relative order."""
    o, n = old.by_name(), new.by_name()
    added = tuple(r for r in new.rules if r.name not in o)
    removed = tuple(r for r in old.rules if r.name not in n)
    changed = tuple((o[r.name], r) for r in new.rules if r.name in o and o[r.name] != r)
    kept_old = [r.name for r in old.rules if r.name in n]
    pos_new = {name: i for i, name in enumerate(r.name for r in new.rules if r.name in o)}
    seq = [pos_new[name] for name in kept_old]
    stay = _lis_members(seq)
    moved = tuple(name for name, p in zip(kept_old, seq) if p not in stay)
    return RuleDiff(added, removed, changed, moved)


def _lis_members(seq: Sequence[int]) -> set[int]:
    """Values on one longest increasing subsequence (patience sorting, O(n log n))."""
    tails: list[int] = []
    tails_idx: list[int] = []
    prev = [-1] * len(seq)
    for i, v in enumerate(seq):
        j = bisect.bisect_left(tails, v)
        if j == len(tails):
            tails.append(v)
            tails_idx.append(i)
        else:
            tails[j] = v
            tails_idx[j] = i
        prev[i] = tails_idx[j - 1] if j else -1
    out: set[int] = set()
    i = tails_idx[-1] if tails_idx else -1
    while i >= 0:
        out.add(seq[i])
        i = prev[i]
    return out


# --------------------------------------------------------------------------- reference classifier

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
    """(kind, tunnel) for a matched rule given each wan's usable tunnel (None = none)."""
    t = wan_tunnels.get(rule.wan)
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


# --------------------------------------------------------------------------- compiler

@dataclass(frozen=True)
class Limits:
    """Dataplane capacities (per rule set); RuleMaps reads them from the loaded maps."""

    max_rules: int = MAX_RULES
    max_bitmaps: int = 1 << 16
    max_words: int = 1 << 19
    max_chunks: int = 1 << 16     # 16-entry IPv4 table chunks per set (src and dst share)
    max_chunks6: int = 1 << 16    # same for IPv6
    max_wans: int = 16
    max_ingress: int = 256        # ingress hash entries, both sets

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
        i = self.ids.get(bm)
        if i is None:
            i = self.ids[bm] = len(self.items)
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
    block (each field alone matches half the rules) and cost ~3 us at 10,000
    rules; per protocol, port 53 has no tcp rule and the search ends at once."""
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


DIR_CHUNK = 0x80000000   # entry flag: the low 31 bits index a chunk, else an S id


def _dir(entries: tuple[tuple[int, int, int], ...], pool: array, width: int) -> array:
    """Longest-prefix match as a multibit table: DIR-16-4-4-... (IPv4: 4 chunk
    levels, IPv6: up to 28).

    Level 1 has one entry per top-16-bit value; an entry is an S id, or
    DIR_CHUNK | chunk index where more specific prefixes exist below it. A
    chunk has 16 entries for the next 4 bits, and so on. A lookup is a few
    loads from one map value, whatever the number of prefixes; the kernel LPM
    trie walks ~15 nodes at 10,000 prefixes and costs 30..90 ns more per field.

    Prefixes are painted shortest first, so a longer prefix overwrites a
    shorter one, and a new chunk starts as 16 copies of the value it refines.
    Chunks are appended to *pool* (shared by src and dst of a family)."""
    l1 = array("I", bytes(4 * 65536))
    for net, plen, bid in sorted(entries, key=lambda e: e[1]):
        if plen <= 16:
            start = net >> (width - 16)
            n = 1 << (16 - plen)
            l1[start:start + n] = array("I", [bid]) * n
            continue
        table, slot = l1, net >> (width - 16)
        top = 16                                     # bits resolved so far
        while True:
            v = table[slot]
            if v & DIR_CHUNK:
                chunk = v & ~DIR_CHUNK
            else:
                chunk = len(pool) // 16
                pool.extend(array("I", [v]) * 16)
                table[slot] = DIR_CHUNK | chunk
            base = chunk * 16
            nib = (net >> (width - 4 - top)) & 15
            if plen <= top + 4:
                n = 1 << (top + 4 - plen)
                pool[base + nib:base + nib + n] = array("I", [bid]) * n
                break
            table, slot, top = pool, base + nib, top + 4
    return l1


def _dir_lookup(l1: array, pool: array, addr: int, width: int) -> int:
    v = l1[addr >> (width - 16)]
    for level in range((width - 16) // 4):
        if not v & DIR_CHUNK:
            break
        v = pool[(v & ~DIR_CHUNK) * 16 + ((addr >> (width - 20 - 4 * level)) & 15)]
    return v


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
    wan_names = sorted({r.wan for r in rules} | {r.fallback for r in rules
                                                  if r.fallback not in ("auto", "drop")})
    wan_ids = {w: i for i, w in enumerate(wan_names)}
    actions = tuple(
        (wan_ids[r.wan],
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
                                f"at most {lim.max_wans}"))
    if 2 * len(c.ingress) > lim.max_ingress:
        problems.append(Problem(path, 1, "rules", f"{len(c.ingress)} ingress interfaces",
                                f"at most {lim.max_ingress // 2}"))
    words = c.layout.nwords_used if not problems else 0
    if words > lim.max_words:
        problems.append(Problem(path, 1, "rules", f"{words} bitmap words",
                                f"at most {lim.max_words} (dataplane RL_MAX_WORDS)"))
    if problems:
        raise ValidationError(problems)


# --------------------------------------------------------------------------- encoded layout

def _popcount(x: int) -> int:
    return x.bit_count()


@dataclass
class Layout:
    """The bitmaps as ebpf/rules.h stores them.

    S bitmap id -> ``bm_sum[id*nsum + k]``: bit j set when 64-rule block k*64+j
    has any rule, and ``bm_base[id*nsum + k]``: index in ``words`` of the first
    non-empty block of summary word k; block b's word is then at
    ``base[k] + popcount(sum[k] & ((1 << j) - 1))``.  Only non-empty blocks are
    stored, so sparse bitmaps cost a few words whatever the rule count.
    U bitmaps (one per field) are dense: ``ubase[f]`` = (sum words, block words)."""

    nsum: int
    nwords: int
    bm_sum: array          # 'Q', len(bitmaps) * nsum
    bm_base: array         # 'I', len(bitmaps) * nsum
    words: array           # 'Q'
    ubase: tuple[tuple[array, array], ...]   # per field: (sum 'Q' nsum, words 'Q' nwords)

    @property
    def nwords_used(self) -> int:
        return len(self.words)

    @staticmethod
    def build(c: CompiledRules) -> "Layout":
        nwords, nsum = c.limits.nwords, c.limits.nsum
        used_words = (c.nrules + 63) // 64         # words past the last rule are zero
        nbytes = used_words * 8
        bm_sum = array("Q", bytes(8 * nsum * len(c.bitmaps)))
        bm_base = array("I", bytes(4 * nsum * len(c.bitmaps)))
        words = array("Q")
        all_idx = range(used_words)
        for bid, bm in enumerate(c.bitmaps):
            if not bm:
                continue
            blocks = array("Q", bm.to_bytes(nbytes, "little"))
            start = len(words)
            # compress() walks the words in C: only non-empty blocks reach Python
            nz = list(compress(all_idx, blocks))
            words.extend(compress(blocks, blocks))
            o = bid * nsum
            for k in range(nsum):
                bm_base[o + k] = start      # base of an empty summary word is never read
            seen_k = -1
            for pos, b in enumerate(nz):
                k = b >> 6
                if k != seen_k:
                    bm_base[o + k] = start + pos
                    seen_k = k
                bm_sum[o + k] |= 1 << (b & 63)
        ubase = []
        for f in range(NFIELDS):
            u = c.base[f] if c.used & (1 << f) else (1 << c.nrules) - 1
            blocks = array("Q", u.to_bytes(nwords * 8, "little"))   # dense: struct rl_ubm
            s = array("Q", [0] * nsum)
            for b, w in enumerate(blocks):
                if w:
                    s[b >> 6] |= 1 << (b & 63)
            ubase.append((s, blocks))
        return Layout(nsum, nwords, bm_sum, bm_base, words, tuple(ubase))

    # The simulation below follows rules.h step by step (same tables, same order).

    def field_ids(self, c: CompiledRules, p: PacketKey) -> list[int]:
        ids = [0] * NFIELDS
        d, width = (c.dir4, 32) if p.family == 4 else (c.dir6, 128)
        for f, l1, addr in ((F_SRC, d[0], p.src), (F_DST, d[1], p.dst)):
            if c.used & (1 << f):
                ids[f] = _dir_lookup(l1, d[2], int(addr), width) & ~DIR_CHUNK
        if c.used & (1 << F_SPORT):
            ids[F_SPORT] = _run(c.sport[port_class(p.proto)], p.sport)
        if c.used & (1 << F_DPORT):
            ids[F_DPORT] = _run(c.dport[port_class(p.proto)], p.dport)
        if c.used & (1 << F_PROTO):
            ids[F_PROTO] = c.proto[p.proto]
        if c.used & (1 << F_DSCP):
            ids[F_DSCP] = c.dscp[p.dscp]
        if c.used & (1 << F_INGRESS):
            ids[F_INGRESS] = c.ingress.get(p.ifindex, c.ingress_default)
        return ids

    def lookup(self, c: CompiledRules, p: PacketKey) -> int | None:
        if c.nrules == 0:
            return None
        ids = self.field_ids(c, p)
        fields = [f for f in range(NFIELDS) if c.used & (1 << f)]
        for k in range(self.nsum):
            cand = (1 << 64) - 1
            for f in fields:
                cand &= self.bm_sum[ids[f] * self.nsum + k] | self.ubase[f][0][k]
            while cand:
                j = (cand & -cand).bit_length() - 1
                b = k * 64 + j
                w = (1 << 64) - 1
                for f in fields:
                    s = self.bm_sum[ids[f] * self.nsum + k]
                    ws = 0
                    if s >> j & 1:
                        ws = self.words[self.bm_base[ids[f] * self.nsum + k]
                                        + _popcount(s & ((1 << j) - 1))]
                    w &= ws | self.ubase[f][1][b]
                if w:
                    return b * 64 + (w & -w).bit_length() - 1
                cand &= cand - 1
        return None


def _lpm(entries: tuple[tuple[int, int, int], ...], addr: int, family: int) -> int:
    """Longest-prefix match by brute force (the tests' oracle for _dir)."""
    width = 32 if family == 4 else 128
    best, best_len = 0, -1
    for net, plen, bid in entries:
        if plen > best_len and (addr >> (width - plen) if plen else 0) == \
                (net >> (width - plen) if plen else 0):
            best, best_len = bid, plen
    return best


def _run(runs: tuple[tuple[int, int, int], ...], port: int) -> int:
    i = bisect.bisect_right(runs, (port, 1 << 30, 1 << 30)) - 1
    return runs[i][2]
