"""Prometheus metrics, collected at scrape time from the daemon's state and the
eBPF counters (so a scrape always sees the data path's own numbers)."""
from __future__ import annotations

import logging

from prometheus_client import PROCESS_COLLECTOR, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from . import __version__
from .mos import mos_of_stats

log = logging.getLogger("steerd.metrics")
LABELS = ["tunnel", "wan", "ha_role", "site"]


class SteerdCollector:
    def __init__(self, daemon):
        self.d = daemon

    def collect(self):
        d = self.d
        c = d.controller
        if c is None:
            return
        g = {name: GaugeMetricFamily(f"steerd_{name}", doc, labels=LABELS) for name, doc in (
            ("tunnel_up", "1 when the tunnel is up or degraded, 0 when down"),
            ("tunnel_degraded", "1 when the tunnel is over an SLA threshold"),
            ("tunnel_rtt_seconds", "mean probe round-trip time over the window"),
            ("tunnel_jitter_seconds", "mean variation of consecutive RTTs over the window"),
            ("tunnel_loss_ratio", "probe loss over the window (0..1)"),
            ("tunnel_mos", "estimated voice MOS (1..4.5, simplified G.107 E-model, G.711)"),
            ("tunnel_weight", "normalised weight (bandwidth x health x preference)"),
            ("tunnel_share", "fraction of slots (new flows) assigned to the tunnel"),
        )}
        ctr = {name: CounterMetricFamily(f"steerd_{name}", doc, labels=LABELS) for name, doc in (
            ("tunnel_tx_packets", "packets steered into the tunnel (eBPF counter)"),
            ("tunnel_tx_bytes", "bytes steered into the tunnel (eBPF counter)"),
            ("probe_sent", "probes sent"),
            ("probe_received", "matching probe replies received"),
        )}
        weights, states = c.weights, c.states      # weights: fractions of their site's total
        shares = c.shares()
        site_names = [s.name for s in d.cfg.sites]
        for i, t in enumerate(d.cfg.tunnels):
            lv = [t.name, t.wan, t.ha_role, site_names[d.cfg.site_of(i)]]
            g["tunnel_up"].add_metric(lv, 0 if states[i] == "down" else 1)
            g["tunnel_degraded"].add_metric(lv, 1 if states[i] == "degraded" else 0)
            g["tunnel_weight"].add_metric(lv, weights[i])
            g["tunnel_share"].add_metric(lv, shares[i])
            if d.monitors:
                st = d.monitors[i].stats()
                g["tunnel_loss_ratio"].add_metric(lv, st.loss_ratio)
                if st.rtt_mean is not None:
                    g["tunnel_rtt_seconds"].add_metric(lv, st.rtt_mean)
                if st.jitter is not None:
                    g["tunnel_jitter_seconds"].add_metric(lv, st.jitter)
                mos = mos_of_stats(st.rtt_mean, st.jitter, st.loss_ratio)
                if mos is not None:
                    g["tunnel_mos"].add_metric(lv, mos)
            if d.probers:
                ctr["probe_sent"].add_metric(lv, getattr(d.probers[i], "sent", 0))
                ctr["probe_received"].add_metric(lv, getattr(d.probers[i], "received", 0))
            pk, by = d.counters_cache[i] if i < len(d.counters_cache) else (0, 0)
            ctr["tunnel_tx_packets"].add_metric(lv, pk)
            ctr["tunnel_tx_bytes"].add_metric(lv, by)
        if getattr(d, "xfrm", None) is not None:
            esp = d.xfrm.counters()
            for name, doc in (("esp_tx_bytes", "ESP bytes sent (kernel SA counters)"),
                              ("esp_rx_bytes", "ESP bytes received (kernel SA counters)"),
                              ("esp_tx_packets", "ESP packets sent (kernel SA counters)"),
                              ("esp_rx_packets", "ESP packets received (kernel SA counters)")):
                m = CounterMetricFamily(f"steerd_tunnel_{name}", doc, labels=LABELS)
                for i, t in enumerate(d.cfg.tunnels):
                    if t.name in esp:
                        m.add_metric([t.name, t.wan, t.ha_role, site_names[d.cfg.site_of(i)]],
                                     getattr(esp[t.name], name[4:]))
                ctr[name] = m
        yield from g.values()
        yield from ctr.values()
        if getattr(d, "quality", None) is not None:
            sla = GaugeMetricFamily("steerd_tunnel_sla_ok", "1 while the tunnel is within the "
                                    "quality class (after the hold-downs), 0 while out",
                                    labels=LABELS + ["class"])
            by_name = {t.name: t for t in d.cfg.tunnels}
            site_of = {t.name: site_names[d.cfg.site_of(i)]
                       for i, t in enumerate(d.cfg.tunnels)}
            for name, cls, ok in d.quality.sla_states():
                t = by_name.get(name)
                if t is not None:
                    sla.add_metric([t.name, t.wan, t.ha_role, site_of[t.name], cls], 1 if ok else 0)
            yield sla
        ha = GaugeMetricFamily("steerd_ha_active_role", "1 for the HA role carrying the site's traffic",
                               labels=["role", "site"])
        for i, name in enumerate(site_names):
            active = c.active_role(i)
            for role in ("primary", "secondary"):
                ha.add_metric([role, name], 1 if active == role else 0)
        yield ha
        for name, value, doc in (
            ("rebalances", d.rebalances, "slot-table reprogrammings"),
            ("link_state_changes", c.link_changes, "tunnel state transitions"),
            ("config_load_errors", d.config_errors, "rejected config or rules loads"),
            ("event_write_errors", d.events.write_errors,
             "events not written to the events file (full disk...); they stay in the log"),
        ):
            m = CounterMetricFamily(f"steerd_{name}", doc)
            m.add_metric([], value)
            yield m
        loop_errors = CounterMetricFamily(
            "steerd_loop_errors", "errors a daemon loop survived (logged, the loop went on)",
            labels=["where"])
        for where, n in sorted(d.loop_errors.items()):
            loop_errors.add_metric([where], n)
        yield loop_errors
        moved = CounterMetricFamily("steerd_slots_moved", "slots reassigned by rebalances")
        moved.add_metric([], d.slots_moved)
        yield moved
        info = GaugeMetricFamily("steerd_info", "constant 1; site and version as labels",
                                 labels=["site", "version"])
        info.add_metric([d.cfg.site, __version__], 1)
        yield info
        h = d.cfg.health
        sla = GaugeMetricFamily("steerd_sla_threshold", "configured SLA threshold (degraded above)",
                                labels=["metric"])
        sla.add_metric(["loss_ratio"], h.loss_pct / 100)
        sla.add_metric(["jitter_seconds"], h.jitter_ms / 1000)
        sla.add_metric(["rtt_seconds"], h.latency_ms / 1000)
        yield sla
        gen = GaugeMetricFamily("steerd_config_generation", "increments on every applied reload")
        gen.add_metric([], d.config_generation)
        yield gen
        rule_hits = CounterMetricFamily("steerd_rule_matches", "packets matched per rule",
                                        labels=["rule"])
        if d.rulemaps is not None:
            for name, hits in d.rulemaps.hits().items():
                rule_hits.add_metric([name], hits)
        yield rule_hits
        yield from _duplication(d, site_names)
        yield from d.hooks.metrics()


def _duplication(d, site_names: list[str]):
    """Copies sent by duplicated rules: per rule (and site), and per copy tunnel."""
    if getattr(d, "quality", None) is None or not d.quality.dups:
        return
    c = d.controller
    rule_of = {key: name for key, (name, _) in d.quality.dups.items()}
    site_of_id = {sid: site_names[i] for i, sid in enumerate(c.site_ids)}
    counts = d.dp.dup_counts()
    for what, col in (("packets", 0), ("bytes", 1)):
        m = CounterMetricFamily(f"steerd_rule_duplicated_{what}",
                                f"{what} copied onto a second tunnel per duplicated rule",
                                labels=["rule", "site"])
        for (sid, key), v in sorted(counts.items()):
            if key in rule_of and sid in site_of_id:
                m.add_metric([rule_of[key], site_of_id[sid]], v[col])
        yield m
    per_tunnel = d.dp.dup_tunnel_counts()
    for what, col in (("packets", 0), ("bytes", 1)):
        m = CounterMetricFamily(f"steerd_tunnel_duplicate_tx_{what}",
                                f"copies ({what}) sent on the tunnel for duplicated rules",
                                labels=LABELS)
        for i, t in enumerate(d.cfg.tunnels):
            v = per_tunnel.get(c.tunnel_id(i))
            if v is not None:
                m.add_metric([t.name, t.wan, t.ha_role, site_names[d.cfg.site_of(i)]], v[col])
        yield m


def serve(daemon, listen: str) -> int:
    """Start the HTTP endpoint on host:port; returns the bound port (0 picks one)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    registry = CollectorRegistry()
    registry.register(SteerdCollector(daemon))
    registry.register(PROCESS_COLLECTOR)  # process_* for restarts, RSS and CPU
    server, _thread = start_http_server(int(port), addr=host, registry=registry)
    return server.server_address[1]
