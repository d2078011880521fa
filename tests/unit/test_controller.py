"""The daemon's pure core: link events and ticks in, programming and notes out."""
from __future__ import annotations

import yaml

from steerd.config import parse_config
from steerd.controller import Controller
from steerd.lab.topology import Lab


def cfg(**top):
    return parse_config(yaml.safe_dump(Lab("u").config(**top), sort_keys=False), "lab.yaml")


def test_initial_programming_spreads_over_primaries_by_bandwidth():
    c = Controller(cfg(), now=0.0)
    prog, notes = c.rebalance([1.0] * 6, now=0.0)
    assert prog is not None and prog.slots is not None
    shares = c.shares()
    assert [round(s, 2) for s in shares] == [0.57, 0.29, 0.14, 0.0, 0.0, 0.0]
    assert notes[0].type == "rebalance" and notes[0].extra["slots_moved"] == 4096
    assert prog.wan_tunnels == {"wan1": 0, "wan2": 1, "wan3": 2}


def test_down_reprograms_at_once_and_moves_only_the_dead_tunnels_slots():
    c = Controller(cfg(), now=0.0)
    c.rebalance([1.0] * 6, now=0.0)
    before = list(c.slots)
    prog, notes = c.link_state(1, "down", now=1.0)
    assert prog.usable == (True, False, True, True, True, True)
    moved = [s for s in range(len(before)) if before[s] != prog.slots[s]]
    assert moved and all(before[s] == 1 for s in moved)
    assert prog.wan_tunnels["wan2"] is None
    assert any(n.type == "rebalance" for n in notes)


def test_small_weight_change_is_not_reprogrammed_but_large_is():
    c = Controller(cfg(), now=0.0)
    c.rebalance([1.0] * 6, now=0.0)
    assert c.rebalance([0.97, 1, 1, 1, 1, 1], now=10.0) == (None, [])
    prog, notes = c.rebalance([0.5, 1, 1, 1, 1, 1], now=20.0)
    assert prog is not None and notes[0].extra["slots_moved"] > 0


def test_all_primaries_down_fails_over_and_failback_waits_for_hold():
    c = Controller(cfg(failback_hold="30s"), now=0.0)
    c.rebalance([1.0] * 6, now=0.0)
    for i in range(3):
        prog, notes = c.link_state(i, "down", now=1.0)
    assert c.ha.active == "secondary"
    assert any(n.type == "ha_failover" for n in notes)
    assert set(prog.slots) == {3, 4, 5}
    prog, notes = c.link_state(0, "up", now=2.0)
    assert c.ha.active == "secondary"
    assert c.tick(now=20.0) == (None, [])
    prog, notes = c.tick(now=32.5)
    assert c.ha.active == "primary" and any(n.type == "ha_failback" for n in notes)
    assert set(prog.slots) == {0}
    # failback policy new-flows (default): flows on secondaries stay
    assert prog.keep_flows_of == frozenset({3, 4, 5})


def test_every_tunnel_down_keeps_last_slot_table():
    c = Controller(cfg(), now=0.0)
    c.rebalance([1.0] * 6, now=0.0)
    for i in range(6):
        prog, notes = c.link_state(i, "down", now=1.0)
    assert prog.slots is None  # keep what is programmed
    assert prog.usable == (False,) * 5 + (True,)  # the last good set, not "nothing"
    assert c.slots is not None


def test_failback_policy_migrate_moves_secondary_flows_back():
    c = Controller(cfg(failback_hold="30s", failback="migrate"), now=0.0)
    c.rebalance([1.0] * 6, now=0.0)
    for i in range(3):
        c.link_state(i, "down", now=1.0)
    c.link_state(0, "up", now=2.0)
    prog, notes = c.tick(now=32.5)
    assert any(n.type == "ha_failback" for n in notes)
    assert prog.keep_flows_of == frozenset()   # every slot that changes hands re-decides its flows
    assert set(prog.slots) == {0}
