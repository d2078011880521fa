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

The package, each module importing only those above it:

* ``model``     the rule data types and the numbers shared with ebpf/rules.h
* ``parse``     rules file -> RuleSet, every problem with file and line
* ``diff``      what an apply changes
* ``reference`` the rule semantics written plainly (the tests' oracle)
* ``encode``    the tables' layout as the eBPF maps store them
* ``compile``   RuleSet -> CompiledRules (per-field tables, capacity checks)
"""
from steerd.rules.model import (DSCP_NAMES, F_DPORT, F_DSCP, F_DST, F_INGRESS, F_PROTO, F_SPORT,
                                F_SRC, FB_AUTO, FB_DROP, FB_WAN, FIELD_NAMES, MAX_RULES, NFIELDS,
                                NO_TUNNEL, PORT_CLASSES, PORT_PROTOS, PROTO_NAMES, RV_DROP, RV_NONE,
                                RV_SPREAD, RV_TUNNEL, Address, Match, Network, PacketKey, Rule,
                                RuleSet, port_class)
from steerd.rules.parse import load_rules, parse_rules
from steerd.rules.diff import RuleDiff, diff
from steerd.rules.reference import Verdict, classify, decide, matches, resolve
from steerd.rules.compile import CompiledRules, Limits, compile_rules
from steerd.rules.encode import Layout

__all__ = [
    "DSCP_NAMES", "F_DPORT", "F_DSCP", "F_DST", "F_INGRESS", "F_PROTO", "F_SPORT", "F_SRC",
    "FB_AUTO", "FB_DROP", "FB_WAN", "FIELD_NAMES", "MAX_RULES", "NFIELDS", "NO_TUNNEL",
    "PORT_CLASSES", "PORT_PROTOS", "PROTO_NAMES", "RV_DROP", "RV_NONE", "RV_SPREAD", "RV_TUNNEL",
    "Address", "Match", "Network", "PacketKey", "Rule", "RuleSet", "port_class",
    "load_rules", "parse_rules", "RuleDiff", "diff", "Verdict", "classify", "decide", "matches",
    "resolve", "CompiledRules", "Limits", "compile_rules", "Layout",
]
