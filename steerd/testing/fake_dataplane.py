"""An in-memory dataplane with the kernel one's surface (steerd.dataplane.Dataplane),
so the daemon, the control socket and reloads are tested without root or bcc."""
from __future__ import annotations

from dataclasses import dataclass, field

from steerd.abi import NO_TUNNEL
from steerd.dataplane import Layout, SlotTable, bump_slots


@dataclass
class FakeDataplane:
    """In-memory stand-in with the same surface, for daemon/control unit tests."""

    layout: Layout
    usable: list[bool] = field(default_factory=list)
    slots: SlotTable | None = None
    packets: list[tuple[int, int]] = field(default_factory=list)
    rule_limits: object = None      # rules.Limits of the fake rule maps (default: the real ones)
    _rule_maps: object = None

    def rule_maps(self):
        if self._rule_maps is None:
            self._rule_maps = FakeRuleMaps(self.rule_limits)
        return self._rule_maps

    def start(self, before_attach=None) -> SlotTable | None:
        n = self.layout.nslots
        self.slots = SlotTable([NO_TUNNEL] * n, [0] * n)
        self.usable = [False] * len(self.layout.tunnels)
        self.packets = [(0, 0)] * len(self.layout.tunnels)
        if before_attach:
            before_attach(None)
        return None

    def relayout(self, new: Layout, slots: list[int]) -> None:
        self.layout = new
        self.slots = SlotTable(list(slots), [v + 1 for v in self.slots.ver])
        self.usable = [False] * len(new.tunnels)
        self.packets = [(0, 0)] * len(new.tunnels)

    def set_usable(self, usable: list[bool]) -> None:
        self.usable = list(usable)

    def set_qos(self, caps: list[float | None], priorities: set[int], default_priority: int) -> None:
        self.caps = list(caps)

    def qos_state(self) -> list[dict | None]:
        return [None] * len(self.layout.tunnels)

    def write_slots(self, slots: list[int], keep_flows_of: frozenset[int] = frozenset()) -> int:
        self.slots, changed = bump_slots(self.slots, slots, keep_flows_of)
        return len(changed)

    def counters(self) -> list[tuple[int, int]]:
        return list(self.packets)

    def flow_counts(self) -> list[int]:
        return [0] * len(self.layout.tunnels)

    def slot_load(self) -> list[int]:
        return [0] * self.layout.nslots

    def traffic(self) -> list[tuple[int, float | None, int]] | None:
        return None

    def close(self) -> None:
        pass

    def cleanup(self) -> dict[str, int]:
        return {}


class FakeRuleMaps:
    """RuleMaps' surface without maps: holds the applied set and the wan map."""

    def __init__(self, limits=None):
        from steerd.rules import Limits
        self.limits = limits or Limits()
        self.compiled = None
        self.generation = 0
        self.wan_tunnels: dict[str, int | None] = {}

    def apply(self, compiled, wan_tunnels) -> None:
        if compiled.limits != self.limits:
            raise ValueError(f"rules compiled for {compiled.limits}, maps are {self.limits}")
        self.compiled, self.wan_tunnels = compiled, dict(wan_tunnels)
        self.generation += 1

    def set_wan_tunnels(self, wan_tunnels) -> None:
        self.wan_tunnels = dict(wan_tunnels)

    def hits(self) -> dict[str, int]:
        return {}
