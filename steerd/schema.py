"""The schema kit every file steerd reads is checked with: the config, its ipsec
section and the rules (pure).

A file is checked by one :class:`Checker`, which collects a
:class:`~steerd.yamlsrc.Problem` per bad value (file, line, dotted key, value,
what was expected) and lets checking go on, so that an operator gets every
problem of a file at once. A check (a :data:`Conv`) takes the checker, a
:class:`~steerd.yamlsrc.Node` and its dotted key, and returns the typed value
or :data:`BAD` (its problem recorded). A mapping is checked against a table of
:class:`Field`: unknown keys get a "did you mean", missing required ones a
problem at the mapping.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Callable, Iterable, TypeVar

from .units import DURATION_EXPECTED, format_duration, parse_duration, parse_percent
from .yamlsrc import Node, Problem

Network = IPv4Network | IPv6Network
T = TypeVar("T")



class _Bad:
    __slots__ = ()

    def __repr__(self) -> str:
        return "BAD"


#: A value that failed its check; its problem is already recorded.
BAD: Any = _Bad()

NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


class Checker:
    """Collects the problems of one file; a failed check returns BAD and checking goes on."""

    __slots__ = ("path", "problems")

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []

    def fail(self, node: Node, key: str, value: Any, expected: str) -> Any:
        # Point at the key when there is one: a block section's own line is its first child's.
        self.problems.append(Problem(self.path, node.key_line or node.line, key, value, expected))
        return BAD


Conv = Callable[[Checker, Node, str], Any]


# ------------------------------------------------------------------- mappings

@dataclass(frozen=True)
class Field:
    conv: Conv
    required: bool = False
    attr: str | None = None           # dataclass attribute, when named differently
    missing: str = ""                 # what the key is, said when it is missing


def section(ck: Checker, node: Node, key: str, fields: dict[str, Field],
            optional: bool = False, unknown: Callable[[str], str | None] | None = None
            ) -> dict[str, Any] | None:
    """Check a mapping against *fields*: unknown keys, missing required keys, each value.

    Returns {attr: value-or-BAD} for the keys present, or None when *node* is not a
    mapping. An optional section written empty (``health:``) means all defaults.
    *unknown*, given an unknown key, may say what to do instead of the key list.
    """
    if optional and node.tag == "scalar" and node.value is None:
        return {}
    if node.tag != "map":
        ck.fail(node, key, node.plain(), f"a mapping with keys {', '.join(fields)}")
        return None
    out: dict[str, Any] = {}
    for name, child in node.value.items():
        sub = join(key, name)
        spec = fields.get(name)
        if spec is None:
            unknown_key(ck, child, sub, name, fields, unknown(name) if unknown else None)
        else:
            out[spec.attr or name] = spec.conv(ck, child, sub)
    for name, spec in fields.items():
        if spec.required and name not in node.value:
            out[spec.attr or name] = missing(ck, node, key, name, spec.missing)
    return out


def missing(ck: Checker, node: Node, key: str, name: str, what: str = "") -> Any:
    """The required key *name* is missing from the mapping *node* (at *key*)."""
    return ck.fail(node, join(key, name), None,
                   f"required key '{name}' (missing){': ' + what if what else ''}")


def join(key: str, name: str) -> str:
    """The dotted key of *name* under *key*."""
    # An empty key (`"": 1`) would vanish from the dotted path; show it quoted.
    name = name or '""'
    return f"{key}.{name}" if key else name


def unknown_key(ck: Checker, node: Node, sub: str, name: str, known: Iterable[str],
                instead: str | None = None) -> None:
    """A key that is not one of *known*: the list, and the closest as "did you mean"."""
    if instead:
        ck.fail(node, sub, name, instead)
        return
    known = list(known)
    ck.fail(node, sub, name, f"one of the keys {', '.join(known)}{did_you_mean(name, known)}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" (did you mean 'x'?)" with the closest of *known*, or "" when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build(cls: Callable[..., T], values: dict[str, Any] | None, **extra: Any) -> T:
    """The dataclass from checked values, or BAD if any failed (a problem is recorded)."""
    if values is None or any(v is BAD for v in values.values()):
        return BAD
    return cls(**values, **extra)


def claim(ck: Checker, seen: dict[Any, Any], value: Any, owner: Any, node: Node, key: str,
          taken: Callable[[Any], str]) -> Any:
    """*value*, now *owner*'s in *seen*; or BAD when an earlier item owns it already
    (``taken(that owner)`` is what was expected)."""
    if value in seen:
        return ck.fail(node, key, value, taken(seen[value]))
    seen[value] = owner
    return value


# --------------------------------------------------------------------- scalars

def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def in_range(v: float, lo: float | None, hi: float | None, lo_open: bool = False) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return hi is None or v <= hi


def _describe_range(lo: float | None, hi: float | None, lo_open: bool, fmt=str) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {fmt(lo)}")
    if hi is not None:
        parts.append(f"<= {fmt(hi)}")
    return " and ".join(parts)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           unit: str = "") -> Conv:
    rng = _describe_range(lo, hi, lo_open)
    expected = f"a number{' of ' + unit if unit else ''}{' ' + rng if rng else ''}"

    def conv(ck: Checker, node: Node, key: str) -> Any:
        v = node.value
        if node.tag != "scalar" or not is_number(v) or not in_range(v, lo, hi, lo_open):
            return ck.fail(node, key, node.plain(), expected)
        return float(v)
    return conv


def integer(lo: int, hi: int, extra: Callable[[int], bool] | None = None,
            expected: str | None = None) -> Conv:
    expected = expected or f"an integer from {lo} to {hi}"

    def conv(ck: Checker, node: Node, key: str) -> Any:
        v = node.value
        ok = (node.tag == "scalar" and isinstance(v, int) and not isinstance(v, bool)
              and lo <= v <= hi and (extra is None or extra(v)))
        return v if ok else ck.fail(node, key, node.plain(), expected)
    return conv


def duration(lo: float, hi: float, lo_open: bool = False, expected: str | None = None) -> Conv:
    expected = expected or f"{DURATION_EXPECTED}, {_describe_range(lo, hi, lo_open, format_duration)}"

    def conv(ck: Checker, node: Node, key: str) -> Any:
        try:
            seconds = parse_duration(node.value) if node.tag == "scalar" else None
        except ValueError:
            seconds = None
        if seconds is None or not in_range(seconds, lo, hi, lo_open):
            return ck.fail(node, key, node.plain(), expected)
        return seconds
    return conv


def milliseconds(lo: float, hi: float) -> Conv:
    """Thresholds named *_ms: a plain number is milliseconds; '30ms'/'1s' also work."""
    expected = (f"a number of milliseconds > {lo:g} and <= {hi:g} "
                f"(or a duration with its unit, such as 30ms)")

    def conv(ck: Checker, node: Node, key: str) -> Any:
        v = node.value
        ms: float | None = None
        if node.tag == "scalar" and is_number(v):
            ms = float(v)
        elif node.tag == "scalar" and isinstance(v, str) and re.search(r"[a-z]\s*$", v):
            try:
                ms = parse_duration(v) * 1000
            except ValueError:
                ms = None
        if ms is None or not in_range(ms, lo, hi, lo_open=True):
            return ck.fail(node, key, node.plain(), expected)
        return ms
    return conv


def percent(ck: Checker, node: Node, key: str) -> Any:
    try:
        return parse_percent(node.value if node.tag == "scalar" else None)
    except ValueError as exc:
        return ck.fail(node, key, node.plain(), str(exc))


def fraction(ck: Checker, node: Node, key: str) -> Any:
    """A ratio: '10%' or a plain number 0..1. A bare 10 is refused rather than
    silently read as 10 % or as 1000 %: the default 0.10 reads like a fraction."""
    v = node.value
    if node.tag == "scalar" and is_number(v) and 0 <= v <= 1:
        return float(v)
    if node.tag == "scalar" and isinstance(v, str) and v.strip().endswith("%"):
        try:
            return parse_percent(v) / 100
        except ValueError:
            pass
    return ck.fail(node, key, node.plain(),
                   "a fraction from 0 to 1 (0.1) or a percentage with its sign (10%)")


def string(pattern: re.Pattern[str] | None = None, expected: str = "a non-empty string") -> Conv:
    def conv(ck: Checker, node: Node, key: str) -> Any:
        v = node.value
        if (node.tag != "scalar" or not isinstance(v, str) or not v
                or (pattern is not None and not pattern.fullmatch(v))):
            return ck.fail(node, key, node.plain(), expected)
        return v
    return conv


plain_name = string(NAME_RE, "a non-empty string of letters, digits, '.', '_' or '-'")


def choice(*options: str, expected: str | None = None) -> Conv:
    expected = expected or "one of " + ", ".join(options)

    def conv(ck: Checker, node: Node, key: str) -> Any:
        v = node.value
        if node.tag != "scalar" or not isinstance(v, str) or v not in options:
            return ck.fail(node, key, node.plain(), expected)
        return v
    return conv


IFNAME_EXPECTED = "a Linux interface name: 1 to 15 characters, no '/', ':' or whitespace"


def valid_ifname(text: object) -> bool:
    """True for names the kernel accepts (dev_valid_name: < IFNAMSIZ, no '/', ':', space)."""
    return (isinstance(text, str) and 0 < len(text) <= 15 and text not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in text))


def ifname(ck: Checker, node: Node, key: str) -> Any:
    if node.tag != "scalar" or not valid_ifname(node.value):
        return ck.fail(node, key, node.plain(), IFNAME_EXPECTED)
    return node.value


def abspath(expected: str = "an absolute path (starting with /)") -> Conv:
    def conv(ck: Checker, node: Node, key: str) -> Any:
        v = node.value
        if node.tag != "scalar" or not isinstance(v, str) or not v.startswith("/") or "\0" in v:
            return ck.fail(node, key, node.plain(), expected)
        return v
    return conv


def file_path(ck: Checker, node: Node, key: str) -> Any:
    """A file named in the config; relative paths are taken from the config's directory
    because the daemon runs with cwd=/ under systemd, where they would mean nothing."""
    v = node.value
    if node.tag != "scalar" or not isinstance(v, str) or not v.strip() or "\0" in v:
        return ck.fail(node, key, node.plain(), "a file path (absolute, or relative to the config)")
    if not os.path.isabs(v) and not ck.path.startswith("<"):
        v = os.path.join(os.path.dirname(os.path.abspath(ck.path)), v)
    return v


_BROADCAST4 = IPv4Address("255.255.255.255")


def address(ck: Checker, node: Node, key: str) -> Any:
    """A tunnel's public or probed address: one host reachable through the tunnel, so
    not loopback, broadcast, multicast or unspecified; an IPv4-mapped IPv6 address
    (::ffff:a.b.c.d) is written as the IPv4 address it maps."""
    v = node.value
    expected = "a unicast IPv4 or IPv6 address such as 198.51.100.10"
    try:
        if node.tag != "scalar" or not isinstance(v, str):
            raise ValueError
        addr = ip_address(v.strip())
    except ValueError:
        hint = " (quote it: YAML read this as a number)" if is_number(v) else ""
        return ck.fail(node, key, node.plain(), expected + hint)
    mapped = addr.ipv4_mapped if addr.version == 6 else None
    why = ("IPv4-mapped: write the IPv4 address" if mapped is not None else
           "loopback" if addr.is_loopback else
           "broadcast" if addr == _BROADCAST4 else
           "multicast" if addr.is_multicast else
           "unspecified" if addr.is_unspecified else None)
    if why is None:
        return addr
    if mapped is not None:
        why += f" (did you mean {mapped}?)"
    return ck.fail(node, key, v, f"{expected}, not {why}")


def any_address(version: int | None = None, expected: str = "an IPv4 or IPv6 address") -> Conv:
    """Any address of *version* (None: either), as its text."""
    def conv(ck: Checker, node: Node, key: str) -> Any:
        v = node.value
        try:
            if node.tag != "scalar" or not isinstance(v, str):
                raise ValueError
            addr = ip_address(v)
        except ValueError:
            return ck.fail(node, key, node.plain(), expected)
        return v if version in (None, addr.version) else ck.fail(node, key, v, expected)
    return conv


_V4_CIDR = re.compile(r"([1-9]?[0-9]{1,2})\.([1-9]?[0-9]{1,2})\.([1-9]?[0-9]{1,2})\."
                      r"([1-9]?[0-9]{1,2})/([0-9]{1,2})")


def parse_network(text: str) -> Network:
    """ipaddress.ip_network(text, strict=True), three times faster for the common
    IPv4 "a.b.c.d/n": the address goes in as an integer (the text parse is most of
    the cost of validating 10,000 rules). Anything else, leading zeros included,
    takes ipaddress's own parser and its errors."""
    m = _V4_CIDR.fullmatch(text)
    if m is not None:
        a, b, c, d, plen = map(int, m.groups())
        if (a | b | c | d) <= 255 and plen <= 32 and not any(
                len(g) > 1 and g[0] == "0" for g in m.groups()[:4]):
            return IPv4Network(((a << 24) | (b << 16) | (c << 8) | d, plen))
    return ipaddress.ip_network(text, strict=True)


NETWORK_EXPECTED = "an IPv4 or IPv6 prefix such as 10.20.0.0/16"


def network(ck: Checker, node: Node, key: str) -> Any:
    """A prefix without host bits; with them, the prefix meant is suggested."""
    v = node.value
    if node.tag != "scalar" or not isinstance(v, str):
        return ck.fail(node, key, node.plain(), NETWORK_EXPECTED)
    try:
        return parse_network(v.strip())
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(v.strip(), strict=False)
    except ValueError:
        return ck.fail(node, key, v, NETWORK_EXPECTED)
    return ck.fail(node, key, v, f"a network prefix without host bits set (did you mean {loose}?)")


_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _is_version(host: str, cls: type) -> bool:
    try:
        return cls(host) is not None
    except ValueError:
        return False


def _hostname(host: str) -> bool:
    # All-numeric names (999.1.1.1) are mistyped addresses, not hosts.
    return bool(_HOSTNAME_RE.fullmatch(host)) and not re.fullmatch(r"[\d.]+", host)


def listen(ck: Checker, node: Node, key: str) -> Any:
    """host:port for a server to listen on; IPv6 hosts in brackets ([::1]:9469)."""
    v = node.value
    expected = "host:port such as 127.0.0.1:9469 or [::1]:9469, port 1 to 65535"
    if node.tag != "scalar" or not isinstance(v, str):
        return ck.fail(node, key, node.plain(), expected)
    m = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", v)
    if not m:
        return ck.fail(node, key, v, expected)
    bracketed = m.group(1) is not None
    host, port = (m.group(1), m.group(2)) if bracketed else (m.group(3), m.group(4))
    host_ok = (_is_version(host, IPv6Address) if bracketed
               else _is_version(host, IPv4Address) or _hostname(host))
    if not host_ok or not 1 <= int(port) <= 65535:
        return ck.fail(node, key, v, expected)
    return v
