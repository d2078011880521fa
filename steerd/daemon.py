"""steerd: the loop. Probe tick (per tunnel, driven by each LinkMonitor), the
rebalance tick (rebalance_interval), immediate reprogramming on link events,
the control socket and the metrics endpoint.

    steerd --config /etc/steerd/steerd.yaml      run in the foreground
    steerd --cleanup [--config ...]              remove everything steerd put in the kernel
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from typing import Sequence

from . import control, drain, metrics, sdnotify, silence, stager, staging, status
from .config import SiteConfig, load_config
from .controller import Hub, Note, Programming
from .dataplane import (Dataplane, KernelDataplane, Layout, cleanup_kernel, load_layouts,
                        record_layout)
from .events import EventLog
from .hooks import HookRunner
from .rules import CompiledRules, Limits, RuleSet
from .rules.image import RuleImage
from .schedule import WakeQueue
from .yamlsrc import ValidationError, gc_paused

log = logging.getLogger("steerd")
MIN_SLEEP = 0.001  # scheduler resolution, small against the 15 ms confirmation interval
MAX_SLEEP = 0.25   # HA failback hold and the like are checked at least this often
PROBE_TIMING_WINDOW = 10.0  # seconds of probe send lateness that status reports
QUALITY_EVERY = 0.1     # s between quality-rule evaluations in the probe loop (a link change: at once)
PROBE_SPREAD = 0.0002     # s of spread per tunnel's first probe (3,000 tunnels: 0.6 s, at most the interval)
PROBE_GROUP = 0.01        # s between groups of first probes (3,000 tunnels: 60 groups of 50)
FLOW_COUNT_MAX_AGE = 1.0  # seconds a status may show old flow counts (a table walk each)


HEARTBEAT_MAX_AGE = 10.0   # the probe loop turns at least every MAX_SLEEP; older = stuck
ERROR_LOG_INTERVAL = 30.0  # a failing iteration logs its traceback at most this often


class DaemonFailed(RuntimeError):
    """A supervised loop ended: exit non-zero so that systemd restarts steerd."""


class Daemon:
    def __init__(self, cfg: SiteConfig, dataplane: Dataplane | None = None, probing: bool = True,
                 rules: stager.StagedRules | None = None):
        """*rules*: cfg.rules_file as already staged (steerd's main checks it before
        touching the kernel; reading 10,000 rules twice costs ~0.5 s of start)."""
        self.cfg = cfg
        self._start_rules = rules
        self.dp = dataplane or KernelDataplane(Layout.from_config(cfg, _recorded_layout(cfg)))
        self.events = EventLog(cfg.events_keep, cfg.events_file)
        self.hooks = HookRunner(cfg.hooks, self.events)
        self.drained = drain.load(drain.path_in(cfg.state_dir))   # tunnel names
        self.probing = probing
        self.controller: Hub | None = None
        self.monitors: list = []
        self.probers: list = []
        self.stop_event = asyncio.Event()
        self.started = time.monotonic()
        self.counters_cache: list[tuple[int, int]] = [(0, 0)] * len(cfg.tunnels)
        self.flow_counts_cache: list[int] = [0] * len(cfg.tunnels)
        self._flows_at = -FLOW_COUNT_MAX_AGE
        self._flows_walk: asyncio.Future | None = None
        self.rebalances = 0
        self.slots_moved = 0
        self.config_errors = 0
        self.config_generation = 1
        self.metrics_port: int | None = None
        self.ruleset = None
        self._rules_packed: stager.RulesPickle | None = None   # the ruleset as the stager pickled it
        self.rulemaps = None
        self.quality = None              # sla.QualityPlan of the rules with a wan list or an SLA
        self._quality_at = -QUALITY_EVERY
        self.xfrm = None                 # XfrmWatcher when tunnels are XFRM interfaces
        self.links = None                # LinkEvents: tunnel interfaces (re)created
        self._links_seen: dict[str, int] | None = {}   # announced, not yet relinked (None: lost)
        self.snapshots = status.Snapshots()
        self.loop_errors: dict[str, int] = {}
        self.heartbeat = time.monotonic()   # last probe-loop iteration that completed
        self.probe_late: deque[tuple[float, float]] = deque(maxlen=8192)   # (sent, late) seconds
        self.fatal: str | None = None
        # Data-plane writes are serialised: while a long write (relayout, rule
        # swap, QoS) runs in a worker thread, link changes only update the
        # controller and mark the data plane dirty; the job's end programs the
        # controller's current state, so no decision taken meanwhile is lost.
        self._dp_job = asyncio.Lock()
        self._dirty = False
        self._config_lock = asyncio.Lock()   # one reload or rules apply at a time
        self._tasks: set[asyncio.Task] = set()
        self._error_logged_at: dict[str, float] = {}
        self._control: control.ControlSocket | None = None

    # -- programming ----------------------------------------------------------
    def apply(self, prog: Programming | None, notes: list[Note]) -> None:
        """Write *prog* to the data plane (deferred while a long data-plane job
        runs), then report *notes*. A failed write is retried from the
        controller's current state on the next loop turn."""
        if prog is not None:
            self.evaluate_quality(time.monotonic())   # a link change may move a quality rule
            self._write(prog)
        for n in notes:
            if n.type == "rebalance":
                self.rebalances += 1
                self.slots_moved += n.extra.get("slots_moved", 0)
            self.events.emit(n.type, n.reason, n.tunnel, **n.extra)

    def _write(self, prog: Programming) -> None:
        if self._dp_job.locked():
            self._dirty = True
            return
        try:
            # usable first: a dead tunnel stops taking flows before slots move
            self.dp.set_usable(list(prog.usable), prog.site)
            if prog.slots is not None:
                self.dp.write_slots(list(prog.slots), prog.keep_flows_of, prog.site)
            if self.rulemaps is not None:
                self.rulemaps.set_wan_tunnels(
                    self.wan_table(self.controller.site_index_of(prog.site), prog.wan_tunnels),
                    prog.site)
        except Exception as exc:
            self._dirty = True
            self._loop_error("dataplane", exc)

    # -- quality rules: decided here, written into the rules' wan table ------------
    def wan_table(self, site: int = 0, wan_tunnels: dict[str, int | None] | None = None,
                  controller: Hub | None = None) -> dict[str, int | None]:
        """Site *site*'s row of the data path's wan table (tunnel ids): each role's
        tunnel in the site's active HA role, plus the quality rules' entries
        (``Rule.wan_key``) with the plan's decisions for that site."""
        c = controller or self.controller
        table = dict(c.wan_tunnels(site) if wan_tunnels is None else wan_tunnels)
        if self.quality is not None:
            copies = self.quality.copies(site)
            for k, t in self.quality.resolved(site).items():
                tid = None if t is None else c.tunnel_id(t)
                if tid is not None and k in copies:   # a duplicated rule: see ebpf/dup.h
                    dup = self.dp.dup_value(c.site_ids[site], k, tid, c.tunnel_id(copies[k]))
                    tid = tid if dup is None else dup
                table[k] = tid
        return table

    def _release_dups(self, controller: Hub | None = None) -> None:
        """After every site's wan table was written: free the duplication entries
        no row names any more."""
        c = controller or self.controller
        keys = set()
        if self.quality is not None:
            keys = {(sid, k) for i, sid in enumerate(c.site_ids) for k in self.quality.copies(i)}
        self.dp.dup_keep_only(keys)

    def wan_rows(self, controller: Hub | None = None) -> dict[int, dict[str, int | None]]:
        """Every site's wan-table row: site id -> wan key -> tunnel id."""
        c = controller or self.controller
        return {sid: self.wan_table(i, controller=c) for i, sid in enumerate(c.site_ids)}

    def evaluate_quality(self, now: float, controller: Hub | None = None) -> bool:
        """Feed the measurements to the quality plan and report its SLA events.
        True when a rule's destination changed (the wan table must be rewritten)."""
        c = controller or self.controller
        if self.quality is None or c is None:
            return False
        from .sla import LONG_LOSS_SAMPLES, TunnelView, long_loss_ratio
        cfg = self.cfg
        need = max(1, (cfg.probe.window + 1) // 2)   # health's own minimum for SLA checks
        views = []
        for i, t in enumerate(cfg.tunnels):
            st, long_loss = None, None
            if i < len(self.monitors):
                st = self.monitors[i].stats()
                long_loss = long_loss_ratio(*self.monitors[i].recent_loss(LONG_LOSS_SAMPLES))
            views.append(TunnelView(t.name, t.wan, c.state_of(i) != "down",
                                    st if st is not None and st.samples >= need else None,
                                    long_loss))
        changes = self.quality.track(views, now)
        changed = False
        for si, site in enumerate(cfg.sites):   # each site decides among its own tunnels
            role, off = c.active_role(si), c.offsets[si]
            active = {t.wan: off + k for k, t in enumerate(site.tunnels) if t.ha_role == role}
            changed |= self.quality.decide(views, active, si, now)
        for ch in changes:
            self.events.emit(ch.type, ch.reason, ch.tunnel, **{"class": ch.cls}, **ch.measured)
        for d in self.quality.dup_changes:
            self.events.emit(d.type, d.reason, d.tunnel, rule=d.rule, copy=d.copy,
                             loss_pct=d.loss_pct, site=cfg.sites[d.site].name)
        self.quality.dup_changes.clear()
        return changed

    def _write_quality(self) -> None:
        """Only the wan table: a quality rule moved (deferred like any write)."""
        if self.rulemaps is None:
            return
        if self._dp_job.locked():
            self._dirty = True
            return
        try:
            for i, sid in enumerate(self.controller.site_ids):
                self.rulemaps.set_wan_tunnels(self.wan_table(i), sid)
            self._release_dups()
        except Exception as exc:
            self._dirty = True
            self._loop_error("dataplane", exc)

    def _new_quality_plan(self, ruleset, now: float, controller: Hub):
        """The plan for *ruleset* (trackers of unchanged classes carried over),
        evaluated once; the previous plan is returned so a failed install can restore it."""
        from .sla import QualityPlan
        old = self.quality
        plan = QualityPlan(ruleset.rules if ruleset else (), self.cfg.sla_classes)
        if old is not None:
            plan.carry_over(old)
        self.quality = plan if plan.entries else None
        self.evaluate_quality(now, controller)
        return old

    def apply_all(self, results: list[tuple[Programming | None, list[Note]]]) -> None:
        """Programming and notes of several sites (a tick, a rebalance)."""
        for prog, notes in results:
            self.apply(prog, notes)

    def _resync(self) -> None:
        """Program the current state (every site's) if a write was deferred or failed."""
        if self._dirty and not self._dp_job.locked() and self.controller is not None:
            self._dirty = False
            for prog in self.controller.current():
                self._write(prog)

    def site_of(self, i: int) -> dict[str, str]:
        """The `site` key events about tunnel *i* carry."""
        return {"site": self.cfg.sites[self.cfg.site_of(i)].name}

    def _loop_error(self, where: str, exc: BaseException) -> None:
        """Count and report an error that a loop survives; the traceback at most every 30 s."""
        self.loop_errors[where] = self.loop_errors.get(where, 0) + 1
        now = time.monotonic()
        if now - self._error_logged_at.get(where, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
            self._error_logged_at[where] = now
            log.error("%s: %s (%d so far); continuing", where, exc, self.loop_errors[where],
                      exc_info=exc)
        self.events.emit("loop_error", f"{where}: {type(exc).__name__}: {exc}")

    def factors(self) -> list[float]:
        if not self.monitors:
            return [1.0] * len(self.cfg.tunnels)
        return [m.health_factor() for m in self.monitors]

    # -- probing ----------------------------------------------------------------
    def _start_probing(self, now: float) -> None:
        from .health import LinkMonitor

        loop = asyncio.get_running_loop()
        from .probe import ProbeSockets
        self.probe_sockets = ProbeSockets(
            on_new=lambda s: loop.add_reader(s.fileno(), self._probe_readable, s))
        # first probes spread over PROBE_SPREAD per tunnel (a hub's thousands of
        # tunnels do not all go in one loop turn; the cadence is kept, so are the
        # phases), in groups PROBE_GROUP apart: one loop turn sends a group
        n = max(1, len(self.cfg.tunnels))
        spread = min(self.cfg.probe.interval, PROBE_SPREAD * n)
        groups = max(1, round(spread / PROBE_GROUP))
        self.monitors = [LinkMonitor(t.name, self.cfg.probe, self.cfg.health,
                                     now + spread * (i * groups // n) / groups)
                         for i, t in enumerate(self.cfg.tunnels)]
        self.probers = [self._prober(i, t) for i, t in enumerate(self.cfg.tunnels)]
        self.seq = [0] * len(self.cfg.tunnels)
        self._schedule_all()

    def _schedule_all(self) -> None:
        """Every monitor into a fresh wake queue (at start, and after a reload
        renumbered them)."""
        self.wakes = WakeQueue()
        for i, mon in enumerate(self.monitors):
            self.wakes.set(i, mon.next_wakeup())
        # the data path's upstream counters, read at once: every tunnel once, then the busy ones
        self.upstream_at = self.upstream_scan_at = time.monotonic()
        self.upstream_seen: Sequence[int] = ()      # packets per tunnel at the last scan
        self.upstream_watched: set[int] = set()     # tunnels read every silence.STEP

    def _prober(self, i: int, t):
        from .probe import Prober
        return Prober(t.name, t.interface, t.probe_target,
                      on_reply=lambda seq, rtt, at, i=i: self._on_reply(i, seq, rtt, at),
                      sockets=self.probe_sockets)

    def _probe_readable(self, sock) -> None:
        try:
            sock.handle_readable()
        except Exception as exc:   # a reader callback: asyncio would only log it
            self._loop_error("probe socket", exc)

    def _on_reply(self, i: int, seq: int, rtt: float, now: float) -> None:
        try:
            mon = self.monitors[i]
            self.apply_all(self.controller.probed(i, mon.on_reply(seq, rtt, now), now, mon.state))
            self.wakes.set(i, mon.next_wakeup())
        except Exception as exc:   # a reader callback: asyncio would only log it
            self._loop_error("probe reply", exc)

    # -- XFRM awareness: a tunnel whose SAs vanish is down before probes notice --
    def _start_xfrm(self) -> None:
        from .xfrm import XfrmWatcher
        try:
            w = XfrmWatcher.for_interfaces({t.name: t.interface for t in self.cfg.tunnels},
                                           self._on_sa_change).start()
        except OSError as exc:
            log.warning("no XFRM awareness: %s", exc)
            return
        if not w.tunnels:   # no XFRM interfaces among the tunnels (e.g. the veth lab)
            w.close()
            return
        self.xfrm = w
        asyncio.get_running_loop().add_reader(w.fileno(), self._xfrm_readable)
        for name, has in w.has_sa.items():
            if not has:
                self._on_sa_change(name, False, "no SA at start")

    def _stop_xfrm(self) -> None:
        if self.xfrm is not None:
            asyncio.get_running_loop().remove_reader(self.xfrm.fileno())
            self.xfrm.close()
            self.xfrm = None

    def _xfrm_readable(self) -> None:
        try:
            self.xfrm.handle_readable()
        except Exception as exc:
            self._loop_error("xfrm", exc)

    def _on_sa_change(self, name: str, has_sa: bool, reason: str) -> None:
        """SAs of tunnel *name* appeared or vanished. Keyed by name: indexes move
        on a reload, and a name the running config does not have is ignored."""
        if name not in {t.name for t in self.cfg.tunnels}:
            log.debug("SA change for %s, not a tunnel of the running config", name)
            return
        self.apply(*self.controller.sa_change(self.cfg.index_of(name), has_sa, reason,
                                              time.monotonic()))

    # -- link events: a tunnel interface created or recreated (IKE restart) ----
    def _start_links(self) -> None:
        from .dataplane.links import LinkEvents
        try:
            self.links = LinkEvents()
        except OSError as exc:
            log.warning("no link events (a recreated tunnel interface gets its upstream "
                        "counter at the next reload): %s", exc)
            return
        asyncio.get_running_loop().add_reader(self.links.fileno(), self._links_readable)

    def _links_readable(self) -> None:
        """Link announcements pile up here; one relink job at a time takes them
        (the data path is written in a worker thread, like every long write)."""
        try:
            seen = self.links.read()
        except Exception as exc:
            self._loop_error("link events", exc)
            return
        first = self._links_seen == {}
        if seen is None or self._links_seen is None:
            self._links_seen = None
        else:
            self._links_seen.update(seen)
        if first:
            self._spawn(self._relink(), "link events")

    async def _relink(self) -> None:
        async with self._dp_job:
            seen, self._links_seen = self._links_seen, {}
            taken = await asyncio.to_thread(self.dp.relink, seen)
        if taken:
            log.info("tunnel interface %s appeared: upstream counter and routes on it",
                     ", ".join(taken))
        for p in self.probers:
            if p.interface in taken:
                p.rebind()   # the prober holds the old interface's index

    def _transitions(self, i: int, transitions: list, now: float) -> None:
        self.apply_all(self.controller.probed(i, transitions, now))

    def _read_upstream(self, now: float) -> None:
        """Traffic-driven suspicion: the data path's per-tunnel counters to the
        monitors. Every silence.IDLE_STEP a scan of the counters (a memory read)
        finds the tunnels that received since the last one; those and the
        watched ones (every silence.STEP) go to their monitors. A tunnel that
        neither received nor is watched cannot become a suspect, and its
        SilenceWatch counts its counter as held still: a hub's thousands of
        quiet tunnels cost nothing between scans."""
        try:
            feed = set(self.upstream_watched)
            if now >= self.upstream_scan_at:
                rx = self.dp.upstream_packets()
                if rx is None:
                    raise LookupError("no upstream counter")
                if len(rx) != len(self.upstream_seen):    # first scan: every tunnel
                    feed.update(range(len(rx)))
                else:
                    feed.update(i for i, (a, b) in enumerate(zip(rx, self.upstream_seen)) if a != b)
                self.upstream_seen = rx
                self.upstream_scan_at = now + silence.IDLE_STEP
            which = sorted(feed)
            readings = self.dp.traffic(which)
            if readings is None:
                raise LookupError("no upstream counter")
        except Exception as exc:  # a failed map read must not stop the probing
            if not isinstance(exc, LookupError):
                log.error("upstream counters unreadable, probe timing only from now: %s", exc)
            self.upstream_at = math.inf
            return
        for i, reading in zip(which, readings):
            mon = self.monitors[i]
            cause = mon.on_upstream(now, *reading)
            if cause:
                log.debug("%s suspect: %s", mon.tunnel, cause)
            self.wakes.set(i, mon.next_wakeup())   # a suspect is probed at once
            if mon.upstream_watched(now):
                self.upstream_watched.add(i)
            else:
                self.upstream_watched.discard(i)
        self.upstream_at = min(self.upstream_scan_at,
                               now + silence.STEP if self.upstream_watched else math.inf)

    def _probe_once(self, now: float) -> None:
        if now >= self.upstream_at:
            self._read_upstream(now)   # may make a tunnel a suspect: probed just below
        # only the monitors that are due (thousands of tunnels in hub mode: one
        # tunnel's 15 ms confirmation burst must not cost a walk over all)
        for i in self.wakes.due(now):
            mon = self.monitors[i]
            try:
                due = mon.next_probe_at()
                if now >= due:
                    self.seq[i] += 1
                    try:
                        sent = self.probers[i].send(self.seq[i])
                        self.probe_late.append((sent, sent - due))
                    except OSError as exc:  # interface gone, EMFILE...: counts as a lost probe
                        log.debug("probe %s: %s", self.cfg.tunnels[i].name, exc)
                    mon.on_sent(self.seq[i], now)
                self._transitions(i, mon.on_tick(now), now)
            except Exception as exc:   # one tunnel's failure must not stop the others'
                self._loop_error(f"probe {self.cfg.tunnels[i].name}", exc)
            self.wakes.set(i, mon.next_wakeup())
        self.apply_all(self.controller.tick(now))
        # the loop turns every 15 ms while a tunnel is suspect; the statistics change
        # once per probe, and the hold-downs are seconds: 100 ms is fine-grained enough
        if now - self._quality_at >= QUALITY_EVERY:
            self._quality_at = now
            if self.evaluate_quality(now):
                self._write_quality()

    def probe_timing(self, now: float, window: float = PROBE_TIMING_WINDOW) -> dict:
        """How late probes left against their schedule over the last *window* seconds
        (what a busy loop costs the 15 ms confirmations)."""
        late = sorted(d for t, d in self.probe_late if now - t <= window)
        if not late:
            return {"window_s": window, "probes": 0, "late_max_ms": None, "late_p99_ms": None}
        return {"window_s": window, "probes": len(late),
                "late_max_ms": round(late[-1] * 1e3, 2),
                "late_p99_ms": round(late[min(len(late) - 1, int(len(late) * 0.99))] * 1e3, 2)}

    # -- what status, metrics and the control socket show -----------------------
    def view(self) -> tuple[status.Snapshot, status.Readings] | None:
        """The controller's snapshot (taken once per change) and the readings now;
        None before the controller exists. (The metrics server's thread calls this
        too: it only reads.)"""
        c = self.controller
        if c is None:
            return None
        n = len(self.cfg.tunnels)
        return self.snapshots.of(c), status.Readings(
            stats=[m.stats() for m in self.monitors] if self.monitors else [None] * n,
            tx=self.counters_cache, flows=self.flow_counts_cache,
            probes=[(p.sent, p.received) for p in self.probers] if self.probers else (),
            health=self.cfg.health,
            esp=self.xfrm.counters() if self.xfrm is not None else None,
            sla=self.quality.sla_states() if self.quality is not None else None,
            rule_hits=self.rulemaps.hits() if self.rulemaps is not None else {},
            rules=len(self.ruleset.rules) if self.ruleset else 0,
            rebalances=self.rebalances, slots_moved=self.slots_moved,
            config_errors=self.config_errors, config_generation=self.config_generation,
            event_write_errors=self.events.write_errors, loop_errors=dict(self.loop_errors),
            hooks=self.hooks.counts(), started=self.started, metrics_port=self.metrics_port,
            probe_timing=self.probe_timing(time.monotonic()), **self._dup_readings(c))

    def _dup_readings(self, c: Hub) -> dict:
        """The duplicated rules' copy counters (Readings.dup_rules, dup_tunnels)."""
        q = self.quality
        if q is None or not q.dups:
            return {}
        rule_of = {key: name for key, (name, _) in q.dups.items()}
        site_of_id = {sid: self.cfg.sites[i].name for i, sid in enumerate(c.site_ids)}
        rules = [(rule_of[key], site_of_id[sid], (v[0], v[1]))
                 for (sid, key), v in sorted(self.dp.dup_counts().items())
                 if key in rule_of and sid in site_of_id]
        per = self.dp.dup_tunnel_counts()
        tunnels = {t.name: (per[c.tunnel_id(i)][0], per[c.tunnel_id(i)][1])
                   for i, t in enumerate(self.cfg.tunnels) if c.tunnel_id(i) in per}
        return {"dup_rules": rules, "dup_tunnels": tunnels}

    def probe_alive(self, now: float) -> bool:
        """For the watchdog: the probe loop completed an iteration recently."""
        return not self.probing or now - self.heartbeat < HEARTBEAT_MAX_AGE

    async def probe_loop(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic()
            wake = now + MAX_SLEEP
            try:
                self._resync()
                self._probe_once(now)
                # sleep until the next probe or deadline of any tunnel (not a fixed
                # poll: idle CPU matters on small gateways), at most MAX_SLEEP
                nxt = self.wakes.next_at()
                wake = min(wake, self.upstream_at, nxt if nxt is not None else wake)
                self.heartbeat = now
            except Exception as exc:
                self._loop_error("probe loop", exc)
            await asyncio.sleep(max(MIN_SLEEP, wake - time.monotonic()))

    async def rebalance_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.cfg.rebalance_interval)
            except asyncio.TimeoutError:
                try:
                    self.apply_all(self.controller.rebalance(self.factors(), time.monotonic(),
                                                             load=self.dp.slot_load))
                except Exception as exc:
                    self._loop_error("rebalance", exc)

    async def refresh_flow_counts(self) -> list[int]:
        """Live flows per tunnel for status: a walk of the whole flow table, so it
        runs off the loop, at most once per FLOW_COUNT_MAX_AGE, and concurrent
        callers share one walk (a client looping `status` costs no more)."""
        if time.monotonic() - self._flows_at >= FLOW_COUNT_MAX_AGE:
            if self._flows_walk is None:
                self._flows_walk = asyncio.ensure_future(asyncio.to_thread(self.dp.flow_counts))
            walk = self._flows_walk
            try:
                self.flow_counts_cache = await asyncio.shield(walk)
                self._flows_at = time.monotonic()
            finally:
                if self._flows_walk is walk and walk.done():
                    self._flows_walk = None
        return self.flow_counts_cache

    async def counters_loop(self) -> None:
        """Refresh the per-tunnel counters once a second (status and metrics read the cache)."""
        while not self.stop_event.is_set():
            try:
                self._resync()
                self.counters_cache = self.dp.counters()
                if self.xfrm:
                    self.xfrm.resync()
            except Exception as exc:
                self._loop_error("counters", exc)
            await asyncio.sleep(1.0)

    # -- supervision ----------------------------------------------------------------
    def _supervise(self, name: str, coro) -> asyncio.Task:
        """Run a loop that must never end while the daemon runs: if it does, stop
        the daemon with an error so that systemd restarts it."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(lambda t: self._loop_ended(name, t))
        return task

    def _loop_ended(self, name: str, task: asyncio.Task) -> None:
        if self.stop_event.is_set():
            return
        exc = None if task.cancelled() else task.exception()
        self.fatal = f"{name} ended" + (f": {type(exc).__name__}: {exc}" if exc else "")
        log.critical("%s; exiting so that systemd restarts steerd (the data path keeps forwarding)",
                     self.fatal, exc_info=exc)
        self.stop_event.set()

    def _spawn(self, coro, what: str) -> None:
        """A fire-and-forget task (a SIGHUP reload) whose failure is logged, not lost."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._loop_error(what, t.exception())
        task.add_done_callback(done)

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        # one daemon per control socket, checked before anything is touched
        lock_fd = control.acquire(self.cfg.control_socket)
        try:
            await self._run(lock_fd)
        except BaseException:
            if self._control is None:
                os.close(lock_fd)
            raise

    async def _run(self, lock_fd: int) -> None:
        self.hooks.start()   # from the first event on ('started')
        # pyroute2 runs its own asyncio loop: kernel setup goes to a worker thread
        adopted = await asyncio.to_thread(self.dp.start, self._rules_before_attach)
        self._record_layout()
        now = time.monotonic()
        self.controller = self._hub(self.cfg, now,
                                    {k: v.tunnel for k, v in adopted.items()} if adopted else None)
        for name in sorted(self.drained & {t.name for t in self.cfg.tunnels}):   # kept across restarts
            self.apply(None, self.controller.drain(self.cfg.index_of(name), True, now)[1])
        if self.ruleset is not None:
            for i, sid in enumerate(self.controller.site_ids):
                self.rulemaps.set_wan_tunnels(self.wan_table(i), sid)
        await self.apply_qos()
        results = self.controller.rebalance(self.factors(), now, force=adopted is None)
        if adopted:   # usable flags and pins as decided now; the results move nothing more
            self._dirty = True
            self._resync()
        self.apply_all(results)
        where = {"sites": len(self.cfg.sites)} if self.cfg.hub else {"site": self.cfg.site}
        self.events.emit("started", "adopted pinned state" if adopted else "fresh start", **where)
        # What start built (modules, maps, the rules) lives as long as the daemon:
        # out of the collector's reach, no full collection walks it while probes run.
        gc.freeze()
        self._control = await control.serve(self, self.cfg.control_socket, self.cfg.control_group,
                                            lock_fd)
        self.metrics_port = metrics.serve(self, self.cfg.metrics_listen)
        self._install_signals(asyncio.get_running_loop())
        tasks = [self._supervise("rebalance loop", self.rebalance_loop()),
                 self._supervise("counters loop", self.counters_loop())]
        if self.probing:
            self._start_xfrm()     # before the probes' phases start (a hub's link dump takes seconds)
            self._start_probing(time.monotonic())
            gc.freeze()            # the monitors and probers, like what start built
            self._start_links()
            self.heartbeat = time.monotonic()
            tasks.append(self._supervise("probe loop", self.probe_loop()))
        tasks.append(self._supervise("watchdog loop", sdnotify.watchdog_loop(
            self.stop_event, lambda: self.probe_alive(time.monotonic()))))
        sdnotify.notify("READY=1")
        log.info("steerd %s running: %d tunnels, control %s, metrics port %s", self.cfg.site,
                 len(self.cfg.tunnels), self.cfg.control_socket, self.metrics_port)
        await self.stop_event.wait()
        sdnotify.notify("STOPPING=1")
        for t in tasks + list(self._tasks):
            t.cancel()
        self.hooks.stop()
        self._control.close()
        for p in self.probers:
            p.close()
        if self.probing:
            loop = asyncio.get_running_loop()
            for sock in self.probe_sockets.by_version.values():
                loop.remove_reader(sock.fileno())
            self.probe_sockets.close()
        self.dp.close()
        if self.fatal:
            raise DaemonFailed(self.fatal)
        log.info("stopped; the data path keeps forwarding (steerd --cleanup removes it)")

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(), "SIGHUP reload"))

    def _record_layout(self) -> None:
        """What is installed now, for `steerd --cleanup` (after start and every relayout)."""
        try:
            record_layout(self.dp.layout, state_path(self.cfg))
        except OSError as exc:
            log.error("layout not recorded in %s: %s", state_path(self.cfg), exc)

    def _rules_before_attach(self, prog) -> None:
        """Rules from `rules_file` go into the maps before the program is attached:
        the rule maps are not pinned, so a new program must never see traffic
        with an empty rule set. A bad file at start is fatal like a bad config;
        a configured file that is missing is reported and the daemon runs without rules."""
        if self.cfg.rules_file and not os.path.exists(self.cfg.rules_file):
            log.error("rules_file %s does not exist: running without rules", self.cfg.rules_file)
            self.events.emit("config_rejected", f"rules_file {self.cfg.rules_file} does not exist: "
                             "running without rules")
            return
        staged, self._start_rules = self._start_rules, None
        if staged is None and self.cfg.rules_file:
            staged = stager.stage_file(self.cfg, self.dp.rule_maps().limits)
        if staged is not None:
            self.rulemaps = self.dp.rule_maps()
            if staged.image.limits != self.rulemaps.limits:   # main staged for other maps
                staged = stager.stage_file(self.cfg, self.rulemaps.limits)
            ruleset = stager.unpack_now(staged.rules, staged.path)
            now = time.monotonic()
            ctl = self._hub(self.cfg, now)
            self._new_quality_plan(ruleset, now, ctl)
            self.rulemaps.apply(staged.image, sites=self.wan_rows(ctl))
            self.ruleset, self._rules_packed = ruleset, staged.rules

    def set_drained(self, name: str, on: bool) -> dict:
        """`steerctl tunnel drain|undrain NAME`: the controller moves the flows,
        the record (written first) keeps it so across restarts."""
        if name not in {t.name for t in self.cfg.tunnels}:
            return {"ok": False, "error": f"no tunnel {name!r} (tunnels: "
                                          f"{', '.join(t.name for t in self.cfg.tunnels)})"}
        names = self.drained | {name} if on else self.drained - {name}
        try:
            drain.save(drain.path_in(self.cfg.state_dir), names)
        except OSError as exc:
            return {"ok": False, "error": f"cannot record it in {self.cfg.state_dir}: {exc}"}
        self.drained = names
        self.apply(*self.controller.drain(self.cfg.index_of(name), on, time.monotonic()))
        return {"ok": True, "tunnel": name, "drained": on}

    async def apply_qos(self) -> None:
        """Caps and priority bands follow the config and the rules' priorities."""
        caps = [t.bandwidth.cap_mbps for t in self.cfg.tunnels]
        prios = {r.priority for r in self.ruleset.rules if getattr(r, "priority", None)} \
            if self.ruleset else set()
        try:
            # pyroute2 runs its own event loop: never on the daemon's loop thread
            async with self._dp_job:
                await asyncio.to_thread(self.dp.set_qos, caps, prios, self.cfg.qos_default_priority)
        except Exception as exc:  # e.g. another tool's root qdisc on a tunnel: report, keep steering
            log.error("QoS not applied: %s", exc)
            self.events.emit("qos_failed", str(exc))
        self._resync()

    def _hub(self, cfg: SiteConfig, now: float, adopted: dict[int, list[int]] | None = None) -> Hub:
        """The controller for *cfg*, with the data path's site ids."""
        return Hub(cfg, now, [s.id for s in self.dp.layout.sites], adopted)

    @staticmethod
    def _site_wans(hub: Hub) -> dict[int, dict[str, int | None]]:
        """Rule pinning of every site: site id -> wan -> tunnel id."""
        return {sid: hub.wan_tunnels(i) for i, sid in enumerate(hub.site_ids)}

    def _rule_limits(self):
        """The loaded maps' capacities: what a rule set is compiled (and checked) against."""
        return (self.rulemaps or self.dp.rule_maps()).limits

    async def _install_rules(self, ruleset: RuleSet | None, rules: RuleImage | CompiledRules,
                             packed: stager.RulesPickle | None) -> int:
        """Swap in a staged rule set (one flip in the data path), off the loop.
        *packed*: *ruleset* as pickled by the stager (the next apply's diff base)."""
        if self.rulemaps is None:
            self.rulemaps = self.dp.rule_maps()
        async with self._dp_job:
            old_plan = self._new_quality_plan(ruleset, time.monotonic(), self.controller)
            try:
                await asyncio.to_thread(self.rulemaps.apply, rules, sites=self.wan_rows())
            except BaseException:
                self.quality = old_plan     # all or nothing: the running rules keep their plan
                raise
            self.ruleset, self._rules_packed = ruleset, packed
            self._release_dups()
        self._dirty = True   # pins follow the wan -> tunnel map as it is now
        self._resync()
        await self.apply_qos()
        return self.rulemaps.generation

    async def _take_in(self, staged: stager.StagedRules) -> RuleSet:
        """The staged rules as objects, built one chunk per loop turn. No cyclic
        GC meanwhile, and what is alive at the end is frozen (gc.freeze): a full
        collection walks the ~10^5 new objects for 0.1 s and more with the GIL
        held, a stall of the probe loop, and rules are never cyclic garbage
        (reference counting frees a replaced set, frozen or not). The price:
        cyclic garbage made during these few ms is never collected."""
        with gc_paused():
            ruleset = await stager.unpack_rules(staged.rules, staged.path)
            gc.freeze()
        return ruleset

    async def rules_apply(self, text: str, path: str, dry_run: bool) -> dict:
        """`steerctl rules apply`: validate and compile off the loop (in a child
        process, steerd.stager), show the diff, swap in the new set unless
        *dry_run*. Nothing changes on any error."""
        async with self._config_lock:
            try:
                staged, d = await stager.stage_rules(text, path, self.cfg, self._rule_limits(),
                                                     self._rules_packed)
            except ValidationError as exc:
                return {"ok": False, "error": "invalid rules, nothing changed",
                        "problems": [p.as_dict() for p in exc.problems], "text": str(exc)}
            except stager.StagingFailed as exc:
                log.error("rules apply: %s", exc)
                return {"ok": False, "error": f"rules not staged, nothing changed: {exc}"}
            out = {"ok": True, "dry_run": dry_run, "diff": d.as_dict, "diff_text": d.text}
            if not dry_run:
                t0 = time.monotonic()
                new = await self._take_in(staged)
                out["generation"] = await self._install_rules(new, staged.image, staged.rules)
                out["apply_seconds"] = round(time.monotonic() - t0, 4)
                self.events.emit("rules_applied", f"{staged.nrules} rules from {path}",
                                 added=d.added, removed=d.removed, changed=d.changed)
            return out

    async def reload(self) -> dict:
        """Re-read config and rules; validate and compile everything before
        changing anything (off the loop, in a child process). On any error keep
        everything as it runs, log why, count it and say so in an event. One
        reload at a time."""
        async with self._config_lock:
            try:
                cfg, staged = await stager.stage_config(self.cfg.path, self.cfg,
                                                        self._rule_limits())
                ruleset = await self._take_in(staged) if staged is not None else None
            except ValidationError as exc:
                self.config_errors += 1
                self.events.emit("config_rejected",
                                 f"{len(exc.problems)} problem(s): {exc.problems[0]}")
                log.error("reload rejected, keeping the running config:\n%s", exc)
                return {"ok": False, "error": "reload rejected, nothing changed", "text": str(exc),
                        "problems": [p.as_dict() for p in exc.problems]}
            except Exception as exc:
                self.config_errors += 1
                self.events.emit("config_rejected", f"{type(exc).__name__}: {exc}")
                log.exception("reload rejected, keeping the running config")
                return {"ok": False, "error": f"reload rejected, nothing changed: {exc}"}
            try:
                changes = await self._switch_config(cfg)
                if cfg.hooks != self.hooks.hooks:
                    self.hooks.stop()
                    self.hooks = HookRunner(cfg.hooks, self.events)
                    self.hooks.start()
                if staged is not None:
                    await self._install_rules(ruleset, staged.image, staged.rules)
                elif self.ruleset is not None:      # rules_file removed: an empty set
                    await self._install_rules(None, staging.compile_for(
                        _no_rules(cfg), cfg, self._rule_limits()), None)
                else:
                    await self.apply_qos()
            except Exception as exc:
                self.config_errors += 1
                self.events.emit("reload_failed", f"{type(exc).__name__}: {exc}")
                log.exception("reload failed while applying; probing goes on")
                return {"ok": False, "error": f"reload failed while applying: {exc} "
                                              "(probing and failover go on; see the log)"}
            self.config_generation += 1
            summary = f"config generation {self.config_generation} applied: {changes}"
            self.events.emit("config_reloaded", summary)
            return {"ok": True, "summary": summary}

    async def _switch_config(self, cfg: SiteConfig) -> str:
        """Carry link state, HA state, monitors and slot tables over to *cfg* by
        site and tunnel name; touch the kernel only where the layout differs.
        Sites keep their data-path ids, so adding or removing a site moves no
        flow of another."""
        layout = Layout.from_config(cfg, self.dp.layout)
        relayout = layout != self.dp.layout
        # the rebalance below moves flows by the live ones per slot: a walk of the
        # whole flow table (~0.1 s at 65,536 entries), off the loop and before
        # anything changes (nothing awaits from here to the switch)
        per_slot = None if relayout else await asyncio.to_thread(self.dp.slot_load)
        now = time.monotonic()
        old_cfg, old = self.cfg, self.controller
        ctl = Hub(cfg, now, [s.id for s in layout.sites])
        ha_notes = ctl.carry_over(old, now)
        self._rebuild_probers(old_cfg, cfg, now)
        self.cfg, self.controller = cfg, ctl
        new_names = {t.name for t in cfg.tunnels}
        if self.drained - new_names:   # a removed tunnel's drain is forgotten, on disk too
            self.drained &= new_names
            try:
                drain.save(drain.path_in(cfg.state_dir), self.drained)
            except OSError as exc:
                log.warning("cannot update the drain record in %s: %s", cfg.state_dir, exc)
        results = ctl.rebalance(self.factors(), now, force=True,
                                load=None if per_slot is None else lambda: per_slot)
        if relayout:
            async with self._dp_job:
                await asyncio.to_thread(self.dp.relayout, layout)
            self._record_layout()
            # a link may have changed during the relayout: program what holds now
            self._dirty = True
            self._resync()
            self.apply(None, ha_notes + [n for _, notes in results for n in notes])
        else:
            self.apply(None, ha_notes)
            self.apply_all(results)
        old_ifs = {(t.name, t.interface) for t in old_cfg.tunnels}
        if any((t.name, t.interface) not in old_ifs for t in cfg.tunnels) \
                or len(cfg.tunnels) != len(old_cfg.tunnels):
            self._restart_xfrm()
        old_names = {t.name for t in old_cfg.tunnels}
        sites = ""
        if cfg.hub or old_cfg.hub:
            new_s, old_s = {s.name for s in cfg.sites}, {s.name for s in old_cfg.sites}
            sites = f"{len(cfg.sites)} sites (+{len(new_s - old_s)} -{len(old_s - new_s)}), "
        return (f"{sites}{len(cfg.tunnels)} tunnels (+{len(new_names - old_names)} "
                f"-{len(old_names - new_names)}), "
                f"data-path layout {'updated' if relayout else 'unchanged'}")

    def _restart_xfrm(self) -> None:
        """The SA watcher follows the running config's tunnel names and interfaces."""
        if not self.probing:
            return
        self._stop_xfrm()
        self._start_xfrm()

    def _rebuild_probers(self, old_cfg: SiteConfig, cfg: SiteConfig, now: float) -> None:
        """Keep the monitor (its history) of a tunnel whose interface and target
        did not change; start fresh ones for the others."""
        if not self.probing:
            return
        from .health import LinkMonitor
        keep = {t.name: i for i, t in enumerate(old_cfg.tunnels)}
        monitors, probers, seq = [], [], []
        for t in cfg.tunnels:
            i = keep.get(t.name)
            o = old_cfg.tunnels[i] if i is not None else None
            if o is not None and (o.interface, o.probe_target) == (t.interface, t.probe_target):
                self.monitors[i].reconfigure(cfg.probe, cfg.health)
                monitors.append(self.monitors[i])
                probers.append(self.probers[i])
                seq.append(self.seq[i])
                keep.pop(t.name)
            else:
                monitors.append(LinkMonitor(t.name, cfg.probe, cfg.health, now))
                probers.append(self._prober(len(probers), t))
                seq.append(0)
        for i in keep.values():
            self.probers[i].close()
        self.monitors, self.probers, self.seq = monitors, probers, seq
        # reply callbacks carry the tunnel's position: rebind them to the new order
        for i, p in enumerate(self.probers):
            p.on_reply = lambda seq, rtt, at, i=i: self._on_reply(i, seq, rtt, at)
        self._schedule_all()


def _no_rules(cfg: SiteConfig) -> RuleSet:
    return RuleSet((), cfg.rules_file or "<no rules>")


def _raise_fd_limit() -> None:
    """One probe socket per tunnel: a hub's 3,000 tunnels need more than the
    default 1,024 descriptors."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _recorded_layout(cfg: SiteConfig) -> Layout | None:
    """The layout the last run installed (each site keeps its data-path id), if readable."""
    try:
        return load_layouts(state_path(cfg))[-1]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def state_path(cfg: SiteConfig) -> str:
    """The installed layout is recorded next to the control socket (a runtime dir)."""
    return os.path.join(os.path.dirname(cfg.control_socket), "layout.json")


def cleanup(layout: Layout | None, state: str) -> None:
    """Remove what *layout* (the config's) and every layout recorded in *state*
    (what start and each reload installed) describe."""
    layouts = [layout] if layout is not None else []
    if os.path.exists(state):
        try:
            layouts += [k for k in load_layouts(state) if k not in layouts]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("recorded layout %s unreadable (%s): cleaning up the config's", state, exc)
    removed: dict[str, int] = {}
    for k in layouts:
        for what, n in cleanup_kernel(k).items():
            removed[what] = removed.get(what, 0) + n
    if os.path.exists(state):
        os.unlink(state)
    print("steerd cleanup: " + ", ".join(f"{k}={v}" for k, v in removed.items()))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="steerd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="/etc/steerd/steerd.yaml")
    ap.add_argument("--cleanup", action="store_true",
                    help="remove steerd's tc filters, ip rules, routes and pinned maps, then exit")
    ap.add_argument("--state", default="/run/steerd/layout.json",
                    help="layout file --cleanup falls back to when the config is invalid")
    ap.add_argument("--no-probe", action="store_true", help="do not probe (all tunnels stay up)")
    ap.add_argument("--log-level", default=os.environ.get("STEERD_LOG_LEVEL", "info"))
    a = ap.parse_args(argv)
    setup_logging(a.log_level)
    try:
        cfg = load_config(a.config)
    except ValidationError as exc:
        if a.cleanup and os.path.exists(a.state):
            # a bad edit must not prevent removing what the last good config installed
            log.warning("config invalid; cleaning up what %s records", a.state)
            cleanup(None, a.state)
            return
        print(f"steerd: refusing to start, {len(exc.problems)} problem(s) in config:\n{exc}",
              file=sys.stderr)
        sys.exit(2)
    rules = None
    if not a.cleanup and cfg.rules_file and os.path.exists(cfg.rules_file):
        # refused here, before the kernel is touched, with the config's message
        # (the daemon puts these rules into the maps before the program attaches)
        try:
            # the maps a daemon loads always have the default capacities
            rules = stager.stage_file(cfg, Limits())
        except ValidationError as exc:
            print(f"steerd: refusing to start, {len(exc.problems)} problem(s) in rules file:\n{exc}",
                  file=sys.stderr)
            sys.exit(2)
        except stager.StagingFailed as exc:
            print(f"steerd: refusing to start, rules file {cfg.rules_file} not staged: {exc}",
                  file=sys.stderr)
            sys.exit(1)
    if a.cleanup:
        cleanup(Layout.from_config(cfg, _recorded_layout(cfg)), state_path(cfg))
        return
    _raise_fd_limit()
    try:
        asyncio.run(Daemon(cfg, probing=not a.no_probe, rules=rules).run())
    except (DaemonFailed, control.AlreadyRunning) as exc:
        print(f"steerd: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
