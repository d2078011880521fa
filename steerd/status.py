"""What `steerctl status`, the metrics and the control socket show, and the
status document (DESIGN.md contract) rendered from it.

Two parts, because they change at different paces: a :class:`Snapshot` of the
controller's decisions (state, weight, share, drained, active HA role per
site) changes only when the controller decides something, and is taken at
most once per change (only the sites whose controller changed are rebuilt: a
hub's 1,000 sites are not recounted for every status or scrape); the
:class:`Readings` (probe statistics, counters) change with every probe and
packet and are read when shown. The daemon hands out both; renderers read
nothing else of it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .config import HealthConfig
from .health import LinkStats
from .mos import mos_of_stats

if TYPE_CHECKING:
    from .controller import Hub


@dataclass(frozen=True)
class TunnelStatus:
    name: str
    site: str
    ha_role: str
    wan: str
    interface: str
    state: str                 # up | degraded | down (down while drained)
    drained: bool
    weight: float              # fraction of its site's total
    share: float               # fraction of its site's slots, i.e. of new flows
    down_mbps: float
    cap_mbps: float | None


@dataclass(frozen=True)
class SiteStatus:
    name: str
    active_ha_role: str
    tunnels: tuple[str, ...]
    up: int
    degraded: int
    primaries_up: int


@dataclass(frozen=True)
class Snapshot:
    """The controller's decisions as of its last change."""

    site: str                              # the config's site (empty for a hub)
    sites: tuple[SiteStatus, ...]
    tunnels: tuple[TunnelStatus, ...]      # config order
    link_changes: int


def _site_part(hub: Hub, i: int) -> tuple[SiteStatus, tuple[TunnelStatus, ...]]:
    c, st = hub.sites[i], hub.cfg.sites[i]
    total = sum(c.weights) or 1.0
    shares = c.shares()
    tunnels = tuple(TunnelStatus(t.name, st.name, t.ha_role, t.wan, t.interface, c.states[p],
                                 p in c.drained, c.weights[p] / total, shares[p],
                                 t.bandwidth.down_mbps, t.bandwidth.cap_mbps)
                    for p, t in enumerate(st.tunnels))
    up = [t.state != "down" for t in tunnels]
    return SiteStatus(st.name, c.ha.active, tuple(t.name for t in tunnels), sum(up),
                      sum(t.state == "degraded" for t in tunnels),
                      sum(u for u, t in zip(up, tunnels) if t.ha_role == "primary")), tunnels


class Snapshots:
    """The snapshot of the running controller, taken once per change. The
    metrics server's thread asks too: one taker at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hub: Hub | None = None
        self._versions: list[int] = []
        self._parts: list[tuple[SiteStatus, tuple[TunnelStatus, ...]] | None] = []
        self._snap: Snapshot | None = None

    def of(self, hub: Hub) -> Snapshot:
        with self._lock:
            return self._take(hub)

    def _take(self, hub: Hub) -> Snapshot:
        if hub is not self._hub:                  # a reload's new controller
            self._hub, self._snap = hub, None
            self._versions, self._parts = [-1] * len(hub.sites), [None] * len(hub.sites)
        for i, c in enumerate(hub.sites):
            if self._versions[i] != c.version:
                self._parts[i], self._versions[i], self._snap = _site_part(hub, i), c.version, None
        if self._snap is None:
            self._snap = Snapshot(hub.cfg.site, tuple(p[0] for p in self._parts),
                                  tuple(t for p in self._parts for t in p[1]), hub.link_changes)
        return self._snap


@dataclass(frozen=True)
class Readings:
    """What was measured and counted, read when shown; per tunnel in config order."""

    stats: Sequence[LinkStats | None]           # None: not probed (yet)
    tx: Sequence[tuple[int, int]]               # packets, bytes steered into the tunnel
    flows: Sequence[int]                        # live flows (refreshed off the loop)
    probes: Sequence[tuple[int, int]] = ()      # sent, received; () when not probing
    health: HealthConfig = field(default_factory=HealthConfig)   # the SLA thresholds
    esp: dict[str, Any] | None = None           # tunnel name -> EspCounters; None: no XFRM watch
    sla: Sequence[tuple[str, str, bool]] | None = None   # tunnel, class, within; None: no quality rules
    rule_hits: dict[str, int] = field(default_factory=dict)
    rules: int = 0
    rebalances: int = 0
    slots_moved: int = 0
    config_errors: int = 0
    config_generation: int = 1
    event_write_errors: int = 0
    loop_errors: dict[str, int] = field(default_factory=dict)
    hooks: Sequence[tuple[str, int, int]] = ()  # each hook's script: runs, failures
    # duplicated rules' copies, None while no rule duplicates: (rule, site, (packets,
    # bytes)) per rule and site, and tunnel name -> (packets, bytes) per copy tunnel
    dup_rules: Sequence[tuple[str, str, tuple[int, int]]] | None = None
    dup_tunnels: dict[str, tuple[int, int]] = field(default_factory=dict)
    started: float = 0.0                        # time.monotonic() at start
    metrics_port: int | None = None
    probe_timing: dict[str, Any] = field(default_factory=dict)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def mos_of(st: LinkStats | None) -> float | None:
    """The estimated MOS of a tunnel's probe statistics (None without them)."""
    return mos_of_stats(st.rtt_mean, st.jitter, st.loss_ratio) if st else None


def tunnel_rows(snap: Snapshot, rd: Readings, site: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for i, t in enumerate(snap.tunnels):
        if site is not None and t.site != site:
            continue
        st = rd.stats[i] if i < len(rd.stats) else None
        pk, by = rd.tx[i] if i < len(rd.tx) else (0, 0)
        mos = mos_of(st)
        rows.append({
            "name": t.name, "site": t.site, "ha_role": t.ha_role, "wan": t.wan,
            "interface": t.interface, "state": t.state,
            "drained": t.drained,
            "rtt_ms": _ms(st.rtt_mean) if st else None,
            "rtt_p50_ms": _ms(st.rtt_p50) if st else None,
            "jitter_ms": _ms(st.jitter) if st else None,
            "loss_pct": round(st.loss_ratio * 100, 2) if st else None,
            "mos": None if mos is None else round(mos, 2),
            "weight": round(t.weight, 4),
            "share": round(t.share, 4),
            "flows": rd.flows[i] if i < len(rd.flows) else 0,
            "tx_packets": pk, "tx_bytes": by,
            "down_mbps": t.down_mbps,
            "cap_mbps": t.cap_mbps,
        })
    return rows


def site_rows(snap: Snapshot, site: str | None = None) -> list[dict[str, Any]]:
    """Per site: its active HA role and its tunnels' names (and a summary that
    keeps a 1,000-site table readable: tunnels up, primaries up)."""
    return [{"site": s.name, "active_ha_role": s.active_ha_role, "tunnels": list(s.tunnels),
             "up": s.up, "degraded": s.degraded, "primaries_up": s.primaries_up}
            for s in snap.sites if site is None or s.name == site]


def build(snap: Snapshot, rd: Readings, site: str | None = None) -> dict[str, Any]:
    """The status document; *site* limits sites and tunnels to one site. The
    top-level `site` and `active_ha_role` are there when one site is shown."""
    sites = site_rows(snap, site)
    doc: dict[str, Any] = {}
    if len(sites) == 1:
        doc["site"] = sites[0]["site"]
        doc["active_ha_role"] = sites[0]["active_ha_role"]
    doc.update({
        "sites": sites,
        "tunnels": tunnel_rows(snap, rd, site),
        "rules": rd.rules,
        "config_generation": rd.config_generation,
        "uptime_s": round(time.monotonic() - rd.started, 1),
        "metrics_port": rd.metrics_port,
        "probe_timing": rd.probe_timing,
    })
    return doc


def rules(daemon, site: str | None = None) -> list[dict[str, Any]]:
    """Rules in priority order with their hit counters and, for every site they
    apply at (only *site*, if given), where their matching flows go now and why
    (`sites`). `groups` sums the sites up by destination (a hub's 1,000 sites in
    a line or two); the top-level now/decision/why are the site's when one site
    is shown, else the largest group's."""
    if not daemon.ruleset:
        return []
    hits = daemon.rulemaps.hits() if daemon.rulemaps else {}
    c, cfg = daemon.controller, daemon.cfg
    names = [t.name for t in cfg.tunnels]
    by_id = {c.tunnel_id(i): n for i, n in enumerate(names)} if c else {}
    shown = [i for i, st in enumerate(cfg.sites) if site is None or st.name == site]
    pins = {i: c.wan_tunnels(i) if c else {} for i in shown}
    out = []
    for r in daemon.ruleset.rules:
        d = r.as_dict()
        d["summary"] = " ".join(f"{k} {','.join(map(str, v))}" for k, v in r.match.as_dict().items()) or "any"
        d["hits"] = hits.get(r.name, 0)
        at = [i for i in shown if not r.sites or cfg.sites[i].name in r.sites]
        d["sites"] = [{"site": cfg.sites[i].name, **_destination(daemon, r, i, pins[i], names, by_id)}
                      for i in at]
        d["groups"] = _groups(d["sites"])
        if len(d["sites"]) == 1:
            d.update({k: v for k, v in d["sites"][0].items() if k != "site"})
        elif d["groups"]:
            g = d["groups"][0]
            d.update(now=g["now"], decision=g["decision"], why=g["why"])
        else:
            d.update(now=None, decision="not here", why="limited to other sites")
        out.append(d)
    return out


def _groups(per_site: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sites by where the rule's flows go (a wan role, spread or drop) and how
    decided, largest first; `why` is the first site's."""
    groups: dict[tuple, dict[str, Any]] = {}
    for e in per_site:
        where = e.get("now_wan") if e["now"] not in (None, "spread", "drop") else e["now"]
        g = groups.setdefault((str(where), e["decision"]),
                              {"now": where, "decision": e["decision"], "why": e["why"], "sites": []})
        g["sites"].append(e["site"])
    return sorted(groups.values(), key=lambda g: (-len(g["sites"]), str(g["now"])))


def _destination(daemon, rule, site: int, pins: dict[str, int | None], names: list[str],
                 by_id: dict[int, str]) -> dict[str, Any]:
    """Where the rule's matching flows go now at config site *site* (a tunnel,
    "spread" or "drop") and why; *pins* is the site's wan -> tunnel id."""
    if rule.quality and daemon.quality is not None:
        d = daemon.quality.explain(rule.wan_key, names, site)
    else:
        t = pins.get(rule.wan)
        d = ({"now": by_id[t], "now_wan": rule.wan, "decision": "pinned", "why": f"{rule.wan} is up"}
             if t is not None else {"now": None, "decision": "fallback", "why": f"{rule.wan} down"})
    if d["now"] is None and d["decision"] == "fallback":
        fb = rule.fallback
        t = pins.get(fb) if fb not in ("auto", "drop") else None
        d["now"] = by_id[t] if t is not None else ("drop" if fb == "drop" else "spread")
        if t is not None:
            d["now_wan"] = fb
        d["why"] += f"; fallback {fb}"
    return d
