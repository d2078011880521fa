"""The only code that touches the kernel.

`KernelDataplane` receives the desired state (ranges, tunnel marks and tables,
which tunnels are usable, the slot table) and makes the kernel match it,
writing only what differs. (`steerd.testing.fake_dataplane.FakeDataplane`
has the same surface for the daemon's unit tests.)
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Protocol

from . import qos, routes, tc, upstream
from ..abi import MAX_TUNNELS, NO_TUNNEL, SteerCfg
from .program import Classifier, ProgramParams, remove_pins

log = logging.getLogger("steerd.dataplane")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TunnelSpec:
    index: int
    name: str
    interface: str
    mark: int
    table: int


@dataclass(frozen=True)
class Layout:
    """Everything fixed by the config: what to attach where, marks and tables."""

    ingress: tuple[str, ...]
    ranges: tuple[Network, ...]
    tunnels: tuple[TunnelSpec, ...]
    mark_mask: int
    rule_priority: int
    nslots: int
    flow_table_size: int
    flow_idle_timeout: float
    pin_dir: str

    @classmethod
    def from_config(cls, cfg) -> "Layout":
        dp = cfg.dataplane
        specs = tuple(TunnelSpec(i, t.name, t.interface, dp.mark_of(i), dp.table_of(i))
                      for i, t in enumerate(cfg.tunnels))
        return cls(tuple(cfg.ingress), tuple(cfg.ranges), specs, dp.mark_mask, dp.rule_priority,
                   dp.slots, dp.flow_table_size, dp.flow_idle_timeout, dp.bpffs)


def save_layout(layout: Layout, path: str) -> None:
    """Remember what was installed, so --cleanup works even after a bad config edit."""
    import json
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    doc = asdict(layout)
    doc["ranges"] = [str(n) for n in layout.ranges]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def load_layout(path: str) -> Layout:
    return load_layouts(path)[-1]


def _layout_of(doc: dict) -> Layout:
    doc = dict(doc)
    doc["ranges"] = tuple(ipaddress.ip_network(n) for n in doc["ranges"])
    doc["tunnels"] = tuple(TunnelSpec(**t) for t in doc["tunnels"])
    doc["ingress"] = tuple(doc["ingress"])
    return Layout(**doc)


def load_layouts(path: str) -> list[Layout]:
    """Every layout recorded in *path* (save_layout writes one, record_layout a list)."""
    import json
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return [_layout_of(d) for d in (doc if isinstance(doc, list) else [doc])]


def record_layout(layout: Layout, path: str) -> None:
    """Add *layout* to those recorded in *path*: `steerd --cleanup` removes the union,
    so objects a reload added (and a later edit of the config dropped) go too."""
    import json
    try:
        known = load_layouts(path)
    except (OSError, ValueError, TypeError, KeyError):
        known = []
    known = [k for k in known if k != layout] + [layout]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    docs = []
    for k in known:
        d = asdict(k)
        d["ranges"] = [str(n) for n in k.ranges]
        docs.append(d)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(docs, f)
    os.replace(tmp, path)


@dataclass
class SlotTable:
    tunnel: list[int]
    ver: list[int]


class Dataplane(Protocol):
    def start(self, before_attach=None) -> SlotTable | None: ...
    def set_usable(self, usable: list[bool]) -> None: ...
    def write_slots(self, slots: list[int], keep_flows_of: frozenset[int] = frozenset()) -> int: ...
    def counters(self) -> list[tuple[int, int]]: ...
    def flow_counts(self) -> list[int]: ...
    def slot_load(self) -> list[int]: ...
    def traffic(self) -> list[tuple[int, float | None, int]] | None: ...
    def cleanup(self) -> dict[str, int]: ...
    def set_qos(self, caps: list[float | None], priorities: set[int], default_priority: int) -> None: ...
    def relayout(self, new: Layout, slots: list[int]) -> None: ...
    def rule_maps(self): ...


def bump_slots(current: SlotTable, slots: list[int], keep_flows_of: frozenset[int]) -> tuple[SlotTable, list[int]]:
    """New slot table and the changed slot numbers. A slot that changes hands gets
    a new version so cached flows on it re-decide; except when its old tunnel's
    flows are to stay (failback policy `new-flows`)."""
    changed = [s for s, t in enumerate(slots) if current.tunnel[s] != t]
    ver = list(current.ver)
    for s in changed:
        if current.tunnel[s] not in keep_flows_of:
            ver[s] = (ver[s] + 1) & 0xFFFFFFFF
    return SlotTable(list(slots), ver), changed


class KernelDataplane:
    def __init__(self, layout: Layout):
        self.layout = layout
        self.prog: Classifier | None = None
        self.slots = SlotTable([NO_TUNNEL] * layout.nslots, [0] * layout.nslots)
        self.usable = [False] * len(layout.tunnels)
        self.upstream: upstream.UpstreamCounter | None = None
        self._rule_maps = None

    def rule_maps(self):
        """The classifier's rule tables (made on first use; the program must be loaded)."""
        if self._rule_maps is None:
            from .rulemaps import RuleMaps
            self._rule_maps = RuleMaps(self.prog.bpf)
        return self._rule_maps

    def start(self, before_attach=None) -> SlotTable | None:
        """Load the program (adopting pinned maps), program marks, ranges and routes,
        call *before_attach(classifier)* (rules go in there), attach to ingress. Returns the slot table found in pinned maps, if any,
        so the daemon continues from it instead of moving flows."""
        lay = self.layout
        self.prog = Classifier(ProgramParams(lay.pin_dir, max_slots=max(lay.nslots, 64),
                                             flow_table_size=lay.flow_table_size))
        adopted = self._read_slots()
        cfg = SteerCfg(lay.nslots, lay.mark_mask, int(lay.flow_idle_timeout * 1e9))
        self.prog.table("steer_cfg")[ct.c_uint32(0)] = cfg
        self._write_ranges()
        self._write_tunnels()
        routes.install([routes.TunnelRoute(t.interface, t.mark, t.table) for t in lay.tunnels],
                       list(lay.ranges), lay.mark_mask, lay.rule_priority)
        if adopted:
            self.slots = adopted
        if before_attach:
            before_attach(self.prog)
        for ifname in lay.ingress:
            tc.attach(ifname, self.prog.fd)
        self._start_upstream()
        log.info("classifier attached to %s; %d tunnels, %d slots%s", ",".join(lay.ingress),
                 len(lay.tunnels), lay.nslots, " (adopted pinned state)" if adopted else "")
        return adopted

    def _start_upstream(self) -> None:
        try:
            self.upstream = upstream.UpstreamCounter([t.interface for t in self.layout.tunnels])
        except Exception as exc:  # no forwarding role: probe timing only, keep steering
            log.error("upstream counter not loaded (dead tunnels found by probe timing only): %s",
                      exc)

    def _read_slots(self) -> SlotTable | None:
        table = self.prog.table("slots")
        n = self.layout.nslots
        tun, ver = [], []
        for s in range(n):
            v = table[ct.c_uint32(s)]
            tun.append(v.tunnel)
            ver.append(v.ver)
        cur = self.prog.table("steer_cfg")[ct.c_uint32(0)]
        valid = cur.nslots == n and all(t < len(self.layout.tunnels) for t in tun)
        return SlotTable(tun, ver) if valid else None

    def _write_ranges(self) -> None:
        for fam, name in ((4, "ranges4"), (6, "ranges6")):
            table = self.prog.table(name)
            table.clear()
            for net in self.layout.ranges:
                if net.version != fam:
                    continue
                k = table.Key()
                k.prefixlen = net.prefixlen
                raw = net.network_address.packed
                if fam == 4:
                    k.addr = int.from_bytes(raw, "little")
                else:
                    for i in range(4):
                        k.addr[i] = int.from_bytes(raw[4 * i:4 * i + 4], "little")
                table[k] = ct.c_uint8(1)

    def _write_tunnels(self) -> None:
        table = self.prog.table("tunnels")
        for i in range(MAX_TUNNELS):
            v = table.Leaf()
            if i < len(self.layout.tunnels):
                v.mark = self.layout.tunnels[i].mark
                v.up = int(self.usable[i])
            table[ct.c_uint32(i)] = v

    def relayout(self, new: Layout, slots: list[int]) -> None:
        """Apply a reloaded layout: only what differs (routes and rules are synced,
        ranges and marks rewritten, ingress attachments added/removed). *slots*
        is the current table re-expressed in the new tunnel indexes; every slot
        gets a new version, so cached flows re-decide — onto the same physical
        tunnel, since each slot keeps its tunnel."""
        old = self.layout
        self.layout = new
        self.usable = [False] * len(new.tunnels)
        self._write_ranges()
        self._write_tunnels()
        stale = [t.table for t in old.tunnels if t.table not in {n.table for n in new.tunnels}]
        routes.remove(stale, old.rule_priority)
        if old.rule_priority != new.rule_priority or old.mark_mask != new.mark_mask:
            routes.remove([t.table for t in old.tunnels], old.rule_priority)
        routes.install([routes.TunnelRoute(t.interface, t.mark, t.table) for t in new.tunnels],
                       list(new.ranges), new.mark_mask, new.rule_priority)
        cfg = SteerCfg(new.nslots, new.mark_mask, int(new.flow_idle_timeout * 1e9))
        self.prog.table("steer_cfg")[ct.c_uint32(0)] = cfg
        for ifname in set(old.ingress) - set(new.ingress):
            tc.detach(ifname)
        for ifname in set(new.ingress) - set(old.ingress):
            tc.attach(ifname, self.prog.fd)
        self.slots = SlotTable(list(slots), [(v + 1) & 0xFFFFFFFF for v in self.slots.ver])
        self._write_slot_entries(range(len(slots)))
        if self.upstream:
            self.upstream.set_interfaces([t.interface for t in new.tunnels])

    def set_qos(self, caps: list[float | None], priorities: set[int], default_priority: int) -> None:
        """HTB caps with priority bands on capped tunnels' egress; none elsewhere.
        Idempotent: a changed cap or band set is changed in place."""
        bands = qos.bands_for(priorities, default_priority)
        table = self.prog.table("prio_class")
        for p, cid in enumerate(qos.prio_class_table(default_priority, bands)):
            table[ct.c_uint32(p)] = ct.c_uint32(cid)
        for t, cap in zip(self.layout.tunnels, caps):
            if cap:
                qos.install(t.interface, cap, bands, qos.default_minor(default_priority),
                            self.prog.qos_fd)
            else:
                qos.remove(t.interface)

    def qos_state(self) -> list[dict | None]:
        return [qos.read(t.interface) for t in self.layout.tunnels]

    def set_usable(self, usable: list[bool]) -> None:
        """Which tunnels may carry traffic. Written before the slot table on a
        failure so the classifier stops using a dead tunnel at once."""
        if usable != self.usable:
            # the mirror changes only once the kernel has it: a failed write is redone
            old, self.usable = self.usable, list(usable)
            try:
                self._write_tunnels()
            except Exception:
                self.usable = old
                raise

    def write_slots(self, slots: list[int], keep_flows_of: frozenset[int] = frozenset()) -> int:
        """Write only the slots that change hands (one batch). Returns their number."""
        old = self.slots
        self.slots, changed = bump_slots(old, slots, keep_flows_of)
        try:
            self._write_slot_entries(changed)
        except Exception:
            self.slots = old    # so that a retry writes these slots again
            raise
        return len(changed)

    def _write_slot_entries(self, which) -> None:
        which = list(which)
        if not which:
            return
        table = self.prog.table("slots")
        keys = (ct.c_uint32 * len(which))(*which)
        leaves = (table.Leaf * len(which))()
        for i, s in enumerate(which):
            leaves[i].tunnel = self.slots.tunnel[s]
            leaves[i].ver = self.slots.ver[s]
        table.items_update_batch(keys, leaves)

    def counters(self) -> list[tuple[int, int]]:
        table = self.prog.table("tstats")
        out = []
        for i in range(len(self.layout.tunnels)):
            vals = table.getvalue(ct.c_uint32(i))
            out.append((sum(v.packets for v in vals), sum(v.bytes for v in vals)))
        return out

    def traffic(self) -> list[tuple[int, float | None, int]] | None:
        """Per tunnel: packets up from the site, their latest arrival (monotonic s),
        packets steered down (tstats). Two map reads whatever the tunnel count."""
        if self.upstream is None:
            return None
        down = {k: sum(c.packets for c in v) for k, v in self.prog.table("tstats").items_lookup_batch()}
        return [(rx, last, down.get(i, 0)) for i, (rx, last) in enumerate(self.upstream.read())]

    def _live_flows(self):
        now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        idle = int(self.layout.flow_idle_timeout * 1e9)
        for _, v in self.prog.table("flows").items_lookup_batch():
            if now_ns - v.last_ns < idle:
                yield v

    def flow_counts(self) -> list[int]:
        """Live flows per tunnel in the affinity table (those not idle-expired)."""
        counts = [0] * len(self.layout.tunnels)
        for v in self._live_flows():
            if v.tunnel < len(counts):
                counts[v.tunnel] += 1
        return counts

    def slot_load(self) -> list[int]:
        """Live flows per slot that still sit on the slot's tunnel (flows kept
        elsewhere by failback policy do not count: moving the slot leaves them)."""
        load = [0] * self.layout.nslots
        for v in self._live_flows():
            if v.slot < len(load) and self.slots.tunnel[v.slot] == v.tunnel:
                load[v.slot] += 1
        return load

    def close(self) -> None:
        """Stop managing; leave the classifier, routes and pins in place (restart)."""
        if self.prog:
            self.prog.close()
            self.prog = None
        if self.upstream:
            self.upstream.close()
            self.upstream = None

    def cleanup(self) -> dict[str, int]:
        return cleanup_kernel(self.layout)


def cleanup_kernel(layout: Layout) -> dict[str, int]:
    """Remove every tc filter, qdisc, ip rule, route and pinned map steerd created, and nothing else."""
    filters = sum(tc.detach(i) for i in layout.ingress)
    shapers = sum(qos.remove(t.interface) for t in layout.tunnels if _exists(t.interface))
    removed_routes = routes.remove([t.table for t in layout.tunnels], layout.rule_priority)
    pins = remove_pins(layout.pin_dir)
    counters = upstream.detach([t.interface for t in layout.tunnels if _exists(t.interface)])
    return {"filters": filters, "upstream_filters": counters, "shapers": shapers,
            "rules_and_routes": removed_routes, "pinned_maps": len(pins)}


def _exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")
