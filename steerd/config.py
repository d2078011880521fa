"""Load and validate the site config (``/etc/steerd/steerd.yaml``).

One parser for the daemon and ``steerctl config check``: the daemon refuses to
start or reload on any problem, so every problem of a file is collected and
raised at once as :class:`~steerd.yamlsrc.ValidationError`, each naming file,
line, dotted key (``tunnels[3].public_ip``), value and what was expected (in
the spirit of faucet's config checks).

Pure: no root, no I/O except reading the file in :func:`load_config`.

Every value is checked with the kit of :mod:`steerd.schema`, the one the rules
and the ipsec section (:mod:`steerd.ipsec`) are checked with too.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from .events import TYPES as EVENT_TYPES
from .ipsec import IpsecConfig, ipsec_section
from .mos import CODECS
from .schema import (BAD, NAME_RE, Checker, Conv, Field, abspath, address, build,
                     choice, claim, duration, file_path, fraction, ifname, integer, is_number, join,
                     listen, milliseconds, network, plain_name, number, percent, section, string)
from .sla import LIMIT_KEYS, SlaLimits
from .yamlsrc import Node, ValidationError, load_yaml, read_text

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

HA_ROLES = ("primary", "secondary")
MAX_TUNNELS_PER_ROLE = 3
# Marks and routing tables are sized for the most tunnels a valid site can
# have, so adding a tunnel on reload can never collide with an earlier choice.
# In hub mode a mark names a tunnel's *position within its site*, so the same
# 6 marks and tables serve every site.
MAX_TUNNELS = MAX_TUNNELS_PER_ROLE * len(HA_ROLES)
# Hub mode: the data path's per-site maps are sized for this many sites unless
# dataplane.max_sites says otherwise (changing it needs a restart).
HUB_DEFAULT_MAX_SITES = 1024
HUB_DEFAULT_SLOTS = 1024
MAX_SITES = 65536
FAILBACK_MODES = ("new-flows", "migrate")
LINK_STATES = ("up", "down")
DEFAULT_CONFIG_PATH = "/etc/steerd/steerd.yaml"
_RESERVED_TABLES = frozenset({0, 253, 254, 255})   # unspec, default, main, local
_MAX_TABLE = 2 ** 31


# --------------------------------------------------------------------------- model

@dataclass(frozen=True)
class Bandwidth:
    down_mbps: float
    up_mbps: float | None = None      # accepted, best effort (steering is downstream)
    cap_mbps: float | None = None     # `cap: true` -> down_mbps; `cap: N` -> N Mbps


@dataclass(frozen=True)
class Tunnel:
    name: str
    ha_role: str
    wan: str
    interface: str
    public_ip: Address
    probe_target: Address
    bandwidth: Bandwidth
    preference: float = 1.0
    line: int = 0                     # line of the tunnel's list item, for later messages


@dataclass(frozen=True)
class ProbeConfig:
    interval: float = 1.0             # seconds
    timeout: float = 1.0              # seconds
    window: int = 10                  # samples


@dataclass(frozen=True)
class HealthConfig:
    loss_pct: float = 3.0             # SLA thresholds -> degraded (Cato defaults)
    jitter_ms: float = 30.0
    latency_ms: float = 600.0
    suspect_factor: float = 3.0       # reply later than factor x smoothed RTT -> suspect
    suspect_floor: float = 0.05       # seconds; lower bound of that adaptive deadline
    confirm_interval: float = 0.015   # seconds between confirmation probes of a suspect
    confirm_misses: int = 14          # consecutive confirmation misses -> down
    recover_successes: int = 5        # consecutive successes before down -> up
    initial_state: str = "up"         # up | down


@dataclass(frozen=True)
class DataplaneConfig:
    mark_mask: int = 0x0F000000
    table_base: int = 2100
    rule_priority: int = 2100
    slots: int = 4096
    flow_table_size: int = 65536
    flow_idle_timeout: float = 60.0   # seconds
    bpffs: str = "/sys/fs/bpf/steerd"
    max_sites: int = 1                # capacity of the per-site maps (hub mode)

    def mark_of(self, index: int) -> int:
        """fwmark of the tunnel at *index* within its site (0-based, config order):
        (index+1) in the mask's bits. One site: the index in the tunnel list."""
        if not 0 <= index < MAX_TUNNELS:
            raise IndexError(f"tunnel index {index} outside 0..{MAX_TUNNELS - 1}")
        return (index + 1) << _lowest_bit(self.mark_mask)

    def table_of(self, index: int) -> int:
        """Routing table of the tunnel at *index* within its site (0-based)."""
        if not 0 <= index < MAX_TUNNELS:
            raise IndexError(f"tunnel index {index} outside 0..{MAX_TUNNELS - 1}")
        return self.table_base + index + 1


@dataclass(frozen=True)
class Hook:
    """An operator's script run on events (steerd.hooks runs it)."""

    on: frozenset[str]      # event types
    run: str                # absolute path of an executable
    timeout: float = 5.0    # seconds; killed after it
    line: int = 0           # where it is in the config, for messages


@dataclass(frozen=True)
class Site:
    """One remote site: its ranges, its tunnels (at most 3 per HA role) and its
    failback hold. The single-site config form is exactly one of these."""

    name: str
    network_ranges: tuple[tuple[str, Network], ...]
    tunnels: tuple[Tunnel, ...]
    failback_hold: float = 30.0
    line: int = 0
    # downstream packets of a flow the site opened go back on the tunnel it came up
    reply_on_arrival_tunnel: bool = False

    @property
    def ranges(self) -> list[Network]:
        """Prefixes steered toward the site; none configured = route-based VPN (all)."""
        if not self.network_ranges:
            return [IPv4Network("0.0.0.0/0"), IPv6Network("::/0")]
        return [net for _, net in self.network_ranges]

    @property
    def wans(self) -> set[str]:
        return {t.wan for t in self.tunnels}


@dataclass(frozen=True)
class SiteConfig:
    path: str
    site: str
    ingress: tuple[str, ...]
    network_ranges: tuple[tuple[str, Network], ...]
    probe: ProbeConfig
    health: HealthConfig
    rebalance_interval: float = 10.0
    rebalance_threshold: float = 0.10  # fraction: min relative weight change reprogrammed
    failback_hold: float = 30.0
    failback: str = "new-flows"
    metrics_listen: str = "127.0.0.1:9469"
    control_socket: str = "/run/steerd/steerd.sock"
    control_group: str | None = None
    rules_file: str | None = None
    events_file: str | None = None
    events_keep: int = 1000
    state_dir: str = "/var/lib/steerd"   # what outlives restarts (drained tunnels)
    qos_default_priority: int = 128
    tunnels: tuple[Tunnel, ...] = ()
    dataplane: DataplaneConfig = DataplaneConfig()
    hooks: tuple[Hook, ...] = ()
    # quality classes the rules name (`sla: realtime`): class name -> limits
    sla_classes: dict[str, SlaLimits] = field(default_factory=dict, hash=False)
    reply_on_arrival_tunnel: bool = False   # every site's default (hub: a site may override)
    ipsec: IpsecConfig | None = None  # the `ipsec:` section (steerd.ipsec)
    # Hub mode (config form B): the sites; `tunnels` and `network_ranges` above
    # are then every site's, in order. The single-site form is one site made
    # of the top-level keys (derived here, so both forms read alike).
    sites: tuple[Site, ...] = ()

    def __post_init__(self) -> None:
        if not self.sites:
            object.__setattr__(self, "sites", (Site(self.site, self.network_ranges, self.tunnels,
                                                    self.failback_hold,
                                                    reply_on_arrival_tunnel=self.reply_on_arrival_tunnel),))
        # tunnel index (position in `tunnels`) -> (site index, position within the site)
        where = tuple((si, pos) for si, st in enumerate(self.sites) for pos in range(len(st.tunnels)))
        object.__setattr__(self, "_where", where)

    @property
    def hub(self) -> bool:
        """More than one site: status, metrics and events name the site."""
        return len(self.sites) > 1

    def site_of(self, index: int) -> int:
        """Site index of tunnel *index* (its position in `tunnels`)."""
        return self._where[index][0]

    def position_of(self, index: int) -> int:
        """Position of tunnel *index* within its site: its mark and routing table."""
        return self._where[index][1]

    @property
    def site_wans(self) -> dict[str, frozenset[str]]:
        """Site name -> its wan roles (rules limited with `site:` are checked against it)."""
        return {st.name: frozenset(st.wans) for st in self.sites}

    @property
    def site_ranges(self) -> dict[str, list[Network]]:
        """Site name -> its steered prefixes (a site-limited rule's dst is cut to them)."""
        return {st.name: st.ranges for st in self.sites}

    def site_index(self, name: str) -> int:
        for i, st in enumerate(self.sites):
            if st.name == name:
                return i
        raise KeyError(name)

    @property
    def ranges(self) -> list[Network]:
        """Prefixes steered toward the site; none configured = route-based VPN (all)."""
        if not self.network_ranges:
            return [IPv4Network("0.0.0.0/0"), IPv6Network("::/0")]
        return [net for _, net in self.network_ranges]

    def tunnel(self, name: str) -> Tunnel:
        for t in self.tunnels:
            if t.name == name:
                return t
        raise KeyError(name)

    def index_of(self, name: str) -> int:
        for i, t in enumerate(self.tunnels):
            if t.name == name:
                return i
        raise KeyError(name)

    def by_role(self, role: str) -> list[Tunnel]:
        return [t for t in self.tunnels if t.ha_role == role]

    @property
    def wans(self) -> set[str]:
        return {t.wan for t in self.tunnels}


# -------------------------------------------------------------------- checking

def _no_bgp(name: str) -> str | None:
    if name == "bgp":
        return ("no bgp section: BGP is not supported with multiple active "
                "tunnels (steerd steers each flow itself); remove it")
    return None


def _section(ck: Checker, node: Node, key: str, fields: dict[str, Field],
             optional: bool = False) -> dict[str, Any] | None:
    """schema.section, with a word for the BGP section people bring from other setups."""
    return section(ck, node, key, fields, optional, unknown=_no_bgp)


def _line(node: Node) -> int:
    return node.key_line or node.line


_abspath = abspath()


# Each section's allowed keys, in the order they are listed in messages.
_PROBE = {
    "interval": Field(duration(0.1, 10.0)),
    "timeout": Field(duration(0, 10.0, lo_open=True)),
    "window": Field(integer(1, 1000)),
}

_HEALTH = {
    "loss_pct": Field(percent),
    "jitter_ms": Field(milliseconds(0, 60_000)),
    "latency_ms": Field(milliseconds(0, 60_000)),
    # <= 1 would mark every reply slower than average as a suspect.
    "suspect_factor": Field(number(1, 100, lo_open=True)),
    "suspect_floor": Field(duration(0, 10.0, lo_open=True)),
    "confirm_interval": Field(duration(0.001, 10.0)),
    "confirm_misses": Field(integer(1, 100)),
    "recover_successes": Field(integer(1, 1000)),
    "initial_state": Field(choice(*LINK_STATES)),
}


def _mark_mask(ck: Checker, node: Node, key: str) -> Any:
    v = node.value
    if node.tag == "scalar" and isinstance(v, str):
        try:
            v = int(v.strip(), 0)     # "0x0F000000" quoted is as good as the number
        except ValueError:
            pass
    need = MAX_TUNNELS.bit_length()
    if (isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 0xFFFFFFFF
            and _contiguous(v) and bin(v).count("1") >= need):
        return v
    shown = f"{v:#010x}" if isinstance(v, int) and not isinstance(v, bool) else node.plain()
    return ck.fail(node, key, shown,
                   f"a contiguous 32-bit mask at least {need} bits wide (tunnel marks "
                   f"1..{MAX_TUNNELS} must fit), such as 0x0F000000")


def _lowest_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def _contiguous(mask: int) -> bool:
    m = mask >> _lowest_bit(mask)
    return m & (m + 1) == 0


def _tables_ok(base: int) -> bool:
    tables = range(base + 1, base + MAX_TUNNELS + 1)
    return tables[-1] <= _MAX_TABLE and not _RESERVED_TABLES.intersection(tables)


_DATAPLANE = {
    "mark_mask": Field(_mark_mask),
    "table_base": Field(integer(0, _MAX_TABLE - MAX_TUNNELS, _tables_ok,
                                  f"an integer such that tables table_base+1 .. table_base+"
                                  f"{MAX_TUNNELS} lie in 1..{_MAX_TABLE} and avoid the "
                                  f"reserved 253, 254, 255 (such as 2100)")),
    "rule_priority": Field(integer(1, 32765)),
    "slots": Field(integer(64, 65536, lambda n: n & (n - 1) == 0,
                             "a power of two from 64 to 65536")),
    "flow_table_size": Field(integer(1024, 4194304)),
    "flow_idle_timeout": Field(duration(1.0, 86400.0)),
    "bpffs": Field(_abspath),
    "max_sites": Field(integer(1, MAX_SITES)),
}

_METRICS = {"listen": Field(listen, attr="metrics_listen")}
# QoS on capped tunnels: the class of traffic no rule gives a priority
# (1 most important .. 255 bulk; 128 keeps it above explicit bulk)
_QOS = {"default_priority": Field(integer(1, 255), attr="qos_default_priority")}
_EVENTS = {
    "file": Field(file_path, attr="events_file"),
    "keep": Field(integer(1, 10_000_000), attr="events_keep"),
}

# One quality class (sla_classes.NAME, or a rule's inline `sla:`): the limits, the
# codec its MOS is estimated for, and the hold-downs (steerd/sla.py says why).
_SLA = {
    "max_loss_pct": Field(percent),
    "max_latency_ms": Field(milliseconds(0, 60_000)),
    "max_jitter_ms": Field(milliseconds(0, 60_000)),
    "min_mos": Field(number(1, 4.5)),
    "codec": Field(choice(*CODECS)),
    "leave_hold": Field(duration(0.0, 3600.0)),
    "restore_hold": Field(duration(0.0, 86400.0)),
}


def sla_limits(ck: Checker, node: Node, key: str) -> Any:
    """One quality class, or a rule's inline ``sla:`` mapping (steerd.rules)."""
    values = _section(ck, node, key, _SLA)
    if values is None:
        return BAD
    if not any(k in values for k in LIMIT_KEYS):
        return ck.fail(node, key, node.plain(), f"at least one limit: {', '.join(LIMIT_KEYS)}")
    return build(SlaLimits, values)


def _sla_classes(ck: Checker, node: Node, key: str) -> Any:
    if node.tag == "scalar" and node.value is None:
        return {}
    if node.tag != "map":
        return ck.fail(node, key, node.plain(),
                       "a mapping of class name: limits, such as "
                       "realtime: {max_loss_pct: 1, max_latency_ms: 150, max_jitter_ms: 30}")
    out = {}
    for name, child in node.value.items():
        sub = join(key, name)
        if not NAME_RE.fullmatch(name):
            ck.fail(child, sub, name, "a class name of letters, digits, '.', '_' or '-'")
            out[name] = BAD
        else:
            out[name] = sla_limits(ck, child, sub)
    return BAD if BAD in out.values() else out


def _cap(ck: Checker, node: Node, key: str) -> Any:
    """`cap: true` caps at down_mbps (resolved by the caller), a number caps at it."""
    v = node.value
    if node.tag == "scalar" and (isinstance(v, bool) or v is None):
        return v or None
    if node.tag == "scalar" and is_number(v) and v > 0:
        return float(v)
    return ck.fail(node, key, node.plain(), "true, false or a number of Mbps > 0")


_BANDWIDTH = {
    "down_mbps": Field(number(0, None, lo_open=True, unit="Mbps"), required=True),
    "up_mbps": Field(number(0, None, lo_open=True, unit="Mbps")),
    "cap": Field(_cap, attr="cap_mbps"),
}


def _bandwidth(ck: Checker, node: Node, key: str) -> Any:
    values = _section(ck, node, key, _BANDWIDTH)
    if values is None:
        return BAD
    down, cap = values.get("down_mbps"), values.get("cap_mbps")
    if cap is True:
        values["cap_mbps"] = down
    elif is_number(cap) and is_number(down) and cap > down:
        ck.fail(node.value["cap"], f"{key}.cap", node.value["cap"].plain(),
                f"a cap <= down_mbps ({down:g}); a cap above the line's bandwidth caps nothing")
        values["cap_mbps"] = BAD
    return build(Bandwidth, values)


_TUNNEL = {
    "name": Field(plain_name, required=True),
    "ha_role": Field(choice(*HA_ROLES), required=True),
    "wan": Field(plain_name, required=True),
    "interface": Field(ifname, required=True),
    "public_ip": Field(address, required=True),
    "probe_target": Field(address, required=True),
    "bandwidth": Field(_bandwidth, required=True),
    "preference": Field(number(0, 100, lo_open=True)),
}


def _tunnels(ck: Checker, node: Node, key: str) -> Any:
    """A site's tunnels: unique within the list, at most 3 per HA role."""
    if node.tag != "seq" or not node.value:
        return ck.fail(node, key, node.plain(),
                       f"a list of 1 to {MAX_TUNNELS} tunnels (mappings with keys "
                       f"{', '.join(_TUNNEL)})")
    checked = [(i, item, _section(ck, item, f"{key}[{i}]", _TUNNEL))
               for i, item in enumerate(node.value)]
    checked = [(i, item, v) for i, item, v in checked if v is not None]
    _check_unique(ck, key, checked)
    _check_roles(ck, node, key, checked)
    tunnels = [build(Tunnel, v, line=item.line) for _, item, v in checked]
    if len(checked) != len(node.value) or BAD in tunnels:
        return BAD
    return tuple(tunnels)


Checked = list[tuple[int, Node, dict[str, Any]]]


def _check_unique(ck: Checker, key: str, checked: Checked) -> None:
    """Names, interfaces and public IPs are unique overall; a WAN role within an HA role."""
    for attr, scope in (("name", None), ("interface", None), ("public_ip", None),
                        ("wan", "ha_role")):
        seen: dict[tuple[Any, Any], tuple[int, int]] = {}
        for i, item, values in checked:
            value, group = values.get(attr, BAD), values.get(scope) if scope else None
            if value is BAD or group is BAD:
                continue
            node = item.value[attr]
            first = seen.setdefault((group, value), (i, _line(node)))
            if first[0] != i:
                among = f" among {group} tunnels" if scope else ""
                ck.fail(node, f"{key}[{i}].{attr}", node.plain(),
                        f"a unique {attr}{among} ({key}[{first[0]}] at line {first[1]} "
                        f"already uses it)")


def _check_roles(ck: Checker, node: Node, key: str, checked: Checked) -> None:
    """At most 3 tunnels per HA role (one per PoP), and at least one primary."""
    members: dict[str, list[int]] = {r: [] for r in HA_ROLES}
    for i, item, values in checked:
        role = values.get("ha_role", BAD)
        if role is BAD:
            continue
        members[role].append(i)
        if len(members[role]) > MAX_TUNNELS_PER_ROLE:
            first = ", ".join(f"{key}[{j}]" for j in members[role][:MAX_TUNNELS_PER_ROLE])
            role_node = item.value["ha_role"]
            ck.fail(role_node, f"{key}[{i}].ha_role", role,
                    f"at most {MAX_TUNNELS_PER_ROLE} tunnels with ha_role {role} "
                    f"(already {first})")
    roles_known = all(v.get("ha_role", BAD) is not BAD for _, _, v in checked)
    if roles_known and len(checked) == len(node.value) and not members["primary"]:
        ck.fail(node, key, [v["ha_role"] for _, _, v in checked],
                "at least one tunnel with ha_role primary")


def _ingress(ck: Checker, node: Node, key: str) -> Any:
    """A list of interface names; a single name is accepted as a one-item list."""
    if node.tag == "scalar" and isinstance(node.value, str):
        items = [(key, node)]
    elif node.tag == "seq" and node.value:
        items = [(f"{key}[{i}]", n) for i, n in enumerate(node.value)]
    else:
        return ck.fail(node, key, node.plain(),
                       "a non-empty list of interface names, such as [eth1]")
    names, seen = [], {}
    for sub, item in items:
        name = ifname(ck, item, sub)
        if name is not BAD and name in seen:
            name = ck.fail(item, sub, name,
                           f"each interface once (already listed at line {seen[name]})")
        elif name is not BAD:
            seen[name] = _line(item)
        names.append(name)
    return BAD if BAD in names else tuple(names)


def _network_ranges(ck: Checker, node: Node, key: str) -> Any:
    """label: prefix or label: [prefixes], flattened in file order."""
    if node.tag == "scalar" and node.value is None:
        return ()
    if node.tag != "map":
        return ck.fail(node, key, node.plain(),
                       "a mapping of label: prefix (or label: [prefixes]), "
                       "such as lan: 10.20.0.0/16")
    out = []
    for label, value in node.value.items():
        sub = f"{key}.{label}"
        items = ([(f"{sub}[{i}]", n) for i, n in enumerate(value.value)]
                 if value.tag == "seq" else [(sub, value)])
        if value.tag == "seq" and not value.value:
            ck.fail(value, sub, [], "a prefix or a non-empty list of prefixes")
        out.extend((label, network(ck, n, s)) for s, n in items)
    return BAD if any(net is BAD for _, net in out) else tuple(out)


def _event_types(ck: Checker, node: Node, key: str) -> Any:
    """`on:` an event type or a list of them."""
    items = [(key, node)] if node.tag == "scalar" and isinstance(node.value, str) else \
        [(f"{key}[{i}]", n) for i, n in enumerate(node.value)] if node.tag == "seq" else []
    if not items:
        return ck.fail(node, key, node.plain(), "a non-empty list of event types, such as "
                                                "[link_down, link_up, ha_failover]")
    types = [choice(*EVENT_TYPES)(ck, n, sub) for sub, n in items]
    return BAD if BAD in types else frozenset(types)


def _executable(ck: Checker, node: Node, key: str) -> Any:
    path = _abspath(ck, node, key)
    if path is not BAD and not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return ck.fail(node, key, path, "an executable file (the hook's script; chmod +x)")
    return path


_HOOK = {
    "on": Field(_event_types, required=True),
    "run": Field(_executable, required=True),
    # a hook never blocks steerd, but a stuck one would hold its later events
    "timeout": Field(duration(0.1, 600.0)),
}


def _hooks(ck: Checker, node: Node, key: str) -> Any:
    if node.tag != "seq":
        return ck.fail(node, key, node.plain(), f"a list of hooks (mappings with keys "
                                                f"{', '.join(_HOOK)})")
    hooks, seen = [], {}
    for i, item in enumerate(node.value):
        values = _section(ck, item, f"{key}[{i}]", _HOOK)
        if values and isinstance(values.get("run"), str):
            values["run"] = claim(ck, seen, values["run"], i, item.value["run"], f"{key}[{i}].run",
                                  lambda first: f"a script listed once (hooks[{first}] runs it: "
                                  "give that hook all the events)")
        hooks.append(build(Hook, values, line=item.line))
    return BAD if BAD in hooks else tuple(hooks)


def _sub(fields: dict[str, Field], cls: type | None = None) -> Conv:
    """An optional nested section: a dataclass, or (cls None) a dict of SiteConfig
    attributes that parse_config flattens (metrics.listen -> metrics_listen)."""
    def conv(ck: Checker, node: Node, key: str) -> Any:
        values = _section(ck, node, key, fields, optional=True)
        return build(cls, values) if cls else (values or {})
    return conv


_FLATTENED = ("metrics", "events", "qos")


def _boolean(ck: Checker, node: Node, key: str) -> Any:
    v = node.value
    return v if node.tag == "scalar" and isinstance(v, bool) else \
        ck.fail(node, key, node.plain(), "true or false")


_SITE = {
    "site": Field(plain_name, required=True),
    "network_ranges": Field(_network_ranges),
    "failback_hold": Field(duration(0.0, 3600.0)),
    "reply_on_arrival_tunnel": Field(_boolean),
    "tunnels": Field(_tunnels, required=True),
}


def _sites(ck: Checker, node: Node, key: str) -> Any:
    """Hub mode: a list of sites, each checked like the single-site form, then
    across sites (names, tunnel names and interfaces, ranges)."""
    if node.tag != "seq" or not node.value:
        return ck.fail(node, key, node.plain(),
                       f"a non-empty list of sites (mappings with keys {', '.join(_SITE)})")
    checked = [(i, item, _section(ck, item, f"{key}[{i}]", _SITE))
               for i, item in enumerate(node.value)]
    checked = [(i, item, v) for i, item, v in checked if v is not None]
    _check_sites_unique(ck, key, checked)
    _check_ranges_disjoint(ck, key, checked)
    if len(checked) != len(node.value) or any(BAD in v.values() for _, _, v in checked):
        return BAD
    return tuple(Site(v["site"], v.get("network_ranges", ()), v["tunnels"],
                      v.get("failback_hold", BAD), line=item.line,
                      reply_on_arrival_tunnel=v.get("reply_on_arrival_tunnel", None))
                 for _, item, v in checked)


def _site_label(key: str, i: int, values: dict[str, Any]) -> str:
    name = values.get("site", BAD)
    return f"site {name!r} ({key}[{i}])" if name is not BAD else f"{key}[{i}]"


def _check_sites_unique(ck: Checker, key: str, checked: Checked) -> None:
    """Site names are unique; tunnel names and interfaces are unique on the
    gateway (one netdev, one name space for status, metrics and events)."""
    seen: dict[Any, tuple[str, int]] = {}
    for i, item, values in checked:
        name = values.get("site", BAD)
        if name is BAD:
            continue
        node = item.value["site"]
        first = seen.setdefault(name, (f"{key}[{i}]", _line(node)))
        if first[0] != f"{key}[{i}]":
            ck.fail(node, f"{key}[{i}].site", name,
                    f"a unique site name ({first[0]} at line {first[1]} already uses it)")
    for attr in ("name", "interface"):
        owner: dict[Any, tuple[str, str, int]] = {}
        for i, item, values in checked:
            tunnels_node = item.value.get("tunnels")
            if tunnels_node is None or tunnels_node.tag != "seq":
                continue
            here = _site_label(key, i, values)
            for j, tnode in enumerate(tunnels_node.value):
                vnode = tnode.value.get(attr) if tnode.tag == "map" else None
                if vnode is None or vnode.tag != "scalar" or not isinstance(vnode.value, str):
                    continue
                sub = f"{key}[{i}].tunnels[{j}].{attr}"
                prev = owner.setdefault(vnode.value, (here, sub, _line(vnode)))
                if prev[0] != here:
                    ck.fail(vnode, sub, vnode.value,
                            f"a tunnel {attr} unique on the gateway ({prev[0]} uses it at "
                            f"line {prev[2]}: {prev[1]}; this is {here})")


def _range_items(node: Node, key: str) -> list[tuple[str, Node]]:
    """(dotted key, node) of each prefix of a network_ranges mapping, file order."""
    if node.tag != "map":
        return []
    out = []
    for label, value in node.value.items():
        sub = f"{key}.{label}"
        out.extend([(f"{sub}[{i}]", n) for i, n in enumerate(value.value)]
                   if value.tag == "seq" else [(sub, value)])
    return out


def _check_ranges_disjoint(ck: Checker, key: str, checked: Checked) -> None:
    """A destination belongs to one site: no two sites' ranges overlap, and a
    site without ranges (route-based: every destination) is the only site.

    Prefixes are nested or disjoint, so one sweep in address order finds every
    overlap (n log n: 1,000 sites' ranges check in milliseconds): the stack
    holds the prefixes that contain the current one."""
    entries = []
    for i, item, values in checked:
        ranges, rnode = values.get("network_ranges", ()), item.value.get("network_ranges")
        here = _site_label(key, i, values)
        if ranges == () and len(checked) > 1:
            others = [(_site_label(key, j, v), it.line) for j, it, v in checked if j != i]
            ck.fail(rnode or item, f"{key}[{i}].network_ranges", None,
                    f"network ranges for every site of a hub: {here} has none, which makes it "
                    f"route-based (every destination), so it must be the only site "
                    f"({others[0][0]} at line {others[0][1]} is another)")
            continue
        if ranges is BAD or rnode is None:
            continue
        for (sub, n), (_, net) in zip(_range_items(rnode, f"{key}[{i}].network_ranges"), ranges):
            entries.append((net.version, int(net.network_address), net.prefixlen,
                            int(net.broadcast_address), here, sub, n, net))
    entries.sort(key=lambda e: e[:3])
    stack: list[tuple] = []
    for e in entries:
        while stack and (stack[-1][0] != e[0] or stack[-1][3] < e[1]):
            stack.pop()
        other = next((o for o in reversed(stack) if o[4] != e[4]), None)
        if other is not None:
            ck.fail(e[6], e[5], str(e[7]),
                    f"a range no other site's overlaps: {e[4]}'s {e[7]} overlaps {other[4]}'s "
                    f"{other[7]} at line {_line(other[6])} ({other[5]})")
        stack.append(e)


_TOP = {
    "site": Field(plain_name),
    "ingress": Field(_ingress, required=True),
    "network_ranges": Field(_network_ranges),
    "probe": Field(_sub(_PROBE, ProbeConfig)),
    "health": Field(_sub(_HEALTH, HealthConfig)),
    "rebalance_interval": Field(duration(1.0, 3600.0)),
    "rebalance_threshold": Field(fraction),
    "failback_hold": Field(duration(0.0, 3600.0)),
    "failback": Field(choice(*FAILBACK_MODES)),
    "metrics": Field(_sub(_METRICS)),
    "control_socket": Field(_abspath),
    "control_group": Field(string(re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?"),
                                    "a group name such as steerd")),
    "rules_file": Field(file_path),
    "state_dir": Field(_abspath),
    "events": Field(_sub(_EVENTS)),
    "qos": Field(_sub(_QOS)),
    "tunnels": Field(_tunnels),
    "sites": Field(_sites),
    "dataplane": Field(_sub(_DATAPLANE, DataplaneConfig)),
    # checked in parse_config, once the tunnels it names are known
    "ipsec": Field(lambda ck, node, key: node),
    "hooks": Field(_hooks),
    "sla_classes": Field(_sla_classes),
    "reply_on_arrival_tunnel": Field(_boolean),
}


def _check_ingress_vs_tunnels(ck: Checker, root: Node, values: dict[str, Any]) -> None:
    """Downstream traffic enters on ingress and leaves by a tunnel: one netdev can't be both."""
    ingress, tunnels = values.get("ingress"), values.get("tunnels")
    if not isinstance(ingress, tuple) or not isinstance(tunnels, tuple):
        return
    sites = values.get("sites")
    if isinstance(sites, tuple) and "sites" in root.value:
        keys = [f"sites[{i}].tunnels[{j}]" for i, st in enumerate(sites) for j in range(len(st.tunnels))]
    else:
        keys = [f"tunnels[{i}]" for i in range(len(tunnels))]
    by_if = {t.interface: k for k, t in zip(keys, tunnels)}
    inode = root.value["ingress"]
    items = inode.value if inode.tag == "seq" else [inode]
    for j, name in enumerate(ingress):
        if name in by_if:
            sub = f"ingress[{j}]" if inode.tag == "seq" else "ingress"
            ck.fail(items[j], sub, name,
                    f"an interface that is not a tunnel ({by_if[name]}.interface)")


_SITE_KEYS = ("site", "network_ranges", "tunnels")


def _resolve_form(ck: Checker, root: Node, values: dict[str, Any]) -> None:
    """Single-site form (site, network_ranges, tunnels at the top) or hub form
    (sites:); never both. The hub form's top-level view is every site's."""
    if "sites" not in root.value:
        for name in ("site", "tunnels"):
            if name not in root.value:
                ck.fail(root, name, None, f"required key '{name}' (missing), or a sites: list "
                                          f"(hub form)")
                values[name] = BAD
        values.setdefault("network_ranges", ())
        return
    for name in _SITE_KEYS:
        if name in root.value:
            ck.fail(root.value[name], name, root.value[name].plain(),
                    f"no top-level {name} beside sites: (hub form): move it into a site")
    sites = values.get("sites")
    dp = values.get("dataplane")
    dp_node = root.value.get("dataplane")
    given = dp_node.value if dp_node is not None and dp_node.tag == "map" else {}
    if isinstance(dp, DataplaneConfig):
        defaults = {"max_sites": HUB_DEFAULT_MAX_SITES, "slots": HUB_DEFAULT_SLOTS}
        dp = replace(dp, **{k: v for k, v in defaults.items() if k not in given})
        values["dataplane"] = dp
    elif "dataplane" not in root.value:
        dp = values["dataplane"] = DataplaneConfig(max_sites=HUB_DEFAULT_MAX_SITES,
                                                   slots=HUB_DEFAULT_SLOTS)
    if not isinstance(sites, tuple):
        values.update(site=BAD, tunnels=BAD, network_ranges=BAD)
        return
    if isinstance(dp, DataplaneConfig) and len(sites) > dp.max_sites:
        node = given.get("max_sites", root.value["sites"])
        ck.fail(node, "dataplane.max_sites" if "max_sites" in given else "sites", len(sites),
                f"at most dataplane.max_sites ({dp.max_sites}) sites; raise max_sites "
                f"(sizes the data path's per-site maps)")
    hold = values.get("failback_hold", 30.0)
    sites = tuple(st if st.failback_hold is not BAD else replace(st, failback_hold=hold)
                  for st in sites)
    arrival = values.get("reply_on_arrival_tunnel", False)
    sites = tuple(st if st.reply_on_arrival_tunnel is not None
                  else replace(st, reply_on_arrival_tunnel=arrival) for st in sites)
    values["sites"] = sites
    values["site"] = sites[0].name if len(sites) == 1 else ""
    values["tunnels"] = tuple(t for st in sites for t in st.tunnels)
    values["network_ranges"] = tuple(r for st in sites for r in st.network_ranges)


# ---------------------------------------------------------------------- entry

def parse_config(text: str, path: str = "<string>") -> SiteConfig:
    """The SiteConfig written in *text*; raises ValidationError with every problem."""
    root = load_yaml(text, path)
    ck = Checker(path)
    if root.tag != "map":
        ck.fail(root, "<root>", root.plain(), f"a mapping with keys {', '.join(_TOP)}")
        raise ValidationError(ck.problems)
    values = _section(ck, root, "", _TOP) or {}
    _resolve_form(ck, root, values)
    if "ipsec" in values:
        names = [t.name for t in values["tunnels"]] if isinstance(values.get("tunnels"), tuple) else None
        values["ipsec"] = ipsec_section(names)(ck, values["ipsec"], "ipsec")
    _check_ingress_vs_tunnels(ck, root, values)
    for name in _FLATTENED:
        values.update(values.pop(name, {}))
    values.setdefault("probe", ProbeConfig())
    values.setdefault("health", HealthConfig())
    if ck.problems or any(v is BAD for v in values.values()):
        # Cross-checks run after the per-key ones; operators read a file top-down.
        raise ValidationError(sorted(ck.problems, key=lambda p: p.line))
    return SiteConfig(path=path, **values)


def load_config(path: str = DEFAULT_CONFIG_PATH) -> SiteConfig:
    """Read and parse *path*; an unreadable file is a problem at line 0, bytes
    that are not UTF-8 one at their line."""
    return parse_config(read_text(path, "a readable UTF-8 YAML file"), path)
