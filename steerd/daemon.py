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
import sys
import time

from . import control, metrics, sdnotify
from .config import SiteConfig, load_config
from .controller import Controller, Note, Programming
from .dataplane import (Dataplane, KernelDataplane, Layout, cleanup_kernel, load_layout,
                        save_layout)
from .events import EventLog
from .yamlsrc import Problem, ValidationError

log = logging.getLogger("steerd")
MIN_SLEEP = 0.001  # scheduler resolution, small against the 100 ms confirmation interval
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
        from .probe import Prober

        loop = asyncio.get_running_loop()
        self.monitors = [LinkMonitor(t.name, self.cfg.probe, self.cfg.health, now)
                         for t in self.cfg.tunnels]
        for i, t in enumerate(self.cfg.tunnels):
            p = Prober(t.name, t.interface, t.probe_target,
                       on_reply=lambda seq, rtt, at, i=i: self._on_reply(i, seq, rtt, at))
            loop.add_reader(p.fileno(), p.handle_readable)
            self.probers.append(p)
        self.seq = [0] * len(self.cfg.tunnels)

    def _on_reply(self, i: int, seq: int, rtt: float, now: float) -> None:
        self._transitions(i, self.monitors[i].on_reply(seq, rtt, now), now)

    def _transitions(self, i: int, transitions: list, now: float) -> None:
        for tr in transitions:
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
            await asyncio.sleep(1.0)

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        # pyroute2 runs its own asyncio loop: kernel setup goes to a worker thread
        adopted = await asyncio.to_thread(self.dp.start)
        if isinstance(self.dp, KernelDataplane):
            save_layout(self.dp.layout, state_path(self.cfg))
        now = time.monotonic()
        self.controller = Controller(self.cfg, now, adopted.tunnel if adopted else None)
        self._load_rules_at_start()
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

    def _load_rules_at_start(self) -> None:
        """Rules from `rules_file`; a bad file at start is fatal like a bad config."""
        if self.cfg.rules_file and os.path.exists(self.cfg.rules_file):
            from .rules import load_rules
            self.apply_rules(load_rules(self.cfg.rules_file, self.cfg.wans))

    def apply_rules(self, ruleset) -> int:
        """Swap in a validated rule set (all or nothing, one flip in the data path)."""
        from .rules import compile_rules
        compiled = compile_rules(ruleset)
        if self.rulemaps is None:
            from .dataplane.rulemaps import RuleMaps
            self.rulemaps = RuleMaps(self.dp.prog.bpf)
        self.rulemaps.apply(compiled, self.controller.wan_tunnels())
        self.ruleset = ruleset
        return self.rulemaps.generation

    async def reload(self) -> dict:
        """Re-read config and rules; on any error keep everything as it runs."""
        try:
            cfg = load_config(self.cfg.path)
            ruleset = None
            if cfg.rules_file and os.path.exists(cfg.rules_file):
                from .rules import load_rules
                ruleset = load_rules(cfg.rules_file, cfg.wans)
            if Layout.from_config(cfg) != getattr(self.dp, "layout", None):
                raise ValidationError([Problem(cfg.path, 0, "tunnels/ingress/network_ranges/dataplane",
                                               "changed", "the same data-path layout (restart steerd "
                                               "to change interfaces, ranges, marks or tables)")])
        except ValidationError as exc:
            self.config_errors += 1
            self.events.emit("config_rejected", f"{len(exc.problems)} problem(s): {exc.problems[0]}")
            log.error("reload rejected, keeping the running config:\n%s", exc)
            return {"ok": False, "error": "reload rejected, nothing changed", "text": str(exc),
                    "problems": [p.as_dict() for p in exc.problems]}
        self.cfg = cfg
        self.controller.cfg = cfg
        for m in self.monitors:
            m.reconfigure(cfg.probe, cfg.health) if hasattr(m, "reconfigure") else None
        if ruleset is not None:
            self.apply_rules(ruleset)
        self.config_generation += 1
        self.apply(*self.controller.rebalance(self.factors(), time.monotonic(), force=True,
                                              load=self.dp.slot_load))
        summary = f"config generation {self.config_generation} applied"
        self.events.emit("config_reloaded", summary)
        return {"ok": True, "summary": summary}


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
