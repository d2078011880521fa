"""A compiled rule set as the bytes the matcher's maps take (ebpf/rules.h), pure.

The image is what crosses from the process that compiles (a short-lived child,
steerd.stager) to the daemon, which only copies it into the inactive half of
the maps: flat bytes, a few dozen objects whatever the rule count. (The
compiler's own result holds ~10^5 big integers and tuples: unpickling those
stalled the daemon's loop for 0.2-0.4 s.) :class:`Installed` is the little the
daemon keeps of an applied set.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass

from steerd.rules.compile import CompiledRules, Limits
from steerd.rules.model import F_DPORT, F_SPORT, NFIELDS


@dataclass(frozen=True)
class Installed:
    """What the data path keeps of an applied rule set: rule names (hit counters
    by name), the fields in use, the wan roles' ids (the wan table's columns)."""

    names: tuple[str, ...]
    used: int
    ingress_default: int
    wan_ids: dict[str, int]

    @property
    def nrules(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class RuleImage:
    """The tables of one rule set, each in its map value's layout; ``b""`` where
    a field is unused (its table is never read). The per-entry tables that are
    written through mmap (dir level 1, ports) are at the kernel's 8-byte stride."""

    installed: Installed
    limits: Limits
    bm: bytes                      # struct rl_bm per S bitmap (rl_bm value, unpadded)
    words: bytes                   # rl_words value, unpadded
    ubase: bytes                   # struct rl_ubm
    dir4: tuple[bytes, bytes, bytes]   # level 1 src, level 1 dst (stride 8), chunk pool
    dir6: tuple[bytes, bytes, bytes]
    sport: bytes                   # 4 port classes x 65536 (stride 8)
    dport: bytes
    proto: bytes                   # u32 x 256
    dscp: bytes                    # u32 x 64
    ingress: tuple[tuple[int, int], ...]   # (ifindex, S id)
    actions: bytes                 # struct rl_rule per rule (steerd.abi.RlRule)


def bm_header_size(limits: Limits) -> int:
    """sizeof(struct rl_bm): sum[RL_NSUM] u64 then base[RL_NSUM] u32, 8-aligned."""
    return (12 * limits.nsum + 7) // 8 * 8


def _stride8(values: array) -> bytes:
    return array("Q", values).tobytes()


def image_of(c: CompiledRules) -> RuleImage:
    """The image of *c* (its Layout is built here if it was not yet)."""
    lay, nsum = c.layout, c.limits.nsum
    pad = bytes(bm_header_size(c.limits) - 12 * nsum)
    sums, bases = lay.bm_sum.tobytes(), lay.bm_base.tobytes()
    bm = b"".join(sums[i * 8 * nsum:(i + 1) * 8 * nsum] + bases[i * 4 * nsum:(i + 1) * 4 * nsum]
                  + pad for i in range(len(c.bitmaps)))
    # struct rl_ubm: sum[RL_NF][RL_NSUM] then w[RL_NF][RL_NWORDS]
    ubase = (b"".join(lay.ubase[f][0].tobytes() for f in range(NFIELDS))
             + b"".join(lay.ubase[f][1].tobytes() for f in range(NFIELDS)))
    ports = []
    for fld, per_class in ((F_SPORT, c.sport), (F_DPORT, c.dport)):
        if not c.used & (1 << fld):
            ports.append(b"")
            continue
        vals = array("I")
        for runs in per_class:             # 4 port classes, 65536 ports each
            for lo, hi, bid in runs:
                vals.extend(array("I", [bid]) * (hi - lo + 1))
        ports.append(_stride8(vals))
    actions = array("I")
    for action in c.actions:               # steerd.abi.RlRule: wan, fb_kind, fb_wan, prio
        actions.extend(action)
    return RuleImage(
        Installed(c.names, c.used, c.ingress_default, dict(c.wan_ids)), c.limits,
        bm, lay.words.tobytes(), ubase,
        tuple(_stride8(t) if i < 2 else t.tobytes() for i, t in enumerate(c.dir4)),
        tuple(_stride8(t) if i < 2 else t.tobytes() for i, t in enumerate(c.dir6)),
        ports[0], ports[1], array("I", c.proto).tobytes(), array("I", c.dscp).tobytes(),
        tuple(c.ingress.items()), actions.tobytes())
