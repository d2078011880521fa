"""Rules file -> RuleSet: parse and validate, every problem with file and line (pure),
in the style of the config (steerd.schema's checker; a rule's inline `sla:` is
checked as the config checks a quality class)."""
from __future__ import annotations

import re
from typing import Any, Collection, Iterable, Mapping

from steerd.config import sla_limits
from steerd.rules.model import (DSCP_NAMES, MATCH_KEYS, MAX_RULES, NAME_RE, PORT_PROTOS,
                                PROTO_NAMES, RULE_KEYS, Match, Network, Rule, RuleSet)
from steerd.sla import LIMIT_KEYS, SlaLimits
from steerd.schema import BAD, Checker, did_you_mean, missing, parse_network, unknown_key
from steerd.units import parse_percent
from steerd.yamlsrc import Node, Problem, ValidationError, gc_paused, load_yaml, read_text


def _as_list(node: Node) -> list[Node]:
    """A scalar or a sequence, as a list of nodes (``dst: 10.0.0.0/8`` == ``dst: [10.0.0.0/8]``)."""
    if node.tag == "seq":
        return list(node.value)
    if node.value is None:
        return []
    return [node]


def _hint(value: object, known: Iterable[str], lower: bool = False) -> str:
    """A mistyped name's "did you mean" (only ever computed for a bad value);
    *lower*: the names are case-insensitive (protocols, DSCP)."""
    if not isinstance(value, str):
        return ""
    return did_you_mean(value.strip().lower() if lower else value.strip(), known)


def _item_key(key: str, node: Node, i: int) -> str:
    """The key of item *i* of *node* in problems (``dst[1]``, or ``dst`` for a scalar)."""
    return f"{key}[{i}]" if node.tag == "seq" else key


def _parse_nets(ctx: Checker, node: Node, key: str, allow_bang: bool
                ) -> tuple[list[Network], list[Network]]:
    pos: list[Network] = []
    neg: list[Network] = []
    expected = "a CIDR like 10.0.0.0/8 or 2001:db8::/32 (network address, host bits zero)"
    if allow_bang:
        expected += ', "!CIDR" (quoted) to negate'
    for i, item in enumerate(_as_list(node)):
        v = item.value
        if item.tag != "scalar" or not isinstance(v, str) or not v.strip():
            ctx.fail(item, _item_key(key, node, i), item.plain(), expected)
            continue
        text, target = v.strip(), pos
        if text.startswith("!"):
            if not allow_bang:
                ctx.fail(item, _item_key(key, node, i), v, "a CIDR without '!' (this list is already negated)")
                continue
            text, target = text[1:].strip(), neg
        try:
            target.append(parse_network(text))
        except ValueError:
            ctx.fail(item, _item_key(key, node, i), v, expected)
    return pos, neg


def _parse_proto(ctx: Checker, node: Node, key: str) -> frozenset[int] | None:
    out: set[int] = set()
    any_ = False
    expected = "tcp, udp, icmp, icmpv6, sctp, any or a protocol number 0..255 (or a list of them)"
    items = _as_list(node)
    for i, item in enumerate(items):
        v = item.value
        if isinstance(v, str) and v.strip().lower() == "any":
            any_ = True
        elif isinstance(v, str) and v.strip().lower() in PROTO_NAMES:
            out.add(PROTO_NAMES[v.strip().lower()])
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
            out.add(v)
        else:
            ctx.fail(item, _item_key(key, node, i), item.plain(),
                     expected + _hint(v, [*PROTO_NAMES, "any"], lower=True))
    if any_ or not items:
        return None
    return frozenset(out)


_PORT_RE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def _parse_ports(ctx: Checker, node: Node, key: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    expected = 'a port 1..65535 or a range "a-b" with 1 <= a <= b <= 65535'
    for i, item in enumerate(_as_list(node)):
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
            ctx.fail(item, _item_key(key, node, i), item.plain(), expected)
    return out


def _parse_dscp(ctx: Checker, node: Node, key: str) -> frozenset[int] | None:
    out: set[int] = set()
    expected = "a DSCP 0..63 or a name (ef, le, cs0..cs7, af11..af43), or a list of them"
    items = _as_list(node)
    for i, item in enumerate(items):
        v = item.value
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 63:
            out.add(v)
        elif isinstance(v, str) and v.strip().lower() in DSCP_NAMES:
            out.add(DSCP_NAMES[v.strip().lower()])
        else:
            ctx.fail(item, _item_key(key, node, i), item.plain(), expected + _hint(v, DSCP_NAMES, lower=True))
    return frozenset(out) if items else None


def _parse_ingress(ctx: Checker, node: Node, key: str, ingress: set[str] | None) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(_as_list(node)):
        v = item.value
        if not isinstance(v, str) or not re.fullmatch(r"[^\s/]{1,15}", v):
            ctx.fail(item, _item_key(key, node, i), item.plain(), "an interface name (1..15 characters, no '/' or spaces)")
        elif ingress is not None and v not in ingress:
            ctx.fail(item, _item_key(key, node, i), v, f"one of the config's ingress interfaces: {sorted(ingress)}")
        else:
            out.append(v)
    return out


def _parse_match(ctx: Checker, node: Node | None, key: str, ingress: set[str] | None) -> Match:
    if node is None or node.value is None:
        return Match()
    if node.tag != "map":
        ctx.fail(node, key, node.plain(), "a mapping of match fields")
        return Match()
    m = node.value
    for k in m:
        if k not in MATCH_KEYS:
            unknown_key(ctx, m[k], f"{key}.{k}", k, MATCH_KEYS)
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
        ctx.fail(m["proto"], f"{key}.proto", m["proto"].plain(),
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


def _parse_wans(ctx: Checker, node: Node | None, parent: Node, key: str,
                wans: set[str] | None) -> list[str] | None:
    """``wan: wan2`` or ``wan: [wan2, wan1]`` (preference order): the roles, or None."""
    if node is None:
        missing(ctx, parent, key, "wan", _wan_expected(wans))
        return None
    items = [(f"{key}.wan[{i}]", n) for i, n in enumerate(node.value)] if node.tag == "seq" \
        else [(f"{key}.wan", node)]
    if node.tag == "seq" and not items:
        ctx.fail(node, f"{key}.wan", [], f"{_wan_expected(wans)}, or a non-empty list of them")
        return None
    out: list[str] = []
    for k, item in items:
        v = item.value
        if item.tag != "scalar" or not isinstance(v, str) or not v or \
                (wans is not None and v not in wans):
            ctx.fail(item, k, item.plain(), _wan_expected(wans) + _hint(v, wans or ()))
        elif v in out:
            ctx.fail(item, k, v, "each wan role once in the list")
        else:
            out.append(v)
    return out if len(out) == len(items) else None


def _parse_sla(ctx: Checker, node: Node, key: str,
               classes: Mapping[str, SlaLimits] | None) -> str | SlaLimits | None:
    """``sla: realtime`` (a class of the config's sla_classes) or inline limits."""
    if node.tag == "map":
        limits = sla_limits(ctx, node, key)
        return None if limits is BAD else limits
    v = node.value
    known = f" ({', '.join(sorted(classes))})" if classes else ""
    expected = (f"a class of the config's sla_classes{known} or a mapping of limits "
                f"({', '.join(LIMIT_KEYS)})")
    if node.tag != "scalar" or not isinstance(v, str) or not v or \
            (classes is not None and v not in classes):
        if classes is not None and not classes and isinstance(v, str):
            expected += "; the config defines no sla_classes"
        ctx.fail(node, key, node.plain(), expected + _hint(v, classes or ()))
        return None
    return v


_DUP_EXPECTED = "true, false or {when_loss_above: PERCENT} (such as {when_loss_above: 1%})"
_TCP_ONLY = ("a match that is not TCP-only, or allow_tcp: true: duplication is meant for "
             "real-time UDP (RTP and the like drop duplicates); the copy reaches the site "
             "host, and TCP takes duplicate segments for loss (duplicate ACKs, spurious "
             "retransmissions)")


def _parse_duplicate(ctx: Checker, r: dict[str, Node], key: str,
                     match: Match) -> tuple[bool, float | None, bool]:
    """``duplicate: true`` or ``{when_loss_above: 1%}``, and ``allow_tcp``:
    (duplicate, loss threshold in % or None for always, allow_tcp)."""
    dup, above, allow = False, None, False
    if "allow_tcp" in r:
        n = r["allow_tcp"]
        if n.tag != "scalar" or not isinstance(n.value, bool):
            ctx.fail(n, f"{key}.allow_tcp", n.plain(), "true or false")
        else:
            allow = n.value
    dup_problems = len(ctx.problems)
    if "duplicate" in r:
        n = r["duplicate"]
        if n.tag == "scalar" and isinstance(n.value, bool):
            dup = n.value
        elif n.tag == "map" and set(n.value) == {"when_loss_above"}:
            v = n.value["when_loss_above"]
            try:
                above = parse_percent(v.value if v.tag == "scalar" else None)
                if not 0 < above < 100:
                    raise ValueError
                dup = True
            except ValueError:
                ctx.fail(v, f"{key}.duplicate.when_loss_above", v.plain(),
                        "a loss percentage above 0 and below 100, such as 1%")
        else:
            ctx.fail(n, f"{key}.duplicate", n.plain(), _DUP_EXPECTED)
    if allow and not dup and len(ctx.problems) == dup_problems:
        ctx.fail(r["allow_tcp"], f"{key}.allow_tcp", True,
                "allow_tcp only with duplicate (it lets a TCP-only match be duplicated)")
    if dup and not allow and match.proto == frozenset({6}):
        ctx.fail(r["duplicate"], f"{key}.duplicate", r["duplicate"].plain(), _TCP_ONLY)
    return dup, above, allow


def _parse_sites(ctx: Checker, r: dict[str, Node], key: str, listed: list[str], fallback: Any,
                 sites: Mapping[str, Collection[str]] | None) -> tuple[str, ...]:
    """`site: NAME` or a list (hub mode): the rule applies at those sites only,
    and its wan roles (and fallback role) must be wan roles of each of them."""
    if "site" not in r:
        return ()
    node = r["site"]
    items = node.value if node.tag == "seq" else [node]
    known = f"one of the config's sites: {', '.join(sorted(sites))}" if sites is not None \
        else "a site name"
    if not items:
        ctx.fail(node, f"{key}.site", [], f"a site name or a non-empty list of them ({known})")
        return ()
    names = []
    for i, item in enumerate(items):
        sub = f"{key}.site[{i}]" if node.tag == "seq" else f"{key}.site"
        v = item.value
        if not isinstance(v, str) or (sites is not None and v not in sites):
            ctx.fail(item, sub, item.plain(), known + _hint(v, sites or ()))
            continue
        names.append(v)
        if sites is None:
            continue
        for what, role in [("wan", w) for w in listed] + [("fallback", fallback)]:
            if isinstance(role, str) and role not in ("auto", "drop") and role not in sites[v] \
                    and what in r:
                ctx.fail(r[what], f"{key}.{what}", role,
                        f"a wan role of site {v}: {', '.join(sorted(sites[v]))}")
    return tuple(names)


def _parse_rule(ctx: Checker, node: Node, idx: int, wans: set[str] | None,
                ingress: set[str] | None, seen: dict[str, int],
                classes: Mapping[str, SlaLimits] | None = None,
                sites: Mapping[str, Collection[str]] | None = None) -> Rule | None:
    key = f"rules[{idx}]"
    if node.tag != "map":
        ctx.fail(node, key, node.plain(), "a mapping with name, match, wan, fallback")
        return None
    r = node.value
    before = len(ctx.problems)
    for k in r:
        if k not in RULE_KEYS:
            unknown_key(ctx, r[k], f"{key}.{k}", k, RULE_KEYS)
    name = r["name"].value if "name" in r else None
    if "name" not in r:
        missing(ctx, node, key, "name", "a rule name")
    elif not isinstance(name, str) or not NAME_RE.fullmatch(name):
        ctx.fail(r["name"], f"{key}.name", r["name"].plain(),
                "1..64 characters of A-Z a-z 0-9 _ . : -")
    elif name in seen:
        ctx.fail(r["name"], f"{key}.name", name, f"a unique name (also used on line {seen[name]})")
    else:
        seen[name] = r["name"].line
    match = _parse_match(ctx, r.get("match"), f"{key}.match", ingress)
    listed = _parse_wans(ctx, r.get("wan"), node, key, wans)
    wan = listed[0] if listed else None
    sla = _parse_sla(ctx, r["sla"], f"{key}.sla", classes) if "sla" in r else None
    fallback = r["fallback"].value if "fallback" in r else "auto"
    if "fallback" in r:
        ok = isinstance(fallback, str) and (
            fallback in ("auto", "drop") or
            (fallback not in (listed or [wan]) and (wans is None or fallback in wans)
             and bool(fallback)))
        if not ok:
            ctx.fail(r["fallback"], f"{key}.fallback", r["fallback"].plain(),
                    "auto, drop or a wan role the rule does not list" +
                    (f" ({', '.join(sorted(wans))})" if wans is not None else ""))
    priority = r["priority"].value if "priority" in r else None
    if "priority" in r and (not isinstance(priority, int) or isinstance(priority, bool)
                            or not 1 <= priority <= 255):
        ctx.fail(r["priority"], f"{key}.priority", r["priority"].plain(), "an integer 1..255")
    rule_sites = _parse_sites(ctx, r, key, listed or [], fallback, sites)
    dup, dup_above, allow_tcp = _parse_duplicate(ctx, r, key, match)
    if len(ctx.problems) != before:
        return None
    return Rule(name=name, match=match, wan=wan, fallback=fallback, priority=priority,
                line=node.line, wans=tuple(listed) if len(listed) > 1 else (), sla=sla,
                sites=rule_sites, duplicate=dup, dup_loss_above=dup_above, allow_tcp=allow_tcp)


def _validate(root: Node, path: str, wans: set[str] | None, ingress: set[str] | None,
              max_rules: int, classes: Mapping[str, SlaLimits] | None = None,
              sites: Mapping[str, Collection[str]] | None = None
              ) -> tuple[list[Rule | None], list[Problem]]:
    ctx = Checker(path)
    if root.tag != "map":
        ctx.fail(root, "<top>", root.plain(), "a mapping with the key 'rules'")
        return [], ctx.problems
    for k in root.value:
        if k != "rules":
            ctx.fail(root.value[k], k, k, "only the key 'rules'")
    rules_node = root.value.get("rules")
    items: list[Node] = []
    if rules_node is not None and rules_node.value is not None:
        if rules_node.tag != "seq":
            ctx.fail(rules_node, "rules", rules_node.plain(), "a list of rules")
        else:
            items = rules_node.value
    if len(items) > max_rules:
        ctx.fail(items[max_rules], f"rules[{max_rules}]", len(items),
                f"at most {max_rules} rules")
    seen: dict[str, int] = {}
    rules = [_parse_rule(ctx, item, i, wans, ingress, seen, classes, sites)
             for i, item in enumerate(items)]
    return rules, ctx.problems


def parse_rules(text: str, path: str, wans: set[str] | None = None,
                ingress: set[str] | None = None, max_rules: int = MAX_RULES,
                sla_classes: Mapping[str, SlaLimits] | None = None,
                sites: Mapping[str, Collection[str]] | None = None) -> RuleSet:
    """Parse and validate a rules file (any YAML style, JSON too). Raises
    ValidationError listing every problem, each with its line.

    *wans*: the config's wan roles (``SiteConfig.wans``); None skips that check.
    *ingress*: the config's ingress interfaces; None skips that check.
    *sla_classes*: the config's quality classes; None skips that check.
    *sites*: site name -> its wan roles (``SiteConfig.site_wans``), for rules
    limited with ``site:``; None skips those checks."""
    with gc_paused():
        root = load_yaml(text, path)
        rules, problems = _validate(root, path, wans, ingress, max_rules, sla_classes, sites)
    if problems:
        raise ValidationError(problems)
    return RuleSet(tuple(r for r in rules if r is not None), path)


def load_rules(path: str, wans: set[str] | None = None, ingress: set[str] | None = None,
               max_rules: int = MAX_RULES,
               sla_classes: Mapping[str, SlaLimits] | None = None,
               sites: Mapping[str, Collection[str]] | None = None) -> RuleSet:
    return parse_rules(read_text(path, "a readable rules file"), path, wans, ingress, max_rules,
                       sla_classes, sites)
