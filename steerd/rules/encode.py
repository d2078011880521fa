"""The compiled tables as the eBPF maps store them (ebpf/rules.h), and a
step-by-step simulation of the kernel lookup on that layout (pure)."""
from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING

from steerd import abi
from steerd.rules.model import (F_DPORT, F_DSCP, F_DST, F_INGRESS, F_PROTO, F_SPORT, F_SRC,
                                NFIELDS, PacketKey, port_class)

if TYPE_CHECKING:   # the compiler builds a Layout; only its type is needed here
    from steerd.rules.compile import CompiledRules


DIR_CHUNK = abi.RL_CHUNK   # entry flag: the low 31 bits index a chunk, else an S id


def _dir(entries: tuple[tuple[int, int, int], ...], pool: array, width: int) -> array:
    """Longest-prefix match as a multibit table: DIR-16-4-4-... (IPv4: 4 chunk
    levels, IPv6: up to 28).

    Level 1 has one entry per top-16-bit value; an entry is an S id, or
    DIR_CHUNK | chunk index where more specific prefixes exist below it. A
    chunk has 16 entries for the next 4 bits, and so on. A lookup is a few
    loads from one map value, whatever the number of prefixes; the kernel LPM
    trie walks a chain of nodes that grows with the number of prefixes.

    Prefixes are painted shortest first, so a longer prefix overwrites a
    shorter one, and a new chunk starts as 16 copies of the value it refines.
    Chunks are appended to *pool* (shared by src and dst of a family)."""
    l1 = array("I", bytes(4 * 65536))
    for net, plen, bid in sorted(entries, key=lambda e: e[1]):
        if plen <= 16:
            start = net >> (width - 16)
            n = 1 << (16 - plen)
            l1[start:start + n] = array("I", [bid]) * n
            continue
        table, slot = l1, net >> (width - 16)
        top = 16                                     # bits resolved so far
        while True:
            v = table[slot]
            if v & DIR_CHUNK:
                chunk = v & ~DIR_CHUNK
            else:
                chunk = len(pool) // 16
                pool.extend(array("I", [v]) * 16)
                table[slot] = DIR_CHUNK | chunk
            base = chunk * 16
            nib = (net >> (width - 4 - top)) & 15
            if plen <= top + 4:
                n = 1 << (top + 4 - plen)
                pool[base + nib:base + nib + n] = array("I", [bid]) * n
                break
            table, slot, top = pool, base + nib, top + 4
    return l1


def _dir_lookup(l1: array, pool: array, addr: int, width: int) -> int:
    v = l1[addr >> (width - 16)]
    for level in range((width - 16) // 4):
        if not v & DIR_CHUNK:
            break
        v = pool[(v & ~DIR_CHUNK) * 16 + ((addr >> (width - 20 - 4 * level)) & 15)]
    return v


def _popcount(x: int) -> int:
    return x.bit_count()


@dataclass
class Layout:
    """The bitmaps as ebpf/rules.h stores them.

    S bitmap id -> ``bm_sum[id*nsum + k]``: bit j set when 64-rule block k*64+j
    has any rule, and ``bm_base[id*nsum + k]``: index in ``words`` of the first
    non-empty block of summary word k; block b's word is then at
    ``base[k] + popcount(sum[k] & ((1 << j) - 1))``.  Only non-empty blocks are
    stored, so sparse bitmaps cost a few words whatever the rule count.
    U bitmaps (one per field) are dense: ``ubase[f]`` = (sum words, block words)."""

    nsum: int
    nwords: int
    bm_sum: array          # 'Q', len(bitmaps) * nsum
    bm_base: array         # 'I', len(bitmaps) * nsum
    words: array           # 'Q'
    ubase: tuple[tuple[array, array], ...]   # per field: (sum 'Q' nsum, words 'Q' nwords)

    @property
    def nwords_used(self) -> int:
        return len(self.words)

    @staticmethod
    def build(c: CompiledRules) -> "Layout":
        nwords, nsum = c.limits.nwords, c.limits.nsum
        used_words = (c.nrules + 63) // 64         # words past the last rule are zero
        nbytes = used_words * 8
        bm_sum = array("Q", bytes(8 * nsum * len(c.bitmaps)))
        bm_base = array("I", bytes(4 * nsum * len(c.bitmaps)))
        words = array("Q")
        all_idx = range(used_words)
        for bid, bm in enumerate(c.bitmaps):
            if not bm:
                continue
            blocks = array("Q", bm.to_bytes(nbytes, "little"))
            start = len(words)
            # compress() walks the words in C: only non-empty blocks reach Python
            nz = list(compress(all_idx, blocks))
            words.extend(compress(blocks, blocks))
            o = bid * nsum
            for k in range(nsum):
                bm_base[o + k] = start      # base of an empty summary word is never read
            seen_k = -1
            for pos, b in enumerate(nz):
                k = b >> 6
                if k != seen_k:
                    bm_base[o + k] = start + pos
                    seen_k = k
                bm_sum[o + k] |= 1 << (b & 63)
        ubase = []
        for f in range(NFIELDS):
            u = c.base[f] if c.used & (1 << f) else (1 << c.nrules) - 1
            blocks = array("Q", u.to_bytes(nwords * 8, "little"))   # dense: struct rl_ubm
            s = array("Q", [0] * nsum)
            for b, w in enumerate(blocks):
                if w:
                    s[b >> 6] |= 1 << (b & 63)
            ubase.append((s, blocks))
        return Layout(nsum, nwords, bm_sum, bm_base, words, tuple(ubase))

    # The simulation below follows rules.h step by step (same tables, same order).

    def field_ids(self, c: CompiledRules, p: PacketKey) -> list[int]:
        ids = [0] * NFIELDS
        d, width = (c.dir4, 32) if p.family == 4 else (c.dir6, 128)
        for f, l1, addr in ((F_SRC, d[0], p.src), (F_DST, d[1], p.dst)):
            if c.used & (1 << f):
                ids[f] = _dir_lookup(l1, d[2], int(addr), width) & ~DIR_CHUNK
        if c.used & (1 << F_SPORT):
            ids[F_SPORT] = _run(c.sport[port_class(p.proto)], p.sport)
        if c.used & (1 << F_DPORT):
            ids[F_DPORT] = _run(c.dport[port_class(p.proto)], p.dport)
        if c.used & (1 << F_PROTO):
            ids[F_PROTO] = c.proto[p.proto]
        if c.used & (1 << F_DSCP):
            ids[F_DSCP] = c.dscp[p.dscp]
        if c.used & (1 << F_INGRESS):
            ids[F_INGRESS] = c.ingress.get(p.ifindex, c.ingress_default)
        return ids

    def lookup(self, c: CompiledRules, p: PacketKey) -> int | None:
        if c.nrules == 0:
            return None
        ids = self.field_ids(c, p)
        fields = [f for f in range(NFIELDS) if c.used & (1 << f)]
        for k in range(self.nsum):
            cand = (1 << 64) - 1
            for f in fields:
                cand &= self.bm_sum[ids[f] * self.nsum + k] | self.ubase[f][0][k]
            while cand:
                j = (cand & -cand).bit_length() - 1
                b = k * 64 + j
                w = (1 << 64) - 1
                for f in fields:
                    s = self.bm_sum[ids[f] * self.nsum + k]
                    ws = 0
                    if s >> j & 1:
                        ws = self.words[self.bm_base[ids[f] * self.nsum + k]
                                        + _popcount(s & ((1 << j) - 1))]
                    w &= ws | self.ubase[f][1][b]
                if w:
                    return b * 64 + (w & -w).bit_length() - 1
                cand &= cand - 1
        return None


def _lpm(entries: tuple[tuple[int, int, int], ...], addr: int, family: int) -> int:
    """Longest-prefix match by brute force (the tests' oracle for _dir)."""
    width = 32 if family == 4 else 128
    best, best_len = 0, -1
    for net, plen, bid in entries:
        if plen > best_len and (addr >> (width - plen) if plen else 0) == \
                (net >> (width - plen) if plen else 0):
            best, best_len = bid, plen
    return best


def _run(runs: tuple[tuple[int, int, int], ...], port: int) -> int:
    i = bisect.bisect_right(runs, (port, 1 << 30, 1 << 30)) - 1
    return runs[i][2]
