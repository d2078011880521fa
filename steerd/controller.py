"""The pure core of the daemon: link states and health in, programming and events out.

No sockets, no kernel, no clock: the daemon passes `now` and applies the
returned `Programming` to the dataplane (faucet-style: decide here, send there).

`Controller` decides for one site (its tunnels by their index in the site);
`Hub` holds one per site and speaks the data path's tunnel ids (site id x 6 +
position in the site), so each site has its own weights, slot table, HA role
and failback hold, and one site's events never reprogram another.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from . import selection
from .abi import NO_TUNNEL
from .config import MAX_TUNNELS, SiteConfig

if TYPE_CHECKING:
    from .health import Transition



@dataclass(frozen=True)
class Programming:
    usable: tuple[bool, ...]               # tunnels the classifier may use at all
    slots: tuple[int, ...] | None          # new slot table, None = unchanged
    keep_flows_of: frozenset[int]          # tunnels whose live flows stay when their slots move
    wan_tunnels: dict[str, int | None]     # rule pinning: wan role -> tunnel in the active role
    reason: str
    site: int = 0                          # the site's id in the data path (hub mode)


@dataclass(frozen=True)
class Note:
    """An event for the operator (type, reason, tunnel, extra fields)."""

    type: str
    reason: str
    tunnel: str | None = None
    extra: dict = field(default_factory=dict)


class Controller:
    def __init__(self, cfg: SiteConfig, now: float, adopted_slots: list[int] | None = None):
        self.cfg = cfg
        n = len(cfg.tunnels)
        initial = cfg.health.initial_state
        self.states = [initial] * n       # what selection uses: measured, or down if drained
        self.measured = [initial] * n     # what probing says
        self.drained: set[int] = set()    # taken out of service by the operator
        self.factors = [1.0] * n
        self.ha = selection.HaSelector(cfg.tunnels, cfg.failback_hold, now)
        self.weights = [0.0] * n
        self.slots: list[int] | None = list(adopted_slots) if adopted_slots else None
        self.usable = tuple(s != "down" for s in self.states)
        self.sa_down: set[int] = set()    # no SAs (XFRM): probes cannot bring these up
        self.version = 0                  # +1 whenever what status shows changes
        self.link_changes = 0             # link state transitions decided here
        self._shares: tuple[list[int] | None, list[float]] = (None, [])

    # -- inputs -------------------------------------------------------------
    def probed(self, index: int, transitions: Sequence[Transition], now: float,
               answered: str | None = None) -> list[tuple[Programming | None, list[Note]]]:
        """What probing says of tunnel *index*: its monitor's *transitions* and,
        after a reply, the monitor's state (*answered*). Without SAs probes cannot
        bring a tunnel up; once its SAs are back, the first answered probe does."""
        out = []
        for tr in transitions:
            if index in self.sa_down and (tr.new != "down" or self.measured[index] == "down"):
                continue  # no SA: probes cannot bring it up, and it is down already
            out.append(self._link_change(index, tr.old, tr.new, tr.reason, now))
        if answered not in (None, "down") and index not in self.sa_down \
                and self.measured[index] == "down":
            out.append(self._link_change(index, "down", answered, "SA installed and probe answered", now))
        return out

    def sa_change(self, index: int, has_sa: bool, reason: str, now: float
                  ) -> tuple[Programming | None, list[Note]]:
        """The tunnel's SAs appeared or vanished: without them it is down before
        probes notice (and stays so until they are back and a probe answers)."""
        name = self.cfg.tunnels[index].name
        if has_sa:
            self.sa_down.discard(index)
            return None, [Note("sa_installed", reason, name)]
        self.sa_down.add(index)
        if self.measured[index] == "down":
            return None, []
        return self._link_change(index, self.measured[index], "down", reason, now)

    def _link_change(self, index: int, old: str, new: str, reason: str, now: float
                     ) -> tuple[Programming | None, list[Note]]:
        """Decide and program first: the link event is the report, not a step of it."""
        self.link_changes += 1
        prog, notes = self.link_state(index, new, now)
        kind = {"down": "link_down", "up": "link_up", "degraded": "link_degraded"}[new]
        return prog, notes + [Note(kind, reason, self.cfg.tunnels[index].name, {"old": old, "new": new})]

    def link_state(self, index: int, state: str, now: float) -> tuple[Programming | None, list[Note]]:
        """A tunnel changed state. Down (or back up) reprograms at once."""
        self.measured[index] = state
        if index in self.drained:
            return None, []          # out of service whatever probing says
        return self._set(index, state, now)

    def drain(self, index: int, drained: bool, now: float) -> tuple[Programming | None, list[Note]]:
        """Take a tunnel out of service (maintenance) or put it back: its flows
        move as on a link down, and back as on a link up (event reason
        "drained" / "undrained"); probing goes on meanwhile."""
        if drained == (index in self.drained):
            return None, []
        old = self.states[index]
        if drained:
            self.drained.add(index)
            new, kind, reason = "down", "link_down", "drained"
        else:
            self.drained.discard(index)
            new, kind, reason = self.measured[index], "link_up", "undrained"
        prog, notes = self._set(index, new, now, reason)
        if (old == "down") != (new == "down"):
            notes = [Note(kind, reason, self.cfg.tunnels[index].name, {"old": old, "new": new})] + notes
        return prog, notes

    def _set(self, index: int, state: str, now: float, why: str = "") -> tuple[Programming | None, list[Note]]:
        old = self.states[index]
        self.states[index] = state
        self.version += 1
        notes = self._ha(now)
        if (old == "down") != (state == "down") or any(n.type in ("ha_failover", "ha_failback") for n in notes):
            prog, more = self._program(now, force=True,
                                       reason=f"{self.cfg.tunnels[index].name} {why or state}", notes=notes)
            return prog, notes + more
        return None, notes

    def tick(self, now: float) -> tuple[Programming | None, list[Note]]:
        """Frequent tick: HA failback hold may have expired."""
        notes = self._ha(now)
        if notes:
            prog, more = self._program(now, force=True, reason=notes[0].reason, notes=notes)
            return prog, notes + more
        return None, []

    def rebalance(self, factors: list[float], now: float, force: bool = False,
                  load: Callable[[], list[int]] | None = None) -> tuple[Programming | None, list[Note]]:
        """Periodic (rebalance_interval) reweighing with the measured health factors.
        *load* gives live flows per slot, read only if the table is to change."""
        self.factors = list(factors)
        return self._program(now, force=force, reason="periodic rebalance", load=load)

    def carry_over(self, old: "Controller", now: float) -> list[Note]:
        """Continue from *old* (a reload): link states by tunnel name and the HA
        state. Returns the HA notes the new tunnel set causes (a reload that
        removes the last primary fails over, one that adds a healthy one fails back)."""
        old_index = {t.name: i for i, t in enumerate(old.cfg.tunnels)}
        for i, t in enumerate(self.cfg.tunnels):
            if t.name in old_index:
                j = old_index[t.name]
                self.states[i], self.measured[i] = old.states[j], old.measured[j]
                if j in old.drained:
                    self.drained.add(i)
        self.ha.carry_over(old.ha)
        self.version += 1
        return self._ha(now)

    # -- decisions ----------------------------------------------------------
    def _ha(self, now: float) -> list[Note]:
        notes = [Note(e.type, e.reason, e.tunnel or None) for e in self.ha.update(self.states, now)]
        if notes:
            self.version += 1
        return notes

    def wan_tunnels(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for i, t in enumerate(self.cfg.tunnels):
            if t.ha_role == self.ha.active:
                out[t.wan] = i if self.states[i] != "down" else None
        for t in self.cfg.tunnels:
            out.setdefault(t.wan, None)
        return out

    def _program(self, now: float, force: bool, reason: str, notes: list[Note] | None = None,
                 load: Callable[[], list[int]] | None = None) -> tuple[Programming | None, list[Note]]:
        new = selection.effective_weights(self.cfg.tunnels, self.states, self.factors, self.ha.active)
        usable = tuple(s != "down" for s in self.states)
        if not any(w > 0 for w in new):
            # Nowhere to go: keep the last good programming (slots and usable
            # tunnels) rather than dropping traffic; HaSelector says so in an event.
            return Programming(self.usable, None, frozenset(), self.wan_tunnels(), reason), []
        if self.slots is not None and not force and not selection.weights_changed(
                self.weights, new, self.cfg.rebalance_threshold):
            return None, []
        per_slot = load() if load is not None and self.slots is not None else None
        slots = selection.build_slots(new, self.cfg.dataplane.slots, previous=self.slots, load=per_slot)
        moved = selection.slots_moved(self.slots, slots) if self.slots is not None else len(slots)
        flows_moved = (sum(n for s, n in enumerate(per_slot) if slots[s] != self.slots[s])
                       if per_slot is not None else None)
        keep: frozenset[int] = frozenset()
        if self.cfg.failback == "new-flows" and any(n.type == "ha_failback" for n in notes or []):
            keep = frozenset(i for i, t in enumerate(self.cfg.tunnels) if t.ha_role == "secondary")
        self.weights, self.slots, self.usable = list(new), slots, usable
        self.version += 1
        total = sum(new) or 1.0
        note = Note("rebalance", reason, extra={
            "slots_moved": moved, "slots": len(slots), "flows_moved": flows_moved,
            "weights": {t.name: round(w / total, 4) for t, w in zip(self.cfg.tunnels, new)}})
        return Programming(usable, tuple(slots), keep, self.wan_tunnels(), reason), [note]

    def shares(self) -> list[float]:
        """Fraction of slots (= of new flows) per tunnel. Counted once per slot
        table (a new table is a new list): status and metrics ask for every
        site's shares, 1,000 x 1,024 slots on a hub."""
        if self._shares[0] is not self.slots or self.slots is None:
            n = len(self.cfg.tunnels)
            counts = [0] * n
            for t in self.slots or ():
                if t < n:
                    counts[t] += 1
            self._shares = (self.slots, [c / len(self.slots) for c in counts] if self.slots
                            else [0.0] * n)
        return self._shares[1]


# --------------------------------------------------------------------------- hub

def site_view(cfg: SiteConfig, i: int) -> SiteConfig:
    """Site *i* of *cfg* as a single-site config (its tunnels, ranges and hold)."""
    st = cfg.sites[i]
    return replace(cfg, site=st.name, network_ranges=st.network_ranges, tunnels=st.tunnels,
                   failback_hold=st.failback_hold, sites=(st,))


class Hub:
    """One Controller per site. Inputs use the config's tunnel index (position
    in ``cfg.tunnels``); programming uses data-path tunnel ids
    ``site_id * MAX_TUNNELS + position`` where *site_ids* (one per config site,
    stable across reloads: the data path's per-site map rows) are given.

    Only sites that are off their primaries are ticked (a failback hold can
    only expire there), so a tick costs nothing for healthy sites."""

    def __init__(self, cfg: SiteConfig, now: float, site_ids: Sequence[int] | None = None,
                 adopted: dict[int, list[int]] | None = None):
        self.cfg = cfg
        self.site_ids = list(site_ids) if site_ids is not None else list(range(len(cfg.sites)))
        self.offsets: list[int] = []
        n = 0
        for st in cfg.sites:
            self.offsets.append(n)
            n += len(st.tunnels)
        self.sites = [Controller(site_view(cfg, i), now, self._local(i, (adopted or {}).get(sid)))
                      for i, sid in enumerate(self.site_ids)]
        self._ticking = {i for i, c in enumerate(self.sites) if c.ha.active != "primary"}
        self._index_of_id = {sid: i for i, sid in enumerate(self.site_ids)}
        self._link_changes_before = 0     # those of the controllers before a reload

    # -- ids ------------------------------------------------------------------
    def tunnel_id(self, index: int) -> int:
        """Data-path id of config tunnel *index*."""
        return self.site_ids[self.cfg.site_of(index)] * MAX_TUNNELS + self.cfg.position_of(index)

    def _local(self, i: int, slots: list[int] | None) -> list[int] | None:
        """A site's slot table read from the data path (tunnel ids) -> positions;
        None unless every slot names one of the site's tunnels."""
        if not slots:
            return None
        base, k = self.site_ids[i] * MAX_TUNNELS, len(self.cfg.sites[i].tunnels)
        local = [t - base for t in slots]
        return local if all(0 <= t < k for t in local) else None

    def _global(self, i: int, prog: Programming | None) -> Programming | None:
        if prog is None:
            return None
        base = self.site_ids[i] * MAX_TUNNELS
        return Programming(
            prog.usable, None if prog.slots is None else tuple(base + t for t in prog.slots),
            frozenset(base + t for t in prog.keep_flows_of),
            {w: None if t is None else base + t for w, t in prog.wan_tunnels.items()},
            prog.reason, self.site_ids[i])

    def _notes(self, i: int, notes: list[Note]) -> list[Note]:
        name = self.cfg.sites[i].name
        return [replace(n, extra={**n.extra, "site": name}) for n in notes]

    def _out(self, i: int, result: tuple[Programming | None, list[Note]]
             ) -> tuple[Programming | None, list[Note]]:
        if self.sites[i].ha.active != "primary":
            self._ticking.add(i)
        else:
            self._ticking.discard(i)
        return self._global(i, result[0]), self._notes(i, result[1])

    # -- inputs ---------------------------------------------------------------
    def state_of(self, index: int) -> str:
        return self.sites[self.cfg.site_of(index)].states[self.cfg.position_of(index)]

    def measured_of(self, index: int) -> str:
        """What probing says of tunnel *index* (state_of is down while drained)."""
        return self.sites[self.cfg.site_of(index)].measured[self.cfg.position_of(index)]

    def drained_of(self, index: int) -> bool:
        return self.cfg.position_of(index) in self.sites[self.cfg.site_of(index)].drained

    def sa_down_of(self, index: int) -> bool:
        return self.cfg.position_of(index) in self.sites[self.cfg.site_of(index)].sa_down

    @property
    def link_changes(self) -> int:
        """Link state transitions since the daemon started (reloads included)."""
        return self._link_changes_before + sum(c.link_changes for c in self.sites)

    def probed(self, index: int, transitions: Sequence[Transition], now: float,
               answered: str | None = None) -> list[tuple[Programming | None, list[Note]]]:
        """Probing's word on tunnel *index* (Controller.probed): only its site decides."""
        i = self.cfg.site_of(index)
        return [self._out(i, r) for r in
                self.sites[i].probed(self.cfg.position_of(index), transitions, now, answered)]

    def sa_change(self, index: int, has_sa: bool, reason: str, now: float
                  ) -> tuple[Programming | None, list[Note]]:
        """Tunnel *index*'s SAs appeared or vanished (Controller.sa_change)."""
        i = self.cfg.site_of(index)
        return self._out(i, self.sites[i].sa_change(self.cfg.position_of(index), has_sa, reason, now))

    def link_state(self, index: int, state: str, now: float
                   ) -> tuple[Programming | None, list[Note]]:
        """A tunnel changed state: only its site decides (and reprograms)."""
        i = self.cfg.site_of(index)
        return self._out(i, self.sites[i].link_state(self.cfg.position_of(index), state, now))

    def drain(self, index: int, drained: bool, now: float
              ) -> tuple[Programming | None, list[Note]]:
        """`steerctl tunnel drain|undrain`: only the tunnel's site decides."""
        i = self.cfg.site_of(index)
        return self._out(i, self.sites[i].drain(self.cfg.position_of(index), drained, now))

    def tick(self, now: float) -> list[tuple[Programming | None, list[Note]]]:
        """Failback holds that may have expired (sites off their primaries only)."""
        out = []
        for i in sorted(self._ticking):
            prog, notes = self._out(i, self.sites[i].tick(now))
            if prog is not None or notes:
                out.append((prog, notes))
        return out

    def rebalance(self, factors: Sequence[float], now: float, force: bool = False,
                  load: Callable[[], list[int]] | None = None
                  ) -> list[tuple[Programming | None, list[Note]]]:
        """Every site reweighed with its tunnels' health factors (config order).
        *load* gives live flows per data-path slot (site_id x nslots + slot); it
        is read once, and only if some site's table is to change."""
        nslots = self.cfg.dataplane.slots
        cache: list[list[int]] = []

        def site_load(sid: int) -> Callable[[], list[int]]:
            def read() -> list[int]:
                if not cache:
                    cache.append(load())
                return cache[0][sid * nslots:(sid + 1) * nslots]
            return read
        out = []
        for i, c in enumerate(self.sites):
            off, k = self.offsets[i], len(self.cfg.sites[i].tunnels)
            res = c.rebalance(list(factors[off:off + k]), now, force,
                              site_load(self.site_ids[i]) if load is not None else None)
            prog, notes = self._out(i, res)
            if prog is not None or notes:
                out.append((prog, notes))
        return out

    def carry_over(self, old: "Hub", now: float) -> list[Note]:
        """After a reload: each site that existed (by name) keeps its link
        states, HA state and slot table (remapped by tunnel name); new sites
        start fresh. Nothing of an unchanged site moves. Returns the HA notes
        the new tunnel sets cause (per site)."""
        by_name = {st.name: i for i, st in enumerate(old.cfg.sites)}
        drained = {t.name for k, t in enumerate(old.cfg.tunnels) if old.drained_of(k)}
        sa_down = {t.name for k, t in enumerate(old.cfg.tunnels) if old.sa_down_of(k)}
        self._link_changes_before = old.link_changes
        notes: list[Note] = []
        for i, st in enumerate(self.cfg.sites):
            c = self.sites[i]
            for p, t in enumerate(st.tunnels):   # a drained tunnel stays so, even moved to another site
                if t.name in drained:
                    c.drained.add(p)
                    c.states[p] = "down"
                if t.name in sa_down:            # SA state follows the tunnel's name
                    c.sa_down.add(p)
            j = by_name.get(st.name)
            if j is None:   # a new site: fresh, but its drained tunnels count for HA
                notes += self._notes(i, c._ha(now))
                continue
            oc = old.sites[j]
            old_names = [t.name for t in oc.cfg.tunnels]
            new_index = {t.name: p for p, t in enumerate(st.tunnels)}
            gone = len(st.tunnels)  # an index build_slots frees
            if oc.slots:
                c.slots = [new_index.get(old_names[t], gone) if t < len(old_names) else gone
                           for t in oc.slots]
            notes += self._notes(i, c.carry_over(oc, now))
        self._ticking = {i for i, c in enumerate(self.sites) if c.ha.active != "primary"}
        return notes

    def current(self) -> list[Programming]:
        """Every site's current decisions as complete programmings (a resync)."""
        out = []
        for i, c in enumerate(self.sites):
            prog = Programming(c.usable, tuple(c.slots) if c.slots is not None else None,
                               frozenset(), c.wan_tunnels(), "current state")
            out.append(self._global(i, prog))
        return out

    # -- views ----------------------------------------------------------------
    def wan_tunnels(self, i: int) -> dict[str, int | None]:
        """Site *i*'s rule pinning in data-path tunnel ids."""
        base = self.site_ids[i] * MAX_TUNNELS
        return {w: None if t is None else base + t for w, t in self.sites[i].wan_tunnels().items()}

    def usable(self, i: int) -> tuple[bool, ...]:
        return tuple(s != "down" for s in self.sites[i].states)

    @property
    def states(self) -> list[str]:
        return [s for c in self.sites for s in c.states]

    @property
    def weights(self) -> list[float]:
        """Per tunnel (config order): its weight as a fraction of its site's total."""
        out = []
        for c in self.sites:
            total = sum(c.weights) or 1.0
            out.extend(w / total for w in c.weights)
        return out

    def shares(self) -> list[float]:
        return [x for c in self.sites for x in c.shares()]

    def site_index_of(self, site_id: int) -> int:
        """Config position of the site with data-path id *site_id*."""
        return self._index_of_id[site_id]

    def active_role(self, i: int) -> str:
        return self.sites[i].ha.active
