"""Rule data types, and the compiler's names for the numbers it shares with
ebpf/rules.h (the numbers themselves are steerd.abi's). Pure."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Union

from steerd import abi
# re-exported under their C names: the verdict kinds, the capacity default
from steerd.abi import MAX_RULES, NO_TUNNEL, RV_DROP, RV_NONE, RV_SPREAD, RV_TUNNEL  # noqa: F401
from steerd.sla import SlaLimits

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


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

NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")   # fullmatch: "$" would let "a\n" through
RULE_KEYS = ("name", "match", "wan", "sla", "fallback", "priority", "site", "duplicate",
             "allow_tcp")
MATCH_KEYS = ("src", "src_not", "dst", "dst_not", "proto", "src_port", "dst_port",
               "dscp", "ingress")

# Field numbers: bit positions in CompiledRules.used and indexes of the base
# bitmaps (the names here are the compiler's, the numbers steerd.abi's).
F_SRC, F_DST, F_SPORT, F_DPORT = abi.RL_F_SRC, abi.RL_F_DST, abi.RL_F_SPORT, abi.RL_F_DPORT
F_PROTO, F_DSCP, F_INGRESS = abi.RL_F_PROTO, abi.RL_F_DSCP, abi.RL_F_INGRESS
NFIELDS = abi.RL_NF
FIELD_NAMES = ("src", "dst", "src_port", "dst_port", "proto", "dscp", "ingress")

# Fallback kinds stored per rule.
FB_AUTO, FB_DROP, FB_WAN = abi.RL_FB_AUTO, abi.RL_FB_DROP, abi.RL_FB_WAN


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
            out["proto"] = [proto_name(p) for p in sorted(self.proto)]
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
    wans: tuple[str, ...] = ()      # `wan: [a, b]`: preference order, `wan` is the first; () = one
    sla: str | SlaLimits | None = None   # a class of the config's sla_classes, or inline limits
    duplicate: bool = False         # a copy of each packet on the next-best tunnel that is up
    dup_loss_above: float | None = None  # ... only while its tunnel's loss is above this %
    allow_tcp: bool = False         # duplicate a TCP-only match anyway

    @property
    def choices(self) -> tuple[str, ...]:
        """The WAN roles in preference order (one for a plain rule)."""
        return self.wans or (self.wan,)

    @property
    def quality(self) -> bool:
        """Steered by the daemon's quality decision (a list or an SLA) rather than
        pinned to one role: the data path looks up :attr:`wan_key` instead."""
        return len(self.choices) > 1 or self.sla is not None or self.duplicate

    @property
    def sla_class(self) -> str | None:
        """The class's name in events and status: the config's name, or
        ``rule:NAME`` for inline limits."""
        if self.sla is None:
            return None
        return self.sla if isinstance(self.sla, str) else f"rule:{self.name}"

    @property
    def wan_key(self) -> str:
        """The entry of the data path's wan table this rule's flows follow: the role
        itself, or for a quality rule one the daemon writes with its decision
        (``@wan1,wan2|realtime``; rules with the same list and class share it).
        ``@`` is not allowed in role names, so the two never collide. A duplicated
        rule has an entry of its own (``...#dup:NAME``): its copies are counted
        per rule, and its entry names the copy tunnel too (ebpf/dup.h)."""
        if not self.quality:
            return self.wan
        key = "@" + ",".join(self.choices) + (f"|{self.sla_class}" if self.sla else "")
        return key + (f"#dup:{self.name}" if self.duplicate else "")
    sites: tuple[str, ...] = ()     # hub mode: the sites it applies to; () = every site

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "match": self.match.as_dict(),
                               "wan": list(self.wans) if self.wans else self.wan,
                               "fallback": self.fallback}
        if self.sla is not None:
            out["sla"] = self.sla if isinstance(self.sla, str) else self.sla.as_dict()
        if self.duplicate:
            out["duplicate"] = True if self.dup_loss_above is None else \
                {"when_loss_above": f"{self.dup_loss_above:g}%"}
        if self.allow_tcp:
            out["allow_tcp"] = True
        if self.priority is not None:
            out["priority"] = self.priority
        if self.sites:
            out["site"] = list(self.sites)
        return out

    def summary(self) -> str:
        """One line, e.g. ``dst 10.20.5.0/24 proto udp dst_port 5060 -> wan2 (fallback auto)``."""
        parts = []
        for key, val in self.match.as_dict().items():
            parts.append(f"{key} {','.join(str(v) for v in val)}")
        cond = " ".join(parts) or "any"
        to = f"[{', '.join(self.wans)}]" if self.wans else self.wan
        if self.sla is not None:
            to += f" sla {self.sla_class}"
        if self.duplicate:
            to += " duplicate" + (f" when loss > {self.dup_loss_above:g}%"
                                  if self.dup_loss_above is not None else "")
        where = f" at site {','.join(self.sites)}" if self.sites else ""
        return f"{cond}{where} -> {to} (fallback {self.fallback})"


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


def proto_name(p: int) -> str | int:
    for name, num in PROTO_NAMES.items():
        if num == p:
            return name
    return p
