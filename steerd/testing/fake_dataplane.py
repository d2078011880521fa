"""An in-memory dataplane with the kernel one's surface (steerd.dataplane.Dataplane),
so the daemon, the control socket and reloads are tested without root or bcc."""
from __future__ import annotations

from dataclasses import dataclass, field

from steerd.abi import DUP_FLAG, NO_TUNNEL
from steerd.dataplane import Layout, SlotTable, bump_slots
from steerd.dataplane.program import TUNNELS_PER_SITE


@dataclass
class FakeDataplane:
    """In-memory stand-in with the same surface, for daemon/control unit tests.
    Like the kernel one: a slot table per site id, usable flags by tunnel id."""

    layout: Layout
    usable: dict[int, bool] = field(default_factory=dict)
    slots: dict[int, SlotTable] | None = None        # None until started
    packets: list[tuple[int, int]] = field(default_factory=list)
    rule_limits: object = None      # rules.Limits of the fake rule maps (default: the real ones)
    dups: dict = field(default_factory=dict)   # (site id, wan_key) -> (index, tunnel, copy)
    _rule_maps: object = None

    def rule_maps(self):
        if self._rule_maps is None:
            self._rule_maps = FakeRuleMaps(self.rule_limits)
        return self._rule_maps

    def start(self, before_attach=None) -> dict[int, SlotTable] | None:
        n = self.layout.nslots
        self.slots = {s.id: SlotTable([NO_TUNNEL] * n, [0] * n) for s in self.layout.sites}
        self.packets = [(0, 0)] * len(self.layout.tunnels)
        if before_attach:
            before_attach(None)
        return None

    def relayout(self, new: Layout) -> None:
        n = new.nslots
        self.layout = new
        self.slots = {s.id: self.slots.get(s.id) or SlotTable([NO_TUNNEL] * n, [0] * n)
                      for s in new.sites}
        self.packets = [(0, 0)] * len(new.tunnels)

    def set_usable(self, usable: list[bool], site: int = 0) -> None:
        for p, u in enumerate(usable):
            self.usable[site * TUNNELS_PER_SITE + p] = bool(u)

    def set_qos(self, caps: list[float | None], priorities: set[int], default_priority: int) -> None:
        self.caps = list(caps)

    def qos_state(self) -> list[dict | None]:
        return [None] * len(self.layout.tunnels)

    def write_slots(self, slots: list[int], keep_flows_of: frozenset[int] = frozenset(),
                    site: int = 0) -> int:
        self.slots[site], changed = bump_slots(self.slots[site], slots, keep_flows_of)
        return len(changed)

    def counters(self) -> list[tuple[int, int]]:
        return list(self.packets)

    def flow_counts(self) -> list[int]:
        return [0] * len(self.layout.tunnels)

    def slot_load(self) -> list[int]:
        return [0] * self.layout.nslots * (max(s.id for s in self.layout.sites) + 1)

    def upstream_packets(self) -> list[int] | None:
        return None

    def traffic(self, which: list[int]) -> list[tuple[int, float | None, int]] | None:
        return None

    def relink(self, seen: dict[str, int] | None) -> list[str]:
        return []

    def dup_value(self, site: int, key: str, tunnel: int, copy: int) -> int | None:
        """Like the kernel's: DUP_FLAG | an index per (site, key), entries kept in `dups`."""
        old = self.dups.get((site, key))
        idx = old[0] if old else max((v[0] for v in self.dups.values()), default=0) + 1
        self.dups[site, key] = (idx, tunnel, copy)
        return DUP_FLAG | idx

    def dup_keep_only(self, keys: set[tuple[int, str]]) -> None:
        for k in [k for k in self.dups if k not in keys]:
            del self.dups[k]

    def dup_counts(self) -> dict[tuple[int, str], tuple[int, int]]:
        return {k: (0, 0) for k in self.dups}

    def dup_tunnel_counts(self) -> dict[int, tuple[int, int]]:
        return {}

    def close(self) -> None:
        pass

    def cleanup(self) -> dict[str, int]:
        return {}


class FakeRuleMaps:
    """RuleMaps' surface without maps: holds the applied set and the wan rows."""

    def __init__(self, limits=None):
        from steerd.rules import Limits
        self.limits = limits or Limits()
        self.installed = None
        self.generation = 0
        self.wan_tunnels: dict[int, dict[str, int | None]] = {}   # site id -> wan -> tunnel

    def apply(self, rules, wan_tunnels=None, sites=None) -> None:
        from steerd.rules.image import RuleImage, image_of
        if rules.limits != self.limits:
            raise ValueError(f"rules compiled for {rules.limits}, maps are {self.limits}")
        self.installed = (rules if isinstance(rules, RuleImage) else image_of(rules)).installed
        self.wan_tunnels = {k: dict(v) for k, v in sites.items()} if sites is not None \
            else {0: dict(wan_tunnels or {})}
        self.generation += 1

    def set_wan_tunnels(self, wan_tunnels, site: int = 0) -> None:
        self.wan_tunnels[site] = dict(wan_tunnels)

    def hits(self) -> dict[str, int]:
        return {}
