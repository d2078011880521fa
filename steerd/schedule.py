"""When each of many probe monitors next needs the loop (pure, no clock).

The probe loop must not walk every monitor on every wake: with 3,000 tunnels
and one of them in a 15 ms confirmation burst that is 200,000 idle checks a
second. A heap keyed by each monitor's next wake-up gives the loop exactly the
monitors that are due; a monitor whose wake-up moved (a reply came, a probe
went out) is simply pushed again and its older entry skipped when it surfaces.
"""
from __future__ import annotations

import heapq
from typing import Hashable


class WakeQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._at: dict[Hashable, float] = {}
        self._n = 0                      # insertion order: keys never get compared

    def set(self, key: Hashable, at: float) -> None:
        """*key* next needs attention at *at* (replaces its earlier time)."""
        if self._at.get(key) == at:
            return
        self._at[key] = at
        self._n += 1
        heapq.heappush(self._heap, (at, self._n, key))

    def discard(self, key: Hashable) -> None:
        self._at.pop(key, None)

    def due(self, now: float) -> list[Hashable]:
        """Keys whose time has come (each once), earliest first; they stay
        unscheduled until set() again."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            if self._at.get(key) == at:
                del self._at[key]
                out.append(key)
        return out

    def next_at(self) -> float | None:
        """The earliest pending time, or None."""
        heap = self._heap
        while heap and self._at.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)      # superseded entry
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._at)
