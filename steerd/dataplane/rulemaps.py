"""Writes compiled rules into the matcher's maps (ebpf/rules.h), atomically.

Every table has two halves. ``apply`` fills the inactive half (batch
updates: one syscall per map, not one per element; the four big per-entry
tables are mmapable and written as memory copies, tests/bench/apply), writes
that half's cfg (generation, rule count), then flips ``rl_active``: packets
switch from one complete rule set to the other, and the
program is never recompiled or reattached.
"""
from __future__ import annotations

import ctypes as ct
import mmap
import os
import time
from array import array
from typing import Any, Mapping

from bcc.libbcc import lib
from bcc.utils import get_possible_cpus

from steerd.abi import RlCfg
from steerd.rules import NO_TUNNEL, CompiledRules, Limits
from steerd.rules.image import Installed, RuleImage, bm_header_size, image_of

#: After a flip, a packet that read the old ``rl_active`` may still be
#: classifying against the old half; wait this long before rewriting it
#: (a packet takes microseconds; this is a wide margin).
_REUSE_GRACE_S = 0.02


def rules_cflags(limits: Limits = Limits()) -> list[str]:
    """The -D flags that size the matcher's maps (pass them to bcc's BPF())."""
    return [f"-DMAX_RULES={limits.max_rules}", f"-DRL_MAX_BITMAPS={limits.max_bitmaps}",
            f"-DRL_MAX_WORDS={limits.max_words}", f"-DRL_MAX_CHUNKS={limits.max_chunks}",
            f"-DRL_MAX_CHUNKS6={limits.max_chunks6}"]


def _buf(a: Any) -> ct.c_void_p:
    """Address of an array.array / bytearray / bytes without copying (the kernel
    only reads keys and values it is given)."""
    if isinstance(a, array):
        return ct.c_void_p(a.buffer_info()[0])
    if isinstance(a, bytes):
        return ct.cast(ct.c_char_p(a), ct.c_void_p)
    return ct.cast((ct.c_char * len(a)).from_buffer(a), ct.c_void_p)


class _Map:
    """A bcc table seen as fd + sizes; batch ops on raw buffers."""

    def __init__(self, bpf: Any, name: str):
        t = bpf[name.encode()]
        self.name = name
        self.fd = t.map_fd
        self.max_entries = t.max_entries
        self.key_size = ct.sizeof(t.Key)
        self.value_size = ct.sizeof(getattr(t, "sLeaf", t.Leaf))
        self._mem: mmap.mmap | None = None

    def write_stride8(self, start: int, data: bytes) -> None:
        """Entries start.. of an mmapable array (BPF_F_MMAPABLE) from *data*, laid
        out as the kernel keeps it (each value at an 8-byte stride): one memory copy."""
        if self._mem is None:
            size = (self.max_entries * 8 + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
            self._mem = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        if start < 0 or len(data) % 8 or start + len(data) // 8 > self.max_entries:
            raise IndexError(f"{self.name}: {len(data)} bytes at entry {start} do not fit "
                             f"{self.max_entries} entries")
        self._mem[start * 8:start * 8 + len(data)] = data

    def update_value(self, key: int, data: bytes) -> None:
        """One array value from *data*, zero-padded to the value size."""
        if len(data) > self.value_size:
            raise ValueError(f"{self.name}: {len(data)} bytes for a {self.value_size}-byte value")
        value = bytearray(self.value_size)
        value[:len(data)] = data
        self.update(array("I", [key]), value, 1)

    def update(self, keys: Any, values: Any, count: int) -> None:
        if count <= 0:
            return
        n = ct.c_uint32(count)
        if lib.bpf_update_batch(self.fd, _buf(keys), _buf(values), ct.byref(n)) != 0:
            err = ct.get_errno()
            raise OSError(err, f"batch update of {self.name} ({count} entries): {os.strerror(err)}")

    def delete(self, keys: Any, count: int) -> None:
        if count <= 0:
            return
        n = ct.c_uint32(count)
        if lib.bpf_delete_batch(self.fd, _buf(keys), ct.byref(n)) != 0:
            err = ct.get_errno()
            raise OSError(err, f"batch delete from {self.name}: {os.strerror(err)}")

    def lookup_range(self, start: int, count: int, value_size: int) -> bytearray:
        """Values of array keys start..start+count-1 (per-CPU: value_size covers all CPUs)."""
        out = bytearray(count * value_size)
        keys = array("I", bytes(4 * count))
        prev = ct.c_uint32(start - 1)
        nxt = ct.c_uint32(0)
        n = ct.c_uint32(count)
        rc = lib.bpf_lookup_batch(self.fd, ct.byref(prev) if start else None, ct.byref(nxt),
                                  _buf(keys), _buf(out), ct.byref(n))
        if rc != 0 and ct.get_errno() != 2:      # ENOENT: reached the end, n holds the count
            err = ct.get_errno()
            raise OSError(err, f"batch lookup of {self.name}: {os.strerror(err)}")
        return out


def _keys(start: int, count: int) -> array:
    return array("I", range(start, start + count))


class RuleMaps:
    """The live rule tables of one loaded program (a bcc.BPF with rules.h inside)."""

    _NAMES = ("rl_active", "rl_cfg", "rl_dir4", "rl_chunk4", "rl_dir6", "rl_chunk6", "rl_sport",
              "rl_dport", "rl_proto", "rl_dscp", "rl_ingress", "rl_bm", "rl_words", "rl_ubase",
              "rl_rules", "rl_wan", "rl_hits")

    def __init__(self, bpf: Any, max_sites: int = 1):
        self.m = {n: _Map(bpf, n) for n in self._NAMES}
        self.max_sites = max_sites          # rl_wan holds one wan row per site (hub mode)
        m = self.m
        self.ncpus = len(get_possible_cpus())
        max_rules = m["rl_rules"].max_entries // 2
        hdr_size = bm_header_size(Limits(max_rules=max_rules))     # sizeof(struct rl_bm)
        # the big tables are one value per set: capacities follow from value sizes
        self.limits = Limits(max_rules=max_rules,
                             max_bitmaps=m["rl_bm"].value_size // hdr_size,
                             max_words=m["rl_words"].value_size // 8,
                             max_chunks=m["rl_chunk4"].value_size // 64,
                             max_chunks6=m["rl_chunk6"].value_size // 64,
                             max_wans=m["rl_wan"].max_entries // (2 * max_sites),
                             max_ingress=m["rl_ingress"].max_entries)
        # what each half holds, so the next fill can delete stale hash keys
        self._ingress_keys: list[tuple[array, int]] = [(array("I"), 0), (array("I"), 0)]
        self._installed: list[Installed | None] = [None, None]
        # per set: site id -> the wan row written there
        self._wans_written: list[dict[int, array]] = [{}, {}]
        self._active = 0
        self._gen = 0
        self._flipped_at = 0.0
        self._carried: dict[str, int] = {}   # hits of names from earlier applies
        self._wan_tunnels: dict[int, dict[str, int | None]] = {}   # site id -> wan -> tunnel
        # start from a clean, empty set 0 (a fresh bcc map is zeroed already)
        self._write_cfg(0, 0, 0, 0, 0)
        self._write_active(0)

    # ------------------------------------------------------------------ public

    @property
    def generation(self) -> int:
        """The active set's generation (what the program reports in rule_verdict.gen)."""
        return self._gen

    @property
    def active(self) -> int:
        return self._active

    @property
    def installed(self) -> Installed | None:
        """What the active set is (rule names, wan ids), None before the first apply."""
        return self._installed[self._active]

    def apply(self, rules: RuleImage | CompiledRules,
              wan_tunnels: Mapping[str, int | None] | None = None,
              sites: Mapping[int, Mapping[str, int | None]] | None = None) -> None:
        """Make *rules* (an image, or compiled rules: imaged here) the active rule
        set in one step (the flip of rl_active). *wan_tunnels*: site 0's wan ->
        tunnel; hub mode passes *sites* (site id -> wan -> tunnel id) instead: a
        rule's wan is its packet's site's tunnel."""
        site_wans = {k: dict(v) for k, v in sites.items()} if sites is not None \
            else {0: dict(wan_tunnels or {})}
        if rules.limits != self.limits:
            raise ValueError(f"rules compiled for {rules.limits}, maps are {self.limits}: "
                             "compile with RuleMaps.limits")
        image = rules if isinstance(rules, RuleImage) else image_of(rules)
        new = image.installed
        s = 1 - self._active
        wait = self._flipped_at + _REUSE_GRACE_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._fill(s, image, site_wans)
        gen = self._gen + 1
        self._write_cfg(s, gen, new.nrules, new.used, new.ingress_default)
        old = self._installed[self._active]
        old_hits = self._read_hits(self._active, old) if old else {}
        self._write_active(s)          # <- the atomic switch
        self._flipped_at = time.monotonic()
        # packets classified on the old half between the read above and the flip
        # are lost from the counters: a handful at most, never double counted
        self._active, self._gen = s, gen
        self._installed[s] = new
        self._wan_tunnels = site_wans
        for name, n in old_hits.items():
            self._carried[name] = self._carried.get(name, 0) + n
        keep = set(new.names)
        self._carried = {k: v for k, v in self._carried.items() if k in keep}

    def set_wan_tunnels(self, wan_tunnels: Mapping[str, int | None], site: int = 0) -> None:
        """Update the active set's wan -> tunnel table in place (link/HA change),
        then bump the generation so cached per-flow decisions are dropped.
        Written wan first, generation last: a packet that sees the new
        generation also sees the new table. Nothing happens (no syscall, no
        new generation) when the table would not change: the daemon calls this
        on every rebalance. *site*: whose row (hub mode)."""
        c = self._installed[self._active]
        self._wan_tunnels[site] = dict(wan_tunnels)
        if c is None:
            return
        if self._wan_table(c, wan_tunnels) == self._wans_written[self._active].get(site):
            return
        self._write_wans(self._active, c, {site: wan_tunnels})
        self._gen += 1
        self._write_cfg(self._active, self._gen, c.nrules, c.used, c.ingress_default)

    def hits(self) -> dict[str, int]:
        """Packets matched per rule name of the active set, across applies."""
        c = self._installed[self._active]
        if c is None:
            return {}
        cur = self._read_hits(self._active, c)
        return {n: self._carried.get(n, 0) + cur.get(n, 0) for n in c.names}

    # ------------------------------------------------------------------ writing

    def _write_active(self, s: int) -> None:
        self.m["rl_active"].update(array("I", [0]), array("I", [s]), 1)

    def _write_cfg(self, s: int, gen: int, nrules: int, used: int, ingress_default: int) -> None:
        cfg = bytearray(RlCfg(gen, nrules, used, ingress_default))
        self.m["rl_cfg"].update(array("I", [s]), cfg, 1)

    def _wan_table(self, c: Installed, wan_tunnels: Mapping[str, int | None]) -> array:
        vals = array("I", [NO_TUNNEL] * self.limits.max_wans)
        for name, wid in c.wan_ids.items():
            t = wan_tunnels.get(name)
            if t is not None:
                vals[wid] = t
        return vals

    def _write_wans(self, s: int, c: Installed,
                    site_wans: Mapping[int, Mapping[str, int | None]]) -> None:
        """Rows [(set * max_sites + site) * max_wans ...] of the given sites, one batch."""
        n = self.limits.max_wans
        keys, vals = array("I"), array("I")
        for site, wt in sorted(site_wans.items()):
            row = self._wan_table(c, wt)
            keys.extend(_keys((s * self.max_sites + site) * n, n))
            vals.extend(row)
            self._wans_written[s][site] = row
        self.m["rl_wan"].update(keys, vals, len(keys))

    def _fill(self, s: int, img: RuleImage,
              site_wans: Mapping[int, Mapping[str, int | None]]) -> None:
        """Copy *img* into half *s*: memory copies and one batch per map."""
        m = self.m
        # 1. stale keys of this half (from two applies ago) would still match: delete
        #    (every other table is an array, overwritten or never read past its end)
        ik, icount = self._ingress_keys[s]
        m["rl_ingress"].delete(ik, icount)
        self._ingress_keys[s] = (array("I"), 0)
        # 2. bitmaps: sparse S headers, their words, the dense U per field;
        #    each is one whole map value per set (struct rl_bmtab etc.)
        m["rl_bm"].update_value(s, img.bm)
        m["rl_words"].update_value(s, img.words)
        m["rl_ubase"].update_value(s, img.ubase)
        # 3. field tables (fields no rule uses are never looked up: skip them)
        for dir_map, chunk_map, (l1_src, l1_dst, pool) in (("rl_dir4", "rl_chunk4", img.dir4),
                                                          ("rl_dir6", "rl_chunk6", img.dir6)):
            for which, l1 in enumerate((l1_src, l1_dst)):
                if l1:
                    m[dir_map].write_stride8((s * 2 + which) * 65536, l1)
            if pool:
                m[chunk_map].update_value(s, pool)
        for name, table in (("rl_sport", img.sport), ("rl_dport", img.dport)):
            if table:
                m[name].write_stride8(s * 4 * 65536, table)
        m["rl_proto"].update(_keys(s * 256, 256), img.proto, 256)
        m["rl_dscp"].update(_keys(s * 64, 64), img.dscp, 64)
        if img.ingress:
            keys, vals = array("I"), array("I")
            for ifindex, sid in img.ingress:
                keys.extend((s, ifindex))
                vals.append(sid)
            m["rl_ingress"].update(keys, vals, len(vals))
            self._ingress_keys[s] = (keys, len(vals))
        # 4. per-rule actions, wan table, zeroed hit counters
        n = img.installed.nrules
        m["rl_rules"].update(_keys(s * self.limits.max_rules, n), img.actions, n)
        self._wans_written[s] = {}
        self._write_wans(s, img.installed, site_wans)
        zeros = bytearray(8 * self.ncpus * n)
        m["rl_hits"].update(_keys(s * self.limits.max_rules, n), zeros, n)

    # ------------------------------------------------------------------ reading

    def _read_hits(self, s: int, c: Installed) -> dict[str, int]:
        n = c.nrules
        if n == 0:
            return {}
        raw = self.m["rl_hits"].lookup_range(s * self.limits.max_rules, n, 8 * self.ncpus)
        per = array("Q", bytes(raw))
        k = self.ncpus
        return {name: sum(per[i * k:(i + 1) * k]) for i, name in enumerate(c.names)}
