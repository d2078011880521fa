"""The pure core of the daemon: link states and health in, programming and events out.

No sockets, no kernel, no clock: the daemon passes `now` and applies the
returned `Programming` to the dataplane (faucet-style: decide here, send there).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import selection
from .abi import NO_TUNNEL
from .config import SiteConfig



@dataclass(frozen=True)
class Programming:
    usable: tuple[bool, ...]               # tunnels the classifier may use at all
    slots: tuple[int, ...] | None          # new slot table, None = unchanged
    keep_flows_of: frozenset[int]          # tunnels whose live flows stay when their slots move
    wan_tunnels: dict[str, int | None]     # rule pinning: wan role -> tunnel in the active role
    reason: str


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
        self.states = [initial] * n
        self.factors = [1.0] * n
        self.ha = selection.HaSelector(cfg.tunnels, cfg.failback_hold, now)
        self.weights = [0.0] * n
        self.slots: list[int] | None = list(adopted_slots) if adopted_slots else None
        self.usable = tuple(s != "down" for s in self.states)

    # -- inputs -------------------------------------------------------------
    def link_state(self, index: int, state: str, now: float) -> tuple[Programming | None, list[Note]]:
        """A tunnel changed state. Down (or back up) reprograms at once."""
        old = self.states[index]
        self.states[index] = state
        notes = self._ha(now)
        if (old == "down") != (state == "down") or any(n.type in ("ha_failover", "ha_failback") for n in notes):
            prog, more = self._program(now, force=True,
                                       reason=f"{self.cfg.tunnels[index].name} {state}", notes=notes)
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
                self.states[i] = old.states[old_index[t.name]]
        self.ha.carry_over(old.ha)
        return self._ha(now)

    # -- decisions ----------------------------------------------------------
    def _ha(self, now: float) -> list[Note]:
        return [Note(e.type, e.reason, e.tunnel or None) for e in self.ha.update(self.states, now)]

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
        total = sum(new) or 1.0
        note = Note("rebalance", reason, extra={
            "slots_moved": moved, "slots": len(slots), "flows_moved": flows_moved,
            "weights": {t.name: round(w / total, 4) for t, w in zip(self.cfg.tunnels, new)}})
        return Programming(usable, tuple(slots), keep, self.wan_tunnels(), reason), [note]

    def shares(self) -> list[float]:
        """Fraction of slots (= of new flows) per tunnel."""
        n = len(self.cfg.tunnels)
        if not self.slots:
            return [0.0] * n
        counts = [0] * n
        for t in self.slots:
            if t < n:
                counts[t] += 1
        return [c / len(self.slots) for c in counts]
