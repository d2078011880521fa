"""Which tunnel carries which flow: weights, HA role and the slot table (pure).

Everything here takes data (and ``now``) in and returns decisions out: no
sockets, no clock, no kernel. Tunnels are referred to by their index, the
0-based position in the config's tunnel list (at most 6).

The slot table is what the eBPF classifier looks up: ``slot = flow_hash %
nslots`` and ``table[slot]`` is the tunnel index. Every flow moved to another
tunnel risks reordering and a broken connection behind a stateful firewall, so
a new table is always derived from the previous one by moving *only* the
surplus slots of tunnels whose quota fell (see :func:`build_slots`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, Sequence

ROLES = ("primary", "secondary")


class _Bandwidth(Protocol):
    down_mbps: float


class TunnelLike(Protocol):
    """The part of ``steerd.config.Tunnel`` this module relies on."""

    name: str
    ha_role: str
    wan: str
    bandwidth: _Bandwidth
    preference: float


# --------------------------------------------------------------------- weights

def base_weights(tunnels: Sequence[TunnelLike]) -> list[float]:
    """Configured weight per tunnel: downstream bandwidth x preference.

    Normalised *within each HA role*: the tunnels of a role sum to 1 (a role
    whose products are all zero gets zeros). Only one role carries traffic at a
    time, so a per-role share is what an operator reads as "this tunnel should
    get 60 % of new flows while its role is active".
    """
    raw = [float(t.bandwidth.down_mbps) * float(t.preference) for t in tunnels]
    totals = {role: 0.0 for role in ROLES}
    for t, w in zip(tunnels, raw):
        totals[t.ha_role] = totals.get(t.ha_role, 0.0) + w
    return [w / totals[t.ha_role] if totals[t.ha_role] > 0 else 0.0
            for t, w in zip(tunnels, raw)]


def effective_weights(tunnels: Sequence[TunnelLike], states: Sequence[str],
                      health_factors: Sequence[float], active_role: str) -> list[float]:
    """Weight used for the slot table: 0 outside the active role or when down,
    else base weight x health factor (not renormalised: build_slots only cares
    about ratios, and keeping the raw product makes the metric comparable
    between ticks)."""
    if not len(tunnels) == len(states) == len(health_factors):
        raise ValueError("tunnels, states and health_factors differ in length")
    base = base_weights(tunnels)
    return [0.0 if t.ha_role != active_role or s == "down" else b * max(0.0, float(h))
            for t, s, h, b in zip(tunnels, states, health_factors, base)]


def _shares(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    return [w / total if total > 0 else 0.0 for w in weights]


def weights_changed(old: Sequence[float], new: Sequence[float],
                    threshold: float = 0.10) -> bool:
    """Whether a new weight vector is worth reprogramming (FortiOS-like 10 %).

    True when the tunnel count differs, a tunnel went to or from zero (a dead
    or revived tunnel is always reprogrammed at once), or any tunnel's *share*
    changed by more than ``threshold`` relative to its old share. Shares, not
    raw weights, are compared: scaling every weight alike moves no flow.
    """
    if len(old) != len(new):
        return True
    so, sn = _shares(old), _shares(new)
    for o, n in zip(so, sn):
        if (o > 0) != (n > 0):
            return True
        if o > 0 and abs(n - o) > threshold * o:
            return True
    return False


# ----------------------------------------------------------------------- HA role

@dataclass(frozen=True)
class HaEvent:
    type: str       # "ha_failover" | "ha_failback" | "all_down"
    reason: str
    at: float
    tunnel: str = ""   # the primary tunnel that earned the failback, else ""


class HaSelector:
    """Which HA role carries traffic; pure, the caller passes ``now``.

    - primary carries traffic while at least one primary tunnel is not down;
    - all primaries down -> secondary at once (``ha_failover``);
    - back to primary once one primary tunnel has been continuously not-down
      for ``failback_hold`` (a flap restarts that tunnel's hold) -- except
      when every secondary tunnel is down too: then the hold protects nothing
      and the first live primary gets the traffic at once;
    - every tunnel of both roles down: the role is kept and one ``all_down``
      event is emitted per episode (the daemon keeps the last programming).

    A config without primary tunnels starts (and stays) on secondary.
    """

    def __init__(self, tunnels: Sequence[TunnelLike], failback_hold: float, now: float):
        self._names = [t.name for t in tunnels]
        self._roles = [t.ha_role for t in tunnels]
        self._hold = float(failback_hold)
        self._primary = [i for i, r in enumerate(self._roles) if r == "primary"]
        self._secondary = [i for i, r in enumerate(self._roles) if r == "secondary"]
        self.active: str = "primary" if self._primary else "secondary"
        # index -> time since which the primary tunnel has been not-down
        self._up_since: dict[int, float] = {}
        self._all_down = False
        self.active_since: float = now   # when the current role took over

    def carry_over(self, old: "HaSelector") -> None:
        """Continue *old*'s state (role, holds by tunnel name) after a reload
        changed the tunnel list, so a reload neither fails over nor back."""
        self.active, self.active_since, self._all_down = old.active, old.active_since, old._all_down
        if self.active == "primary" and not self._primary:
            self.active = "secondary"
        by_name = {old._names[i]: t for i, t in old._up_since.items()}
        self._up_since = {i: by_name[self._names[i]] for i in self._primary
                          if self._names[i] in by_name}

    @property
    def all_down(self) -> bool:
        """True while every tunnel of both roles is down."""
        return self._all_down

    def update(self, states: Sequence[str], now: float) -> list[HaEvent]:
        if len(states) != len(self._roles):
            raise ValueError("states must have one entry per tunnel")
        for i in self._primary:
            if states[i] == "down":
                self._up_since.pop(i, None)
            else:
                self._up_since.setdefault(i, now)
        pri_alive = [i for i in self._primary if states[i] != "down"]
        sec_alive = [i for i in self._secondary if states[i] != "down"]
        events: list[HaEvent] = []

        if not pri_alive and not sec_alive:
            if not self._all_down:
                self._all_down = True
                events.append(HaEvent("all_down",
                                      "every tunnel down: keeping last programming", now))
            return events
        self._all_down = False

        if self.active == "primary" and not pri_alive and self._primary:
            self.active, self.active_since = "secondary", now
            events.append(HaEvent("ha_failover",
                                  f"all {len(self._primary)} primary tunnels down", now))
        elif self.active == "secondary" and pri_alive:
            # Earliest-up live primary; ties by config order (deterministic).
            best = min(pri_alive, key=lambda i: (self._up_since[i], i))
            held = now - self._up_since[best]
            if held >= self._hold:
                self.active, self.active_since = "primary", now
                events.append(HaEvent("ha_failback",
                                      f"primary tunnel {self._names[best]} up for "
                                      f"{held:g}s >= failback_hold {self._hold:g}s",
                                      now, self._names[best]))
            elif not sec_alive:
                self.active, self.active_since = "primary", now
                events.append(HaEvent("ha_failback",
                                      f"primary tunnel {self._names[best]} up and all "
                                      f"{len(self._secondary)} secondary tunnels down",
                                      now, self._names[best]))
        return events


# -------------------------------------------------------------------- slot table

def _check_weights(weights: Sequence[float]) -> list[Fraction]:
    out = []
    for w in weights:
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {w!r}: expected a finite number >= 0")
        out.append(Fraction(w))   # exact: no float rounding can hand a slot to a zero weight
    return out


def quotas(weights: Sequence[float], nslots: int,
           previous_counts: Sequence[int] | None = None) -> list[int]:
    """Slots per tunnel: each is floor or ceil of weight share x nslots.

    Largest-remainder apportionment in exact arithmetic, so a zero weight gets
    exactly 0 and every quota is within 1 slot of the ideal. Which tunnels get
    the leftover ceilings is where rounding can cost moves: tunnels that
    already hold at least the ceiling come first (rounding them down would
    move a slot away and, often, back next tick), then the largest remainder,
    then the lower index.
    """
    ws = _check_weights(weights)
    total = sum(ws)
    if total == 0:
        raise ValueError("all weights are zero")
    ideal = [w * nslots / total for w in ws]
    floors = [math.floor(x) for x in ideal]
    left = nslots - sum(floors)
    prev = list(previous_counts) if previous_counts is not None else [0] * len(ws)
    cands = [i for i, x in enumerate(ideal) if x != floors[i]]
    cands.sort(key=lambda i: (prev[i] < floors[i] + 1, -(ideal[i] - floors[i]), i))
    for i in cands[:left]:
        floors[i] += 1
    return floors


def _interleave(counts: Sequence[int], positions: Sequence[int], table: list[int]) -> None:
    """Spread ``counts[i]`` copies of each tunnel i over ``positions`` in order.

    Smooth weighted round robin (nginx): exact counts, and each tunnel's slots
    are evenly spaced instead of one contiguous block per tunnel.
    """
    n = len(positions)
    cur = [0] * len(counts)
    for pos in positions:
        best = -1
        for i, c in enumerate(counts):
            if c:
                cur[i] += c
                if best < 0 or cur[i] > cur[best]:
                    best = i
        cur[best] -= n
        table[pos] = best


def _spread_pick(items: Sequence[int], k: int) -> list[int]:
    """k items evenly spaced through ``items`` (deterministic)."""
    n = len(items)
    return [items[(2 * j + 1) * n // (2 * k)] for j in range(k)]


def _pick_by_load(held: Sequence[int], k: int, load: Sequence[int], target: int) -> list[int]:
    """k of a losing tunnel's slots carrying as close to ``target`` live flows as
    possible: loaded slots (largest first) while they fit, then empty slots
    spread through the table, then the lightest loaded ones. Moving exactly the
    flows the new weights require, not whatever happened to hash there."""
    loaded = sorted((p for p in held if load[p] > 0), key=lambda p: (-load[p], p))
    empty = [p for p in held if load[p] == 0]
    chosen: list[int] = []
    moved = 0
    for p in loaded:
        if len(chosen) < k and moved + load[p] <= target:
            chosen.append(p)
            moved += load[p]
    rest = k - len(chosen)
    if rest > 0:
        chosen.extend(_spread_pick(empty, min(rest, len(empty))) if empty else [])
    rest = k - len(chosen)
    if rest > 0:
        taken = set(chosen)
        chosen.extend(sorted((p for p in loaded if p not in taken), key=lambda p: (load[p], p))[:rest])
    return chosen


def build_slots(weights: Sequence[float], nslots: int,
                previous: Sequence[int] | None = None,
                load: Sequence[int] | None = None) -> list[int]:
    """Slot table of tunnel indexes whose shares follow ``weights``.

    Each tunnel gets :func:`quotas` slots (within +-1 of weight share x nslots).

    Without ``previous`` (or when its size differs from ``nslots``) the table
    is built fresh, tunnels interleaved across it.

    With ``previous`` only the surplus slots of tunnels whose quota fell (and
    slots naming a tunnel index that no longer exists) are reassigned, to the
    tunnels whose quota rose; slots of a tunnel that kept or gained quota never
    move, so slots moved = 1/2 sum |quota delta|, the minimum. The surplus
    slots taken from a tunnel are evenly spread over its slots, and the
    receivers are interleaved over the freed slots, so the table stays mixed.
    The result depends only on (weights, nslots, previous): a restarted daemon
    that reads the table back rebuilds the same next table.

    With ``load`` (live flows per slot, from the data path's flow table) the
    surplus slots are chosen so that the live flows moved are as close as the
    slot count allows to the minimum the new weights require (the excess of
    live flows over the new share), instead of whatever hashed there.

    All weights zero: ``previous`` is returned unchanged (the daemon keeps the
    last programming); without ``previous`` that is a ValueError.
    """
    if nslots <= 0:
        raise ValueError("nslots must be > 0")
    ntun = len(weights)
    if previous is not None and len(previous) != nslots:
        previous = None
    if all(w == 0 for w in _check_weights(weights)):
        if previous is None:
            raise ValueError("all weights are zero and there is no previous table")
        return list(previous)

    if previous is None:
        table = [0] * nslots
        _interleave(quotas(weights, nslots), range(nslots), table)
        return table

    held: list[list[int]] = [[] for _ in range(ntun)]
    freed: list[int] = []
    for pos, t in enumerate(previous):
        if 0 <= t < ntun:
            held[t].append(pos)
        else:
            freed.append(pos)          # tunnel gone from the config
    new_q = quotas(weights, nslots, [len(h) for h in held])
    total_load = sum(load) if load is not None and len(load) == nslots else 0
    for t in range(ntun):
        surplus = len(held[t]) - new_q[t]
        if surplus <= 0:
            continue
        if total_load:
            live = sum(load[p] for p in held[t])
            target = max(0, round(live - new_q[t] / nslots * total_load))
            freed.extend(_pick_by_load(held[t], surplus, load, target))
        else:
            freed.extend(_spread_pick(held[t], surplus))
    freed.sort()
    gains = [max(0, new_q[t] - len(held[t])) for t in range(ntun)]
    table = list(previous)
    _interleave(gains, freed, table)
    return table


def slots_moved(old: Sequence[int], new: Sequence[int]) -> int:
    """Number of slots whose tunnel differs between two tables of equal size."""
    if len(old) != len(new):
        raise ValueError("tables differ in size")
    return sum(1 for a, b in zip(old, new) if a != b)


def table_shares(table: Sequence[int], ntunnels: int) -> list[float]:
    """Fraction of slots per tunnel (the target share of new flows)."""
    counts = [0] * ntunnels
    for t in table:
        if 0 <= t < ntunnels:
            counts[t] += 1
    return [c / len(table) if table else 0.0 for c in counts]
