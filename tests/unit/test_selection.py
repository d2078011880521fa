"""Pure selection core: weights, HA role, minimal-movement slot table."""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from steerd.selection import (
    HaEvent, HaSelector, base_weights, build_slots, effective_weights, quotas,
    slots_moved, table_shares, weights_changed,
)


# Stand-ins for steerd.config.Tunnel: selection only reads these attributes.
@dataclass
class Bw:
    down_mbps: float
    up_mbps: float = 10.0


@dataclass
class T:
    name: str
    ha_role: str
    wan: str
    bandwidth: Bw = field(default_factory=lambda: Bw(100))
    preference: float = 1.0


def site(npri: int = 3, nsec: int = 3) -> list[T]:
    return ([T(f"pri-wan{i + 1}", "primary", f"wan{i + 1}") for i in range(npri)]
            + [T(f"sec-wan{i + 1}", "secondary", f"wan{i + 1}") for i in range(nsec)])


def run_lengths(table: list[int]) -> list[int]:
    runs, n = [], 1
    for a, b in zip(table, table[1:]):
        if a == b:
            n += 1
        else:
            runs.append(n)
            n = 1
    return runs + [n]


# ------------------------------------------------------------------ weights

def test_base_weights_share_per_role_times_preference():
    ts = [T("a", "primary", "wan1", Bw(100)), T("b", "primary", "wan2", Bw(50), 2.0),
          T("c", "primary", "wan3", Bw(100), 0.5), T("d", "secondary", "wan1", Bw(30))]
    assert base_weights(ts) == pytest.approx([0.4, 0.4, 0.2, 1.0])


def test_effective_weights_zero_outside_role_and_when_down():
    ts = site(2, 2)
    w = effective_weights(ts, ["up", "degraded", "up", "up"], [1.0, 0.5, 1.0, 1.0], "primary")
    assert w == pytest.approx([0.5, 0.25, 0.0, 0.0])
    w = effective_weights(ts, ["down", "up", "up", "down"], [1.0, 1.0, 1.0, 1.0], "primary")
    assert w == pytest.approx([0.0, 0.5, 0.0, 0.0])
    w = effective_weights(ts, ["down", "down", "up", "down"], [1.0, 1.0, 0.8, 1.0], "secondary")
    assert w == pytest.approx([0.0, 0.0, 0.4, 0.0])


def test_weights_changed_threshold_and_zero_transitions():
    assert not weights_changed([1, 1, 1], [1, 1, 1], 0.10)
    assert not weights_changed([1, 1, 1], [2, 2, 2], 0.10)        # same shares
    assert not weights_changed([100, 100], [100, 90], 0.10)       # 1/2 -> 0.526: 5 %
    assert weights_changed([100, 100], [100, 70], 0.10)           # 1/2 -> 0.588: 18 %
    assert weights_changed([1, 1, 1], [1, 1, 0], 0.10)            # to zero
    assert weights_changed([1, 1, 0], [1, 1, 1e-6], 0.10)         # from zero
    assert weights_changed([1, 1], [1, 1, 1], 0.10)
    assert not weights_changed([0, 0], [0, 0], 0.10)
    assert weights_changed([100, 100], [100, 70])                 # default threshold 10 %
    assert not weights_changed([100, 100], [100, 90])


# ----------------------------------------------------------------------- HA

def test_ha_failover_is_immediate_when_all_primaries_down():
    ha = HaSelector(site(), failback_hold=30, now=0)
    assert ha.active == "primary"
    assert ha.update(["up"] * 6, 1) == []
    ev = ha.update(["down", "down", "down", "up", "up", "up"], 2)
    assert ev == [HaEvent("ha_failover", "all 3 primary tunnels down", 2)]
    assert ha.active == "secondary"


def test_one_surviving_primary_prevents_failover():
    ha = HaSelector(site(), failback_hold=30, now=0)
    for t, st_ in enumerate([["down", "up", "up"], ["down", "down", "degraded"],
                             ["down", "down", "up"]]):
        assert ha.update(st_ + ["up"] * 3, t) == []
        assert ha.active == "primary"


def test_failback_after_hold_and_not_before():
    ha = HaSelector(site(), failback_hold=30, now=0)
    ha.update(["down"] * 3 + ["up"] * 3, 0)
    assert ha.active == "secondary"
    assert ha.update(["down", "up", "down"] + ["up"] * 3, 10) == []   # hold starts at 10
    for now in (11, 20, 39.9):
        assert ha.update(["down", "up", "down"] + ["up"] * 3, now) == []
        assert ha.active == "secondary"
    ev = ha.update(["down", "up", "down"] + ["up"] * 3, 40)
    assert [e.type for e in ev] == ["ha_failback"] and ev[0].tunnel == "pri-wan2"
    assert ha.active == "primary" and ha.active_since == 40


def test_flap_during_hold_resets_the_hold():
    ha = HaSelector(site(), failback_hold=30, now=0)
    ha.update(["down"] * 3 + ["up"] * 3, 0)
    ha.update(["up", "down", "down"] + ["up"] * 3, 10)
    ha.update(["down", "down", "down"] + ["up"] * 3, 25)     # flap
    ha.update(["up", "down", "down"] + ["up"] * 3, 26)       # hold restarts at 26
    assert ha.update(["up", "down", "down"] + ["up"] * 3, 41) == []
    assert ha.update(["up", "down", "down"] + ["up"] * 3, 55.9) == []
    assert ha.active == "secondary"
    assert [e.type for e in ha.update(["up", "down", "down"] + ["up"] * 3, 56)] == ["ha_failback"]


def test_hold_counts_per_tunnel_longest_up_wins():
    ha = HaSelector(site(), failback_hold=30, now=0)
    ha.update(["down"] * 3 + ["up"] * 3, 0)
    ha.update(["up", "down", "down"] + ["up"] * 3, 5)
    ha.update(["up", "up", "down"] + ["up"] * 3, 20)
    ha.update(["down", "up", "down"] + ["up"] * 3, 30)      # the older one flaps
    assert ha.update(["down", "up", "down"] + ["up"] * 3, 49) == []
    assert ha.update(["down", "up", "down"] + ["up"] * 3, 50)[0].tunnel == "pri-wan2"


def test_all_down_keeps_role_and_reports_once():
    ha = HaSelector(site(), failback_hold=30, now=0)
    ev = ha.update(["down"] * 6, 1)
    assert ev == [HaEvent("all_down", "every tunnel down: keeping last programming", 1)]
    assert ha.active == "primary" and ha.all_down
    assert ha.update(["down"] * 6, 2) == []                 # once per episode
    ev = ha.update(["down"] * 3 + ["up"] + ["down"] * 2, 3)  # a secondary returns
    assert [e.type for e in ev] == ["ha_failover"] and not ha.all_down
    ev = ha.update(["down"] * 6, 4)
    assert [e.type for e in ev] == ["all_down"] and ha.active == "secondary"


def test_primary_back_while_secondaries_dead_skips_hold():
    ha = HaSelector(site(), failback_hold=30, now=0)
    ha.update(["down"] * 3 + ["up"] * 3, 0)
    ha.update(["down"] * 6, 1)
    ev = ha.update(["up", "down", "down"] + ["down"] * 3, 2)
    assert [e.type for e in ev] == ["ha_failback"] and ha.active == "primary"


def test_secondary_only_and_primary_only_configs():
    ha = HaSelector(site(0, 2), failback_hold=30, now=0)
    assert ha.active == "secondary" and ha.update(["up", "up"], 1) == []
    ha = HaSelector(site(2, 0), failback_hold=30, now=0)
    assert [e.type for e in ha.update(["down", "down"], 1)] == ["all_down"]
    assert ha.active == "primary"


# --------------------------------------------------------------- slot table

def test_initial_table_interleaves_and_is_exact():
    t = build_slots([1, 1, 2], 16)
    assert t == build_slots([1, 1, 2], 16)
    assert [t.count(i) for i in range(3)] == [4, 4, 8]
    # interleaved, not one block per tunnel: at most 2 slots of a tunnel in a row
    assert max(run_lengths(t)) <= 2
    big = build_slots([3, 2, 1], 4096)
    assert max(run_lengths(big)) <= 2


def test_zero_weight_gets_no_slot_and_all_zero_keeps_previous():
    t = build_slots([1, 0, 1e-12], 64)
    assert 1 not in t and t.count(2) <= 1
    assert build_slots([0, 0, 0], 64, t) == t
    with pytest.raises(ValueError):
        build_slots([0, 0], 64)
    with pytest.raises(ValueError):
        build_slots([1, -1], 64)


def test_weight_change_moves_only_the_losers_surplus():
    old = build_slots([100, 100, 100], 4096)
    new = build_slots([80, 100, 100], 4096, old)
    assert all(n == o for o, n in zip(old, new) if o != 0)
    # 1365/1366 -> 1170 slots: exactly the difference moves
    assert slots_moved(old, new) == old.count(0) - new.count(0)


def test_removed_tunnel_index_slots_are_reassigned():
    old = build_slots([1, 1, 1], 64)
    new = build_slots([1, 1], 64, old)
    assert set(new) == {0, 1}
    assert all(n == o for o, n in zip(old, new) if o in (0, 1))


def test_table_shares():
    assert table_shares([0, 1, 1, 2], 4) == [0.25, 0.5, 0.25, 0.0]


# ------------------------------------------------------------ properties

weight = st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e4))
weight_vectors = st.integers(1, 6).flatmap(
    lambda n: st.lists(weight, min_size=n, max_size=n).filter(lambda ws: any(ws)))
table_sizes = st.sampled_from([64, 1024, 4096])


def assert_shares_within_one_slot(table: list[int], weights: list[float]) -> None:
    n = len(table)
    total = sum(Fraction(w) for w in weights)
    for i, w in enumerate(weights):
        ideal = Fraction(w) * n / total
        assert abs(table.count(i) - ideal) < 1, (i, table.count(i), float(ideal))
        if w == 0:
            assert table.count(i) == 0


def assert_minimal_move(old: list[int], new: list[int], ntun: int) -> None:
    before = [old.count(i) for i in range(ntun)]
    after = [new.count(i) for i in range(ntun)]
    # quota changes can only be realised by moving slots; we move no more than that
    assert slots_moved(old, new) == sum(abs(a - b) for a, b in zip(after, before)) // 2
    for o, n in zip(old, new):
        if o != n:
            assert after[o] < before[o], "a slot of a non-losing tunnel moved"


@settings(max_examples=150, deadline=None)
@given(weight_vectors, table_sizes)
def test_prop_initial_table(weights, n):
    t = build_slots(weights, n)
    assert len(t) == n
    assert_shares_within_one_slot(t, weights)
    assert build_slots(weights, n) == t


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.lists(weight, min_size=k, max_size=k).filter(any),
    st.lists(weight, min_size=k, max_size=k).filter(any))), table_sizes)
def test_prop_update_moves_the_minimum(pair, n):
    w0, w1 = pair
    old = build_slots(w0, n)
    new = build_slots(w1, n, old)
    assert_shares_within_one_slot(new, w1)
    assert_minimal_move(old, new, len(w1))
    assert build_slots(w1, n, old) == new                 # deterministic
    # against the ideal shares: rounding can add at most one slot per tunnel
    tot0, tot1 = sum(map(Fraction, w0)), sum(map(Fraction, w1))
    ideal = sum(abs(Fraction(a) / tot0 - Fraction(b) / tot1) for a, b in zip(w0, w1)) / 2
    assert slots_moved(old, new) <= ideal * n + len(w1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda k: st.lists(
    st.lists(weight, min_size=k, max_size=k), min_size=2, max_size=12)), table_sizes)
def test_prop_chains_of_updates(chain, n):
    table = None
    last_nonzero = None
    for ws in chain:
        if table is None:
            if not any(ws):
                continue
            table = build_slots(ws, n)
            assert_shares_within_one_slot(table, ws)
            last_nonzero = ws
            continue
        new = build_slots(ws, n, table)
        assert build_slots(ws, n, table) == new
        if any(ws):
            assert_shares_within_one_slot(new, ws)
            assert_minimal_move(table, new, len(ws))
            last_nonzero = ws
        else:
            assert new == table                            # keep last programming
            assert_shares_within_one_slot(new, last_nonzero)
        table = new


@settings(max_examples=100, deadline=None)
@given(weight_vectors, table_sizes)
def test_prop_quotas_sum_and_bounds(weights, n):
    q = quotas(weights, n, [n] * len(weights))
    assert sum(q) == n
    total = sum(map(Fraction, weights))
    assert all(abs(qi - Fraction(w) * n / total) < 1 for qi, w in zip(q, weights))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 6).flatmap(lambda k: st.tuples(
    st.lists(st.floats(1.0, 100.0), min_size=k, max_size=k),
    st.lists(st.floats(1.0, 100.0), min_size=k, max_size=k))),
    st.integers(0, 2**32 - 1), st.sampled_from([1024, 4096]))
def test_prop_load_aware_update_moves_the_minimum_live_flows(pair, seed, n):
    """With the live flows per slot known, the flows moved are the minimum the
    new weights need (excess of live flows over the new share), as long as a
    losing tunnel has enough empty slots to make up its slot count — the
    common case: fewer live flows than slots."""
    import random
    w0, w1 = pair
    old = build_slots(w0, n)
    rng = random.Random(seed)
    load = [0] * n
    for _ in range(n // 2):           # flows hashed onto slots
        load[rng.randrange(n)] += 1
    new = build_slots(w1, n, old, load)
    assert_shares_within_one_slot(new, w1)
    assert_minimal_move(old, new, len(w1))
    assert build_slots(w1, n, old, load) == new
    total = sum(load)
    quota_new = [new.count(t) for t in range(len(w1))]
    for t in range(len(w1)):
        live = sum(load[p] for p in range(n) if old[p] == t)
        moved = sum(load[p] for p in range(n) if old[p] == t and new[p] != t)
        if quota_new[t] < old.count(t):
            need = max(0, round(live - quota_new[t] / n * total))
            # the slots it gives up can carry at most its k most loaded slots' flows
            k = old.count(t) - quota_new[t]
            reachable = min(need, sum(sorted((load[p] for p in range(n) if old[p] == t),
                                             reverse=True)[:k]))
            # exact unless a single heavy slot makes it jump (then never more than the max load)
            assert reachable - max(load) <= moved <= need, (t, need, reachable, moved)
        else:
            assert moved == 0
