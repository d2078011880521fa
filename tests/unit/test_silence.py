"""Traffic-driven suspicion: silence thresholds, rate changes, and the link
monitor confirming (or not) with probes. `now` passed in, no sleeping."""
from __future__ import annotations

import bisect
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerd import silence
from steerd.config import HealthConfig, ProbeConfig
from steerd.health import LinkMonitor, simulate
from steerd.silence import SilenceWatch

P1 = ProbeConfig(interval=1.0, timeout=1.0, window=10)
P100 = ProbeConfig(interval=0.1, timeout=1.0, window=10)
H = HealthConfig()


class Traffic:
    """Packet times up from the site and down into the tunnel -> the counters
    the data path would show at any instant."""

    def __init__(self, up: list[float], down: list[float]):
        self.up, self.down = sorted(up), sorted(down)

    def __call__(self, now: float) -> tuple[int, float | None, int]:
        rx = bisect.bisect_right(self.up, now)
        return rx, (self.up[rx - 1] if rx else None), bisect.bisect_right(self.down, now)


def paced(rate: float, start: float, stop: float) -> list[float]:
    n = int((stop - start) * rate)
    return [start + i / rate for i in range(n)]


def poisson(rate: float, start: float, stop: float, rng: random.Random) -> list[float]:
    out, t = [], start
    while True:
        t += rng.expovariate(rate)
        if t >= stop:
            return out
        out.append(t)


def on_off(rate: float, on: float, off: float, start: float, stop: float) -> list[float]:
    out, t = [], start
    while t < stop:
        out += paced(rate, t, min(t + on, stop))
        t += on + off
    return out


def feed(watch: SilenceWatch, traffic: Traffic, start: float, stop: float,
         step: float = silence.STEP) -> list[tuple[float, silence.Verdict]]:
    """Readings every *step*; returns the suspicious ones (time, verdict)."""
    out, k = [], 0
    while (t := start + k * step) <= stop:
        v = watch.update(t, *traffic(t))
        if v.suspicious:
            out.append((t, v))
        k += 1
    return out


# ------------------------------------------------------------ SilenceWatch
def test_steady_stream_that_stops_is_suspicious_once_after_the_threshold():
    tr = Traffic(paced(100, 0, 10.0), paced(500, 0, 20.0))
    w = SilenceWatch(limit=1.0)
    hits = feed(w, tr, 0.0, 15.0)
    assert len(hits) == 1, hits
    t, v = hits[0]
    # 100 pkt/s: 5 mean gaps = 50 ms, the floor too; known within a reading step
    assert v.threshold == pytest.approx(0.05, abs=0.016)
    last = tr.up[-1]
    assert v.threshold < t - last <= v.threshold + silence.STEP + 1e-9


def test_nothing_while_the_stream_flows():
    rng = random.Random(3)
    tr = Traffic(poisson(1000, 0, 30.0, rng), paced(500, 0, 30.0))
    assert feed(SilenceWatch(1.0), tr, 0.0, 29.99) == []


def test_silence_without_downstream_traffic_is_not_suspicious_until_packets_go_down():
    up = paced(200, 0, 5.0)
    down = paced(200, 0, 4.9) + [5.5]          # nothing goes down from 4.9 s to 5.5 s
    hits = feed(SilenceWatch(1.0), Traffic(up, down), 0.0, 7.0)
    assert [round(t, 2) for t, _ in hits] == [5.5]


def test_little_upstream_traffic_is_left_to_probe_timing():
    # 10 pkt/s (below MIN_RATE): never watched, whatever happens
    w = SilenceWatch(1.0)
    tr = Traffic(paced(10, 0, 5.0), paced(500, 0, 10.0))
    assert feed(w, tr, 0.0, 10.0) == []
    assert w.threshold() == math.inf and not w.watched(10.0)


def test_threshold_follows_the_rate():
    w = SilenceWatch(1.0)
    feed(w, Traffic(paced(1000, 0, 3.0), []), 0.0, 3.0)
    fast = w.threshold()
    w2 = SilenceWatch(1.0)
    feed(w2, Traffic(paced(1000, 0, 3.0) + paced(40, 3.0, 6.0), []), 0.0, 6.0)
    assert fast == pytest.approx(silence.FLOOR)
    assert w2.threshold() == pytest.approx(silence.RATE_GAPS / 40, rel=0.15)   # ~125 ms
    # and back to fast once the rate is up again (gaps of 25 ms stay under the floor)
    feed(w2, Traffic(paced(40, 3.0, 6.0) + paced(1000, 6.0, 9.0), []), 6.0, 9.0)
    assert w2.threshold() == pytest.approx(silence.FLOOR, abs=0.04)


def test_slower_stream_waits_longer_than_the_probe_interval_allows():
    # 40 pkt/s: theta 125 ms is fine at 1 s probes, pointless at 100 ms probes
    tr = Traffic(paced(40, 0, 5.0), paced(500, 0, 10.0))
    assert len(feed(SilenceWatch(1.0), tr, 0.0, 10.0)) == 1
    assert feed(SilenceWatch(0.1), tr, 0.0, 10.0) == []


def test_on_off_bursts_raise_their_own_bar():
    """200 ms on / 200 ms off: the first two off phases are suspicions (a probe
    answers each); after that the watch has seen 200 ms silences recur and
    waits 1.5 x as long."""
    tr = Traffic(on_off(1000, 0.2, 0.2, 0, 60.0), paced(500, 0, 60.0))
    w = SilenceWatch(1.0)
    hits = feed(w, tr, 0.0, 59.9)
    assert len(hits) == 2 and hits[1][0] < 0.9, hits
    assert w.threshold() >= silence.GAP_FACTOR * 0.18


def test_a_recurring_pause_raises_the_bar_for_the_horizon_only():
    # 300 ms pauses at 3 s and 5 s
    up = paced(500, 0, 3.0) + paced(500, 3.3, 5.0) + paced(500, 5.3, 30.0)
    tr = Traffic(up, paced(500, 0, 40.0))
    w = SilenceWatch(2.0)
    feed(w, tr, 0.0, 4.0)
    assert w.threshold() == pytest.approx(silence.FLOOR)     # once is a stall
    feed(w, tr, 4.0, 6.0)
    assert w.threshold() >= silence.GAP_FACTOR * 0.28        # twice is the traffic's rhythm
    feed(w, tr, 6.0, 3.3 + silence.HORIZON + 0.5)
    assert w.threshold() == pytest.approx(silence.FLOOR)


@pytest.mark.parametrize("before", ["probe replies", "an idle pause"])
def test_silences_that_are_not_the_traffics_rhythm_raise_no_bar(before):
    """Only probe replies (1/s) before the traffic starts, or a 5 s pause
    between two busy periods: neither is the traffic's rhythm, so a busy
    tunnel dying 3 s after its traffic (re)started is suspected at once."""
    lead = paced(1, 0, 10.0) if before == "probe replies" else paced(500, 0, 5.0)
    tr = Traffic(lead + paced(1000, 10.0, 13.0), paced(500, 0, 20.0))
    hits = feed(SilenceWatch(1.0), tr, 0.0, 14.0)
    assert [round(t, 1) for t, _ in hits][-1:] == [13.1], hits    # (the pause began as one too)


def test_counter_restart_is_not_traffic():
    w = SilenceWatch(1.0)
    feed(w, Traffic(paced(500, 0, 2.0), []), 0.0, 2.0)
    v = w.update(2.02, 0, None, 0)                # new data path: counts from zero
    assert not v.resumed and not v.suspicious


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(25, 3000), stop=st.floats(1.5, 4.0), step=st.sampled_from([0.01, 0.02, 0.03]))
def test_property_a_stopped_stream_is_suspected_within_threshold_plus_a_step(rate, stop, step):
    tr = Traffic(paced(rate, 0, stop), paced(300, 0, stop + 2.0))
    hits = feed(SilenceWatch(1.0), tr, 0.0, stop + 2.0, step)
    assert len(hits) == 1
    t, v = hits[0]
    assert v.threshold <= max(silence.FLOOR, silence.RATE_GAPS / rate * 1.3, 2 * step + 0.02)
    assert v.threshold < t - tr.up[-1] <= v.threshold + step + 1e-9


def bursts(draw_rates: list[float], starts: list[float], lengths: list[float]) -> list[float]:
    out: list[float] = []
    for r, s, n in zip(draw_rates, starts, lengths):
        out += paced(r, s, s + n)
    return sorted(set(out))


@settings(max_examples=80, deadline=None)
@given(rates=st.lists(st.floats(0.5, 800), min_size=1, max_size=5),
       starts=st.lists(st.floats(0, 12), min_size=5, max_size=5),
       lengths=st.lists(st.floats(0.05, 4), min_size=5, max_size=5),
       scan=st.sampled_from([0.1, 0.25]), limit=st.sampled_from([0.1, 1.0]))
def test_property_skipping_readings_of_quiet_unwatched_tunnels_changes_no_verdict(
        rates, starts, lengths, scan, limit):
    """Read at every scan and every STEP while watched, or (as the daemon does)
    only when its counter moved since the last scan or it is watched: the
    watch says the same."""
    tr = Traffic(bursts(rates, starts, lengths), paced(200, 0, 20.0))
    dense, sparse = SilenceWatch(limit), SilenceWatch(limit)
    every = round(scan / silence.STEP)
    seen_rx, watched = None, False
    for k in range(int(20.0 / silence.STEP)):
        t = k * silence.STEP
        scanned = k % every == 0
        if not (scanned or watched):
            continue
        reading = tr(t)
        full = dense.update(t, *reading)
        if watched or reading[0] != seen_rx:
            assert sparse.update(t, *reading) == full, t
        else:
            assert not full.suspicious and not full.resumed
        watched = dense.watched(t)
        assert sparse.watched(t) == watched, t
        if scanned:
            seen_rx = reading[0]


# ------------------------------------------------------------ LinkMonitor
def downs(tr):
    return [t for t in tr if t.new == "down"]


def run(probe, rtt_of, traffic, until, start=0.0, health=H):
    m = LinkMonitor("t1", probe, health, start)
    return m, simulate(m, rtt_of, start, until, upstream=traffic)


def dead_after(t0: float, rtt: float = 0.001):
    return lambda seq, sent: None if sent >= t0 else rtt


@pytest.mark.parametrize("rate", [100, 1000])
@pytest.mark.parametrize("probe", [P1, P100], ids=["1s", "100ms"])
def test_busy_tunnel_goes_down_faster_than_probes_can_tell(rate, probe):
    """Blackhole at 40 phases of the probe schedule, Poisson upstream traffic:
    down within the silence that made it a suspect (threshold + a reading
    step) and 15 confirmations 5 ms apart plus their 50 ms deadline; unless a
    late regular probe got there first (then probe timing, as before)."""
    rng = random.Random(rate)
    times, by_traffic = [], 0
    for i in range(40):
        t0 = 20.0 + probe.interval * i / 40
        tr = Traffic(poisson(rate, 0, t0, rng), paced(300, 0, t0 + 10))
        m, out = run(probe, dead_after(t0), tr, t0 + 3.0)
        d = downs(out)
        assert len(d) == 1, out
        if d[0].reason.startswith("upstream silent"):
            by_traffic += 1
            quiet = float(d[0].reason.split("silent ")[1].split(" ms")[0]) / 1000
            assert quiet <= 0.15, d      # theta (<= 1.5 x a recurring Poisson gap) + a step
            # the silence began at the latest arrival, at or before the cut
            assert d[0].at - t0 <= quiet + 14 * 0.005 + 0.05 + 1e-3, d
        times.append(d[0].at - t0)
    assert by_traffic >= (30 if probe is P1 else 10), by_traffic
    if probe is P1:
        assert max(times) < 0.3, max(times)


def test_idle_tunnel_keeps_probe_timing():
    t0 = 20.5
    tr = Traffic(paced(5, 0, t0), paced(300, 0, t0 + 10))     # 5 pkt/s: not watched
    _, out = run(P1, dead_after(t0), tr, t0 + 3.0)
    d = downs(out)
    assert len(d) == 1 and d[0].reason.startswith("14 of 14")


@pytest.mark.parametrize("pattern", ["idle", "oneway", "onoff", "flow_end"])
def test_traffic_patterns_never_take_a_live_tunnel_down(pattern):
    """The site stops sending / never answers a downstream stream / sends
    200 ms bursts / its one flow ends: suspicions at most, answered."""
    rng = random.Random(7)
    up = {"idle": paced(800, 0, 30.0),
          "oneway": paced(50, 0, 10.0) + paced(50, 40.0, 50.0),
          "onoff": on_off(1000, 0.2, 0.2, 0, 120.0),
          "flow_end": poisson(300, 0, 60.0, rng)}[pattern]
    tr = Traffic(up, paced(500, 0, 120.0))
    m, out = run(P1, lambda seq, sent: 0.002, tr, 120.0)
    assert downs(out) == [] and m.state == "up"
    assert m._episodes <= 3, m._episodes      # a probe answers each at once


def test_suspicion_cleared_by_traffic_resuming():
    m = LinkMonitor("t1", P1, H, 0.0)
    tr = Traffic(paced(1000, 0, 5.0) + paced(1000, 5.2, 6.0), paced(500, 0, 10.0))
    t, became = 0.0, []
    while t < 5.1:
        if m.on_upstream(t, *tr(t)):
            became.append(t)
        t += silence.STEP
    assert len(became) == 1 and m.suspect
    m.on_upstream(5.22, *tr(5.22))
    assert not m.suspect


class AlwaysSilent:
    """A watch whose every reading is a suspicious silence (the budget alone decides)."""

    def update(self, now, rx, last, tx):
        return silence.Verdict(suspicious=True, silence=0.06, threshold=0.05)


@pytest.mark.parametrize("loss", [0.0, 0.3])
def test_suspicions_in_quick_succession_need_more_confirmations(loss):
    """Suspicions every 100 ms, each answered: on a clean link each needs 15
    misses; at 30 % loss the j-th within a probe interval needs
    p_hat**N <= 1e-7 / 2**(j+1), and past MAX_CONFIRMATIONS none opens."""
    rng = random.Random(3)
    m = LinkMonitor("t1", P1, H, 0.0)
    seq = 0
    for k in range(100):                        # p_hat measured on 100 regular probes
        seq += 1
        m.on_sent(seq, float(k))
        if rng.random() >= loss:
            m.on_reply(seq, 0.002, k + 0.002)
        m.on_tick(k + 1.0)
    seq += 1
    m.on_sent(seq, 100.0)
    m.on_reply(seq, 0.002, 100.002)             # no probe-born suspicion left open
    assert not m.suspect
    m._silence = AlwaysSilent()
    needed, t = [], 100.5
    while t < 101.45:
        p = m.loss_estimate()
        if m.on_upstream(t, 0, None, 0):
            needed.append((m._ep_needed, p))
            seq += 1
            m.on_sent(seq, t)
            m.on_reply(seq, 0.002, t + 0.002)   # answered: cleared
            assert not m.suspect
        t += 0.1
    for j, (n, p) in enumerate(needed):
        assert n >= 15 and p ** n <= 1e-7 / 2 ** (j + 1), (j, n, p)
    needed = [n for n, _ in needed]
    if loss:
        assert len(needed) >= 2 and needed == sorted(needed) and needed[-1] > needed[0], needed
        assert needed[-1] <= 30
    else:
        assert needed == [15] * 10


@pytest.mark.parametrize("loss,seed", [(0.10, 1), (0.10, 2), (0.40, 3), (0.40, 4)])
@pytest.mark.parametrize("pattern", ["onoff", "pauses"])
def test_random_loss_with_suspicious_traffic_never_down(loss, seed, pattern):
    """Probes lost at random while the traffic keeps raising suspicions: 10
    minutes, no false down (N+1 confirmations, one suspicion per interval)."""
    rng = random.Random(seed)
    if pattern == "onoff":
        up = on_off(1000, 0.2, 0.2, 0, 600.0)
    else:   # a pause of 0.1-0.3 s every 12 s: past the horizon, each one is suspicious
        up, t = [], 0.0
        while t < 600.0:
            up += paced(500, t, t + 12.0)
            t += 12.0 + rng.uniform(0.1, 0.3)
    tr = Traffic(up, paced(200, 0, 600.0))
    m, out = run(P100, lambda seq, sent: None if rng.random() < loss else 0.002, tr, 600.0)
    assert downs(out) == []
    assert m._episodes > 10     # the suspicions did happen
