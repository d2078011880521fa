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
from array import array
from dataclasses import asdict, dataclass
from typing import Protocol, Sequence

from . import arrival, duplicate, qos, routes, tc, upstream
from ..abi import MAX_TUNNELS, NO_TUNNEL, SteerCfg
from .program import TUNNELS_PER_SITE, Classifier, ProgramParams, remove_pins, tunnel_ids

log = logging.getLogger("steerd.dataplane")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TunnelSpec:
    index: int          # position in the config's tunnel list (all sites)
    name: str
    interface: str
    mark: int           # of its position within its site
    table: int          # of its position within its site
    site: int = 0       # site id: the site's row in the per-site maps
    tid: int = -1       # data-path id: site * 6 + position (-1 in layouts of one site: = index)

    def __post_init__(self) -> None:
        if self.tid < 0:
            object.__setattr__(self, "tid", self.index)


@dataclass(frozen=True)
class SiteSpec:
    name: str
    id: int
    ranges: tuple[Network, ...]
    reply_on_arrival: bool = False   # reply_on_arrival_tunnel: its tunnels record arrivals


@dataclass(frozen=True)
class Layout:
    """Everything fixed by the config: what to attach where, marks and tables,
    and each site's id (its row in the per-site maps; kept across reloads and
    restarts so that adding or removing a site never renumbers another)."""

    ingress: tuple[str, ...]
    ranges: tuple[Network, ...]
    tunnels: tuple[TunnelSpec, ...]
    mark_mask: int
    rule_priority: int
    nslots: int
    flow_table_size: int
    flow_idle_timeout: float
    pin_dir: str
    sites: tuple[SiteSpec, ...] = ()
    max_sites: int = 1

    def __post_init__(self) -> None:
        if not self.sites:   # a layout recorded before hub mode: one site, id 0
            object.__setattr__(self, "sites", (SiteSpec("", 0, self.ranges),))

    @classmethod
    def from_config(cls, cfg, previous: "Layout | None" = None) -> "Layout":
        dp = cfg.dataplane
        ids = site_ids(cfg, previous)
        specs = tuple(TunnelSpec(i, t.name, t.interface, dp.mark_of(cfg.position_of(i)),
                                 dp.table_of(cfg.position_of(i)), ids[cfg.site_of(i)],
                                 ids[cfg.site_of(i)] * TUNNELS_PER_SITE + cfg.position_of(i))
                      for i, t in enumerate(cfg.tunnels))
        sites = tuple(SiteSpec(st.name, sid, tuple(st.ranges), st.reply_on_arrival_tunnel)
                      for st, sid in zip(cfg.sites, ids))
        return cls(tuple(cfg.ingress), tuple(cfg.ranges), specs, dp.mark_mask, dp.rule_priority,
                   dp.slots, dp.flow_table_size, dp.flow_idle_timeout, dp.bpffs, sites,
                   dp.max_sites)

    def route_tables(self) -> list[routes.RouteTable]:
        """One table per tunnel position: every site's ranges via its tunnel at
        that position (so the number of tables and ip rules is that of one site)."""
        by_site = {s.id: s.ranges for s in self.sites}
        tables: dict[int, tuple[int, list]] = {}
        for t in self.tunnels:
            _, rts = tables.setdefault(t.table, (t.mark, []))
            rts.extend((net, t.interface) for net in by_site[t.site])
        return [routes.RouteTable(mark, table, tuple(rts)) for table, (mark, rts) in tables.items()]


def site_ids(cfg, previous: Layout | None) -> list[int]:
    """Site id per config site: the previous layout's id for a site of the same
    name, else the lowest free id."""
    old = {s.name: s.id for s in previous.sites} if previous is not None else {}
    if previous is not None and not cfg.hub and len(previous.sites) == 1:
        old = {cfg.sites[0].name: previous.sites[0].id}   # a renamed single site stays put
    keep = {st.name: old[st.name] for st in cfg.sites
            if st.name in old and old[st.name] < cfg.dataplane.max_sites}
    used = set(keep.values())
    free = (i for i in range(cfg.dataplane.max_sites) if i not in used)
    return [keep[st.name] if st.name in keep else next(free) for st in cfg.sites]


def save_layout(layout: Layout, path: str) -> None:
    """Remember what was installed, so --cleanup works even after a bad config edit
    (and a restart keeps each site's id)."""
    import json
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_doc_of(layout), f)
    os.replace(tmp, path)


def _doc_of(layout: Layout) -> dict:
    doc = asdict(layout)
    doc["ranges"] = [str(n) for n in layout.ranges]
    for s in doc["sites"]:
        s["ranges"] = [str(n) for n in s["ranges"]]
    return doc


def load_layout(path: str) -> Layout:
    return load_layouts(path)[-1]


def _layout_of(doc: dict) -> Layout:
    doc = dict(doc)
    doc["ranges"] = tuple(ipaddress.ip_network(n) for n in doc["ranges"])
    doc["tunnels"] = tuple(TunnelSpec(**t) for t in doc["tunnels"])
    doc["ingress"] = tuple(doc["ingress"])
    doc["sites"] = tuple(SiteSpec(s["name"], s["id"], tuple(ipaddress.ip_network(n) for n in s["ranges"]),
                                  s.get("reply_on_arrival", False))
                         for s in doc.get("sites", ()))
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
    docs = [_doc_of(k) for k in known]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(docs, f)
    os.replace(tmp, path)


@dataclass
class SlotTable:
    tunnel: list[int]
    ver: list[int]


class Dataplane(Protocol):
    def start(self, before_attach=None) -> dict[int, SlotTable] | None: ...
    def set_usable(self, usable: list[bool], site: int = 0) -> None: ...
    def write_slots(self, slots: list[int], keep_flows_of: frozenset[int] = frozenset(),
                    site: int = 0) -> int: ...
    def counters(self) -> list[tuple[int, int]]: ...
    def flow_counts(self) -> list[int]: ...
    def slot_load(self) -> list[int]: ...
    def upstream_packets(self) -> Sequence[int] | None: ...
    def traffic(self, which: list[int]) -> list[tuple[int, float | None, int]] | None: ...
    def relink(self, seen: dict[str, int] | None) -> list[str]: ...
    def cleanup(self) -> dict[str, int]: ...
    def set_qos(self, caps: list[float | None], priorities: set[int], default_priority: int) -> None: ...
    def relayout(self, new: Layout) -> None: ...
    def rule_maps(self): ...
    def dup_value(self, site: int, key: str, tunnel: int, copy: int) -> int | None: ...
    def dup_keep_only(self, keys: set[tuple[int, str]]) -> None: ...
    def dup_counts(self) -> dict[tuple[int, str], tuple[int, int]]: ...
    def dup_tunnel_counts(self) -> dict[int, tuple[int, int]]: ...


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
        self.slots: dict[int, SlotTable] = {}           # site id -> its slot table
        self.usable: dict[int, bool] = {}               # tunnel id -> may carry traffic
        self._tunnel_rows: dict[int, tuple[int, int]] = {}   # tunnel id -> (mark, up) written
        self._marks_of: tuple[Layout | None, dict[int, int]] = (None, {})
        self.upstream: upstream.UpstreamCounter | None = None
        self.duplicator: duplicate.Duplicator | None = None
        self._routes_due: set[str] = set()     # recreated tunnel interfaces whose routes wait
        self.arrival_on: set[str] = set()   # tunnel interfaces with the arrival recorder
        self._rule_maps = None

    def rule_maps(self):
        """The classifier's rule tables (made on first use; the program must be loaded)."""
        if self._rule_maps is None:
            from .rulemaps import RuleMaps
            self._rule_maps = RuleMaps(self.prog.bpf, self.layout.max_sites)
        return self._rule_maps


    def start(self, before_attach=None) -> dict[int, SlotTable] | None:
        """Load the program (adopting pinned maps), program marks, ranges and routes,
        call *before_attach(classifier)* (rules go in there), attach to ingress.
        Returns the slot tables found in pinned maps (site id -> table), if any,
        so the daemon continues from them instead of moving flows."""
        lay = self.layout
        self.prog = Classifier(ProgramParams(lay.pin_dir, max_slots=max(lay.nslots, 64),
                                             flow_table_size=lay.flow_table_size,
                                             max_sites=lay.max_sites))
        adopted = self._read_slots()
        cfg = SteerCfg(lay.nslots, lay.mark_mask, int(lay.flow_idle_timeout * 1e9))
        self.prog.table("steer_cfg")[ct.c_uint32(0)] = cfg
        self._write_ranges()
        self._write_tunnels()
        routes.install(lay.route_tables(), lay.mark_mask, lay.rule_priority)
        fresh = SlotTable([NO_TUNNEL] * lay.nslots, [0] * lay.nslots)
        self.slots = {s.id: (adopted or {}).get(s.id) or SlotTable(list(fresh.tunnel), list(fresh.ver))
                      for s in lay.sites}
        self.duplicator = duplicate.Duplicator(self.prog, self._tunnel_interfaces())
        self._sync_arrival()
        if before_attach:
            before_attach(self.prog)
        for ifname in lay.ingress:
            tc.attach(ifname, self.prog.fd)
        self._start_upstream()
        log.info("classifier attached to %s; %d sites, %d tunnels, %d slots per site%s",
                 ",".join(lay.ingress), len(lay.sites), len(lay.tunnels), lay.nslots,
                 " (adopted pinned state)" if adopted else "")
        return adopted

    def _sync_arrival(self) -> None:
        """The arrival recorder on the tunnels of the sites with reply_on_arrival_tunnel."""
        on = {s.id for s in self.layout.sites if s.reply_on_arrival}
        wanted = {t.tid: t.interface for t in self.layout.tunnels if t.site in on}
        if wanted or self.arrival_on:
            self.arrival_on = arrival.sync(self.prog, wanted, self.arrival_on)

    # -- duplication (ebpf/dup.h, dataplane/duplicate.py) ----------------------
    def dup_value(self, site: int, key: str, tunnel: int, copy: int) -> int | None:
        """The wan-table value for *key* at *site* that copies *tunnel*'s packets
        onto *copy* (tunnel ids); None: no copy possible, use *tunnel*."""
        return self.duplicator.value(site, key, tunnel, copy)

    def dup_keep_only(self, keys: set[tuple[int, str]]) -> None:
        """Release every (site, key) entry not in *keys* (the wan table no longer names them)."""
        self.duplicator.keep_only(keys)

    def dup_counts(self) -> dict[tuple[int, str], tuple[int, int]]:
        """Copies sent (packets, bytes) per (site id, wan_key)."""
        return self.duplicator.counts() if self.duplicator else {}

    def dup_tunnel_counts(self) -> dict[int, tuple[int, int]]:
        """Copies sent (packets, bytes) per copy tunnel id."""
        return self.duplicator.tunnel_counts() if self.duplicator else {}

    def _start_upstream(self) -> None:
        try:
            # room for every tunnel id a reload may bring (max_sites x 6)
            self.upstream = upstream.UpstreamCounter(tunnel_ids(self.layout.max_sites))
            self.upstream.set_interfaces(self._tunnel_interfaces())
        except Exception as exc:  # no forwarding role: probe timing only, keep steering
            log.error("upstream counter not loaded (dead tunnels found by probe timing only): %s",
                      exc)
            if self.upstream:
                self.upstream.close()
            self.upstream = None

    def _tunnel_interfaces(self) -> dict[int, str]:
        return {t.tid: t.interface for t in self.layout.tunnels}

    def relink(self, seen: dict[str, int] | None) -> list[str]:
        """Links the kernel announced (name -> ifindex; None: some were lost).
        A tunnel interface among them with an ifindex the upstream counter does
        not count was created or recreated (an IKE restart): the counter takes
        it up and its routes, which died with the old interface, come back
        (once it is up: the kernel refuses routes through a link that is down,
        so they are retried at its next announcement). Returns the tunnel
        interfaces taken up."""
        if self.upstream is None:
            return []
        names = {t.interface for t in self.layout.tunnels}
        before = dict(self.upstream.counted.values())
        taken: list[str] = []
        if seen is None or any(before.get(n) != i for n, i in seen.items() if n in names):
            self.upstream.set_interfaces(self._tunnel_interfaces())
            taken = sorted(n for n, i in self.upstream.counted.values() if before.get(n) != i)
            if taken:   # their duplication and arrival filters died with the old interfaces
                self.duplicator.relinked(taken)
                self.arrival_on -= set(taken)
                self._sync_arrival()
        self._routes_due = (self._routes_due | set(taken)) & names
        if self._routes_due and (seen is None or self._routes_due & set(seen)):
            lay = self.layout
            try:
                routes.install([tb for tb in lay.route_tables()
                                if any(i in self._routes_due for _, i in tb.routes)],
                               lay.mark_mask, lay.rule_priority)
                self._routes_due = set()
            except Exception as exc:   # NetlinkError: the link is not up yet
                log.debug("routes through %s not restored yet: %s", ", ".join(self._routes_due), exc)
        return taken

    def _map(self, name: str):
        from .rulemaps import _Map   # bcc-backed: imported late, like the program
        return _Map(self.prog.bpf, name)

    def _read_slots(self) -> dict[int, SlotTable] | None:
        """Each site's slot row from the pinned map (one batch read per site)."""
        n = self.layout.nslots
        cur = self.prog.table("steer_cfg")[ct.c_uint32(0)]
        if cur.nslots != n:
            return None     # fresh maps, or sized for another table: nothing to adopt
        m = self._map("slots")
        out = {}
        for site in self.layout.sites:
            raw = array("I", bytes(m.lookup_range(site.id * n, n, 8)))
            out[site.id] = SlotTable(list(raw[0::2]), list(raw[1::2]))
        return out

    def _write_ranges(self) -> None:
        """Destination -> site id. Only the difference is written: a reload that
        adds a site never leaves another site's destinations unsteered."""
        want: dict[tuple[int, int, bytes], int] = {}
        for site in self.layout.sites:
            for net in site.ranges:
                want[(net.version, net.prefixlen, net.network_address.packed)] = site.id
        for fam, name in ((4, "dst_site4"), (6, "dst_site6")):
            table = self.prog.table(name)
            have = {}
            for k, v in table.items():
                raw = (k.addr.to_bytes(4, "little") if fam == 4
                       else b"".join(k.addr[i].to_bytes(4, "little") for i in range(4)))
                have[(fam, k.prefixlen, raw)] = (k, v.value)
            for key, (k, _) in have.items():
                if key not in want:
                    del table[k]
            for (v, plen, raw), sid in want.items():
                if v != fam or have.get((v, plen, raw), (None, None))[1] == sid:
                    continue
                k = table.Key()
                k.prefixlen = plen
                if fam == 4:
                    k.addr = int.from_bytes(raw, "little")
                else:
                    for i in range(4):
                        k.addr[i] = int.from_bytes(raw[4 * i:4 * i + 4], "little")
                table[k] = ct.c_uint32(sid)

    def _write_tunnels(self, only: set[int] | None = None) -> None:
        """Marks and usable flags by tunnel id; ids of no configured tunnel get
        mark 0 (never marked). Only changed rows are written, in one batch."""
        marks = self._marks()
        ids = only if only is not None else set(marks) | set(self._tunnel_rows) | set(range(MAX_TUNNELS))
        rows = {i: (marks[i], int(self.usable.get(i, False))) if i in marks else (0, 0) for i in ids}
        changed = sorted(i for i in ids if self._tunnel_rows.get(i) != rows[i])
        if not changed:
            return
        vals = array("I")
        for i in changed:
            vals.extend(rows[i])
        self._map("tunnels").update(array("I", changed), vals, len(changed))
        for i in changed:
            self._tunnel_rows[i] = rows[i]

    def _marks(self) -> dict[int, int]:
        """Tunnel id -> mark of the current layout (computed once per layout:
        set_usable runs on every link event of every site)."""
        if self._marks_of[0] is not self.layout:
            self._marks_of = (self.layout, {t.tid: t.mark for t in self.layout.tunnels})
        return self._marks_of[1]

    def relayout(self, new: Layout) -> None:
        """Apply a reloaded layout: only what differs (routes and rules are synced,
        ranges and marks rewritten by difference, ingress attachments added or
        removed). Sites keep their ids; a site's slot table is rewritten by the
        next write_slots, which versions every slot whose tunnel id changed."""
        old = self.layout
        self.layout = new
        live = {t.tid for t in new.tunnels}
        self.usable = {t: u for t, u in self.usable.items() if t in live}
        self._write_ranges()
        self._write_tunnels()
        if old.rule_priority != new.rule_priority or old.mark_mask != new.mark_mask:
            routes.remove([t.table for t in old.tunnels], old.rule_priority)
        else:
            stale = {t.table for t in old.tunnels} - {t.table for t in new.tunnels}
            routes.remove(sorted(stale), old.rule_priority)
        routes.install(new.route_tables(), new.mark_mask, new.rule_priority)
        cfg = SteerCfg(new.nslots, new.mark_mask, int(new.flow_idle_timeout * 1e9))
        self.prog.table("steer_cfg")[ct.c_uint32(0)] = cfg
        for ifname in set(old.ingress) - set(new.ingress):
            tc.detach(ifname)
        for ifname in set(new.ingress) - set(old.ingress):
            tc.attach(ifname, self.prog.fd)
        n = new.nslots
        self.slots = {s.id: self.slots.get(s.id) or SlotTable([NO_TUNNEL] * n, [0] * n)
                      for s in new.sites}
        if self.upstream:
            self.upstream.set_interfaces(self._tunnel_interfaces())
        if self.duplicator:
            self.duplicator.set_interfaces(self._tunnel_interfaces())
        self._sync_arrival()

    def set_qos(self, caps: list[float | None], priorities: set[int], default_priority: int) -> None:
        """HTB caps with priority bands on capped tunnels' egress; none elsewhere.
        Idempotent: a changed cap or band set is changed in place."""
        bands = qos.bands_for(priorities, default_priority)
        table = self.prog.table("prio_class")
        for p, cid in enumerate(qos.prio_class_table(default_priority, bands)):
            table[ct.c_uint32(p)] = ct.c_uint32(cid)
        qos.sync({t.interface: cap for t, cap in zip(self.layout.tunnels, caps)}, bands,
                 qos.default_minor(default_priority), self.prog.qos_fd)

    def qos_state(self) -> list[dict | None]:
        return [qos.read(t.interface) for t in self.layout.tunnels]

    def set_usable(self, usable: list[bool], site: int = 0) -> None:
        """Which of *site*'s tunnels (by position) may carry traffic. Written
        before the slot table on a failure so the classifier stops using a dead
        tunnel at once."""
        base = site * TUNNELS_PER_SITE
        ids = {base + p for p in range(len(usable))}
        old = dict(self.usable)
        for p, u in enumerate(usable):
            self.usable[base + p] = bool(u)
        try:
            self._write_tunnels(ids)
        except Exception:
            self.usable = old    # the mirror changes only once the kernel has it
            raise

    def write_slots(self, slots: list[int], keep_flows_of: frozenset[int] = frozenset(),
                    site: int = 0) -> int:
        """Write only the slots of *site* that change hands (one batch). Returns their number."""
        cur = self.slots.get(site) or SlotTable([NO_TUNNEL] * len(slots), [0] * len(slots))
        self.slots[site], changed = bump_slots(cur, slots, keep_flows_of)
        try:
            self._write_slot_entries(site, changed)
        except Exception:
            self.slots[site] = cur    # so that a retry writes these slots again
            raise
        return len(changed)

    def _write_slot_entries(self, site: int, which) -> None:
        which = list(which)
        if not which:
            return
        st, base = self.slots[site], site * self.layout.nslots
        keys = array("I", (base + s for s in which))
        vals = array("I")
        for s in which:
            vals.extend((st.tunnel[s], st.ver[s]))
        self._map("slots").update(keys, vals, len(which))

    def counters(self) -> list[tuple[int, int]]:
        """(packets, bytes) per configured tunnel, config order: one batch read."""
        from bcc.utils import get_possible_cpus
        ncpu = len(get_possible_cpus())
        tids = [t.tid for t in self.layout.tunnels]
        if not tids:
            return []
        lo, hi = min(tids), max(tids)
        raw = array("Q", bytes(self._map("tstats").lookup_range(lo, hi - lo + 1, 16 * ncpu)))
        out = []
        for tid in tids:
            row = raw[(tid - lo) * 2 * ncpu:(tid - lo + 1) * 2 * ncpu]
            out.append((sum(row[0::2]), sum(row[1::2])))
        return out

    def upstream_packets(self) -> array | None:
        """Packets up from the site so far per configured tunnel (config order),
        None without the counter: a memory read, to see which tunnels are busy."""
        if self.upstream is None:
            return None
        return self.upstream.packets([t.tid for t in self.layout.tunnels])

    def traffic(self, which: list[int]) -> list[tuple[int, float | None, int]] | None:
        """For the configured tunnels *which* (config indexes): packets up from
        the site, their latest arrival (monotonic s), packets steered down
        (tstats). A memory read and one batch lookup of the ids they span."""
        if self.upstream is None:
            return None
        if not which:
            return []
        from bcc.utils import get_possible_cpus
        tids = [self.layout.tunnels[i].tid for i in which]
        ncpu = len(get_possible_cpus())
        lo, hi = min(tids), max(tids)
        raw = array("Q", bytes(self._map("tstats").lookup_range(lo, hi - lo + 1, 16 * ncpu)))
        down = [sum(raw[(t - lo) * 2 * ncpu:(t - lo + 1) * 2 * ncpu:2]) for t in tids]
        return [(rx, last, tx) for (rx, last), tx in zip(self.upstream.read(tids), down)]

    def _live_flows(self):
        now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        idle = int(self.layout.flow_idle_timeout * 1e9)
        for _, v in self.prog.table("flowtab").items_lookup_batch():
            if now_ns - v.last_ns < idle:
                yield v

    def flow_counts(self) -> list[int]:
        """Live flows per configured tunnel in the affinity table (not idle-expired)."""
        index = {t.tid: i for i, t in enumerate(self.layout.tunnels)}
        counts = [0] * len(self.layout.tunnels)
        for v in self._live_flows():
            i = index.get(v.tunnel)
            if i is not None:
                counts[i] += 1
        return counts

    def slot_load(self) -> list[int]:
        """Live flows per data-path slot (site id x nslots + slot) that still sit
        on the slot's tunnel (flows kept elsewhere by failback policy do not
        count: moving the slot leaves them)."""
        n = self.layout.nslots
        load = [0] * (n * (max(s.id for s in self.layout.sites) + 1))
        for v in self._live_flows():
            st = self.slots.get(v.slot // n)
            if st is not None and v.slot < len(load) and st.tunnel[v.slot % n] == v.tunnel:
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
    shapers = qos.sync({t.interface: None for t in layout.tunnels}, [], 0, None)
    removed_routes = routes.remove([t.table for t in layout.tunnels], layout.rule_priority)
    pins = remove_pins(layout.pin_dir)
    counters = upstream.detach([t.interface for t in layout.tunnels if _exists(t.interface)])
    dups = duplicate.detach([t.interface for t in layout.tunnels if _exists(t.interface)])
    arrivals = arrival.detach([t.interface for t in layout.tunnels if _exists(t.interface)])
    return {"filters": filters, "upstream_filters": counters, "dup_filters": dups,
            "arrival_filters": arrivals, "shapers": shapers, "rules_and_routes": removed_routes,
            "pinned_maps": len(pins)}


def _exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")
