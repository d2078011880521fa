"""Probe samples -> loss / latency / jitter and the link state machine (pure).

No sockets, no clock, no sleeping: every call takes ``now`` (seconds, one
monotonic clock). The daemon sends a probe when ``now >= next_probe_at()``,
reports it (``on_sent``), feeds replies (``on_reply``) and calls ``on_tick``
often (at the latest at ``next_wakeup()``); all three return the state
changes they caused. ``simulate`` drives a monitor over a synthetic path.

States ``up`` / ``degraded`` / ``down``, plus the ``suspect`` flag.

Dead-tunnel detection and the failover budget
----------------------------------------------
A regular probe goes out every ``probe.interval``. It is *late* when it has no
reply after the adaptive deadline

    D = min(probe.timeout, max(suspect_floor, suspect_factor * SRTT, SRTT + 4 * RTTVAR))

(SRTT/RTTVAR as in RFC 6298, alpha 1/8, beta 1/4; D = probe.timeout before the
first reply). A late regular probe makes the tunnel a *suspect* at once:
confirmation probes go out every ``confirm_interval``, the first immediately;
regular probes sent meanwhile count as confirmations too. A reply to any probe
sent since the late one (the late reply itself included) clears the suspicion
and still counts for RTT. When N confirmations in a row are late as well, the
tunnel is ``down`` ("N of N confirmation probes lost"). For the statistics a
sample is lost only after ``probe.timeout``.

Worst case, blackhole right after a reply came back, RTT ~1 ms (D = 50 ms floor):
``interval + D + (N-1) * confirm_interval + D``, i.e. 1.30 s at 1 s probes with
the defaults (N = 14 confirmations 15 ms apart); at 100 ms probes the regular
probes interleave with the confirmations: 0.38 s. Simulated over 800 blackhole
phases (tests/unit/test_health.py): 1.294 s / 0.379 s with exact timing,
1.293 s / 0.406 s with a 10 ms polling loop; p50 0.79 s / 0.33 s.

How many confirmations: N adapts to the measured loss
-----------------------------------------------------
With independent random loss p a false down needs the late probe *and* N
confirmations lost: p**(N+1) per regular probe. A fixed small N is wrong at
one end:

    p      N=3 (p**4)  N=5 (p**6)   false downs/hour with N=3 at 1 s / 100 ms probes
    1 %    1e-8        1e-12        0.00004 / 0.0004
    10 %   1e-4        1e-6         0.36 / 3.6
    40 %   2.6 %       0.41 %       92 / 920
    50 %   6.3 %       1.6 %        225 / 2250

So N is the smallest count with ``p_hat ** (N+1) <= FALSE_DOWN_PER_PROBE`` (1e-7:
at most one false down in ~116 days of 1 s probes, ~12 days of 100 ms probes,
at whatever loss), at least ``confirm_misses``, at most ``MAX_CONFIRMATIONS``:

    p_hat  <=34 %  35 %  40 %  45 %  50 %
    N        14     15    17    20    23

``p_hat`` is the larger of (a) ``(lost + 1 + 2 sqrt(lost)) / (n + 10)`` over the
last 200 regular samples (a prior of 10 % that clean samples wear down, plus
two "sigmas": an underestimate is raised to the power N+1), and (b) the raw
loss of the last ``window`` regular probes, late ones in flight counted as
lost (reacts within a sample or two). Samples lost to a declared outage stay
out of (a): an outage is not random loss, and a tunnel that just came back
must be failed over within the budget again. N is frozen when a suspicion
starts, so the misses of a real outage cannot raise it.

Why many fast confirmations rather than a few slow ones: the *onset* of random
loss on a clean link cannot be told from a blackhole at its first loss (p_hat
still says "clean"), so only the floor protects it. With 4 confirmations
100 ms apart a step from 0 to 40 % loss went down in 2.6 % of runs; 14 misses
in a row at 40 % happen with probability 0.4**15 = 1e-6, and 15 ms apart they
take no longer than 4 took at 100 ms. A suspect tunnel gets ~67 probes/s for
the ~0.2 s a suspicion lasts.

Costs, measured with ``simulate`` (seeded runs):
- steady random loss 10 %, 40 %, 50 %: no false down in 300 10-minute runs
  each, at 1 s and at 100 ms probes; a step from 0 to 10..50 % loss: none in
  1000 runs each (1 s probes) and 1000 each (100 ms).
- a lossy link is failed over a little more slowly: blackhole detection
  (p50 / max of 200) at 1 s probes 0.82 / 1.28 s at 1 % loss, 0.83 / 1.29 s
  at 10 %, 0.92 / 1.49 s at 40 % (N ~ 17); at 100 ms probes 0.32 / 0.37,
  0.31 / 0.40, 0.40 / 0.59 s.
- a fresh monitor meets the budget at once: worst case 1.29 s (1 s probes)
  and 0.38 s (100 ms) whether 0, 4, 16 or 100 samples came before.
- a sudden RTT rise to beyond ~D + N * confirm_interval (1 ms -> 300 ms) looks
  like a blackhole inside the budget and is declared down; replies keep
  updating SRTT, so the tunnel comes back at its new RTT.

Traffic-driven suspicion
------------------------
A tunnel that carries traffic tells us it is dead before the next probe is
due: the packets coming up from the site stop. The daemon feeds the data
path's counters (packets up from the site, the latest arrival's time, packets
steered down) to ``on_upstream`` every few tens of ms; ``silence.SilenceWatch``
says when a tunnel that was receiving has been silent much longer than its
recent gaps while packets still went down (thresholds in silence.py). The
tunnel then becomes a suspect at once, exactly as after a late probe, except:

- confirmations go out ``TRAFFIC_CONFIRM_INTERVAL`` (5 ms) apart, and one
  more is needed (no lost regular probe stands behind the suspicion: at least
  15). The j-th traffic suspicion within one probe interval (j = 0, 1, ...)
  needs p_hat**N <= 1e-7 / 2**(j+1), so all of them together add at most
  1e-7 per interval to the probe path's chance of a false down, however often
  the traffic pauses; on a clean link that is 15 every time (the floor
  dominates), at 40 % loss 18, 19, 20... When no N up to MAX_CONFIRMATIONS
  meets it, the silence is left to probe timing. With the RTT of a LAN
  (D = 50 ms) the confirmation takes 14 * 5 ms + 50 ms = 0.12 s instead of 0.25 s; the
  silence before it already showed the tunnel dead for at least 50 ms, so
  ~0.17 s of silence in total stand behind a down (0.3 s on the probe path);
- packets arriving from the site again clear it, like a reply would.

When a late probe made the tunnel a suspect first and the silence becomes
suspicious during its confirmation, the remaining confirmations go out 5 ms
apart too (same episode, same N: no new chance of a false down).

Silence alone never takes a tunnel down: the site going idle, a one-way
downstream stream, on/off bursts or a flow ending make at most a suspicion
that the first answered confirmation clears (a probe or two). The costs: a
watched tunnel is read every 20 ms (one map lookup for all tunnels plus one
batch read of tstats); a suspect gets up to 200 probes/s for ~0.1 s.

Degraded, recovery, hysteresis
------------------------------
``degraded`` when the window (at least half of ``probe.window`` samples)
breaks the SLA: loss > loss_pct, jitter > jitter_ms or mean RTT > latency_ms.
Back to ``up`` only after the SLA held for ``max(window * interval, 10 s)``,
and at most 2 up/degraded changes in any 60 s (a further one waits): 40 %
random loss stays ``degraded``. ``down`` -> ``up`` (or ``degraded``) after
``recover_successes`` consecutive answered probes, and the window then forgets
the outage. Going down is never delayed.

``health_factor``: 1.0 up, 0.0 down; degraded: the smallest
sqrt(threshold / measured) over the broken metrics (TCP goodput ~ 1/sqrt(loss)),
clamped to [0.1, 0.9]. 40 % loss -> ~0.27, 10 % -> ~0.55. The loss behind
the factor covers every regular probe since the link became degraded plus the
window that degraded it, up to ``FACTOR_HORIZON`` (and the ``LOSS_HISTORY``
samples kept: 20 s at 100 ms probes): a 10-probe window alone
swings by +-15 points at 40 % loss and would make the weight wander.

Statistics: over the last ``probe.window`` completed regular samples in send
order, not counting past a probe still in flight (otherwise, with 100 ms probes
and a 1 s timeout, the answered probes of the last second would be in and
the lost ones not yet). Loss ratio, mean and median RTT, jitter = mean |RTT(i) -
RTT(i-1)| over consecutive answered probes (RFC 3550's D, unsmoothed).
Confirmation probes feed SRTT and the suspicion only, so they do not bias it.
"""
from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import math
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import silence
from .silence import SilenceWatch

if TYPE_CHECKING:  # duck-typed at run time: any object with these attributes works
    from .config import HealthConfig, ProbeConfig

UP, DEGRADED, DOWN = "up", "degraded", "down"
STATES = (UP, DEGRADED, DOWN)

FALSE_DOWN_PER_PROBE = 1e-7   # target p_hat**(N+1) per regular probe
TRAFFIC_CONFIRM_INTERVAL = 0.005   # s between confirmations of a traffic-born suspicion
MAX_CONFIRMATIONS = 30        # beyond that the link is as good as dead anyway
LOSS_HISTORY = 200            # regular samples behind the long loss estimate
PRIOR_LOST, PRIOR_N = 1.0, 10.0    # p_hat starts at 10 %
FACTOR_HORIZON = 60.0         # s of probes at most behind a degraded link's loss factor
DEGRADED_HOLD_MIN = 10.0      # s of SLA compliance before degraded -> up
SOFT_CHANGES, SOFT_PERIOD = 2, 60.0   # at most 2 up<->degraded changes per 60 s
FACTOR_FLOOR, DEGRADED_FACTOR_MAX = 0.1, 0.9
SCHED_SLACK = 1e-3            # a probe sent this early still counts as the scheduled one


@dataclass(frozen=True)
class LinkStats:
    loss_ratio: float
    rtt_mean: float | None   # seconds
    rtt_p50: float | None
    jitter: float | None
    samples: int


@dataclass(frozen=True)
class Transition:
    tunnel: str
    old: str
    new: str
    reason: str
    at: float


def window_stats(rtts: Sequence[float | None]) -> LinkStats:
    """Stats of samples in send order; ``None`` is a lost sample."""
    got = [r for r in rtts if r is not None]
    n = len(rtts)
    loss = (n - len(got)) / n if n else 0.0
    if not got:
        return LinkStats(loss, None, None, None, n)
    jitter = (sum(abs(b - a) for a, b in itertools.pairwise(got)) / (len(got) - 1)
              if len(got) > 1 else None)
    return LinkStats(loss, sum(got) / len(got), statistics.median(got), jitter, n)


def confirmations_for(p_hat: float, minimum: int, target: float = FALSE_DOWN_PER_PROBE,
                      maximum: int = MAX_CONFIRMATIONS) -> int:
    """Smallest N >= minimum with p_hat**(N+1) <= target (capped at maximum)."""
    hi = max(maximum, minimum)
    if p_hat <= 0.0:
        return minimum
    if p_hat >= 1.0:
        return hi
    need = math.ceil(math.log(target) / math.log(p_hat) - 1e-9) - 1
    return min(max(need, minimum), hi)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


@dataclass
class _Probe:
    seq: int
    sent: float
    regular: bool         # a scheduled probe: becomes a window sample
    episode: int          # the suspicion it confirms (0: none)
    deadline: float       # late after this
    late: bool = False
    outage: bool = False  # lost to a declared outage: not random-loss evidence


@dataclass
class _Sample:
    sent: float
    rtt: float | None


class LinkMonitor:
    """Health and state of one tunnel. See the module docstring."""

    def __init__(self, tunnel: str, probe: ProbeConfig, health: HealthConfig, now: float):
        self.tunnel = tunnel
        self.probe = probe
        self.health = health
        self.state: str = health.initial_state if health.initial_state in STATES else UP
        self.suspect: bool = False
        self._pending: dict[int, _Probe] = {}
        self._samples: list[_Sample] = []         # completed regular samples, by send time
        self._forget_before = -math.inf           # samples sent earlier describe an outage
        self._stats: LinkStats | None = None
        self._sla_clean: LinkStats | None = None   # the stats last found within the SLA while up
        self._history: deque[bool] = deque(maxlen=LOSS_HISTORY)   # True = lost
        self._history_lost = 0
        self._degraded_run = 0    # regular samples since the link became degraded
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._next_regular = now                  # first probe at once
        self._episodes = 0
        self._episode = 0                         # current suspicion (0: none)
        self._ep_origin = 0.0                     # send time of the late probe that opened it
        self._ep_needed = 0
        self._ep_misses = 0
        self._ep_spacing = health.confirm_interval   # between its confirmations
        self._ep_cause = ""                       # why it started, when not a late probe
        self._next_confirm = math.inf
        self._silence = SilenceWatch(probe.interval)
        self._traffic_opened: deque[float] = deque()   # traffic suspicions in the last interval
        self._down_since: float | None = now if self.state == DOWN else None
        self._run = 0                             # consecutive successes while down
        self._run_start = 0.0
        self._sla_ok_since: float | None = None
        self._soft_changes: deque[float] = deque(maxlen=SOFT_CHANGES)

    # ------------------------------------------------------------- scheduling
    def next_probe_at(self) -> float:
        """When the next probe is due: the regular schedule, or the next
        confirmation while suspect (whichever is first)."""
        if self.suspect:
            return min(self._next_regular, self._next_confirm)
        return self._next_regular

    def next_deadline(self) -> float | None:
        """Earliest pending deadline (late or timed out) that on_tick must see."""
        times = [p.sent + self.probe.timeout if p.late else p.deadline
                 for p in self._pending.values()]
        return min(times) if times else None

    def next_wakeup(self) -> float:
        d = self.next_deadline()
        return self.next_probe_at() if d is None else min(d, self.next_probe_at())

    def deadline(self) -> float:
        """The current adaptive lateness deadline D (seconds after sending)."""
        h, timeout = self.health, self.probe.timeout
        if self._srtt is None:
            return timeout
        d = max(h.suspect_floor, h.suspect_factor * self._srtt, self._srtt + 4 * self._rttvar)
        return min(d, timeout)

    # ------------------------------------------------------------------ input
    def on_sent(self, seq: int, now: float) -> None:
        interval = self.probe.interval
        regular = now >= self._next_regular - SCHED_SLACK
        if regular:
            # keep the ideal cadence (a late tick does not shift every later probe)
            self._next_regular += interval
            if self._next_regular <= now:
                # a stall longer than an interval: skip the missed slots but keep
                # the phase (a hub's tunnels stay spread, not due all at once)
                self._next_regular += interval * math.ceil((now - self._next_regular) / interval
                                                           + 1e-9)
        episode = 0
        if self.suspect:
            episode = self._episode
            if now >= self._next_confirm - SCHED_SLACK:
                self._next_confirm += self._ep_spacing
                if self._next_confirm <= now:
                    self._next_confirm = now + self._ep_spacing
        self._pending[seq] = _Probe(seq, now, regular, episode, now + self.deadline())

    def on_reply(self, seq: int, rtt: float, now: float) -> list[Transition]:
        p = self._pending.pop(seq, None)
        if p is None:           # unknown, duplicate or already timed out
            return []
        rtt = max(0.0, rtt)
        self._update_rtt(rtt)
        out: list[Transition] = []
        if p.regular:
            self._add_sample(p, rtt)
        if self.state == DOWN:
            if self._down_since is not None and p.sent >= self._down_since:
                if self._run == 0:
                    self._run_start = p.sent
                self._run += 1
                if self._run >= self.health.recover_successes:
                    out += self._recover(now)
        elif self.suspect and p.sent >= self._ep_origin:
            self._clear_suspicion()
        return out + self._evaluate_sla(now)

    def on_tick(self, now: float) -> list[Transition]:
        timeout = self.probe.timeout
        events = []   # (time, order, probe): late before timed out at equal times
        for p in self._pending.values():
            if not p.late and now >= p.deadline:
                events.append((p.deadline, 0, p.seq))
            if now >= p.sent + timeout:
                events.append((p.sent + timeout, 1, p.seq))
        out: list[Transition] = []
        for at, kind, seq in sorted(events):
            p = self._pending.get(seq)
            if p is None:
                continue
            if kind == 0:
                p.late = True
                out += self._on_late(p, now)
            else:
                del self._pending[seq]
                if p.regular:
                    self._add_sample(p, None)
                if self.state == DOWN and self._down_since is not None and p.sent >= self._down_since:
                    self._run = 0
        return out + self._evaluate_sla(now)

    def on_upstream(self, now: float, rx: int, last: float | None, tx: int) -> str | None:
        """A reading of the data path: packets up from the site so far, the
        latest one's arrival (same clock as ``now``), packets sent down so far.
        Returns why, when the silence made the tunnel a suspect (probe now) or
        sped up the confirmation of one."""
        v = self._silence.update(now, rx, last, tx)
        if v.resumed and self.suspect and self._ep_cause:
            self._clear_suspicion()       # the site is talking again
            return None
        if not v.suspicious or self.state == DOWN:
            return None
        cause = f"upstream silent {v.silence * 1000:.0f} ms (threshold {v.threshold * 1000:.0f} ms)"
        spacing = min(self.health.confirm_interval, TRAFFIC_CONFIRM_INTERVAL)
        if self.suspect:
            if self._ep_cause:
                return None
            # a late probe got there first: the silence speeds its confirmation up
            self._ep_cause, self._ep_spacing = cause, spacing
            self._next_confirm = min(self._next_confirm, now)
            return cause
        while self._traffic_opened and self._traffic_opened[0] <= now - self.probe.interval:
            self._traffic_opened.popleft()
        p_hat = self.loss_estimate()
        target = FALSE_DOWN_PER_PROBE / 2 ** (len(self._traffic_opened) + 1)
        needed = confirmations_for(p_hat, self.health.confirm_misses, target) + 1
        if p_hat ** needed > target:
            return None       # this interval's budget is spent: probe timing
        self._traffic_opened.append(now)
        self._open_suspicion(now, needed, spacing, cause)
        self._next_confirm = now
        return cause

    def upstream_watched(self, now: float) -> bool:
        """Whether this tunnel wants upstream readings every silence.STEP."""
        return self.state != DOWN and self._silence.watched(now)

    def reconfigure(self, probe: ProbeConfig, health: HealthConfig) -> None:
        """New thresholds/intervals on reload; the measurements are kept."""
        if probe.interval != self.probe.interval:
            self._next_regular = min(self._next_regular, self._next_regular - self.probe.interval
                                     + probe.interval)
        self.probe, self.health = probe, health
        self._silence.limit = probe.interval
        self._stats = None

    # ----------------------------------------------------------------- output
    def stats(self) -> LinkStats:
        if self._stats is None:   # cached: on_tick evaluates the SLA often
            self._stats = window_stats([s.rtt for s in self._view()])
        return self._stats

    def health_factor(self) -> float:
        if self.state == DOWN:
            return 0.0
        if self.state == UP:
            return 1.0
        st = dataclasses.replace(self.stats(), loss_ratio=self._sustained_loss())
        return min(DEGRADED_FACTOR_MAX, max(FACTOR_FLOOR, self._sla_factor(st)))

    def loss_estimate(self, exclude: int = -1) -> float:
        """p_hat: the loss rate the confirmation count is sized for.

        The larger of (a) the long history with a pessimistic prior plus two
        "sigmas" of its losses (an error of p_hat is raised to the power N+1),
        and (b) the raw loss of the latest ``window`` regular probes, counting
        late ones still in flight as lost (with a 1 s timeout and 100 ms probes
        ten of them are in flight: waiting for their timeout would leave
        p_hat blind for a second, e.g. right after start). ``exclude`` is the
        late probe being judged.
        """
        n, lost = len(self._history), self._history_lost
        p = (lost + PRIOR_LOST + 2.0 * math.sqrt(lost)) / (n + PRIOR_N)
        recent = [(s.sent, s.rtt is None) for s in self._samples]
        recent += [(q.sent, True) for q in self._pending.values()
                   if q.regular and q.late and not q.outage and q.seq != exclude]
        if recent:
            recent.sort()
            recent = recent[-self.probe.window:]
            p = max(p, sum(lost for _, lost in recent) / len(recent))
        return min(1.0, p)

    def recent_loss(self, n: int) -> tuple[int, int]:
        """(lost, samples) over the last *n* regular samples of the loss history
        (samples lost to a declared outage or sent while down are not in it):
        a loss rate over a longer horizon than the window, for SLA decisions."""
        recent = list(itertools.islice(reversed(self._history), n))
        return sum(recent), len(recent)

    def confirmations_needed(self, exclude: int = -1) -> int:
        return confirmations_for(self.loss_estimate(exclude), self.health.confirm_misses)

    @property
    def srtt(self) -> float | None:
        return self._srtt

    # -------------------------------------------------------------- internals
    def _update_rtt(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def _add_sample(self, p: _Probe, rtt: float | None) -> None:
        self._stats = None        # the probe left _pending: the window may move on
        if p.sent < self._forget_before:
            return
        keys = [s.sent for s in self._samples]
        self._samples.insert(bisect.bisect_right(keys, p.sent), _Sample(p.sent, rtt))
        del self._samples[:max(0, self._cut_index() - self.probe.window)]   # never in view again
        if not p.outage and self.state != DOWN:
            if len(self._history) == self._history.maxlen:
                self._history_lost -= self._history[0]
            self._history.append(rtt is None)
            self._history_lost += rtt is None
            self._degraded_run += self.state == DEGRADED

    def _on_late(self, p: _Probe, now: float) -> list[Transition]:
        if self.state == DOWN:
            return []
        if self.suspect:
            if p.episode == self._episode:
                self._ep_misses += 1
                if self._ep_misses >= self._ep_needed:
                    return self._go_down(now)
            return []
        if p.regular:
            self._open_suspicion(p.sent, self.confirmations_needed(exclude=p.seq),
                                 self.health.confirm_interval, "")
            self._next_confirm = p.deadline     # the first confirmation goes out at once
        return []

    def _open_suspicion(self, origin: float, needed: int, spacing: float, cause: str) -> None:
        """Replies to probes sent from *origin* on clear it; *needed* misses in a row
        take the tunnel down. N is frozen here: an outage's misses cannot raise it."""
        self.suspect = True
        self._episodes += 1
        self._episode = self._episodes
        self._ep_origin = origin
        self._ep_needed = needed
        self._ep_misses = 0
        self._ep_spacing = spacing
        self._ep_cause = cause

    def _clear_suspicion(self) -> None:
        self.suspect = False
        self._episode = 0
        self._ep_cause = ""
        self._next_confirm = math.inf

    def _change(self, new: str, reason: str, now: float) -> Transition:
        t = Transition(self.tunnel, self.state, new, reason, now)
        if new == DEGRADED:
            self._degraded_run = 0
        self.state = new
        return t

    def _go_down(self, now: float) -> list[Transition]:
        n, cause = self._ep_misses, self._ep_cause
        for p in self._pending.values():
            if p.sent >= self._ep_origin:
                p.outage = True
        self._clear_suspicion()
        self._down_since, self._run = now, 0
        self._sla_ok_since = None
        lost = f"{n} of {n} confirmation probes lost"
        return [self._change(DOWN, f"{cause}, then {lost}" if cause else lost, now)]

    def _recover(self, now: float) -> list[Transition]:
        # the window forgets the outage: it describes a path that is gone
        self._forget_before = self._run_start
        self._samples = [s for s in self._samples if s.sent >= self._run_start]
        for seq in [q.seq for q in self._pending.values() if q.sent < self._run_start]:
            del self._pending[seq]
        self._stats = None
        reason = f"{self._run} consecutive probes answered"
        self._down_since, self._run = None, 0
        st = self.stats()
        broken = self._violations(st) if st.samples >= self._min_samples() else []
        self._sla_ok_since = None if broken else now
        if broken:
            return [self._change(DEGRADED, reason + "; " + ", ".join(broken), now)]
        return [self._change(UP, reason, now)]

    def _cut_index(self) -> int:
        """Samples at and after this index were sent after a still unresolved
        regular probe: left out of the window until it resolves, or a short
        interval with a long timeout (100 ms / 1 s) would see the answered
        probes of the last second but not yet the lost ones."""
        cut = min((q.sent for q in self._pending.values() if q.regular), default=math.inf)
        if cut == math.inf:
            return len(self._samples)
        return bisect.bisect_left([s.sent for s in self._samples], cut)

    def _view(self) -> list[_Sample]:
        i = self._cut_index()
        return self._samples[max(0, i - self.probe.window):i]

    def _min_samples(self) -> int:
        return max(1, (self.probe.window + 1) // 2)

    def _violations(self, st: LinkStats) -> list[str]:
        h = self.health
        out = []
        if st.loss_ratio * 100 > h.loss_pct:
            out.append(f"loss {_fmt(st.loss_ratio * 100)} % > {_fmt(h.loss_pct)} %")
        if st.jitter is not None and st.jitter * 1000 > h.jitter_ms:
            out.append(f"jitter {_fmt(st.jitter * 1000)} ms > {_fmt(h.jitter_ms)} ms")
        if st.rtt_mean is not None and st.rtt_mean * 1000 > h.latency_ms:
            out.append(f"latency {_fmt(st.rtt_mean * 1000)} ms > {_fmt(h.latency_ms)} ms")
        return out

    def _sla_factor(self, st: LinkStats) -> float:
        h = self.health
        f = 1.0
        for measured, limit in ((st.loss_ratio * 100, h.loss_pct),
                                (None if st.jitter is None else st.jitter * 1000, h.jitter_ms),
                                (None if st.rtt_mean is None else st.rtt_mean * 1000, h.latency_ms)):
            if measured is not None and limit > 0 and measured > limit:
                f = min(f, math.sqrt(limit / measured))
        return f

    def _sustained_loss(self) -> float:
        window = self.probe.window
        span = min(len(self._history), window + self._degraded_run,
                   max(window, math.ceil(FACTOR_HORIZON / self.probe.interval)))
        if span <= window:
            return self.stats().loss_ratio
        return sum(itertools.islice(reversed(self._history), span)) / span

    def _soft_change_allowed(self, now: float) -> bool:
        return len(self._soft_changes) < SOFT_CHANGES or now - self._soft_changes[0] >= SOFT_PERIOD

    def _evaluate_sla(self, now: float) -> list[Transition]:
        if self.state == DOWN:
            return []
        if self.state == UP and self._stats is not None and self._stats is self._sla_clean:
            return []     # up, and these very statistics were within the SLA: nothing to do
        st = self.stats()
        if st.samples < self._min_samples():
            return []
        broken = self._violations(st)
        if self.state == UP:
            if broken and self._soft_change_allowed(now):
                self._soft_changes.append(now)
                self._sla_ok_since = None
                return [self._change(DEGRADED, ", ".join(broken), now)]
            if not broken:
                self._sla_clean = st
            return []
        if broken:
            self._sla_ok_since = None
            return []
        if self._sla_ok_since is None:
            self._sla_ok_since = now
        hold = max(self.probe.window * self.probe.interval, DEGRADED_HOLD_MIN)
        if now - self._sla_ok_since >= hold and self._soft_change_allowed(now):
            self._soft_changes.append(now)
            return [self._change(UP, f"within SLA for {_fmt(now - self._sla_ok_since)} s", now)]
        return []


def simulate(monitor: LinkMonitor, rtt_of: Callable[[int, float], float | None],
             start: float, until: float, tick: float = 0.0,
             upstream: Callable[[float], tuple[int, float | None, int]] | None = None
             ) -> list[Transition]:
    """Drive ``monitor`` with a synthetic path (pure, for tests and what-ifs).

    ``rtt_of(seq, sent)`` is the RTT of that probe's reply or None (lost).
    ``tick=0``: exact event times. ``tick>0``: a polling loop like the
    daemon's (send if due, then on_tick, every ``tick`` s; replies are handled
    when they arrive, as the event loop's reader callback does).
    ``upstream(now)``: the data path's counters (``on_upstream``'s arguments),
    read as often as the daemon does (silence.STEP while watched, else
    silence.IDLE_STEP)."""
    out: list[Transition] = []
    replies: list[tuple[float, int, float]] = []
    seq, k, t = 0, 0, start
    next_read = start if upstream else math.inf
    while t <= until:
        while replies and replies[0][0] <= t:
            at, s, rtt = heapq.heappop(replies)
            out += monitor.on_reply(s, rtt, at)
        if upstream and t >= next_read:
            monitor.on_upstream(t, *upstream(t))
            next_read = t + (silence.STEP if monitor.upstream_watched(t) else silence.IDLE_STEP)
        if tick:
            out += monitor.on_tick(t)
        if t >= monitor.next_probe_at():
            seq += 1
            monitor.on_sent(seq, t)
            rtt = rtt_of(seq, t)
            if rtt is not None:
                heapq.heappush(replies, (t + rtt, seq, rtt))
        if tick:
            k += 1
            t = start + k * tick
        else:
            out += monitor.on_tick(t)
            t = min(monitor.next_wakeup(), replies[0][0] if replies else math.inf, next_read)
    return out
