"""The `steerctl status` document (DESIGN.md contract) built from daemon state."""
from __future__ import annotations

import time
from typing import Any

from .mos import mos_of_stats


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _mos(st) -> float | None:
    m = mos_of_stats(st.rtt_mean, st.jitter, st.loss_ratio) if st else None
    return None if m is None else round(m, 2)


def tunnel_rows(daemon, site: str | None = None) -> list[dict[str, Any]]:
    c = daemon.controller
    cfg = daemon.cfg
    weights = c.weights             # each a fraction of its site's total
    shares = c.shares()
    flows = daemon.flow_counts_cache    # refreshed off the loop: a status never walks the flow table
    states = c.states
    rows = []
    for i, t in enumerate(cfg.tunnels):
        site_name = cfg.sites[cfg.site_of(i)].name
        if site is not None and site_name != site:
            continue
        st = daemon.monitors[i].stats() if daemon.monitors else None
        pk, by = daemon.counters_cache[i] if i < len(daemon.counters_cache) else (0, 0)
        rows.append({
            "name": t.name, "site": site_name, "ha_role": t.ha_role, "wan": t.wan,
            "interface": t.interface, "state": states[i],
            "drained": c.drained_of(i),
            "rtt_ms": _ms(st.rtt_mean) if st else None,
            "rtt_p50_ms": _ms(st.rtt_p50) if st else None,
            "jitter_ms": _ms(st.jitter) if st else None,
            "loss_pct": round(st.loss_ratio * 100, 2) if st else None,
            "mos": _mos(st),
            "weight": round(weights[i], 4),
            "share": round(shares[i], 4),
            "flows": flows[i] if i < len(flows) else 0,
            "tx_packets": pk, "tx_bytes": by,
            "down_mbps": t.bandwidth.down_mbps,
            "cap_mbps": t.bandwidth.cap_mbps,
        })
    return rows


def site_rows(daemon, site: str | None = None) -> list[dict[str, Any]]:
    """Per site: its active HA role and its tunnels' names (and a summary that
    keeps a 1,000-site table readable: tunnels up, primaries up)."""
    c, cfg = daemon.controller, daemon.cfg
    out = []
    for i, st in enumerate(cfg.sites):
        if site is not None and st.name != site:
            continue
        states = c.sites[i].states
        out.append({"site": st.name, "active_ha_role": c.active_role(i),
                    "tunnels": [t.name for t in st.tunnels],
                    "up": sum(s != "down" for s in states),
                    "degraded": sum(s == "degraded" for s in states),
                    "primaries_up": sum(s != "down" for s, t in zip(states, st.tunnels)
                                        if t.ha_role == "primary")})
    return out


def build(daemon, site: str | None = None) -> dict[str, Any]:
    """The status document; *site* limits sites and tunnels to one site. The
    top-level `site` and `active_ha_role` are there when one site is shown."""
    sites = site_rows(daemon, site)
    doc: dict[str, Any] = {}
    if len(sites) == 1:
        doc["site"] = sites[0]["site"]
        doc["active_ha_role"] = sites[0]["active_ha_role"]
    doc.update({
        "sites": sites,
        "tunnels": tunnel_rows(daemon, site),
        "rules": len(daemon.ruleset.rules) if daemon.ruleset else 0,
        "config_generation": daemon.config_generation,
        "uptime_s": round(time.monotonic() - daemon.started, 1),
        "metrics_port": daemon.metrics_port,
        "probe_timing": daemon.probe_timing(time.monotonic()),
    })
    return doc


def rules(daemon) -> list[dict[str, Any]]:
    if not daemon.ruleset:
        return []
    hits = daemon.rulemaps.hits() if daemon.rulemaps else {}
    out = []
    for r in daemon.ruleset.rules:
        d = r.as_dict()
        d["summary"] = " ".join(f"{k} {','.join(map(str, v))}" for k, v in r.match.as_dict().items()) or "any"
        d["hits"] = hits.get(r.name, 0)
        d.update(_destination(daemon, r))
        out.append(d)
    return out


def _destination(daemon, rule) -> dict[str, Any]:
    """Where the rule's matching flows go now (a tunnel, "spread" or "drop") and why."""
    # hub mode: shown for the first site (each site has its own wan row)
    c = daemon.controller
    names = [t.name for t in daemon.cfg.tunnels]
    by_id = {c.tunnel_id(i): n for i, n in enumerate(names)} if c else {}
    if rule.quality and daemon.quality is not None:
        d = daemon.quality.explain(rule.wan_key, names)
    else:
        t = c.wan_tunnels(0).get(rule.wan) if c else None
        d = ({"now": by_id[t], "now_wan": rule.wan, "decision": "pinned", "why": f"{rule.wan} is up"}
             if t is not None else {"now": None, "decision": "fallback", "why": f"{rule.wan} down"})
    if d["now"] is None and d["decision"] == "fallback":
        fb = rule.fallback
        t = c.wan_tunnels(0).get(fb) if fb not in ("auto", "drop") else None
        d["now"] = by_id[t] if t is not None else ("drop" if fb == "drop" else "spread")
        d["why"] += f"; fallback {fb}"
    return d
