"""Link health: statistics and the state machine, with `now` passed in (no sleeping)."""
from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerd.config import HealthConfig, ProbeConfig
from steerd.health import LinkMonitor, confirmations_for, simulate, window_stats

P1 = ProbeConfig(interval=1.0, timeout=1.0, window=10)
P100 = ProbeConfig(interval=0.1, timeout=1.0, window=10)
H = HealthConfig()


# ------------------------------------------------------------------ helpers
class Driver:
    """Hand-driven monitor: send / answer / lose probes at chosen times."""

    def __init__(self, probe=P1, health=H, now=0.0):
        self.m = LinkMonitor("t1", probe, health, now)
        self.seq = 0
        self.log: list = []

    def send(self, now: float) -> int:
        self.log += self.m.on_tick(now)
        self.seq += 1
        self.m.on_sent(self.seq, now)
        return self.seq

    def reply(self, seq: int, sent: float, rtt: float) -> list:
        tr = self.m.on_reply(seq, rtt, sent + rtt)
        self.log += tr
        return tr

    def tick(self, now: float) -> list:
        tr = self.m.on_tick(now)
        self.log += tr
        return tr

    def clean(self, n: int, rtt: float = 0.001) -> float:
        """n regular probes, all answered; returns the time of the last send."""
        t = self.m.next_probe_at()
        for _ in range(n):
            t = self.m.next_probe_at()
            s = self.send(t)
            self.reply(s, t, rtt)
        return t


def run_path(probe, rtt_of, until, health=H, tick=0.0, start=0.0):
    m = LinkMonitor("t1", probe, health, start)
    return m, simulate(m, rtt_of, start, until, tick=tick)


def lossy(loss: float, seed: int, rtt: float = 0.02, jitter: float = 0.002):
    rng = random.Random(seed)

    def rtt_of(seq, sent):
        if rng.random() < loss:
            return None
        return max(0.0005, rng.gauss(rtt, jitter))
    return rtt_of


def blackhole_at(tb: float, rtt: float = 0.001, until: float = float("inf")):
    """Both directions dead from tb to until (a probe whose reply would cross tb is lost too)."""
    def rtt_of(seq, sent):
        if sent + rtt >= tb and sent < until:
            return None
        return rtt
    return rtt_of


def downs(transitions):
    return [t for t in transitions if t.new == "down"]


# --------------------------------------------------------------- statistics
def test_window_stats_known_values():
    s = window_stats([0.010, None, 0.030, 0.020, None])
    assert s.samples == 5
    assert s.loss_ratio == pytest.approx(0.4)
    assert s.rtt_mean == pytest.approx(0.020)
    assert s.rtt_p50 == pytest.approx(0.020)
    # consecutive received RTTs: |30-10| and |20-30| -> 15 ms
    assert s.jitter == pytest.approx(0.015)


def test_window_stats_empty_and_all_lost():
    assert window_stats([]) == window_stats([])
    e = window_stats([])
    assert (e.loss_ratio, e.rtt_mean, e.jitter, e.samples) == (0.0, None, None, 0)
    a = window_stats([None, None])
    assert a.loss_ratio == 1.0 and a.rtt_mean is None and a.rtt_p50 is None


rtts = st.lists(st.one_of(st.none(), st.floats(min_value=0.0, max_value=5.0)), max_size=40)


@given(rtts)
@settings(max_examples=300, deadline=None)
def test_window_stats_properties(samples):
    s = window_stats(samples)
    got = [r for r in samples if r is not None]
    assert 0.0 <= s.loss_ratio <= 1.0
    assert s.samples == len(samples)
    if got:
        assert min(got) - 1e-12 <= s.rtt_p50 <= max(got) + 1e-12
        assert min(got) - 1e-12 <= s.rtt_mean <= max(got) + 1e-12
    if len(got) >= 2:
        assert 0.0 <= s.jitter <= max(got) - min(got) + 1e-12
    else:
        assert s.jitter is None


@given(st.floats(min_value=0.0, max_value=2.0), st.integers(min_value=2, max_value=30),
       st.lists(st.booleans(), min_size=30, max_size=30))
def test_jitter_of_constant_rtt_is_zero(rtt, n, lost):
    samples = [None if lost[i] and i else rtt for i in range(n)]
    s = window_stats(samples)
    assert s.jitter in (0.0, None)
    assert s.rtt_mean == pytest.approx(rtt)


def test_monitor_stats_over_last_window_by_send_order():
    d = Driver(ProbeConfig(interval=1.0, timeout=1.0, window=4))
    t = d.clean(6, rtt=0.010)
    t2 = d.m.next_probe_at()
    s = d.send(t2)                          # lost: times out
    d.tick(t2 + 1.0)
    t3 = t2 + 1.0                           # the next regular probe (no confirmations sent)
    d.reply(d.send(t3), t3, 0.030)
    st_ = d.m.stats()
    assert st_.samples == 4
    assert st_.loss_ratio == pytest.approx(0.25)
    assert st_.rtt_mean == pytest.approx((0.010 + 0.010 + 0.030) / 3)
    assert st_.rtt_p50 == pytest.approx(0.010)
    assert st_.jitter == pytest.approx((0.0 + 0.020) / 2)
    assert s and t


def test_window_waits_for_a_probe_in_flight():
    # 100 ms probes, 1 s timeout: the answers of the next probes must not enter
    # the window before the lost one does, or the loss would be underestimated
    d = Driver(P100)
    d.send(0.0)                              # lost
    for k in range(1, 5):
        d.reply(d.send(k / 10), k / 10, 0.001)
    d.tick(0.5)
    assert d.m.stats().samples == 0
    d.tick(1.0)
    s = d.m.stats()
    assert s.samples == 5 and s.loss_ratio == pytest.approx(0.2)


# ------------------------------------------------------- confirmation count
def test_confirmations_for_table():
    assert confirmations_for(0.0, 3) == 3
    assert confirmations_for(0.01, 3) == 3
    assert confirmations_for(0.10, 3) == 6
    assert confirmations_for(0.40, 3) == 17
    assert confirmations_for(0.50, 3) == 23
    assert confirmations_for(1.0, 3) == 30
    assert confirmations_for(0.01, 5) == 5
    ns = [confirmations_for(p / 100, 3) for p in range(100)]
    assert ns == sorted(ns)
    for p in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
        n = confirmations_for(p, 3)
        assert p ** (n + 1) <= 1e-7 * (1 + 1e-9) < p ** n or n == 3


# ------------------------------------------------------------ state machine
def test_initial_state_and_schedule():
    d = Driver(now=100.0)
    assert d.m.state == "up" and not d.m.suspect
    assert d.m.next_probe_at() == 100.0
    d.send(100.0)
    assert d.m.next_probe_at() == pytest.approx(101.0)
    assert d.m.health_factor() == 1.0


def test_unknown_and_duplicate_replies_are_ignored():
    d = Driver()
    s = d.send(0.0)
    assert d.m.on_reply(999, 0.001, 0.001) == []
    d.reply(s, 0.0, 0.001)
    d.reply(s, 0.0, 0.002)                   # duplicate
    assert d.m.stats().samples == 1
    assert d.m.stats().rtt_mean == pytest.approx(0.001)


def test_late_reply_makes_suspect_then_clears_and_counts():
    d = Driver()
    d.clean(60)
    assert d.m.deadline() == pytest.approx(0.05)       # floor: 3 x 1 ms < 50 ms
    t = d.m.next_probe_at()
    s = d.send(t)
    d.tick(t + 0.049)
    assert not d.m.suspect
    d.tick(t + 0.051)
    assert d.m.suspect
    assert d.m.next_probe_at() == pytest.approx(t + 0.05)   # first confirmation at once
    c = d.send(t + 0.051)
    assert d.m.next_probe_at() == pytest.approx(t + 0.05 + H.confirm_interval)
    d.reply(s, t, 0.120)                     # the late original reply arrives
    assert not d.m.suspect and d.m.state == "up"
    assert d.m.next_probe_at() == pytest.approx(t + 1.0)
    assert d.m.stats().rtt_mean == pytest.approx((9 * 0.001 + 0.120) / 10)   # the late RTT counted
    d.reply(c, t + 0.051, 0.002)
    assert d.log == []


def test_confirmation_misses_declare_down_with_reason():
    d = Driver()
    d.clean(60)
    n = d.m.confirmations_needed()
    assert n == H.confirm_misses  # the configured floor on a clean link
    ci = H.confirm_interval
    t = d.m.next_probe_at()
    d.send(t)
    d.tick(t + 0.05)
    assert d.m.suspect
    for k in range(n):
        tc = d.m.next_probe_at()
        assert tc == pytest.approx(t + 0.05 + ci * k)
        d.send(tc)
        assert d.log == []                  # no down before the last confirmation is late
    d.tick(tc + 0.05)
    tr = d.log
    assert [(x.old, x.new, x.reason) for x in tr] == [("up", "down", f"{n} of {n} confirmation probes lost")]
    assert tr[0].at == pytest.approx(t + 0.05 + ci * (n - 1) + 0.05)
    assert d.m.state == "down" and d.m.health_factor() == 0.0 and not d.m.suspect
    # after down, probes continue at the normal interval (no confirmations)
    assert d.m.next_probe_at() == pytest.approx(t + 1.0)


def test_any_answer_during_suspicion_clears_it():
    d = Driver()
    d.clean(60)
    t = d.m.next_probe_at()
    d.send(t)
    d.tick(t + 0.05)
    c1 = d.send(d.m.next_probe_at())
    d.tick(t + 0.10)                         # c1 missed (1 of 3)
    c2 = d.send(d.m.next_probe_at())
    d.tick(t + 0.20)                         # c2 missed (2 of 3)
    c3 = d.send(d.m.next_probe_at())
    d.reply(c3, t + 0.25, 0.001)
    assert not d.m.suspect and d.m.state == "up"
    d.tick(t + 2.0)
    assert downs(d.log) == [] and c1 and c2


def go_down(d: Driver) -> float:
    t = d.m.next_probe_at()
    d.send(t)
    d.tick(t + 0.05)
    while d.m.state != "down":
        tc = d.m.next_probe_at()
        d.send(tc)
        d.tick(tc + 0.05)
    return t


def test_recovery_needs_consecutive_successes():
    d = Driver()
    d.clean(60)
    go_down(d)
    # 4 answered, then one lost: the run starts again
    for _ in range(4):
        t = d.m.next_probe_at()
        d.reply(d.send(t), t, 0.001)
    assert d.m.state == "down"
    t = d.m.next_probe_at()
    d.send(t)
    d.tick(t + 1.0)
    for i in range(5):
        t = d.m.next_probe_at()
        tr = d.reply(d.send(t), t, 0.001)
        assert (d.m.state == "down") == (i < 4)
    assert [(x.old, x.new, x.reason) for x in tr] == [("down", "up", "5 consecutive probes answered")]
    assert d.m.health_factor() == 1.0
    st_ = d.m.stats()
    assert st_.loss_ratio == 0.0 and st_.samples == 5     # the outage left the window


def test_initial_state_down_needs_recover_successes():
    d = Driver(health=HealthConfig(initial_state="down"))
    assert d.m.state == "down" and d.m.health_factor() == 0.0
    d.clean(4)
    assert d.m.state == "down"
    d.clean(1)
    assert d.m.state == "up"


def test_degraded_on_loss_then_back_up_after_hold():
    d = Driver()
    d.clean(60)
    t = d.m.next_probe_at()
    d.send(t)                                # lost
    d.tick(t + 0.05)
    for _ in range(3):                        # confirmations answered: no down
        tc = d.m.next_probe_at()
        if d.m.suspect:
            d.reply(d.send(tc), tc, 0.001)
    tr = d.tick(t + 1.0)
    assert [(x.old, x.new, x.reason) for x in tr] == [("up", "degraded", "loss 10 % > 3 %")]
    f = d.m.health_factor()
    assert 0.1 <= f < 1.0
    # 10 clean samples push the loss out of the window; then 10 s of compliance
    d.clean(10)
    assert d.m.state == "degraded"
    d.clean(10)
    assert d.m.state == "up"
    assert d.log[-1].reason.startswith("within SLA for")


def test_degraded_on_latency_and_jitter():
    d = Driver()
    d.clean(10, rtt=0.900)
    assert d.m.state == "degraded"
    assert d.log[0].reason == "latency 900 ms > 600 ms"
    assert d.m.health_factor() == pytest.approx((600 / 900) ** 0.5)
    d2 = Driver()
    t = 0.0
    for i in range(10):
        t = d2.m.next_probe_at()
        d2.reply(d2.send(t), t, 0.010 if i % 2 else 0.090)
    assert d2.m.state == "degraded"
    assert d2.log[0].reason.startswith("jitter 80 ms > 30 ms")


def test_degraded_needs_enough_samples():
    d = Driver()
    t = d.m.next_probe_at()
    d.send(t)
    d.tick(t + 1.0)                          # 1 of 1 lost: too few samples to judge the SLA
    assert d.m.state == "up"


def test_suspect_deadline_adapts_to_rtt():
    d = Driver()
    d.clean(30, rtt=0.040)
    assert d.m.deadline() == pytest.approx(0.120, rel=0.01)
    d.clean(30, rtt=0.001)
    assert d.m.deadline() == pytest.approx(0.05)
    d.clean(30, rtt=0.900)
    assert d.m.deadline() == 1.0                   # never beyond probe.timeout


def test_outage_losses_do_not_slow_the_next_detection():
    # blackhole 1 (60..70 s), back, then blackhole 2 at 100.5 s: detected as fast
    def rtt_of(seq, sent):
        if 60.0 <= sent + 0.001 and sent < 70.0:
            return None
        if sent + 0.001 >= 100.5:
            return None
        return 0.001
    _, tr = run_path(P1, rtt_of, 110.0)
    d = downs(tr)
    assert len(d) == 2
    assert d[0].at - 60.0 <= 1.5 and d[1].at - 100.5 <= 1.5
    ups = [t for t in tr if t.old == "down"]
    assert len(ups) == 1 and 70.0 < ups[0].at < 76.0


# ---------------------------------------------------- failover budget (simulated)
def detection_time(probe, phase, warm=None, tick=0.0):
    tb = (60 * probe.interval if warm is None else warm) + phase   # 60 clean samples: N = 3
    _, tr = run_path(probe, blackhole_at(tb), tb + 5.0, tick=tick)
    d = downs(tr)
    assert d and d[0].at >= tb, tr
    return d[0].at - tb


@pytest.mark.parametrize("probe,budget", [(P1, 1.5), (P100, 0.5)])
@pytest.mark.parametrize("tick", [0.0, 0.0107])     # exact events / a 10 ms polling loop
def test_worst_case_detection_within_budget(probe, budget, tick):
    n = 100
    phases = [probe.interval * i / n for i in range(n)]
    phases += [p + 0.0011 for p in phases]            # just after a reply came back
    times = [detection_time(probe, ph, tick=tick) for ph in phases]
    worst = max(times)
    assert worst <= budget, worst
    # and not absurdly early (a down needs evidence): at least D after the next probe
    assert min(times) >= 0.05


@pytest.mark.parametrize("probe,budget,warm", [(P1, 1.5, 20.0), (P100, 0.5, 1.0)])
def test_detection_within_budget_shortly_after_start(probe, budget, warm):
    worst = max(detection_time(probe, probe.interval * i / 50 + 0.0011, warm=warm, tick=0.0107)
                for i in range(50))
    assert worst <= budget, worst


# ---------------------------------------------------- no false downs (seeded replays)
def changes_per_minute_ok(tr) -> bool:
    return all(b.at - a.at >= 60.0 for a, b in zip(tr, tr[2:]))


@pytest.mark.parametrize("probe", [P1, P100], ids=["1s", "100ms"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_ten_minutes_of_10pct_loss_never_down(probe, seed):
    _, tr = run_path(probe, lossy(0.10, seed), 600.0)
    assert downs(tr) == []
    assert changes_per_minute_ok(tr), tr


@pytest.mark.parametrize("probe", [P1, P100], ids=["1s", "100ms"])
@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_forty_pct_loss_is_degraded_not_down_not_flapping(probe, seed):
    m, tr = run_path(probe, lossy(0.40, seed), 600.0)
    assert downs(tr) == []
    assert changes_per_minute_ok(tr), tr
    assert m.state == "degraded"
    assert tr[0].new == "degraded" and tr[0].reason.startswith("loss ")
    assert len(tr) <= 3
    assert 0.1 <= m.health_factor() <= 0.5


def test_forty_pct_loss_polling_loop_too():
    m, tr = run_path(P100, lossy(0.40, 21), 300.0, tick=0.0107)
    assert downs(tr) == [] and m.state == "degraded"


def test_single_rtt_spike_does_not_go_down():
    def rtt_of(seq, sent):
        return 0.25 if seq == 100 else 0.002     # one reply 250 ms late
    m, tr = run_path(P1, rtt_of, 200.0)
    assert downs(tr) == []
    assert m.stats().rtt_mean is not None


def test_health_factor_scales_with_excess():
    m40, _ = run_path(P1, lossy(0.40, 7), 120.0)
    m10, _ = run_path(P1, lossy(0.10, 7), 120.0)
    assert m40.health_factor() <= m10.health_factor() <= 1.0


def test_stats_match_simulated_path():
    m, _ = run_path(ProbeConfig(interval=1.0, timeout=1.0, window=200), lossy(0.10, 3, 0.030, 0.004), 400.0)
    s = m.stats()
    assert s.samples == 200
    assert 0.05 <= s.loss_ratio <= 0.16
    assert s.rtt_mean == pytest.approx(0.030, abs=0.001)
    # E|X - Y| for two normal draws = 2 sigma / sqrt(pi)
    assert s.jitter == pytest.approx(2 * 0.004 / statistics.math.sqrt(statistics.math.pi), rel=0.15)


ops = st.lists(st.tuples(st.sampled_from(["send", "reply", "tick"]),
                         st.floats(min_value=0.0, max_value=0.7),
                         st.integers(min_value=0, max_value=20)), max_size=120)


@given(ops, st.sampled_from([P1, P100, ProbeConfig(interval=0.5, timeout=2.0, window=3)]),
       st.sampled_from(["up", "down"]))
@settings(max_examples=300, deadline=None)
def test_monitor_invariants_under_arbitrary_events(events, probe, initial):
    m = LinkMonitor("t", probe, HealthConfig(initial_state=initial), 0.0)
    now, seq, sent = 0.0, 0, []
    for op, dt, k in events:
        now += dt
        if op == "send":
            seq += 1
            m.on_sent(seq, now)
            sent.append((seq, now))
            tr = []
        elif op == "reply" and sent:
            s, t = sent[k % len(sent)]
            tr = m.on_reply(s, now - t, now)
        else:
            tr = m.on_tick(now)
        for x in tr:
            assert x.old != x.new and x.at == now and x.tunnel == "t" and x.reason
        assert m.state in ("up", "degraded", "down")
        f = m.health_factor()
        assert (f == 0.0) == (m.state == "down") and 0.0 <= f <= 1.0
        assert not (m.suspect and m.state == "down")
        s_ = m.stats()
        assert 0.0 <= s_.loss_ratio <= 1.0 and s_.samples <= probe.window
        assert m.next_probe_at() < float("inf")
        assert m.next_wakeup() <= m.next_probe_at()
        assert 3 <= m.confirmations_needed() <= 30


@pytest.mark.parametrize("seed", range(20))
def test_degraded_weight_follows_sustained_loss_not_the_last_window(seed):
    # 40 % random loss from t=10 s: the 10-probe window alone reads 10-70 %
    # at 70 s; the factor must read the last 60 s, i.e. sqrt(3 / 40) ~ 0.27
    rng = random.Random(seed)
    m, tr = run_path(P1, lambda seq, sent: None if sent >= 10 and rng.random() < 0.4 else 0.02, 70.5)
    assert m.state == "degraded" and downs(tr) == []
    assert 0.2 <= m.health_factor() <= 0.36


@given(st.floats(0.0, 0.99), st.floats(0.0, 30.0))
def test_a_stall_skips_missed_probes_but_keeps_the_phase(phase, stall):
    """A loop stalled longer than an interval must not bring every tunnel's
    probe to the same instant (a hub's 3,000 tunnels would then go in one turn)."""
    m = LinkMonitor("t", P1, H, phase)
    m.on_sent(1, phase)
    late = phase + 1.0 + stall
    m.on_sent(2, late)
    nxt = m.next_probe_at()
    assert late < nxt <= late + 1.0 + 1e-6
    assert (nxt - phase) == pytest.approx(round(nxt - phase), abs=1e-6)    # on its own grid
