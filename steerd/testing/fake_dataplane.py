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

    def start(self, before_attach=None) -> SlotTable | None:
        n = self.layout.nslots
        self.slots = SlotTable([NO_TUNNEL] * n, [0] * n)
        self.usable = [False] * len(self.layout.tunnels)
        self.packets = [(0, 0)] * len(self.layout.tunnels)
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

    def close(self) -> None:
        pass

    def cleanup(self) -> dict[str, int]:
        return {}
