"""What an apply changes: rules compared by name, order changes included (pure)."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

from steerd.rules.model import MATCH_KEYS, Rule, RuleSet
from steerd.yamlsrc import gc_paused


@dataclass(frozen=True)
class RuleDiff:
    added: tuple[Rule, ...]
    removed: tuple[Rule, ...]
    changed: tuple[tuple[Rule, Rule], ...]      # (old, new), same name
    moved: tuple[str, ...] = ()                 # kept rules whose relative order changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.moved)

    def render(self) -> str:
        """Human text for `steerctl rules apply` (one line per rule, field-level changes)."""
        if self.empty:
            return "no changes"
        lines = [f"+ {r.name}: {r.summary()}" for r in self.added]
        lines += [f"- {r.name}: {r.summary()}" for r in self.removed]
        for old, new in self.changed:
            lines.append(f"~ {new.name}:")
            a, b = old.as_dict(), new.as_dict()
            am, bm = a.pop("match"), b.pop("match")
            for k in MATCH_KEYS:
                if am.get(k) != bm.get(k):
                    lines.append(f"    match.{k}: {_fmt(am.get(k))} -> {_fmt(bm.get(k))}")
            for k in ("wan", "sla", "fallback", "priority"):
                if a.get(k) != b.get(k):
                    lines.append(f"    {k}: {_fmt(a.get(k))} -> {_fmt(b.get(k))}")
        lines += [f"^ {n}: order changed" for n in self.moved]
        counts = (f"{len(self.added)} added, {len(self.removed)} removed, "
                  f"{len(self.changed)} changed, {len(self.moved)} moved")
        return "\n".join(lines + [counts])

    def as_dict(self) -> dict[str, Any]:
        return {"added": [r.name for r in self.added], "removed": [r.name for r in self.removed],
                "changed": [n.name for _, n in self.changed], "moved": list(self.moved)}


def _fmt(v: Any) -> str:
    if v is None:
        return "(any)" if not isinstance(v, str) else v
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)


@gc_paused()
def diff(old: RuleSet, new: RuleSet) -> RuleDiff:
    """Rules compared by name. Order is priority, so a reordering is a change too:
    ``moved`` names the kept rules outside a longest run that kept its relative order."""
    o, n = old.by_name(), new.by_name()
    added = tuple(r for r in new.rules if r.name not in o)
    removed = tuple(r for r in old.rules if r.name not in n)
    changed = tuple((o[r.name], r) for r in new.rules if r.name in o and o[r.name] != r)
    kept_old = [r.name for r in old.rules if r.name in n]
    pos_new = {name: i for i, name in enumerate(r.name for r in new.rules if r.name in o)}
    seq = [pos_new[name] for name in kept_old]
    stay = _lis_members(seq)
    moved = tuple(name for name, p in zip(kept_old, seq) if p not in stay)
    return RuleDiff(added, removed, changed, moved)


def _lis_members(seq: Sequence[int]) -> set[int]:
    """Values on one longest increasing subsequence (patience sorting, O(n log n))."""
    tails: list[int] = []
    tails_idx: list[int] = []
    prev = [-1] * len(seq)
    for i, v in enumerate(seq):
        j = bisect.bisect_left(tails, v)
        if j == len(tails):
            tails.append(v)
            tails_idx.append(i)
        else:
            tails[j] = v
            tails_idx[j] = i
        prev[i] = tails_idx[j - 1] if j else -1
    out: set[int] = set()
    i = tails_idx[-1] if tails_idx else -1
    while i >= 0:
        out.add(seq[i])
        i = prev[i]
    return out
