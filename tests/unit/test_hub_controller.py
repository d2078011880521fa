"""Hub mode's pure core: one Controller per site; a site's events reprogram only
that site, each site's slot table moves only the slots its weights require."""
from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from steerd.config import MAX_TUNNELS, parse_config
from steerd.controller import Hub
from steerd.lab.topology import HubLab
import yaml


def hub_cfg(sites: int, tunnels: int = 6, **top):
    lab = HubLab("u", sites, tunnels)
    cfg = lab.config(**top)
    cfg["dataplane"]["slots"] = 256
    return parse_config(yaml.safe_dump(cfg, sort_keys=False), "hub.yaml")


def tables(h: Hub) -> dict[int, tuple[int, ...]]:
    return {i: tuple(c.slots or ()) for i, c in enumerate(h.sites)}


def minimal_moves(old: list[int], new: list[int]) -> int:
    a, b = Counter(old), Counter(new)
    return sum(abs(a[t] - b[t]) for t in set(a) | set(b)) // 2


def test_programming_speaks_data_path_ids():
    cfg = hub_cfg(3, 3)
    h = Hub(cfg, 0.0, site_ids=[5, 0, 9])
    progs = [p for p, _ in h.rebalance([1.0] * 9, 0.0)]
    assert [p.site for p in progs] == [5, 0, 9]
    assert set(progs[0].slots) == {5 * MAX_TUNNELS + k for k in range(3)}
    assert progs[2].wan_tunnels == {"wan1": 54, "wan2": 55, "wan3": 56}
    assert h.tunnel_id(4) == 1 and h.tunnel_id(8) == 56


def test_one_sites_primaries_down_fails_over_that_site_only():
    h = Hub(hub_cfg(3), 0.0)
    h.rebalance([1.0] * 18, 0.0)
    before = tables(h)
    notes = []
    for k in range(3):
        prog, n = h.link_state(6 + k, "down", 1.0)   # site 1's primaries
        notes += n
        assert prog is not None and prog.site == 1
    assert [h.active_role(i) for i in range(3)] == ["primary", "secondary", "primary"]
    assert [n.extra["site"] for n in notes if n.type == "ha_failover"] == ["site1"]
    after = tables(h)
    assert after[0] == before[0] and after[2] == before[2]
    assert set(after[1]) == {3, 4, 5}
    # failback after the site's own hold, by the tick (only site 1 is ticked)
    h.link_state(6, "up", 2.0)
    assert h.tick(10.0) == []
    [(prog, n)] = h.tick(40.0)
    assert prog.site == 1 and n[0].type == "ha_failback" and h.active_role(1) == "primary"


def test_per_site_failback_hold():
    text = yaml.safe_dump(HubLab("u", 2, 6).config(), sort_keys=False)
    doc = yaml.safe_load(text)
    doc["sites"][0]["failback_hold"] = "2s"
    cfg = parse_config(yaml.safe_dump(doc), "hub.yaml")
    h = Hub(cfg, 0.0)
    h.rebalance([1.0] * 12, 0.0)
    for s in (0, 1):
        for k in range(3):
            h.link_state(6 * s + k, "down", 1.0)
        h.link_state(6 * s, "up", 1.5)
    h.tick(4.0)
    assert [h.active_role(i) for i in (0, 1)] == ["primary", "secondary"]


def test_carry_over_keeps_existing_sites_and_adds_new_ones():
    cfg3, cfg4 = hub_cfg(3), hub_cfg(4)
    old = Hub(cfg3, 0.0)
    old.rebalance([1.0] * 18, 0.0)
    old.link_state(1, "down", 1.0)
    new = Hub(cfg4, 2.0)
    new.carry_over(old, 2.0)
    results = new.rebalance([1.0] * 24, 2.0, force=True)
    assert [tables(new)[i] for i in range(3)] == [tables(old)[i] for i in range(3)]
    assert new.state_of(1) == "down"
    moved = {p.site: n[0].extra["slots_moved"] for p, n in results if n}
    assert moved == {0: 0, 1: 0, 2: 0, 3: 256}


events = st.lists(st.tuples(st.integers(0, 17), st.sampled_from(["up", "down", "degraded"])),
                  min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(events, st.lists(st.floats(0.1, 1.0), min_size=18, max_size=18))
def test_each_site_moves_only_its_own_minimal_slots(evs, factors):
    """Property: a link event in site s changes no other site's table, and site
    s's table moves exactly the slots its new quotas require (the minimum);
    a rebalance does the same for every site at once."""
    cfg = hub_cfg(3)
    h = Hub(cfg, 0.0)
    h.rebalance([1.0] * 18, 0.0)
    now = 1.0
    for index, state in evs:
        before = tables(h)
        prog, _ = h.link_state(index, state, now)
        after = tables(h)
        site = cfg.site_of(index)
        for i in range(3):
            if i != site:
                assert after[i] == before[i]
        if prog is not None and prog.slots is not None:
            assert sum(a != b for a, b in zip(before[site], after[site])) == \
                minimal_moves(list(before[site]), list(after[site]))
        now += 1.0
    before = tables(h)
    h.rebalance(factors, now)
    after = tables(h)
    for i in range(3):
        assert sum(a != b for a, b in zip(before[i], after[i])) == \
            minimal_moves(list(before[i]), list(after[i]))
