"""Prometheus metrics, rendered at scrape time from the daemon's view: the
controller's snapshot (taken once per change) and the readings of the probes
and the eBPF counters (so a scrape always sees the data path's own numbers)."""
from __future__ import annotations

import logging

from prometheus_client import PROCESS_COLLECTOR, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from . import __version__
from .status import Readings, mos_of

log = logging.getLogger("steerd.metrics")
LABELS = ["tunnel", "wan", "ha_role", "site"]


class SteerdCollector:
    """Renders the daemon's view (status.Snapshot + status.Readings) at scrape time."""

    def __init__(self, daemon):
        self.d = daemon

    def collect(self):
        view = self.d.view()
        if view is None:
            return
        snap, rd = view
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
        labels = {t.name: [t.name, t.wan, t.ha_role, t.site] for t in snap.tunnels}
        for i, t in enumerate(snap.tunnels):
            lv = labels[t.name]
            g["tunnel_up"].add_metric(lv, 0 if t.state == "down" else 1)
            g["tunnel_degraded"].add_metric(lv, 1 if t.state == "degraded" else 0)
            g["tunnel_weight"].add_metric(lv, t.weight)
            g["tunnel_share"].add_metric(lv, t.share)
            st = rd.stats[i] if i < len(rd.stats) else None
            if st is not None:
                g["tunnel_loss_ratio"].add_metric(lv, st.loss_ratio)
                if st.rtt_mean is not None:
                    g["tunnel_rtt_seconds"].add_metric(lv, st.rtt_mean)
                if st.jitter is not None:
                    g["tunnel_jitter_seconds"].add_metric(lv, st.jitter)
                mos = mos_of(st)
                if mos is not None:
                    g["tunnel_mos"].add_metric(lv, mos)
            if i < len(rd.probes):
                ctr["probe_sent"].add_metric(lv, rd.probes[i][0])
                ctr["probe_received"].add_metric(lv, rd.probes[i][1])
            pk, by = rd.tx[i] if i < len(rd.tx) else (0, 0)
            ctr["tunnel_tx_packets"].add_metric(lv, pk)
            ctr["tunnel_tx_bytes"].add_metric(lv, by)
        if rd.esp is not None:
            for name, doc in (("esp_tx_bytes", "ESP bytes sent (kernel SA counters)"),
                              ("esp_rx_bytes", "ESP bytes received (kernel SA counters)"),
                              ("esp_tx_packets", "ESP packets sent (kernel SA counters)"),
                              ("esp_rx_packets", "ESP packets received (kernel SA counters)")):
                m = CounterMetricFamily(f"steerd_tunnel_{name}", doc, labels=LABELS)
                for tname, esp in rd.esp.items():
                    if tname in labels:
                        m.add_metric(labels[tname], getattr(esp, name[4:]))
                ctr[name] = m
        yield from g.values()
        yield from ctr.values()
        if rd.sla is not None:
            sla = GaugeMetricFamily("steerd_tunnel_sla_ok", "1 while the tunnel is within the "
                                    "quality class (after the hold-downs), 0 while out",
                                    labels=LABELS + ["class"])
            for name, cls, ok in rd.sla:
                if name in labels:
                    sla.add_metric(labels[name] + [cls], 1 if ok else 0)
            yield sla
        ha = GaugeMetricFamily("steerd_ha_active_role", "1 for the HA role carrying the site's traffic",
                               labels=["role", "site"])
        for s in snap.sites:
            for role in ("primary", "secondary"):
                ha.add_metric([role, s.name], 1 if s.active_ha_role == role else 0)
        yield ha
        for name, value, doc in (
            ("rebalances", rd.rebalances, "slot-table reprogrammings"),
            ("link_state_changes", snap.link_changes, "tunnel state transitions"),
            ("config_load_errors", rd.config_errors, "rejected config or rules loads"),
            ("event_write_errors", rd.event_write_errors,
             "events not written to the events file (full disk...); they stay in the log"),
        ):
            m = CounterMetricFamily(f"steerd_{name}", doc)
            m.add_metric([], value)
            yield m
        loop_errors = CounterMetricFamily(
            "steerd_loop_errors", "errors a daemon loop survived (logged, the loop went on)",
            labels=["where"])
        for where, n in sorted(rd.loop_errors.items()):
            loop_errors.add_metric([where], n)
        yield loop_errors
        moved = CounterMetricFamily("steerd_slots_moved", "slots reassigned by rebalances")
        moved.add_metric([], rd.slots_moved)
        yield moved
        info = GaugeMetricFamily("steerd_info", "constant 1; site and version as labels",
                                 labels=["site", "version"])
        info.add_metric([snap.site, __version__], 1)
        yield info
        h = rd.health
        sla = GaugeMetricFamily("steerd_sla_threshold", "configured SLA threshold (degraded above)",
                                labels=["metric"])
        sla.add_metric(["loss_ratio"], h.loss_pct / 100)
        sla.add_metric(["jitter_seconds"], h.jitter_ms / 1000)
        sla.add_metric(["rtt_seconds"], h.latency_ms / 1000)
        yield sla
        gen = GaugeMetricFamily("steerd_config_generation", "increments on every applied reload")
        gen.add_metric([], rd.config_generation)
        yield gen
        rule_hits = CounterMetricFamily("steerd_rule_matches", "packets matched per rule",
                                        labels=["rule"])
        for name, hits in rd.rule_hits.items():
            rule_hits.add_metric([name], hits)
        yield rule_hits
        runs = CounterMetricFamily("steerd_hook_runs", "hook script runs started", labels=["hook"])
        fails = CounterMetricFamily("steerd_hook_failures",
                                    "hook runs that failed: exit status not 0, killed at the "
                                    "timeout, could not start, or event dropped (queue full)",
                                    labels=["hook"])
        for run, n_runs, n_failed in rd.hooks:
            runs.add_metric([run], n_runs)
            fails.add_metric([run], n_failed)
        yield runs
        yield fails
        yield from _duplication(rd, labels)


def _duplication(rd: Readings, labels: dict[str, list[str]]):
    """Copies sent by duplicated rules: per rule (and site), and per copy tunnel."""
    if rd.dup_rules is None:
        return
    for what, col in (("packets", 0), ("bytes", 1)):
        m = CounterMetricFamily(f"steerd_rule_duplicated_{what}",
                                f"{what} copied onto a second tunnel per duplicated rule",
                                labels=["rule", "site"])
        for rule, site, counts in rd.dup_rules:
            m.add_metric([rule, site], counts[col])
        yield m
    for what, col in (("packets", 0), ("bytes", 1)):
        m = CounterMetricFamily(f"steerd_tunnel_duplicate_tx_{what}",
                                f"copies ({what}) sent on the tunnel for duplicated rules",
                                labels=LABELS)
        for name, counts in rd.dup_tunnels.items():
            if name in labels:
                m.add_metric(labels[name], counts[col])
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
