"""steerd: the loop. Probe tick (per tunnel, driven by each LinkMonitor), the
rebalance tick (rebalance_interval), immediate reprogramming on link events,
the control socket and the metrics endpoint.

    steerd --config /etc/steerd/steerd.yaml      run in the foreground
    steerd --cleanup [--config ...]              remove everything steerd put in the kernel
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from . import control, metrics, sdnotify
from .config import SiteConfig, load_config
from .controller import Controller, Note, Programming
from .dataplane import (Dataplane, KernelDataplane, Layout, cleanup_kernel, load_layout,
                        save_layout)
from .events import EventLog
from .yamlsrc import Problem, ValidationError

log = logging.getLogger("steerd")
MIN_SLEEP = 0.001  # scheduler resolution, small against the 15 ms confirmation interval
MAX_SLEEP = 0.25   # HA failback hold and the like are checked at least this often


class Daemon:
    def __init__(self, cfg: SiteConfig, dataplane: Dataplane | None = None, probing: bool = True):
        self.cfg = cfg
        self.dp = dataplane or KernelDataplane(Layout.from_config(cfg))
        self.events = EventLog(cfg.events_keep, cfg.events_file)
        self.probing = probing
        self.controller: Controller | None = None
        self.monitors: list = []
        self.probers: list = []
        self.stop_event = asyncio.Event()
        self.started = time.time()
        self.counters_cache: list[tuple[int, int]] = [(0, 0)] * len(cfg.tunnels)
        self.rebalances = 0
        self.slots_moved = 0
        self.link_changes = 0
        self.config_errors = 0
        self.config_generation = 1
        self.metrics_port: int | None = None
        self.ruleset = None
        self.rulemaps = None
        self.xfrm = None                 # XfrmWatcher when tunnels are XFRM interfaces
        self.sa_down: set[int] = set()   # tunnels held down because their SAs are gone

    # -- programming ----------------------------------------------------------
    def apply(self, prog: Programming | None, notes: list[Note]) -> None:
        if prog is not None:
            # usable first: a dead tunnel stops taking flows before slots move
            self.dp.set_usable(list(prog.usable))
            if prog.slots is not None:
                self.dp.write_slots(list(prog.slots), prog.keep_flows_of)
            if self.rulemaps is not None:
                self.rulemaps.set_wan_tunnels(prog.wan_tunnels)
        for n in notes:
            if n.type == "rebalance":
                self.rebalances += 1
                self.slots_moved += n.extra.get("slots_moved", 0)
            self.events.emit(n.type, n.reason, n.tunnel, **n.extra)

    def factors(self) -> list[float]:
        if not self.monitors:
            return [1.0] * len(self.cfg.tunnels)
        return [m.health_factor() for m in self.monitors]

    # -- probing ----------------------------------------------------------------
    def _start_probing(self, now: float) -> None:
        from .health import LinkMonitor

        loop = asyncio.get_running_loop()
        self.monitors = [LinkMonitor(t.name, self.cfg.probe, self.cfg.health, now)
                         for t in self.cfg.tunnels]
        self.probers = [self._prober(i, t, loop) for i, t in enumerate(self.cfg.tunnels)]
        self.seq = [0] * len(self.cfg.tunnels)

    def _prober(self, i: int, t, loop: asyncio.AbstractEventLoop):
        from .probe import Prober
        p = Prober(t.name, t.interface, t.probe_target,
                   on_reply=lambda seq, rtt, at, i=i: self._on_reply(i, seq, rtt, at))
        loop.add_reader(p.fileno(), p.handle_readable)
        return p

    def _on_reply(self, i: int, seq: int, rtt: float, now: float) -> None:
        self._transitions(i, self.monitors[i].on_reply(seq, rtt, now), now)
        # SAs back and the probes never stopped answering: up again at once
        if i not in self.sa_down and self.controller.states[i] == "down" \
                and self.monitors[i].state != "down":
            self.link_changes += 1
            self.events.emit("link_up", "SA installed and probe answered", self.cfg.tunnels[i].name,
                             old="down", new=self.monitors[i].state)
            self.apply(*self.controller.link_state(i, self.monitors[i].state, now))

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
        asyncio.get_running_loop().add_reader(w.fileno(), w.handle_readable)
        for name, has in w.has_sa.items():
            if not has:
                self._on_sa_change(name, False, "no SA at start")

    def _on_sa_change(self, name: str, has_sa: bool, reason: str) -> None:
        i, now = self.cfg.index_of(name), time.monotonic()
        if has_sa:
            self.sa_down.discard(i)
            self.events.emit("sa_installed", reason, name)
            return
        self.sa_down.add(i)
        if self.controller.states[i] != "down":
            self.link_changes += 1
            self.events.emit("link_down", reason, name, old=self.controller.states[i], new="down")
            self.apply(*self.controller.link_state(i, "down", now))

    def _transitions(self, i: int, transitions: list, now: float) -> None:
        for tr in transitions:
            if i in self.sa_down and (tr.new != "down" or self.controller.states[i] == "down"):
                continue  # no SA: probes cannot bring it up, and it is down already
            self.link_changes += 1
            kind = {"down": "link_down", "up": "link_up", "degraded": "link_degraded"}[tr.new]
            self.events.emit(kind, tr.reason, tr.tunnel, old=tr.old, new=tr.new)
            prog, notes = self.controller.link_state(i, tr.new, now)
            self.apply(prog, notes)

    async def probe_loop(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic()
            for i, mon in enumerate(self.monitors):
                if now >= mon.next_probe_at():
                    self.seq[i] += 1
                    try:
                        self.probers[i].send(self.seq[i])
                    except OSError as exc:  # interface gone: counts as a lost probe
                        log.debug("probe %s: %s", self.cfg.tunnels[i].name, exc)
                    mon.on_sent(self.seq[i], now)
                self._transitions(i, mon.on_tick(now), now)
            self.apply(*self.controller.tick(now))
            # sleep until the next probe or deadline of any tunnel (not a fixed
            # poll: idle CPU matters on small gateways), at most MAX_SLEEP
            wake = min([m.next_wakeup() for m in self.monitors] + [now + MAX_SLEEP])
            await asyncio.sleep(max(MIN_SLEEP, wake - time.monotonic()))

    async def rebalance_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.cfg.rebalance_interval)
            except asyncio.TimeoutError:
                self.apply(*self.controller.rebalance(self.factors(), time.monotonic(),
                                                      load=self.dp.slot_load))

    async def counters_loop(self) -> None:
        """Refresh the per-tunnel counters once a second (status and metrics read the cache)."""
        while not self.stop_event.is_set():
            self.counters_cache = self.dp.counters()
            if self.xfrm:
                self.xfrm.resync()
            await asyncio.sleep(1.0)

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        # pyroute2 runs its own asyncio loop: kernel setup goes to a worker thread
        adopted = await asyncio.to_thread(self.dp.start, self._rules_before_attach)
        if isinstance(self.dp, KernelDataplane):
            save_layout(self.dp.layout, state_path(self.cfg))
        now = time.monotonic()
        self.controller = Controller(self.cfg, now, adopted.tunnel if adopted else None)
        if self.ruleset is not None:
            self.rulemaps.set_wan_tunnels(self.controller.wan_tunnels())
        self.apply_qos()
        prog, notes = self.controller.rebalance(self.factors(), now, force=adopted is None)
        self.apply(prog or self._current(), notes)
        self.events.emit("started", "adopted pinned state" if adopted else "fresh start",
                         site=self.cfg.site)
        server = await control.serve(self, self.cfg.control_socket, self.cfg.control_group)
        self.metrics_port = metrics.serve(self, self.cfg.metrics_listen)
        self._install_signals(asyncio.get_running_loop())
        tasks = [asyncio.create_task(self.rebalance_loop()), asyncio.create_task(self.counters_loop())]
        if self.probing:
            self._start_probing(now)
            self._start_xfrm()
            tasks.append(asyncio.create_task(self.probe_loop()))
        tasks.append(asyncio.create_task(sdnotify.watchdog_loop(self.stop_event)))
        sdnotify.notify("READY=1")
        log.info("steerd %s running: %d tunnels, control %s, metrics port %s", self.cfg.site,
                 len(self.cfg.tunnels), self.cfg.control_socket, self.metrics_port)
        await self.stop_event.wait()
        sdnotify.notify("STOPPING=1")
        for t in tasks:
            t.cancel()
        server.close()
        for p in self.probers:
            p.close()
        self.dp.close()
        log.info("stopped; the data path keeps forwarding (steerd --cleanup removes it)")

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    def _current(self) -> Programming:
        c = self.controller
        return Programming(tuple(s != "down" for s in c.states), None, frozenset(), c.wan_tunnels(),
                           "adopted")

    def _rules_before_attach(self, prog) -> None:
        """Rules from `rules_file` go into the maps before the program is attached:
        the rule maps are not pinned, so a new program must never see traffic
        with an empty rule set. A bad file at start is fatal like a bad config."""
        if self.cfg.rules_file and os.path.exists(self.cfg.rules_file):
            from .dataplane.rulemaps import RuleMaps
            from .rules import compile_rules, load_rules
            ruleset = load_rules(self.cfg.rules_file, self.cfg.wans, set(self.cfg.ingress))
            self.rulemaps = RuleMaps(prog.bpf)
            wans = Controller(self.cfg, time.monotonic()).wan_tunnels()
            self.rulemaps.apply(compile_rules(ruleset, _ifindexes(self.cfg), self.rulemaps.limits), wans)
            self.ruleset = ruleset

    def apply_qos(self) -> None:
        """Caps and priority bands follow the config and the rules' priorities."""
        caps = [t.bandwidth.cap_mbps for t in self.cfg.tunnels]
        prios = {r.priority for r in self.ruleset.rules if getattr(r, "priority", None)} \
            if self.ruleset else set()
        try:
            # pyroute2 runs its own event loop: never on the daemon's loop thread
            with ThreadPoolExecutor(1) as pool:
                pool.submit(self.dp.set_qos, caps, prios, self.cfg.qos_default_priority).result()
        except Exception as exc:  # e.g. another tool's root qdisc on a tunnel: report, keep steering
            log.error("QoS not applied: %s", exc)
            self.events.emit("qos_failed", str(exc))

    def apply_rules(self, ruleset) -> int:
        """Swap in a validated rule set (all or nothing, one flip in the data path)."""
        from .rules import compile_rules
        if self.rulemaps is None:
            from .dataplane.rulemaps import RuleMaps
            self.rulemaps = RuleMaps(self.dp.prog.bpf)
        compiled = compile_rules(ruleset, _ifindexes(self.cfg), self.rulemaps.limits)
        self.rulemaps.apply(compiled, self.controller.wan_tunnels())
        self.ruleset = ruleset
        self.apply_qos()
        return self.rulemaps.generation

    async def reload(self) -> dict:
        """Re-read config and rules, validate, apply only the difference; on any
        error keep everything as it runs, log why and count it."""
        try:
            cfg = load_config(self.cfg.path)
            ruleset = None
            if cfg.rules_file and os.path.exists(cfg.rules_file):
                from .rules import load_rules
                ruleset = load_rules(cfg.rules_file, cfg.wans, set(cfg.ingress))
            _check_restart_only(self.cfg, cfg)
        except ValidationError as exc:
            self.config_errors += 1
            self.events.emit("config_rejected", f"{len(exc.problems)} problem(s): {exc.problems[0]}")
            log.error("reload rejected, keeping the running config:\n%s", exc)
            return {"ok": False, "error": "reload rejected, nothing changed", "text": str(exc),
                    "problems": [p.as_dict() for p in exc.problems]}
        changes = await self._switch_config(cfg)
        if ruleset is not None or self.ruleset is not None:
            from .rules import RuleSet
            self.apply_rules(ruleset or RuleSet((), cfg.rules_file or ""))
        if ruleset is None:
            self.apply_qos()
        self.config_generation += 1
        summary = f"config generation {self.config_generation} applied: {changes}"
        self.events.emit("config_reloaded", summary)
        return {"ok": True, "summary": summary}

    async def _switch_config(self, cfg: SiteConfig) -> str:
        """Carry link state, HA state, monitors and the slot table over to *cfg*
        by tunnel name; touch the kernel only where the layout differs."""
        now = time.monotonic()
        old_cfg, old = self.cfg, self.controller
        new_index = {t.name: i for i, t in enumerate(cfg.tunnels)}
        gone = len(cfg.tunnels)  # an index build_slots frees
        remapped = [new_index.get(old_cfg.tunnels[t].name, gone) if t < len(old_cfg.tunnels) else gone
                    for t in (old.slots or [])] or None
        ctl = Controller(cfg, now, remapped)
        for i, t in enumerate(cfg.tunnels):
            if t.name in {o.name for o in old_cfg.tunnels}:
                ctl.states[i] = old.states[old_cfg.index_of(t.name)]
        ctl.ha.carry_over(old.ha)
        ctl.ha.update(ctl.states, now)
        self._rebuild_probers(old_cfg, cfg, now)
        layout = Layout.from_config(cfg)
        relayout = layout != getattr(self.dp, "layout", layout)
        self.cfg, self.controller = cfg, ctl
        prog, notes = ctl.rebalance(self.factors(), now, force=True,
                                    load=None if relayout else self.dp.slot_load)
        if relayout and prog is not None and prog.slots is not None:
            await asyncio.to_thread(self.dp.relayout, layout, list(prog.slots))
        self.apply(prog, notes)
        added = set(new_index) - {t.name for t in old_cfg.tunnels}
        removed = {t.name for t in old_cfg.tunnels} - set(new_index)
        return (f"{len(cfg.tunnels)} tunnels (+{len(added)} -{len(removed)}), "
                f"data-path layout {'updated' if relayout else 'unchanged'}")

    def _rebuild_probers(self, old_cfg: SiteConfig, cfg: SiteConfig, now: float) -> None:
        """Keep the monitor (its history) of a tunnel whose interface and target
        did not change; start fresh ones for the others."""
        if not self.probing:
            return
        from .health import LinkMonitor
        loop = asyncio.get_running_loop()
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
                probers.append(self._prober(len(probers), t, loop))
                seq.append(0)
        for i in keep.values():
            loop.remove_reader(self.probers[i].fileno())
            self.probers[i].close()
        self.monitors, self.probers, self.seq = monitors, probers, seq
        # reply callbacks carry the tunnel's position: rebind them to the new order
        for i, p in enumerate(self.probers):
            p.on_reply = lambda seq, rtt, at, i=i: self._on_reply(i, seq, rtt, at)


def _ifindexes(cfg: SiteConfig) -> dict[str, int]:
    """Ingress names -> ifindex for rules that match on the ingress interface."""
    out = {}
    for name in cfg.ingress:
        try:
            out[name] = socket.if_nametoindex(name)
        except OSError:
            log.warning("ingress %s not found: its ingress rules match nothing for now", name)
    return out


def _check_restart_only(old: SiteConfig, new: SiteConfig) -> None:
    """Settings that size or locate the eBPF maps need a restart, not a reload."""
    problems = []
    for key in ("bpffs", "slots", "flow_table_size"):
        a, b = getattr(old.dataplane, key), getattr(new.dataplane, key)
        if a != b:
            problems.append(Problem(new.path, 0, f"dataplane.{key}", b,
                                    f"{a!r} as running (changing it needs a restart of steerd)"))
    if problems:
        raise ValidationError(problems)


def state_path(cfg: SiteConfig) -> str:
    """The installed layout is recorded next to the control socket (a runtime dir)."""
    return os.path.join(os.path.dirname(cfg.control_socket), "layout.json")


def cleanup(layout: Layout, state: str) -> None:
    removed = cleanup_kernel(layout)
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
            cleanup(load_layout(a.state), a.state)
            return
        print(f"steerd: refusing to start, {len(exc.problems)} problem(s) in config:\n{exc}",
              file=sys.stderr)
        sys.exit(2)
    if a.cleanup:
        cleanup(Layout.from_config(cfg), state_path(cfg))
        return
    asyncio.run(Daemon(cfg, probing=not a.no_probe).run())


if __name__ == "__main__":
    main()
