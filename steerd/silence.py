"""Upstream silence: a tunnel that was receiving from its site went quiet (pure).

Fed with the data path's counters (dataplane/upstream.py: packets that came
up from the site and the time of the latest one; tstats: packets steered
down) and ``now``, like everything in health.py. It only says "suspicious";
health.LinkMonitor then confirms with probes, and only failed confirmations
take a tunnel down.

A silence is suspicious when all of these hold:

- the tunnel was receiving: at least ``MIN_RATE`` packets/s over the
  ``RATE_WINDOW`` before the latest arrival (a tunnel with little or no
  upstream traffic is left to probe timing);
- it has lasted longer than

      theta = max(FLOOR, RATE_GAPS / rate, GAP_FACTOR * second longest silence in the last HORIZON)

  a silence of 5 mean gaps happens to steady (Poisson) traffic in 0.7 % of
  its gaps; traffic that pauses on its own (on/off bursts, request/response)
  raises its own bar: a 200 ms off phase seen twice puts theta at 300 ms for
  ``HORIZON``. The second longest, not the longest: one stall of the sender
  (a busy host, a GC pause) would otherwise blind the watch for ``HORIZON``,
  while a pause that recurs costs one more suspicion (a probe) to learn.
  Only silences of a tunnel that was receiving count, and only those that
  would not put theta beyond ``limit`` anyway: a site idling between flows,
  or answering probes only, is not its traffic's rhythm;
- theta and the silence are below ``limit`` (the probe interval: beyond it
  probing is as fast);
- packets went down the tunnel since the reading that saw the latest arrival:
  a site with nothing to say while nothing is sent to it is not suspicious.

One silence raises at most one suspicion. Silences are measured at the
readings (the daemon reads every ``STEP`` while a tunnel is watched), so a
silence is known to within a step; the latest arrival's time is the kernel's.

Readings: a tunnel that is not watched and whose counter has not moved cannot
become suspicious, so a caller may skip its readings (a hub's daemon reads
only the tunnels that received since its last scan, and the watched ones).
The rate is counted from the newest reading before the window, taken as the
counter's value at the window's start: whether the readings between were
made or skipped, the verdicts are the same.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

MIN_RATE = 20.0       # packets/s up from the site before its silences mean anything
RATE_WINDOW = 1.0     # s of readings behind the rate
FLOOR = 0.05          # s: the shortest silence that is ever suspicious
RATE_GAPS = 5.0       # mean gaps of silence before a steady stream is suspicious
GAP_FACTOR = 1.5      # x the longest recent silence
HORIZON = 10.0        # s a silence keeps raising the bar after it ended
STEP = 0.02           # s between readings while some tunnel is watched
IDLE_STEP = 0.25      # s between readings while none is (to see traffic start)


@dataclass(frozen=True)
class Verdict:
    """What a reading meant: ``suspicious`` (a silence just crossed the
    threshold) or ``resumed`` (packets arrived since the last reading)."""

    suspicious: bool = False
    resumed: bool = False
    silence: float = 0.0     # s since the latest arrival
    threshold: float = math.inf


class SilenceWatch:
    """The upstream silence of one tunnel. ``limit``: the probe interval."""

    def __init__(self, limit: float):
        self.limit = limit
        self._rx: int | None = None
        self._last: float | None = None        # latest arrival (kernel time)
        self._tx_mark = 0                      # packets sent down as of the latest arrival's reading
        self._tx = 0
        self._readings: deque[tuple[float, int]] = deque()   # (now, rx) within RATE_WINDOW
        self._rate = 0.0                       # packets/s up to the latest arrival's reading
        self._gaps: deque[tuple[float, float]] = deque()     # (ended at, length) within HORIZON
        self._silence_seen = 0.0               # longest silence a reading saw in the current gap
        self._fired = False                    # the current silence raised its suspicion

    def update(self, now: float, rx: int, last: float | None, tx: int) -> Verdict:
        """One reading of the counters (totals since the counter started)."""
        resumed = self._rx is not None and rx > self._rx
        if self._rx is None or rx < self._rx:       # first reading, or counters restarted
            self._readings.clear()
            resumed = False
        # the newest reading from before the window stands for the window's start:
        # the counter held that value until the next reading, which a caller may
        # skip while the counter does not move (see "Readings" above)
        start = None
        while self._readings and self._readings[0][0] < now - RATE_WINDOW:
            start = self._readings.popleft()
        if start is not None:
            self._readings.appendleft((now - RATE_WINDOW, start[1]))
        self._readings.append((now, rx))
        while self._gaps and self._gaps[0][0] < now - HORIZON:
            self._gaps.popleft()
        if resumed:
            if self._rate >= MIN_RATE and 0 < GAP_FACTOR * self._silence_seen < self.limit:
                self._gaps.append((now, self._silence_seen))
            self._silence_seen, self._fired, self._tx_mark = 0.0, False, tx
            (t0, r0), (t1, r1) = self._readings[0], self._readings[-1]
            self._rate = (r1 - r0) / (t1 - t0) if t1 - t0 >= 0.2 * RATE_WINDOW else 0.0
        self._rx, self._last, self._tx = rx, last, tx
        theta = self.threshold()
        silence = self.silence(now)
        if not resumed:
            self._silence_seen = max(self._silence_seen, silence)
        suspicious = (not self._fired and not resumed and theta < silence <= self.limit
                      and tx > self._tx_mark)
        self._fired |= suspicious
        return Verdict(suspicious, resumed, silence, theta)

    def silence(self, now: float) -> float:
        """Seconds since the latest arrival (0 before any)."""
        return max(0.0, now - self._last) if self._last is not None else 0.0

    def rate(self) -> float:
        """Upstream packets/s over the RATE_WINDOW before the latest arrival's reading."""
        return self._rate

    def threshold(self) -> float:
        """theta (see the module docstring); inf while the tunnel is not watched."""
        if self._rate < MIN_RATE:
            return math.inf
        gaps = sorted(g for _, g in self._gaps)
        recurring = gaps[-2] if len(gaps) >= 2 else 0.0
        theta = max(FLOOR, RATE_GAPS / self._rate, GAP_FACTOR * recurring)
        return theta if theta < self.limit else math.inf

    def watched(self, now: float) -> bool:
        """Whether readings every STEP are worth it: one can raise a suspicion,
        or the silence in progress is to be measured (a rhythm to learn)."""
        return self.threshold() < math.inf and self.silence(now) <= self.limit
