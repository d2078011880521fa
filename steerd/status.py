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


def tunnel_rows(daemon) -> list[dict[str, Any]]:
    c = daemon.controller
    cfg = daemon.cfg
    total_w = sum(c.weights) or 1.0
    shares = c.shares()
    flows = daemon.flow_counts_cache    # refreshed off the loop: a status never walks the flow table
    rows = []
    for i, t in enumerate(cfg.tunnels):
        st = daemon.monitors[i].stats() if daemon.monitors else None
        pk, by = daemon.counters_cache[i] if i < len(daemon.counters_cache) else (0, 0)
        rows.append({
            "name": t.name, "ha_role": t.ha_role, "wan": t.wan, "interface": t.interface,
            "state": c.states[i],
            "rtt_ms": _ms(st.rtt_mean) if st else None,
            "rtt_p50_ms": _ms(st.rtt_p50) if st else None,
            "jitter_ms": _ms(st.jitter) if st else None,
            "loss_pct": round(st.loss_ratio * 100, 2) if st else None,
            "mos": _mos(st),
            "weight": round(c.weights[i] / total_w, 4),
            "share": round(shares[i], 4),
            "flows": flows[i] if i < len(flows) else 0,
            "tx_packets": pk, "tx_bytes": by,
            "down_mbps": t.bandwidth.down_mbps,
            "cap_mbps": t.bandwidth.cap_mbps,
        })
    return rows


def build(daemon) -> dict[str, Any]:
    return {
        "site": daemon.cfg.site,
        "active_ha_role": daemon.controller.ha.active,
        "tunnels": tunnel_rows(daemon),
        "rules": len(daemon.ruleset.rules) if daemon.ruleset else 0,
        "config_generation": daemon.config_generation,
        "uptime_s": round(time.monotonic() - daemon.started, 1),
        "metrics_port": daemon.metrics_port,
        "probe_timing": daemon.probe_timing(time.monotonic()),
    }


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
    names = [t.name for t in daemon.cfg.tunnels]
    if rule.quality and daemon.quality is not None:
        d = daemon.quality.explain(rule.wan_key, names)
    else:
        t = daemon.controller.wan_tunnels().get(rule.wan) if daemon.controller else None
        d = ({"now": names[t], "now_wan": rule.wan, "decision": "pinned", "why": f"{rule.wan} is up"}
             if t is not None else {"now": None, "decision": "fallback", "why": f"{rule.wan} down"})
    if d["now"] is None and d["decision"] == "fallback":
        fb = rule.fallback
        t = daemon.controller.wan_tunnels().get(fb) if fb not in ("auto", "drop") else None
        d["now"] = names[t] if t is not None else ("drop" if fb == "drop" else "spread")
        d["why"] += f"; fallback {fb}"
    return d
